"""The PostgreSQL ledger against a real server: restarted under it, unreachable, slow, foreign or
newer schemas, and a URL's password that no message may show."""

from __future__ import annotations

import hashlib
import itertools
import socket
import string
import time
import uuid
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from support.postgres import free_port, server_or_skip

from imagetools.errors import EnvironmentProblem, LedgerUnavailable, UsageError
from imagetools.station import ledger_base as ledger_module
from imagetools.station import ledger_pg
from imagetools.station.ledger import SCHEMA_VERSION, UnitEntry, open_ledger
from imagetools.station.ledger_pg import redact

BASE = hashlib.sha256(b"base").hexdigest()
SECRET = "Sup3r-S3cret"
_databases = itertools.count(1)


def fp(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def units(count: int) -> list[UnitEntry]:
    return [UnitEntry(f"unit{i:02d}", fp(f"unit{i:02d}"), {"n": str(i)}, BASE) for i in range(1, count + 1)]


def take(led, token: str | None = None):
    return led.allocate(
        slot="st/1", target="/dev/sdx", serial=None, base_sha256=BASE, pinned=False, token=token or str(uuid.uuid4())
    )


@pytest.fixture(scope="module")
def pg():
    with server_or_skip() as server:
        yield server


@pytest.fixture
def schema() -> str:
    return f"t{next(_databases)}"


@pytest.fixture
def db(pg, schema) -> str:
    """A new, empty ledger: its URL (a schema of its own)."""
    return pg.create_schema(schema)


def test_a_restarted_server_costs_one_call_and_loses_nothing(pg, db):
    with open_ledger(db, station="sta") as led:
        led.register(units(3))
        first = take(led)
        pg.restart()
        lost = (
            r"^lost the connection to ledger postgresql://postgres@127\.0\.0\.1:\d+/postgres\?options=\S+"
            r" \(.*\); new cards wait: the next call connects again$"
        )
        with pytest.raises(LedgerUnavailable, match=lost) as exc:
            led.end(first.attempt, "passed")
        assert "\n" not in str(exc.value)
        led.end(first.attempt, "passed")  # connected again; the retry ends it once
        token = str(uuid.uuid4())
        pg.restart()
        with pytest.raises(LedgerUnavailable):
            take(led, token)
        second = take(led, token)  # the retry of the allocation that was cut
        assert second.unit == "unit02" and take(led, token) == second
        records = led.records()
    assert [(r["unit"], r["state"]) for r in records] == [("unit01", "passed"), ("unit02", "writing")]


def test_a_server_that_is_down_is_unavailable_at_once_and_back_when_it_is(pg, db):
    with open_ledger(db) as led:
        led.register(units(1))
        pg.stop_server()
        try:
            with pytest.raises(LedgerUnavailable, match="lost the connection"):
                led.counts()
            for _ in range(2):  # every call while it is down, without waiting
                started = time.monotonic()
                with pytest.raises(LedgerUnavailable, match="cannot reach ledger .*check that PostgreSQL runs"):
                    led.counts()
                assert time.monotonic() - started < ledger_pg.CONNECT_SECONDS
        finally:
            pg.start()
        assert led.counts()["free"] == 1


def test_connecting_to_a_server_that_never_answers_gives_up_in_bounded_time(monkeypatch):
    monkeypatch.setattr(ledger_pg, "CONNECT_SECONDS", 2)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts; nobody ever replies
        url = f"postgresql://line:{SECRET}@127.0.0.1:{silent.getsockname()[1]}/line?sslmode=disable"
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="cannot reach ledger") as exc:
            open_ledger(url)
    assert time.monotonic() - started < 10 and SECRET not in str(exc.value)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://line:{SECRET}@127.0.0.1:{{port}}/line",
        f"postgres://line@127.0.0.1:{{port}}/line?sslmode=disable&password={SECRET}",
        f"postgresql://line:{SECRET.replace('-', '%2D')}@127.0.0.1:{{port}}/line",
        f"postgresql://line:{SECRET}@127.0.0.1:notaport/line",
        f"postgresql://line:{SECRET}@127.0.0.1:{{port}}/line?no_such_option=1",
    ],
)
def test_a_password_in_the_url_never_appears_in_a_message(url):
    url = url.replace("{port}", str(free_port()))
    with pytest.raises((LedgerUnavailable, UsageError)) as exc:
        open_ledger(url)
    message = str(exc.value)
    assert SECRET not in message and "S3cret" not in message and "***" in message and "\n" not in message


