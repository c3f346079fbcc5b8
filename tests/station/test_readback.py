"""Reading a card back: every byte a flash wrote must come back from the medium as written,
through O_DIRECT (or dropped cached pages), on file targets and on a real block device."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
import re
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.units import one_unit

from imagetools import bmap, keys
from imagetools.devices import load_devices
from imagetools.emit import EmitOptions, emit
from imagetools.errors import UsageError, VerifyFailed
from imagetools.layout import open_layout
from imagetools.station import flash as station
from imagetools.station import readback
from imagetools.station.plan import Plan, plan_unit
from imagetools.station.readback import JBD2_MAGIC, Expected, check_card, expected_of, headers, read_back

pytestmark = pytest.mark.integration
B = bmap.BLOCK_SIZE


@pytest.fixture
def unit(make_image, tmp_path, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # block_map's cache
    return one_unit(make_image, tmp_path)


@pytest.fixture
def flashed(unit, tmp_path) -> tuple[Plan, Path, Expected]:
    """A used card (random bytes) flashed with the unit: its zeros, ranges and patches written."""
    card = tmp_path / "card.img"
    card.write_bytes(random.Random(1).randbytes(unit[0].stat().st_size))
    plan = _flash(*unit, card)
    return plan, card, Expected(plan.size, plan.ranges, plan.patches, plan.zeros, plan.source, plan.journals)


@pytest.fixture
def loop():
    """attach(FILE) -> /dev/loopN; every device attached here is detached at the end."""
    if not os.access("/dev/loop-control", os.W_OK) or shutil.which("losetup") is None:
        pytest.skip("no usable /dev/loop-control or losetup (needs root)")
    attached: list[str] = []

    def attach(path: Path) -> str:
        proc = subprocess.run(["losetup", "-f", "--show", str(path)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"losetup cannot attach a loop device: {proc.stderr.strip()}")
        attached.append(proc.stdout.strip())
        return attached[-1]

    try:
        yield attach
    finally:
        for dev in attached:
            subprocess.run(["losetup", "-d", dev], check=False)


def _flash(base: Path, unit_dir: Path, card: Path) -> Plan:
    """The unit written onto CARD by the station's own flash (its own read-back off: these tests
    call read_back themselves)."""
    plan = plan_unit(base, unit_dir)
    [record] = station.flash([(str(card), plan)], fsck=False, readback=False)
    assert record["state"] == "passed", record["error"]
    return plan


def _flip(path: Path | str, at: int) -> None:
    with open(path, "r+b") as f:
        old = os.pread(f.fileno(), 1, at)
        os.pwrite(f.fileno(), bytes([old[0] ^ 0xFF]), at)
        os.fsync(f.fileno())


def _rootfs_range(plan: Plan) -> bmap.BlockRange:
    """A mapped range inside rootfs A, the biggest: no patch touches it."""
    part = open_layout(plan.source).require("rootfs-a").partition
    inside = [r for r in plan.ranges if part.start <= r.first * B and (r.last + 1) * B <= part.end]
    return max(inside, key=lambda r: r.last - r.first)


def _named_blocks(exc: pytest.ExceptionInfo) -> tuple[int, int]:
    first, last = re.search(r"blocks (\d+)-(\d+) read back", str(exc.value)).groups()
    return int(first), int(last)


def test_a_flashed_card_reads_back_and_check_card_agrees(flashed, unit):
    plan, card, expected = flashed
    seen: list[int] = []
    assert read_back(card, expected, seen.append) == expected.total
    assert seen == sorted(seen) and seen[-1] == expected.total
    base, unit_dir = unit
    without_zeros = Expected(plan.size, plan.ranges, plan.patches, journals=plan.journals)
    assert check_card(card, base, unit_dir) == without_zeros.total < plan.size
    with pytest.raises(VerifyFailed, match=r"\(bmap checksum\)") as exc:
        check_card(card, base)  # the base alone: its data-partition blocks were patched
    data = open_layout(base).require("data").partition
    assert data.start <= _named_blocks(exc)[0] * B < data.end


def test_a_corrupt_rootfs_byte_names_its_range(flashed):
    plan, card, expected = flashed
    r = _rootfs_range(plan)
    _flip(card, (r.first + r.last) // 2 * B + 123)
    with pytest.raises(
        VerifyFailed,
        match=rf"{card}: blocks {r.first}-{r.last} read back differently "
        r"from what was written \(bmap checksum\); the card is bad or "
        "fake-capacity: replace it",
    ):
        read_back(card, expected)


def test_a_corrupt_patch_byte_fails(flashed):
    plan, card, expected = flashed
    off, data = plan.patches[len(plan.patches) // 2]
    at = off + len(data) // 2
    _flip(card, at)
    with pytest.raises(VerifyFailed, match="the unit's blocks") as exc:
        read_back(card, expected)
    first, last = _named_blocks(exc)
    assert first <= at // B <= last


def test_a_nonzero_byte_in_a_zeroed_range_fails(flashed):
    plan, card, expected = flashed
    start, end = max(expected.zeros, key=lambda z: z[1] - z[0])
    _flip(card, (start + end) // 2)
    with pytest.raises(VerifyFailed, match=r"\(zeros\)") as exc:
        read_back(card, expected)
    first, last = _named_blocks(exc)
    assert first * B <= (start + end) // 2 < (last + 1) * B
    assert read_back(card, Expected(plan.size, plan.ranges, plan.patches, source=plan.source))  # holes unchecked


def test_a_short_card_fails(flashed, monkeypatch):
    plan, card, expected = flashed
    os.truncate(card, plan.size - 3 * B)
    with pytest.raises(
        VerifyFailed,
        match=f"{card} ends at byte {plan.size - 3 * B}, the image needs {plan.size}: a fake-capacity or damaged card",
    ):
        read_back(card, expected)
    # A device that claims the full size and still stops short is caught by the read itself.
    monkeypatch.setattr("imagetools.station.readback._length", lambda fd, name: plan.size)
    with pytest.raises(VerifyFailed, match=f"ends at byte {plan.size - 3 * B}, the image needs"):
        read_back(card, expected)


def test_an_image_unit_is_checked_against_its_own_image(flashed, unit, tmp_path):
    _, delta_card, _ = flashed
    base, _ = unit
    emit(
        base,
        load_devices(tmp_path / "d.csv"),
        tmp_path / "IMG",
        EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=1),
    )
    card = tmp_path / "image-card.img"
    _flash(base, tmp_path / "IMG" / "u1", card)
    assert check_card(card, base, tmp_path / "IMG" / "u1") > 0
    with pytest.raises(VerifyFailed):
        check_card(delta_card, base, tmp_path / "IMG" / "u1")  # another key: other data blocks


def test_bad_inputs_are_usage_errors(flashed, unit, tmp_path):
    plan, card, expected = flashed
    base, unit_dir = unit
    with pytest.raises(UsageError, match="source image is needed"):
        read_back(card, Expected(plan.size, plan.ranges, plan.patches))
    changed = tmp_path / "changed.sdimg"
    subprocess.run(["cp", "--sparse=always", str(base), str(changed)], check=True)
    r = next(r for r in plan.ranges if any(o < (r.last + 1) * B and r.first * B < o + len(d) for o, d in plan.patches))
    _flip(changed, r.first * B)
    with pytest.raises(UsageError, match=f"blocks {r.first}-{r.last} do not match their bmap checksum"):
        read_back(card, Expected(plan.size, plan.ranges, plan.patches, source=str(changed)))
    with pytest.raises(UsageError, match="is not the base"):
        check_card(card, changed, unit_dir)
    with pytest.raises(UsageError, match="overlap"):
        read_back(card, Expected(plan.size, (), [(0, b"ab"), (1, b"c")]))
    with pytest.raises(UsageError, match="outside the image"):
        read_back(card, Expected(plan.size, (), [(plan.size - 1, b"ab")]))
    with pytest.raises(UsageError, match="neither a block device nor a regular file"):
        read_back(tmp_path, expected)
    with pytest.raises(UsageError, match="cannot open"):
        read_back(tmp_path / "missing.img", expected)


def test_where_o_direct_is_refused_cached_pages_are_dropped(flashed, tmp_path, monkeypatch):
    """ramfs refuses O_DIRECT at open; a read may refuse it too (EINVAL): both fall back."""
    plan, card, expected = flashed
    real = os.preadv
    refused: list[int] = []

    def no_direct_reads(fd, buffers, pos):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(fd, buffers, pos)

    with monkeypatch.context() as m:
        m.setattr(os, "preadv", no_direct_reads)
        assert read_back(card, expected) == expected.total
    assert refused
    ram = tmp_path / "ram"
    ram.mkdir()
    if subprocess.run(["mount", "-t", "ramfs", "ramfs", str(ram)], capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a ramfs here (needs root)")
    try:
        copy = ram / "card.img"
        shutil.copyfile(card, copy)
        with pytest.raises(OSError, match="Invalid argument"):
            os.close(os.open(copy, os.O_RDONLY | os.O_DIRECT))
        assert read_back(copy, expected) == expected.total
        _flip(copy, plan.patches[0][0])
        with pytest.raises(VerifyFailed):
            read_back(copy, expected)
    finally:
        subprocess.run(["umount", str(ram)], check=True)


def test_a_loop_device_reads_past_its_own_page_cache(flashed, loop):
    """The loop device's page cache keeps what was read through it while anyone holds the device
    open (the last close drops it); a change under it, in the backing file, shows only to reads
    that bypass that cache: O_DIRECT, or an fd flushed and its cached pages dropped."""
    plan, card, expected = flashed
    dev = loop(card)
    assert read_back(dev, expected) == expected.total
    at = (_rootfs_range(plan).first + 1) * B + 7
    held = os.open(dev, os.O_RDONLY)  # another opener (a udev probe, the writer): the cache stays
    try:
        while os.read(held, 4 << 20):
            pass  # the whole device now sits in the loop device's page cache
        before = os.pread(held, 1, at)
        _flip(card, at)
        assert os.pread(held, 1, at) == before  # buffered reads still see the old byte
        with pytest.raises(VerifyFailed, match=f"{dev}: blocks"):
            read_back(dev, expected)
        assert os.pread(held, 1, at) == before  # O_DIRECT went past the cache, leaving it be
        with pytest.raises(VerifyFailed, match=f"{dev}: blocks"):
            read_back(held, expected)  # an fd: flushed and its cached pages dropped
        assert os.pread(held, 1, at) != before and os.fstat(held)  # still open: the caller's
    finally:
        os.close(held)
    _flip(card, at)
    assert read_back(dev, expected) == expected.total
    # The device still claims its full size, the medium behind it ends halfway: a fake-capacity
    # card (the loop driver answers reads past the file's end with an I/O error).
    os.truncate(card, plan.size // 2)
    with pytest.raises(VerifyFailed, match=rf"{dev}: cannot read blocks {plan.size // 2 // B}-.* the card is bad"):
        read_back(dev, expected)


@st.composite
def _images(draw):
    """(size, source bytes, ranges, patches, with zeros): a random image a flash could write."""
    size = draw(st.integers(1, 24)) * B - draw(st.integers(0, B - 1))
    rng = random.Random(draw(st.integers(0, 2**32)))
    source = rng.randbytes(size)
    blocks = -(-size // B)
    mapped = draw(st.lists(st.booleans(), min_size=blocks, max_size=blocks))
    cuts = draw(st.lists(st.booleans(), min_size=blocks, max_size=blocks))
    ranges: list[list[int]] = []
    for i in range(blocks):
        if mapped[i]:
            if ranges and ranges[-1][1] == i - 1 and not cuts[i]:
                ranges[-1][1] = i
            else:
                ranges.append([i, i])
    spans = sorted(draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 3 * B)), max_size=5)))
    patches, end = [], 0
    for off, n in spans:
        if off >= end:
            n = min(n, size - off)
            patches.append((off, rng.randbytes(n)))
            end = off + n
    block_ranges = [bmap.BlockRange(a, b, _sha(source[a * B : (b + 1) * B])) for a, b in ranges]
    return size, source, block_ranges, patches, draw(st.booleans())


def _holes(size: int, ranges: list[bmap.BlockRange]) -> list[tuple[int, int]]:
    """What a flash onto a used card zeroes at most: every byte outside the ranges."""
    cuts = [0] + [x for r in ranges for x in (r.first * B, min((r.last + 1) * B, size))] + [size]
    return [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if a < b]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image=_images(), data=st.data())
def test_any_written_byte_flipped_fails_and_an_exact_copy_passes(tmp_path, image, data):
    """Small reads and gaps too, so that checks span reads and reads span gaps."""
    chunk, gap = data.draw(st.sampled_from([B, 3 * B, 4 << 20])), data.draw(st.sampled_from([0, B, 64 << 10]))
    with mock.patch.object(readback, "_CHUNK", chunk), mock.patch.object(readback, "_GAP", gap):
        _exact_copy_passes_and_any_flip_fails(tmp_path, image, data)


def _exact_copy_passes_and_any_flip_fails(tmp_path, image, data):
    size, source, ranges, patches, zeros = image
    card, written = bytearray(size), bytearray(size)
    for r in ranges:
        a, b = r.first * B, min((r.last + 1) * B, size)
        card[a:b], written[a:b] = source[a:b], b"\1" * (b - a)
    for off, blob in patches:
        card[off : off + len(blob)], written[off : off + len(blob)] = blob, b"\1" * len(blob)
    if zeros:
        written = bytearray(b"\1" * size)
    (tmp_path / "source").write_bytes(source)
    tail = random.Random(size).randbytes(data.draw(st.integers(0, 2)) * 1000)  # a card bigger than the image
    (tmp_path / "card").write_bytes(bytes(card) + tail)
    expected = Expected(size, ranges, patches, _holes(size, ranges) if zeros else (), str(tmp_path / "source"))
    assert read_back(tmp_path / "card", expected) == expected.total == written.count(1)
    if expected.total:
        positions = [i for i, w in enumerate(written) if w]
        _flip(tmp_path / "card", data.draw(st.sampled_from(positions)))
        with pytest.raises(VerifyFailed, match="read back differently"):
            read_back(tmp_path / "card", expected)


def _plant_headers(card: Path, at: list[int]) -> None:
    with open(card, "r+b") as f:
        for pos in at:
            os.pwrite(f.fileno(), JBD2_MAGIC + b"\0\0\0\1", pos)  # a descriptor's magic and block type
        os.fsync(f.fileno())


def test_a_cards_stale_journal_headers_are_zeroed_and_read_back(unit, tmp_path, loop):
    """A reused card on a block device: only the journal blocks holding a JBD2 header get zeros
    (one at a 1 KiB block's start inside a 4 KiB block too), a header planted after the flash
    fails the read-back and the QA check, naming the journal."""
    base, unit_dir = unit
    plan = plan_unit(base, unit_dir)
    a, b = max(plan.journals, key=lambda s: s[1] - s[0])
    planted = [a, a + 5 * B + 1024, b - B]
    card = tmp_path / "card.img"
    card.write_bytes(random.Random(2).randbytes(plan.size))
    _plant_headers(card, [*planted, a + 2 * B + 7])  # not at a 512-byte boundary: no header
    dev = loop(card)
    with open(dev, "rb") as f:
        assert readback.stale_headers(f.fileno(), plan.journals) == [(a, a + B), (a + 5 * B, a + 6 * B), (b - B, b)]
    [record] = station.flash([(dev, plan)], fsck=False)
    assert record["state"] == "passed", record["error"]
    assert record["zeroing"] in ("written", "write-zeroes")
    assert record["bytes_written"] == plan.total + 3 * B  # the journals cost three blocks, not their size
    expected = expected_of(plan, record["zeroing"])
    plain = Expected(plan.size, plan.ranges, plan.patches, plan.zeros, plan.source)
    assert read_back(dev, expected) == expected.total == plain.total + sum(e - s for s, e in plan.journals)
    assert check_card(dev, base, unit_dir) > 0
    _plant_headers(card, [a + 9 * B])
    with pytest.raises(VerifyFailed, match=rf"blocks {a // B}-.*\(a stale journal header\)"):
        read_back(dev, expected)
    with pytest.raises(VerifyFailed, match="a stale journal header"):
        check_card(dev, base, unit_dir)
    assert expected_of(plan, "punched").journals == ()  # a file's holes: nothing stale to find


@settings(max_examples=200, deadline=None)
@given(
    pos=st.integers(0, 4 * B).map(lambda n: n * 4),
    length=st.integers(0, 6 * B),
    at=st.lists(st.integers(0, 6 * B), max_size=8),
    seed=st.integers(0, 2**32),
)
def test_headers_are_exactly_the_magics_at_sector_starts(pos, length, at, seed):
    piece = bytearray(random.Random(seed).choices(b"\x00\x39\xc0\x98\x3b", k=length))
    for i in at:
        piece[i : i + 4] = JBD2_MAGIC[: max(0, length - i)]
    del piece[length:]
    want = [pos + i for i in range(length - 3) if (pos + i) % 512 == 0 and piece[i : i + 4] == JBD2_MAGIC]
    assert headers(pos, memoryview(bytes(piece))) == want
