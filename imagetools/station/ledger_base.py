"""What every ledger backend shares: the units and attempts, their methods written once.

A unit's key must ship on one card that passed, and never on a card that did not. The ledger is
the record that decides it: an attempt is written (and committed) before the first byte reaches
a card and ended after the verify, so a station killed while writing leaves a row in 'writing'
that the next open on the same host turns into 'interrupted'. A unit's state is derived from its
attempts, never stored; units.taken (an attempt other than refused exists) only lets allocation
find a free unit by index, is set in the transaction that changes the unit's attempts, and is
checked against the attempts before a unit is handed out.

Two backends build on this module: an SQLite file (ledger_sqlite, one host) and a PostgreSQL
database (ledger_pg, every station of a line). Every public method is written once here over a
few SQL statements both understand; a backend supplies the connection, its transactions, its
errors and its locks (SQLite takes the database's write lock, BEGIN IMMEDIATE; PostgreSQL locks
the unit's row, SELECT ... FOR UPDATE, and allocates with SKIP LOCKED). The rules both obey
(derive_unit_state, refuse_taken, export, the report's deciding attempt, text cleaning) are in
ledger_rules; `ledger` opens the backend a path or URL names.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, Self

from ..errors import UsageError
from .ledger_rules import (
    ENDINGS,
    _alive,
    _digest,
    _json,
    _line,
    _now,
    _own_start,
    _parsed,
    _str,
    derive_unit_state,
    export,
    refuse_taken,
    report_rows,
)

BUSY_SECONDS = 10.0  # how long a station waits for another one's transaction
KILLED = "the station process ended while writing (killed?)"
SCHEMA_VERSION = 2  # each backend has one migration step per version (MIGRATIONS)
MAX_REGISTER = 200_000  # units in one register call (one transaction)
MAX_OUT_ENTRIES = 200_000
MAX_RECENT = 1000
RATE_WINDOW = timedelta(minutes=10)  # cards per hour = passed in the last 10 minutes x 6

_TOKEN = re.compile(r"[A-Za-z0-9._:-]{8,128}")
# Whether a unit (its key: the placeholder) has an attempt that counts: units.taken caches it.
_TAKEN = (
    "CASE WHEN EXISTS (SELECT 1 FROM attempts WHERE attempts.fingerprint = ? AND attempts.state <> 'refused')"
    " THEN 1 ELSE 0 END"
)


@dataclass(frozen=True)
class UnitEntry:
    """A unit as the ledger registers it: what allocation hands to a station."""

    name: str
    fingerprint: str
    identity: dict[str, Any]
    base_sha256: str


@dataclass(frozen=True)
class Allocation:
    """A unit taken for one card: the 'writing' attempt that holds it, ended by `end`."""

    attempt: int
    unit: str
    fingerprint: str
    identity: dict[str, Any] | None


class Db(Protocol):
    """One transaction of a backend; SQL with '?' placeholders, rows as mappings."""

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Mapping[str, Any]]: ...

    def one(self, sql: str, params: Sequence[Any] = ()) -> Mapping[str, Any] | None: ...

    def many(self, sql: str, params: Iterable[Sequence[Any]]) -> None: ...


class Ledger:
    """The attempts and units of one ledger, for one station; safe to share between threads.

    `path` names the ledger in messages: the file, or the URL without its password."""

    path: str
    # How allocate locks the unit it reads (SQLite's transaction holds the whole database).
    _SKIP_LOCKED = ""

    def __init__(self, path: str, station: str) -> None:
        self.path = path
        self.station = station
        self.host = socket.gethostname()
        self._lock = threading.Lock()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what a backend supplies ---------------------------------------------------------------

    def _transaction(self) -> AbstractContextManager[Db]:
        """One write transaction: committed at the end, rolled back on any error."""
        raise NotImplementedError

    def _statements(self) -> AbstractContextManager[Db]:
        """Statements each atomic on its own (end's one UPDATE): a transaction, or none where a
        round trip for BEGIN and COMMIT costs more than the statement."""
        return self._transaction()

    def _reading(self) -> AbstractContextManager[Db]:
        """One read-only snapshot (a dashboard never blocks a station)."""
        raise NotImplementedError

    def _lock_unit(self, db: Db, fingerprint: str) -> None:
        """Hold the unit until commit (begin): nothing to do where the transaction holds all."""

    def _lock_name(self, db: Db, name: str) -> None:
        """Hold a named lock until commit (the schema, the unit list): nothing to do likewise."""

    # --- one card, named by the operator (flash) -----------------------------------------------

    def begin(
        self,
        *,
        unit: str,
        fingerprint: str,
        base_sha256: str,
        target: str,
        serial: str | None,
        pinned: bool,
        identity: dict | None = None,
        again: bool = False,
    ) -> int:
        """Take the unit for one card, or refuse (UsageError): retired, passed without `again`, or
        being written now. Decided and committed in one write transaction, so of two stations
        racing for a unit exactly one gets it, and the row survives a crash right after."""
        fingerprint = _digest(fingerprint, "fingerprint")
        base_sha256 = _digest(base_sha256, "base sha256")
        with self._transaction() as db:
            self._reap(db)
            self._lock_unit(db, fingerprint)
            rows = db.rows("SELECT * FROM attempts WHERE fingerprint = ? ORDER BY id", (fingerprint,))
            refuse_taken(unit, fingerprint, [export(row) for row in rows], again)
            attempt = self._insert(
                db,
                "writing",
                unit=unit,
                fingerprint=fingerprint,
                base_sha256=base_sha256,
                target=target,
                serial=serial,
                pinned=pinned,
                identity=identity,
            )
            db.rows("UPDATE units SET taken = 1 WHERE fingerprint = ?", (fingerprint,))
            assert attempt is not None
            return attempt

    def refuse(
        self,
        *,
        unit: str,
        fingerprint: str,
        base_sha256: str,
        target: str,
        error: str,
        pinned: bool,
        serial: str | None = None,
    ) -> int:
        """Record an attempt refused before any byte was written (it does not retire the unit).
        Its digests are stored as given, not checked: a refusal is recorded whatever its input."""
        with self._transaction() as db:
            attempt = self._insert(
                db,
                "refused",
                unit=unit,
                fingerprint=fingerprint,
                base_sha256=base_sha256,
                target=target,
                serial=serial,
                pinned=pinned,
                identity=None,
                error=error,
            )
            assert attempt is not None
            return attempt

    def end(
        self,
        attempt: int,
        state: str,
        *,
        error: str | None = None,
        bytes_written: int = 0,
        zeroing: str | None = None,
        checks: list[dict] | None = None,
        times: dict | None = None,
    ) -> None:
        """End an attempt in 'writing' as passed, failed or interrupted, or as refused when not a
        byte was written after all (another card of its request was refused); else UsageError.
        Ending it again as the same state does nothing: a retry after a lost connection."""
        if state not in ENDINGS + ("refused",):
            raise UsageError(f"an attempt ends as passed, failed, interrupted or refused, not {state!r}")
        with self._statements() as db:
            done = db.one(
                "UPDATE attempts SET state = ?, ended = ?, error = ?, bytes_written = ?, zeroing = ?,"
                " checks = ?, times = ? WHERE id = ? AND state = 'writing' RETURNING fingerprint",
                (state, _now(), _line(error), int(bytes_written), _line(zeroing), _json(checks), _json(times), attempt),
            )
            if done is not None:
                if state == "refused":  # not a byte written: the unit may be free again
                    _refresh_taken(db, done["fingerprint"])
                return
            row = db.one("SELECT state, fingerprint FROM attempts WHERE id = ?", (attempt,))
            if row is None:
                raise UsageError(f"ledger {self.path} has no attempt {attempt}")
            if row["state"] != state:
                raise UsageError(
                    f"attempt {attempt} in ledger {self.path} has already ended as "
                    f"{_str(row['state'])}, not {state}; an attempt ends once"
                )
            if state == "refused":  # a repeat: its first call may have been cut before this
                _refresh_taken(db, row["fingerprint"])

    def reap(self) -> list[int]:
        """Turn this host's 'writing' attempts whose process has gone into 'interrupted' (their
        unit is then retired); other hosts' rows are theirs to resolve. Returns the ids."""
        with self._transaction() as db:
            return self._reap(db)

    # --- the units of a line (station) ---------------------------------------------------------

    @staticmethod
    def units_of(out: str | os.PathLike, trust: str | os.PathLike | None = None) -> list[UnitEntry]:
        """The units published in OUT, each signature-checked (against `trust` when given), by
        name; entries that are no unit directory (batch files, the ledger) are skipped."""
        from ..published import load_unit
        from ..unitformat import UNIT_FILE

        out = Path(out)
        if not out.is_dir():
            raise UsageError(f"{out} is not a directory of units (an emit OUT)")
        entries = []
        with os.scandir(out) as it:
            for n, entry in enumerate(it):
                if n >= MAX_OUT_ENTRIES:
                    raise UsageError(f"{out} holds more than {MAX_OUT_ENTRIES} entries: not an emit OUT")
                if (
                    not entry.name.startswith(".")
                    and entry.is_dir(follow_symlinks=False)
                    and os.path.lexists(os.path.join(entry.path, UNIT_FILE))
                ):
                    entries.append(entry.name)
        units = []
        for name in sorted(entries):
            unit = load_unit(out / name, trust)
            if unit.name != name:
                raise UsageError(
                    f"{out / name} holds unit {unit.name!r}: a unit directory keeps its unit's "
                    "name; run emit again or rename it back"
                )
            units.append(UnitEntry(unit.name, unit.fingerprint, dict(unit.identity or {}), unit.base_sha256))
        return units

    def register(self, entries: Iterable[UnitEntry]) -> int:
        """Add units to the ledger (what allocate hands out), in one transaction; a unit already
        there is kept (its identity and base follow the OUT). The same name with another key,
        or a key under another name, is refused (UsageError). Returns how many were new."""
        batch = _entries(entries)
        with self._transaction() as db:
            self._lock_name(db, "units")
            known = {_str(r["name"]): r for r in db.rows("SELECT name, fingerprint, identity, base_sha256 FROM units")}
            names = {_str(r["fingerprint"]): name for name, r in known.items()}
            new, changed = [], []
            for e in batch:
                _refuse_conflict(e, known.get(e.name), names.get(e.fingerprint), self.path)
                row = known.get(e.name)
                if row is None:
                    new.append((e.name, e.fingerprint, _json(e.identity), e.base_sha256, _now(), e.fingerprint))
                elif (row["identity"], row["base_sha256"]) != (_json(e.identity), e.base_sha256):
                    changed.append((_json(e.identity), e.base_sha256, e.name))
            db.many(
                f"INSERT INTO units (name, fingerprint, identity, base_sha256, registered, taken)"
                f" SELECT ?, ?, ?, ?, ?, {_TAKEN}",
                new,
            )
            db.many("UPDATE units SET identity = ?, base_sha256 = ? WHERE name = ?", changed)
            return len(new)

    def allocate(
        self, *, slot: str, target: str, serial: str | None, base_sha256: str, pinned: bool, token: str
    ) -> Allocation | None:
        """Take the first free registered unit (by name) of this base for one card, and begin
        its attempt, in one transaction: exactly once across every station of the ledger. A
        token seen before gives back its attempt (a retry after a lost connection); None when
        no unit is free."""
        base_sha256 = _digest(base_sha256, "base sha256")
        token = _token(token)
        with self._transaction() as db:
            after = ""
            while True:
                unit = db.one(
                    "UPDATE units SET taken = 1 WHERE name = (SELECT name FROM units WHERE base_sha256 = ?"
                    f" AND taken = 0 AND name > ? ORDER BY name LIMIT 1{self._SKIP_LOCKED})"
                    " RETURNING name, fingerprint, identity",
                    (base_sha256, after),
                )
                if unit is None:
                    return _by_token(db, token, base_sha256, slot, self.path)
                identity = _parsed(unit["identity"], dict)
                attempt = self._insert(
                    db,
                    "writing",
                    unit=unit["name"],
                    fingerprint=unit["fingerprint"],
                    base_sha256=base_sha256,
                    target=target,
                    serial=serial,
                    pinned=pinned,
                    identity=identity,
                    slot=slot,
                    token=token,
                    if_free=True,
                )
                if attempt is not None:
                    return Allocation(attempt, _str(unit["name"]) or "", _str(unit["fingerprint"]) or "", identity)
                again = _by_token(db, token, base_sha256, slot, self.path)
                if again is not None:  # a retry: its first call took a unit (this one is not taken)
                    _refresh_taken(db, unit["fingerprint"])
                    return again
                after = unit["name"]  # its attempts say taken (and now so does units.taken)

    # --- reading -------------------------------------------------------------------------------

    def unit_state(self, fingerprint: str) -> str:
        """'free', 'passed' or 'retired' (a unit being written is still 'free': see begin)."""
        fingerprint = _digest(fingerprint, "fingerprint")
        with self._reading() as db:
            rows = db.rows("SELECT state FROM attempts WHERE fingerprint = ?", (fingerprint,))
        return derive_unit_state(row["state"] for row in rows)

    def retired(self) -> set[str]:
        """Fingerprints of the retired units: keys to take off the server (`preauth remove`)."""
        with self._reading() as db:
            return _retired(db)

    def passed_units(self) -> set[str]:
        """Names of the units whose key shipped on a card that passed (`preauth push --ledger`)."""
        with self._reading() as db:
            rows = db.rows("SELECT DISTINCT unit FROM attempts WHERE state = 'passed'")
        return {name for name in (_str(r["unit"]) for r in rows) if name}

    def records(self) -> list[dict[str, Any]]:
        """Every attempt, oldest first, as export dicts."""
        with self._reading() as db:
            return [export(row) for row in db.rows("SELECT * FROM attempts ORDER BY id")]

    def record(self, attempt: int) -> dict[str, Any]:
        """One attempt as an export dict (what flash reports and `--log` appends)."""
        with self._reading() as db:
            row = db.one("SELECT * FROM attempts WHERE id = ?", (attempt,))
        if row is None:
            raise UsageError(f"ledger {self.path} has no attempt {attempt}")
        return export(row)

    def export_line(self, attempt: int) -> str:
        """One JSON line (sorted keys) of an attempt, for the station's `--log`."""
        return json.dumps(self.record(attempt), sort_keys=True)

    def recent(self, n: int = 20) -> list[dict[str, Any]]:
        """The n latest attempts of every station, newest (ended or started) first."""
        n = max(0, min(int(n), MAX_RECENT))
        with self._reading() as db:
            rows = db.rows("SELECT * FROM attempts ORDER BY COALESCE(ended, started) DESC, id DESC LIMIT ?", (n,))
        return [export(row) for row in rows]

    def counts(self) -> dict[str, Any]:
        """The line at a glance: cards (attempts) passed, failed, interrupted and being written;
        units retired and free (registered, never taken); cards per hour over the last 10
        minutes; the stations that have written to this ledger."""
        since = (datetime.now(UTC) - RATE_WINDOW).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self._reading() as db:
            states = {
                r["state"]: int(r["n"]) for r in db.rows("SELECT state, COUNT(*) AS n FROM attempts GROUP BY state")
            }
            lately = db.rows("SELECT COUNT(*) AS n FROM attempts WHERE state = 'passed' AND ended >= ?", (since,))
            free = db.rows("SELECT COUNT(*) AS n FROM units WHERE taken = 0")
            retired = len(_retired(db))
            stations = db.rows("SELECT DISTINCT station FROM attempts ORDER BY station")
        return {
            **{s: states.get(s, 0) for s in ENDINGS + ("writing",)},
            "retired": retired,
            "free": int(free[0]["n"]),  # COUNT(*) gives one row, always
            "per_hour": 6 * int(lately[0]["n"]),
            "stations": [name for name in (_str(r["station"]) for r in stations) if name],
        }

    def report(self) -> list[dict[str, Any]]:
        """One row per unit (registered, or seen only in attempts), by name: see report_rows."""
        with self._reading() as db:
            units = db.rows("SELECT name, fingerprint, identity FROM units")
            attempts = [export(row) for row in db.rows("SELECT * FROM attempts ORDER BY id")]
        return report_rows(units, attempts)

    # --- inside a transaction ------------------------------------------------------------------

    def _reap(self, db: Db) -> list[int]:
        rows = db.rows("SELECT id, pid, pid_start FROM attempts WHERE state = 'writing' AND host = ?", (self.host,))
        gone = []
        for row in rows:
            if not _alive(row["pid"], row["pid_start"]):
                done = db.rows(
                    "UPDATE attempts SET state = 'interrupted', ended = ?, error = ?"
                    " WHERE id = ? AND state = 'writing' RETURNING id",
                    (_now(), KILLED, row["id"]),
                )
                gone += [r["id"] for r in done]
        return gone

    def _insert(
        self,
        db: Db,
        state: str,
        *,
        unit: str,
        fingerprint: str,
        base_sha256: str,
        target: str,
        serial: str | None,
        pinned: bool,
        identity: dict | None,
        error: str | None = None,
        slot: str | None = None,
        token: str | None = None,
        if_free: bool = False,
    ) -> int | None:
        """The attempt's id. With if_free (allocate), None and nothing inserted when the unit has
        an attempt that counts (a commit this transaction's snapshot missed, or a stale
        units.taken), or when the token is in the ledger already (a retry's first call)."""
        pid = os.getpid()
        started = _now()
        values: tuple[Any, ...] = (
            _line(unit),
            _line(fingerprint),
            _json(identity),
            _line(base_sha256),
            _line(target),
            _line(serial),
            self.station,
            self.host,
            pid,
            _own_start(pid),
            int(bool(pinned)),
            started,
            None if state == "writing" else started,
            state,
            _line(error),
            _line(slot),
            token,
        )
        guard = ""
        if if_free:
            guard = f" WHERE {_TAKEN} = 0 ON CONFLICT (token) DO NOTHING"
            values += (fingerprint,)
        row = db.one(
            "INSERT INTO attempts (unit, fingerprint, identity, base_sha256, target, serial, station, host, pid,"
            " pid_start, pinned, started, ended, state, error, slot, token)"
            " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?" + guard + " RETURNING id",
            values,
        )
        return None if row is None else int(row["id"])


