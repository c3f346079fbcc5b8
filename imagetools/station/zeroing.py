"""Which unmapped bytes of a base image must read as zeros on a card, decided from its filesystems.

A flash writes only the image's mapped blocks (its bmap ranges, what `bmaptool copy` writes) onto a
card that may hold anything: random bytes, or an older image. Zeroing every hole of the image
costs its whole size on card readers without WRITE ZEROES; writing only the mapped blocks can
leave a filesystem that e2fsck rejects, because mkfs relies on blocks it never wrote reading as
zeros (a resize inode whose reserved GDT blocks are holes: "Illegal indirect block in inode 7").
`must_zero` lists the holes that matter, read-only, from the image's partition table and each
partition's on-disk structures (parsed here with struct; every count is bounded by the partition):

- Outside every partition (the gap where U-Boot and its environment live, gaps between
  partitions, EBRs, the end of the disk with the backup GPT): every hole. A stale U-Boot
  environment on a reused card boots the wrong rootfs.
- ext2/3/4: every block the block bitmaps mark in use (superblock and descriptor copies, reserved
  GDT blocks, bitmaps, inode tables, the resize inode's, the journal's and every file's and
  directory's blocks), and for groups whose bitmap is not read (BLOCK_UNINIT with group
  checksums) what libext2fs marks itself: superblock backup, descriptors, reserved GDT blocks,
  the group's bitmaps and inode table. With GDT_CSUM or METADATA_CSUM the inode table beyond
  the group's first (inodes_per_group - bg_itable_unused) inodes (none with INODE_UNINIT) is
  left alone: e2fsck and the kernel never read it as inodes (the kernel clears a raw inode
  before its first use). Without those features the whole table counts. Free blocks may hold
  anything. Unwritten (preallocated) extents are zeroed too: the bitmap does not tell them apart.
- The journal: not zeroed, but returned apart (`Needs.journals`): on the card, every block of it
  that starts with the JBD2 magic must be zeroed, and nothing else of it matters. Recovery
  (fs/jbd2/recovery.c, e2fsck/recovery.c: jbd2_journal_recover, do_one_pass) reads nothing past
  the journal superblock while s_start is 0, as mkfs leaves it; once the new life commits, it
  walks the log from s_start and stops at the first block whose header lacks the magic
  0xC03B3998 or the expected sequence. A descriptor's data blocks are found only through that
  descriptor, and a data block that starts with the magic is stored escaped (its first four
  bytes zeroed). So a log with no stale header can replay nothing but what the new life wrote.
  Stale headers are the danger, not a curiosity: mkfs starts every journal at s_sequence 1 and
  the kernel writes transaction 2 at the journal's first block, so a card that held an older
  flash of the same base (same fs UUID, hence the same jbd2 checksum seed) holds a valid-looking
  transaction 2 exactly where recovery looks first, and a power cut during the device's first
  commit (s_start is set before that commit is complete) replays the old card's transaction.
  Fast-commit blocks (the fast_commit feature, not a mke2fs default) carry no magic and their
  checksum has no per-filesystem seed (e2fsck/journal.c ext4_fc_replay_scan): such a journal
  is zeroed whole, as is one whose inode does not parse.
- FAT: the reserved sectors, every FAT copy, the FAT12/16 root directory, and every cluster the
  first FAT marks other than free. Free clusters may hold anything.
- swap: nothing (its header is mapped). Any other partition (unknown, squashfs, never
  formatted), and an ext or FAT partition whose structures do not parse: all of its holes.

A partition's spans are rounded out to 4096 bytes but never past the partition; the result is
the image's holes among all spans, merged (one range may run from a gap into the next partition).
Evidence for the journal: tests/station/test_zeroing.py reflashes a card whose previous life (same
base) left transactions, cuts power in the first commit, and the old unit's key file comes back
unless the card's stale headers were zeroed. Reading a journal costs its size in reads per ext
filesystem (mkfs: 4 MiB up to 128 MiB, 16 MiB up to 1 GiB, 32 MiB up to 2 GiB, 64 MiB up to
16 GiB); zeroing it whole cost as much in writes, which card readers without WRITE ZEROES send.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .. import bmap
from ..errors import ImageFormatError
from ..fs import EXT_TYPES, FAT_TYPES
from ..image import ImageSource, Partition, read_image
from ..image.probe import probe_source
from .spans import Span, clip, holes, intersect, merge, outside, subtract

MAX_GROUPS = 1 << 17  # a 16 TiB ext4 with 4 KiB blocks; more is not a card's filesystem
MAX_SPANS = 1 << 18  # allocated runs in one filesystem; more and it is zeroed whole
MIN_BLOCKS_PER_GROUP = 256  # mke2fs refuses fewer (-g)
_FAT_CHUNK = 1 << 20
_NONZERO = re.compile(rb"[^\x00]+")

# ext feature bits (struct ext2_super_block)
_COMPAT_HAS_JOURNAL, _COMPAT_SPARSE_SUPER2, _COMPAT_FAST_COMMIT = 0x4, 0x200, 0x400
_INCOMPAT_META_BG, _INCOMPAT_64BIT = 0x10, 0x80
_RO_SPARSE_SUPER, _RO_GDT_CSUM, _RO_BIGALLOC, _RO_METADATA_CSUM = 0x1, 0x10, 0x200, 0x400
_BG_INODE_UNINIT, _BG_BLOCK_UNINIT = 0x1, 0x2
_EXTENTS_FL, _EXTENT_MAGIC, _MAX_EXTENT_DEPTH, _MAX_EXTENT_NODES = 0x80000, 0xF30A, 5, 1024
_MAX_JOURNAL_BLOCKS = 1024 * 10000  # JBD2_MAX_JOURNAL_BLOCKS


class _Unreadable(ImageFormatError):
    """A filesystem whose structures do not add up: its partition is zeroed whole instead."""


@dataclass(frozen=True)
class Needs:
    """What a card must get besides the mapped blocks: byte ranges [start, end) of the image,
    disjoint, sorted, 4096-aligned where possible, all holes of the image."""

    zeros: tuple[Span, ...]  # must read as zeros
    journals: tuple[Span, ...]  # journal blocks: only those that start with a JBD2 header on the card need zeroing


def must_zero(image: str | os.PathLike, ranges: Sequence[bmap.BlockRange], size: int) -> Needs:
    """The holes of the image (what `ranges`, the mapped blocks written anyway, leave out) that
    must read as zeros on the card, and apart from them its journals (see the module docstring)."""
    need: list[Span] = []
    journals: list[Span] = []
    with ImageSource(image) as src:
        disk = read_image(src)
        need += outside(disk.partitions, size)
        for part in disk.partitions:
            end = min(part.end, size)
            if part.start < end:
                spans, journal = _partition_needs(src, part)
                need += clip(spans, part.start, end)
                journals += clip(journal, part.start, end)
    unmapped, need = holes(ranges, size), merge(need)
    return Needs(tuple(intersect(need, unmapped)), tuple(intersect(subtract(merge(journals), need), unmapped)))


def _partition_needs(src: ImageSource, part: Partition) -> tuple[list[Span], list[Span]]:
    """Byte spans of one partition that must read as zeros where the image has holes, and its
    journal's (none for anything but ext3/4)."""
    fs_type = probe_source(src, part.start, part.size).type
    try:
        if fs_type in EXT_TYPES:
            return _ext_needs(src, part)
        if fs_type in FAT_TYPES:
            return _fat_needs(src, part), []
    except _Unreadable:
        return [(part.start, part.end)], []
    return ([] if fs_type == "swap" else [(part.start, part.end)]), []


