"""One flash through imagetools.station.flash, the edges scripts/mutation found untested: every
refusal before a byte is written, with its exact message and its record in the ledger for each
card; what a card's record holds (bytes, zeroing, checks, times, the progress phases); each way a
card fails as its record, never as an exception; flash_allocated's attempts; the summary and the
--log export. Cards are files and loop devices (support.slots)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.images import build_image
from support.slots import Rig, random_card
from support.udev import udev_record
from support.units import DELTA, SMALL

from imagetools.devices import load_devices
from imagetools.emit import emit
from imagetools.errors import EnvironmentProblem, UsageError
from imagetools.published import load_unit, materialize
from imagetools.station import flash as station
from imagetools.station.ledger import open_ledger
from imagetools.station.plan import plan_unit
from imagetools.station.targets import slot_busy
from imagetools.verify import verify_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def batch(image_cache, tmp_path_factory) -> tuple[Path, Path]:
    """A small base and an OUT of four signed delta units u1..u4."""
    where = tmp_path_factory.mktemp("flash")
    base = where / "base.sdimg"
    subprocess.run(["cp", "--sparse=always", str(build_image(image_cache, "sdimg", SMALL)), str(base)], check=True)
    (where / "d.csv").write_text("name,mac\n" + "".join(f"u{i},02:00:00:00:03:0{i}\n" for i in range(1, 5)))
    assert emit(base, load_devices(where / "d.csv"), where / "OUT", DELTA).ok
    return base, where / "OUT"


@pytest.fixture
def plans(batch, tmp_path):
    """u1..u4's plans, each with its own ledger in this test's directory."""
    base, out = batch
    ledger = str(tmp_path / "ledger.sqlite")
    return [dataclasses.replace(plan_unit(base, out / f"u{i}"), ledger=ledger) for i in range(1, 5)]


def _records(path: Path) -> list[tuple]:
    with open_ledger(path) as ledger:
        return [(r["unit"], r["target"], r["state"], r["error"]) for r in ledger.records()]


def _refusal(error: type[Exception], pairs, **options) -> str:
    with pytest.raises(error) as refused:
        station.flash(pairs, **options)
    return str(refused.value)


def _fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def _zeros(plan) -> int:
    return sum(b - a for a, b in plan.zeros)


# --- refused before a byte is written ------------------------------------------------------------------


def test_no_target_or_one_unit_for_two_cards_is_refused_before_any_ledger(plans, tmp_path):
    assert _refusal(UsageError, []) == "give at least one TARGET"
    a, b = str(tmp_path / "a.img"), str(tmp_path / "b.img")
    assert _refusal(UsageError, [(a, plans[0]), (b, plans[0])]) == (
        f"unit u1 is given for {a} and {b}: one unit goes onto one card; pair each target with its own unit "
        "(--card TARGET UNIT_DIR)"
    )
    assert not (tmp_path / "ledger.sqlite").exists() and not os.path.exists(a)


def test_a_refused_target_is_recorded_for_every_card_and_nothing_is_opened(plans, tmp_path):
    small = tmp_path / "small.img"
    small.write_bytes(b"x" * plans[0].size)  # large enough for u1: the largest image of the flash counts
    bigger = dataclasses.replace(plans[1], size=plans[1].size + 4096)
    new = str(tmp_path / "new.img")
    before = _fds()
    message = _refusal(UsageError, [(new, plans[0]), (str(small), bigger)])
    assert message == f"{small} holds {plans[0].size} bytes, the image needs {bigger.size}: use a larger card"
    assert _fds() == before and not os.path.exists(new)
    assert _records(tmp_path / "ledger.sqlite") == [
        ("u1", new, "refused", message),
        ("u2", str(small), "refused", message),
    ]
    with open_ledger(tmp_path / "ledger.sqlite") as ledger:
        [first, _] = ledger.records()
    unit = plans[0].unit
    assert (first["fingerprint"], first["base_sha256"], first["pinned"]) == (unit.fingerprint, unit.base_sha256, False)


def test_the_ledger_is_an_input_of_its_flash(plans, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    open_ledger("rel.sqlite").close()
    message = _refusal(UsageError, [("rel.sqlite", plans[0])], ledger="rel.sqlite")
    assert message == f"rel.sqlite is {tmp_path / 'rel.sqlite'}, an input of this flash: choose another target"
    assert _records(tmp_path / "rel.sqlite") == [("u1", "rel.sqlite", "refused", message)]


def test_a_plan_without_a_ledger_needs_one(plans, tmp_path):
    plan = dataclasses.replace(plans[0], ledger=None)
    assert _refusal(UsageError, [(str(tmp_path / "a.img"), plan)]) == "no ledger for this flash: give --ledger PATH"
    [record] = station.flash([(str(tmp_path / "a.img"), plan)], ledger=tmp_path / "given.sqlite", readback=False)
    assert record["ok"] and _records(tmp_path / "given.sqlite")[0][:3] == ("u1", str(tmp_path / "a.img"), "passed")


def test_a_unit_taken_refuses_the_whole_flash_and_ends_those_begun(plans, tmp_path):
    a, b, c = (str(tmp_path / n) for n in ("a.img", "b.img", "c.img"))
    [first] = station.flash([(a, plans[0])], readback=False, fsck=False)
    assert first["ok"], first["error"]
    message = _refusal(UsageError, [(b, plans[1]), (c, plans[0])])
    assert "--again" in message
    assert _records(tmp_path / "ledger.sqlite")[1:] == [
        ("u2", b, "refused", f"not written: {message}"),
        ("u1", c, "refused", message),
    ]
    assert not os.path.exists(b) and not os.path.exists(c)
    records = station.flash([(b, plans[1]), (c, plans[0])], again=True, readback=False, fsck=False)
    assert [(r["unit"], r["target"], r["state"]) for r in records] == [("u2", b, "passed"), ("u1", c, "passed")]


@pytest.fixture
def rig():
    with Rig(2) as rig:
        yield rig


def test_a_card_that_cannot_be_opened_ends_every_attempt_as_not_written(plans, tmp_path, rig):
    one, two = rig.slots
    rig.insert(one, random_card(tmp_path / "one.img", plans[0].size))
    rig.insert(two, random_card(tmp_path / "two.img", plans[0].size))
    before = (tmp_path / "one.img").read_bytes()
    holder = os.open(two, os.O_RDONLY | os.O_EXCL)  # someone else has the second card open
    try:
        fds = _fds()
        message = _refusal(EnvironmentProblem, [(one, plans[0]), (two, plans[1])])
        assert message == f"cannot open {two} for writing: Device or resource busy (in use or mounted?)"
        assert _fds() == fds
        ledger = open_ledger(tmp_path / "ledger.sqlite")
        attempt = ledger.begin(
            unit="u3",
            fingerprint=plans[2].unit.fingerprint,
            base_sha256=plans[2].unit.base_sha256,
            target=two,
            serial=None,
            pinned=False,
        )
        with pytest.raises(EnvironmentProblem):
            station.flash_allocated(two, plans[2], ledger, attempt)
        ledger.close()
    finally:
        os.close(holder)
    assert _records(tmp_path / "ledger.sqlite") == [
        ("u1", one, "refused", f"not written: {message}"),
        ("u2", two, "refused", f"not written: {message}"),
        ("u3", two, "refused", f"not written: {message}"),
    ]
    assert (tmp_path / "one.img").read_bytes() == before


# --- what a card's record holds ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["new", "empty", "used"])
def test_a_file_card_s_record(batch, plans, tmp_path, kind):
    base, out = batch
    card = tmp_path / "card.img"
    if kind == "empty":
        card.touch()
    elif kind == "used":
        random_card(card, plans[0].size)
    if kind != "new":
        card.chmod(0o644)
    seen = []
    [record] = station.flash(
        [(str(card), plans[0])], progress=lambda *a: seen.append(a), station="line-a", fsck=kind != "used"
    )
    assert record["ok"] and record["state"] == "passed" and record["error"] is None, record["error"]
    fresh = kind != "used"
    assert record["zeroing"] == ("holes" if fresh else "punched")
    assert record["bytes_written"] == plans[0].total - _zeros(plans[0])
    assert record["station"] == "line-a" and record["serial"] is None and record["unit"] == "u1"
    assert set(record["times"]) == {"write", "readback", "total"}
    assert record["times"]["total"] >= record["times"]["write"] + record["times"]["readback"]
    ids = {c["id"] for c in record["checks"]}
    assert record["checks"] == [
        c.to_dict() for c in verify_image(card, expected=plans[0].unit.public_key, fsck=kind != "used").checks
    ]
    assert ids
    assert card.stat().st_mode & 0o777 == 0o600 and card.stat().st_size == plans[0].size
    materialize(out / "u1", tmp_path / "m.img", base)
    assert card.read_bytes() == (tmp_path / "m.img").read_bytes()
    total = plans[0].total
    phases = [p for _, p, _, _ in seen]
    assert {(t, tot) for t, _, _, tot in seen} == {(str(card), total)}
    assert phases[-1] == "verifying" and seen[-1][2] == total and phases.count("verifying") == 1
    assert "reading back" in phases and phases.index("reading back") > max(
        i for i, p in enumerate(phases) if p == "writing"
    )


def test_without_read_back_or_fsck_neither_runs(plans, tmp_path):
    seen = []
    [record] = station.flash(
        [(str(tmp_path / "card.img"), plans[0])], readback=False, fsck=False, progress=lambda *a: seen.append(a[1])
    )
    assert record["ok"] and set(record["times"]) == {"write", "total"} and "reading back" not in seen
    [skipped] = [c["status"] for c in record["checks"] if c["id"] == "fsck-data"]
    [again] = station.flash([(str(tmp_path / "card.img"), plans[0])], again=True, readback=False)
    [ran] = [c["status"] for c in again["checks"] if c["id"] == "fsck-data"]
    assert (skipped, ran) == ("skip", "pass")  # e2fsck runs only when asked


def test_a_card_s_record_on_a_loop_device(plans, tmp_path, rig):
    slot = rig.slots[0]
    rig.insert(slot, random_card(tmp_path / "card.img", plans[0].size))
    [record] = station.flash([(slot, plans[0])], fsck=False)
    assert record["ok"], record["error"]
    assert record["zeroing"] == "write-zeroes" and record["bytes_written"] == plans[0].total
    assert record["target"] == slot


# --- a card that fails is its record -------------------------------------------------------------------


def test_a_card_that_does_not_verify_fails_naming_each_failed_check(batch, plans, tmp_path):
    other = load_unit(batch[1] / "u2").public_key
    plan = dataclasses.replace(plans[0], unit=dataclasses.replace(plans[0].unit, public_key=other))
    card = tmp_path / "card.img"
    [record] = station.flash([(str(card), plan)], readback=False, fsck=False)
    report = verify_image(card, expected=other, fsck=False)
    assert record["state"] == "failed" and not record["ok"]
    assert record["error"] == "verify failed: " + "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
    assert record["checks"] == [c.to_dict() for c in report.checks]


def test_a_stopped_flash_is_interrupted_and_retires_its_unit(plans, tmp_path):
    card = str(tmp_path / "card.img")
    stop = threading.Event()
    stop.set()
    [record] = station.flash([(card, plans[0])], stop=stop)
    assert record["state"] == "interrupted" and record["error"] == (
        f"interrupted: {card} is not finished and unit u1 is retired; flash the card again with another unit"
    )
    assert record["bytes_written"] == 0 and set(record["times"]) == {"total"}


def test_a_card_s_failures_of_every_kind_are_records(plans, tmp_path):
    bad = dataclasses.replace(plans[0].ranges[-1], sha256="0" * 64)
    mismatch = dataclasses.replace(plans[0], ranges=plans[0].ranges[:-1] + (bad,))
    a = str(tmp_path / "a.img")
    [record] = station.flash([(a, mismatch)])
    assert record["state"] == "failed" and record["error"] == (
        f"{mismatch.source}: blocks {bad.first}-{bad.last} do not match their bmap checksum: the image changed "
        "after its bmap was made (make a new one)"
    )

    def boom(target, phase, done, total):
        if phase == "reading back":
            raise ValueError("boom")

    b = str(tmp_path / "b.img")
    [record] = station.flash([(b, plans[1])], progress=boom)
    assert record["state"] == "failed" and record["error"] == f"{b}: unexpected ValueError: boom"
    assert set(record["times"]) == {"write", "total"} and record["bytes_written"] > 0
    assert record["zeroing"] == "holes"


def test_a_full_file_system_is_the_card_s_error(plans, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(small)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        card = str(small / "card.img")
        [record] = station.flash([(card, plans[0])])
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert record["state"] == "failed" and record["error"] == f"{card}: No space left on device"


def test_what_reads_back_differently_fails_the_card(plans, tmp_path):
    card = tmp_path / "card.img"
    r = plans[0].ranges[len(plans[0].ranges) // 2]

    def spoil(target, phase, done, total):  # after the last write, before the read back
        if phase == "writing" and done == plans[0].total - _zeros(plans[0]):
            with open(card, "r+b") as f:
                f.seek(r.first * 4096)
                f.write(b"\xa5" * 4096)

    [record] = station.flash([(str(card), plans[0])], progress=spoil, fsck=False)
    assert record["state"] == "failed" and "read back differently" in record["error"]
    assert set(record["times"]) == {"write", "total"}


# --- flash_allocated -----------------------------------------------------------------------------------


def test_an_allocated_attempt_is_flashed_or_ended_as_refused(plans, tmp_path):
    ledger = open_ledger(tmp_path / "ledger.sqlite", station="line-b")
    try:
        unit = plans[0].unit

        def begin(target: str, plan) -> int:
            return ledger.begin(
                unit=plan.unit.name,
                fingerprint=plan.unit.fingerprint,
                base_sha256=unit.base_sha256,
                target=target,
                serial=None,
                pinned=False,
            )

        card = str(tmp_path / "card.img")
        seen = []
        record = station.flash_allocated(
            card, plans[0], ledger, begin(card, plans[0]), fsck=False, progress=lambda *a: seen.append(a[1])
        )
        assert record["state"] == "passed" and record["station"] == "line-b" and "reading back" in seen
        small = tmp_path / "small.img"
        small.write_bytes(b"x")
        attempt = begin(str(small), plans[1])
        with pytest.raises(UsageError) as refused:
            station.flash_allocated(str(small), plans[1], ledger, attempt)
        assert ledger.record(attempt)["state"] == "refused"
        assert ledger.record(attempt)["error"] == f"not written: {refused.value}"
        assert str(refused.value) == f"{small} holds 1 bytes, the image needs {plans[1].size}: use a larger card"
        attempt = begin(ledger.path, plans[2])
        with pytest.raises(UsageError, match="an input of this flash"):
            station.flash_allocated(ledger.path, plans[2], ledger, attempt)
        two = str(tmp_path / "two.img")
        record = station.flash_allocated(two, plans[3], ledger, begin(two, plans[3]), readback=False, fsck=False)
        assert record["state"] == "passed" and set(record["times"]) == {"write", "total"}
    finally:
        ledger.close()


# --- the summary and the --log export ------------------------------------------------------------------


def test_the_summary_and_the_export(plans, tmp_path):
    a, b = str(tmp_path / "a.img"), str(tmp_path / "b.img")
    bad = dataclasses.replace(
        plans[1], ranges=plans[1].ranges[:-1] + (dataclasses.replace(plans[1].ranges[-1], sha256="0" * 64),)
    )
    records = station.flash([(a, plans[0]), (b, bad)], readback=False, fsck=False)
    assert station.summary(records) == {"cards": 2, "ok": 1, "failed": 1}
    assert station.summary([]) == {"cards": 0, "ok": 0, "failed": 0}
    log = tmp_path / "log.jsonl"
    station.export(records[:1], log)
    station.export(records, log)
    lines = log.read_text().splitlines(keepends=True)
    assert [json.loads(line) for line in lines] == [records[0], *records]
    assert lines[0] == json.dumps(records[0], sort_keys=True) + "\n"
    assert log.stat().st_mode & 0o777 == 0o644


def test_a_ledger_that_cannot_be_opened_closes_those_opened(plans, tmp_path):
    elsewhere = dataclasses.replace(plans[1], ledger=str(tmp_path / "missing" / "ledger.sqlite"))
    before = _fds()
    message = _refusal(UsageError, [(str(tmp_path / "a.img"), plans[0]), (str(tmp_path / "b.img"), elsewhere)])
    assert message == (
        f"the directory of ledger {tmp_path / 'missing' / 'ledger.sqlite'} does not exist; create "
        f"{tmp_path / 'missing'} or name another ledger path"
    )
    assert _fds() == before and not (tmp_path / "a.img").exists()


def test_a_card_s_record_names_its_unit_s_identity_and_trust_and_each_phase_s_time(batch, plans, tmp_path):
    base, out = batch
    pinned = dataclasses.replace(plan_unit(base, out / "u1", out / "batch.pub"), ledger=plans[0].ledger)
    assert pinned.unit.pinned and pinned.unit.identity

    slept = set()

    def slow(target, phase, done, total):  # writing and reading back take 0.4 s more each
        if phase in ("writing", "reading back") and phase not in slept:
            slept.add(phase)
            time.sleep(0.4)

    before = _fds()
    [record] = station.flash([(str(tmp_path / "card.img"), pinned)], progress=slow, fsck=False)
    assert _fds() == before  # the ledger is closed again
    assert record["ok"] and record["pinned"] and record["identity"] == pinned.unit.identity
    times = record["times"]
    assert times["write"] >= 0.4 and times["readback"] >= 0.4
    assert times["write"] + times["readback"] <= times["total"] + 0.002  # the read back's own time


def test_the_base_and_the_unit_s_files_are_inputs_no_target_may_be(batch, plans, tmp_path):
    base, out = batch
    for target, name in ((str(base), str(base)), (str(out / "u1" / "unit.json"), str(out / "u1" / "unit.json"))):
        message = _refusal(UsageError, [(target, plans[0])])
        assert message == f"{target} is {name}, an input of this flash: choose another target"


def _busy_fixed_disk() -> str | None:
    """A non-removable disk of this machine that is in use (mounted): no flash can ever open it."""
    for name in sorted(os.listdir("/sys/block")):
        node = f"/dev/{name}"
        if name.startswith("loop") or "/usb" in os.path.realpath(f"/sys/block/{name}"):
            continue
        if Path(f"/sys/block/{name}/removable").read_text().strip() == "0" and os.path.exists(node):
            if stat.S_ISBLK(os.stat(node).st_mode) and slot_busy(node) is not None:
                return node
    return None


def test_a_fixed_disk_is_refused_unless_allowed_then_refused_as_busy(plans, tmp_path):
    disk = _busy_fixed_disk()
    if disk is None:
        pytest.skip("this machine has no busy non-removable disk")
    fixed = (
        f"{disk} is a fixed disk (not removable): a station writes cards; --allow-fixed-disk if this really "
        "is a card writer"
    )
    assert _refusal(UsageError, [(disk, plans[0])]) == fixed
    assert _refusal(EnvironmentProblem, [(disk, plans[0])], allow_fixed_disk=True).startswith(f"{disk} is in use (")
    ledger = open_ledger(tmp_path / "ledger.sqlite")
    try:
        unit = plans[1].unit
        begin = dict(unit=unit.name, fingerprint=unit.fingerprint, base_sha256=unit.base_sha256, serial=None)
        with pytest.raises(UsageError) as refused:
            station.flash_allocated(disk, plans[1], ledger, ledger.begin(target=disk, pinned=False, **begin))
        assert str(refused.value) == fixed
        with pytest.raises(EnvironmentProblem):
            station.flash_allocated(
                disk, plans[1], ledger, ledger.begin(target=disk, pinned=False, **begin), allow_fixed_disk=True
            )
    finally:
        ledger.close()


def test_a_postgresql_ledger_is_named_by_its_url(plans, tmp_path):
    from support.postgres import PostgresServer, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with PostgresServer() as pg:
        url = pg.create_schema("flash")
        [record] = station.flash([(str(tmp_path / "card.img"), plans[0])], ledger=url, readback=False, fsck=False)
        assert record["ok"], record["error"]
        with open_ledger(url) as ledger:
            assert [r["unit"] for r in ledger.records()] == ["u1"]


def test_a_card_s_serial_and_a_pinned_unit_s_refusal_are_recorded(batch, plans, tmp_path, rig):
    base, out = batch
    pinned = dataclasses.replace(plan_unit(base, out / "u1", out / "batch.pub"), ledger=plans[0].ledger)
    small = tmp_path / "small.img"
    small.write_bytes(b"x")
    _refusal(UsageError, [(str(small), pinned)])
    slot = rig.slots[0]
    rig.insert(slot, random_card(tmp_path / "card.img", pinned.size))
    with udev_record(os.stat(slot).st_rdev) as record:
        record.write_text("E:ID_SERIAL_SHORT=CARD-0042\n")
        [done] = station.flash([(slot, pinned)], readback=False, fsck=False)
    assert done["ok"] and done["serial"] == "CARD-0042" and done["pinned"]
    with open_ledger(tmp_path / "ledger.sqlite") as ledger:
        refused, _ = ledger.records()
    assert (refused["state"], refused["pinned"], refused["target"]) == ("refused", True, str(small))


# --- issue 22: the survivors of the last mutation run --------------------------------------------------


def test_flash_allocated_runs_e2fsck_unless_told_not_to_and_honours_stop(plans, tmp_path):
    ledger = open_ledger(tmp_path / "ledger.sqlite")
    try:

        def begin(target: str, plan) -> int:
            unit = plan.unit
            return ledger.begin(
                unit=unit.name,
                fingerprint=unit.fingerprint,
                base_sha256=unit.base_sha256,
                target=target,
                serial=None,
                pinned=False,
            )

        card = str(tmp_path / "card.img")
        record = station.flash_allocated(card, plans[0], ledger, begin(card, plans[0]), readback=False)
        [fsck] = [c["status"] for c in record["checks"] if c["id"] == "fsck-data"]
        assert record["state"] == "passed" and fsck == "pass"  # e2fsck runs by default
        stop = threading.Event()
        stop.set()
        two = str(tmp_path / "two.img")
        record = station.flash_allocated(two, plans[1], ledger, begin(two, plans[1]), stop=stop)
        assert record["state"] == "interrupted" and record["bytes_written"] == 0
        assert record["error"] == (
            f"interrupted: {two} is not finished and unit u2 is retired; flash the card again with another unit"
        )
    finally:
        ledger.close()


def _held_at_the_serial(record: Path, swap, *, timeout: float = 30.0) -> None:
    """The check of a block device stops where it reads the device's udev record (a FIFO here):
    once the flash opened it, SWAP runs (the target changes after its check), then the record is
    written and the check goes on."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(record, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until the flash opens it
            break
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError("the flash never read the udev record") from None
            time.sleep(0.01)
    try:
        swap()
        os.write(fd, b"E:ID_SERIAL_SHORT=CARD-7\n")
    finally:
        os.close(fd)