def _refresh_taken(db: Db, fingerprint: str) -> None:
    """units.taken from the unit's attempts (in the transaction that changed them)."""
    db.rows(f"UPDATE units SET taken = {_TAKEN} WHERE fingerprint = ?", (fingerprint, fingerprint))


def _retired(db: Db) -> set[str]:
    states: dict[str, list[str]] = {}
    for row in db.rows(
        "SELECT fingerprint, state FROM attempts WHERE state IN ('passed', 'failed', 'interrupted')"
        " GROUP BY fingerprint, state"
    ):
        fingerprint = _str(row["fingerprint"])
        if fingerprint:  # a row damaged by hand names no key to take off the server
            states.setdefault(fingerprint, []).append(row["state"])
    return {fp for fp, seen in states.items() if derive_unit_state(seen) == "retired"}


def _by_token(db: Db, token: str, base_sha256: str, slot: str, path: str) -> Allocation | None:
    """The attempt a token already took (refused if it was taken for another base or slot)."""
    row = db.one("SELECT * FROM attempts WHERE token = ?", (token,))
    if row is None:
        return None
    if (row["base_sha256"], _str(row["slot"])) != (base_sha256, _line(slot)):
        raise UsageError(
            f"allocation token of attempt {row['id']} in ledger {path} was used for slot "
            f"{_str(row['slot'])} and another base or slot now; give each allocation its own token"
        )
    return Allocation(
        int(row["id"]), _str(row["unit"]) or "", _str(row["fingerprint"]) or "", _parsed(row["identity"], dict)
    )


