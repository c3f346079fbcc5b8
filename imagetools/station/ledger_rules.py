"""The rules every ledger backend obeys, written once: a unit's state from its attempts, which
attempt decides it, what refuses a unit, an attempt as the flash JSON and `--log` name it, and
the cleaning of text that reaches the ledger (one line, bounded, never key material)."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..errors import EnvironmentProblem, ImageToolsError, UsageError
from ..strict import loads

ENDINGS = ("passed", "failed", "interrupted")
RETIRING = frozenset({"failed", "interrupted"})  # the key went onto a card that did not pass
MAX_TEXT = 2000  # one-line text columns (error, target, ...) are cut here
# What a report row says about a unit: the state of the attempt that decides it, or free.
REPORT_STATES = ("free", "writing", "passed", "failed", "interrupted")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# A PEM private key, whole or cut short, that slipped into an error text or a check's detail;
# an END line left without its BEGIN takes the base64 before it along (see _unkeyed).
_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----")
_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----.*?(?:" + _PEM_END.pattern + r"|\Z)", re.DOTALL)
_PEM_CHARS = string.ascii_letters + string.digits + "+/=-" + string.whitespace
_REMOVED = "[key material removed]"


def derive_unit_state(states: Iterable[Any]) -> str:
    """A unit's state from its attempts' states: passed wins, then any failed or interrupted
    attempt retires it (its key is on a card that did not pass), else it is free."""
    seen = set(states)
    if "passed" in seen:
        return "passed"
    return "retired" if seen & RETIRING else "free"


def deciding_attempt(attempts: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
    """(report state, the attempt behind it) of one unit's attempts (export dicts, oldest
    first): the last that passed; else the first that retired it (failed or interrupted);
    else the one being written; else free, with none."""
    passed = [a for a in attempts if a["state"] == "passed"]
    if passed:
        return "passed", passed[-1]
    retiring = next((a for a in attempts if a["state"] in RETIRING), None)
    if retiring is not None:
        return str(retiring["state"]), retiring
    writing = next((a for a in attempts if a["state"] == "writing"), None)
    return ("writing", writing) if writing is not None else ("free", None)


def report_rows(units: Iterable[Mapping[str, Any]], attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per unit, by name: the registered units (rows of name, fingerprint, identity)
    and those seen only in attempts (export dicts), each with the attempt deciding its state."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        by_key.setdefault(a["fingerprint"] or "", []).append(a)
    rows = []
    seen = set()
    for unit in units:
        key = _str(unit["fingerprint"]) or ""
        seen.add(key)
        rows.append(_report_row(_str(unit["name"]), key, _parsed(unit["identity"], dict), by_key.get(key, [])))
    for key, mine in by_key.items():
        if key not in seen:
            identity = next((a["identity"] for a in reversed(mine) if a["identity"] is not None), None)
            rows.append(_report_row(mine[-1]["unit"], key or None, identity, mine))
    return sorted(rows, key=lambda r: (r["name"] or "", r["fingerprint"] or ""))


def _report_row(
    name: str | None, fingerprint: str | None, identity: dict | None, attempts: list[dict[str, Any]]
) -> dict[str, Any]:
    state, decider = deciding_attempt(attempts)
    a = decider or {}
    return {
        "name": name,
        "identity": identity,
        "fingerprint": fingerprint,
        "state": state,
        "unit_state": derive_unit_state(x["state"] for x in attempts),
        "serial": a.get("serial"),
        "station": a.get("station"),
        "slot": a.get("slot"),
        "target": a.get("target"),
        "started": a.get("started"),
        "ended": a.get("ended"),
        "bytes_written": a.get("bytes_written"),
        "error": a.get("error"),
        "attempt": a.get("attempt"),
        "attempts": sum(x["state"] != "refused" for x in attempts),
    }


def refuse_taken(unit: str, fingerprint: str, attempts: list[dict[str, Any]], again: bool) -> None:
    """UsageError if a unit with these attempts (export dicts) may not be flashed now."""
    key = f"unit {unit} (key {fingerprint[:16]}...)"
    state = derive_unit_state(a["state"] for a in attempts)
    if state == "retired":
        first = next(a for a in attempts if a["state"] in RETIRING)
        raise UsageError(
            f"{key} is retired: attempt {first['attempt']} onto {first['target']} at "
            f"{first['started']} ended {first['state']} ({first['error'] or 'no error text'}); "
            "its key must never ship on another card, even with --again; flash another unit, "
            "and `imagetools preauth remove` can take this key off the server"
        )
    if state == "passed" and not again:
        last = [a for a in attempts if a["state"] == "passed"][-1]
        raise UsageError(
            f"{key} was already flashed to {last['target']} at {last['started']} "
            f"(attempt {last['attempt']}, station {last['station']}); --again to flash it once more"
        )
    live = next((a for a in attempts if a["state"] == "writing"), None)
    if live is not None:
        raise UsageError(
            f"{key} is being written by station {live['station']} on host {live['host']} since "
            f"{live['started']} (attempt {live['attempt']}); flash another unit or wait for it"
        )


def export(row: Mapping[str, Any]) -> dict[str, Any]:
    """An attempt as the flash JSON output and the `--log` name it. Every value is checked, as
    the database may have been edited: a JSON column that does not parse comes back as null.
    The allocation token stays inside the ledger."""
    state = _str(row["state"])
    started = _str(row["started"])
    return {
        "attempt": _int(row["id"]),
        "unit": _str(row["unit"]),
        "fingerprint": _str(row["fingerprint"]),
        "identity": _parsed(row["identity"], dict),
        "base_sha256": _str(row["base_sha256"]),
        "target": _str(row["target"]),
        "serial": _str(row["serial"]),
        "station": _str(row["station"]),
        "host": _str(row["host"]),
        "slot": _str(row["slot"]),
        "pinned": row["pinned"] == 1,
        "started": started,
        "ended": _str(row["ended"]),
        "time": started,
        "state": state,
        "ok": state == "passed",
        "error": _str(row["error"]),
        "bytes_written": _int(row["bytes_written"]),
        "zeroing": _str(row["zeroing"]),
        "checks": _parsed(row["checks"], list),
        "times": _parsed(row["times"], dict),
    }


def _alive(pid: Any, start: Any) -> bool:
    """Whether the process that wrote a row still runs: its pid with the same start time (a
    reused pid has another). A row with anything else in these columns counts as gone."""
    return isinstance(pid, int) and 0 < pid < 1 << 31 and isinstance(start, int) and _start_time(pid) == start


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot); None if no such process runs (a
    zombie has ended: it writes nothing more)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
        return None if fields[0] in (b"Z", b"X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _own_start(pid: int) -> int:
    start = _start_time(pid)
    if start is None:
        raise EnvironmentProblem(
            f"cannot read /proc/{pid}/stat; the ledger needs /proc to tell a running flash from a killed one"
        )
    return start


def _digest(value: Any, what: str) -> str:
    """A SHA-256 in the one form the ledger compares: 'AB..' and 'ab..' must not be two units."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise UsageError(f"{what} {_str(value)!r:.80} is not a SHA-256 digest in lowercase hex (64 digits)")
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean(value: Any) -> Any:
    """A value for JSON, any PEM private key in its strings removed: no key is ever stored here
    (anything that is not JSON already, a Path or an exception, becomes its text)."""
    if isinstance(value, dict):
        return {_unkeyed(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _unkeyed(str(value))


def _unkeyed(text: str) -> str:
    """text with every PEM private key replaced, in linear time (error texts may be long)."""
    parts = _PEM_END.split(_PEM_BLOCK.sub(_REMOVED, text))
    return _REMOVED.join([part.rstrip(_PEM_CHARS) for part in parts[:-1]] + parts[-1:])


def _line(text: Any) -> str | None:
    """One line of at most MAX_TEXT characters, without key material; None stays None."""
    if text is None:
        return None
    return " ".join(_clean(str(text)).split())[:MAX_TEXT]


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(_clean(value), sort_keys=True)


def _str(value: Any) -> str | None:
    """A text column as one line, whatever the database holds there (messages quote these)."""
    return _line(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parsed(value: Any, kind: type) -> Any:
    """A JSON column's value if it parses to `kind`, else None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = loads(value, "ledger column")
    except ImageToolsError:
        return None
    return parsed if isinstance(parsed, kind) else None