def _flash_in_thread(pairs) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(station.flash(pairs, readback=False, fsck=False))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("kind", ["block", "file"])
def test_a_target_that_changes_between_its_check_and_its_opening_is_refused(plans, tmp_path, rig, kind):
    one, two = rig.slots
    rig.insert(one, random_card(tmp_path / "one.img", plans[0].size))
    rig.insert(two, random_card(tmp_path / "two.img", plans[0].size))
    two_before = (tmp_path / "two.img").read_bytes()
    rdev = os.stat(one).st_rdev
    if kind == "block":  # a node of slot one, replaced by a node of slot two
        changed = tmp_path / "slot"
        os.mknod(changed, 0o600 | stat.S_IFBLK, rdev)
        pairs = [(str(changed), plans[0])]

        def swap() -> None:
            os.mknod(tmp_path / "other", 0o600 | stat.S_IFBLK, os.stat(two).st_rdev)
            os.rename(tmp_path / "other", changed)

    else:  # a file card checked, then another file renamed over it while slot one is checked
        changed = random_card(tmp_path / "file.img", plans[0].size)
        other = random_card(tmp_path / "other.img", plans[0].size)
        other_bytes = other.read_bytes()
        pairs = [(str(changed), plans[0]), (one, plans[1])]

        def swap() -> None:
            os.rename(other, changed)

    one_before = (tmp_path / "one.img").read_bytes()
    with udev_record(rdev) as record:
        os.mkfifo(record)
        thread, outcome = _flash_in_thread(pairs)
        try:
            _held_at_the_serial(record, swap)
        finally:
            thread.join()
    [refused] = outcome
    message = f"{changed} changed between its check and its opening: give the target again"
    assert isinstance(refused, UsageError) and str(refused) == message
    assert [r[1:] for r in _records(tmp_path / "ledger.sqlite")] == [
        (target, "refused", f"not written: {message}") for target, _ in pairs
    ]
    assert (tmp_path / "two.img").read_bytes() == two_before and (tmp_path / "one.img").read_bytes() == one_before
    if kind == "file":
        assert changed.read_bytes() == other_bytes


