"""The ledger in a PostgreSQL database (psycopg 3): every station of a line, on any host.

The same tables as the SQLite file, the same statements (ledger.Ledger), other locks: `begin`
holds the unit (an advisory lock on its key, and its units row FOR UPDATE), `allocate` takes the
first free units row FOR UPDATE SKIP LOCKED, so stations never wait on each other's units; the
attempt is inserted only if no commit took the unit meanwhile (READ COMMITTED: the guard is a
new statement, with a new snapshot). A retry after a lost connection is safe: `allocate` finds
its token's attempt, `end` with the same state does nothing.

Every wait is bounded: the connect (CONNECT_SECONDS), a lock (ledger_base.BUSY_SECONDS), a statement,
an idle transaction, and a dead peer (TCP keepalives, tcp_user_timeout). A lost connection is
LedgerUnavailable; the next call connects again. The URL's password is never in a message.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from ..errors import EnvironmentProblem, ImageToolsError, LedgerUnavailable, UsageError
from . import ledger_base as common
from .ledger_base import SCHEMA_VERSION, Db, Ledger
from .ledger_rules import _line
from .ledger_schema import migrations
from .ledger_sqlite import check_version, expected_columns

CONNECT_SECONDS = 5  # libpq's connect_timeout (at least 2)
STATEMENT_SECONDS = 30
IDLE_SECONDS = 60  # a station frozen inside a transaction lets go of its locks
# A peer that vanished (cable pulled) is noticed within about 15 s, reading or writing.
_NETWORK: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}
_SECRET_PARAMS = ("password", "sslpassword")
_GONE = (pg_errors.AdminShutdown, pg_errors.CrashShutdown, pg_errors.CannotConnectNow)
_WAITED = (pg_errors.LockNotAvailable, pg_errors.QueryCanceled)

MIGRATIONS = migrations(
    identity="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", bigint="BIGINT", collate=' COLLATE "C"'
)
assert len(MIGRATIONS) == SCHEMA_VERSION


class _Db:
    """A transaction's cursor, in the shape ledger.Db names ('?' placeholders)."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Mapping[str, Any]]:
        self._cur.execute(_dialect(sql), tuple(params))
        return list(self._cur.fetchall()) if self._cur.description else []

    def one(self, sql: str, params: Sequence[Any] = ()) -> Mapping[str, Any] | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    def many(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        batch = [tuple(p) for p in params]
        if batch:
            self._cur.executemany(_dialect(sql), batch)


class PostgresLedger(Ledger):
    """The ledger of one PostgreSQL database, over one connection (made again when lost)."""

    _SKIP_LOCKED = " FOR UPDATE OF units SKIP LOCKED"

    def __init__(self, url: str, station: str) -> None:
        super().__init__(redact(url), station)
        self._url = url
        self._secrets = _secrets(url)
        self._conn: psycopg.Connection[Any] | None = None

    @classmethod
    def connect(cls, url: str, station: str) -> PostgresLedger:
        """Connect, create or migrate the schema (one station at a time), reap this host's
        attempts whose process has gone."""
        ledger = cls(url, station)
        ledger._check_url()
        try:
            ledger._prepare()
            ledger.reap()
        except BaseException:
            ledger.close()
            raise
        return ledger

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _check_url(self) -> None:
        try:
            conninfo_to_dict(self._url)
        except (psycopg.Error, ValueError) as exc:  # ValueError: %-escapes that are not UTF-8
            raise UsageError(
                f"ledger {self.path} is not a PostgreSQL URL libpq reads "
                f"({self._scrub(exc)}); see docs/line-postgresql.md"
            ) from None

    def _prepare(self) -> None:
        with self._transaction() as db:
            self._lock_name(db, "schema")
            version = _schema_version(db, self.path)
            for step in MIGRATIONS[version:]:
                for sql in step:
                    db.rows(sql)
            if version < SCHEMA_VERSION:
                db.rows("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            _check_schema(db, self.path)

    @contextmanager
    def _transaction(self) -> Iterator[_Db]:
        with self._lock, self._mapped():
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                yield _Db(cur)

    @contextmanager
    def _statements(self) -> Iterator[_Db]:
        """Autocommit: each statement its own transaction, one round trip."""
        with self._lock, self._mapped():
            with self._connection().cursor() as cur:
                yield _Db(cur)

    @contextmanager
    def _reading(self) -> Iterator[_Db]:
        with self._lock, self._mapped():
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield _Db(cur)

    def _lock_unit(self, db: Db, fingerprint: str) -> None:
        """The key's advisory lock (a unit not registered has no row), then its units row (what
        allocate skips while it is held)."""
        self._lock_name(db, "unit " + fingerprint)
        db.rows("SELECT 1 FROM units WHERE fingerprint = ? FOR UPDATE", (fingerprint,))

    def _lock_name(self, db: Db, name: str) -> None:
        db.rows("SELECT pg_advisory_xact_lock(?)", (_lock_key(name),))

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._drop()
        if self._conn is None:
            self._conn = self._dial()
        return self._conn

    def _dial(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=CONNECT_SECONDS,
                application_name="imagetools ledger",
                **_NETWORK,
            )
        except psycopg.Error as exc:
            raise LedgerUnavailable(
                f"cannot reach ledger {self.path} ({self._scrub(exc)}); new cards wait: "
                "check that PostgreSQL runs and the network, then try again"
            ) from None
        try:
            conn.execute(
                "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false),"
                " set_config('idle_in_transaction_session_timeout', %s, false)",
                (f"{int(common.BUSY_SECONDS * 1000)}ms", f"{STATEMENT_SECONDS}s", f"{IDLE_SECONDS}s"),
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        """psycopg errors as one-line imagetools errors; a lost connection is dropped, so the
        next call makes a new one."""
        try:
            yield
        except ImageToolsError:
            raise
        except psycopg.Error as exc:
            if isinstance(exc, (psycopg.ProgrammingError, psycopg.DataError)) and exc.sqlstate is None:
                raise  # refused by the driver, not the server: a bug of the caller, as on SQLite
            lost = isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and (
                self._conn is None or self._conn.closed or self._conn.broken or isinstance(exc, _GONE)
            )
            if lost:
                self._drop()
                raise LedgerUnavailable(
                    f"lost the connection to ledger {self.path} ({self._scrub(exc)}); "
                    "new cards wait: the next call connects again"
                ) from None
            raise self._error(exc) from None

    def _error(self, exc: psycopg.Error) -> ImageToolsError:
        text = self._scrub(exc)
        if isinstance(exc, _WAITED):
            return EnvironmentProblem(
                f"ledger {self.path} is locked by another station for more than "
                f"{common.BUSY_SECONDS:g} s ({text}); run again, or look for a stuck "
                "session in pg_stat_activity"
            )
        if isinstance(exc, (pg_errors.InsufficientPrivilege, psycopg.OperationalError)):
            return EnvironmentProblem(
                f"ledger {self.path} refuses this station ({text}); "
                "see docs/line-postgresql.md for the role and database a line needs"
            )
        return UsageError(
            f"ledger {self.path} does not hold the ledger this imagetools expects ({text}); "
            "give the line's ledger its own database"
        )

    def _scrub(self, exc: BaseException) -> str:
        """The server's or driver's message as one line (not the statement it quotes), without
        the password (libpq may quote the URL)."""
        diag = getattr(exc, "diag", None)
        text = (diag.message_primary if diag is not None else None) or str(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _line(text) or type(exc).__name__


def redact(url: str) -> str:
    """The URL for messages: whatever follows the user name before the last '@', and the
    value of password parameters, replaced by ***."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = user + (":***" if colon else "") + rest[at:]
    head, q, query = rest.partition("?")
    if q:
        params = [p.partition("=") for p in query.split("&")]
        query = "&".join(k + eq + ("***" if k.lower() in _SECRET_PARAMS else v) for k, eq, v in params)
    return scheme + sep + head + q + query


def _secrets(url: str) -> tuple[str, ...]:
    """The URL's passwords, as written and as libpq decodes them: scrubbed from every message."""
    found = set()
    try:
        found |= {str(conninfo_to_dict(url).get(k) or "") for k in _SECRET_PARAMS}
    except (psycopg.Error, ValueError):
        pass  # refused by _check_url; the written forms below are scrubbed still
    rest = url.partition("://")[2]
    at = rest.rfind("@")
    if at >= 0:
        found.add(rest[:at].partition(":")[2])
    for p in rest.partition("?")[2].split("&"):
        k, _, v = p.partition("=")
        if k.lower() in _SECRET_PARAMS:
            found.add(v)
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


@functools.lru_cache(maxsize=64)
def _dialect(sql: str) -> str:
    """ledger's '?' placeholders as psycopg's (the statements hold no other '?' or '%')."""
    return sql.replace("?", "%s")


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key for a name, apart from other applications' keys."""
    return int.from_bytes(hashlib.sha256(b"imagetools ledger\0" + name.encode()).digest()[:8], "big", signed=True)


def _schema_version(db: _Db, path: str) -> int:
    """0 for a database without our tables, else meta's schema_version; a database that holds
    tables of these names but no meta is someone else's."""
    tables = {
        r["relname"]
        for r in db.rows(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relname IN ('meta', 'units', 'attempts')"
        )
    }
    if "meta" not in tables:
        if tables:
            raise UsageError(
                f"ledger {path} holds table(s) {', '.join(sorted(tables))} but no meta table: "
                "not an imagetools ledger; give the line's ledger its own database"
            )
        return 0
    row = db.one("SELECT value FROM meta WHERE key = 'schema_version'")
    return check_version(row["value"] if row else None, path)


def _check_schema(db: _Db, path: str) -> None:
    """Each table holds exactly the columns of the SQLite ledger, in its order."""
    found: dict[str, list[str]] = {}
    for r in db.rows(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema ="
        " current_schema() AND table_name IN ('meta', 'units', 'attempts') ORDER BY ordinal_position"
    ):
        found.setdefault(r["table_name"], []).append(r["column_name"])
    differ = sorted(t for t, cols in expected_columns().items() if tuple(found.get(t, ())) != cols)
    if differ:
        raise UsageError(
            f"ledger {path} is not an imagetools ledger (schema version {SCHEMA_VERSION}, but "
            f"table(s) {', '.join(differ)} differ from it); give the line's ledger its own database"
        )
