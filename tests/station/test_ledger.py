"""The station ledger on real SQLite files, raced and killed by real processes; what both
backends share is tested on both in test_ledger_backends.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from imagetools.errors import EnvironmentProblem, UsageError
from imagetools.station import ledger_base as ledger_module
from imagetools.station.ledger import KILLED, SCHEMA_VERSION, open_ledger

ROOT = Path(__file__).resolve().parents[2]
BASE = hashlib.sha256(b"base").hexdigest()
EXPORT_FIELDS = {
    "attempt",
    "unit",
    "fingerprint",
    "identity",
    "base_sha256",
    "target",
    "serial",
    "station",
    "host",
    "slot",
    "pinned",
    "started",
    "ended",
    "time",
    "state",
    "ok",
    "error",
    "bytes_written",
    "zeroing",
    "checks",
    "times",
}


def fp(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def card(unit: str = "unit0001", **over) -> dict:
    """begin()'s arguments for one card of `unit`."""
    return {
        "unit": unit,
        "fingerprint": fp(unit),
        "base_sha256": BASE,
        "target": "/dev/sdx",
        "serial": "SN1",
        "pinned": True,
        **over,
    }


@contextlib.contextmanager
def raw(path: Path):
    """A plain sqlite3 connection, as an operator (or an attacker) would use."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def insert_row(path: Path, **over) -> None:
    """A row written by hand: another host's station, or a damaged one."""
    row = {
        "unit": "u",
        "fingerprint": fp("u"),
        "base_sha256": BASE,
        "target": "/dev/sdz",
        "station": "s2",
        "host": "elsewhere",
        "pid": 1 << 30,
        "pid_start": 1,
        "pinned": 0,
        "started": "2026-12-01T10:00:00.000Z",
        "state": "writing",
        **over,
    }
    with raw(path) as db:
        db.execute("PRAGMA ignore_check_constraints = ON")
        db.execute(f"INSERT INTO attempts ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))


def spawn(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], cwd=ROOT, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "ledger.sqlite"


@pytest.fixture
def ledger(path):
    with open_ledger(path, station="bench1") as led:
        yield led


def test_creates_the_schema_and_reopens(path):
    with open_ledger(path) as led:
        attempt = led.begin(**card())
        led.end(attempt, "passed", bytes_written=4096, zeroing="punched")
    assert sorted(p.name for p in path.parent.iterdir()) == ["ledger.sqlite"]  # WAL checkpointed on close
    with raw(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with open_ledger(path) as led:
        (record,) = led.records()
        assert (record["attempt"], record["state"], record["bytes_written"]) == (attempt, "passed", 4096)
        assert record["station"] == record["host"] == led.host
        assert led.unit_state(fp("unit0001")) == "passed"


@pytest.mark.parametrize("state, unit_state", [("passed", "passed"), ("failed", "retired"), ("interrupted", "retired")])
def test_each_ending_and_the_unit_state_it_gives(ledger, state, unit_state):
    assert ledger.unit_state(fp("unit0001")) == "free"
    attempt = ledger.begin(**card(identity={"mac": "02:00:00:00:00:01"}))
    assert ledger.unit_state(fp("unit0001")) == "free"  # being written is not a unit state
    checks = [{"id": "V001", "name": "key", "status": "PASS", "detail": "matches"}]
    ledger.end(
        attempt,
        state,
        error=None if state == "passed" else "read back\ndiffers",
        bytes_written=10,
        zeroing="write-zeroes",
        checks=checks,
        times={"write": 1.5},
    )
    (record,) = ledger.records()
    assert record["state"] == state and record["ok"] is (state == "passed")
    assert record["ended"] >= record["started"] == record["time"]
    assert record["started"].endswith("Z") and record["identity"] == {"mac": "02:00:00:00:00:01"}
    assert (record["checks"], record["times"], record["zeroing"]) == (checks, {"write": 1.5}, "write-zeroes")
    assert record["error"] in (None, "read back differs")  # one line
    assert ledger.unit_state(fp("unit0001")) == unit_state
    assert ledger.retired() == ({fp("unit0001")} if unit_state == "retired" else set())


def test_a_passed_unit_is_flashed_again_only_with_again(ledger):
    ledger.end(ledger.begin(**card()), "passed")
    with pytest.raises(UsageError, match=r"unit unit0001 .* was already flashed to /dev/sdx at .*--again"):
        ledger.begin(**card(target="/dev/sdy"))
    ledger.end(ledger.begin(**card(target="/dev/sdy"), again=True), "failed", error="verify failed")
    assert ledger.unit_state(fp("unit0001")) == "passed"  # a passed card exists: not retired


def test_a_retired_unit_is_refused_even_with_again(ledger):
    first = ledger.begin(**card(target="/dev/sdq"))
    ledger.end(first, "failed", error="e2fsck failed")
    started = ledger.records()[0]["started"]
    with pytest.raises(UsageError) as exc:
        ledger.begin(**card(target="/dev/sdr"), again=True)
    message = str(exc.value)
    assert "\n" not in message and "retired" in message and "/dev/sdq" in message and started in message
    assert "e2fsck failed" in message and "preauth remove" in message
    assert len(ledger.records()) == 1


def test_a_refusal_is_recorded_and_does_not_retire(ledger):
    attempt = ledger.refuse(**{k: v for k, v in card().items() if k != "serial"}, error="target is mounted")
    (record,) = ledger.records()
    assert (record["attempt"], record["state"], record["ok"]) == (attempt, "refused", False)
    assert record["ended"] == record["started"] and record["error"] == "target is mounted"
    assert ledger.unit_state(fp("unit0001")) == "free"
    ledger.end(ledger.begin(**card()), "passed")
    with pytest.raises(UsageError, match="already ended as refused"):
        ledger.end(attempt, "passed")


def test_an_attempt_begun_but_not_written_ends_refused_and_does_not_retire(ledger):
    attempt = ledger.begin(**card())
    ledger.end(attempt, "refused", error="not written: another card of the request was refused")
    assert ledger.unit_state(fp("unit0001")) == "free"


def test_only_an_attempt_being_written_can_end(ledger):
    attempt = ledger.begin(**card())
    for state in ("writing", "retired", "free"):
        with pytest.raises(UsageError, match="ends as passed, failed, interrupted or refused"):
            ledger.end(attempt, state)
    ledger.end(attempt, "passed")
    with pytest.raises(UsageError, match="already ended as passed"):
        ledger.end(attempt, "failed")
    with pytest.raises(UsageError, match="has no attempt 99"):
        ledger.end(99, "failed")
    assert ledger.records()[0]["state"] == "passed"


def test_a_unit_being_written_is_refused_a_second_card(ledger):
    ledger.begin(**card())
    with pytest.raises(UsageError, match=r"being written by station bench1 on host .* since .*attempt 1"):
        ledger.begin(**card(target="/dev/sdy"), again=True)


def test_another_hosts_writing_row_is_live_and_left_alone(path, ledger):
    insert_row(path, unit="unit0001", fingerprint=fp("unit0001"))
    with open_ledger(path) as other:
        assert other.reap() == []
        with pytest.raises(UsageError, match="being written by station s2 on host elsewhere since 2026-12-01T10:00"):
            other.begin(**card(), again=True)
    assert ledger.records()[0]["state"] == "writing"


def test_bad_digests_are_refused(ledger):
    with pytest.raises(UsageError, match="fingerprint .* lowercase hex"):
        ledger.begin(**card(fingerprint=fp("unit0001").upper()))
    with pytest.raises(UsageError, match="base sha256"):
        ledger.begin(**card(base_sha256="abc"))
    assert ledger.records() == []


RACER = r"""
import sys
from imagetools.errors import UsageError
from imagetools.station.ledger import Ledger, open_ledger
led = open_ledger(sys.argv[1], station=sys.argv[2])
attempt = None
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "begin":
        try:
            attempt = led.begin(unit="unit0001", fingerprint="ab" * 32, base_sha256="cd" * 32,
                                target="/dev/" + sys.argv[2], serial=None, pinned=False, again=True)
            print("won", attempt, flush=True)
        except UsageError as exc:
            print("lost", exc, flush=True)
    else:
        led.end(attempt, "passed")
        print("ended", flush=True)
"""


def test_two_processes_racing_for_a_unit_one_wins_each_round(path):
    open_ledger(path).close()
    racers = [spawn(RACER, str(path), name) for name in ("sta", "stb")]
    try:
        assert [p.stdout.readline() for p in racers] == ["ready\n"] * 2
        for _ in range(20):
            for p in racers:
                p.stdin.write("begin\n")
                p.stdin.flush()
            answers = [p.stdout.readline().split(" ", 1)[0] for p in racers]
            assert sorted(answers) == ["lost", "won"]
            winner = racers[answers.index("won")]
            winner.stdin.write("end\n")
            winner.stdin.flush()
            assert winner.stdout.readline() == "ended\n"
    finally:
        for p in racers:
            p.stdin.close()
            assert p.wait(timeout=30) == 0
    with open_ledger(path) as led:
        records = led.records()
    assert len(records) == 20 and {r["state"] for r in records} == {"passed"}


SLEEPER = r"""
import sys, time
from imagetools.station.ledger import Ledger, open_ledger
led = open_ledger(sys.argv[1])
print(led.begin(unit="unit0001", fingerprint=sys.argv[2], base_sha256="cd" * 32, target="/dev/sdk",
                serial=None, pinned=True), flush=True)
time.sleep(120)
"""


def test_a_killed_station_is_reaped_and_its_unit_retired(path):
    open_ledger(path).close()
    proc = spawn(SLEEPER, str(path), fp("unit0001"))
    try:
        attempt = int(proc.stdout.readline())
        with open_ledger(path) as led:  # the writer is alive: nothing to reap
            assert led.reap() == [] and led.records()[0]["state"] == "writing"
            with pytest.raises(UsageError, match="being written"):
                led.begin(**card(), again=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stdin.close()
    with raw(path) as db:
        assert db.execute("SELECT state FROM attempts").fetchall() == [("writing",)]
    with open_ledger(path) as led:
        (record,) = led.records()
        assert (record["attempt"], record["state"], record["error"]) == (attempt, "interrupted", KILLED)
        assert record["ended"] is not None
        assert led.unit_state(fp("unit0001")) == "retired" and led.retired() == {fp("unit0001")}
        with pytest.raises(UsageError, match="retired: attempt 1 onto /dev/sdk .* ended interrupted"):
            led.begin(**card(), again=True)


def test_a_locked_ledger_waits_then_gives_up(path, monkeypatch):
    monkeypatch.setattr(ledger_module, "BUSY_SECONDS", 0.2)
    with open_ledger(path) as led, raw(path) as db:
        db.execute("BEGIN IMMEDIATE")
        with pytest.raises(EnvironmentProblem, match=r"is locked by another station for more than 0.2 s"):
            led.begin(**card())
        db.execute("ROLLBACK")
        led.begin(**card())


def _random(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _symlink(path: Path) -> None:
    open_ledger(path.with_name("real.sqlite")).close()
    path.symlink_to("real.sqlite")


def _foreign(path: Path) -> None:
    with raw(path) as db:
        db.execute("CREATE TABLE cards (serial TEXT)")


def _newer(path: Path) -> None:
    open_ledger(path).close()
    with raw(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))


def _bad_version(path: Path) -> None:
    open_ledger(path).close()
    with raw(path) as db:
        db.execute("UPDATE meta SET value = 'one' WHERE key = 'schema_version'")


def _trigger(path: Path) -> None:
    open_ledger(path).close()
    with raw(path) as db:
        db.execute("CREATE TRIGGER forget AFTER INSERT ON attempts BEGIN DELETE FROM attempts; END")


def _missing_dir(path: Path) -> Path:
    return path.parent / "no-such-dir" / "ledger.sqlite"


@pytest.mark.parametrize(
    "make, message",
    [
        (_random, r"is not an imagetools ledger \(file is not a database\)"),
        (_fifo, "ledger .* is a FIFO, not a regular file"),
        (_directory, "ledger .* is a directory, not a regular file"),
        (_symlink, "ledger .* is a symbolic link, not a regular file"),
        (_foreign, r"is not an imagetools ledger \(an SQLite database without a meta table\)"),
        (_newer, f"has schema version {SCHEMA_VERSION + 1}, newer than this imagetools knows"),
        (_bad_version, r"is not an imagetools ledger \(schema_version 'one'\)"),
        (_trigger, rf"is not an imagetools ledger \(schema version {SCHEMA_VERSION}, but forget differ"),
        (_missing_dir, "the directory of ledger .* does not exist"),
    ],
)
def test_hostile_files_are_refused_in_one_line(path, make, message):
    path = make(path) or path
    with pytest.raises(UsageError, match=message) as exc:
        open_ledger(path)
    assert "\n" not in str(exc.value)


def test_a_foreign_database_is_left_as_it_was(path):
    _foreign(path)
    with pytest.raises(UsageError):
        open_ledger(path)
    with raw(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["cards"]


def test_damaged_rows_come_back_without_a_traceback(path, ledger):
    insert_row(
        path,
        state="failed",
        ended="x",
        identity="{not json",
        checks='{"an": "object"}',
        times="[" * 10000 + "]" * 10000,
        unit=b"\xffunit",
        pid="many",
        bytes_written="lots",
        pinned=7,
        target="/dev/sdq\nFORGED LINE",
        error="x" * 100000,
    )
    (record,) = ledger.records()
    assert record["identity"] is record["checks"] is record["times"] is record["bytes_written"] is None
    assert record["unit"] == "\ufffdunit" and record["pinned"] is False and len(record["error"]) == 2000
    assert json.loads(ledger.export_line(record["attempt"]))["target"] == "/dev/sdq FORGED LINE"
    assert ledger.retired() == {fp("u")}
    with pytest.raises(UsageError, match="is retired") as exc:
        ledger.begin(**card("u"), again=True)
    assert "\n" not in str(exc.value)


def test_an_empty_file_becomes_a_ledger(path):
    path.touch()
    with open_ledger(path) as led:
        assert led.records() == [] and led.retired() == set()
    with raw(path) as db:
        assert db.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION),)]


def test_records_and_export_lines_name_exactly_the_fields(ledger):
    attempt = ledger.begin(**card(identity={"serial": "1"}))
    ledger.end(
        attempt, "passed", checks=[{"id": "V1", "name": "n", "status": "PASS", "detail": ""}], times={"write": 0.5}
    )
    refused = ledger.refuse(**card(unit="unit0002"), error="wrong base")
    records = ledger.records()
    assert [r["attempt"] for r in records] == [attempt, refused]
    for record in records:
        assert set(record) == EXPORT_FIELDS
        line = ledger.export_line(record["attempt"])
        assert "\n" not in line and json.loads(line) == record
        assert list(json.loads(line)) == sorted(EXPORT_FIELDS)
    assert records[0]["pinned"] is True and records[0]["serial"] == "SN1"
    with pytest.raises(UsageError, match="has no attempt 7"):
        ledger.export_line(7)


def test_no_private_key_is_ever_stored(path):
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    body = pem.splitlines()[1]
    with open_ledger(path) as led:
        attempt = led.begin(**card(identity={"note": pem}))
        led.end(
            attempt,
            "failed",
            error=f"cannot load {pem}",
            zeroing=pem,
            checks=[{"id": "V1", "name": "key", "status": "FAIL", "detail": pem}],
            times={pem: 1.0},
        )
        led.refuse(**card(unit="unit0002"), error="tail: " + pem[20:])
        stored = b"".join(p.read_bytes() for p in path.parent.iterdir())  # the WAL holds them now
        records = led.records()
    after = b"".join(p.read_bytes() for p in path.parent.iterdir())
    for data in (stored, after):
        assert b"PRIVATE KEY" not in data and body.encode() not in data
    assert records[0]["checks"][0]["detail"] == "[key material removed]\n"
    assert records[1]["error"] == "tail:[key material removed]"


# A ledger as the schema-1 code (before units and allocation) left it: its own SQL text and rows,
# dumped (sqlite3 .dump) from a file that code wrote.
V1_DUMP = """
CREATE TABLE attempts (
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
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE INDEX attempts_by_fingerprint ON attempts (fingerprint);
CREATE INDEX attempts_writing ON attempts (host) WHERE state = 'writing';
"""
_V1_ROW = ("cae662172fd450bb0cd710a769079c05bfc5d8e35efa6576edc7d0377afdd4a2", "bench1", "vm", 1668, 420858)
V1_ROWS = [
    (
        1,
        "unit0001",
        fp("unit0001"),
        '{"mac": "02:00:00:00:00:01"}',
        _V1_ROW[0],
        "/dev/sdx",
        "SN1",
        *_V1_ROW[1:],
        1,
        "2026-12-06T22:17:22.884Z",
        "2026-12-06T22:17:22.886Z",
        "passed",
        None,
        4096,
        "punched",
        '[{"detail": "", "id": "V001", "name": "key", "status": "PASS"}]',
        '{"write": 1.5}',
    ),
    (
        2,
        "unit0002",
        fp("unit0002"),
        None,
        _V1_ROW[0],
        "/dev/sdy",
        None,
        *_V1_ROW[1:],
        0,
        "2026-12-06T22:17:22.892Z",
        "2026-12-06T22:17:22.898Z",
        "failed",
        "verify failed",
        0,
        None,
        None,
        None,
    ),
    (
        3,
        "unit0003",
        fp("unit0003"),
        None,
        _V1_ROW[0],
        "/dev/sdz",
        None,
        *_V1_ROW[1:],
        1,
        "2026-12-06T22:17:22.904Z",
        "2026-12-06T22:17:22.904Z",
        "refused",
        "target is mounted",
        0,
        None,
        None,
        None,
    ),
]


def test_a_schema_1_ledger_is_migrated_on_open_and_keeps_its_attempts(path):
    with raw(path) as db:
        db.executescript(V1_DUMP)
        db.executemany(f"INSERT INTO attempts VALUES ({', '.join('?' * 20)})", V1_ROWS)
        before = [tuple(r) for r in db.execute("SELECT * FROM attempts ORDER BY id")]
    with open_ledger(path) as led:
        records = led.records()
        assert [(r["unit"], r["state"], r["slot"]) for r in records] == [
            ("unit0001", "passed", None),
            ("unit0002", "failed", None),
            ("unit0003", "refused", None),
        ]
        assert records[0]["checks"][0]["id"] == "V001" and records[0]["identity"] == {"mac": "02:00:00:00:00:01"}
        assert led.retired() == {fp("unit0002")} and led.passed_units() == {"unit0001"}
        assert led.counts()["free"] == 0 and len(led.report()) == 3  # units seen only in attempts
        attempt = led.begin(**card("unit0004"))
        assert attempt == 4  # ids go on where they were
    with raw(path) as db:
        assert db.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION),)]
        assert [tuple(r)[:20] for r in db.execute("SELECT * FROM attempts WHERE id < 4 ORDER BY id")] == before
    with open_ledger(path) as led:  # migrated once: opens as it is
        assert len(led.records()) == 4
