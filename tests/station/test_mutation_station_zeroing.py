"""must_zero against independent oracles, exactly: what dumpe2fs and debugfs say of a filesystem
made by mke2fs (in-use blocks, inode table tails, the journal's blocks), what mtools says of a FAT,
and hand-made superblocks and boot sectors at each bound the parser checks (one step inside is
read, one step outside zeroes the partition whole)."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest
from support.disktables import GptPart, gpt_chunks, mbr_chunks, swap_header, write_image
from support.tools import run_tool

from imagetools import bmap
from imagetools.station import spans as span_math
from imagetools.station import zeroing
from imagetools.station.zeroing import Needs, must_zero

pytestmark = pytest.mark.integration
FAKE_TIME = {**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000", "MTOOLS_SKIP_CHECK": "1"}
MiB = 1 << 20
ALIGN = 4096
PART = MiB  # every test partition starts here
TAIL = MiB  # and the disk goes on this far past it
Span = tuple[int, int]
LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"


# --- building disks ---------------------------------------------------------------------------
def disk(path: Path, fs: bytes | Path, part_size: int, ptype: int = 0x83) -> Path:
    """An MBR disk with one partition at 1 MiB holding `fs`: bytes (written sparse at 4 KiB), or
    a sparse file (its data extents copied)."""
    sectors = part_size // 512
    if sectors > 0xFFFFFFFF:  # past what an MBR entry holds: GPT, a Linux filesystem partition
        table = gpt_chunks(
            [GptPart(LINUX_FS, PART // 512, PART // 512 + sectors - 1)], (PART + part_size + TAIL) // 512
        )
    else:
        table = mbr_chunks([(ptype, PART // 512, sectors)])
    write_image(path, PART + part_size + TAIL, table)
    with open(path, "r+b") as out:
        if isinstance(fs, Path):
            _copy_data(fs, out.fileno())
            return path
        assert len(fs) <= part_size
        for pos in range(0, len(fs), ALIGN):
            block = fs[pos : pos + ALIGN]
            if block.count(0) != len(block):
                os.pwrite(out.fileno(), block, PART + pos)
    return path


def _copy_data(fs: Path, out: int) -> None:
    with open(fs, "rb") as f:
        end, pos = os.fstat(f.fileno()).st_size, 0
        while pos < end:
            try:
                pos = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                return
            stop = os.lseek(f.fileno(), pos, os.SEEK_HOLE)
            while pos < stop:
                pos += os.copy_file_range(f.fileno(), out, stop - pos, pos, PART + pos)


def poke(image: Path, at: int, data: bytes) -> None:
    """Write data at byte `at` of the partition."""
    with open(image, "r+b") as f:
        os.pwrite(f.fileno(), data, PART + at)


def peek(image: Path, at: int, length: int) -> bytes:
    with open(image, "rb") as f:
        return os.pread(f.fileno(), length, PART + at)


def mkfs_ext(path: Path, size_k: int, *options: str, files: Path | None = None) -> Path:
    run_tool(
        "mke2fs",
        "-q",
        "-F",
        "-U",
        "f5f5f5f5-0000-4000-8000-000000000005",
        *options,
        *(["-d", str(files)] if files else []),
        str(path),
        f"{size_k}k",
        env=FAKE_TIME,
    )
    return path


def tree(root: Path) -> Path:
    (root / "dir").mkdir(parents=True)
    for i in range(40):
        (root / "dir" / f"file-with-a-long-name-{i:03d}").write_bytes(bytes([i]) * (i * 300))
    (root / "big.bin").write_bytes(os.urandom(200 << 10))
    return root


def whole(size: int) -> Needs:
    """What must_zero says of a partition it does not read: the whole disk (no mapped ranges)."""
    return Needs(((0, size),), ())


def needs(image: Path, ranges=(), size: int | None = None) -> Needs:
    return must_zero(image, ranges, size or image.stat().st_size)


# --- the ext oracle: dumpe2fs and debugfs -----------------------------------------------------
def _runs(text: str) -> list[tuple[int, int]]:
    """'1-5, 9' as inclusive (first, last) pairs."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        a, _, b = item.partition("-")
        out.append((int(a), int(b or a)))
    return out


