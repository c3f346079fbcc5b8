"""Preauthorize units on the Mender Server and report the server's view of them.

The preauth file (written by `imagetools emit` as OUT/preauth.json, with the same units for people
in OUT/preauth.csv) is a JSON list of ``{"name": str, "identity_data": {str: str}, "pubkey": SPKI
PEM}``. Keys are always compared as SPKI DER: the server re-serializes the PEM it was given.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from .errors import DeviceListError, KeyMaterialError, ServerError, UsageError, from_oserror
from .keys import PublicKey, fingerprint, load_public, parse_pem, public_pem, same_key, spki_der
from .mender import ACCEPTED, PREAUTHORIZED, canonical_identity, loose_identity
from .server import BadResponse, MenderClient, json_type, read_regular_file

T = TypeVar("T")
R = TypeVar("R")

class Outcome(StrEnum):
    PREAUTHORIZED = "preauthorized"   # 201
    ALREADY = "already"               # 409, and the server holds our key for the identity
    CONFLICT = "conflict"             # 409 with another key
    FAILED = "failed"                 # the server refused this unit
    DRY_RUN = "dry-run"


OUTCOMES = (Outcome.PREAUTHORIZED, Outcome.ALREADY, Outcome.CONFLICT, Outcome.FAILED)
GOOD_STATUSES = ("preauthorized", "accepted")
MAX_PREAUTH_BYTES = 256 * 1024 * 1024
MAX_IDENTITY_BYTES = 1024 * 1024
REGENERATED = ("the device is not using the injected key — the Mender client generated a new one because "
               "the injected key was missing, unreadable or at the wrong path")


@dataclass(frozen=True)
class Unit:
    name: str
    identity: dict[str, str]
    pubkey: PublicKey = field(repr=False)

    @property
    def pem(self) -> str:
        return public_pem(self.pubkey).decode()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.pubkey)


# --- the preauth file --------------------------------------------------------------------------

def load_units(path: str | Path) -> list[Unit]:
    """Parse and check a preauth file (a regular file of at most 256 MiB); every problem is
    reported at once (DeviceListError), before anything is sent. Messages name its full path."""
    path = Path(path).absolute()
    text = _read_text(path, "preauth file", MAX_PREAUTH_BYTES)
    try:
        data = _parse_json(text)
    except ValueError as exc:
        raise DeviceListError(f"{path}: {exc}") from None
    if not isinstance(data, list):
        raise DeviceListError(f"{path}: expected a JSON list of {{name, identity_data, pubkey}} objects")
    return parse_units(data, str(path))


def parse_units(entries: list[Any], source: str) -> list[Unit]:
    """Units from preauth entries. Names, identities and public keys (compared as SPKI DER, not
    PEM text) must each be unique: the server would hold one device for two units."""
    units: list[Unit] = []
    problems: list[str] = []
    first: dict[tuple[str, str], str] = {}      # (what, value) → the entry that had it first
    for number, entry in enumerate(entries, 1):
        unit, where, errors = _parse_entry(number, entry)
        if unit is None:
            problems += [f"{where}: {e}" for e in errors]
            continue
        for label, value in (("name", unit.name), ("identity", canonical_identity(unit.identity)),
                             ("public key", unit.fingerprint)):
            earlier = first.setdefault((label, value), where)
            if earlier != where:
                also = f" (fingerprint {value[:16]}…)" if label == "public key" else ""
                problems.append(f"{where}: same {label} as {earlier}{also}")
        units.append(unit)
    if problems:
        raise DeviceListError(f"{source}: " + "; ".join(problems))
    if not units:
        raise DeviceListError(f"{source}: no units")
    return units


def _parse_entry(number: int, entry: Any) -> tuple[Unit | None, str, list[str]]:
    """One entry as a Unit, or None with where it is and what is wrong with it."""
    if not isinstance(entry, dict):
        return None, f"entry {number}", ["not an object"]
    name, pem = entry.get("name"), entry.get("pubkey")
    good_name = isinstance(name, str) and name != "" and name.isprintable()
    where = f"entry {number} ({name})" if good_name else f"entry {number}"
    errors = [f"key {key!r} appears more than once" for key in _duplicates(entry)]
    errors += identity_problems(entry.get("identity_data"))
    if not good_name:
        errors.append("'name' must be a non-empty string of printable characters")
    key = None
    if not isinstance(pem, str) or not pem.isascii():
        errors.append("'pubkey' must be a PEM string")
    else:
        try:
            key = load_public(pem.encode(), "pubkey")
        except KeyMaterialError as exc:
            errors.append(str(exc))
    if errors:
        return None, where, errors
    return Unit(name, dict(entry["identity_data"]), key), where, []


@dataclass(frozen=True)
class Entry:
    """A unit as the preauth files list it; load_units reads it back as a Unit."""

    name: str
    identity: dict[str, str]
    pem: str                         # SPKI PEM text, as in the unit's public.key
    fingerprint: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "identity_data": self.identity, "pubkey": self.pem}


def render(entries: list[Entry]) -> str:
    """The preauth file (preauth.json)."""
    return json.dumps([e.to_json() for e in entries], indent=2) + "\n"


def render_csv(entries: list[Entry]) -> str:
    """preauth.csv: name, every identity attribute, fingerprint and pubkey PEM per unit, each cell
    safe to open in a spreadsheet."""
    attrs: list[str] = []
    for entry in entries:
        attrs += [a for a in entry.identity if a not in attrs]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([spreadsheet_safe(c) for c in ["name", *attrs, "fingerprint", "pubkey"]])
    for entry in entries:
        row = [entry.name, *(entry.identity.get(a, "") for a in attrs), entry.fingerprint, entry.pem]
        writer.writerow([spreadsheet_safe(c or "") for c in row])
    return buf.getvalue()


def spreadsheet_safe(cell: str) -> str:
    """A cell a spreadsheet shows as text: one that could start a formula gets a leading "'"."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


