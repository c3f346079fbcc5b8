"""The server's view of every unit, from one walk over the device list, with diagnoses of the
classic "device shows pending after preauthorizing": a device that connected with another key
than the injected one, or an identity that differs in value types or formatting."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..mender import canonical_identity, loose_identity
from ..server import MenderClient
from ..server.deviceauth import iter_devices
from ..server.shapes import key_der, matches, short_fingerprint
from ..strict import json_type
from .runs import GOOD_STATUSES
from .units import Unit

REGENERATED = (
    "the device is not using the injected key — the Mender client generated a new one because "
    "the injected key was missing, unreadable or at the wrong path"
)


@dataclass
class UnitStatus:
    name: str
    identity: dict[str, str]
    fingerprint: str
    status: str  # preauthorized|accepted|pending|rejected|noauth|missing
    device_id: str | None = None
    key_status: str | None = None  # status of the auth set holding our key, None if absent
    diagnosis: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in GOOD_STATUSES and self.key_status in GOOD_STATUSES and not self.diagnosis

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def status(client: MenderClient, units: list[Unit]) -> list[UnitStatus]:
    """The server's view of every unit, from one walk over the device list."""
    devices = list(iter_devices(client))
    exact = _by_identity(devices)
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


def preauthorized(
    client: MenderClient, wanted: Sequence[tuple[Mapping[str, Any] | None, str | None]]
) -> list[bool | None]:
    """For each (identity, key fingerprint): whether the server holds that identity with an auth
    set of that key, preauthorized or accepted (a preauthorized device that booted is accepted),
    from one walk over the device list as status makes. None where there is nothing to ask
    about: no identity or no fingerprint (a ledger's unit flashed with --key)."""
    exact = _by_identity(iter_devices(client))
    return [_holds(exact.get(canonical_identity(identity)), fp) if identity and fp else None for identity, fp in wanted]


def _by_identity(devices: Iterable[dict]) -> dict[str, dict]:
    """The devices by identity, in the form the server matches them (canonical JSON)."""
    return {canonical_identity(d.get("identity_data") or {}): d for d in devices}


def _holds(device: dict | None, fp: str) -> bool:
    sets = (device or {}).get("auth_sets") or []
    return any(s.get("status") in GOOD_STATUSES and _fingerprint(s.get("pubkey")) == fp for s in sets)


def _fingerprint(pem: Any) -> str | None:
    """The fingerprint (SHA-256 of SPKI DER) of a server-listed key; None if it is no key."""
    der = key_der(pem)
    return None if der is None else hashlib.sha256(der).hexdigest()


def _device_status(unit: Unit, device: dict | None) -> UnitStatus:
    if device is None:
        return UnitStatus(unit.name, unit.identity, unit.fingerprint, "missing")
    sets = device.get("auth_sets") or []
    mine = [s for s in sets if matches(s.get("pubkey"), unit.pubkey)]
    others = [s for s in sets if not matches(s.get("pubkey"), unit.pubkey)]
    key_status = mine[0].get("status") if mine else None
    result = UnitStatus(
        unit.name, unit.identity, unit.fingerprint, device.get("status") or "unknown", device.get("id"), key_status
    )
    pending = [s for s in others if s.get("status") == "pending"]
    if pending:
        theirs = ", ".join(short_fingerprint(s.get("pubkey"), full=True) for s in pending)
        result.diagnosis.append(
            f"the device connected with a different key (pending): {REGENERATED}; "
            f"device key {theirs}, preauthorized key {unit.fingerprint}; "
            f"check the image with imagetools verify"
        )
    if not mine:
        known = ", ".join(f"{short_fingerprint(s.get('pubkey'))} ({s.get('status')})" for s in sets) or "none"
        result.diagnosis.append(
            f"the server has no auth set with the preauthorized key {unit.fingerprint} "
            f"(it has: {known}); push again with --force to replace it"
        )
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
            kind = "" if isinstance(v, str) else f" ({json_type(v, article=True)})"
            diffs.append(f"{k}={json.dumps(v)}{kind} vs ours {our_k}={json.dumps(our_v)}")
    return (
        f"device {other.get('id')} ({other.get('status')}) has an identity that differs only in value "
        f"types or formatting: {'; '.join(diffs)}; the server matches identities exactly, so the "
        f"preauthorization does not apply to it — make identity_data match what the device sends"
    )


def _norm_attr(name: str) -> str:
    return name.strip().lower()