def test_a_card_failing_several_checks_names_each_in_its_error(batch, plans, tmp_path):
    from imagetools.layout import open_layout

    other = load_unit(batch[1] / "u2").public_key
    plan = dataclasses.replace(plans[0], unit=dataclasses.replace(plans[0].unit, public_key=other))
    card = tmp_path / "card.img"

    def spoil(target, phase, done, total):  # the key made 0644 before the verify: a second failure
        if phase == "verifying":
            start = open_layout(card).require("data").partition.start
            command = "sif /mender/mender-agent.pem mode 0100644"
            subprocess.run(["debugfs", "-w", "-R", command, f"{card}?offset={start}"], check=True, capture_output=True)

    [record] = station.flash([(str(card), plan)], readback=False, progress=spoil)
    report = verify_image(card, expected=other, fsck=True)
    assert len(report.failed) >= 2
    assert record["state"] == "failed"
    assert record["error"] == "verify failed: " + "; ".join(f"{c.name}: {c.detail}" for c in report.failed)


def test_a_card_is_named_as_given_in_its_read_back_failure(plans, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = plans[0].ranges[len(plans[0].ranges) // 2]

    def spoil(target, phase, done, total):
        if phase == "writing" and done == plans[0].total - _zeros(plans[0]):
            with open("card.img", "r+b") as f:
                os.pwrite(f.fileno(), b"\xa5" * 4096, r.first * 4096)

    [record] = station.flash([("card.img", plans[0])], progress=spoil, fsck=False)
    assert record["state"] == "failed"
    assert record["error"].startswith(f"card.img: blocks {r.first}-"), record["error"]


def _zero_byte(plan) -> int:
    """A byte of the plan's zeros that no range or patch covers."""
    taken = [(r.first * 4096, (r.last + 1) * 4096) for r in plan.ranges]
    taken += [(off, off + len(data)) for off, data in plan.patches]
    for a, b in plan.zeros:
        for at in range(a, b, 4096):
            if not any(c <= at < d for c, d in taken):
                return at
    raise AssertionError("no zeroed byte outside the ranges")


def test_a_card_s_zeros_are_read_back_where_the_flash_wrote_them(plans, tmp_path, rig):
    slot = rig.slots[0]
    rig.insert(slot, random_card(tmp_path / "card.img", plans[0].size))
    at = _zero_byte(plans[0])

    def spoil(target, phase, done, total):  # after the last write, before the read back
        if phase == "writing" and done == plans[0].total:
            fd = os.open(slot, os.O_WRONLY)
            try:
                os.pwrite(fd, b"\xff", at)
                os.fsync(fd)
            finally:
                os.close(fd)

    [record] = station.flash([(slot, plans[0])], progress=spoil, fsck=False)
    assert record["zeroing"] == "write-zeroes" and record["state"] == "failed"
    assert record["error"].startswith(f"{slot}: blocks ") and record["error"].endswith(
        "read back differently from what was written (zeros); the card is bad or fake-capacity: replace it"
    )


def test_times_are_seconds_to_the_millisecond_and_the_read_back_counts_its_bytes(plans, tmp_path):
    from imagetools.station.readback import expected_of

    seen: dict[str, list] = {}
    targets = [str(tmp_path / "a.img"), str(tmp_path / "b.img")]
    started = time.monotonic()
    records = station.flash(
        [(targets[0], plans[0]), (targets[1], plans[1])],
        fsck=False,
        progress=lambda t, phase, done, total: seen.setdefault(t, []).append((phase, done)),
    )
    elapsed = time.monotonic() - started
    assert station.summary(records) == {"cards": 2, "ok": 2, "failed": 0}
    for record, target, plan in zip(records, targets, plans):
        assert record["ok"], record["error"]
        times = record["times"]
        assert 0 <= times["write"] <= times["total"] <= elapsed + 0.001
        assert round(times["write"], 3) == times["write"] and round(times["total"], 3) == times["total"]
        assert abs(round(times["readback"], 3) - times["readback"]) < 1e-9
        back = [done for phase, done in seen[target] if phase == "reading back"]
        assert back and all(isinstance(n, int) for n in back) and back == sorted(back)
        assert back[-1] == expected_of(plan, record["zeroing"]).total