def load_identity(arg: str | None, default: Path | None = None) -> dict[str, str]:
    """A unit's identity from inline JSON, a JSON file, or `default` (identity.json beside an image).

    The file may hold the identity object itself or a preauth entry with 'identity_data'.
    """
    if arg is None and default is None:
        raise UsageError("no identity given: pass --identity JSON")
    if arg is not None and arg.lstrip().startswith("{"):
        text, source = arg, "--identity"
    else:
        path = (Path(arg) if arg is not None else default).absolute()
        hint = "" if arg is not None else " (the unit's identity.json is looked for beside the image); pass --identity JSON|FILE"
        text, source = _read_text(path, "identity file", MAX_IDENTITY_BYTES, hint), str(path)
    try:
        data = _parse_json(text)
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("identity_data"), dict):
        data = data["identity_data"]
    problems = list(identity_problems(data))
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems))
    return dict(data)


def identity_problems(identity: Any) -> Iterable[str]:
    """Why an identity would never match what a Mender client sends (all values are strings)."""
    if not isinstance(identity, dict) or not identity:
        yield "'identity_data' must be a non-empty object of attribute names to strings"
        return
    for attr in _duplicates(identity):
        yield f"identity attribute {attr!r} appears more than once"
    for attr, value in identity.items():
        if not isinstance(value, str):
            fix = f": write {json.dumps(_literal(value))}" if isinstance(value, (Decimal, bool)) else ""
            yield (f"identity attribute {attr!r} is {json_type(value)} ({_literal(value)}); the Mender "
                   f"client sends every identity value as a string, so it would never match{fix}")
        elif not _is_unicode(attr) or not _is_unicode(value):
            yield f"identity attribute {attr!r} is not valid Unicode text (a lone surrogate escape)"


def read_json_file(path: str | Path, what: str, limit: int) -> Any:
    """A JSON file (a regular file of at most ``limit`` bytes), parsed as _parse_json does;
    UsageError naming the file otherwise."""
    try:
        return _parse_json(_read_text(path, what, limit))
    except ValueError as exc:
        raise UsageError(f"{what} {path}: {exc}") from None


