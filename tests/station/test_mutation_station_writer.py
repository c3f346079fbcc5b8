"""What imagetools.station.writer puts on a target, the edges scripts/mutation found untested: a
plan of ranges that cross a copy chunk and both table areas, patches over ranges and holes, each
byte checked against the finished image; the table areas held back while everything else is
written; holes punched in a file (or written as zeros where the file system cannot punch); on a
card (a loop device) the zeros made with BLKZEROOUT or written, the journal blocks with a stale
JBD2 header zeroed; the refusals' exact messages; a stop between ranges."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest
from support.slots import Rig

from imagetools import keys
from imagetools.bmap import BlockRange
from imagetools.errors import UsageError
from imagetools.image.probe import TABLE_AREA
from imagetools.published import Unit
from imagetools.station import writer
from imagetools.station.plan import Plan
from imagetools.station.readback import JBD2_MAGIC

pytestmark = pytest.mark.integration

B = 4096
SIZE = 10 * (1 << 20) + 1000  # not a whole block: the last block of the image is 1000 bytes
TAIL = SIZE - TABLE_AREA  # the end table area starts inside block 2544
# (first, last) blocks: one range over the first copy chunk and the start table area, one block,
# one across the end table area's start, ending before the image does (a hole to the end)
SPANS = ((0, 1099), (1500, 1500), (2540, 2550))
PATCHES = (
    (100, b"P" * 50),  # in the start table area
    (1100 * B - 5, b"Q" * 10),  # from a range into a hole
    (1500 * B + 10, b"R" * 20),  # over a range
    (SIZE - 30, b"Z" * 30),  # in the end table area, in a hole
)


def _unit() -> Unit:
    private = keys.generate(keys.KeySpec(type="ed25519"))
    return Unit("w1", keys.fingerprint(private), private.public_key(), "0" * 64)


UNIT = _unit()


def _source(path: Path, size: int = SIZE, spans=SPANS) -> tuple[Path, tuple[BlockRange, ...]]:
    """A sparse image with random bytes in SPANS, and its ranges with their sha256."""
    ranges = []
    with open(path, "wb") as f:
        f.truncate(size)
        for first, last in spans:
            end = min((last + 1) * B, size)
            data = os.urandom(end - first * B)
            f.seek(first * B)
            f.write(data)
            ranges.append(BlockRange(first, last, hashlib.sha256(data).hexdigest()))
    return path, tuple(ranges)


def _plan(source: Path, ranges, size: int = SIZE, patches=PATCHES, zeros=(), journals=()) -> Plan:
    return Plan(str(source), size, ranges, patches, UNIT, zeros, (str(source),), None, journals)


def _expected(plan: Plan, patched: bool = True) -> bytes:
    """The finished image: the source's mapped bytes, zeros elsewhere, the patches over them."""
    image = bytearray(plan.size)
    data = Path(plan.source).read_bytes()
    for r in plan.ranges:
        a, b = r.first * B, min((r.last + 1) * B, plan.size)
        image[a:b] = data[a:b]
    for off, patch in plan.patches if patched else ():
        image[off : off + len(patch)] = patch
    return bytes(image)


def _sent(plan: Plan) -> int:
    return sum(min((r.last + 1) * B, plan.size) - r.first * B for r in plan.ranges) + sum(
        len(d) for _, d in plan.patches
    )


def _tables(data: bytes, size: int = SIZE) -> bytes:
    return data[:TABLE_AREA] + data[size - TABLE_AREA : size]


