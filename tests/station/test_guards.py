"""The flash guards as an operator meets them, through `imagetools flash` and station.flash on
real files and a real loop device: one card named two ways is one target; what the ledger lets
through again (docs/ledger.md: a refusal does not count against a unit, a failed card retires
it); a mounted card is refused naming its mount point; the partition table areas are written
only after a flush that follows every other write, so an interrupted or failed flash (GPT
included: the backup table at the end) never leaves a card that looks finished."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest
from support.slots import random_card
from support.units import emit_units

from imagetools import keys
from imagetools.devices import load_devices
from imagetools.emit import EmitOptions, emit
from imagetools.errors import ImageFormatError, UsageError
from imagetools.image import read_image
from imagetools.image.probe import TABLE_AREA
from imagetools.published import materialize
from imagetools.station import flash as station
from imagetools.station.ledger import open_ledger
from imagetools.station.plan import plan_unit

pytestmark = pytest.mark.integration


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def batch(make_image, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return emit_units(make_image, tmp_path, 3)


def _states(out: Path) -> list[tuple[str, str]]:
    with open_ledger(out / "ledger.sqlite") as ledger:
        return [(r["unit"], r["state"]) for r in ledger.records()]


# --- one card, two names ---------------------------------------------------------------------------


@pytest.mark.parametrize("exists", [True, False])
def test_a_card_named_with_a_dot_component_is_the_same_target(batch, tmp_path, cli, exists):
    base, out = batch
    card = tmp_path / "card.img"
    if exists:
        random_card(card, base.stat().st_size)
        before = _sha(card)
    dotted = f"{tmp_path}/./card.img"
    proc = cli("flash", base, "--card", card, out / "u000", "--card", dotted, out / "u001")
    assert proc.returncode == 2 and "are the same target" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert (_sha(card) == before) if exists else not card.exists()
    assert _states(out) == [("u000", "refused"), ("u001", "refused")]
    again = cli("flash", base, dotted, "--unit", out / "u001", "--json")  # refusals do not retire
    assert again.returncode == 0, again.stderr


# --- what the ledger lets through again --------------------------------------------------------------


def test_a_ledger_holding_only_a_refusal_lets_the_unit_be_flashed(batch, tmp_path, cli):
    base, out = batch
    small = tmp_path / "small.img"
    small.write_bytes(b"x" * 4096)
    refused = cli("flash", base, small, "--unit", out / "u000")
    assert refused.returncode == 2 and "larger card" in refused.stderr
    assert _states(out) == [("u000", "refused")] and small.read_bytes() == b"x" * 4096
    card = tmp_path / "card.img"
    ok = cli("flash", base, card, "--unit", out / "u000")  # no --again: nothing shipped, nothing retired
    assert ok.returncode == 0, ok.stderr
    assert _states(out) == [("u000", "refused"), ("u000", "passed")]


def test_a_ledger_holding_only_a_failed_card_retires_the_unit(batch, tmp_path, cli):
    """docs/ledger.md: a key that went onto a card that did not pass never ships on another one,
    not even with --again (the old rule, a failed log record allowing a retry, is gone)."""
    base, out = batch
    plan = plan_unit(base, out / "u000")
    bad = dataclasses.replace(plan.ranges[-1], sha256="0" * 64)
    [record] = station.flash(
        [(str(tmp_path / "first.img"), dataclasses.replace(plan, ranges=plan.ranges[:-1] + (bad,)))]
    )
    assert record["state"] == "failed" and _states(out) == [("u000", "failed")]
    for flags in ([], ["--again"]):
        retry = cli("flash", base, tmp_path / "second.img", "--unit", out / "u000", *flags)
        assert retry.returncode == 2 and "retired" in retry.stderr and "preauth remove" in retry.stderr, retry.stderr
        assert not (tmp_path / "second.img").exists()
    assert cli("flash", base, tmp_path / "second.img", "--unit", out / "u001").returncode == 0


# --- a mounted card ----------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True)


@pytest.fixture
def mounted(tmp_path):
    """A loop device over a 96 MiB file, ext4 on it (no lazy init: nothing writes while mounted),
    mounted; everything undone, in reverse order, whatever the test does."""
    if not os.path.exists("/dev/loop-control") or os.geteuid() != 0:
        pytest.skip("loop devices need root and /dev/loop-control")
    backing = tmp_path / "reader.img"
    with open(backing, "wb") as f:
        f.truncate(96 << 20)
    with contextlib.ExitStack() as stack:
        done = _run("losetup", "-f", "--show", str(backing))
        if done.returncode != 0:
            pytest.skip(f"losetup cannot attach a loop device here: {done.stderr.strip()}")
        dev = done.stdout.strip()
        stack.callback(lambda: _run("losetup", "-d", dev))
        assert _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev).returncode == 0
        point = tmp_path / "media card"  # a space: the message names it as the kernel has it
        point.mkdir()
        done = _run("mount", dev, str(point))
        if done.returncode != 0:
            pytest.skip(f"mount is not permitted here: {done.stderr.strip()}")
        stack.callback(lambda: _run("umount", str(point)))
        yield dev, point, backing


def test_a_mounted_card_is_refused_naming_its_mount_point(batch, mounted, cli):
    base, out = batch
    dev, point, backing = mounted
    _run("sync")
    before = _sha(backing)
    proc = cli("flash", base, dev, "--unit", out / "u000")
    assert proc.returncode == 3, proc.stderr
    assert f"{dev} is mounted on {point}" in proc.stderr and f"umount {point}" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert _sha(backing) == before
    assert _states(out) == [("u000", "refused")]


# --- the table areas come last -----------------------------------------------------------------------


class FlushWatch:
    """At every fsync of the card, what the card holds: whether its table areas are all zeros,
    and whether they and the rest already equal the finished image (read through another fd)."""

    def __init__(self, card: Path, size: int):
        self.card, self.size = card, size
        self.seen: list[tuple[bytes, str]] = []

    def split(self, path: Path) -> tuple[bytes, str]:
        """(the table areas' bytes, the SHA-256 of everything between them)."""
        data = path.read_bytes()[: self.size]
        tables = data[:TABLE_AREA] + data[self.size - TABLE_AREA :]
        return tables, hashlib.sha256(data[TABLE_AREA : self.size - TABLE_AREA]).hexdigest()

    def spy(self, real):
        def flushed(fd: int) -> None:
            result = real(fd)
            if os.path.exists(self.card) and os.fstat(fd).st_ino == os.stat(self.card).st_ino:
                self.seen.append(self.split(self.card))
            return result

        return flushed

    def states(self, final: tuple[bytes, str]) -> list[tuple[str, bool]]:
        """(tables: 'zero', 'final' or 'other', rest final) at each flush."""
        return [
            ("zero" if t == bytes(len(t)) else "final" if t == final[0] else "other", rest == final[1])
            for t, rest in self.seen
        ]


@pytest.mark.parametrize("card_kind", ["used card", "new file"])
def test_the_table_areas_are_written_after_a_flush_that_follows_every_other_write(
    batch, tmp_path, monkeypatch, card_kind
):
    base, out = batch
    plan = plan_unit(base, out / "u000")
    materialize(out / "u000", tmp_path / "expected.img", base)
    card = tmp_path / "card.img"
    if card_kind == "used card":
        random_card(card, plan.size)
    watch = FlushWatch(card, plan.size)
    monkeypatch.setattr(os, "fsync", watch.spy(os.fsync))
    monkeypatch.setattr(os, "fdatasync", watch.spy(os.fdatasync))
    [record] = station.flash([(str(card), plan)])
    monkeypatch.undo()
    assert record["ok"], record["error"]
    assert card.read_bytes() == (tmp_path / "expected.img").read_bytes()
    states = watch.states(watch.split(tmp_path / "expected.img"))
    assert states, "the writer never flushed the card"
    assert all(tables == "zero" or (tables == "final" and rest) for tables, rest in states), states
    assert ("zero", True) in states, f"no flush between the last other write and the tables: {states}"
    assert states[-1] == ("final", True), states
    if card_kind == "used card":  # made to look unfinished before anything else is written
        assert states[0] == ("zero", False), states


# --- a failed flash on GPT ---------------------------------------------------------------------------


@pytest.fixture
def gpt_batch(make_image, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = make_image("gptimg")
    (tmp_path / "d.csv").write_text("name,mac\nu1,02:00:00:00:02:01\nu2,02:00:00:00:02:02\n")
    out = tmp_path / "OUT"
    assert emit(
        base,
        load_devices(tmp_path / "d.csv"),
        out,
        EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=1, format="delta"),
    ).ok
    return base, out


@pytest.mark.parametrize("failure", ["checksum", "interrupted"])
def test_a_failed_flash_on_gpt_leaves_the_backup_table_area_zeroed_too(gpt_batch, tmp_path, failure):
    base, out = gpt_batch
    card = tmp_path / "card.img"
    [first] = station.flash([(str(card), plan_unit(base, out / "u1"))])
    assert first["ok"], first["error"]
    size = base.stat().st_size
    with open(card, "rb") as f:  # the card holds both tables of the GPT
        f.seek(size - 512)
        assert f.read(8) == b"EFI PART" and read_image(card)
    plan = plan_unit(base, out / "u2")
    stop = threading.Event()
    if failure == "checksum":
        bad = dataclasses.replace(plan.ranges[-1], sha256="0" * 64)
        plan = dataclasses.replace(plan, ranges=plan.ranges[:-1] + (bad,))
    else:
        stop.set()
    [record] = station.flash([(str(card), plan)], stop=stop)
    assert record["state"] == ("failed" if failure == "checksum" else "interrupted"), record
    with open(card, "rb") as f:
        assert f.read(TABLE_AREA) == bytes(TABLE_AREA)
        f.seek(size - TABLE_AREA)
        assert f.read() == bytes(TABLE_AREA)
    with pytest.raises(ImageFormatError):
        read_image(card)
    with pytest.raises(UsageError, match="retired"):
        station.flash([(str(tmp_path / "other.img"), plan_unit(base, out / "u2"))], again=True)
