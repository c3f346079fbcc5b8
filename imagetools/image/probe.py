"""Identify the filesystem at a byte offset from its first 64 KiB (superblock signatures only).

Recognises ext2/3/4 (label, UUID, feature flags, block size), FAT (label, volume id), swap
(label, UUID), squashfs, an all-zero start ("empty": e.g. a never-formatted rootfs B), else
"unknown". Reading one small block per partition keeps `inspect` fast on multi-GiB images.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass
from enum import StrEnum

from ..errors import ImageFormatError, from_oserror
from .source import ImageSource

PROBE_BYTES = 65536  # covers the ext superblock, FAT boot sector and swap headers up to 64 KiB pages
# The partition table areas a flash zeroes first and writes last (MBR / primary GPT at the start,
# backup GPT at the end), so that an interrupted flash never leaves a card that looks complete.
TABLE_AREA = 64 * 1024
# How far past the table area a flash must have written something: every Mender layout starts its
# first partition within 64 MiB. A bound, so that an all-zero card is not read whole.
_FLASHED_WITHIN = 64 << 20


class FsType(StrEnum):
    EXT2 = "ext2"
    EXT3 = "ext3"
    EXT4 = "ext4"
    VFAT = "vfat"
    SWAP = "swap"
    SQUASHFS = "squashfs"
    EMPTY = "empty"  # all zeros: e.g. a never-formatted rootfs B
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class FsInfo:
    type: FsType
    label: str = ""
    uuid: str = ""
    features: tuple[str, ...] = ()
    block_size: int = 0
    size: int = 0  # bytes the filesystem says it spans (ext, FAT); 0 when unknown

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", FsType(self.type))


def probe_source(src: ImageSource, offset: int, size: int) -> FsInfo:
    """Probe the `size`-byte region at `offset` of an image already open (read-only)."""
    length = min(max(size, 0), PROBE_BYTES, max(src.size - offset, 0))
    return probe_bytes(src.read(offset, length, f"the filesystem at byte {offset}"))


def probe(path: str | os.PathLike, offset: int, size: int) -> FsInfo:
    """Probe the `size`-byte region at `offset` of the image at `path` (opened read-only)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError as exc:
        raise from_oserror(exc, f"cannot open {os.fspath(path)}", ImageFormatError) from exc
    try:
        data = os.pread(fd, min(max(size, 0), PROBE_BYTES), offset)
    except OSError as exc:
        raise from_oserror(exc, f"{os.fspath(path)}: cannot read at byte {offset}", ImageFormatError) from exc
    finally:
        os.close(fd)
    return probe_bytes(data)


def probe_bytes(data: bytes) -> FsInfo:
    """Probe the first bytes of a filesystem; ext before FAT, since only ext has a strong magic."""
    for check in (_ext, _squashfs, _swap, _fat):
        info = check(data)
        if info is not None:
            return info
    if data and _zeros(data):
        return FsInfo(FsType.EMPTY)
    return FsInfo(FsType.UNKNOWN)


def interrupted_flash(src: ImageSource) -> bool:
    """Whether src reads as a card whose flash stopped midway: its table area all zeros, and
    something written after it (an all-zero or too short file is merely not an image)."""
    if src.size <= TABLE_AREA or not _zeros(src.read(0, TABLE_AREA, "the partition table area")):
        return False
    end = min(src.size, TABLE_AREA + _FLASHED_WITHIN)
    return not all(
        _zeros(src.read(pos, min(1 << 20, end - pos), f"the card at byte {pos}"))
        for pos in range(TABLE_AREA, end, 1 << 20)
    )


def _zeros(data: bytes) -> bool:
    return data.count(0) == len(data)


# --- ext2/3/4 ---------------------------------------------------------------------------------
_COMPAT = {
    0x1: "dir_prealloc",
    0x2: "imagic_inodes",
    0x4: "has_journal",
    0x8: "ext_attr",
    0x10: "resize_inode",
    0x20: "dir_index",
    0x40: "lazy_bg",
    0x80: "snapshot_bitmap",
    0x200: "sparse_super2",
    0x400: "fast_commit",
    0x800: "stable_inodes",
    0x1000: "orphan_file",
}
_INCOMPAT = {
    0x1: "compression",
    0x2: "filetype",
    0x4: "needs_recovery",
    0x8: "journal_dev",
    0x10: "meta_bg",
    0x40: "extent",
    0x80: "64bit",
    0x100: "mmp",
    0x200: "flex_bg",
    0x400: "ea_inode",
    0x1000: "dirdata",
    0x2000: "metadata_csum_seed",
    0x4000: "large_dir",
    0x8000: "inline_data",
    0x10000: "encrypt",
    0x20000: "casefold",
}
_RO_COMPAT = {
    0x1: "sparse_super",
    0x2: "large_file",
    0x4: "btree_dir",
    0x8: "huge_file",
    0x10: "uninit_bg",
    0x20: "dir_nlink",
    0x40: "extra_isize",
    0x80: "snapshot",
    0x100: "quota",
    0x200: "bigalloc",
    0x400: "metadata_csum",
    0x800: "replica",
    0x1000: "read-only",
    0x2000: "project",
    0x4000: "shared_blocks",
    0x8000: "verity",
    0x10000: "orphan_present",
}
# What ext3 understands (as blkid decides): anything beyond makes it ext4.
_EXT3_INCOMPAT = 0x2 | 0x4 | 0x10
_EXT3_RO_COMPAT = 0x1 | 0x2 | 0x4
_SB = 1024