def _allocated(path: Path, a: int, b: int) -> bool:
    """Whether any byte of [a, b) of the file is data, not a hole."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, a, os.SEEK_DATA) < b
    except OSError:  # ENXIO: no data from a to the end
        return False
    finally:
        os.close(fd)


def _write(plan: Plan, target: Path | str, **options) -> tuple[int, str]:
    fd = os.open(target, os.O_RDWR)
    try:
        return writer.write_plan(plan, fd, **options)
    finally:
        os.close(fd)


@pytest.fixture
def plan(tmp_path) -> Plan:
    return _plan(*_source(tmp_path / "image"))


@pytest.fixture
def used(tmp_path) -> Path:
    card = tmp_path / "card.img"
    card.write_bytes(os.urandom(SIZE))
    return card


def test_a_used_file_becomes_the_image_its_holes_punched(plan, used):
    seen = []

    def progress(n: int) -> None:  # after each range: its bytes outside the table areas are on the card
        data = used.read_bytes()
        seen.append((n, _tables(data)))
        r = plan.ranges[len(seen) - 1] if len(seen) <= len(plan.ranges) else None
        if r is not None:
            a, b = max(r.first * B, TABLE_AREA), min((r.last + 1) * B, TAIL)
            assert data[a:b] == _expected(plan, patched=False)[a:b]

    assert _write(plan, used, progress=progress) == (_sent(plan), "punched")
    assert used.read_bytes() == _expected(plan) and used.stat().st_size == SIZE
    mapped = [sum(min((r.last + 1) * B, SIZE) - r.first * B for r in plan.ranges[: i + 1]) for i in range(3)]
    assert [n for n, _ in seen] == [*mapped, _sent(plan)]
    assert all(tables == bytes(2 * TABLE_AREA) for _, tables in seen[:-1])  # held back until the end
    assert seen[-1][1] == _tables(_expected(plan))
    for a, b in ((1101 * B, 1500 * B), (1501 * B, 2540 * B), (2551 * B, SIZE - 4096)):
        assert not _allocated(used, a, b), (a, b)  # punched, not written: the file takes no room there
    assert _allocated(used, 1500 * B, 1501 * B)


def test_a_fresh_file_is_not_zeroed_first(plan, used):
    old = used.read_bytes()
    seen = []
    assert _write(plan, used, progress=lambda n: seen.append(_tables(used.read_bytes())), fresh=True) == (
        _sent(plan),
        "holes",
    )
    data, want = used.read_bytes(), _expected(plan)
    assert data[1200 * B : 1300 * B] == old[1200 * B : 1300 * B]  # an unmapped block is left as it was
    assert _tables(old)[TABLE_AREA - 100 :] == seen[0][TABLE_AREA - 100 :]  # no table zeroed first
    for r in plan.ranges:
        a, b = r.first * B, min((r.last + 1) * B, SIZE)
        assert data[a:b] == want[a:b]
    empty = used.parent / "empty.img"
    with open(empty, "wb") as f:
        f.truncate(SIZE)
    assert _write(plan, empty, fresh=True) == (_sent(plan), "holes") and empty.read_bytes() == want


@pytest.mark.parametrize("first", [0, 1])
def test_an_image_smaller_than_a_table_area_is_written_whole_and_no_further(tmp_path, first):
    source, ranges = _source(tmp_path / "small", 10000, ((first, first), (2, 2)))
    small = _plan(source, ranges, 10000, ((5000, b"x" * 7),))
    card = tmp_path / "card.img"
    card.write_bytes(os.urandom(10000))
    assert _write(small, card) == (4096 + (10000 - 2 * B) + 7, "punched")
    assert card.read_bytes() == _expected(small)
    assert _allocated(card, 0, B) == (first == 0)  # a hole from the image's first byte is punched too


def test_a_file_larger_than_the_image_keeps_what_lies_past_it(tmp_path):
    size = 2 * B + 1  # its last block holds one byte: a range there ends before the file does
    source, ranges = _source(tmp_path / "small", size, ((2, 2),))
    small = _plan(source, ranges, size, ())
    card = tmp_path / "card.img"
    card.write_bytes(os.urandom(size + 100))
    past = card.read_bytes()[size:]
    assert _write(small, card) == (1, "punched")
    data = card.read_bytes()
    assert data[:size] == _expected(small) and data[size:] == past


def test_a_stop_between_ranges_interrupts_before_the_tables(plan, used):
    stop = threading.Event()
    old = used.read_bytes()
    with pytest.raises(writer.Interrupted) as interrupted:
        _write(plan, used, progress=lambda n: stop.set(), stop=stop)
    assert str(interrupted.value) == "the station was stopped while writing"
    data = used.read_bytes()
    assert _tables(data) == bytes(2 * TABLE_AREA)
    assert data[1500 * B : 1501 * B] == old[1500 * B : 1501 * B]  # the second range never written
    assert data[TABLE_AREA : 1100 * B] == _expected(plan, patched=False)[TABLE_AREA : 1100 * B]


def test_a_range_that_does_not_match_its_checksum_names_the_first_and_leaves_no_table(tmp_path, used):
    source, ranges = _source(tmp_path / "image")
    bad = (ranges[0], BlockRange(1500, 1500, "0" * 64), BlockRange(2540, 2550, "1" * 64))
    with pytest.raises(UsageError) as refused:
        _write(_plan(source, bad), used)
    assert str(refused.value) == (
        f"{source}: blocks 1500-1500 do not match their bmap checksum: the image changed after its bmap "
        "was made (make a new one)"
    )
    data = used.read_bytes()
    assert _tables(data) == bytes(2 * TABLE_AREA)
    assert data[1500 * B + 10 : 1500 * B + 30] != PATCHES[2][1]  # no patch written either


# the end of the source in a range copied whole, in a range's last chunk, in the end table area's
SHORT = [(((0, 1099), (1500, 2000)), 1800 * B), (((0, 1099), (1500, 2550)), 1800 * B), (((0, 2550),), 2546 * B)]


@pytest.mark.parametrize(("spans", "cut"), SHORT)
def test_a_source_shorter_than_its_map_is_refused_at_the_byte_it_ends(tmp_path, used, spans, cut):
    source, ranges = _source(tmp_path / "image", spans=spans)
    os.truncate(source, cut)
    with pytest.raises(UsageError) as refused:
        _write(_plan(source, ranges), used)
    assert str(refused.value) == f"{source} is shorter than its block map says (at byte {cut})"
    assert _tables(used.read_bytes()) == bytes(2 * TABLE_AREA)


def test_a_source_that_is_no_file_is_refused_naming_it(tmp_path, used):
    source, ranges = _source(tmp_path / "image")
    plan = _plan(source, ranges)
    os.unlink(source)
    os.mkdir(source)
    with pytest.raises(UsageError) as refused:
        _write(plan, used)
    assert str(refused.value) == f"image {source} is a directory, not a regular file"


def test_a_file_that_refuses_a_punch_is_an_os_error(plan, tmp_path):
    card = tmp_path / "card.img"
    card.write_bytes(os.urandom(SIZE))
    if subprocess.run(["chattr", "+a", str(card)], capture_output=True).returncode != 0:
        pytest.skip("chattr +a is not supported here")
    try:
        fd = os.open(card, os.O_WRONLY | os.O_APPEND)  # an append-only file: no hole may be punched
        try:
            with pytest.raises(OSError) as refused:
                writer.write_plan(plan, fd)
        finally:
            os.close(fd)
    finally:
        subprocess.run(["chattr", "-a", str(card)], check=True)
    assert (refused.value.errno, refused.value.strerror) == (errno.EPERM, "Operation not permitted")


@contextlib.contextmanager
def _mounted(where: Path, *args: str):
    """`mount ARGS WHERE`, unmounted whatever the test does (a loop mount detaches its device)."""
    where.mkdir()
    done = subprocess.run(["mount", *args, str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount {args[-1]} here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_file_system_that_cannot_punch_gets_written_zeros(plan, tmp_path):
    with _mounted(tmp_path / "ram", "-t", "ramfs", "ramfs") as ram:  # ramfs has no fallocate
        card = ram / "card.img"
        card.write_bytes(os.urandom(SIZE))
        assert _write(plan, card) == (_sent(plan), "punched")
        assert card.read_bytes() == _expected(plan)


# --- a card: a loop device ------------------------------------------------------------------------------

JOURNAL = (1700 * B, 1710 * B)


def _card_plan(tmp_path: Path, zeros) -> Plan:
    source, ranges = _source(tmp_path / "image")
    return _plan(source, ranges, zeros=zeros, journals=(JOURNAL,))


def _used_card(path: Path, headers: bool = True) -> tuple[Path, bytes]:
    """A used card of SIZE rounded up to a sector, with stale JBD2 headers in blocks 1703 and 1705."""
    old = bytearray(os.urandom(SIZE + 24))
    for at in (1703 * B, 1705 * B + 512) if headers else ():
        old[at : at + 4] = JBD2_MAGIC
    old[1706 * B + 100 : 1706 * B + 104] = JBD2_MAGIC  # not at a sector's start: no header
    path.write_bytes(old)
    return path, bytes(old)


@pytest.fixture
def rig():
    with Rig(1) as rig:
        yield rig


@pytest.mark.parametrize(
    ("zeros", "headers", "how"),
    [
        (((1150 * B, 1250 * B),), True, "write-zeroes"),
        (((1150 * B, 1250 * B), (1600 * B + 100, 1600 * B + 700)), False, "write-zeroes"),
        (((1600 * B + 100, 1600 * B + 700),), False, "written"),  # not sector-aligned: BLKZEROOUT refuses
        ((), False, "written"),
        ((), True, "write-zeroes"),
    ],
)
def test_a_card_gets_its_zeros_and_its_stale_journal_headers_zeroed(tmp_path, rig, zeros, headers, how):
    plan = _card_plan(tmp_path, zeros)
    card, old = _used_card(tmp_path / "card.img", headers)
    [slot] = rig.slots
    rig.insert(slot, card)
    stale = [(1703 * B, 1704 * B), (1705 * B, 1706 * B)] if headers else []
    done = _write(plan, slot)
    assert done == (_sent(plan) + sum(b - a for a, b in [*zeros, *stale]), how)
    rig.pull(slot)
    data, want = card.read_bytes(), _expected(plan)
    for r in plan.ranges:
        a, b = r.first * B, min((r.last + 1) * B, SIZE)
        assert data[a:b] == want[a:b]
    assert _tables(data) == _tables(want)
    for a, b in [*zeros, *stale]:
        assert data[a:b] == bytes(b - a)
    assert data[1250 * B : 1500 * B] == old[1250 * B : 1500 * B]  # what no zero span covers stays
    assert data[JOURNAL[0] : 1703 * B] == old[JOURNAL[0] : 1703 * B]
    assert (
        data[1704 * B : 1705 * B] == old[1704 * B : 1705 * B]
        and data[1706 * B : JOURNAL[1]] == old[1706 * B : JOURNAL[1]]
    )
    assert data[SIZE:] == old[SIZE:]


@pytest.mark.parametrize(("spans", "cut"), SHORT[:2])
def test_a_source_shorter_than_its_map_is_refused_on_a_card_too(tmp_path, rig, spans, cut):
    source, ranges = _source(tmp_path / "image", spans=spans)
    os.truncate(source, cut)
    card, _ = _used_card(tmp_path / "card.img")
    [slot] = rig.slots
    rig.insert(slot, card)
    with pytest.raises(UsageError) as refused:
        _write(_plan(source, ranges), slot)
    assert str(refused.value) == f"{source} is shorter than its block map says (at byte {cut})"


def test_a_partition_of_a_card_gets_write_zeroes_as_its_disk_does(tmp_path, rig):
    plan = _card_plan(tmp_path, ((1150 * B, 1250 * B),))
    card = tmp_path / "card.img"
    with open(card, "wb") as f:
        f.truncate((1 << 20) + SIZE + (1 << 20))
    subprocess.run(["sfdisk", "-q", str(card)], input="label: dos\nstart=2048, type=83\n", text=True, check=True)
    [slot] = rig.slots
    rig.insert(slot, card)
    subprocess.run(["partx", "-a", slot], check=True, capture_output=True)
    try:
        assert _write(plan, f"{slot}p1") == (_sent(plan) + 100 * B, "write-zeroes")
    finally:
        subprocess.run(["partx", "-d", slot], capture_output=True)
    rig.pull(slot)
    with open(card, "rb") as f:
        f.seek(1 << 20)
        assert f.read(SIZE) == _expected(plan)[: 1150 * B] + bytes(100 * B) + _expected(plan)[1250 * B :]


def test_zeros_past_a_copy_chunk_are_written_exactly(tmp_path, rig):
    span = (1110 * B + 515, 1110 * B + 515 + (5 << 20))  # unaligned: written by the writer, in two chunks
    source, ranges = _source(tmp_path / "image", spans=((0, 1099),))
    plan = _plan(source, ranges, patches=(), zeros=(span,))
    card, old = _used_card(tmp_path / "card.img")
    [slot] = rig.slots
    rig.insert(slot, card)
    assert _write(plan, slot) == (_sent(plan) + span[1] - span[0], "written")
    rig.pull(slot)
    data = card.read_bytes()
    assert data[span[0] : span[1]] == bytes(span[1] - span[0])
    assert data[span[0] - 3 : span[0]] == old[span[0] - 3 : span[0]]
    assert data[span[1] : span[1] + 3] == old[span[1] : span[1] + 3]


def test_a_card_without_write_zeroes_gets_its_zeros_written(tmp_path, rig):
    plan = _card_plan(tmp_path, ((1150 * B, 1250 * B),))
    with _mounted(tmp_path / "ram", "-t", "ramfs", "ramfs") as ram:  # a loop device over ramfs has no WRITE ZEROES
        card, old = _used_card(ram / "card.img")
        [slot] = rig.slots
        rig.insert(slot, card)
        try:
            assert _write(plan, slot) == (_sent(plan) + 100 * B + 2 * B, "written")
        finally:
            rig.pull(slot)
        data = card.read_bytes()
        assert data[1150 * B : 1250 * B] == bytes(100 * B) and data[1250 * B : 1500 * B] == old[1250 * B : 1500 * B]
