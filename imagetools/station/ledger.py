"""The station ledger: every flash attempt of a unit onto a card, recorded in SQLite.

A unit's key must ship on one card that passed, and never on a card that did not. The ledger is
the record that decides it: an attempt is written (and committed) before the first byte reaches
a card and ended after the verify, so a station killed while writing leaves a row in 'writing'
that the next open on the same host turns into 'interrupted'. A unit's state is derived from its
attempts, never stored, so there is no second table that could disagree with them.

Only SQLite is implemented. The schema and the public methods are what a PostgreSQL backend for
several stations implements too; there, `begin` locks the unit's rows (SELECT ... FOR UPDATE)
where SQLite takes the database's write lock (BEGIN IMMEDIATE). The rules a backend must share
(derive_unit_state, the refusals, the export dict) are module functions, written once.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import sqlite3
import string
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Self

from ..errors import EnvironmentProblem, ImageToolsError, UsageError, from_oserror
from ..strict import loads, require_regular

BUSY_SECONDS = 10.0     # how long a station waits for another one's transaction
ENDINGS = ("passed", "failed", "interrupted")
RETIRING = frozenset({"failed", "interrupted"})   # the key went onto a card that did not pass
KILLED = "the station process ended while writing (killed?)"
MAX_TEXT = 2000         # one-line text columns (error, target, ...) are cut here

# One entry per schema version: MIGRATIONS[n] takes a ledger from version n to n + 1.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('schema_version', '1')",
        """CREATE TABLE attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    unit TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    identity TEXT,
    base_sha256 TEXT NOT NULL,
    target TEXT NOT NULL,
    serial TEXT,
    station TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    pinned INTEGER NOT NULL CHECK (pinned IN (0, 1)),
    started TEXT NOT NULL,
    ended TEXT,
    state TEXT NOT NULL CHECK (state IN ('writing', 'passed', 'failed', 'interrupted', 'refused')),
    error TEXT,
    bytes_written INTEGER NOT NULL DEFAULT 0,
    zeroing TEXT,
    checks TEXT,
    times TEXT,
    CHECK ((state = 'writing') = (ended IS NULL))
)""",
        "CREATE INDEX attempts_by_fingerprint ON attempts (fingerprint)",
        "CREATE INDEX attempts_writing ON attempts (host) WHERE state = 'writing'",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9]{1,9}")
# A PEM private key, whole or cut short, that slipped into an error text or a check's detail;
# an END line left without its BEGIN takes the base64 before it along (see _unkeyed).
_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----")
_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----.*?(?:" + _PEM_END.pattern + r"|\Z)", re.DOTALL)
_PEM_CHARS = string.ascii_letters + string.digits + "+/=-" + string.whitespace
_REMOVED = "[key material removed]"
_LOCKED_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_HOST_CODES = {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN,
               sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH, sqlite3.SQLITE_PROTOCOL}


class Ledger:
    """The attempts of one ledger file, for one station; safe to share between threads."""

    path: str

    def __init__(self, path: str, conn: sqlite3.Connection, station: str) -> None:
        self.path = path
        self.station = station
        self.host = socket.gethostname()
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike, *, station: str | None = None) -> Ledger:
        """Create the file (its directory must exist) or open and migrate it, then reap this
        host's attempts whose process has gone."""
        path = os.fspath(path)
        _check_path(path)
        with _mapped(path):
            conn = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        ledger = cls(path, conn, _line(station or socket.gethostname()))
        try:
            ledger._prepare()
            ledger.reap()
        except BaseException:
            conn.close()
            raise
        return ledger

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def begin(self, *, unit: str, fingerprint: str, base_sha256: str, target: str, serial: str | None,
              pinned: bool, identity: dict | None = None, again: bool = False) -> int:
        """Take the unit for one card, or refuse (UsageError): retired, passed without `again`, or
        being written now. Decided and committed in one write transaction, so of two stations
        racing for a unit exactly one gets it, and the row survives a crash right after."""
        fingerprint = _digest(fingerprint, "fingerprint")
        base_sha256 = _digest(base_sha256, "base sha256")
        with self._transaction() as db:
            self._reap(db)
            rows = db.execute("SELECT * FROM attempts WHERE fingerprint = ? ORDER BY id", (fingerprint,))
            refuse_taken(unit, fingerprint, [export(row) for row in rows], again)
            return self._insert(db, "writing", unit=unit, fingerprint=fingerprint, base_sha256=base_sha256,
                                target=target, serial=serial, pinned=pinned, identity=identity)

    def refuse(self, *, unit: str, fingerprint: str, base_sha256: str, target: str, error: str,
               pinned: bool, serial: str | None = None) -> int:
        """Record an attempt refused before any byte was written (it does not retire the unit).
        Its digests are stored as given, not checked: a refusal is recorded whatever its input."""
        with self._transaction() as db:
            return self._insert(db, "refused", unit=unit, fingerprint=fingerprint, base_sha256=base_sha256,
                                target=target, serial=serial, pinned=pinned, identity=None, error=error)

    def end(self, attempt: int, state: str, *, error: str | None = None, bytes_written: int = 0,
            zeroing: str | None = None, checks: list[dict] | None = None, times: dict | None = None) -> None:
        """End an attempt in 'writing' as passed, failed or interrupted, or as refused when not a
        byte was written after all (another card of its request was refused); else UsageError."""
        if state not in ENDINGS + ("refused",):
            raise UsageError(f"an attempt ends as passed, failed, interrupted or refused, not {state!r}")
        with self._transaction() as db:
            row = db.execute("SELECT state FROM attempts WHERE id = ?", (attempt,)).fetchone()
            if row is None:
                raise UsageError(f"ledger {self.path} has no attempt {attempt}")
            if row["state"] != "writing":
                raise UsageError(f"attempt {attempt} in ledger {self.path} has already ended as "
                                 f"{_str(row['state'])}; an attempt ends once")
            db.execute("UPDATE attempts SET state = ?, ended = ?, error = ?, bytes_written = ?, zeroing = ?,"
                       " checks = ?, times = ? WHERE id = ?",
                       (state, _now(), _line(error), int(bytes_written), _line(zeroing), _json(checks),
                        _json(times), attempt))

    def reap(self) -> list[int]:
        """Turn this host's 'writing' attempts whose process has gone into 'interrupted' (their
        unit is then retired); other hosts' rows are theirs to resolve. Returns the ids."""
        with self._transaction() as db:
            return self._reap(db)

    def unit_state(self, fingerprint: str) -> str:
        """'free', 'passed' or 'retired' (a unit being written is still 'free': see begin)."""
        fingerprint = _digest(fingerprint, "fingerprint")
        rows = self._rows("SELECT state FROM attempts WHERE fingerprint = ?", (fingerprint,))
        return derive_unit_state(row["state"] for row in rows)

    def retired(self) -> set[str]:
        """Fingerprints of the retired units: keys to take off the server (`preauth remove`)."""
        states: dict[str, list[str]] = {}
        for row in self._rows("SELECT fingerprint, state FROM attempts"):
            states.setdefault(_str(row["fingerprint"]) or "", []).append(row["state"])
        return {fp for fp, seen in states.items() if derive_unit_state(seen) == "retired"}

    def records(self) -> list[dict[str, Any]]:
        """Every attempt, oldest first, as export dicts."""
        return [export(row) for row in self._rows("SELECT * FROM attempts ORDER BY id")]

    def record(self, attempt: int) -> dict[str, Any]:
        """One attempt as an export dict (what flash reports and `--log` appends)."""
        rows = self._rows("SELECT * FROM attempts WHERE id = ?", (attempt,))
        if not rows:
            raise UsageError(f"ledger {self.path} has no attempt {attempt}")
        return export(rows[0])

    def export_line(self, attempt: int) -> str:
        """One JSON line (sorted keys) of an attempt, for the station's `--log`."""
        return json.dumps(self.record(attempt), sort_keys=True)

    def _prepare(self) -> None:
        """Refuse a foreign file before changing anything in it; then WAL, and create or migrate
        inside one write transaction (two stations opening a new ledger at once create it once)."""
        with self._lock, _mapped(self.path):
            _schema_version(self._conn, self.path)
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise EnvironmentProblem(f"ledger {self.path} cannot use WAL mode (it stays in {mode!r}); "
                                         "put the ledger on a local filesystem")
            self._conn.execute("PRAGMA synchronous=FULL")
        with self._transaction() as db:
            version = _schema_version(db, self.path)
            if version < SCHEMA_VERSION:
                _migrate(db, version)
            _check_schema(db, self.path)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: the write lock is taken first, so what is decided inside
        still holds at commit; rolled back on any error."""
        with self._lock, _mapped(self.path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _rows(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock, _mapped(self.path):
            return self._conn.execute(sql, params).fetchall()

    def _reap(self, db: sqlite3.Connection) -> list[int]:
        rows = db.execute("SELECT id, pid, pid_start FROM attempts WHERE state = 'writing' AND host = ?",
                          (self.host,)).fetchall()
        gone = [row["id"] for row in rows if not _alive(row["pid"], row["pid_start"])]
        now = _now()
        db.executemany("UPDATE attempts SET state = 'interrupted', ended = ?, error = ? WHERE id = ?",
                       [(now, KILLED, attempt) for attempt in gone])
        return gone

    def _insert(self, db: sqlite3.Connection, state: str, *, unit: str, fingerprint: str, base_sha256: str,
                target: str, serial: str | None, pinned: bool, identity: dict | None,
                error: str | None = None) -> int:
        pid = os.getpid()
        started = _now()
        cursor = db.execute(
            "INSERT INTO attempts (unit, fingerprint, identity, base_sha256, target, serial, station, host, pid,"
            " pid_start, pinned, started, ended, state, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (_line(unit), _line(fingerprint), _json(identity), _line(base_sha256), _line(target), _line(serial),
             self.station, self.host, pid, _own_start(pid), int(bool(pinned)), started,
             None if state == "writing" else started, state, _line(error)))
        return int(cursor.lastrowid or 0)


def derive_unit_state(states: Iterable[Any]) -> str:
    """A unit's state from its attempts' states: passed wins, then any failed or interrupted
    attempt retires it (its key is on a card that did not pass), else it is free."""
    seen = set(states)
    if "passed" in seen:
        return "passed"
    return "retired" if seen & RETIRING else "free"


def refuse_taken(unit: str, fingerprint: str, attempts: list[dict[str, Any]], again: bool) -> None:
    """UsageError if a unit with these attempts (export dicts) may not be flashed now."""
    key = f"unit {unit} (key {fingerprint[:16]}...)"
    state = derive_unit_state(a["state"] for a in attempts)
    if state == "retired":
        first = next(a for a in attempts if a["state"] in RETIRING)
        raise UsageError(f"{key} is retired: attempt {first['attempt']} onto {first['target']} at "
                         f"{first['started']} ended {first['state']} ({first['error'] or 'no error text'}); "
                         "its key must never ship on another card, even with --again; flash another unit, "
                         "and `imagetools preauth remove` can take this key off the server")
    if state == "passed" and not again:
        last = [a for a in attempts if a["state"] == "passed"][-1]
        raise UsageError(f"{key} was already flashed to {last['target']} at {last['started']} "
                         f"(attempt {last['attempt']}, station {last['station']}); --again to flash it once more")
    live = next((a for a in attempts if a["state"] == "writing"), None)
    if live is not None:
        raise UsageError(f"{key} is being written by station {live['station']} on host {live['host']} since "
                         f"{live['started']} (attempt {live['attempt']}); flash another unit or wait for it")


def export(row: sqlite3.Row) -> dict[str, Any]:
    """An attempt as the flash JSON output and the `--log` name it. Every value is checked, as
    the file may have been edited: a JSON column that does not parse comes back as null."""
    state = _str(row["state"])
    started = _str(row["started"])
    return {
        "attempt": _int(row["id"]), "unit": _str(row["unit"]), "fingerprint": _str(row["fingerprint"]),
        "identity": _parsed(row["identity"], dict), "base_sha256": _str(row["base_sha256"]),
        "target": _str(row["target"]), "serial": _str(row["serial"]), "station": _str(row["station"]),
        "host": _str(row["host"]), "pinned": row["pinned"] == 1, "started": started,
        "ended": _str(row["ended"]), "time": started, "state": state, "ok": state == "passed",
        "error": _str(row["error"]), "bytes_written": _int(row["bytes_written"]),
        "zeroing": _str(row["zeroing"]), "checks": _parsed(row["checks"], list),
        "times": _parsed(row["times"], dict),
    }


def _check_path(path: str) -> None:
    """A regular file or nothing, checked before sqlite opens it: a FIFO would block the open,
    a device or a symlink would put the record of what shipped somewhere else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UsageError(f"the directory of ledger {path} does not exist; create {parent} "
                             "or name another ledger path") from None
        return
    except OSError as exc:
        raise from_oserror(exc, f"cannot use ledger {path}", UsageError) from None
    require_regular(st, path, "ledger")
    for side in (path + "-wal", path + "-shm"):
        if os.path.lexists(side):
            require_regular(os.lstat(side), side, "ledger file")


