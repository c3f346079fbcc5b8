"""must_zero on real images: a card full of random bytes that gets only the mapped blocks, the
zeroed ranges and its journals' stale headers zeroed passes e2fsck -fn and fsck.vfat -n on every
partition, keeps the bytes outside the partitions exactly the image's, costs little more than the
mapped blocks, and never replays an old card's journal. Hostile superblocks, descriptors,
bitmaps, journal inodes and FAT boot sectors never escape their partition nor raise a traceback."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.images import PERSISTENT_CACHE
from support.tools import run_tool

from imagetools import bmap
from imagetools.errors import ImageFormatError
from imagetools.fs import EXT_TYPES
from imagetools.image import ImageSource
from imagetools.layout import PartInfo, open_layout
from imagetools.station import spans as span_math
from imagetools.station import zeroing
from imagetools.station.readback import stale_headers
from imagetools.station.zeroing import must_zero

pytestmark = pytest.mark.integration
LAYOUTS = ["sdimg", "uefiimg", "gptimg", "extended", "noboot"]
FAKE_TIME = {**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000", "MTOOLS_SKIP_CHECK": "1"}


@pytest.fixture(scope="module", autouse=True)
def _drop_images_built_here(image_cache):
    """Leave nothing in /tmp: remove the cached builds this module added (others rebuild theirs)."""
    if PERSISTENT_CACHE:  # scripts/mutation's, removed with its copy of the tree
        yield
        return
    before = set(image_cache.iterdir())
    yield
    for path in set(image_cache.iterdir()) - before:
        path.unlink()


@pytest.fixture(autouse=True)
def _leave_nothing(tmp_path):
    """Cards are full-size files of random bytes: remove them and the image copies after each test."""
    yield
    for child in tmp_path.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


# --- helpers ----------------------------------------------------------------------------------
def spans_bytes(spans) -> int:
    return sum(b - a for a, b in spans)


def mapped_spans(scan: bmap.Scan) -> list[tuple[int, int]]:
    return [(r.first * 4096, min((r.last + 1) * 4096, scan.size)) for r in scan.ranges]


def write_card(image: Path, card: Path, zero, journals=()) -> bmap.Scan:
    """A reused card: random bytes, then the image's mapped ranges, zeros where told, and the
    journals' stale headers zeroed as the station's writer does."""
    scan = bmap.scan(image)
    with open(card, "wb") as out:
        out.writelines(os.urandom(min(4 << 20, scan.size - pos)) for pos in range(0, scan.size, 4 << 20))
    with open(image, "rb") as src, open(card, "r+b") as out:
        write_over(src.fileno(), out.fileno(), scan, zero, journals)
    return scan


def write_over(src: int, card: int, scan: bmap.Scan, zero, journals) -> None:
    for a, b in mapped_spans(scan):
        os.pwrite(card, os.pread(src, b - a, a), a)
    for a, b in [*zero, *stale_headers(card, journals)]:
        os.pwrite(card, bytes(b - a), a)
    os.fsync(card)


def flash_like_station(image: Path, card: Path) -> tuple[bmap.Scan, list[tuple[int, int]]]:
    scan = bmap.scan(image)
    needs = must_zero(image, scan.ranges, scan.size)
    write_card(image, card, needs.zeros, needs.journals)
    assert_in_holes(scan, needs.journals)
    assert span_math.intersect(list(needs.zeros), list(needs.journals)) == []
    return scan, list(needs.zeros)


def assert_in_holes(scan: bmap.Scan, spans) -> None:
    spans = list(spans)
    holes = span_math.subtract([(0, scan.size)], span_math.merge(mapped_spans(scan)))
    assert spans == span_math.merge(spans) and span_math.intersect(spans, holes) == spans
    assert all(a % 4096 == 0 and (b % 4096 == 0 or b == scan.size) for a, b in spans)


@contextlib.contextmanager
def loop_device(path: Path, offset: int, size: int, read_only: bool = True) -> Iterator[str]:
    """A loop device over [offset, offset + size) of path, detached afterwards."""
    if not os.access("/dev/loop-control", os.W_OK) or shutil.which("losetup") is None:
        pytest.skip("no usable /dev/loop-control or losetup (needs root)")
    proc = subprocess.run(
        [
            "losetup",
            "-f",
            "--show",
            *(["-r"] if read_only else []),
            "-o",
            str(offset),
            "--sizelimit",
            str(size),
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"losetup cannot attach a loop device: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def fsck(card: Path, part: PartInfo) -> tuple[bool, str]:
    """e2fsck -fn at the partition's offset, or fsck.vfat -n on a loop device over it."""
    if part.fs.type in EXT_TYPES:
        proc = run_tool("e2fsck", "-fn", f"{card}?offset={part.partition.start}", check=False)
    else:
        with loop_device(card, part.partition.start, part.partition.size) as dev:
            proc = run_tool("fsck.vfat", "-n", dev, check=False)
    return proc.returncode == 0, proc.stdout + proc.stderr