# --- ext2/3/4 ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ExtSuper:
    block_size: int
    blocks: int
    first_data_block: int
    blocks_per_group: int
    ratio: int  # blocks per cluster (bigalloc), else 1
    inodes_per_group: int
    inode_size: int
    groups: int
    desc_size: int
    csum: bool  # GDT_CSUM or METADATA_CSUM: uninit flags and bg_itable_unused count
    sparse_super: bool
    backup_groups: tuple[int, ...] | None  # sparse_super2's two backups, else None
    meta_bg: bool
    first_meta_bg: int
    reserved_gdt: int
    journal_inum: int  # 0: no internal journal, or one zeroed whole (fast_commit)

    @property
    def desc_per_block(self) -> int:
        return self.block_size // self.desc_size

    @property
    def desc_blocks(self) -> int:
        return -(-self.groups // self.desc_per_block)

    @property
    def itable_blocks(self) -> int:
        return -(-self.inodes_per_group * self.inode_size // self.block_size)

    @property
    def sb_block(self) -> int:
        """The block holding the primary superblock (byte 1024)."""
        return 1 if self.block_size == 1024 else 0

    def group_first(self, group: int) -> int:
        return self.first_data_block + group * self.blocks_per_group

    def group_end(self, group: int) -> int:
        return min(self.group_first(group + 1), self.blocks)


@dataclass(frozen=True)
class _Group:
    block_bitmap: int
    inode_bitmap: int
    inode_table: int
    flags: int
    itable_unused: int


def _ext_needs(src: ImageSource, part: Partition) -> tuple[list[Span], list[Span]]:
    """In-use blocks per the bitmaps (less unused inode table tails and the journal's data
    blocks) plus static metadata; and the journal's data blocks."""
    if part.size < 2048:
        raise _Unreadable("no room for an ext superblock")
    sb = _ext_super(src.read(part.start + 1024, 1024, "the ext superblock"), part.size)
    groups = _ext_groups(src, part, sb)
    static: list[Span] = []
    tails: list[Span] = []
    for g, desc in enumerate(groups):
        static += _group_static(sb, g)
        used = -(-_used_inodes(sb, desc) * sb.inode_size // sb.block_size)
        static += [
            (desc.block_bitmap, desc.block_bitmap + 1),
            (desc.inode_bitmap, desc.inode_bitmap + 1),
            (desc.inode_table, desc.inode_table + used),
        ]
        tails.append((desc.inode_table + used, desc.inode_table + sb.itable_blocks))
    journal = _journal_blocks(src, part, sb, groups)
    in_use = subtract(subtract(merge(_allocated(src, part, sb, groups)), merge(tails)), journal)
    return _ext_bytes(part, sb, merge(static + in_use)), _ext_bytes(part, sb, journal)


def _ext_bytes(part: Partition, sb: _ExtSuper, blocks: list[Span]) -> list[Span]:
    return [
        (part.start + a * sb.block_size, part.start + min(b, sb.blocks) * sb.block_size)
        for a, b in blocks
        if a < sb.blocks
    ]


def _ext_super(raw: bytes, part_size: int) -> _ExtSuper:
    """The superblock's geometry, each value checked against what libext2fs accepts (the magic
    as probe_source, which found the filesystem, checked it)."""

    def u32(off: int) -> int:
        return struct.unpack_from("<I", raw, off)[0]

    def u16(off: int) -> int:
        return struct.unpack_from("<H", raw, off)[0]

    log_block, log_cluster = u32(0x18), u32(0x1C)
    compat, incompat, ro_compat = u32(0x5C), u32(0x60), u32(0x64)
    if log_block > 6:  # probe_source refused it already; kept: a shift by 2**32 would not end
        raise _Unreadable("block size")
    bs = 1024 << log_block
    ratio = 1
    if ro_compat & _RO_BIGALLOC:
        if not log_block <= log_cluster <= log_block + 16:
            raise _Unreadable("cluster size")
        ratio = 1 << (log_cluster - log_block)
    blocks = u32(0x04) | (u32(0x150) << 32 if incompat & _INCOMPAT_64BIT else 0)
    first_data_block = u32(0x14)
    if not first_data_block < blocks <= part_size // bs or first_data_block != (1 if bs == 1024 and ratio == 1 else 0):
        raise _Unreadable("block count or first data block")
    clusters_per_group = u32(0x24) if ratio > 1 else u32(0x20)
    bpg = clusters_per_group * ratio
    if not (MIN_BLOCKS_PER_GROUP <= bpg and clusters_per_group <= 8 * bs) or (ratio > 1 and u32(0x20) != bpg):
        raise _Unreadable("blocks per group")
    groups = -(-(blocks - first_data_block) // bpg)
    ipg = u32(0x28)
    inode_size = u16(0x58) if u32(0x4C) >= 1 else 128
    desc_size = u16(0xFE) if incompat & _INCOMPAT_64BIT else 32
    if (
        groups > MAX_GROUPS
        or not 0 < ipg <= 8 * bs
        or not _pow2_between(inode_size, 128, bs)
        or not _pow2_between(desc_size, 64 if incompat & _INCOMPAT_64BIT else 32, 1024)  # 1024 <= bs
    ):
        raise _Unreadable("group geometry")
    backups = (u32(0x24C), u32(0x250)) if compat & _COMPAT_SPARSE_SUPER2 else None
    journal = u32(0xE0) if compat & _COMPAT_HAS_JOURNAL and not compat & _COMPAT_FAST_COMMIT else 0
    sb = _ExtSuper(
        bs,
        blocks,
        first_data_block,
        bpg,
        ratio,
        ipg,
        inode_size,
        groups,
        desc_size,
        bool(ro_compat & (_RO_GDT_CSUM | _RO_METADATA_CSUM)),
        bool(ro_compat & _RO_SPARSE_SUPER),
        backups,
        bool(incompat & _INCOMPAT_META_BG),
        u32(0x104),
        u16(0xCE),
        journal,
    )
    if (
        sb.itable_blocks >= bpg
        or (sb.meta_bg and sb.first_meta_bg > sb.desc_blocks)
        or (not sb.meta_bg and 1 + sb.desc_blocks + sb.reserved_gdt > bpg)
    ):
        raise _Unreadable("inode table or descriptor blocks do not fit a group")
    return sb


def _journal_blocks(src: ImageSource, part: Partition, sb: _ExtSuper, groups: list[_Group]) -> list[Span]:
    """The journal inode's data blocks (merged block runs), from its extent tree or block map;
    [] when there is none or it does not add up (the journal is then zeroed with the rest)."""
    ino = sb.journal_inum
    if not 0 < ino <= sb.groups * sb.inodes_per_group:
        return []
    group, index = divmod(ino - 1, sb.inodes_per_group)
    raw = src.read(
        part.start + groups[group].inode_table * sb.block_size + index * sb.inode_size, 128, "the journal inode"
    )
    size = struct.unpack_from("<I", raw, 0x4)[0] | struct.unpack_from("<I", raw, 0x6C)[0] << 32
    count = size // sb.block_size
    if not 0 < count <= min(sb.blocks, _MAX_JOURNAL_BLOCKS):
        return []
    try:
        if struct.unpack_from("<I", raw, 0x20)[0] & _EXTENTS_FL:
            runs = _extent_runs(src, part, sb, raw[0x28:0x64])
        else:
            runs = _mapped_runs(src, part, sb, raw[0x28:0x64], count)
    except _Unreadable:
        return []
    runs = merge(runs)
    if sum(b - a for a, b in runs) > count or any(a < sb.first_data_block or b > sb.blocks for a, b in runs):
        return []
    return runs


def _extent_runs(src: ImageSource, part: Partition, sb: _ExtSuper, root: bytes) -> list[Span]:
    """Initialized extents of an extent tree (unwritten ones are left out: they stay with the
    zeros), reading at most _MAX_EXTENT_NODES tree blocks."""
    runs: list[Span] = []
    pending, reads = [(root, _MAX_EXTENT_DEPTH)], 0
    while pending:
        node, depth_left = pending.pop()
        magic, entries, most, depth = struct.unpack_from("<HHHH", node, 0)
        if magic != _EXTENT_MAGIC or entries > most or 12 + 12 * entries > len(node) or depth > depth_left:
            raise _Unreadable("journal extent tree")
        for off in range(12, 12 + 12 * entries, 12):
            if depth == 0:
                _logical, length, hi, lo = struct.unpack_from("<IHHI", node, off)
                if length <= 32768:
                    runs.append((lo | hi << 32, (lo | hi << 32) + length))
                continue
            _logical, lo, hi = struct.unpack_from("<IIH", node, off)
            reads += 1
            if not sb.first_data_block <= (lo | hi << 32) < sb.blocks or reads > _MAX_EXTENT_NODES:
                raise _Unreadable("journal extent index")
            pending.append(
                (
                    src.read(part.start + (lo | hi << 32) * sb.block_size, sb.block_size, "a journal extent block"),
                    depth - 1,
                )
            )
    return runs


def _mapped_runs(src: ImageSource, part: Partition, sb: _ExtSuper, i_block: bytes, count: int) -> list[Span]:
    """The first `count` data blocks of a block-mapped inode (12 direct, then single, double and
    triple indirect blocks), as one-block runs; no more indirect blocks read than such a file has."""
    per_block = sb.block_size // 4
    budget = 8 + 3 * (count // per_block + 1)
    pointers = struct.unpack_from("<15I", i_block)
    found = [p for p in pointers[:12] if p][:count]
    pending = [(top, level) for level, top in reversed(list(enumerate(pointers[12:], start=1)))]
    while pending and len(found) < count:
        block, depth = pending.pop()
        if not block:
            continue
        budget -= 1
        if block >= sb.blocks or budget < 0:  # block 0 is no pointer: past it, every block is data
            raise _Unreadable("journal indirect block")
        entries = struct.unpack(
            f"<{per_block}I", src.read(part.start + block * sb.block_size, sb.block_size, "a journal indirect block")
        )
        if depth == 1:
            found += [p for p in entries if p][: count - len(found)]
        else:
            pending += [(p, depth - 1) for p in reversed(entries)]
    return [(b, b + 1) for b in found]


def _pow2_between(value: int, low: int, high: int) -> bool:
    return low <= value <= high and value & (value - 1) == 0


def _ext_groups(src: ImageSource, part: Partition, sb: _ExtSuper) -> list[_Group]:
    """Every group descriptor, read block by block from the primary table."""
    groups: list[_Group] = []
    for i in range(sb.desc_blocks):
        where = _desc_block(sb, i)
        if where >= sb.blocks:
            raise _Unreadable("descriptor block past the filesystem")
        raw = src.read(part.start + where * sb.block_size, sb.block_size, "ext group descriptors")
        count = min(sb.desc_per_block, sb.groups - len(groups))
        groups += [_descriptor(sb, raw, j * sb.desc_size) for j in range(count)]
    return groups


def _desc_block(sb: _ExtSuper, i: int) -> int:
    """Where descriptor block i lives (ext2fs_descriptor_block_loc2)."""
    if not sb.meta_bg or i < sb.first_meta_bg:
        return sb.sb_block + 1 + i
    group = i * sb.desc_per_block
    # 1 KiB blocks with bigalloc: group 0 starts at block 0, its superblock is block 1 (the kernel's descriptor_loc)
    return sb.group_first(group) + _has_super(sb, group) + (group == 0 and sb.first_data_block != sb.sb_block)


def _descriptor(sb: _ExtSuper, raw: bytes, off: int) -> _Group:
    lo = struct.unpack_from("<IIIHHHHIHHHH", raw, off)
    wide = sb.desc_size >= 64
    hi = struct.unpack_from("<III", raw, off + 0x20) if wide else (0, 0, 0)
    unused_hi = struct.unpack_from("<H", raw, off + 0x32)[0] if wide else 0
    desc = _Group(lo[0] | hi[0] << 32, lo[1] | hi[1] << 32, lo[2] | hi[2] << 32, lo[6], lo[10] | unused_hi << 16)
    low = sb.first_data_block
    if not (
        low <= desc.block_bitmap < sb.blocks
        and low <= desc.inode_bitmap < sb.blocks
        and low <= desc.inode_table
        and desc.inode_table + sb.itable_blocks <= sb.blocks
    ):
        raise _Unreadable("group metadata outside the filesystem")
    return desc


def _used_inodes(sb: _ExtSuper, desc: _Group) -> int:
    """Inodes e2fsck reads in a group: all, or with group checksums those before the unused."""
    if not sb.csum:
        return sb.inodes_per_group
    if desc.flags & _BG_INODE_UNINIT:
        return 0
    return sb.inodes_per_group - min(desc.itable_unused, sb.inodes_per_group)


def _has_super(sb: _ExtSuper, group: int) -> bool:
    """ext2fs_bg_has_super: which groups hold a superblock backup."""
    if group == 0:
        return True
    if sb.backup_groups is not None:
        return group in sb.backup_groups
    if group <= 1 or not sb.sparse_super:
        return True
    return group % 2 == 1 and any(_is_power(group, base) for base in (3, 5, 7))


def _is_power(n: int, base: int) -> bool:
    while n % base == 0:
        n //= base
    return n == 1


def _group_static(sb: _ExtSuper, group: int) -> list[Span]:
    """Superblock, descriptor and reserved GDT blocks of one group (ext2fs_super_and_bgd_loc2)."""
    first = sb.group_first(group)
    if first == 0 and sb.block_size == 1024:
        first = 1  # 1 KiB blocks with bigalloc: the superblock is still block 1
    has_super = _has_super(sb, group)
    spans = [(0 if group == 0 else first, first + 1)] if has_super else []
    if not sb.meta_bg or group // sb.desc_per_block < sb.first_meta_bg:
        old = sb.first_meta_bg if sb.meta_bg else sb.desc_blocks + sb.reserved_gdt
        if has_super:
            spans.append((first + 1, first + 1 + old))
    elif group % sb.desc_per_block in (0, 1, sb.desc_per_block - 1):
        spans.append((first + has_super, first + has_super + 1))
    return spans


def _allocated(src: ImageSource, part: Partition, sb: _ExtSuper, groups: list[_Group]) -> list[Span]:
    """Block runs the block bitmaps mark in use (bitmaps of BLOCK_UNINIT groups are not read)."""
    runs: list[Span] = []
    for g, desc in enumerate(groups):
        if sb.csum and desc.flags & _BG_BLOCK_UNINIT:
            continue
        first, end = sb.group_first(g), sb.group_end(g)
        bitmap = src.read(part.start + desc.block_bitmap * sb.block_size, sb.block_size, "an ext block bitmap")
        for a, b in _bit_runs(bitmap, -(-(end - first) // sb.ratio)):
            runs.append((first + a * sb.ratio, min(first + b * sb.ratio, end)))
        if len(runs) > MAX_SPANS:
            raise _Unreadable("too many allocated runs")
    return runs


def _bit_runs(bitmap: bytes, nbits: int) -> Iterator[Span]:
    """Runs [first, end) of set bits (little-endian bit order) among the first `nbits`."""
    for match in _NONZERO.finditer(bitmap, 0, (nbits + 7) // 8):
        value, pos = int.from_bytes(match.group(), "little"), match.start() * 8
        while value:
            low = (value & -value).bit_length() - 1
            value >>= low
            ones = (~value & (value + 1)).bit_length() - 1
            value >>= ones
            start, pos = pos + low, pos + low + ones
            if start >= nbits:
                return
            yield start, min(pos, nbits)


# --- FAT --------------------------------------------------------------------------------------
def _fat_needs(src: ImageSource, part: Partition) -> list[Span]:
    """Reserved sectors, FATs and root directory, plus every cluster that is not free (sector and
    cluster size, reserved sectors and FAT count as probe_source, which found the FAT, checked them)."""
    boot = src.read(part.start, 512, "the FAT boot sector")
    bps, spc, reserved, nfats, root_entries, total16, _media, fatsz16 = struct.unpack_from("<HBHBHHBH", boot, 11)
    total = total16 or struct.unpack_from("<I", boot, 32)[0]
    fat_sectors = fatsz16 or struct.unpack_from("<I", boot, 36)[0]
    if not fat_sectors or total * bps > part.size:
        raise _Unreadable("FAT boot sector")
    data_start = reserved + nfats * fat_sectors + -(-root_entries * 32 // bps)
    if data_start >= total:
        raise _Unreadable("FAT layout")
    clusters = (total - data_start) // spc
    bits = 32 if fatsz16 == 0 else 12 if clusters < 4085 else 16
    if (clusters + 2) * bits > fat_sectors * bps * 8:
        raise _Unreadable("FAT too small for its clusters")
    fat_start, cluster_bytes = part.start + reserved * bps, spc * bps
    spans = [(part.start, part.start + data_start * bps)]
    for a, b in _fat_used(src, fat_start, bits, clusters):
        spans.append(
            (
                part.start + data_start * bps + (a - 2) * cluster_bytes,
                part.start + data_start * bps + (b - 2) * cluster_bytes,
            )
        )
        if len(spans) > MAX_SPANS:
            raise _Unreadable("too many allocated runs")
    return spans


def _fat_used(src: ImageSource, fat_start: int, bits: int, clusters: int) -> Iterator[Span]:
    """Runs [first, end) of cluster numbers (2..clusters+1) whose FAT entry is not free."""
    entries = itertools.islice(_fat_entries(src, fat_start, bits, clusters + 2), 2, None)  # 0, 1: marks
    run_start = None
    for cluster, value in enumerate(entries, start=2):
        if value and run_start is None:
            run_start = cluster
        elif not value and run_start is not None:
            yield run_start, cluster
            run_start = None
    if run_start is not None:
        yield run_start, clusters + 2


def _fat_entries(src: ImageSource, fat_start: int, bits: int, count: int) -> Iterator[int]:
    """The first `count` entries of a FAT, read in bounded chunks."""
    if bits == 12:  # at most 4086 entries: one read
        raw = src.read(fat_start, (count * 3 + 1) // 2, "the FAT")
        for n in range(count):
            pair = int.from_bytes(raw[n * 3 // 2 : n * 3 // 2 + 2], "little")  # raw holds every pair whole
            yield (pair >> 4) if n & 1 else (pair & 0xFFF)
        return
    width, mask = bits // 8, 0x0FFFFFFF  # FAT32's top 4 bits are reserved; a FAT16 entry has 16 bits
    per_chunk = _FAT_CHUNK // width
    for first in range(0, count, per_chunk):
        n = min(per_chunk, count - first)
        raw = src.read(fat_start + first * width, n * width, "the FAT")
        for value in memoryview(raw).cast("H" if width == 2 else "I"):
            yield value & mask