@contextmanager
def _mapped(path: str) -> Iterator[None]:
    """sqlite3 errors as one-line imagetools errors."""
    try:
        yield
    except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
        raise   # a bug of the caller (a closed ledger, a value sqlite cannot store), not of the file
    except sqlite3.Error as exc:
        raise _error(path, exc) from None


def _error(path: str, exc: sqlite3.Error) -> ImageToolsError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    text = _line(str(exc))
    if code in _LOCKED_CODES:
        return EnvironmentProblem(f"ledger {path} is locked by another station for more than {BUSY_SECONDS:g} s; "
                                  f"run again, or find the process holding it (fuser {path})")
    if code in _HOST_CODES:
        return EnvironmentProblem(f"cannot write ledger {path} ({text}); the station writes the ledger and its "
                                  "-wal and -shm files beside it: name a ledger path in a writable directory")
    if code == sqlite3.SQLITE_CORRUPT:
        return UsageError(f"ledger {path} is damaged ({text}); keep it for inspection and name a new ledger file")
    return UsageError(f"{path} is not an imagetools ledger ({text}); name another ledger file")


def _schema_version(db: sqlite3.Connection, path: str) -> int:
    """0 for an empty database, else its meta table's schema_version; a foreign database or a
    newer schema than this code knows is refused."""
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    if not names:
        return 0
    if "meta" not in names:
        raise UsageError(f"{path} is not an imagetools ledger (an SQLite database without a meta table); "
                         "name another ledger file")
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    value = row[0] if row else None
    if not isinstance(value, str) or not _VERSION.fullmatch(value) or int(value) < 1:
        raise UsageError(f"{path} is not an imagetools ledger (schema_version {_str(value)!r:.40}); "
                         "name another ledger file")
    if int(value) > SCHEMA_VERSION:
        raise UsageError(f"ledger {path} has schema version {value}, newer than this imagetools knows "
                         f"({SCHEMA_VERSION}); use the imagetools that wrote it, or a newer one")
    return int(value)