def assert_card_sound(image: Path, card: Path, only: int | None = None) -> None:
    """Every ext and FAT partition (or just partition `only`) was read by must_zero and checks
    clean on the card, and the bytes outside the partitions are the image's."""
    layout = open_layout(image)
    checked = []
    for part in layout.parts:
        if only in (None, part.number) and (part.fs.type in EXT_TYPES or part.fs.type == "vfat"):
            assert_parsed(image, part)
            ok, out = fsck(card, part)
            assert ok, f"{part.where} on the card: {out}"
            checked.append(part.fs.type)
    assert checked
    inside = span_math.merge([(p.partition.start, p.partition.end) for p in layout.parts])
    with open(image, "rb") as a, open(card, "rb") as b:
        for start, end in span_math.subtract([(0, image.stat().st_size)], inside):
            assert os.pread(a.fileno(), end - start, start) == os.pread(b.fileno(), end - start, start), (
                f"bytes {start}-{end} outside the partitions differ from the image"
            )


def assert_parsed(image: Path, part: PartInfo) -> None:
    """must_zero read this filesystem rather than falling back to zeroing its partition whole."""
    with ImageSource(image) as src:
        assert zeroing._partition_needs(src, part.partition) != [(part.partition.start, part.partition.end)]


def replace_fs(image: Path, part: PartInfo, fs_file: Path) -> None:
    """Put fs_file into the partition, sparse at 4 KiB: zero blocks become holes of the image."""
    fs_data = fs_file.read_bytes()
    assert len(fs_data) <= part.partition.size
    with open(image, "r+b") as out:
        punch(out.fileno(), part.partition.start, part.partition.size)
        for pos in range(0, len(fs_data), 4096):
            block = fs_data[pos : pos + 4096]
            if block.count(0) != len(block):
                os.pwrite(out.fileno(), block, part.partition.start + pos)
    fs_file.unlink()


def punch(fd: int, offset: int, length: int) -> None:
    run_tool(
        "fallocate",
        "--punch-hole",
        "--offset",
        str(offset),
        "--length",
        str(length),
        f"/proc/self/fd/{fd}",
        pass_fds=(fd,),
    )


def make_tree(root: Path) -> Path:
    """Files that give a filesystem multi-block and indexed directories, indirect or extent
    blocks, and a file whose blocks a test turns into holes."""
    (root / "many").mkdir(parents=True)
    for i in range(300):
        (root / "many" / f"a-rather-long-file-name-to-fill-directory-blocks-{i:04d}").write_bytes(b"x" * (i % 7))
    (root / "big.bin").write_bytes(os.urandom(1 << 20))
    (root / "hole.bin").write_bytes(os.urandom(256 << 10))
    (root / "link").symlink_to("big.bin")
    return root


