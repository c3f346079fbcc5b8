"""Filesystems inside a whole-disk image, edited in place at the partition's byte offset.

open_filesystem() picks the implementation from the probed filesystem type; both implement the
Filesystem protocol of fs/base.py. fsck() runs e2fsck -fn in place (ext2/3/4).
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

from ..errors import FilesystemError
from . import e2fsprogs
from .base import Entry, Filesystem, NoSpaceError, NotFoundError, SymlinkInPath

if TYPE_CHECKING:
    from ..layout import PartInfo

EXT_TYPES = ("ext2", "ext3", "ext4")
FAT_TYPES = ("vfat", "fat", "fat12", "fat16", "fat32")

__all__ = ["Entry", "Filesystem", "NoSpaceError", "NotFoundError", "SymlinkInPath",
           "open_filesystem", "fsck", "describe"]


def describe(part: PartInfo) -> str:
    """'partition 4 (data, ext4)' — how messages name a partition."""
    role = f"{part.role}, " if getattr(part, "role", "") else ""
    return f"partition {part.partition.number} ({role}{part.fs.type})"


def open_filesystem(image_path: str | os.PathLike, part: PartInfo, writable: bool = False) -> Filesystem:
    """The filesystem of one partition; writable checks up front that the image may be written."""
    kind = part.fs.type
    if kind in EXT_TYPES:
        from .ext4 import Ext4Filesystem
        return Ext4Filesystem(image_path, part.partition.start, part.partition.size,
                              writable=writable, label=describe(part))
    if kind in FAT_TYPES:
        from .fat import FatFilesystem
        return FatFilesystem(image_path, part.partition.start, part.partition.size,
                             writable=writable, label=describe(part))
    what = "no filesystem" if kind in ("empty", "unknown", "") else f"a {kind} filesystem"
    raise FilesystemError(f"partition {part.partition.number} has {what}; "
                          "files can only be read or written on ext2/3/4 and FAT")


def fsck(image_path: str | os.PathLike, part: PartInfo) -> tuple[bool, str]:
    """Check the partition's filesystem without changing anything: (clean, checker output)."""
    kind = part.fs.type
    if kind in EXT_TYPES:
        with tempfile.TemporaryDirectory(prefix="imagetools-fsck-") as tmp:
            dev = e2fsprogs.device(image_path, part.partition.start, describe(part), lambda: tmp)
            return e2fsprogs.e2fsck(dev)
    raise FilesystemError(f"cannot check partition {part.partition.number} in place: only ext2/3/4 "
                          "can be checked at an offset (fsck.vfat needs the partition as its own file)")