def ext_oracle(fs: Path, journal: list[Span] | None = None) -> tuple[list[Span], list[Span], int, int]:
    """(blocks that must read as zeros, the journal's data blocks, block size, block count) of
    the filesystem image `fs`, per libext2fs: its in-use blocks less the inode table tails e2fsck
    skips (group checksums) and the journal's data blocks (debugfs's, or `journal`), plus block 0."""
    dump = run_tool("dumpe2fs", str(fs)).stdout

    def header(name: str, default: str | None = None) -> str:
        found = re.search(rf"^{name}:\s+(.*)$", dump, re.M)
        assert found or default is not None, name
        return found.group(1).strip() if found else default

    bs, count, first = int(header("Block size")), int(header("Block count")), int(header("First block"))
    ratio = int(header("Cluster size", str(bs))) // bs
    features = header("Filesystem features").split()
    csum = "metadata_csum" in features or "uninit_bg" in features
    ipg, isize = int(header("Inodes per group")), int(header("Inode size"))
    itable = -(-ipg * isize // bs)
    free, tails = [], []
    for group in re.split(r"^Group \d+:", dump, flags=re.M)[1:]:
        free += [(a, min(b + ratio, count)) for a, b in _runs(re.search(r"Free blocks: (.*)", group).group(1))]
        table = int(re.search(r"Inode table at (\d+)-", group).group(1))
        if csum:
            found = re.search(r"(\d+) unused inode", group)  # not printed when 0
            unused = int(found.group(1)) if found else 0
            used = 0 if "INODE_UNINIT" in group.split("\n", 1)[0] else ipg - unused
            tails.append((table + -(-used * isize // bs), table + itable))
    if journal is not None:
        journal = span_math.merge(journal)
    elif "has_journal" not in features or "fast_commit" in features:
        journal = []
    else:
        stat = run_tool("debugfs", "-R", "stat <8>", str(fs)).stdout
        data = re.split(r"\n(?:BLOCKS|EXTENTS):", stat, maxsplit=1)[1]
        journal = span_math.merge(
            [(int(a), int(b or a) + 1) for a, b in re.findall(r"\(\d+(?:-\d+)?\):(\d+)(?:-(\d+))?", data)]
        )
        assert journal
    in_use = span_math.subtract([(first, count)], span_math.merge(free))
    need = span_math.subtract(span_math.subtract(in_use, span_math.merge(tails)), journal)
    return span_math.merge([*need, *_static(dump, tails), (0, 1)]), journal, bs, count


def _static(dump: str, tails: list[Span]) -> list[Span]:
    """What dumpe2fs places in each group: superblock, descriptors, reserved GDT blocks, bitmaps,
    the inode table (less its tail)."""
    spans: list[Span] = []
    for pattern in (
        r"superblock at (\d+)()",
        r"Group descriptors? at (\d+)(?:-(\d+))?",
        r"Reserved GDT blocks at (\d+)-(\d+)",
        r"Block bitmap at (\d+)()",
        r"Inode bitmap at (\d+)()",
        r"Inode table at (\d+)-(\d+)",
    ):
        spans += [(int(a), int(b or a) + 1) for a, b in re.findall(pattern, dump)]
    return span_math.subtract(span_math.merge(spans), span_math.merge(tails))


def round_out(spans, low: int, high: int) -> list[Span]:
    return span_math.merge([(max(a // ALIGN * ALIGN, low), min(-(-b // ALIGN) * ALIGN, high)) for a, b in spans])


def expected_ext(
    image: Path, fs: Path, part_size: int, ranges=(), journal: list[Span] | None = None, size: int | None = None
) -> Needs:
    """What must_zero must say of a disk() holding the ext filesystem `fs`, given mapped ranges
    (and an image size that may cut the partition short)."""
    need_blocks, journal_blocks, bs, _count = ext_oracle(fs, journal)
    size = size or image.stat().st_size
    end = min(PART + part_size, size)

    def to_bytes(blocks):
        return round_out([(PART + a * bs, PART + b * bs) for a, b in blocks], PART, end)

    need = span_math.merge([(0, PART), (end, size), *to_bytes(need_blocks)])
    journals = span_math.subtract(to_bytes(journal_blocks), need)
    holes = span_math.subtract(
        [(0, size)], span_math.merge([(r.first * ALIGN, min((r.last + 1) * ALIGN, size)) for r in ranges])
    )
    return Needs(tuple(span_math.intersect(need, holes)), tuple(span_math.intersect(journals, holes)))


EXT = {
    "ext4": (8192, ["-t", "ext4"]),
    "ext4-4k": (16384, ["-t", "ext4", "-b", "4096"]),
    "ext4-1k-small-groups": (8192, ["-t", "ext4", "-b", "1024", "-g", "256", "-N", "512"]),
    "ext4-128-byte-inodes": (8192, ["-t", "ext4", "-I", "128"]),
    "ext4-32-byte-descriptors": (8192, ["-t", "ext4", "-O", "^64bit", "-b", "1024", "-g", "1024"]),
    "ext4-uninit-bg": (8192, ["-t", "ext4", "-O", "^metadata_csum,uninit_bg", "-b", "1024", "-g", "512"]),
    "ext4-no-flex-bg": (8192, ["-t", "ext4", "-O", "^flex_bg", "-b", "1024", "-g", "512"]),
    "ext4-meta-bg": (8192, ["-t", "ext4", "-O", "meta_bg,^resize_inode", "-b", "1024", "-g", "256"]),
    "ext4-meta-bg-64bit": (16384, ["-t", "ext4", "-O", "meta_bg,^resize_inode,64bit", "-b", "1024", "-g", "256"]),
    "ext4-bigalloc": (16384, ["-t", "ext4", "-O", "bigalloc", "-C", "16384"]),
    "ext4-bigalloc-1k": (8192, ["-t", "ext4", "-O", "bigalloc", "-b", "1024", "-C", "4096"]),
    "ext4-sparse-super2": (8192, ["-t", "ext4", "-O", "sparse_super2,^flex_bg", "-b", "1024", "-g", "512"]),
    "ext4-no-sparse-super": (
        8192,
        ["-t", "ext4", "-O", "^sparse_super,^flex_bg,^resize_inode", "-b", "1024", "-g", "512"],
    ),
    "ext4-64k-blocks": (32768, ["-t", "ext4", "-b", "65536"]),
    "ext4-fast-commit": (8192, ["-t", "ext4", "-O", "fast_commit"]),
    "ext4-no-journal": (8192, ["-t", "ext4", "-O", "^has_journal"]),
    "ext3-1k": (8192, ["-t", "ext3", "-b", "1024"]),
    "ext3-1k-triple-indirect-journal": (
        163840,
        ["-t", "ext3", "-b", "1024", "-J", "size=66", "-E", "lazy_journal_init=1,lazy_itable_init=1"],
    ),
    "ext2": (8192, ["-t", "ext2", "-b", "2048"]),
}


@pytest.mark.parametrize("variant", list(EXT))
def test_ext_needs_match_dumpe2fs(tmp_path, variant):
    size_k, options = EXT[variant]
    fs = mkfs_ext(tmp_path / "fs", size_k, *options, files=tree(tmp_path / "tree"))
    part_size = size_k * 1024 + 3 * 4096 + 1024  # room past the filesystem's end: free
    image = disk(tmp_path / "disk.img", fs, part_size)
    assert needs(image) == expected_ext(image, fs, part_size)
    scan = bmap.scan(image)
    assert needs(image, scan.ranges) == expected_ext(image, fs, part_size, scan.ranges)
    cut = PART + part_size // 2 + 100  # a size that ends inside the partition: nothing past it
    assert needs(image, size=cut) == expected_ext(image, fs, part_size, size=cut)
    fs.unlink()


# --- the FAT oracle: mtools -------------------------------------------------------------------
def mtools(*args: str) -> str:
    return run_tool(*args, env=FAKE_TIME).stdout


def fat_oracle(fs: Path) -> list[Span]:
    """Byte spans of the FAT image `fs` that must read as zeros, per minfo and mshowfat: the
    sectors before the data area, and every cluster a file or directory holds."""
    info = mtools("minfo", "-i", str(fs), "::")

    def value(name: str, sep: str = ": ") -> int:
        return int(re.search(rf"^{name}{sep}(\d+)", info, re.M).group(1))

    bps, spc = value("sector size"), value("cluster size")
    big = "Big fatlen" in info  # FAT32
    fat_sectors = value("Big fatlen=", "") if big else value("sectors per fat")
    data = value("reserved \\(boot\\) sectors") + value("fats") * fat_sectors
    data += -(-value("max available root directory slots") * 32 // bps)
    names = [line for line in mtools("mdir", "-i", str(fs), "-/", "-b", "-a", "::").splitlines() if line]
    names = [n.rstrip("/") for n in names] + (["::/"] if big else [])
    clusters = []
    for line in mtools("mshowfat", "-i", str(fs), *names).splitlines():
        clusters += [(a, b + 1) for a, b in _runs(re.search(r"<(.*)>", line).group(1).replace(" ", ","))]
    start = data * bps
    return span_math.merge(
        [(0, start)] + [(start + (a - 2) * spc * bps, start + (b - 2) * spc * bps) for a, b in clusters]
    )


FAT = {  # mkfs.vfat options, size in KiB
    "fat12": (["-F", "12"], 4096),
    "fat12-1k-sectors": (["-F", "12", "-S", "1024", "-s", "2"], 4096),
    "fat16": (["-F", "16", "-s", "1"], 8192),
    "fat16-one-fat": (["-F", "16", "-f", "1", "-s", "2", "-r", "112"], 8192),
    "fat32": (["-F", "32", "-s", "1"], 40960),
}


@pytest.mark.parametrize("variant", list(FAT))
def test_fat_needs_match_mtools(tmp_path, variant):
    options, size_k = FAT[variant]
    fs = tmp_path / "fs"
    run_tool("mkfs.vfat", "--invariant", *options, "-C", str(fs), str(size_k), env=FAKE_TIME)
    files = tmp_path / "files"
    files.mkdir()
    for i in range(6):
        (files / f"f{i}").write_bytes(os.urandom(1000 + 7000 * i))
    mtools("mmd", "-i", str(fs), "::/A", "::/A/B")
    mtools("mcopy", "-i", str(fs), *(str(files / f"f{i}") for i in range(3)), "::/A/B")
    mtools("mcopy", "-i", str(fs), *(str(files / f"f{i}") for i in range(3, 6)), "::/")
    mtools("mdel", "-i", str(fs), "::/f4")  # a free run between used ones
    part_size = size_k * 1024 + 8192
    image = disk(tmp_path / "disk.img", fs, part_size, ptype=0x0C)
    size = image.stat().st_size
    inside = round_out([(PART + a, PART + b) for a, b in fat_oracle(fs)], PART, PART + part_size)
    need = span_math.merge([(0, PART), (PART + part_size, size), *inside])
    assert needs(image) == Needs(tuple(need), ())
    scan = bmap.scan(image)
    holes = span_math.subtract(
        [(0, size)], span_math.merge([(r.first * ALIGN, min((r.last + 1) * ALIGN, size)) for r in scan.ranges])
    )
    assert needs(image, scan.ranges) == Needs(tuple(span_math.intersect(need, holes)), ())


# --- partitions not read ----------------------------------------------------------------------
def test_swap_needs_nothing_and_anything_else_is_zeroed_whole(tmp_path):
    swap = disk(tmp_path / "swap.img", swap_header(), MiB, ptype=0x82)
    size = swap.stat().st_size
    assert needs(swap) == Needs(((0, PART), (PART + MiB, size)), ())
    unknown = disk(tmp_path / "unknown.img", os.urandom(8192), MiB)
    assert needs(unknown) == whole(unknown.stat().st_size)
    ranges = [bmap.BlockRange(1, 3, "")]  # bytes 4096-16383 mapped
    assert needs(swap, ranges) == Needs(((0, 4096), (16384, PART), (PART + MiB, size)), ())


# --- superblock bounds: one step inside is read, one step outside zeroes the partition whole ------
def patched_fs(tmp_path: Path, size_k: int, options: list[str], edits, copies=()) -> tuple[Path, int]:
    """A disk whose ext filesystem (no files) has superblock fields (offset, width, value) set
    and its bytes copied (to, from, length: offsets into it); returns it and its partition size."""
    part_size = size_k * 1024 + 3 * 4096 + 1024
    image = disk(tmp_path / "disk.img", mkfs_ext(tmp_path / "fs", size_k, *options), part_size)
    for off, width, value in edits:
        poke(image, 1024 + off, value.to_bytes(width, "little"))
    for to, start, length in copies:
        poke(image, to, peek(image, start, length))
    return image, part_size


def parsed(image: Path) -> bool:
    """must_zero read the filesystem (else its partition, the whole disk here, is zeroed)."""
    got = needs(image)
    assert got.zeros[0][0] == 0 and got.zeros[-1][1] == image.stat().st_size
    return got != whole(image.stat().st_size)


FS_4K = (8192, ["-t", "ext4", "-b", "4096"])  # 2048 blocks, one group of 32768, 2048 inodes of 256 bytes
FS_1K = (8192, ["-t", "ext4", "-b", "1024", "-g", "1024", "-N", "512"])  # 8 groups, 64 inodes each
FS_1K_ONE_GROUP = (8192, ["-t", "ext4", "-b", "1024", "-N", "128"])  # 8192 blocks, one group
FS_META_BG = (8192, ["-t", "ext4", "-O", "meta_bg,^resize_inode", "-b", "1024", "-g", "256"])  # 2 descriptor blocks
FS_BIGALLOC = (16384, ["-t", "ext4", "-O", "bigalloc", "-b", "4096", "-C", "16384"])  # 8192 clusters a group
BOUNDS = {
    "as made": (FS_4K, [], True),
    "blocks as many as the partition holds": (FS_4K, [(0x04, 4, 2051)], True),
    "blocks one more than the partition holds": (FS_4K, [(0x04, 4, 2052)], False),
    "no blocks": (FS_4K, [(0x04, 4, 0)], False),
    "first data block 1 with 4 KiB blocks": (FS_4K, [(0x14, 4, 1)], False),
    "first data block 0 with 1 KiB blocks": (FS_1K, [(0x14, 4, 0)], False),
    "block size 128 KiB": (FS_4K, [(0x18, 4, 7)], False),
    "blocks per group 8 * block size + 1": (FS_4K, [(0x20, 4, 32769)], False),
    "blocks per group 256": (FS_1K_ONE_GROUP, [(0x20, 4, 256)], False),  # 32 groups: descriptors of zeros
    "no inodes per group": (FS_4K, [(0x28, 4, 0)], False),
    "inodes per group 8 * block size": (FS_1K_ONE_GROUP, [(0x28, 4, 8192), (0x58, 2, 128)], True),
    "inodes per group 8 * block size + 1": (FS_1K_ONE_GROUP, [(0x28, 4, 8193), (0x58, 2, 128)], False),
    "inode table one block short of a group": (FS_1K, [(0x28, 4, 1023), (0x58, 2, 1024)], True),
    "inode table as long as a group": (FS_1K, [(0x28, 4, 1024), (0x58, 2, 1024)], False),
    "inode size 64": (FS_4K, [(0x58, 2, 64)], False),
    "inode size 384": (FS_4K, [(0x58, 2, 384)], False),
    "inode size 8192 with 4 KiB blocks": (FS_4K, [(0x58, 2, 8192)], False),
    "inode size the block size": (FS_1K_ONE_GROUP, [(0x58, 2, 1024)], True),
    "revision 0: inodes of 128 bytes": (FS_4K, [(0x4C, 4, 0), (0x58, 2, 384)], True),
    "descriptor size 32 with 64bit": (FS_4K, [(0xFE, 2, 32)], False),
    "descriptor size 96": (FS_4K, [(0xFE, 2, 96)], False),
    "descriptor size 1024": (FS_4K, [(0xFE, 2, 1024)], True),
    "descriptor size 2048": (FS_4K, [(0xFE, 2, 2048)], False),
    "reserved GDT blocks filling the group": (FS_1K, [(0xCE, 2, 1022)], True),
    "reserved GDT blocks one past the group": (FS_1K, [(0xCE, 2, 1023)], False),
    "first meta_bg at the last descriptor block": (FS_META_BG, [(0x104, 4, 2)], True),  # block 3: see below
    "first meta_bg past the descriptor blocks": (FS_META_BG, [(0x104, 4, 3)], False),
    "clusters as small as blocks": (FS_BIGALLOC, [(0x1C, 4, 2), (0x20, 4, 32768)], True),
    "clusters smaller than blocks": (FS_BIGALLOC, [(0x1C, 4, 1)], False),
    "clusters of two blocks": (FS_BIGALLOC, [(0x1C, 4, 3), (0x20, 4, 2 * 32768)], True),
    "clusters of two blocks, blocks per group wrong": (FS_BIGALLOC, [(0x1C, 4, 3), (0x20, 4, 2 * 32768 + 1)], False),
    "clusters of 2^16 blocks": (FS_BIGALLOC, [(0x1C, 4, 18), (0x24, 4, 8192), (0x20, 4, 8192 << 16)], True),
    "clusters of 2^17 blocks": (FS_BIGALLOC, [(0x1C, 4, 19), (0x24, 4, 8192), (0x20, 4, 8192 << 17)], False),
    "blocks per group not clusters per group times the ratio": (FS_BIGALLOC, [(0x20, 4, 131071)], False),
}


@pytest.mark.parametrize("case", list(BOUNDS))
def test_superblock_bounds(tmp_path, case):
    (size_k, options), edits, read = BOUNDS[case]
    # meta_bg: group 16's descriptor block (at block 4097) where a first_meta_bg of 2 reads it
    copies = [(3 * 1024, 4097 * 1024, 1024)] if (size_k, options) == FS_META_BG else []
    image, _ = patched_fs(tmp_path, size_k, options, edits, copies)
    assert parsed(image) == read


# --- FAT bounds: hand-made boot sectors and FATs ------------------------------------------------
def fat_disk(
    path: Path,
    *,
    bps: int = 512,
    spc: int = 1,
    reserved: int = 1,
    nfats: int = 2,
    root_entries: int = 0,
    clusters: int = 100,
    fat_sectors: int | None = None,
    fat32: bool = False,
    used: dict[int, int] | None = None,
    total: int | None = None,
    part_size: int | None = None,
) -> tuple[Path, list[Span]]:
    """A disk with a FAT made by hand (`used`: cluster -> FAT entry, written into the first FAT),
    and the byte spans of it that must read as zeros were it read as written here. Its type
    follows from its cluster count (as the FAT specification says), an entry of EOC is the
    type's end of chain."""
    bits = 32 if fat32 else 12 if clusters < 4085 else 16
    fat_sectors = fat_sectors if fat_sectors is not None else -(-(clusters + 2) * bits // (8 * bps))
    data = reserved + nfats * fat_sectors + -(-root_entries * 32 // bps)
    total = total if total is not None else data + clusters * spc
    boot = bytearray(512)
    boot[0:3] = b"\xeb\x3c\x90"
    small = total if total < 0x10000 and not fat32 else 0
    struct.pack_into(
        "<HBHBHHBH", boot, 11, bps, spc, reserved, nfats, root_entries, small, 0xF8, 0 if fat32 else fat_sectors
    )
    struct.pack_into("<I", boot, 32, 0 if small else total)
    if fat32:
        struct.pack_into("<I", boot, 36, fat_sectors)
        boot[82:90] = b"FAT32   "
    else:
        boot[54:62] = b"FAT16   " if bits == 16 else b"FAT12   "
    boot[510:512] = b"\x55\xaa"
    fat = bytearray(fat_sectors * bps)
    mask = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}[bits]
    entries = {0: 0xFF8, 1: 0xFFF, **{n: mask if v == EOC else v for n, v in (used or {}).items()}}
    for n, value in entries.items():
        if bits == 12:
            at = n * 3 // 2
            pair = int.from_bytes(fat[at : at + 2], "little")
            pair = (pair & 0x000F) | value << 4 if n & 1 else (pair & 0xF000) | value
            fat[at : at + 2] = pair.to_bytes(2, "little")
        else:
            fat[n * bits // 8 : (n + 1) * bits // 8] = value.to_bytes(bits // 8, "little")
    part_size = part_size or -(-total * bps // MiB) * MiB
    image = disk(path, bytes(boot).ljust(reserved * bps, b"\0") + bytes(fat), part_size, ptype=0x0C)
    start = PART + data * bps
    runs = []
    for n in sorted(c for c, v in entries.items() if c >= 2 and v & mask):
        if runs and runs[-1][1] == start + (n - 2) * spc * bps:
            runs[-1] = (runs[-1][0], runs[-1][1] + spc * bps)
        else:
            runs.append((start + (n - 2) * spc * bps, start + (n - 1) * spc * bps))
    return image, [(PART, start), *runs]


def fat_expected(image: Path, spans: list[Span], part_size: int | None = None) -> Needs:
    size = image.stat().st_size
    end = size - TAIL
    return Needs(tuple(span_math.merge([(0, PART), (end, size), *round_out(spans, PART, end)])), ())


EOC = -1
USED = {2: 3, 3: EOC, 7: 0xFF7, 50: EOC, 99: EOC, 4101: EOC}  # 4101: the last cluster of 4100


@pytest.mark.parametrize(
    "geometry",
    [
        {"bps": 512, "spc": 8},
        {"bps": 1024, "spc": 4, "reserved": 3},
        {"bps": 2048, "spc": 2, "nfats": 1},
        {"bps": 4096, "spc": 1, "nfats": 4, "root_entries": 512},
        {"bps": 512, "spc": 128},
        {"bps": 512, "spc": 64, "root_entries": 16},
    ],
)
def test_hand_made_fats_are_read_at_their_bounds(tmp_path, geometry):
    image, spans = fat_disk(tmp_path / "fat.img", used=USED, clusters=4100, **geometry)
    assert needs(image) == fat_expected(image, spans)


def test_fat12_and_fat32_entries(tmp_path):
    # 5 free before 6 (its low byte shares 5's bytes), 11 odd and 1, the last with a low nibble of 0
    used12 = {2: EOC, 3: 4, 4: EOC, 6: 0x123, 9: 0xFF7, 10: EOC, 11: 1, 101: 0x100}
    image, spans = fat_disk(tmp_path / "fat12.img", spc=8, reserved=6, used=used12)  # clusters on 4 KiB
    assert needs(image) == fat_expected(image, spans)
    used32 = {2: EOC, 5: 0xF0000000, 6: 0x10000001, 7: 0x10000, 101: 0x0FFFFFF8}  # 5: only reserved bits: free
    image, spans = fat_disk(tmp_path / "fat32.img", fat32=True, spc=8, reserved=32, used=used32)
    assert needs(image) == fat_expected(image, spans)


def test_fat_type_follows_the_cluster_count(tmp_path):
    """4084 clusters: FAT12 (entries of 12 bits); 4085: FAT16 whatever the label says."""
    for clusters in (4084, 4085):
        used = {2: EOC, clusters + 1: EOC, 100: 7}
        image, spans = fat_disk(tmp_path / f"fat{clusters}.img", clusters=clusters, used=used)
        assert needs(image) == fat_expected(image, spans)


FAT_REFUSED = {
    "sector size 256": {"bps": 256},
    "sector size 8192": {"bps": 8192},
    "no sectors per cluster": {"spc": 0},
    "3 sectors per cluster": {"spc": 3},
    "no reserved sectors": {"reserved": 0},
    "no FATs": {"nfats": 0},
    "5 FATs": {"nfats": 5},
    "a FAT of no sectors": {"fat_sectors": 0},
    "a FAT12 one entry too small": {"clusters": 340, "fat_sectors": 1},
    "a FAT16 one entry too small": {"clusters": 4095, "fat_sectors": 16},
    "no data area": {"total": 1 + 2 * 1},
    "one sector bigger than its partition": {"clusters": 2036, "part_size": MiB},  # 13 + 2036 sectors
}


@pytest.mark.parametrize("case", list(FAT_REFUSED))
def test_fat_boot_sectors_out_of_bounds_zero_the_partition(tmp_path, case):
    options = FAT_REFUSED[case]
    if options.get("fat_sectors") == 0:
        image, _ = fat_disk(tmp_path / "fat.img", fat_sectors=1, used=USED)
        with open(image, "r+b") as f:
            os.pwrite(f.fileno(), bytes(2), PART + 22)
    else:
        image, _ = fat_disk(tmp_path / "fat.img", used=USED, **options)
    assert needs(image) == whole(image.stat().st_size)


def test_fat_bounds_just_inside(tmp_path):
    """A FAT exactly big enough, data starting one sector before the end, the partition exactly
    the filesystem's size."""
    for clusters, fat_sectors in ((339, 1), (4094, 16)):  # FAT12: 341 * 12 bits, FAT16: 4096 * 16 bits
        image, spans = fat_disk(
            tmp_path / "a.img", clusters=clusters, fat_sectors=fat_sectors, used={clusters + 1: EOC}
        )
        assert needs(image) == fat_expected(image, spans)
    image, spans = fat_disk(tmp_path / "b.img", clusters=0, total=1 + 2 * 1 + 1, fat_sectors=1)
    assert needs(image) == fat_expected(image, spans)
    image, spans = fat_disk(tmp_path / "c.img", clusters=2048 - 3, fat_sectors=16, total=2048, part_size=MiB)
    assert needs(image) == fat_expected(image, spans)


# --- the journal inode: hand-made extent trees and block maps --------------------------------------
FS_J = (40960, ["-t", "ext4", "-b", "1024", "-N", "256"])  # 40960 blocks of 1 KiB; blocks from 30000 free
FS_J4K = (16384, ["-t", "ext4", "-b", "4096", "-N", "256"])  # 4096 blocks of 4 KiB, first data block 0
FS_J3 = (40960, ["-t", "ext3", "-b", "1024", "-N", "256"])  # a block-mapped journal


def node(depth: int, entries: list[bytes], most: int | None = None, count: int | None = None) -> bytes:
    """An extent tree node: header (magic, entries, max, depth) and its entries."""
    n = len(entries) if count is None else count
    return struct.pack("<HHHHI", 0xF30A, n, len(entries) if most is None else most, depth, 0) + b"".join(entries)


def leaf(logical: int, length: int, start: int) -> bytes:
    return struct.pack("<IHHI", logical, length, start >> 32, start & 0xFFFFFFFF)


def index(logical: int, child: int) -> bytes:
    return struct.pack("<IIHH", logical, child & 0xFFFFFFFF, child >> 32, 0)


def inode_at(fs: Path, number: int) -> int:
    """Byte offset of inode `number` (0: the last one) of the filesystem image fs."""
    dump = run_tool("dumpe2fs", str(fs)).stdout

    def header(name: str) -> int:
        return int(re.search(rf"^{name}:\s+(\d+)", dump, re.M).group(1))

    number = number or header("Inode count")
    group, index = divmod(number - 1, header("Inodes per group"))
    tables = [int(t) for t in re.findall(r"Inode table at (\d+)-", dump)]
    return tables[group] * header("Block size") + index * header("Inode size")


def journal_case(
    tmp_path: Path,
    fs_kind,
    i_block: bytes | None = None,
    blocks: int | None = None,
    nodes: dict[int, bytes] | None = None,
    edits=(),
    flags: int | None = None,
) -> tuple[Path, Path, int]:
    """A disk whose filesystem's journal inode has i_block (60 bytes), a size of `blocks` blocks
    and the given flags; `nodes` written at their block numbers (the partition goes on 13 KiB past
    the filesystem, so a node may lie just past its end); superblock `edits`."""
    size_k, options = fs_kind
    pristine = mkfs_ext(tmp_path / "pristine", size_k, *options)
    part_size = size_k * 1024 + 3 * 4096 + 1024
    image = disk(tmp_path / "disk.img", pristine, part_size)
    bs = 1024 if "1024" in options else 4096
    at = inode_at(pristine, 8)
    if i_block is not None:
        poke(image, at + 0x28, i_block.ljust(60, b"\0"))
    if blocks is not None:
        poke(image, at + 0x4, struct.pack("<I", (blocks * bs) & 0xFFFFFFFF))
        poke(image, at + 0x6C, struct.pack("<I", blocks * bs >> 32))
    if flags is not None:
        poke(image, at + 0x20, struct.pack("<I", flags))
    for off, width, value in edits:
        poke(image, 1024 + off, value.to_bytes(width, "little"))
    for block, data in (nodes or {}).items():
        poke(image, block * bs, data)
    return image, pristine, part_size


def journal_is(image: Path, pristine: Path, part_size: int, journal: list[Span]) -> None:
    """must_zero took `journal` (blocks; [] when it refused the inode) for the journal."""
    assert needs(image) == expected_ext(image, pristine, part_size, journal=journal)


ONE = leaf(0, 100, 30000)
EXTENT_TREES = {
    "one extent": (node(0, [ONE], 4), 100, {}, [(30000, 30100)]),
    "four extents, the root full": (
        node(0, [ONE, leaf(100, 10, 30200), leaf(110, 10, 30300), leaf(120, 10, 30400)], 4),
        130,
        {},
        [(30000, 30100), (30200, 30210), (30300, 30310), (30400, 30410)],
    ),
    "an extent of 32768 blocks": (node(0, [leaf(0, 32768, 5000)], 4), 32768, {}, [(5000, 37768)]),
    "an unwritten extent is no journal": (node(0, [ONE, leaf(100, 32768 + 50, 31000)], 4), 150, {}, [(30000, 30100)]),
    "more entries than the maximum": (node(0, [ONE, ONE], 1), 100, {}, []),
    "five entries do not fit the inode": (node(0, [ONE] * 5, 5), 100, {}, []),
    "no magic": (b"\0\0" + node(0, [ONE], 4)[2:], 100, {}, []),
    "an index to a leaf": (node(1, [index(0, 35000)], 4), 100, {35000: node(0, [ONE], 84)}, [(30000, 30100)]),
    "a child as deep as its parent": (node(1, [index(0, 35000)], 4), 100, {35000: node(1, [ONE], 84)}, []),
    "an index to the last block": (node(1, [index(0, 40959)], 4), 100, {40959: node(0, [ONE], 84)}, [(30000, 30100)]),
    "an index past the filesystem": (node(1, [index(0, 40960)], 4), 100, {40960: node(0, [ONE], 84)}, []),
    "an index to block 0, before the first data block": (node(1, [index(0, 0)], 4), 100, {0: node(0, [ONE])}, []),
    "an extent starting before the first data block": (node(0, [leaf(0, 10, 0)], 4), 10, {}, []),
    "an extent ending at the filesystem's end": (node(0, [leaf(0, 10, 40950)], 4), 10, {}, [(40950, 40960)]),
    "an extent ending past the filesystem's end": (node(0, [leaf(0, 11, 40950)], 4), 11, {}, []),
    "more blocks in extents than in its size": (node(0, [ONE], 4), 99, {}, []),
    "a size of no blocks": (node(0, [ONE], 4), 0, {}, []),
    "a size of every block": (node(0, [ONE], 4), 40960, {}, [(30000, 30100)]),
    "a size of more blocks than the filesystem": (node(0, [ONE], 4), 40961, {}, []),
    "a size past 4 GiB": (node(0, [ONE], 4), 100 + (1 << 22), {}, []),
}


def chain(depth: int) -> tuple[bytes, dict[int, bytes]]:
    """A root of `depth` over one index node per level (at 36000, 36001, ...), then ONE."""
    nodes = {
        36000 + i: node(depth - 1 - i, [index(0, 36001 + i)] if depth - 1 - i else [ONE], 84) for i in range(depth)
    }
    return node(depth, [index(0, 36000)], 4), nodes


def fan(m: int, n: int) -> tuple[bytes, dict[int, bytes]]:
    """1 + m + m * n extent blocks read: a root over A, A over m times B, B over n times L."""
    return node(3, [index(0, 36000)], 4), {
        36000: node(2, [index(0, 36001)] * m, 84),
        36001: node(1, [index(0, 36002)] * n, 84),
        36002: node(0, [ONE], 84),
    }


@pytest.mark.parametrize("case", list(EXTENT_TREES))
def test_journal_extent_trees(tmp_path, case):
    root, blocks, nodes, journal = EXTENT_TREES[case]
    journal_is(*journal_case(tmp_path, FS_J, root, blocks, nodes), journal)


@pytest.mark.parametrize(
    "tree, journal",
    [(chain(5), [(30000, 30100)]), (chain(6), []), (fan(31, 32), [(30000, 30100)]), (fan(32, 31), [])],
    ids=["depth 5", "depth 6", "1024 extent blocks", "1025 extent blocks"],
)
def test_journal_extent_tree_limits(tmp_path, tree, journal):
    root, nodes = tree
    journal_is(*journal_case(tmp_path, FS_J, root, 100, nodes), journal)


def test_journal_index_to_block_0_where_it_is_a_data_block(tmp_path):
    """4 KiB blocks: block 0 is the first data block, its first KiB free for a node."""
    journal_is(
        *journal_case(tmp_path, FS_J4K, node(1, [index(0, 0)], 4), 100, {0: node(0, [leaf(0, 100, 3000)])}),
        [(3000, 3100)],
    )


JOURNAL_INODES = {  # superblock edits: s_journal_inum (0xE0), s_feature_compat (0x5C)
    "journal inode 0": ([(0xE0, 4, 0)], False, []),
    "the last inode": ([(0xE0, 4, 0)], True, None),  # 0 here: the inode count
    "past the last inode": ([(0xE0, 4, 1)], True, []),  # 1 here: one more
    "no has_journal": ([(0x5C, 4, 0)], False, []),
}


@pytest.mark.parametrize("case", list(JOURNAL_INODES))
def test_journal_inode_numbers(tmp_path, case):
    """The last inode made a copy of inode 8."""
    edits, copy, journal = JOURNAL_INODES[case]
    size_k, options = FS_J
    pristine = mkfs_ext(tmp_path / "pristine", size_k, *options)
    ino8, last = inode_at(pristine, 8), inode_at(pristine, 0)
    if copy:
        count = int(
            re.search(r"^Inode count:\s+(\d+)", run_tool("dumpe2fs", "-h", str(pristine)).stdout, re.M).group(1)
        )
        edits = [(0xE0, 4, count + edits[0][2])]
    image, _ = patched_fs(tmp_path, size_k, options, edits, [(last, ino8, 256)] if copy else [])
    part_size = size_k * 1024 + 3 * 4096 + 1024
    journal_is(image, pristine, part_size, ext_oracle(pristine)[1] if journal is None else journal)


def pointers(*blocks: int) -> bytes:
    return struct.pack(f"<{len(blocks)}I", *blocks)


DIRECT = list(range(30000, 30012))
BLOCK_MAPS = {  # i_block (12 direct, IND, DIND, TIND), size in blocks, indirect blocks, the journal
    "direct blocks cut by the size": (pointers(*DIRECT, 0, 0, 0), 5, {}, [(30000, 30005)]),
    "null direct pointers skipped": (pointers(30000, 0, 30002, *[0] * 12), 2, {}, [(30000, 30001), (30002, 30003)]),
    "an indirect block": (
        pointers(*DIRECT, 31000, 0, 0),
        22,
        {31000: pointers(*range(32000, 32010))},
        [(30000, 30012), (32000, 32010)],
    ),
    "an indirect block cut by the size": (
        pointers(*DIRECT, 31000, 0, 0),
        15,
        {31000: pointers(*range(32000, 32010))},
        [(30000, 30012), (32000, 32003)],
    ),
    "indirect, then double indirect in order": (
        pointers(*DIRECT, 31000, 31001, 0),
        12 + 10 + 15,
        {
            31000: pointers(*range(32000, 32010)),
            31001: pointers(31002, 0, 31003),
            31002: pointers(*range(33000, 33010)),
            31003: pointers(*range(34000, 34010)),
        },
        [(30000, 30012), (32000, 32010), (33000, 33010), (34000, 34005)],
    ),
    "an indirect block at the last block": (
        pointers(*DIRECT, 40959, 0, 0),
        13,
        {40959: pointers(32000)},
        [(30000, 30012), (32000, 32001)],
    ),
    "an indirect block past the filesystem": (pointers(*DIRECT, 40960, 0, 0), 13, {40960: pointers(32000)}, []),
    # 12 + 256 blocks: 14 indirect blocks may be read; a double indirect over 13 or 14 empty ones
    "as many indirect blocks as such a file has": (
        pointers(*DIRECT, 0, 31001, 0),
        268,
        {31001: pointers(*[31002] * 13)},
        [(30000, 30012)],
    ),
    "one indirect block more": (pointers(*DIRECT, 0, 31001, 0), 268, {31001: pointers(*[31002] * 14)}, []),
}


@pytest.mark.parametrize("case", list(BLOCK_MAPS))
def test_journal_block_maps(tmp_path, case):
    i_block, blocks, nodes, journal = BLOCK_MAPS[case]
    journal_is(*journal_case(tmp_path, FS_J3, i_block, blocks, nodes, flags=0), journal)


def test_an_extent_flag_on_a_block_map_is_read_as_a_tree(tmp_path):
    journal_is(*journal_case(tmp_path, FS_J3, pointers(*DIRECT, 0, 0, 0), 12, flags=0x80000), [])
    journal_is(*journal_case(tmp_path, FS_J, node(0, [ONE], 4), 100, flags=0), [])  # a header as pointers


def test_a_size_ending_at_the_partition_leaves_it_out(tmp_path):
    image = disk(tmp_path / "unknown.img", os.urandom(8192), MiB)
    assert needs(image, size=PART) == Needs(((0, PART),), ())
    assert needs(image, size=PART + 1) == Needs(((0, PART + 1),), ())


def test_a_fat_boot_sector_alone_at_the_end_of_the_image(tmp_path):
    """A partition of one sector, the image's last: its boot sector is read, nothing past it."""
    image, _ = fat_disk(tmp_path / "fat.img", used=USED)
    boot = peek(image, 0, 512)
    tiny = write_image(tmp_path / "tiny.img", PART + 512, {**mbr_chunks([(0x0C, PART // 512, 1)]), PART: boot})
    assert needs(tiny) == Needs(((0, PART + 512),), ())


@pytest.mark.parametrize("runs, read", [(zeroing.MAX_SPANS - 1, True), (zeroing.MAX_SPANS, False)])
def test_fat_allocated_runs_up_to_the_bound(tmp_path, runs, read):
    """Every other cluster used: with the reserved area, MAX_SPANS spans at most. The entry past
    the last cluster (free) is not a cluster."""
    clusters = 2 * runs  # 2, 4, ... 2 * runs used; the last, 2 * runs + 1, free
    used = {n: EOC for n in range(2, clusters + 2, 2)}
    image, spans = fat_disk(tmp_path / "fat.img", fat32=True, reserved=32, clusters=clusters, used=used)
    fat_end = 32 * 512 + (clusters + 2) * 4
    poke(image, fat_end, struct.pack("<I", 7))  # slack of the first FAT, read as the entry of cluster clusters + 2
    assert needs(image) == (fat_expected(image, spans) if read else whole(image.stat().st_size))


@pytest.mark.parametrize("groups, read", [(64, True), (65, False)])
def test_ext_allocated_runs_up_to_the_bound(tmp_path, groups, read):
    """ext2, 1 KiB blocks: every other block of each group's bitmap in use gives 4096 runs a group,
    MAX_SPANS (2**18) in 64 groups."""
    size_k = groups * 8192 + 1
    image, _ = patched_fs(tmp_path, size_k, ["-t", "ext2", "-b", "1024", "-N", str(16 * groups)], [])
    bitmaps = [int(b) for b in re.findall(r"Block bitmap at (\d+)", run_tool("dumpe2fs", str(tmp_path / "fs")).stdout)]
    for block in bitmaps:
        poke(image, block * 1024, b"\x55" * 1024)
    assert parsed(image) == read


# --- one step off: descriptors, group counts, journal inodes, block maps, FAT chunks -------------
DESC_4K = 4096  # FS_4K: group 0's descriptor (64 bytes) fills block 1 with zeros after it
DESCRIPTOR_BOUNDS = {  # descriptor fields (offset, width, value) of group 0
    "block bitmap at block 0, the first data block": ([(0x00, 4, 0)], True),
    "block bitmap at the filesystem's end": ([(0x00, 4, 2048)], False),
    "inode bitmap at block 0": ([(0x04, 4, 0)], True),
    "inode bitmap at the filesystem's end": ([(0x04, 4, 2048)], False),
    "inode table at block 0": ([(0x08, 4, 0)], True),
    "inode table ending at the filesystem's end": ([(0x08, 4, 2048 - 128)], True),
    "inode table ending one block past it": ([(0x08, 4, 2048 - 127)], False),
    "block bitmap past 2^32 (its high half 1)": ([(0x20, 4, 1)], False),
    "inode bitmap past 2^32": ([(0x24, 4, 1)], False),
    "inode table past 2^32": ([(0x28, 4, 1)], False),
}


@pytest.mark.parametrize("case", list(DESCRIPTOR_BOUNDS))
def test_descriptor_bounds(tmp_path, case):
    edits, read = DESCRIPTOR_BOUNDS[case]
    image, _ = patched_fs(tmp_path, *FS_4K, [])
    for off, width, value in edits:
        poke(image, DESC_4K + off, value.to_bytes(width, "little"))
    assert parsed(image) == read


def test_unused_inode_counts_of_the_inodes_per_group_or_more_leave_the_table_alone(tmp_path):
    """bg_itable_unused is lo | hi << 16 (64-byte descriptors), unsigned: 2048 (the inodes per
    group), 65536, 2^31 and 65535 all leave the whole inode table (blocks 34-161) to the tail;
    as made (2037 unused) its first block is zeroed."""
    image, _ = patched_fs(tmp_path, *FS_4K, [])
    as_made = needs(image)
    table = (PART + 34 * 4096, PART + 35 * 4096)
    assert span_math.intersect(list(as_made.zeros), [table]) == [table]
    for lo, hi in ((2048, 0), (0, 1), (0, 0x8000), (0xFFFF, 0)):
        poke(image, DESC_4K + 0x1C, struct.pack("<H", lo))
        poke(image, DESC_4K + 0x32, struct.pack("<H", hi))
        assert needs(image) == Needs(tuple(span_math.subtract(list(as_made.zeros), [table])), as_made.journals)


def test_a_block_uninit_groups_bitmap_is_not_read(tmp_path):
    """FS_1K: the bitmap of a BLOCK_UNINIT group filled with ones changes nothing."""
    size_k, options = FS_1K
    fs = mkfs_ext(tmp_path / "fs", size_k, *options)
    part_size = size_k * 1024 + 3 * 4096 + 1024
    image = disk(tmp_path / "disk.img", fs, part_size)
    groups = re.split(r"^Group \d+:", run_tool("dumpe2fs", str(fs)).stdout, flags=re.M)[1:]
    uninit = [int(re.search(r"Block bitmap at (\d+)", g).group(1)) for g in groups if "BLOCK_UNINIT" in g]
    assert len(uninit) >= 3
    for block in uninit:
        poke(image, block * 1024, b"\xff" * 1024)
    assert needs(image) == expected_ext(image, fs, part_size)


EXT_MORE = {  # checked against dumpe2fs with a file removed (a free run among used ones)
    "ext4-meta-bg-sparse-super2": (
        8192,
        ["-t", "ext4", "-O", "meta_bg,^resize_inode,sparse_super2", "-b", "1024", "-g", "256"],
    ),
    "ext4-meta-bg-no-sparse-super": (
        8192,
        ["-t", "ext4", "-O", "meta_bg,^resize_inode,^sparse_super", "-b", "1024", "-g", "256"],
    ),
    "ext4-partial-descriptor-block": (7000, ["-t", "ext4", "-b", "1024", "-g", "256"]),  # 28 groups of 16 a block
    "ext4-1k-eight-groups": (8192, ["-t", "ext4", "-b", "1024", "-g", "1024", "-N", "512"]),
    "ext4-bigalloc": (16384, ["-t", "ext4", "-O", "bigalloc", "-C", "16384"]),
}


@pytest.mark.parametrize("variant", list(EXT_MORE))
def test_more_layouts_with_a_gap_match_dumpe2fs(tmp_path, variant):
    size_k, options = EXT_MORE[variant]
    fs = mkfs_ext(tmp_path / "fs", size_k, *options, files=tree(tmp_path / "tree"))
    run_tool("debugfs", "-w", "-R", "rm /dir/file-with-a-long-name-030", str(fs))
    part_size = size_k * 1024 + 3 * 4096 + 1024
    image = disk(tmp_path / "disk.img", fs, part_size)
    assert needs(image) == expected_ext(image, fs, part_size)


def test_descriptor_blocks_at_the_filesystems_end_are_refused(tmp_path):
    """FS_1K cut to 2 blocks of 4 inodes, its one descriptor (at block 2) pointing at block 1:
    the descriptor block lies past the filesystem."""
    image, _ = patched_fs(tmp_path, *FS_1K, [(0x04, 4, 2), (0x28, 4, 4)])
    poke(image, 2048, struct.pack("<III", 1, 1, 1))
    assert not parsed(image)


def test_descriptor_blocks_before_the_first_meta_bg_follow_the_superblock(tmp_path):
    """FS_META_BG with s_first_meta_bg 1: descriptor block 0 at block 2, block 1 in group 16
    (block 4097); block 3 (group 0's block bitmap) zeroed is no descriptor block."""
    image, _ = patched_fs(tmp_path, *FS_META_BG, [(0x104, 4, 1)])
    poke(image, 3 * 1024, bytes(1024))
    assert parsed(image)


JOURNAL_EXTENTS_MORE = {
    "a journal of one block": (node(0, [leaf(0, 1, 30000)], 4), 1, {}, [(30000, 30001)]),
    "an extent from the first data block": (node(0, [leaf(0, 20000, 1)], 4), 20000, {}, [(1, 20001)]),
    "an unwritten extent of one block": (node(0, [ONE, leaf(100, 32769, 31000)], 4), 101, {}, [(30000, 30100)]),
    "an extent past 2^32": (node(0, [leaf(0, 100, (1 << 32) + 30000)], 4), 100, {}, []),
    "an index past 2^32": (node(1, [index(0, (1 << 32) + 35000)], 4), 100, {35000: node(0, [ONE], 84)}, []),
    "an index as deep as its parent over a leaf": (
        node(1, [index(0, 35000)], 4),
        100,
        {35000: node(1, [index(0, 35001)], 84), 35001: node(0, [ONE], 84)},
        [],
    ),
}


@pytest.mark.parametrize("case", list(JOURNAL_EXTENTS_MORE))
def test_journal_extent_trees_one_step_off(tmp_path, case):
    root, blocks, nodes, journal = JOURNAL_EXTENTS_MORE[case]
    journal_is(*journal_case(tmp_path, FS_J, root, blocks, nodes), journal)


BLOCK_MAPS_MORE = {
    "an indirect pointer with its top bit set": (pointers(*DIRECT, 0x80000000, 0, 0), 13, {}, []),
    "the size reached before a bad double indirect pointer": (
        pointers(*DIRECT, 31000, 40960, 0),
        13,
        {31000: pointers(32000)},
        [(30000, 30012), (32000, 32001)],
    ),
    # 12 + 256 + 100 blocks: still 14 indirect blocks (8 + 3 * (368 // 256 + 1)), not 15
    "one indirect block more than a file of 368 blocks has": (
        pointers(*DIRECT, 0, 31001, 0),
        368,
        {31001: pointers(*[31002] * 14)},
        [],
    ),
}


@pytest.mark.parametrize("case", list(BLOCK_MAPS_MORE))
def test_journal_block_maps_one_step_off(tmp_path, case):
    i_block, blocks, nodes, journal = BLOCK_MAPS_MORE[case]
    journal_is(*journal_case(tmp_path, FS_J3, i_block, blocks, nodes, flags=0), journal)


def test_journal_inode_1_is_read_and_inode_0_is_none(tmp_path):
    """Inode 1 or the last inode a copy of inode 8: s_journal_inum 1 reads it, 0 does not."""
    size_k, options = FS_J
    pristine = mkfs_ext(tmp_path / "pristine", size_k, *options)
    ino8, first, last = inode_at(pristine, 8), inode_at(pristine, 1), inode_at(pristine, 0)
    part_size = size_k * 1024 + 3 * 4096 + 1024
    image, _ = patched_fs(tmp_path, size_k, options, [(0xE0, 4, 1)], [(first, ino8, 256)])
    journal_is(image, pristine, part_size, ext_oracle(pristine)[1])
    image, _ = patched_fs(tmp_path, size_k, options, [(0xE0, 4, 0)], [(last, ino8, 256)])
    journal_is(image, pristine, part_size, [])


def test_a_journal_inode_ending_the_image(tmp_path):
    """128-byte inodes, group 0's inode table moved to the last 64 blocks of a filesystem that
    ends its partition and the image, the journal inode its last inode: read, to the last byte."""
    fs = mkfs_ext(tmp_path / "fs", 8192, "-t", "ext4", "-b", "4096", "-I", "128")
    journal = ext_oracle(fs)[1]
    image = write_image(tmp_path / "disk.img", PART + 8192 * 1024, mbr_chunks([(0x83, PART // 512, 8192 * 2)]))
    with open(image, "r+b") as out:
        _copy_data(fs, out.fileno())
    inode = peek(image, inode_at(fs, 8), 128)
    poke(image, DESC_4K + 0x08, struct.pack("<I", 2048 - 64))
    poke(image, 2048 * 4096 - 128, inode)
    poke(image, 1024 + 0xE0, struct.pack("<I", 2048))
    got = needs(image).journals
    assert got and span_math.subtract(list(got), [(PART + a * 4096, PART + b * 4096) for a, b in journal]) == []


def test_journal_sizes_of_2_and_4_gib(tmp_path):
    """64 KiB blocks, 131056 of them: a journal inode of 2^31 bytes (the top bit of i_size_lo)
    or 2^32 (i_size_high 1) is no bigger than the filesystem: read."""
    size_k = 131056 * 64
    fs = mkfs_ext(tmp_path / "fs", size_k, "-t", "ext4", "-b", "65536", "-N", "256", "-E", "lazy_journal_init=1")
    part_size = size_k * 1024 + 3 * 4096 + 1024
    image = disk(tmp_path / "disk.img", fs, part_size)
    at = inode_at(fs, 8)
    for lo, hi in ((1 << 31, 0), (0, 1)):
        poke(image, at + 0x4, struct.pack("<I", lo))
        poke(image, at + 0x6C, struct.pack("<I", hi))
        assert needs(image) == expected_ext(image, fs, part_size)


def test_a_fat32_of_more_than_one_chunk(tmp_path):
    """300002 entries: a chunk of 262144, then one of the 37858 left (the slack after them,
    entry 300002, is no cluster)."""
    clusters = 300000
    used = {2: EOC, 262150: EOC, clusters + 1: EOC}
    image, spans = fat_disk(tmp_path / "fat.img", fat32=True, reserved=32, clusters=clusters, used=used)
    poke(image, 32 * 512 + (clusters + 2) * 4, struct.pack("<I", 7))
    assert needs(image) == fat_expected(image, spans)


NO_CSUM = "^metadata_csum,^uninit_bg"
META_4K = ["-t", "ext4", "-b", "4096", "-g", "256", "-O", f"meta_bg,^resize_inode,{NO_CSUM}"]
STATIC_ONLY = {  # no group checksums: every group's bitmap is read, and zeroed here; superblock edits
    "4k-meta-bg-128-groups": (131072, META_4K),  # descriptor blocks in groups 0, 1, 63 and 64, 65, 127
    "4k-meta-bg-first-meta-bg-1": (131072, META_4K, [(0x104, 4, 1)]),  # then block 1 and groups 64, 65, 127
    "4k-resize-inode": (65536, ["-t", "ext4", "-b", "4096", "-g", "1024", "-O", NO_CSUM]),
    "4k-no-sparse-super": (
        65536,
        ["-t", "ext4", "-b", "4096", "-g", "1024", "-O", f"^sparse_super,^resize_inode,{NO_CSUM}"],
    ),
    "4k-sparse-super2": (65536, ["-t", "ext4", "-b", "4096", "-g", "1024", "-O", f"sparse_super2,{NO_CSUM}"]),
    "1k-bigalloc": (16384, ["-t", "ext4", "-b", "1024", "-O", f"bigalloc,{NO_CSUM}", "-C", "4096"]),
    "1k-bigalloc-meta-bg": (
        16384,
        ["-t", "ext4", "-b", "1024", "-O", f"bigalloc,meta_bg,^resize_inode,{NO_CSUM}", "-C", "4096"],
    ),
}


@pytest.mark.parametrize("variant", list(STATIC_ONLY))
def test_static_metadata_with_every_block_bitmap_empty(tmp_path, variant):
    """Every block bitmap zeroed: what is left is each group's superblock backup, descriptors,
    reserved GDT blocks, bitmaps and inode table, block by block as dumpe2fs lists them (its
    free blocks are not asked: libext2fs misreads packed bitmaps of zeros)."""
    size_k, options, *edits = STATIC_ONLY[variant]
    fs = mkfs_ext(tmp_path / "fs", size_k, *options)
    with open(fs, "r+b") as f:
        for off, width, value in edits[0] if edits else ():
            os.pwrite(f.fileno(), value.to_bytes(width, "little"), 1024 + off)
    dump = run_tool("dumpe2fs", str(fs)).stdout
    bs = int(re.search(r"^Block size:\s+(\d+)", dump, re.M).group(1))
    with open(fs, "r+b") as f:
        for block in re.findall(r"Block bitmap at (\d+)", dump):
            os.pwrite(f.fileno(), bytes(bs), int(block) * bs)
    part_size = size_k * 1024 + 3 * 4096 + 1024
    image = disk(tmp_path / "disk.img", fs, part_size)
    size = image.stat().st_size

    def to_bytes(blocks):
        return round_out([(PART + a * bs, PART + b * bs) for a, b in blocks], PART, PART + part_size)

    need = span_math.merge([(0, PART), (PART + part_size, size), *to_bytes([(0, 1), *_static(dump, [])])])
    journal = span_math.subtract(to_bytes(ext_oracle(fs)[1]), need)
    assert needs(image) == Needs(tuple(need), tuple(journal))


def test_group_0_of_a_1k_bigalloc_filesystem_starts_at_block_1(tmp_path):
    """1 KiB blocks, clusters of 4: group 0 starts at block 0 but its superblock is block 1, its
    descriptor block 2, then R reserved GDT blocks (s_reserved_gdt_blocks set here); bitmaps and
    inode table moved far off (the block bitmap to the last block of a 4 KiB page), every bitmap
    empty: blocks 0 to 2 + R, exactly (R = 2 ends them on the first block of a page, R = 1 one
    block before one)."""
    for reserved in (1, 2):
        fs = mkfs_ext(
            tmp_path / "fs",
            16384,
            "-t",
            "ext4",
            "-b",
            "1024",
            "-C",
            "4096",
            "-O",
            f"bigalloc,^resize_inode,^has_journal,{NO_CSUM}",
        )
        part_size = 16384 * 1024 + 3 * 4096 + 1024
        image = disk(tmp_path / "disk.img", fs, part_size)
        poke(image, 1024 + 0xCE, struct.pack("<H", reserved))
        poke(image, 2048, struct.pack("<III", 11003, 11500, 12000))
        ipg, isize = (
            int(re.search(rf"^{name}:\s+(\d+)", run_tool("dumpe2fs", "-h", str(fs)).stdout, re.M).group(1))
            for name in ("Inodes per group", "Inode size")
        )
        blocks = [(0, 3 + reserved), (11003, 11004), (11500, 11501), (12000, 12000 + -(-ipg * isize // 1024))]
        size = image.stat().st_size
        spans = round_out([(PART + a * 1024, PART + b * 1024) for a, b in blocks], PART, PART + part_size)
        assert needs(image) == Needs(tuple(span_math.merge([(0, PART), *spans, (PART + part_size, size)])), ())


def test_unused_inode_counts_above_65535(tmp_path):
    """64 KiB blocks allow 524288 inodes a group: with 100000 (superblock edited), 65536 unused
    (bg_itable_unused_hi 1) leave 34464 inodes, 135 table blocks, as 65535 do."""
    image, _ = patched_fs(tmp_path, 65536, ["-t", "ext4", "-b", "65536", "-N", "256"], [(0x28, 4, 100000)])
    got = []
    for lo, hi in ((0, 1), (0xFFFF, 0), (0, 0)):
        poke(image, 65536 + 0x1C, struct.pack("<H", lo))
        poke(image, 65536 + 0x32, struct.pack("<H", hi))
        got.append(needs(image))
    assert got[0] == got[1] != got[2]


FS_64K = (65536, ["-t", "ext4", "-b", "65536", "-N", "256"])  # 1024 blocks, one group
SUPERBLOCK_FIELDS = {  # unsigned fields, and fields a feature turns on
    "first meta_bg 2^31": (FS_META_BG, [(0x104, 4, 1 << 31)], False),
    "one block of 1 KiB, the first data block: no group": (FS_1K, [(0x04, 4, 1)], False),
    "reserved GDT blocks 2^15": (FS_4K, [(0xCE, 2, 1 << 15)], False),
    "inode size 2^15 with 64 KiB blocks": (FS_64K, [(0x58, 2, 1 << 15)], True),
    "a cluster size without bigalloc is not read": (FS_4K, [(0x1C, 4, 3)], True),
    "the block count's high half with 64bit": (FS_4K, [(0x150, 4, 1)], False),
    "the block count's high half without 64bit is not read": (
        (8192, ["-t", "ext4", "-b", "4096", "-O", "^64bit"]),
        [(0x150, 4, 1)],
        True,
    ),
}


@pytest.mark.parametrize("case", list(SUPERBLOCK_FIELDS))
def test_superblock_fields(tmp_path, case):
    (size_k, options), edits, read = SUPERBLOCK_FIELDS[case]
    image, _ = patched_fs(tmp_path, size_k, options, edits)
    assert parsed(image) == read


def test_a_revision_of_2_to_the_31_is_dynamic(tmp_path):
    """s_rev_level 2^31 (unsigned, at least 1): the inode size is read, 256 here, as made."""
    image, part_size = patched_fs(tmp_path, *FS_4K, [(0x4C, 4, 1 << 31)])
    assert needs(image) == expected_ext(image, tmp_path / "fs", part_size)


def test_an_ext_superblock_in_a_partition_of_2048_bytes_ending_the_image(tmp_path):
    """The superblock is read to the image's last byte; two 1 KiB blocks hold no descriptors."""
    fs = mkfs_ext(tmp_path / "fs", 8192, *FS_1K[1])
    head = fs.read_bytes()[:2048]
    image = write_image(tmp_path / "disk.img", PART + 2048, {**mbr_chunks([(0x83, PART // 512, 4)]), PART: head})
    assert needs(image) == whole(PART + 2048)


def test_a_partition_not_on_a_4k_boundary(tmp_path):
    """1 KiB blocks in a partition at sector 63: block 0 (bytes 32256-33279) straddles a 4 KiB
    boundary, and its first half is zeroed as block 0, not as part of block 1's page."""
    size_k, options = FS_1K
    fs = mkfs_ext(tmp_path / "fs", size_k, *options, files=tree(tmp_path / "tree"))
    start, part_size = 63 * 512, size_k * 1024
    image = write_image(tmp_path / "disk.img", start + part_size + TAIL, mbr_chunks([(0x83, 63, part_size // 512)]))
    with open(image, "r+b") as out:
        os.pwrite(out.fileno(), fs.read_bytes(), start)
    need_blocks, journal_blocks, bs, _ = ext_oracle(fs)
    size, end = image.stat().st_size, start + part_size

    def to_bytes(blocks):
        return round_out([(start + a * bs, start + b * bs) for a, b in blocks], start, end)

    need = span_math.merge([(0, start), (end, size), *to_bytes(need_blocks)])
    assert needs(image) == Needs(tuple(need), tuple(span_math.subtract(to_bytes(journal_blocks), need)))


# 2^32 + 2^16 blocks of 1 KiB (4 TiB, sparse), clusters of 64 KiB: 8193 groups of 2^19 blocks
FS_HUGE = (
    (1 << 32) + (1 << 16),
    ["-t", "ext4", "-b", "1024", "-C", "65536", "-O", "bigalloc,^resize_inode,^metadata_csum,^uninit_bg", "-N", "8192"]
    + ["-E", "lazy_itable_init=1,lazy_journal_init=1"],
)
HIGH = 1 << 32


def test_blocks_past_2_to_the_32(tmp_path):
    """Descriptors' and the journal's block numbers past 2^32 (high halves 1) and past 2^31
    (the top bit of a low half) are read as such. No group checksums: with them libext2fs
    counts the metadata of BLOCK_UNINIT groups in whole clusters, must_zero block by block."""
    root = node(0, [leaf(0, 100, HIGH + 1000)], 4)
    journal_is(*journal_case(tmp_path, FS_HUGE, root, 100), [(HIGH + 1000, HIGH + 1100)])
    for child in (HIGH + 2000, (1 << 31) + 2000):
        root, nodes = node(1, [index(0, child)], 4), {child: node(0, [leaf(0, 100, HIGH + 1000)], 84)}
        journal_is(*journal_case(tmp_path, FS_HUGE, root, 100, nodes), [(HIGH + 1000, HIGH + 1100)])
    image = tmp_path / "disk.img"
    group0 = peek(image, 2048, 64)
    for field in (0x00, 0x04, 0x08):  # block bitmap, inode bitmap, inode table: at block 2^32 + 100
        poke(image, 2048 + field, struct.pack("<I", 100))
        poke(image, 2048 + 0x20 + field, struct.pack("<I", 1))
        assert parsed(image)
        poke(image, 2048, group0)
    for big in (image, tmp_path / "pristine"):  # 4 TiB each, if sparse
        big.unlink()


def test_ext_bitmap_bits_past_the_last_group_are_no_runs(tmp_path):
    """ext2, 1 KiB blocks, 65 groups, the last of 256 blocks: 64 bitmaps of every other block in
    use give MAX_SPANS runs (read); the last group's bits past its 256 blocks (every other one
    set here) are not blocks of the filesystem, and no runs."""
    size_k = 64 * 8192 + 1 + 256
    image, _ = patched_fs(tmp_path, size_k, ["-t", "ext2", "-b", "1024", "-N", str(16 * 65)], [])
    bitmaps = [int(b) for b in re.findall(r"Block bitmap at (\d+)", run_tool("dumpe2fs", str(tmp_path / "fs")).stdout)]
    assert len(bitmaps) == 65
    for block in bitmaps[:-1]:
        poke(image, block * 1024, b"\x55" * 1024)
    poke(image, bitmaps[-1] * 1024, bytes(32) + b"\x55" * 992)
    assert parsed(image)


def test_one_inode_per_group_and_an_inode_1_without_has_journal(tmp_path):
    """One inode a group is enough (no journal inode among them); without has_journal inode 1,
    here a copy of a file's inode, is no journal."""
    image, _ = patched_fs(tmp_path, *FS_4K, [(0x28, 4, 1)])
    assert parsed(image)
    size_k, options = 8192, ["-t", "ext4", "-O", "^has_journal"]
    fs = mkfs_ext(tmp_path / "nj", size_k, *options, files=tree(tmp_path / "tree"))
    part_size = size_k * 1024 + 3 * 4096 + 1024
    image = disk(tmp_path / "nj.img", fs, part_size)
    number = int(re.search(r"Inode:\s+(\d+)", run_tool("debugfs", "-R", "stat /big.bin", str(fs)).stdout).group(1))
    poke(image, inode_at(fs, 1), peek(image, inode_at(fs, number), 256))
    assert needs(image) == expected_ext(image, fs, part_size)


def test_without_group_checksums_unused_inode_counts_are_not_read(tmp_path):
    """No gdt_csum nor metadata_csum: bg_itable_unused (set to all 2048 here) means nothing."""
    image, part_size = patched_fs(tmp_path, 8192, ["-t", "ext4", "-b", "4096", "-O", NO_CSUM], [])
    poke(image, DESC_4K + 0x1C, struct.pack("<H", 2048))
    assert needs(image) == expected_ext(image, tmp_path / "fs", part_size)


def test_at_most_2_to_the_17_groups_are_read(tmp_path):
    """32 GiB of 1 KiB blocks in groups of 256 is 131,072 groups (MAX_GROUPS): read. One group more,
    and the partition is zeroed whole. Sparse: mke2fs writes about 350 MiB of metadata."""
    for extra, read in ((0, True), (256 << 10, False)):
        size = (32 << 30) + extra
        fs = mkfs_ext(tmp_path / "fs", size >> 10, "-t", "ext4", "-b", "1024", "-g", "256", "-N", "1000000")
        image = disk(tmp_path / "disk.img", fs, size)
        fs.unlink()
        assert parsed(image) is read, extra
        image.unlink()