def zero_file_blocks(image: Path, part: PartInfo, path: str) -> int:
    """Turn the 4 KiB-aligned parts of a file's blocks into holes of the image (allocated blocks
    that read as zeros, as a sparse copy of an image leaves them); returns the bytes punched."""
    stat = run_tool("debugfs", "-R", f"stat {path}", f"{image}?offset={part.partition.start}").stdout
    bs = open_layout(image).by_number(part.number).fs.block_size
    # "(0-11):1687-1698, (IND):1699, (12-255):1700-1943" or "(ETB0):1234, (0-255):1700-1955":
    # data runs only, never the blocks that map them
    runs = re.findall(r"\(\d+(?:-\d+)?\):(\d+)(?:-(\d+))?", re.split(r"\n(?:BLOCKS|EXTENTS):", stat, maxsplit=1)[1])
    spans = span_math.merge(
        [(part.partition.start + int(a) * bs, part.partition.start + (int(b or a) + 1) * bs) for a, b in runs]
    )
    aligned = [(-(-a // 4096) * 4096, b // 4096 * 4096) for a, b in spans]
    with open(image, "r+b") as f:
        for a, b in aligned:
            if a < b:
                punch(f.fileno(), a, b - a)
    return spans_bytes(s for s in aligned if s[0] < s[1])


def file_bytes(image: Path, part: PartInfo, path: str) -> bytes:
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{image}?offset={part.partition.start}"], capture_output=True, check=True
    ).stdout


# --- every layout -----------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_random_card_passes_fsck_in_every_layout(make_image, tmp_path, layout):
    image = make_image(layout)
    card = tmp_path / "card.img"
    scan, zero = flash_like_station(image, card)
    assert_card_sound(image, card)
    assert_in_holes(scan, zero)


def test_swap_needs_nothing_and_extended_boot_records_are_zeroed(make_image):
    image = make_image("extended")
    scan = bmap.scan(image)
    zero = list(must_zero(image, scan.ranges, scan.size).zeros)
    layout = open_layout(image)
    swap = layout.find("swap").partition
    assert span_math.intersect(zero, [(swap.start, swap.end)]) == []
    container = layout.image.extended[0]
    gaps = span_math.subtract(
        [(container.start, container.end)], span_math.merge([(p.start, p.end) for p in layout.image.partitions])
    )
    holes = span_math.subtract([(0, scan.size)], span_math.merge(mapped_spans(scan)))
    assert span_math.intersect(gaps, holes) and span_math.subtract(span_math.intersect(gaps, holes), zero) == []


def test_an_unknown_partition_is_zeroed_whole(make_image):
    image = make_image("sdimg")
    part = open_layout(image).require("rootfs-b").partition
    with open(image, "r+b") as f:
        os.pwrite(f.fileno(), b"\0\0", part.start + 1024 + 0x38)  # no ext magic: unknown contents
    scan = bmap.scan(image)
    zero = list(must_zero(image, scan.ranges, scan.size).zeros)
    holes = span_math.subtract([(part.start, part.end)], span_math.merge(mapped_spans(scan)))
    assert span_math.subtract(holes, zero) == []


# --- the resize inode: what bmaptool copy alone gets wrong --------------------------------------
def test_resize_inode_reserved_gdt_blocks_are_zeroed(make_image, tmp_path):
    image = make_image("sdimg", rootfs_mib=16)
    rootfs = open_layout(image).require("rootfs-a")
    header = run_tool("dumpe2fs", "-h", f"{image}?offset={rootfs.partition.start}").stdout
    assert "resize_inode" in header and "Reserved GDT blocks:      1" in header
    card = tmp_path / "card.img"
    write_card(image, card, [])  # bmaptool copy: mapped blocks only
    ok, out = fsck(card, rootfs)
    assert not ok and "inode 7" in out, "the negative control no longer fails: the test proves nothing"
    flash_like_station(image, card)
    assert_card_sound(image, card)


# --- the journal: a reused card's old transactions ------------------------------------------------
def test_a_reflashed_card_never_replays_the_old_cards_journal(make_image, tmp_path):
    """The card held an older flash of the same base that ran: its journal holds transactions 2, 3,
    ... from block 1, checksummed with the same UUID, the very sequence numbers the new life uses
    next. Power is cut during the new life's first commit, after the kernel set s_start 1 and
    s_sequence 2. The station zeroes only the journal blocks that start with a JBD2 header;
    recovery must find nothing. Without that zeroing (the control) the old unit's key is back."""
    image = make_image("sdimg")
    data = open_layout(image).require("data")
    old = tmp_path / "old.card"
    shutil.copyfile(image, old)
    with loop_device(old, data.partition.start, data.partition.size, read_only=False) as dev:
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        if run_tool("mount", "-t", "ext4", dev, str(mnt), check=False).returncode != 0:
            pytest.skip("cannot mount ext4 here: the old card's life needs a kernel journal")
        try:
            for i in range(4):  # one commit each: transactions 2, 3, 4, 5 in the old journal
                (mnt / "mender" / f"old-{i}").write_text(f"the previous life's file {i}\n")
                run_tool("sync", "-f", str(mnt))
            (mnt / "mender" / "mender-agent.pem").write_text("the previous unit's key\n")
        finally:
            run_tool("umount", str(mnt))
    scan = bmap.scan(image)
    needs = must_zero(image, scan.ranges, scan.size)
    jsb_at = journal_spans(image, data)[0][0]  # journal block 0, in logical order
    journal = span_math.merge(journal_spans(image, data))
    holes = span_math.subtract([(0, scan.size)], span_math.merge(mapped_spans(scan)))
    assert span_math.intersect(journal, list(needs.zeros)) == []  # no longer zeroed whole
    assert span_math.subtract(span_math.intersect(journal, holes), list(needs.journals)) == []
    for clear, survives in ((False, True), (True, False)):
        card = tmp_path / "card.img"
        shutil.copyfile(old, card)
        with open(image, "rb") as src, open(card, "r+b") as out:
            stale = stale_headers(out.fileno(), needs.journals)
            assert spans_bytes(stale) >= 5 * 2 * 4096  # a descriptor and a commit block per transaction
            write_over(src.fileno(), out.fileno(), scan, needs.zeros, needs.journals if clear else ())
            assert (stale_headers(out.fileno(), needs.journals) == []) == clear
            power_cut_in_first_commit(out.fileno(), jsb_at)
        where = f"{card}?offset={data.partition.start}"
        run_tool("debugfs", "-w", "-R", "feature needs_recovery", where)
        run_tool("e2fsck", "-fy", where, check=False)  # replays the journal as the kernel would
        listing = run_tool("debugfs", "-R", "ls /mender", where).stdout
        assert ("mender-agent.pem" in listing) == survives, listing  # the control proves the test
        assert ("old-0" in listing) == survives, listing


def journal_spans(image: Path, part: PartInfo) -> list[tuple[int, int]]:
    out = run_tool("debugfs", "-R", "blocks <8>", f"{image}?offset={part.partition.start}").stdout.split()
    bs = open_layout(image).by_number(part.number).fs.block_size  # part may predate a replace_fs
    return [(part.partition.start + int(b) * bs, part.partition.start + (int(b) + 1) * bs) for b in out]


def power_cut_in_first_commit(fd: int, jsb_at: int) -> None:
    """The journal superblock as the kernel writes it when it starts committing transaction 2 on
    a metadata_csum filesystem: s_sequence 2, s_start 1, 64bit and checksum v3, crc32c."""
    jsb = bytearray(os.pread(fd, 1024, jsb_at))
    struct.pack_into(">II", jsb, 0x18, 2, 1)
    struct.pack_into(">I", jsb, 0x28, 0x2 | 0x10)
    jsb[0x50] = 4
    struct.pack_into(">I", jsb, 0xFC, 0)
    struct.pack_into(">I", jsb, 0xFC, crc32c(bytes(jsb)))
    os.pwrite(fd, bytes(jsb), jsb_at)


def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """Castagnoli CRC without the final inversion, as jbd2 seeds and chains it."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc


# --- ext variants, put into the data partition -------------------------------------------------
EXT_VARIANTS = {
    "ext2": ["-t", "ext2"],
    "ext3": ["-t", "ext3"],
    "ext4-1k-blocks": ["-t", "ext4", "-b", "1024"],
    "ext4-uninit-bg": ["-t", "ext4", "-O", "^metadata_csum,uninit_bg"],
    "ext4-meta-bg": ["-t", "ext4", "-O", "meta_bg,^resize_inode", "-b", "1024", "-g", "256"],  # 8 meta groups
    "ext4-bigalloc": ["-t", "ext4", "-O", "bigalloc", "-C", "16384"],
    "ext4-sparse-super2-no-flex-bg": ["-t", "ext4", "-O", "sparse_super2,^flex_bg", "-b", "1024"],
    "ext4-small-groups": ["-t", "ext4", "-g", "1024"],
    "ext4-fast-commit": ["-t", "ext4", "-O", "fast_commit"],
}


@pytest.mark.parametrize("variant", list(EXT_VARIANTS))
def test_ext_variants_pass_fsck_and_keep_file_contents(make_image, tmp_path, variant):
    image = make_image("noboot", data_mib=32, align_mib=1, rootfs_mib=4)
    data = open_layout(image).require("data")
    fs_file = tmp_path / "data.fs"
    run_tool(
        "mke2fs",
        "-q",
        "-F",
        "-L",
        "data",
        "-U",
        "f5f5f5f5-0000-4000-8000-000000000005",
        *EXT_VARIANTS[variant],
        "-d",
        str(make_tree(tmp_path / "tree")),
        str(fs_file),
        f"{data.partition.size // 1024}k",
        env=FAKE_TIME,
    )
    replace_fs(image, data, fs_file)
    assert run_tool("e2fsck", "-fn", f"{image}?offset={data.partition.start}", check=False).returncode == 0
    assert zero_file_blocks(image, data, "/hole.bin") > 0
    assert_parsed(image, data)
    assert_journal_found(image, data, variant)
    card = tmp_path / "card.img"
    flash_like_station(image, card)
    assert_card_sound(image, card, only=data.number)
    for path in ("/hole.bin", "/big.bin"):
        assert file_bytes(card, data, path) == file_bytes(image, data, path)


def assert_journal_found(image: Path, part: PartInfo, variant: str) -> None:
    """The journal's holes are scanned, not zeroed (ext3, ext4), or zeroed whole (fast_commit:
    its blocks carry no JBD2 magic); ext2 has none."""
    scan = bmap.scan(image)
    needs = must_zero(image, scan.ranges, scan.size)
    inside = [(part.partition.start, part.partition.end)]
    journals = span_math.intersect(list(needs.journals), inside)
    if variant == "ext2":
        assert journals == []
        return
    holes = span_math.subtract([(0, scan.size)], span_math.merge(mapped_spans(scan)))
    journal = span_math.intersect(span_math.merge(journal_spans(image, part)), holes)
    assert journal, "the journal has no holes: the test proves nothing"
    if variant == "ext4-fast-commit":
        assert journals == [] and span_math.subtract(journal, list(needs.zeros)) == []
        return
    # scanned or zeroed, every hole of it; mostly scanned (with 1 KiB blocks the 4 KiB holding an
    # indirect block is zeroed); and nothing else scanned
    assert span_math.subtract(journal, span_math.merge(journals + list(needs.zeros))) == []
    assert spans_bytes(journals) >= 0.9 * spans_bytes(journal)
    assert span_math.subtract(journals, [(a // 4096 * 4096, -(-b // 4096) * 4096) for a, b in journal]) == []


# --- FAT variants, put into the boot partition ---------------------------------------------------
@pytest.mark.parametrize("fat", [12, 16, 32])
def test_fat_variants_pass_fsck_and_keep_file_contents(make_image, tmp_path, fat):
    image = make_image("sdimg", boot_mib=40) if fat == 32 else make_image("sdimg")  # FAT32: 65525+ clusters
    boot = open_layout(image).require("boot")
    fs_file = tmp_path / "boot.vfat"
    one_sector_clusters = ["-s", "1"] if fat == 16 else []  # FAT16 needs 4085+ clusters in 8 MiB
    run_tool(
        "mkfs.vfat",
        "--invariant",
        "-F",
        str(fat),
        *one_sector_clusters,
        "-n",
        "BOOT",
        "-C",
        str(fs_file),
        str(boot.partition.size // 1024),
        env=FAKE_TIME,
    )
    tree = tmp_path / "files"
    tree.mkdir()
    (tree / "zeros.bin").write_bytes(bytes(256 << 10))  # allocated clusters that are holes of the image
    (tree / "kernel.img").write_bytes(os.urandom(300 << 10))
    run_tool("mmd", "-i", str(fs_file), "::/EFI", "::/EFI/BOOT", env=FAKE_TIME)
    run_tool(
        "mcopy", "-i", str(fs_file), str(tree / "zeros.bin"), str(tree / "kernel.img"), "::/EFI/BOOT", env=FAKE_TIME
    )
    replace_fs(image, boot, fs_file)
    assert_parsed(image, boot)
    card = tmp_path / "card.img"
    flash_like_station(image, card)
    assert_card_sound(image, card, only=boot.number)
    with open(image, "rb") as f:
        assert f"FAT{fat}".encode() in os.pread(f.fileno(), 90, boot.partition.start)  # the type mkfs wrote
    for name in ("zeros.bin", "kernel.img"):
        got = [
            run_tool_bytes("mcopy", "-n", "-i", f"{img}@@{boot.partition.start}", f"::/EFI/BOOT/{name}", "-")
            for img in (image, card)
        ]
        assert got[0] == got[1] and len(got[0]) > 0


def run_tool_bytes(*args: str) -> bytes:
    return subprocess.run(list(args), capture_output=True, check=True, env=FAKE_TIME).stdout


# --- the cost ---------------------------------------------------------------------------------
def test_zeroing_costs_little_beyond_the_mapped_blocks(make_image, tmp_path):
    image = make_image("sdimg", rootfs_mib=64, fill_mib=24)
    scan = bmap.scan(image)
    needs = must_zero(image, scan.ranges, scan.size)
    zero = list(needs.zeros)
    layout = open_layout(image)
    mapped = spans_bytes(mapped_spans(scan))
    holes = span_math.subtract([(0, scan.size)], span_math.merge(mapped_spans(scan)))
    outside_holes = span_math.subtract(
        holes, span_math.merge([(p.partition.start, p.partition.end) for p in layout.parts])
    )
    assert span_math.subtract(outside_holes, zero) == []
    outside = spans_bytes(outside_holes)
    journals = span_math.merge([s for p in layout.parts if p.fs.type in EXT_TYPES for s in journal_spans(image, p)])
    assert span_math.intersect(journals, zero) == []
    assert span_math.subtract(span_math.intersect(journals, holes), list(needs.journals)) == []
    metadata = spans_bytes(zero) - outside
    sent = mapped + spans_bytes(zero)
    print(
        f"\nimage {scan.size} B, mapped {mapped} B, must_zero {spans_bytes(zero)} B (outside partitions "
        f"{outside}, other metadata {metadata}), journals to scan {spans_bytes(needs.journals)} B, "
        f"sent/mapped {sent / mapped:.3f}; zeroing every hole sends {scan.size} B"
    )
    assert metadata <= 0.01 * mapped + (256 << 10)
    assert sent < 0.6 * scan.size


# --- hostile filesystems ------------------------------------------------------------------------
EXT_FIELDS = [
    (0x04, 4),
    (0x14, 4),
    (0x18, 4),
    (0x1C, 4),
    (0x20, 4),
    (0x24, 4),
    (0x28, 4),
    (0x4C, 4),
    (0x58, 2),
    (0x5C, 4),
    (0x60, 4),
    (0x64, 4),
    (0xCE, 2),
    (0xFE, 2),
    (0x104, 4),
    (0x150, 4),
    (0x24C, 4),
    (0x250, 4),
]
FAT_FIELDS = [(11, 2), (13, 1), (14, 2), (16, 1), (17, 2), (19, 2), (22, 2), (32, 4), (36, 4)]


def field_patches(fields):
    interesting = st.sampled_from(
        [0, 1, 2, 7, 8, 31, 32, 255, 256, 1023, 1024, 4096, 32768, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]
    )
    return st.lists(st.tuples(st.sampled_from(fields), st.one_of(interesting, st.integers(0, 0xFFFFFFFF))), max_size=6)


def test_hostile_filesystems_stay_in_their_partition(make_image):
    image = make_image("sdimg")
    layout = open_layout(image)
    scan = bmap.scan(image)
    baseline = must_zero(image, scan.ranges, scan.size)
    assert baseline.journals
    data, boot = layout.require("data").partition, layout.require("boot").partition
    with open(image, "rb") as f:
        descriptor = os.pread(f.fileno(), 64, data.start + 4096)
        bitmap_at = 4096 * struct.unpack_from("<I", descriptor, 0)[0]  # group 0's block bitmap
        journal_inode_at = 4096 * struct.unpack_from("<I", descriptor, 8)[0] + 7 * 256  # inode 8
        regions = {"data": (data.start, journal_inode_at + 256), "boot": (boot.start, 16 * 1024)}
        saved = {k: os.pread(f.fileno(), n, at) for k, (at, n) in regions.items()}
    assert 0 < bitmap_at < journal_inode_at < 1 << 20
    offsets = st.one_of(
        st.integers(4096, 4096 + 63),
        st.integers(bitmap_at, bitmap_at + 4095),
        st.integers(journal_inode_at, journal_inode_at + 0x70),
        st.integers(0, journal_inode_at),
    )  # descriptor, bitmap, journal inode, anywhere
    mapped = span_math.merge(mapped_spans(scan))

    @settings(max_examples=250, deadline=None)
    @given(
        target=st.sampled_from(["data", "boot"]),
        ext=field_patches(EXT_FIELDS),
        fat=field_patches(FAT_FIELDS),
        raw=st.lists(st.tuples(offsets, st.binary(min_size=1, max_size=64)), max_size=4),
    )
    def check(target, ext, fat, raw):
        part = data if target == "data" else boot
        at, length = regions[target]
        region = bytearray(saved[target])
        base = 1024 if target == "data" else 0
        for (off, width), value in ext if target == "data" else fat:
            region[base + off : base + off + width] = (value % (1 << 8 * width)).to_bytes(width, "little")
        for off, blob in raw:
            off %= length
            region[off : off + len(blob)] = blob[: length - off]
        with open(image, "r+b") as f:
            os.pwrite(f.fileno(), bytes(region), at)
        try:
            zero = must_zero(image, scan.ranges, scan.size)
        except ImageFormatError:
            return
        finally:
            with open(image, "r+b") as f:
                os.pwrite(f.fileno(), saved[target], at)
        for got, was in ((list(zero.zeros), list(baseline.zeros)), (list(zero.journals), list(baseline.journals))):
            assert got == span_math.merge(got)
            assert all(0 <= a < b <= scan.size for a, b in got)
            assert span_math.intersect(got, mapped) == []
            others = span_math.subtract([(0, scan.size)], [(part.start, part.end)])
            assert span_math.intersect(got, others) == span_math.intersect(was, others)

    check()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.integers(0, 330))
def test_bit_runs_match_a_plain_scan(bitmap, nbits):
    bits = [bool(bitmap[i // 8] >> (i % 8) & 1) for i in range(min(nbits, 8 * len(bitmap)))]
    expected, start = [], None
    for i, bit in enumerate(bits + [False]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            expected.append((start, i))
            start = None
    assert list(zeroing._bit_runs(bitmap, nbits)) == expected


spans = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)).map(sorted).map(tuple), max_size=8)


@settings(max_examples=300, deadline=None)
@given(spans, spans)
def test_span_algebra_matches_sets(xs, ys):
    def as_set(spans):
        return {i for a, b in spans for i in range(a, b)}

    mx, my = span_math.merge(xs), span_math.merge(ys)
    assert as_set(mx) == as_set(xs) and all(b < c for (_, b), (c, _) in itertools.pairwise(mx))
    assert as_set(span_math.subtract(mx, my)) == as_set(xs) - as_set(ys)
    assert as_set(span_math.intersect(mx, my)) == as_set(xs) & as_set(ys)
    assert span_math.intersect(mx, my) == span_math.merge(span_math.intersect(mx, my))
