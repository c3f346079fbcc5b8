"""Preauthorize units on the Mender Server and report the server's view of them.

The preauth file (written by `imagetools emit` as OUT/preauth.json, with the same units for people
in OUT/preauth.csv) is a JSON list of ``{"name": str, "identity_data": {str: str}, "pubkey": SPKI
PEM}``. Keys are always compared as SPKI DER: the server re-serializes the PEM it was given.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import DeviceListError, KeyMaterialError, ServerError, UsageError, from_oserror
from .keys import PublicKey, fingerprint, load_public, public_pem, same_key
from .mender import canonical_identity
from .server import BadResponse, MenderClient, json_type, read_regular_file

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
    reported at once (DeviceListError), before anything is sent."""
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


def load_identity(arg: str | None, default: Path) -> dict[str, str]:
    """A unit's identity from inline JSON, a JSON file, or `default` (identity.json beside an image).

    The file may hold the identity object itself or a preauth entry with 'identity_data'.
    """
    if arg is not None and arg.lstrip().startswith("{"):
        text, source = arg, "--identity"
    else:
        path = Path(arg) if arg is not None else default
        hint = "" if arg is not None else "; pass --identity JSON"
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
    """A refusal with an HTTP status fails this unit only. No status (no server), refused
    credentials or an answer breaking the API (BadResponse) abort the run."""
    try:
        return one(client, unit, force)
    except ServerError as exc:
        if exc.status is None or exc.status in (401, 403) or isinstance(exc, BadResponse):
            raise
        return PushResult(unit.name, unit.identity, unit.fingerprint, "failed", str(exc))


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
            kind = "" if isinstance(v, str) else f" ({json_type(v)})"
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
    except (ValueError, TypeError, RecursionError):
        return None
