"""A real, throwaway PostgreSQL server for tests (and scripts/bench-ledger): Debian's binaries,
a cluster made with initdb in a temp directory, on 127.0.0.1 and a free port, removed at the end.

    from support.postgres import PostgresServer, server_or_skip, unavailable

    reason = unavailable()              # None, or why no server can run here (skip with it)
    with server_or_skip() as pg: ...    # the same, a pytest skip saying why when none can run
    with PostgresServer() as pg:        # initdb + pg_ctl start (about 1-2 s)
        url = pg.create_database("line")   # postgresql://postgres@127.0.0.1:PORT/line
        url = pg.create_schema("t1")       # ...:PORT/postgres?options=-csearch_path%3Dt1 (faster)
        ...
        pg.restart()                    # fast shutdown (every session is cut) and start, same port
        pg.restart(down=2.0)            # ... staying down 2 s in between
        pg.stop_server(); pg.start()    # down until started again (connects are refused)
    # leaving the block stops the server and removes its directory (stop() does the same)

`PostgresServer(fsync=False)`: fsync and synchronous_commit are off unless asked for (tests
need no durability; the benchmark asks for it). `pg.url(db, user=..., password=...)` builds a
URL; `pg.psql(sql, db, schema=None)` runs one statement as the superuser (a role, a grant) and
returns its rows; `pg.port`, `pg.host`, `pg.log` (the server log's path, for a failing test's message).

The cluster runs as the `postgres` OS user when the caller is root (PostgreSQL refuses root),
through `runuser -u postgres --`; its directory (not named imagetools*, so the suite's leak
check ignores it) belongs to that user. Authentication is `trust`: any password is accepted,
which lets a test put one into a URL. Stopping is idempotent and also runs at interpreter exit,
so a crashed test does not leave a server behind.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PG_USER = "postgres"
START_SECONDS = 60


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why no throwaway server can run here, or None."""
    if bin_dir() is None:
        return "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root and there is no {PG_USER!r} user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (util-linux)"
    return None


@contextlib.contextmanager
def server_or_skip() -> Iterator[PostgresServer]:
    """A throwaway server for a module's tests, or the test skipped saying why none can run."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One cluster, started on construction; see the module docstring."""

    host = "127.0.0.1"

    def __init__(self, *, fsync: bool = False) -> None:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self._bin = bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self.data, self.sock, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self._fsync = fsync
        self._running = False
        self.port = 0
        try:
            if os.geteuid() == 0:
                pw = pwd.getpwnam(PG_USER)
                os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chmod(self.root, 0o700)
            self._as_pg("mkdir", str(self.sock))
            self._as_pg(
                str(self._bin / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                PG_USER,
                "--no-sync",
                "-E",
                "UTF8",
                "--locale",
                "C.UTF-8",
            )
            self.start()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, db: str = "postgres", *, user: str = PG_USER, password: str | None = None) -> str:
        auth = user + (f":{password}" if password is not None else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{db}"

    def start(self) -> None:
        """Start the cluster (a free port the first time, the same one after)."""
        for attempt in range(5):
            self.port = self.port or free_port()
            durable = "on" if self._fsync else "off"
            options = (
                f"-p {self.port} -k {self.sock} -c listen_addresses={self.host} -c fsync={durable}"
                f" -c synchronous_commit={durable} -c full_page_writes={durable}"
            )
            done = self._as_pg(
                str(self._bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(START_SECONDS),
                "start",
                check=False,
            )
            if done.returncode == 0:
                self._running = True
                return
            if attempt == 4 or "could not bind" not in self._log_tail():
                raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} / {self._log_tail()}")
            self.port = 0  # someone took the port between free_port() and the start

    def stop_server(self) -> None:
        """Shut the server down (fast: sessions are cut) and leave it down."""
        if self._running:
            self._as_pg(str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
            self._running = False

    def restart(self, down: float = 0.0) -> None:
        """Every session is cut; the server is back on the same port when this returns."""
        self.stop_server()
        time.sleep(down)
        self.start()

    def stop(self) -> None:
        """Stop the server and remove its directory (idempotent)."""
        if self._running:
            self._as_pg(str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
            self._running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str, owner: str = PG_USER) -> str:
        """A new database (name: letters, digits, _), and its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}")
        self.psql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return self.url(name)

    def create_schema(self, name: str, db: str = "postgres") -> str:
        """A new schema in `db` (name: letters, digits, _), and a URL whose search_path is it: a
        fresh ledger in milliseconds, where a database takes a few hundred."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"schema name {name!r}")
        self.psql(f'CREATE SCHEMA "{name}"', db)
        return f"{self.url(db)}?options=-csearch_path%3D{name}"

    def psql(self, sql: str, db: str = "postgres", schema: str | None = None) -> list[tuple[Any, ...]]:
        """One statement as the superuser (in `schema` when given); its rows."""
        import psycopg

        with psycopg.connect(self.url(db), autocommit=True, connect_timeout=5) as conn:
            if schema is not None:
                conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def _log_tail(self) -> str:
        try:
            return " ".join(self.log.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no server log)"

    def _as_pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["runuser", "-u", PG_USER, "--", *args] if os.geteuid() == 0 else list(args)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=START_SECONDS + 30, cwd=self.root)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:1])} failed: {done.stderr.strip()}")
        return done
