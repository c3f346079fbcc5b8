"""The ledger in one SQLite file (OUT/ledger.sqlite by default): the stations of one host.

WAL mode, so readers (a dashboard, `sqlite3`) never block a station; every write in one BEGIN
IMMEDIATE transaction, so what is decided inside (a unit is free) still holds at commit, and of
two stations racing for a unit exactly one gets it. The file is checked before sqlite opens it
and its schema compared with ours, so a hand-made trigger cannot change what an insert does.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import EnvironmentProblem, ImageToolsError, UsageError, from_oserror
from ..strict import require_regular
from . import ledger_base as common
from .ledger_base import SCHEMA_VERSION, Ledger
from .ledger_rules import _line, _str
from .ledger_schema import migrations

MIGRATIONS = migrations(identity="INTEGER PRIMARY KEY AUTOINCREMENT", bigint="INTEGER")
assert len(MIGRATIONS) == SCHEMA_VERSION

_VERSION_TEXT = frozenset("0123456789")
_LOCKED_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_HOST_CODES = {
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PERM,
    sqlite3.SQLITE_AUTH,
    sqlite3.SQLITE_PROTOCOL,
}


class _Db:
    """A transaction on the connection, in the shape ledger.Db names."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Mapping[str, Any]]:
        """Dicts keyed by the column names exactly, as psycopg's dict_row gives them: sqlite3.Row
        also matches a name in another case, which would hide a misspelt key until PostgreSQL."""
        cursor = self._conn.execute(sql, tuple(params))
        names = [column[0] for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> Mapping[str, Any] | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    def many(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, params)


class SqliteLedger(Ledger):
    """The ledger of one SQLite file."""

    def __init__(self, path: str, conn: sqlite3.Connection, station: str) -> None:
        super().__init__(path, station)
        self._conn = conn

    @classmethod
    def connect(cls, path: str, station: str) -> SqliteLedger:
        """Create the file (its directory must exist) or open and migrate it, then reap this
        host's attempts whose process has gone."""
        _check_path(path)
        with _mapped(path):
            conn = sqlite3.connect(path, timeout=common.BUSY_SECONDS, isolation_level=None, check_same_thread=False)
        ledger = cls(path, conn, station)
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

    def _prepare(self) -> None:
        """Refuse a foreign file before changing anything in it; then WAL, and create or migrate
        inside one write transaction (two stations opening a new ledger at once create it once)."""
        with self._lock, _mapped(self.path):
            _schema_version(self._conn, self.path)
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise EnvironmentProblem(
                    f"ledger {self.path} cannot use WAL mode (it stays in {mode!r}); "
                    "put the ledger on a local filesystem"
                )
            self._conn.execute("PRAGMA synchronous=FULL")
        with self._transaction() as db:
            conn = db._conn
            version = _schema_version(conn, self.path)
            if version < SCHEMA_VERSION:
                _migrate(conn, version)
            _check_schema(conn, self.path)

    @contextmanager
    def _transaction(self) -> Iterator[_Db]:
        """One IMMEDIATE transaction: the write lock is taken first, so what is decided inside
        still holds at commit; rolled back on any error."""
        with self._lock, _mapped(self.path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Db(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _reading(self) -> Iterator[_Db]:
        """A deferred transaction: one snapshot for every query inside, no write lock (WAL)."""
        with self._lock, _mapped(self.path):
            self._conn.execute("BEGIN")
            try:
                yield _Db(self._conn)
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")


def _check_path(path: str) -> None:
    """A regular file or nothing, checked before sqlite opens it: a FIFO would block the open,
    a device or a symlink would put the record of what shipped somewhere else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UsageError(
                f"the directory of ledger {path} does not exist; create {parent} or name another ledger path"
            ) from None
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
        raise  # a bug of the caller (a closed ledger, a value sqlite cannot store), not of the file
    except sqlite3.Error as exc:
        raise _error(path, exc) from None


def _error(path: str, exc: sqlite3.Error) -> ImageToolsError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    text = _line(str(exc))
    if code in _LOCKED_CODES:
        return EnvironmentProblem(
            f"ledger {path} is locked by another station for more than "
            f"{common.BUSY_SECONDS:g} s; run again, or find the process holding it "
            f"(fuser {path})"
        )
    if code in _HOST_CODES:
        return EnvironmentProblem(
            f"cannot write ledger {path} ({text}); the station writes the ledger and its "
            "-wal and -shm files beside it: name a ledger path in a writable directory"
        )
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
        raise UsageError(
            f"{path} is not an imagetools ledger (an SQLite database without a meta table); name another ledger file"
        )
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return check_version(row[0] if row else None, path)


def check_version(value: Any, path: str) -> int:
    """meta's schema_version as a number (both backends): refused when it is none, or newer
    than this code knows."""
    if not isinstance(value, str) or not 0 < len(value) <= 9 or not set(value) <= _VERSION_TEXT or int(value) < 1:
        raise UsageError(
            f"{path} is not an imagetools ledger (schema_version {_str(value)!r:.40}); name another ledger"
        )
    if int(value) > SCHEMA_VERSION:
        raise UsageError(
            f"ledger {path} has schema version {value}, newer than this imagetools knows "
            f"({SCHEMA_VERSION}); use the imagetools that wrote it, or a newer one"
        )
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
        raise UsageError(
            f"{path} is not an imagetools ledger (schema version {SCHEMA_VERSION}, but "
            f"{', '.join(differ[:5])} differ from it); name another ledger file"
        )


def _objects(db: sqlite3.Connection) -> frozenset[tuple[Any, ...]]:
    """Tables, indexes and triggers (not the statistics an operator's ANALYZE may add)."""
    return frozenset(
        tuple(row)
        for row in db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_stat%'")
    )


@functools.cache
def _reference() -> tuple[frozenset[tuple[Any, ...]], dict[str, tuple[str, ...]]]:
    """The schema every migration step together makes (built once in memory): its objects,
    and each table's columns in order."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        _migrate(db, 0)
        columns = {
            table: tuple(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
            for table in ("meta", "units", "attempts")
        }
        return _objects(db), columns
    finally:
        db.close()


def _expected_objects() -> frozenset[tuple[Any, ...]]:
    return _reference()[0]


def expected_columns() -> dict[str, tuple[str, ...]]:
    """Each table's columns, in order: what the PostgreSQL backend's schema must hold too."""
    return _reference()[1]