def _migrate(db: sqlite3.Connection, version: int) -> None:
    for step in MIGRATIONS[version:]:
        for sql in step:
            db.execute(sql)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


def _check_schema(db: sqlite3.Connection, path: str) -> None:
    """The file's tables, indexes and triggers are exactly ours: a hand-made trigger or an
    altered table would change what an insert does."""
    differ = sorted({obj[1] for obj in _objects(db) ^ _expected_objects()})
    if differ:
        raise UsageError(f"{path} is not an imagetools ledger (schema version {SCHEMA_VERSION}, but "
                         f"{', '.join(differ[:5])} differ from it); name another ledger file")


def _objects(db: sqlite3.Connection) -> frozenset[tuple[Any, ...]]:
    """Tables, indexes and triggers (not the statistics an operator's ANALYZE may add)."""
    return frozenset(tuple(row) for row in db.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_stat%'"))


@functools.cache
def _expected_objects() -> frozenset[tuple[Any, ...]]:
    """The schema every migration step together makes, built once in memory."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        _migrate(db, 0)
        return _objects(db)
    finally:
        db.close()


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
        raise EnvironmentProblem(f"cannot read /proc/{pid}/stat; the ledger needs /proc to tell a running "
                                 "flash from a killed one")
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
    """A text column as one line, whatever the file holds there (messages quote these)."""
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
