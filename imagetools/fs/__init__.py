"""Filesystems inside a whole-disk image, edited in place at the partition's byte offset.

open_filesystem() picks the implementation from the filesystem type; both implement the
Filesystem protocol of fs/base.py. fsck() runs e2fsck -fn in place (ext2/3/4). This layer knows
geometry (image, offset, size, type), not Mender roles: layout.PartInfo.open() is the way in
from a partition.
"""

from __future__ import annotations

import os

from ..errors import FilesystemError
from ..image import overlay
from . import e2fsprogs
from .base import Entry, Filesystem, NoSpaceError, NotFoundError, SymlinkInPath

EXT_TYPES = ("ext2", "ext3", "ext4")
FAT_TYPES = ("vfat", "fat", "fat12", "fat16", "fat32")

__all__ = ["Entry", "Filesystem", "NoSpaceError", "NotFoundError", "SymlinkInPath",
           "open_filesystem", "fsck", "EXT_TYPES", "FAT_TYPES"]


def open_filesystem(image_path: str | os.PathLike, offset: int, size: int, fs_type: str, *,
                    writable: bool = False, label: str | None = None) -> Filesystem:
    """The `fs_type` filesystem at `offset` (a partition of `size` bytes); writable checks up
    front that the image may be written. `label` names it in messages."""
    label = label or f"{fs_type or 'partition'} at offset {offset}"
    image_path = overlay.route(image_path, offset, size)
    if fs_type in EXT_TYPES:
        from .ext4 import Ext4Filesystem
        return Ext4Filesystem(image_path, offset, size, writable=writable, label=label)
    if fs_type in FAT_TYPES:
        from .fat import FatFilesystem
        return FatFilesystem(image_path, offset, size, writable=writable, label=label)
    what = "no filesystem" if fs_type in ("empty", "unknown", "") else f"a {fs_type} filesystem"
    raise FilesystemError(f"{label} has {what}; files can only be read or written on ext2/3/4 and FAT")


def fsck(image_path: str | os.PathLike, offset: int, fs_type: str, label: str) -> tuple[bool, str]:
    """Check a filesystem without changing anything: (clean, checker output)."""
    if fs_type in EXT_TYPES:
        import tempfile  # only for e2fsck: verify --no-fsck does without it

        with tempfile.TemporaryDirectory(prefix="imagetools-fsck-") as tmp:
            image_path, offset = _fsck_input(image_path, offset, tmp)
            return e2fsprogs.e2fsck(e2fsprogs.device(image_path, offset, label, lambda: tmp))
    raise FilesystemError(f"cannot check {label} in place: only ext2/3/4 can be checked at an "
                          "offset (fsck.vfat needs the partition as its own file)")


def _fsck_input(image_path: str | os.PathLike, offset: int, tmp: str) -> tuple[str | os.PathLike, int]:
    """(file, offset) for e2fsck: an overlay's partition is materialized alone (0600 in the 0700
    temporary directory), since e2fsck reads a file; anything else is checked in place."""
    view = overlay.lookup(image_path)
    if view is None or not view.touches(offset, view.size):
        return overlay.route(image_path, offset, None), offset
    part = os.path.join(tmp, "partition")
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view.copy_range(offset, view.size, fd)
    finally:
        os.close(fd)
    return part, 0
