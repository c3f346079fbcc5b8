"""Whole-disk images: read the partition table (MBR + EBR chain, GPT) without extracting anything.

`read_image(path)` opens a regular file or block device read-only, reads only the sectors the
table needs, and returns a DiskImage with byte offsets, or raises ImageFormatError with one line
saying what is wrong and what to do.
"""

from __future__ import annotations

import os

from ..errors import ImageFormatError
from . import gpt, mbr
from .model import DiskImage, Partition, TableType
from .probe import probe_bytes
from .source import ImageSource

__all__ = ["DiskImage", "ImageSource", "Partition", "read_image"]


def read_image(image: str | os.PathLike | ImageSource) -> DiskImage:
    """Parse the partition table of a path (opened and closed here) or of an ImageSource the
    caller keeps open; never writes, never reads partition contents."""
    if not isinstance(image, ImageSource):
        with ImageSource(image) as src:
            return read_image(src)
    if image.size < mbr.SECTOR:
        what = "empty (0 bytes)" if image.size == 0 else f"only {image.size} byte" + "s" * (image.size > 1)
        raise ImageFormatError(
            f"{image.path} is {what}: a disk image starts with a 512-byte partition table; "
            "check that the file was copied completely"
        )
    disk = _parse(image)
    _check_bounds(disk)
    _check_overlaps(disk)
    return disk


def _parse(src: ImageSource) -> DiskImage:
    sector0 = src.read(0, mbr.SECTOR, "the MBR")
    table = mbr.entries(sector0)
    signed = mbr.has_signature(sector0)
    is_mbr = signed and mbr.valid_boot_flags(table)
    gpt_sector = gpt.detect_sector_size(src)
    if is_mbr and any(e.type == mbr.GPT_PROTECTIVE for e in table):
        return _gpt_image(src, gpt_sector, _hybrid_warning(table))
    if not is_mbr and gpt_sector:
        return _gpt_image(src, gpt_sector, ["no protective MBR in front of the GPT; using the GPT"])
    if not is_mbr:
        why = "sector 0 has invalid MBR boot flags" if signed else "no MBR signature"
        raise ImageFormatError(
            f"{src.path}: no partition table found ({why})"
            f"{_bare_filesystem_hint(src) or ': this is not a whole-disk image'}"
        )
    parts, containers = mbr.read_mbr(src, table)
    if not parts:
        raise ImageFormatError(f"{src.path}: the MBR partition table has no partitions{_bare_filesystem_hint(src)}")
    return DiskImage(src.path, TableType.MBR, mbr.SECTOR, src.size, parts, [], containers)


def _gpt_image(src: ImageSource, sector_size: int | None, warnings: list[str]) -> DiskImage:
    ss, parts, gpt_warnings = gpt.read_gpt(src, sector_size)
    if not parts:
        raise ImageFormatError(f"{src.path}: the GPT has no partitions")
    parts.sort(key=lambda p: p.number)
    return DiskImage(src.path, TableType.GPT, ss, src.size, parts, warnings + gpt_warnings)


def _hybrid_warning(table: list[mbr.MbrEntry]) -> list[str]:
    others = [e.slot for e in table if e.used and e.type != mbr.GPT_PROTECTIVE]
    if not others:
        return []
    return [f"hybrid MBR: MBR entries {', '.join(map(str, others))} duplicate GPT partitions; using the GPT"]


def _bare_filesystem_hint(src: ImageSource) -> str:
    """A common mistake is passing one partition's filesystem instead of the whole-disk image."""
    fs = probe_bytes(src.read(0, min(src.size, 65536), "the first sectors"))
    if fs.type in ("empty", "unknown"):
        return ""
    return f": this looks like a bare {fs.type} filesystem, not a whole-disk image"


def _check_bounds(image: DiskImage) -> None:
    for p in image.extended + image.partitions:
        if p.end > image.size:
            raise ImageFormatError(
                f"{image.path}: partition {p.number} (bytes {p.start}-{p.end - 1}) extends past the "
                f"end of the image ({image.size} bytes): the image is truncated; copy it again "
                "completely"
            )


def _check_overlaps(image: DiskImage) -> None:
    """Logicals may overlap only their own container; everything else must be disjoint."""
    top = sorted([p for p in image.partitions if not p.logical] + image.extended, key=lambda p: p.start)
    logicals = sorted((p for p in image.partitions if p.logical), key=lambda p: p.start)
    for group in (top, logicals):
        for a, b in zip(group, group[1:]):
            if b.start < a.end:
                raise ImageFormatError(
                    f"{image.path}: partitions {a.number} and {b.number} overlap (bytes "
                    f"{a.start}-{a.end - 1} and {b.start}-{b.end - 1}): the partition table is "
                    "inconsistent; fix it with fdisk or rebuild the image"
                )
