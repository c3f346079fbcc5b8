"""The ledger's shared methods at their edges, on real SQLite files: what scripts/mutation found
untested in imagetools.station.ledger_base (exact refusals, bounds, the counts, the units.taken
cache after a refusal or a retried allocation, the units of a real emit OUT)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.images import build_image
from support.postgres import server_or_skip

from imagetools import keys
from imagetools.devices import load_devices
from imagetools.emit import EmitOptions, emit
from imagetools.errors import UsageError
from imagetools.station import ledger_base
from imagetools.station.ledger import KILLED, Ledger, UnitEntry, open_ledger

BASE = hashlib.sha256(b"base").hexdigest()
OTHER = hashlib.sha256(b"another base").hexdigest()
TOKEN = "tok-0001-abcd"


def fp(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def entry(name: str, base: str = BASE, **identity: str) -> UnitEntry:
    return UnitEntry(name, fp(name), identity or {"mac": f"02:00:{name[-2:]}"}, base)


def take(led: Ledger, token: str = TOKEN, slot: str = "st/1", base: str = BASE):
    return led.allocate(slot=slot, target="/dev/sdx", serial="SN1", base_sha256=base, pinned=True, token=token)


def begin(led: Ledger, unit: str = "unit01", **over) -> int:
    args = {"unit": unit, "fingerprint": fp(unit), "base_sha256": BASE, "target": "/dev/sdx", "serial": "SN1",
            "pinned": True, **over}  # fmt: skip
    return led.begin(**args)


def sql(path: Path, statement: str, params: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA ignore_check_constraints = ON")
        return db.execute(statement, params).fetchall()
    finally:
        db.close()


def stamp(delta: timedelta) -> str:
    return (datetime.now(UTC) - delta).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def insert(path: Path, **over) -> None:
    row = {"unit": "hand", "fingerprint": fp("hand"), "base_sha256": BASE, "target": "/dev/sdz", "station": "s2",
           "host": "elsewhere", "pid": 1 << 30, "pid_start": 1, "pinned": 0, "started": stamp(timedelta(hours=1)),
           "state": "writing", **over}  # fmt: skip
    sql(path, f"INSERT INTO attempts ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))


def free(path: Path) -> list[str]:
    return [r[0] for r in sql(path, "SELECT name FROM units WHERE taken = 0 ORDER BY name")]


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "ledger.sqlite"


@pytest.fixture
def ledger(path):
    with open_ledger(path, station="sta") as led:
        yield led


# --- end ----------------------------------------------------------------------------------------


def test_end_refuses_an_unknown_state_naming_the_four(ledger):
    a = begin(ledger)
    with pytest.raises(UsageError) as caught:
        ledger.end(a, "writing")
    assert str(caught.value) == "an attempt ends as passed, failed, interrupted or refused, not 'writing'"


def test_end_stores_what_the_card_gave(ledger):
    a = begin(ledger)
    ledger.end(a, "failed", error="read  back\ndiffers", bytes_written=4096, zeroing="journal\nonly",
               checks=[{"name": "fsck", "ok": False}], times={"write": 1.5})  # fmt: skip
    r = ledger.record(a)
    assert (r["state"], r["error"]) == ("failed", "read back differs")
    assert (r["bytes_written"], r["zeroing"]) == (4096, "journal only")
    assert (r["checks"], r["times"]) == ([{"name": "fsck", "ok": False}], {"write": 1.5})
    assert r["ended"] is not None


def test_an_attempt_ended_without_a_count_wrote_no_bytes(ledger):
    a = begin(ledger)
    ledger.end(a, "interrupted")
    assert ledger.record(a)["bytes_written"] == 0


def test_begin_checks_both_digests_naming_them(ledger):
    with pytest.raises(UsageError, match=r"^fingerprint 'ABC' is not a SHA-256"):
        begin(ledger, fingerprint="ABC")
    with pytest.raises(UsageError, match=r"^base sha256 'x' is not a SHA-256"):
        begin(ledger, base_sha256="x")
    with pytest.raises(UsageError, match=r"^fingerprint 'ABC' is not a SHA-256"):
        ledger.unit_state("ABC")


def test_end_twice_as_the_same_state_is_a_retry_and_as_another_is_refused(path, ledger):
    a = begin(ledger)
    ledger.end(a, "passed")
    ended = ledger.record(a)["ended"]
    ledger.end(a, "passed", error="ignored")
    assert ledger.record(a)["ended"] == ended and ledger.record(a)["error"] is None
    with pytest.raises(UsageError) as caught:
        ledger.end(a, "failed")
    assert str(caught.value) == (
        f"attempt {a} in ledger {path} has already ended as passed, not failed; an attempt ends once"
    )
    with pytest.raises(UsageError) as caught:
        ledger.end(a + 1, "passed")
    assert str(caught.value) == f"ledger {path} has no attempt {a + 1}"


def test_an_allocation_ended_refused_frees_its_unit_again_even_on_a_repeat(path, ledger):
    ledger.register([entry("unit01"), entry("unit02")])
    a = take(ledger)
    assert a.unit == "unit01" and free(path) == ["unit02"]
    ledger.end(a.attempt, "refused", error="another card of the request was refused")
    assert free(path) == ["unit01", "unit02"] and ledger.unit_state(fp("unit01")) == "free"
    sql(path, "UPDATE units SET taken = 1 WHERE name = 'unit01'")  # the first call cut before its refresh
    ledger.end(a.attempt, "refused")
    assert free(path) == ["unit01", "unit02"]
    assert take(ledger, token="tok-0002-abcd").unit == "unit01"


def test_an_allocation_that_passed_keeps_its_unit_taken(path, ledger):
    ledger.register([entry("unit01")])
    a = take(ledger)
    ledger.end(a.attempt, "passed")
    assert free(path) == [] and take(ledger, token="tok-0002-abcd") is None


# --- refuse and reap ----------------------------------------------------------------------------


def test_a_refusal_is_recorded_as_given_and_leaves_the_unit_free(path, ledger):
    ledger.register([entry("unit01")])
    n = ledger.refuse(unit="unit01", fingerprint="not a digest", base_sha256="nor this", target="/dev/sdq",
                      error="mounted at /media", pinned=True, serial="SN9")  # fmt: skip
    r = ledger.record(n)
    assert (r["state"], r["fingerprint"], r["base_sha256"], r["error"]) == ("refused", "not a digest", "nor this",
                                                                            "mounted at /media")  # fmt: skip
    assert (r["serial"], r["pinned"], r["identity"], r["target"]) == ("SN9", True, None, "/dev/sdq")
    assert r["ended"] == r["started"] and free(path) == ["unit01"]


def test_reap_ends_only_this_hosts_dead_writers(path, ledger):
    insert(path, host=ledger.host, unit="dead")
    insert(path, host="elsewhere", unit="far")
    insert(path, host=ledger.host, unit="dead too", pid=os.getpid(), pid_start=1)  # a reused pid
    ids = {r["unit"]: r["attempt"] for r in ledger.records()}
    assert sorted(ledger.reap()) == [ids["dead"], ids["dead too"]]
    live = begin(ledger)
    states = {r["unit"]: (r["state"], r["error"]) for r in ledger.records()}
    assert states == {"dead": ("interrupted", KILLED), "dead too": ("interrupted", KILLED), "far": ("writing", None),
                      "unit01": ("writing", None)}  # fmt: skip
    assert ledger.reap() == [] and ledger.record(live)["state"] == "writing"


def test_begin_reaps_first_so_a_killed_writers_unit_is_refused_as_retired(path, ledger):
    insert(path, host=ledger.host, unit="unit01", fingerprint=fp("unit01"))
    with pytest.raises(UsageError, match="^unit unit01 .*retired"):
        begin(ledger)


# --- register -----------------------------------------------------------------------------------


def test_register_counts_the_new_and_follows_a_changed_identity_and_base(path, ledger):
    assert ledger.register([entry("unit01"), entry("unit02"), entry("unit01")]) == 2
    assert ledger.register([entry("unit01", mac="02:99"), entry("unit02", base=OTHER), entry("unit03")]) == 1
    rows = sql(path, "SELECT name, identity, base_sha256 FROM units ORDER BY name")
    assert rows == [("unit01", '{"mac": "02:99"}', BASE), ("unit02", '{"mac": "02:00:02"}', OTHER),
                    ("unit03", '{"mac": "02:00:03"}', BASE)]  # fmt: skip


def test_register_marks_a_unit_taken_when_its_key_already_has_an_attempt_that_counts(path, ledger):
    ledger.end(begin(ledger, "unit01"), "failed")
    ledger.refuse(unit="unit02", fingerprint=fp("unit02"), base_sha256=BASE, target="/dev/sdx", error="x", pinned=False)
    ledger.register([entry("unit01"), entry("unit02")])
    assert free(path) == ["unit02"]


def test_register_refuses_a_clash_with_the_ledger_in_one_line(path, ledger):
    ledger.register([entry("unit01")])
    with pytest.raises(UsageError) as caught:
        ledger.register([UnitEntry("unit01", fp("other"), {}, BASE)])
    assert str(caught.value) == (
        f"unit unit01 is in ledger {path} with key {fp('unit01')[:16]}..., not {fp('other')[:16]}...: "
        "two units of one name; give each OUT its own unit names or its own ledger"
    )
    with pytest.raises(UsageError) as caught:
        ledger.register([UnitEntry("renamed", fp("unit01"), {}, BASE)])
    assert str(caught.value) == (
        f"unit renamed has the key of unit unit01 in ledger {path} ({fp('unit01')[:16]}...): "
        "one key, one unit; was the unit renamed?"
    )


def test_register_refuses_repeats_within_one_call(ledger):
    with pytest.raises(UsageError) as caught:
        ledger.register([entry("unit01"), entry("unit01", mac="02:99")])
    assert str(caught.value) == "unit unit01 is given twice, with two keys or identities; one unit, one entry"
    with pytest.raises(UsageError) as caught:
        ledger.register([entry("unit01"), UnitEntry("unit02", fp("unit01"), {}, BASE)])
    assert str(caught.value) == f"units unit01 and unit02 have the same key ({fp('unit01')[:16]}...): one key, one unit"
    assert ledger.register([]) == 0


def test_register_takes_at_most_max_register_units(ledger, monkeypatch):
    monkeypatch.setattr(ledger_base, "MAX_REGISTER", 2)
    assert ledger.register([entry("unit01"), entry("unit02")]) == 2
    with pytest.raises(UsageError) as caught:
        ledger.register([entry("unit03"), entry("unit04"), entry("unit05")])
    assert str(caught.value) == "more than 2 units in one register call; register them in parts"


@pytest.mark.parametrize("name", ["u", "x" * 255, "unit 01", "ünit"])
def test_a_unit_name_of_up_to_255_printable_characters_is_registered(ledger, name):
    assert ledger.register([UnitEntry(name, fp(name), {}, BASE)]) == 1


@pytest.mark.parametrize(
    ("name", "shown"),
    [("", "''"), ("x" * 256, repr("x" * 256)[:80]), ("unit\t01", "'unit 01'"), (" unit01", "'unit01'"),
     ("unit01 ", "'unit01'"), (5, "'5'"), (None, "None")],
)  # fmt: skip
def test_other_unit_names_are_refused_quoting_them_on_one_line(ledger, name, shown):
    with pytest.raises(UsageError) as caught:
        ledger.register([UnitEntry(name, fp(str(name)), {}, BASE)])  # type: ignore[arg-type]
    assert str(caught.value) == f"unit name {shown} is not a name of up to 255 printable characters"


def test_an_entry_needs_an_object_identity_and_digests(ledger):
    with pytest.raises(UsageError) as caught:
        ledger.register([UnitEntry("unit01", fp("unit01"), ["mac"], BASE)])  # type: ignore[arg-type]
    assert str(caught.value) == "unit unit01: its identity is not an object"
    with pytest.raises(UsageError, match=r"^unit unit01: fingerprint 'ABC' is not a SHA-256"):
        ledger.register([UnitEntry("unit01", "ABC", {}, BASE)])
    with pytest.raises(UsageError, match=r"^unit unit01: base sha256 'x' is not a SHA-256"):
        ledger.register([UnitEntry("unit01", fp("unit01"), {}, "x")])


# --- allocate -----------------------------------------------------------------------------------


def test_allocate_hands_out_free_units_of_its_base_by_name_with_their_identity(ledger):
    ledger.register([entry("unit02"), entry("unit01", mac="02:aa"), entry("other1", base=OTHER)])
    first = take(ledger, token="tok-0001-abcd", slot="st/1")
    assert (first.unit, first.fingerprint, first.identity) == ("unit01", fp("unit01"), {"mac": "02:aa"})
    r = ledger.record(first.attempt)
    assert (r["state"], r["slot"], r["serial"], r["identity"]) == ("writing", "st/1", "SN1", {"mac": "02:aa"})
    assert (r["pinned"], r["target"], r["base_sha256"]) == (True, "/dev/sdx", BASE)
    assert take(ledger, token="tok-0002-abcd", slot="st/2").unit == "unit02"
    assert take(ledger, token="tok-0003-abcd", slot="st/3") is None
    assert take(ledger, token="tok-0004-abcd", base=OTHER).unit == "other1"


def test_a_retried_token_gets_its_attempt_back_and_frees_the_unit_it_touched(path, ledger):
    ledger.register([entry("unit01"), entry("unit02")])
    first = take(ledger)
    assert take(ledger) == first
    assert free(path) == ["unit02"]
    assert take(ledger, token="tok-0002-abcd").unit == "unit02"
    assert take(ledger) == first  # no unit free: the token still answers


def test_a_token_reused_for_another_slot_or_base_is_refused(path, ledger):
    ledger.register([entry("unit01"), entry("unit02"), entry("other1", base=OTHER)])
    first = take(ledger, slot="st/1")
    for other in ({"slot": "st/2"}, {"base": OTHER}):
        with pytest.raises(UsageError) as caught:
            take(ledger, **other)
        assert str(caught.value) == (
            f"allocation token of attempt {first.attempt} in ledger {path} was used for slot st/1 and "
            "another base or slot now; give each allocation its own token"
        )


def test_a_token_reused_when_no_unit_is_free_is_refused_too(path, ledger):
    ledger.register([entry("unit01")])
    first = take(ledger, slot="st/1")
    with pytest.raises(UsageError, match=f"^allocation token of attempt {first.attempt} in ledger {path} was used"):
        take(ledger, slot="st/2")


def test_unit_names_sort_by_code_point_from_the_first(ledger):
    ledger.register([entry("unit01"), entry("Unit02"), entry("AAA03")])
    names = [take(ledger, token=f"tok-{n:04d}-abcd").unit for n in range(3)]
    assert names == ["AAA03", "Unit02", "unit01"]


def test_rows_damaged_by_hand_are_handed_out_as_they_read(path, ledger):
    sql(path, "INSERT INTO units (name, fingerprint, identity, base_sha256, registered, taken)"
              " VALUES ('damaged', '', NULL, ?, 'now', 0)", (BASE,))  # fmt: skip
    first = take(ledger)
    assert (first.unit, first.fingerprint, first.identity) == ("damaged", "", None)
    assert take(ledger) == first
    insert(path, unit="", fingerprint="", token="tok-blank-0001", slot="st/1", base_sha256=BASE)
    again = take(ledger, token="tok-blank-0001")
    assert (again.unit, again.fingerprint) == ("", "")


def test_a_stale_taken_flag_is_skipped_and_corrected(path, ledger):
    ledger.register([entry("unit01"), entry("unit02"), entry("unit03")])
    ledger.end(begin(ledger, "unit01"), "passed")
    sql(path, "UPDATE units SET taken = 0 WHERE name = 'unit01'")  # a stale cache
    assert take(ledger).unit == "unit02"
    assert free(path) == ["unit03"]


@pytest.mark.parametrize("token", ["x" * 8, "a" * 128, "A.b_c:d-9"])
def test_tokens_of_8_to_128_characters_are_taken(ledger, token):
    ledger.register([entry("unit01")])
    assert take(ledger, token=token).unit == "unit01"


@pytest.mark.parametrize("token", ["x" * 7, "a" * 129, "tok/0001/ab", "tok 0001 ab", 12345678, None])
def test_other_tokens_are_refused(ledger, token):
    with pytest.raises(UsageError) as caught:
        take(ledger, token=token)  # type: ignore[arg-type]
    assert str(caught.value) == "an allocation token is 8 to 128 letters, digits or ._:- (a uuid4 per card)"


def test_allocate_checks_the_base_digest(ledger):
    with pytest.raises(UsageError, match=r"^base sha256 'ABC' is not a SHA-256"):
        take(ledger, base="ABC")


# --- reading ------------------------------------------------------------------------------------


def test_counts_rate_stations_and_free(path, ledger):
    ledger.register([entry("unit01"), entry("unit02"), entry("unit03")])
    ledger.end(begin(ledger, "unit01"), "passed")
    insert(path, unit="old", fingerprint=fp("old"), state="passed", ended=stamp(timedelta(minutes=11)), station="b2")
    insert(path, unit="new", fingerprint=fp("new"), state="passed", ended=stamp(timedelta(minutes=9)), station="a1")
    insert(path, unit="bad", fingerprint=fp("bad"), state="failed", ended=stamp(timedelta(minutes=1)), station="")
    insert(path, unit="gone", fingerprint=fp("gone"), state="interrupted", ended=stamp(timedelta(minutes=1)))
    assert ledger.counts() == {
        "passed": 3,
        "failed": 1,
        "interrupted": 1,
        "writing": 0,
        "retired": 2,
        "free": 2,
        "per_hour": 12,
        "stations": ["a1", "b2", "s2", "sta"],
    }


def test_counts_of_an_empty_ledger(ledger):
    assert ledger.counts() == {"passed": 0, "failed": 0, "interrupted": 0, "writing": 0, "retired": 0, "free": 0,
                               "per_hour": 0, "stations": []}  # fmt: skip


def test_retired_and_passed_units(path, ledger):
    ledger.end(begin(ledger, "unit01"), "passed")
    ledger.end(begin(ledger, "unit02"), "failed")
    ledger.end(begin(ledger, "unit03"), "interrupted")
    ledger.end(begin(ledger, "unit05"), "passed")
    ledger.end(begin(ledger, "unit05", again=True), "interrupted")  # passed wins
    ledger.end(begin(ledger, "unit04"), "refused")
    insert(path, unit="", fingerprint=fp("blank"), state="passed", ended=stamp(timedelta(0)))
    assert ledger.retired() == {fp("unit02"), fp("unit03")}
    assert ledger.passed_units() == {"unit01", "unit05"}
    assert [ledger.unit_state(fp(u)) for u in ("unit01", "unit02", "unit04", "unit06")] == [
        "passed", "retired", "free", "free"]  # fmt: skip


def test_recent_is_newest_first_and_bounded(path, ledger, monkeypatch):
    insert(path, unit="a", state="passed", started=stamp(timedelta(hours=3)), ended=stamp(timedelta(hours=2)))
    begun = stamp(timedelta(hours=2, minutes=30))
    insert(path, unit="b", state="passed", started=begun, ended=stamp(timedelta(hours=1)))
    insert(path, unit="c", started=stamp(timedelta(minutes=90)))  # still writing: its start counts
    insert(path, unit="d", started=stamp(timedelta(minutes=90)))  # the same time: the later id first
    assert [r["unit"] for r in ledger.recent()] == ["b", "d", "c", "a"]
    assert [r["unit"] for r in ledger.recent(2)] == ["b", "d"]
    assert ledger.recent(-3) == [] and ledger.recent(0) == []
    monkeypatch.setattr(ledger_base, "MAX_RECENT", 3)
    assert len(ledger.recent(100)) == 3


def test_recent_gives_20_by_default(path, ledger):
    for n in range(21):
        insert(path, unit=f"u{n:02d}", started=stamp(timedelta(minutes=60 - n)))
    assert [r["unit"] for r in ledger.recent()] == [f"u{n:02d}" for n in range(20, 0, -1)]


def test_the_rate_window_is_in_utc_whatever_the_local_zone(path, ledger, monkeypatch):
    insert(path, unit="old", state="passed", ended=stamp(timedelta(minutes=11)))
    monkeypatch.setenv("TZ", "Etc/GMT+5")
    time.tzset()
    try:
        assert ledger.counts()["per_hour"] == 0
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_row_without_a_fingerprint_names_no_key_to_remove(path, ledger):
    insert(path, unit="blank", fingerprint="", state="failed", ended=stamp(timedelta(0)))
    ledger.end(begin(ledger), "failed")
    assert ledger.retired() == {fp("unit01")}


def test_records_record_and_the_export_line(path, ledger):
    a, b = begin(ledger, "unit01"), begin(ledger, "unit02")
    assert [r["attempt"] for r in ledger.records()] == [a, b]
    line = ledger.export_line(b)
    assert line == json.dumps(ledger.record(b), sort_keys=True) and json.loads(line)["unit"] == "unit02"
    assert list(json.loads(line)) == sorted(json.loads(line))
    with pytest.raises(UsageError) as caught:
        ledger.record(b + 1)
    assert str(caught.value) == f"ledger {path} has no attempt {b + 1}"


# --- the units of an OUT ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emitted(image_cache, tmp_path_factory) -> Path:
    """An OUT of two signed delta units over a small base, made once."""
    where = tmp_path_factory.mktemp("out")
    devices = where / "devices.csv"
    devices.write_text("name,mac\nu1,02:00:00:00:01:01\nu2,02:00:00:00:01:02\n")
    options = EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=1, format="delta")
    assert emit(build_image(image_cache, "sdimg", {}), load_devices(devices), where / "OUT", options).ok
    return where / "OUT"


@pytest.fixture
def out(emitted, tmp_path) -> Path:
    shutil.copytree(emitted, tmp_path / "OUT", symlinks=True)
    return tmp_path / "OUT"


def test_units_of_reads_the_units_by_name_and_skips_the_rest(out):
    shutil.copytree(out / "u1", out / ".hidden")
    (out / "empty").mkdir()
    (out / "u0").symlink_to(out / "u1", target_is_directory=True)
    (out / "file").write_text("x")
    units = Ledger.units_of(out)
    assert [(u.name, u.identity) for u in units] == [("u1", {"mac": "02:00:00:00:01:01"}),
                                                    ("u2", {"mac": "02:00:00:00:01:02"})]  # fmt: skip
    assert all(len(u.fingerprint) == 64 and len(u.base_sha256) == 64 for u in units)


def test_units_of_checks_the_signatures_against_the_trusted_key(out, tmp_path):
    stranger = tmp_path / "stranger.pub"
    stranger.write_bytes(keys.public_pem(keys.generate(keys.KeySpec(type="ed25519"))))
    assert len(Ledger.units_of(out, out / "batch.pub")) == 2
    with pytest.raises(UsageError, match="u1"):
        Ledger.units_of(out, stranger)


def test_units_of_reads_a_dangling_unit_file_as_a_unit(out):
    (out / "u3").mkdir()
    (out / "u3" / "unit.json").symlink_to(out / "nowhere")
    with pytest.raises(UsageError, match="u3"):
        Ledger.units_of(out)


def test_a_renamed_unit_directory_is_refused(out):
    os.rename(out / "u2", out / "u7")
    with pytest.raises(UsageError) as caught:
        Ledger.units_of(out)
    assert str(caught.value) == (
        f"{out / 'u7'} holds unit 'u2': a unit directory keeps its unit's name; run emit again or rename it back"
    )


def test_units_of_bounds_the_entries_it_reads(out, monkeypatch):
    count = len(os.listdir(out))
    monkeypatch.setattr(ledger_base, "MAX_OUT_ENTRIES", count)
    assert len(Ledger.units_of(out)) == 2
    (out / "one-more").write_text("x")
    with pytest.raises(UsageError) as caught:
        Ledger.units_of(out)
    assert str(caught.value) == f"{out} holds more than {count} entries: not an emit OUT"


def test_units_of_needs_a_directory(out):
    with pytest.raises(UsageError) as caught:
        Ledger.units_of(out / "u1" / "unit.json")
    assert str(caught.value) == f"{out / 'u1' / 'unit.json'} is not a directory of units (an emit OUT)"


# --- the same methods on PostgreSQL: its locks and its rows ---------------------------------------


@pytest.fixture(scope="module")
def pg():
    with server_or_skip() as server:
        yield server


def test_on_postgresql_begin_register_allocate_and_end_take_their_locks(pg):
    with open_ledger(pg.create_schema("locks"), station="sta") as led:
        assert led.register([entry("unit01"), entry("unit02")]) == 2
        a = begin(led, "unit01")
        with pytest.raises(UsageError, match="being written"):
            begin(led, "unit01")
        led.end(a, "failed", bytes_written=512)
        got = take(led)
        assert (got.unit, got.identity) == ("unit02", {"mac": "02:00:02"})
        led.end(got.attempt, "refused")
        assert take(led, token="tok-0002-abcd").unit == "unit02"
        assert led.counts()["retired"] == 1 and led.retired() == {fp("unit01")}