def test_the_ledger_names_itself_without_its_password_even_when_it_breaks(pg, db):
    url = db.replace("postgres@", f"postgres:{SECRET}@")  # trust: the server takes any password
    with open_ledger(url) as led:
        assert SECRET not in led.path and led.path.startswith("postgresql://postgres:***@")
        pg.restart()
        with pytest.raises(LedgerUnavailable) as exc:
            led.records()
        assert SECRET not in str(exc.value)


def test_a_schema_1_database_is_migrated_on_open(pg, db, schema):
    for sql in ledger_pg.MIGRATIONS[0]:
        pg.psql(sql, schema=schema)
    pg.psql(
        "INSERT INTO attempts (unit, fingerprint, base_sha256, target, station, host, pid, pid_start, pinned,"
        f" started, ended, state, error) VALUES ('unit01', '{fp('unit01')}', '{BASE}', '/dev/sdq', 's1', 'h1',"
        " 7, 7, 1, '2026-12-01T10:00:00.000Z', '2026-12-01T10:01:00.000Z', 'failed', 'verify failed')",
        schema=schema,
    )
    with open_ledger(db) as led:
        (record,) = led.records()
        assert (record["unit"], record["state"], record["slot"]) == ("unit01", "failed", None)
        assert led.register(units(2)) == 2 and take(led).unit == "unit02"  # unit01 is retired
    assert pg.psql("SELECT value FROM meta", schema=schema) == [(str(SCHEMA_VERSION),)]


@pytest.mark.parametrize(
    "spoil, message",
    [
        (f"UPDATE meta SET value = '{SCHEMA_VERSION + 1}'", f"has schema version {SCHEMA_VERSION + 1}, newer than"),
        ("UPDATE meta SET value = 'two'", r"is not an imagetools ledger \(schema_version 'two'\)"),
        ("ALTER TABLE attempts ADD COLUMN extra TEXT", r"table\(s\) attempts differ from it"),
        ("DROP TABLE meta", r"holds table\(s\) attempts, units but no meta table"),
    ],
)
def test_a_foreign_or_newer_schema_is_refused_in_one_line(pg, db, schema, spoil, message):
    open_ledger(db).close()
    pg.psql(spoil, schema=schema)
    with pytest.raises(UsageError, match=message) as exc:
        open_ledger(db)
    assert "\n" not in str(exc.value)


def test_a_lock_held_too_long_is_a_clear_error_not_a_hang(db, monkeypatch):
    monkeypatch.setattr(ledger_module, "BUSY_SECONDS", 0.3)
    with open_ledger(db) as led:
        led.register(units(1))
        attempt = take(led).attempt
        with psycopg.connect(db) as other:  # an operator's session left in a transaction
            other.execute("LOCK TABLE attempts IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(EnvironmentProblem, match=r"is locked by another station for more than 0.3 s"):
                led.end(attempt, "passed")
        led.end(attempt, "passed")
        assert led.record(attempt)["state"] == "passed"


URL_CHARS = string.ascii_letters + string.digits + "!$&'()*+,;=:@/?#[]~-._%"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=URL_CHARS, min_size=8, max_size=40))
def test_no_password_survives_redaction_however_it_is_written(password):
    encoded = quote(password, safe="")
    for template, written in (
        ("postgresql://line:{}@db.example:5432/line?sslmode=require", password),
        ("postgresql://line:{}@db.example/line", encoded),
        ("postgres://line@db.example/line?sslmode=require&password={}", encoded),
    ):
        assume(written not in template.replace("{}", "***"))
        url = template.replace("{}", written)
        shown = redact(url)
        assert written not in shown and "***" in shown
        said = ledger_pg.PostgresLedger(url, "s")._scrub(Exception(f"auth failed ({password}, {written})"))
        assert password not in said and written not in said