def _parse_json(text: str) -> Any:
    """JSON exactly as written: numbers stay exact (Decimal, never through float, so a refusal
    quotes them as the file has them), NaN and Infinity are refused, and every object remembers
    keys given more than once (json.loads would keep the last one silently). Raises ValueError."""
    try:
        return json.loads(text, object_pairs_hook=_JSONObject.from_pairs, parse_float=Decimal,
                          parse_int=Decimal, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ValueError("not JSON this tool reads (nested too deeply)") from None


class _JSONObject(dict):
    """A JSON object and the keys it had more than once."""

    duplicates: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> "_JSONObject":
        obj = cls(pairs)
        if len(obj) != len(pairs):
            obj.duplicates = tuple(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        return obj


def _duplicates(obj: Any) -> tuple[str, ...]:
    return obj.duplicates if isinstance(obj, _JSONObject) else ()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not JSON ({name} is not a JSON value)")


def _read_text(path: str | Path, what: str, limit: int, hint: str = "") -> str:
    """A UTF-8 text file; only a regular file is read (a FIFO must not block), at most ``limit`` bytes."""
    try:
        data = read_regular_file(path, limit)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} not found{hint}") from None
    except OSError as exc:
        raise from_oserror(exc, f"cannot read {what} {path}", UsageError) from None
    except ValueError as exc:
        raise UsageError(f"cannot use {what} {path}: {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


def _literal(value: Any) -> str:
    """A JSON value for a message, numbers as the file wrote them."""
    return str(value) if isinstance(value, Decimal) else json.dumps(value, default=str)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- push --------------------------------------------------------------------------------------

@dataclass
class PushResult:
    name: str
    identity: dict[str, str]
    fingerprint: str
    outcome: Outcome
    detail: str = ""
    device_id: str | None = None
    device_status: str | None = None

    def __post_init__(self) -> None:
        self.outcome = Outcome(self.outcome)

    def to_dict(self) -> dict:
        return asdict(self)


def push(client: MenderClient | None, units: list[Unit], *, force: bool = False, api: str = "v2",
         jobs: int = 4, dry_run: bool = False,
         progress: Callable[[PushResult], None] | None = None) -> list[PushResult]:
    """One POST per unit, at most ``jobs`` at a time. Unit-level refusals become 'failed' results;
    authentication failures and an unreachable server abort the run (ServerError)."""
    if api not in ("v1", "v2"):
        raise UsageError(f"unknown API {api!r}; use v2 (Mender 2.x and later) or v1 (Mender 1.4–1.7)")
    if force and api == "v1":
        raise UsageError("--force needs the v2 API; the legacy admission API has no force flag")
    if dry_run:
        return [PushResult(u.name, u.identity, u.fingerprint, "dry-run", "would POST " +
                           ("admission v1" if api == "v1" else "deviceauth v2" + (" with force" if force else "")))
                for u in units]
    if client is None:
        raise UsageError("preauthorizing needs a server connection (only a dry run works without)")
    one = _push_v1 if api == "v1" else _push_v2
    return _run_all(lambda unit: _guarded(one, client, unit, force), units, jobs, progress)


def _run_all(fn: Callable[[T], R], items: list[T], jobs: int, progress: Callable[[R], None] | None) -> list[R]:
    """``fn`` over ``items``, at most ``jobs`` at a time; results in the items' order. An exception
    escaping ``fn`` (an abort) or Ctrl-C cancels the items not started yet and is re-raised."""
    results: dict[int, R] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="preauth") as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    results[futures[fut]] = fut.result()   # re-raises an abort
                    if progress:
                        progress(results[futures[fut]])
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return [results[i] for i in range(len(items))]


def summarize(results: list[PushResult]) -> dict[str, int]:
    return {outcome: sum(r.outcome == outcome for r in results) for outcome in OUTCOMES}


def _guarded(one: Callable[..., PushResult], client: MenderClient, unit: Unit, force: bool) -> PushResult:
    """A refusal with an HTTP status fails this unit only. No status (no server), refused
    credentials or an answer breaking the API (BadResponse) abort the run."""
    try:
        return one(client, unit, force)
    except ServerError as exc:
        if _aborts(exc):
            raise
        return PushResult(unit.name, unit.identity, unit.fingerprint, "failed", str(exc))


def _aborts(exc: ServerError) -> bool:
    """True for errors that say nothing about one unit: no server, refused credentials, an answer
    breaking the API. Anything else with an HTTP status is the server refusing this unit."""
    return exc.status is None or exc.status in (401, 403) or isinstance(exc, BadResponse)


def _push_v2(client: MenderClient, unit: Unit, force: bool) -> PushResult:
    answer = client.preauthorize(unit.identity, unit.pem, force=force)
    if answer.status == 201:
        return PushResult(unit.name, unit.identity, unit.fingerprint, "preauthorized",
                          "forced" if force else "", answer.device_id, "preauthorized")
    device = answer.device or {}
    if device.get("id"):
        device = client.get_device(device["id"]) or device
    if not device.get("auth_sets"):
        device = client.find_device(unit.identity) or device
    return _judge_conflict(unit, device.get("id"), device.get("status"),
                           [(s.get("pubkey"), s.get("status")) for s in device.get("auth_sets") or []])


def _push_v1(client: MenderClient, unit: Unit, force: bool) -> PushResult:
    if client.admission_preauthorize(unit.identity, unit.pem) == 201:
        return PushResult(unit.name, unit.identity, unit.fingerprint, "preauthorized", "admission v1",
                          None, "preauthorized")
    wanted = canonical_identity(unit.identity)
    sets = [s for s in client.iter_admission_sets() if _identity_text(s.get("device_identity")) == wanted]
    device_id = sets[0].get("device_id") if sets else None
    status = next((s.get("status") for s in sets if _same_key(s.get("key"), unit.pubkey)), None)
    return _judge_conflict(unit, device_id, status or (sets[0].get("status") if sets else None),
                           [(s.get("key"), s.get("status")) for s in sets])


def _judge_conflict(unit: Unit, device_id: str | None, device_status: str | None,
                    sets: list[tuple[str | None, str | None]]) -> PushResult:
    """409: our key already preauthorized/accepted → 'already'; anything else is a conflict."""
    mine = [status for pem, status in sets if _same_key(pem, unit.pubkey)]
    base = (unit.name, unit.identity, unit.fingerprint)
    good = [s for s in mine if s in GOOD_STATUSES]
    if good:
        return PushResult(*base, "already", f"same key already {good[0]}", device_id, device_status)
    if mine:
        detail = (f"our key is on device {device_id} but its auth set is {mine[0]}; "
                  f"accept it on the server or push again with --force")
    else:
        theirs = ", ".join(_short_fp(pem) for pem, _ in sets) or "none readable"
        detail = (f"device {device_id or '?'} ({device_status or 'unknown status'}) already has this identity "
                  f"with a different key ({theirs}); push with --force to replace it")
    return PushResult(*base, "conflict", detail, device_id, device_status)


# --- status ------------------------------------------------------------------------------------

@dataclass
class UnitStatus:
    name: str
    identity: dict[str, str]
    fingerprint: str
    status: str                      # preauthorized|accepted|pending|rejected|noauth|missing
    device_id: str | None = None
    key_status: str | None = None    # status of the auth set holding our key, None if absent
    diagnosis: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in GOOD_STATUSES and self.key_status in GOOD_STATUSES and not self.diagnosis

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def status(client: MenderClient, units: list[Unit]) -> list[UnitStatus]:
    """The server's view of every unit, from one walk over the device list."""
    devices = list(client.iter_devices())
    exact = {canonical_identity(d.get("identity_data") or {}): d for d in devices}
    loose: dict[str, list[dict]] = {}
    for d in devices:
        loose.setdefault(loose_identity(d.get("identity_data") or {}), []).append(d)
    results = []
    for unit in units:
        device = exact.get(canonical_identity(unit.identity))
        result = _device_status(unit, device)
        for other in loose.get(loose_identity(unit.identity), []):
            if other is not device:
                result.diagnosis.append(_near_miss(unit, other))
        results.append(result)
    return results


def _device_status(unit: Unit, device: dict | None) -> UnitStatus:
    if device is None:
        return UnitStatus(unit.name, unit.identity, unit.fingerprint, "missing")
    sets = device.get("auth_sets") or []
    mine = [s for s in sets if _same_key(s.get("pubkey"), unit.pubkey)]
    others = [s for s in sets if not _same_key(s.get("pubkey"), unit.pubkey)]
    key_status = mine[0].get("status") if mine else None
    result = UnitStatus(unit.name, unit.identity, unit.fingerprint, device.get("status") or "unknown",
                        device.get("id"), key_status)
    pending = [s for s in others if s.get("status") == "pending"]
    if pending:
        theirs = ", ".join(_short_fp(s.get("pubkey"), full=True) for s in pending)
        result.diagnosis.append(f"the device connected with a different key (pending): {REGENERATED}; "
                                f"device key {theirs}, preauthorized key {unit.fingerprint}; "
                                f"check the image with imagetools verify")
    if not mine:
        known = ", ".join(f"{_short_fp(s.get('pubkey'))} ({s.get('status')})" for s in sets) or "none"
        result.diagnosis.append(f"the server has no auth set with the preauthorized key {unit.fingerprint} "
                                f"(it has: {known}); push again with --force to replace it")
    elif key_status == "rejected":
        result.diagnosis.append("the preauthorized key was rejected on the server")
    return result


def _near_miss(unit: Unit, other: dict) -> str:
    """Explain an identity that differs from ours only in value types or formatting."""
    theirs = other.get("identity_data") or {}
    ours_by_key = {_norm_attr(k): (k, v) for k, v in unit.identity.items()}
    diffs = []
    for k, v in theirs.items():
        our_k, our_v = ours_by_key.get(_norm_attr(k), (k, None))
        if k != our_k or v != our_v:
            kind = "" if isinstance(v, str) else f" ({json_type(v)})"
            diffs.append(f"{k}={json.dumps(v)}{kind} vs ours {our_k}={json.dumps(our_v)}")
    return (f"device {other.get('id')} ({other.get('status')}) has an identity that differs only in value "
            f"types or formatting: {'; '.join(diffs)}; the server matches identities exactly, so the "
            f"preauthorization does not apply to it — make identity_data match what the device sends")


def _norm_attr(name: str) -> str:
    return name.strip().lower()


# --- remove ------------------------------------------------------------------------------------

class Removal(StrEnum):
    REMOVED = "removed"              # our auth sets (with decommission: the device) are gone
    NOT_FOUND = "not-found"          # nothing of ours on the server: nothing to do
    REFUSED = "refused"              # accepted with a key we do not know: a device in use (--force)
    FAILED = "failed"                # the server refused a removal
    WOULD_REMOVE = "would-remove"    # dry run


@dataclass(frozen=True)
class Target:
    """An identity to take off the server, with the keys preauth files gave it.

    With keys, our auth sets are those holding one of them, whatever their status (the unit may
    have booted). Without keys (an identity given on its own), only auth sets still preauthorized
    are ours: any other one was made by a device that connected, with a key we cannot vouch for."""

    identity: dict[str, str]
    keys: tuple[PublicKey, ...] = field(default=(), repr=False)
    name: str | None = None


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


def load_target_units(path: str | Path) -> list[Unit]:
    """The units of a preauth file, or of an emit OUT directory (its preauth.json)."""
    path = Path(path).absolute()
    if path.is_dir():
        if not (path / "preauth.json").exists():
            raise UsageError(f"{path} has no preauth.json: not an emit OUT directory")
        path = path / "preauth.json"
    return load_units(path)


@dataclass
class RemoveResult:
    identity: dict[str, str]
    name: str | None                 # the unit's name when a preauth file gave the identity
    outcome: Removal
    detail: str = ""
    device_id: str | None = None
    auth_sets: list[str] = field(default_factory=list)   # ids of the auth sets removed (or to remove)
    decommission: bool = False

    def __post_init__(self) -> None:
        self.outcome = Removal(self.outcome)

    def to_dict(self) -> dict:
        return asdict(self)


def remove(client: MenderClient, targets: list[Target], *, decommission: bool = False, force: bool = False,
           dry_run: bool = False, jobs: int = 4,
           progress: Callable[[RemoveResult], None] | None = None) -> list[RemoveResult]:
    """Take our auth sets for ``targets`` off the server (with ``decommission``: their devices).

    One walk over the device list decides for every target (_plan_removal), then the DELETEs run,
    at most ``jobs`` at a time; ``dry_run`` stops before them. A removal the server refuses fails
    that target only; no server, refused credentials or an answer breaking the API abort the run
    (ServerError)."""
    if not targets:
        raise UsageError("nothing to remove: give a preauth file, an emit OUT directory or --identity JSON")
    devices = {canonical_identity(d.get("identity_data") or {}): d for d in client.iter_devices()}
    plans = [_plan_removal(t, devices.get(canonical_identity(t.identity)), decommission, force) for t in targets]
    if dry_run:
        return plans
    return _run_all(lambda plan: _carry_out(client, plan), plans, jobs, progress)


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
        what = json_type(sets) if not isinstance(sets, list) else "a list holding something other than objects"
        result.outcome = Removal.FAILED
        result.detail = f"device {device_id}: the server lists its auth_sets as {what}; cannot tell which are ours"
        return result
    mine = [_is_ours(s, target) for s in sets]
    ours = [s for s, is_ours in zip(sets, mine) if is_ours]
    strangers = [s for s, is_ours in zip(sets, mine) if s.get("status") == ACCEPTED and not is_ours]
    if not ours:
        only = "" if target.keys else "; for an identity given on its own only preauthorized ones are ours"
        in_use = "; it is accepted with a key we do not know: in use, left alone" if strangers else ""
        result.detail = (f"device {device_id} holds no auth set of ours ({_sets_text(sets) or 'none'}{only})"
                         f"{in_use}")
    elif strangers and not force:
        result.outcome = Removal.REFUSED
        result.detail = (f"device {device_id} is accepted with a key we do not know "
                         f"({_short_fp(_pem_text(strangers[0]))}): it is in use; --force "
                         + ("decommissions it anyway" if decommission else "removes our auth sets anyway"))
    elif decommission:
        result.outcome = Removal.WOULD_REMOVE
        result.detail = f"device {device_id} with {_sets_text(sets)}"
    elif not all(_set_id(s) for s in ours):
        result.outcome = Removal.FAILED
        result.detail = (f"device {device_id}: the server lists an auth set of ours without an id, so it cannot "
                         f"be removed ({_sets_text(ours)})")
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
    if plan.decommission:
        steps = [(f"device {plan.device_id}", lambda: client.decommission(plan.device_id))]
    else:
        steps = [(f"auth set {auth_id}", lambda auth_id=auth_id: client.remove_auth_set(plan.device_id, auth_id))
                 for auth_id in plan.auth_sets]
    removed: list[str] = []
    gone: list[str] = []
    for label, step in steps:
        try:
            (removed if step() else gone).append(label)
        except ServerError as exc:
            if _aborts(exc):
                raise
            before = f" ({', '.join(removed)} removed before)" if removed else ""
            return replace(plan, outcome=Removal.FAILED, detail=f"{exc}{before}")
    if not removed:
        return replace(plan, outcome=Removal.NOT_FOUND, detail=f"{plan.detail}: already gone (HTTP 404)")
    if gone:
        return replace(plan, outcome=Removal.REMOVED, detail=f"{plan.detail}; {', '.join(gone)} already gone (HTTP 404)")
    return replace(plan, outcome=Removal.REMOVED)


def _is_ours(auth_set: dict, target: Target) -> bool:
    """With keys: the set holds one of them (compared as SPKI DER), whatever its status. Without:
    the set is still preauthorized. Either way its pubkey must be a key we can read: a set whose
    pubkey is missing, not text or not a parsable key is never ours."""
    der = _key_der(auth_set.get("pubkey"))
    if der is None:
        return False
    if target.keys:
        return der in {spki_der(key) for key in target.keys}
    return auth_set.get("status") == PREAUTHORIZED


def _key_der(pem: Any) -> bytes | None:
    """The SPKI DER of a server-listed PEM public key; None if it is not one we can load."""
    text = pem if isinstance(pem, str) else None
    if not text or not text.isascii():
        return None
    try:
        return spki_der(load_public(text.encode(), "server key"))
    except KeyMaterialError:
        return None


def _pem_text(auth_set: dict) -> str | None:
    pem = auth_set.get("pubkey")
    return pem if isinstance(pem, str) and pem.isascii() else None


def _sets_text(sets: list[dict]) -> str:
    """'auth set ID (preauthorized, key 3f9a…)' for each set, for messages."""
    return ", ".join(f"auth set {_set_id(s) or '?'} ({s.get('status')}, key {_short_fp(_pem_text(s))})"
                     for s in sets)


def _set_id(auth_set: dict) -> str | None:
    auth_id = auth_set.get("id")
    return auth_id if isinstance(auth_id, str) and auth_id else None


# --- preauthorizations left behind -------------------------------------------------------------

@dataclass(frozen=True)
class LeftBehind:
    """A device still preauthorized on the server that the preauth file no longer has, but that
    looks like one of its units (see left_behind)."""

    device_id: str
    identity: dict[str, str]
    unit: str                        # the file's unit it looks like
    reason: str

    @property
    def remove_command(self) -> str:
        """The command that takes it off the server, ready to paste into a shell."""
        return "imagetools preauth remove --identity " + shlex.quote(canonical_identity(self.identity))

    def to_dict(self) -> dict:
        return {**asdict(self), "remove_command": self.remove_command}


def find_left_behind(client: MenderClient, units: list[Unit]) -> list[LeftBehind]:
    """left_behind over the server's device list: one walk, bounded like every listing."""
    return left_behind(list(client.iter_devices()), units)


def left_behind(devices: list[dict], units: list[Unit]) -> list[LeftBehind]:
    """Preauthorized devices whose identity the file does not have but that look like its units.

    The case this is for: a typo in an identity, fixed in the file and pushed again, leaves the
    misspelt identity preauthorized on the server, where a device could still claim it. "Looks
    like one of ours" means either of:
    - a preauthorized auth set holds the key of a unit of the file (the identity was edited, the
      key kept); or
    - the identity has a unit's attribute names, differs from it in exactly one value, and shares
      with it a value that no other unit of the file and no other such device has (the serial
      number of {"mac": "..:03", "sn": "SN3"} fixed to {"mac": "..:33", "sn": "SN3"}).
    Not "any preauthorized device with the same attribute names", nor "one value apart" alone:
    with Mender's default identity (the MAC only) or an attribute every unit shares (a SKU) those
    would name every not-yet-booted unit of earlier batches on every push. The cost: a typo in a
    single-attribute identity, fixed and pushed with a new key, goes unnoticed here."""
    in_file = {canonical_identity(u.identity) for u in units}
    strays = [d for d in devices if _all_strings(d.get("identity_data"))
              and canonical_identity(d["identity_data"]) not in in_file]
    by_key = {spki_der(u.pubkey): u for u in units}
    file_values = Counter(item for u in units for item in u.identity.items())
    sole = {item: u for u in units for item in u.identity.items() if file_values[item] == 1}
    stray_values = Counter(item for d in strays for item in d["identity_data"].items())
    found = []
    for device in strays:
        preauthorized = [s for s in device.get("auth_sets") or [] if s.get("status") == PREAUTHORIZED]
        if not preauthorized:
            continue
        match = _unit_by_key(preauthorized, by_key) or _one_value_apart(device["identity_data"], sole, stray_values)
        if match:
            found.append(LeftBehind(device["id"], dict(device["identity_data"]), match[0].name, match[1]))
    return found


def _unit_by_key(sets: list[dict], by_key: dict[bytes, Unit]) -> tuple[Unit, str] | None:
    for auth_set in sets:
        unit = by_key.get(_pem_der(auth_set.get("pubkey")))
        if unit:
            return unit, f"its preauthorized key is unit {unit.name}'s"
    return None


def _one_value_apart(identity: dict[str, str], sole: dict[tuple[str, str], Unit],
                     stray_values: Counter) -> tuple[Unit, str] | None:
    for item in identity.items():
        unit = sole.get(item)
        if unit is None or stray_values[item] != 1 or unit.identity.keys() != identity.keys():
            continue
        differ = [a for a in identity if identity[a] != unit.identity[a]]
        if len(differ) == 1:
            attr = differ[0]
            return unit, (f"its identity differs from unit {unit.name}'s only in {attr} ({json.dumps(identity[attr])} "
                          f"on the server, {json.dumps(unit.identity[attr])} in the file)")
    return None


def _all_strings(identity: Any) -> bool:
    return (isinstance(identity, dict) and bool(identity)
            and all(isinstance(v, str) for v in identity.values()))


def _pem_der(pem: Any) -> bytes | None:
    """The DER of a PEM public key without loading it (cheap for long device lists); None if it is
    not one clean PUBLIC KEY block."""
    try:
        blocks = parse_pem(pem.encode(), "server key").blocks if isinstance(pem, str) else ()
    except KeyMaterialError:
        return None
    return blocks[0].der if len(blocks) == 1 and blocks[0].label == "PUBLIC KEY" else None


# --- helpers -----------------------------------------------------------------------------------

def _same_key(pem: str | None, key: PublicKey) -> bool:
    if not pem:
        return False
    try:
        return same_key(load_public(pem.encode(), "server key"), key)
    except KeyMaterialError:
        return False


def _short_fp(pem: str | None, full: bool = False) -> str:
    try:
        fp = fingerprint(load_public((pem or "").encode(), "server key"))
    except KeyMaterialError:
        return "unreadable key"
    return fp if full else fp[:16] + "…"


def _identity_text(text: Any) -> str | None:
    try:
        return canonical_identity(json.loads(text)) if isinstance(text, str) else None
    except (ValueError, TypeError, RecursionError):
        return None
