"""Preauthorize units on the Mender Server and report the server's view of them.

The preauth file (written by `imagetools emit` as OUT/preauth.json) is a JSON list of
``{"name": str, "identity_data": {str: str}, "pubkey": SPKI PEM}``. Keys are always compared as
SPKI DER: the server re-serializes the PEM it was given.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import DeviceListError, KeyMaterialError, ServerError, UsageError
from .keys import PublicKey, fingerprint, load_public, public_pem, same_key
from .server import MenderClient, canonical_identity

OUTCOMES = ("preauthorized", "already", "conflict", "failed")
GOOD_STATUSES = ("preauthorized", "accepted")
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
    """Parse and check a preauth file; every problem is reported at once (DeviceListError)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"preauth file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read preauth file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DeviceListError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise DeviceListError(f"{path}: expected a JSON list of {{name, identity_data, pubkey}} objects")
    return parse_units(data, str(path))


def parse_units(entries: list[Any], source: str) -> list[Unit]:
    units: list[Unit] = []
    problems: list[str] = []
    seen_names: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    for number, entry in enumerate(entries, 1):
        where = f"entry {number}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: not an object")
            continue
        name = entry.get("name")
        if isinstance(name, str) and name:
            where = f"entry {number} ({name})"
        errors = list(identity_problems(entry.get("identity_data")))
        if not isinstance(name, str) or not name:
            errors.append("'name' must be a non-empty string")
        key = None
        if not isinstance(entry.get("pubkey"), str):
            errors.append("'pubkey' must be a PEM string")
        else:
            try:
                key = load_public(entry["pubkey"].encode(), "pubkey")
            except KeyMaterialError as exc:
                errors.append(str(exc))
        if errors:
            problems += [f"{where}: {e}" for e in errors]
            continue
        canon = canonical_identity(entry["identity_data"])
        for value, seen, label in ((name, seen_names, "name"), (canon, seen_ids, "identity")):
            if value in seen:
                problems.append(f"{where}: same {label} as entry {seen[value]}")
            seen[value] = number
        units.append(Unit(name, dict(entry["identity_data"]), key))
    if problems:
        raise DeviceListError(f"{source}: " + "; ".join(problems))
    if not units:
        raise DeviceListError(f"{source}: no units")
    return units


def load_identity(arg: str | None, default: Path) -> dict[str, str]:
    """A unit's identity from inline JSON, a JSON file, or `default` (identity.json beside an image).

    The file may hold the identity object itself or a preauth entry with 'identity_data'.
    """
    if arg is not None and arg.lstrip().startswith("{"):
        text, source = arg, "--identity"
    else:
        path = Path(arg) if arg is not None else default
        try:
            text, source = path.read_text(), str(path)
        except FileNotFoundError:
            hint = "" if arg is not None else "; pass --identity JSON"
            raise UsageError(f"identity file {path} not found{hint}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read identity file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source}: not JSON ({exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("identity_data"), dict):
        data = data["identity_data"]
    problems = list(identity_problems(data))
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems))
    return data


def identity_problems(identity: Any) -> Iterable[str]:
    """Why an identity would never match what a Mender client sends (all values are strings)."""
    if not isinstance(identity, dict) or not identity:
        yield "'identity_data' must be a non-empty object of attribute names to strings"
        return
    for attr, value in identity.items():
        if not isinstance(value, str):
            fix = f": write {json.dumps(json.dumps(value))}" if isinstance(value, (int, float, bool)) else ""
            yield (f"identity attribute {attr!r} is {_json_type(value)} ({json.dumps(value)}); the Mender "
                   f"client sends every identity value as a string, so it would never match{fix}")


# --- push --------------------------------------------------------------------------------------

@dataclass
class PushResult:
    name: str
    identity: dict[str, str]
    fingerprint: str
    outcome: str                    # one of OUTCOMES, or "dry-run"
    detail: str = ""
    device_id: str | None = None
    device_status: str | None = None

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
    results: dict[int, PushResult] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="preauth") as pool:
        futures = {pool.submit(_guarded, one, client, unit, force): i for i, unit in enumerate(units)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    results[futures[fut]] = fut.result()   # re-raises an abort
                    if progress:
                        progress(results[futures[fut]])
        except BaseException:  # abort or Ctrl-C: do not start the units still queued
            for fut in pending:
                fut.cancel()
            raise
    return [results[i] for i in range(len(units))]


def summarize(results: list[PushResult]) -> dict[str, int]:
    return {outcome: sum(r.outcome == outcome for r in results) for outcome in OUTCOMES}


def _guarded(one: Callable[..., PushResult], client: MenderClient, unit: Unit, force: bool) -> PushResult:
    """A refusal with an HTTP status fails this unit only; no status means no server: abort."""
    try:
        return one(client, unit, force)
    except ServerError as exc:
        if exc.status is None or exc.status in (401, 403):
            raise
        return PushResult(unit.name, unit.identity, unit.fingerprint, "failed", str(exc))


def _push_v2(client: MenderClient, unit: Unit, force: bool) -> PushResult:
    answer = client.preauthorize(unit.identity, unit.pem, force=force)
    if answer.status == 201:
        device_id = (answer.location or "").rstrip("/").rsplit("/", 1)[-1] or None
        return PushResult(unit.name, unit.identity, unit.fingerprint, "preauthorized",
                          "forced" if force else "", device_id, "preauthorized")
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
        loose.setdefault(_loose_identity(d.get("identity_data") or {}), []).append(d)
    results = []
    for unit in units:
        device = exact.get(canonical_identity(unit.identity))
        result = _device_status(unit, device)
        for other in loose.get(_loose_identity(unit.identity), []):
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
            kind = "" if isinstance(v, str) else f" ({_json_type(v)})"
            diffs.append(f"{k}={json.dumps(v)}{kind} vs ours {our_k}={json.dumps(our_v)}")
    return (f"device {other.get('id')} ({other.get('status')}) has an identity that differs only in value "
            f"types or formatting: {'; '.join(diffs)}; the server matches identities exactly, so the "
            f"preauthorization does not apply to it — make identity_data match what the device sends")


def _loose_identity(identity: dict) -> str:
    """Identity with types, case and separators erased, to spot near misses."""
    norm = {_norm_attr(k): re.sub(r"[\s:.\-]", "", (v if isinstance(v, str) else json.dumps(v)).lower())
            for k, v in identity.items()}
    return json.dumps(norm, sort_keys=True)


def _norm_attr(name: str) -> str:
    return name.strip().lower()


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
    except (ValueError, TypeError):
        return None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return "an array" if isinstance(value, list) else "an object"
    return "a string"
