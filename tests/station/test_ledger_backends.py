"""What both ledger backends promise, checked on each: an SQLite file and a real, throwaway
PostgreSQL server (tests/support/postgres.py); allocation raced by real processes."""

from __future__ import annotations

import hashlib
import itertools
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support.postgres import server_or_skip

from imagetools.errors import UsageError
from imagetools.station.ledger import KILLED, Allocation, Ledger, UnitEntry, open_ledger

ROOT = Path(__file__).resolve().parents[2]
BASE = hashlib.sha256(b"base").hexdigest()
OTHER_BASE = hashlib.sha256(b"another base").hexdigest()
_databases = itertools.count(1)


def fp(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def entry(name: str, base: str = BASE, **identity: str) -> UnitEntry:
    return UnitEntry(name, fp(name), identity or {"mac": f"02:00:{name[-2:]}"}, base)


def take(led: Ledger, slot: str = "st/1", token: str | None = None, base: str = BASE) -> Allocation | None:
    return led.allocate(
        slot=slot,
        target="/dev/" + slot.replace("/", ""),
        serial="SN-" + slot,
        base_sha256=base,
        pinned=True,
        token=token or str(uuid.uuid4()),
    )


@pytest.fixture(scope="module")
def pg():
    with server_or_skip() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request, tmp_path) -> str:
    """A new, empty ledger of each backend: a file path or a database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    return request.getfixturevalue("pg").create_schema(f"t{next(_databases)}")


@pytest.fixture
def ledger(where):
    with open_ledger(where, station="sta") as led:
        yield led


def test_register_is_idempotent_and_counts_the_new(ledger):
    assert ledger.register([entry(f"unit{i:02d}") for i in range(1, 4)]) == 3
    assert ledger.register([entry(f"unit{i:02d}") for i in range(1, 6)]) == 2
    assert ledger.register([]) == 0
    assert ledger.counts()["free"] == 5
    ledger.register([entry("unit01", mac="02:00:99"), entry("unit02", base=OTHER_BASE)])  # OUT emitted again
    rows = {r["name"]: r for r in ledger.report()}
    assert rows["unit01"]["identity"] == {"mac": "02:00:99"} and len(rows) == 5
    assert take(ledger, base=OTHER_BASE).unit == "unit02"


@pytest.mark.parametrize(
    "clash, message",
    [
        (UnitEntry("unit01", fp("other"), {}, BASE), r"unit unit01 is in ledger .* with key [0-9a-f]{16}\.\.\., not"),
        (UnitEntry("renamed", fp("unit01"), {}, BASE), "unit renamed has the key of unit unit01"),
    ],
)
def test_register_refuses_a_name_with_another_key_and_a_key_under_another_name(ledger, clash, message):
    ledger.register([entry("unit01")])
    with pytest.raises(UsageError, match=message) as exc:
        ledger.register([entry("unit02"), clash])
    assert "\n" not in str(exc.value)
    assert [r["name"] for r in ledger.report()] == ["unit01"]  # nothing of the refused call stays


def test_register_refuses_bad_entries_before_touching_the_ledger(ledger):
    for bad, message in [
        ([entry("a"), UnitEntry("a", fp("b"), {}, BASE)], "unit a is given twice"),
        ([UnitEntry("x", fp("k"), {}, BASE), UnitEntry("y", fp("k"), {}, BASE)], "same key"),
        ([UnitEntry("x", "ABC", {}, BASE)], "unit x: fingerprint 'ABC' is not a SHA-256"),
        ([UnitEntry("bad\nname", fp("k"), {}, BASE)], "is not a name of up to 255"),
        ([UnitEntry("x", fp("k"), {}, "nope")], "unit x: base sha256"),
    ]:
        with pytest.raises(UsageError, match=message):
            ledger.register(bad)
    assert ledger.report() == []


def test_allocate_takes_free_units_of_the_base_in_name_order_then_none(ledger):
    ledger.register([entry("unit03"), entry("unit01"), entry("unit02"), entry("other1", base=OTHER_BASE)])
    ledger.end(
        ledger.begin(
            unit="unit01", fingerprint=fp("unit01"), base_sha256=BASE, target="/dev/sdq", serial=None, pinned=True
        ),
        "passed",
    )  # flashed by hand: not free
    first = take(ledger, "st/1")
    assert (first.unit, first.fingerprint, first.identity) == ("unit02", fp("unit02"), {"mac": "02:00:02"})
    second = take(ledger, "st/2")
    assert second.unit == "unit03" and take(ledger) is None
    record = ledger.record(first.attempt)
    assert (record["state"], record["slot"], record["target"], record["serial"]) == (
        "writing",
        "st/1",
        "/dev/st1",
        "SN-st/1",
    )
    assert record["identity"] == {"mac": "02:00:02"} and record["station"] == "sta" and "token" not in record
    with pytest.raises(UsageError, match="being written by station sta"):
        ledger.begin(
            unit="unit02",
            fingerprint=fp("unit02"),
            base_sha256=BASE,
            target="/dev/sdq",
            serial=None,
            pinned=True,
            again=True,
        )


def test_a_unit_whose_card_was_not_written_goes_back_and_a_retired_one_never(ledger):
    ledger.register([entry("unit01"), entry("unit02")])
    a = take(ledger)
    ledger.end(a.attempt, "refused", error="card pulled before writing")
    again = take(ledger)
    assert again.unit == "unit01" and again.attempt != a.attempt
    ledger.end(again.attempt, "failed", error="verify failed")
    assert take(ledger).unit == "unit02" and take(ledger) is None
    assert ledger.retired() == {fp("unit01")}


def test_the_same_token_gives_back_the_same_attempt(ledger):
    ledger.register([entry("unit01"), entry("unit02")])
    token = str(uuid.uuid4())
    first = take(ledger, token=token)
    assert take(ledger, token=token) == first  # a retry after a lost connection
    ledger.end(first.attempt, "passed")
    assert take(ledger, token=token) == first  # even once it ended, or none is left
    assert take(ledger).unit == "unit02" and take(ledger, token=token) == first
    with pytest.raises(UsageError, match="was used for slot st/1 and another base or slot"):
        take(ledger, slot="st/9", token=token)
    for bad in ("short", "has space in it", "x" * 200):
        with pytest.raises(UsageError, match="allocation token is 8 to 128"):
            take(ledger, token=bad)
    assert len(ledger.records()) == 2


def test_end_is_idempotent_for_the_same_state_and_refuses_another(ledger):
    ledger.register([entry("unit01")])
    a = take(ledger)
    ledger.end(a.attempt, "passed", bytes_written=7)
    ledger.end(a.attempt, "passed", bytes_written=99)  # a repeat changes nothing
    assert ledger.record(a.attempt)["bytes_written"] == 7
    with pytest.raises(UsageError, match="already ended as passed, not failed; an attempt ends once"):
        ledger.end(a.attempt, "failed")
    with pytest.raises(UsageError, match="has no attempt 4242"):
        ledger.end(4242, "passed")
    assert ledger.record(a.attempt)["state"] == "passed"


def test_counts_recent_report_and_passed_units(ledger):
    ledger.register([entry(f"unit{i:02d}") for i in range(1, 7)])
    ended = {}
    for state in ("passed", "passed", "failed", "interrupted"):
        a = take(ledger, slot=f"st/{len(ended) + 1}")
        ledger.end(a.attempt, state, error=None if state == "passed" else f"{state} here", bytes_written=512)
        ended[a.unit] = state
    live = take(ledger, slot="st/9")
    ledger.refuse(
        unit="loose", fingerprint=fp("loose"), base_sha256=BASE, target="/dev/sdz", error="mounted", pinned=False
    )
    counts = ledger.counts()
    assert counts == {
        "passed": 2,
        "failed": 1,
        "interrupted": 1,
        "writing": 1,
        "retired": 2,
        "free": 1,
        "per_hour": 12,
        "stations": ["sta"],
    }
    recent = ledger.recent(3)
    assert [r["unit"] for r in recent] == ["loose", live.unit, "unit04"] and ledger.recent(0) == []
    assert len(ledger.recent()) == 6
    assert ledger.passed_units() == {"unit01", "unit02"}
    rows = ledger.report()
    assert [(r["name"], r["state"], r["unit_state"]) for r in rows] == [
        ("loose", "free", "free"),
        ("unit01", "passed", "passed"),
        ("unit02", "passed", "passed"),
        ("unit03", "failed", "retired"),
        ("unit04", "interrupted", "retired"),
        ("unit05", "writing", "free"),
        ("unit06", "free", "free"),
    ]
    unit03 = rows[3]
    assert (unit03["slot"], unit03["station"], unit03["serial"], unit03["bytes_written"], unit03["error"]) == (
        "st/3",
        "sta",
        "SN-st/3",
        512,
        "failed here",
    )
    assert unit03["identity"] == {"mac": "02:00:03"} and unit03["fingerprint"] == fp("unit03")
    assert unit03["ended"] >= unit03["started"] and rows[6]["started"] is None and rows[6]["attempts"] == 0
    json.dumps(rows)


def test_stations_sharing_a_ledger_see_each_other(where):
    with open_ledger(where, station="sta") as a, open_ledger(where, station="stb") as b:
        a.register([entry("unit01"), entry("unit02")])
        assert b.register([entry("unit01"), entry("unit02")]) == 0
        assert {take(a).unit, take(b).unit} == {"unit01", "unit02"} and take(a) is None
        assert b.counts()["stations"] == ["sta", "stb"]


ALLOCATOR = r"""
import json, sys, uuid
from imagetools.station.ledger import open_ledger
led = open_ledger(sys.argv[1], station=sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
got = []
for n in range(int(sys.argv[3])):
    a = led.allocate(slot=f"{sys.argv[2]}/{n}", target="/dev/null", serial=None, base_sha256=sys.argv[4],
                     pinned=False, token=str(uuid.uuid4()))
    got.append(None if a is None else [a.attempt, a.unit])
    if a is not None and n % 3 == 0:
        led.end(a.attempt, "passed")
print(json.dumps(got), flush=True)
"""


def test_two_processes_allocating_at_once_never_take_a_unit_twice(where):
    with open_ledger(where) as led:
        led.register([entry(f"unit{i:03d}") for i in range(50)])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ALLOCATOR, where, name, "30", BASE],
            cwd=ROOT,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for name in ("sta", "stb")
    ]
    try:
        assert [p.stdout.readline() for p in procs] == ["ready\n"] * 2
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            assert p.wait(timeout=60) == 0
            p.stdout.close()
    taken = [a for got in results for a in got if a is not None]
    assert len(taken) == 50 and sum(a is None for got in results for a in got) == 10
    assert len({unit for _, unit in taken}) == 50 and len({attempt for attempt, _ in taken}) == 50
    for got in results:  # once none is left, none comes back
        assert all(a is None for a in got[got.index(None) :]) if None in got else len(got) == 30
    with open_ledger(where) as led:
        records = led.records()
        assert len(records) == 50 and {r["unit"] for r in records} == {f"unit{i:03d}" for i in range(50)}
        assert led.counts()["free"] == 0


HOLDER = r"""
import sys, time, uuid
from imagetools.station.ledger import open_ledger
led = open_ledger(sys.argv[1], station="killed")
a = led.allocate(slot="k/1", target="/dev/null", serial=None, base_sha256=sys.argv[2], pinned=False,
                 token=str(uuid.uuid4()))
print(a.attempt, flush=True)
time.sleep(120)
"""


def test_an_allocating_station_killed_mid_card_is_reaped_on_this_host(where):
    with open_ledger(where) as led:
        led.register([entry("unit01"), entry("unit02")])
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, where, BASE], cwd=ROOT, text=True, stdout=subprocess.PIPE)
    try:
        attempt = int(proc.stdout.readline())
        with open_ledger(where) as led:
            assert led.reap() == [] and led.record(attempt)["state"] == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    with open_ledger(where) as led:  # the next open on this host reaps it
        record = led.record(attempt)
        assert (record["state"], record["error"], record["slot"]) == ("interrupted", KILLED, "k/1")
        row = next(r for r in led.report() if r["name"] == "unit01")
        assert (row["state"], row["unit_state"], row["station"]) == ("interrupted", "retired", "killed")
        assert take(led).unit == "unit02"
