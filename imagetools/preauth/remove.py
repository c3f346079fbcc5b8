"""Take our preauthorizations off the server: the auth sets holding our keys, or with decommission
the devices holding one. One walk over the device list decides for every target, then the
DELETEs run, at most `jobs` at a time."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from functools import partial

from ..errors import ServerError, UsageError
from ..keys import PublicKey, spki_der
from ..mender import ACCEPTED, PREAUTHORIZED, canonical_identity
from ..server import MenderClient
from ..server.deviceauth import decommission, iter_devices, remove_auth_set
from ..server.shapes import key_der, short_fingerprint
from ..strict import json_type
from .runs import aborts, run_all
from .units import Unit


class Removal(StrEnum):
    REMOVED = "removed"  # our auth sets (with decommission: the device) are gone
    NOT_FOUND = "not-found"  # nothing of ours on the server: nothing to do
    REFUSED = "refused"  # accepted with a key we do not know: a device in use (--force)
    FAILED = "failed"  # the server refused a removal
    WOULD_REMOVE = "would-remove"  # dry run


@dataclass(frozen=True)
class Target:
    """An identity to take off the server, with the keys preauth files gave it.

    With keys, our auth sets are those holding one of them, whatever their status (the unit may
    have booted). Without keys (an identity given on its own), only auth sets still preauthorized
    are ours: any other one was made by a device that connected, with a key we cannot vouch for."""

    identity: dict[str, str]
    keys: tuple[PublicKey, ...] = field(default=(), repr=False)
    name: str | None = None
    # SHA-256 of SPKI DER: keys a ledger names without holding them (`remove --retired`), ours
    # exactly as `keys` are.
    fingerprints: tuple[str, ...] = ()

    @property
    def keyed(self) -> bool:
        return bool(self.keys or self.fingerprints)


def removal_targets(units: Iterable[Unit], identities: Iterable[dict[str, str]]) -> list[Target]:
    """One target per identity, in order. An identity several preauth files list (re-emitted with
    another key) gets all their keys; one also given on its own keeps them."""
    found: dict[str, Target] = {}
    for unit in units:
        known = found.get(canonical_identity(unit.identity))
        keys = (known.keys if known else ()) + (unit.pubkey,)
        found[canonical_identity(unit.identity)] = Target(unit.identity, keys, known.name if known else unit.name)
    for identity in identities:
        found.setdefault(canonical_identity(identity), Target(dict(identity)))
    return list(found.values())


@dataclass
class RemoveResult:
    identity: dict[str, str]
    name: str | None  # the unit's name when a preauth file gave the identity
    outcome: Removal
    detail: str = ""
    device_id: str | None = None
    auth_sets: list[str] = field(default_factory=list)  # ids of the auth sets removed (or to remove)
    decommission: bool = False

    def __post_init__(self) -> None:
        self.outcome = Removal(self.outcome)

    def to_dict(self) -> dict:
        return asdict(self)


def remove(
    client: MenderClient,
    targets: list[Target],
    *,
    decommission: bool = False,
    force: bool = False,
    dry_run: bool = False,
    jobs: int = 4,
    progress: Callable[[RemoveResult], None] | None = None,
) -> list[RemoveResult]:
    """Take our auth sets for ``targets`` off the server (with ``decommission``: their devices).

    One walk over the device list decides for every target (_plan_removal), then the DELETEs run,
    at most ``jobs`` at a time; ``dry_run`` stops before them. A removal the server refuses fails
    that target only; no server, refused credentials or an answer breaking the API abort the run
    (ServerError)."""
    if not targets:
        raise UsageError("nothing to remove: give a preauth file, an emit OUT directory or --identity JSON")
    devices = {canonical_identity(d.get("identity_data") or {}): d for d in iter_devices(client)}
    plans = [_plan_removal(t, devices.get(canonical_identity(t.identity)), decommission, force) for t in targets]
    if dry_run:
        return plans
    return run_all(lambda plan: _carry_out(client, plan), plans, jobs, progress)


def summarize_removals(results: list[RemoveResult], dry_run: bool = False) -> dict[str, int]:
    done = Removal.WOULD_REMOVE if dry_run else Removal.REMOVED
    return {o: sum(r.outcome == o for r in results) for o in (done, Removal.NOT_FOUND, Removal.REFUSED, Removal.FAILED)}


def _plan_removal(target: Target, device: dict | None, decommission: bool, force: bool) -> RemoveResult:
    """'would-remove' (with the auth sets to remove), 'not-found', 'refused' or 'failed' for one target.

    Nothing is done to a device that holds no auth set of ours (see _is_ours): it is 'not-found',
    with --decommission as without; decommissioning is only for a device holding one of ours.
    An accepted auth set whose key is not ours, on a device that holds one of ours, is a device in
    use that we cannot vouch for (the identity may be reused, or the unit re-keyed by someone
    else): it is left alone unless forced. A listing we cannot read (auth_sets not a list of
    objects, a device without an id) fails that target only."""
    result = RemoveResult(target.identity, target.name, Removal.NOT_FOUND, decommission=decommission)
    if device is None:
        result.detail = "no device with this identity on the server"
        return result
    device_id, sets = device.get("id"), device.get("auth_sets")
    if sets is None:
        sets = []
    if not isinstance(device_id, str) or not device_id:
        result.outcome = Removal.FAILED
        result.detail = "the server lists the device with this identity without an id"
        return result
    result.device_id = device_id
    if not isinstance(sets, list) or not all(isinstance(s, dict) for s in sets):
        what = (
            json_type(sets, article=True)
            if not isinstance(sets, list)
            else "a list holding something other than objects"
        )
        result.outcome = Removal.FAILED
        result.detail = f"device {device_id}: the server lists its auth_sets as {what}; cannot tell which are ours"
        return result
    mine = [_is_ours(s, target) for s in sets]
    ours = [s for s, is_ours in zip(sets, mine, strict=True) if is_ours]
    strangers = [s for s, is_ours in zip(sets, mine, strict=True) if s.get("status") == ACCEPTED and not is_ours]
    if not ours:
        only = "" if target.keyed else "; for an identity given on its own only preauthorized ones are ours"
        in_use = "; it is accepted with a key we do not know: in use, left alone" if strangers else ""
        result.detail = f"device {device_id} holds no auth set of ours ({_sets_text(sets) or 'none'}{only}){in_use}"
    elif strangers and not force:
        result.outcome = Removal.REFUSED
        result.detail = (
            f"device {device_id} is accepted with a key we do not know "
            f"({short_fingerprint(_pem_text(strangers[0]))}): it is in use; --force "
            + ("decommissions it anyway" if decommission else "removes our auth sets anyway")
        )
    elif decommission:
        result.outcome = Removal.WOULD_REMOVE
        result.detail = f"device {device_id} with {_sets_text(sets)}"
    elif not all(_set_id(s) for s in ours):
        result.outcome = Removal.FAILED
        result.detail = (
            f"device {device_id}: the server lists an auth set of ours without an id, so it cannot "
            f"be removed ({_sets_text(ours)})"
        )
    else:
        result.outcome = Removal.WOULD_REMOVE
        result.auth_sets = [s["id"] for s in ours]
        result.detail = _sets_text(ours)
    return result


def _carry_out(client: MenderClient, plan: RemoveResult) -> RemoveResult:
    """The DELETEs of a 'would-remove' plan. A 404 means someone removed it meanwhile: it counts
    as removed, and a plan whose every DELETE answered 404 is 'not-found'."""
    if plan.outcome != Removal.WOULD_REMOVE:
        return plan
    device_id = plan.device_id
    assert device_id is not None  # _plan_removal names the device of every would-remove plan
    steps: list[tuple[str, Callable[[], bool]]]
    if plan.decommission:
        steps = [(f"device {device_id}", lambda: decommission(client, device_id))]
    else:
        steps = [
            (f"auth set {auth_id}", partial(remove_auth_set, client, device_id, auth_id)) for auth_id in plan.auth_sets
        ]
    removed: list[str] = []
    gone: list[str] = []
    for label, step in steps:
        try:
            (removed if step() else gone).append(label)
        except ServerError as exc:
            if aborts(exc):
                raise
            before = f" ({', '.join(removed)} removed before)" if removed else ""
            return replace(plan, outcome=Removal.FAILED, detail=f"{exc}{before}")
    if not removed:
        return replace(plan, outcome=Removal.NOT_FOUND, detail=f"{plan.detail}: already gone (HTTP 404)")
    if gone:
        return replace(
            plan, outcome=Removal.REMOVED, detail=f"{plan.detail}; {', '.join(gone)} already gone (HTTP 404)"
        )
    return replace(plan, outcome=Removal.REMOVED)


def _is_ours(auth_set: dict, target: Target) -> bool:
    """With keys: the set holds one of them (compared as SPKI DER, or its SHA-256 with the
    target's fingerprints), whatever its status. Without:
    the set is still preauthorized. Either way its pubkey must be a key we can read: a set whose
    pubkey is missing, not text or not a parsable key is never ours."""
    der = key_der(auth_set.get("pubkey"))
    if der is None:
        return False
    if target.keyed:
        return der in {spki_der(key) for key in target.keys} or hashlib.sha256(der).hexdigest() in target.fingerprints
    return auth_set.get("status") == PREAUTHORIZED


def _pem_text(auth_set: dict) -> str | None:
    pem = auth_set.get("pubkey")
    return pem if isinstance(pem, str) and pem.isascii() else None


def _sets_text(sets: list[dict]) -> str:
    """'auth set ID (preauthorized, key 3f9a…)' for each set, for messages."""
    return ", ".join(
        f"auth set {_set_id(s) or '?'} ({s.get('status')}, key {short_fingerprint(_pem_text(s))})" for s in sets
    )


def _set_id(auth_set: dict) -> str | None:
    auth_id = auth_set.get("id")
    return auth_id if isinstance(auth_id, str) and auth_id else None