def _entries(entries: Iterable[UnitEntry]) -> list[UnitEntry]:
    """The entries checked and without repeats, at most MAX_REGISTER."""
    out: dict[str, UnitEntry] = {}
    keys: dict[str, str] = {}
    for n, e in enumerate(entries):
        if n >= MAX_REGISTER:
            raise UsageError(f"more than {MAX_REGISTER} units in one register call; register them in parts")
        e = _entry(e)
        other = out.get(e.name)
        if other is not None and other != e:
            raise UsageError(f"unit {e.name} is given twice, with two keys or identities; one unit, one entry")
        if keys.setdefault(e.fingerprint, e.name) != e.name:
            raise UsageError(
                f"units {keys[e.fingerprint]} and {e.name} have the same key "
                f"({e.fingerprint[:16]}...): one key, one unit"
            )
        out[e.name] = e
    return list(out.values())


def _entry(e: UnitEntry) -> UnitEntry:
    name = e.name
    if not isinstance(name, str) or not 0 < len(name) <= 255 or not name.isprintable() or name != name.strip():
        raise UsageError(f"unit name {_str(name)!r:.80} is not a name of up to 255 printable characters")
    if not isinstance(e.identity, dict):
        raise UsageError(f"unit {name}: its identity is not an object")
    return UnitEntry(
        name,
        _digest(e.fingerprint, f"unit {name}: fingerprint"),
        e.identity,
        _digest(e.base_sha256, f"unit {name}: base sha256"),
    )


def _refuse_conflict(e: UnitEntry, row: Mapping[str, Any] | None, name_of_key: str | None, path: str) -> None:
    if row is not None and row["fingerprint"] != e.fingerprint:
        raise UsageError(
            f"unit {e.name} is in ledger {path} with key {_str(row['fingerprint'])!s:.16}..., "
            f"not {e.fingerprint[:16]}...: two units of one name; give each OUT its own unit names "
            "or its own ledger"
        )
    if name_of_key is not None and name_of_key != e.name:
        raise UsageError(
            f"unit {e.name} has the key of unit {name_of_key} in ledger {path} "
            f"({e.fingerprint[:16]}...): one key, one unit; was the unit renamed?"
        )


def _token(token: Any) -> str:
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise UsageError("an allocation token is 8 to 128 letters, digits or ._:- (a uuid4 per card)")
    return token