def _ext(data: bytes) -> FsInfo | None:
    if len(data) < _SB + 256 or data[_SB + 0x38 : _SB + 0x3A] != b"\x53\xef":
        return None
    log_block = struct.unpack_from("<I", data, _SB + 0x18)[0]
    compat, incompat, ro_compat = struct.unpack_from("<III", data, _SB + 0x5C)
    if log_block > 6 or incompat & 0x8:  # absurd block size, or an external journal device
        return FsInfo(FsType.UNKNOWN)
    if incompat & ~_EXT3_INCOMPAT or ro_compat & ~_EXT3_RO_COMPAT:
        kind = FsType.EXT4
    else:
        kind = FsType.EXT3 if compat & 0x4 else FsType.EXT2
    features = (
        _names(compat, _COMPAT, "COMPAT")
        + _names(incompat, _INCOMPAT, "INCOMPAT")
        + _names(ro_compat, _RO_COMPAT, "RO_COMPAT")
    )
    fs_uuid = str(uuid.UUID(bytes=data[_SB + 0x68 : _SB + 0x78]))
    blocks = struct.unpack_from("<I", data, _SB + 0x04)[0]
    if incompat & 0x80:  # 64bit: the high half of the block count
        blocks |= struct.unpack_from("<I", data, _SB + 0x150)[0] << 32
    return FsInfo(
        kind, _text(data[_SB + 0x78 : _SB + 0x88]), fs_uuid, features, 1024 << log_block, blocks << (10 + log_block)
    )


def _names(bits: int, table: dict[int, str], unknown: str) -> tuple[str, ...]:
    return tuple(table.get(1 << i, f"FEATURE_{unknown}_{i}") for i in range(32) if bits & (1 << i))


# --- squashfs, swap ---------------------------------------------------------------------------
def _squashfs(data: bytes) -> FsInfo | None:
    if data[:4] not in (b"hsqs", b"sqsh") or len(data) < 16:
        return None
    block = struct.unpack_from("<I" if data[:4] == b"hsqs" else ">I", data, 12)[0]
    return FsInfo(FsType.SQUASHFS, block_size=block)


def _swap(data: bytes) -> FsInfo | None:
    for page in (4096, 8192, 16384, 65536):
        if data[page - 10 : page] in (b"SWAPSPACE2", b"SWAP-SPACE"):
            label = _text(data[1052:1068])
            raw_uuid = data[1036:1052]
            return FsInfo(FsType.SWAP, label, str(uuid.UUID(bytes=raw_uuid)) if any(raw_uuid) else "", block_size=page)
    return None


# --- FAT --------------------------------------------------------------------------------------
def _fat(data: bytes) -> FsInfo | None:
    if len(data) < 512:
        return None
    bps, spc, reserved, nfats = struct.unpack_from("<HBHB", data, 11)
    media = data[21]
    plausible = (
        bps in (512, 1024, 2048, 4096)
        and spc
        and spc & (spc - 1) == 0
        and reserved
        and 1 <= nfats <= 4
        and (media == 0xF0 or media >= 0xF8)
        and (data[0] in (0xEB, 0xE9) or data[510:512] == b"\x55\xaa")
    )
    if not plausible:
        return None
    fat16_sectors = struct.unpack_from("<H", data, 22)[0]
    ext = 66 if fat16_sectors == 0 else 38  # FAT32 keeps the extended BPB further on
    total = struct.unpack_from("<H", data, 19)[0] or struct.unpack_from("<I", data, 32)[0]
    if data[ext] not in (0x28, 0x29):
        return FsInfo(FsType.VFAT, size=total * bps)
    serial = struct.unpack_from("<I", data, ext + 1)[0]
    label = _text(data[ext + 5 : ext + 16]) if data[ext] == 0x29 else ""
    volume_id = f"{serial >> 16:04X}-{serial & 0xFFFF:04X}"
    return FsInfo(FsType.VFAT, "" if label == "NO NAME" else label, volume_id, size=total * bps)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
