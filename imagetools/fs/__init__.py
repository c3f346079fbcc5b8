"""Filesystems inside a whole-disk image, edited in place at the partition's byte offset.

open_filesystem() picks the implementation from the filesystem type (one row of KINDS per type,
with what it supports); each implements the Filesystem protocol of fs/base.py. fsck() runs
e2fsck -fn in place (ext2/3/4). This layer knows
geometry (image, offset, size, type), not Mender roles: layout.PartInfo.open() is the way in
from a partition.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import FilesystemError
from . import e2fsprogs
from .base import Entry, Filesystem, NoSpaceError, NotFoundError, SymlinkInPath, normalize

if TYPE_CHECKING:  # annotations only: image/ is below fs/, and only a reader of one passes these
    from ..image.source import ImageSource, Overlay


@dataclass(frozen=True)
class Capabilities:
    """What a filesystem type supports: callers ask this (PartInfo.caps), never a list of types.
    Adding a type is one module and one row of KINDS."""

    owner_mode: bool = False  # files carry an owner and permission bits (a rootfs can live on it)
    fsck: bool = False  # checked in place at the partition's offset
    data_partition: bool = False  # can be Mender's data partition (the datastore, the device key)
    in_place: bool = False  # written in place at the offset, the image file edited as it is


NONE = Capabilities()  # no filesystem, or one imagetools cannot read


@dataclass(frozen=True)
class Kind:
    """One registered filesystem: the probe's type names, how to open it, what it supports."""

    types: tuple[str, ...]
    opener: Callable[..., Filesystem]
    caps: Capabilities


def _open_ext(image_path: str | os.PathLike, offset: int, size: int, **kwargs: Any) -> Filesystem:
    from .ext4 import Ext4Filesystem  # loads the ext4 package only when an ext partition is opened

    return Ext4Filesystem(image_path, offset, size, **kwargs)


def _open_fat(image_path: str | os.PathLike, offset: int, size: int, **kwargs: Any) -> Filesystem:
    from .fat import FatFilesystem  # pyfatfs (and PyFilesystem2) only when a FAT partition is opened

    return FatFilesystem(image_path, offset, size, **kwargs)


KINDS = (
    Kind(
        ("ext2", "ext3", "ext4"),
        _open_ext,
        Capabilities(owner_mode=True, fsck=True, data_partition=True, in_place=True),
    ),
    Kind(("vfat", "fat", "fat12", "fat16", "fat32"), _open_fat, Capabilities(in_place=True)),
)
EXT_TYPES, FAT_TYPES = KINDS[0].types, KINDS[1].types  # for code that parses these formats itself

__all__ = [
    "Entry",
    "Filesystem",
    "NoSpaceError",
    "NotFoundError",
    "SymlinkInPath",
    "Capabilities",
    "capabilities",
    "open_filesystem",
    "fsck",
    "normalize",
    "EXT_TYPES",
    "FAT_TYPES",
]


def kind(fs_type: str) -> Kind | None:
    return next((k for k in KINDS if fs_type in k.types), None)


def capabilities(fs_type: str) -> Capabilities:
    """What the `fs_type` filesystem supports (NONE for no filesystem or an unknown one)."""
    found = kind(fs_type)
    return found.caps if found else NONE


def open_filesystem(
    image_path: str | os.PathLike,
    offset: int,
    size: int,
    fs_type: str,
    *,
    writable: bool = False,
    label: str | None = None,
    source: ImageSource | None = None,
) -> Filesystem:
    """The `fs_type` filesystem at `offset` (a partition of `size` bytes); writable checks up
    front that the image may be written. `label` names it in messages. A read-only filesystem
    reads through `source`, the image already open (a unit's overlay: the base's own bytes
    where its delta does not touch the partition), instead of opening the image again."""
    label = label or f"{fs_type or 'partition'} at offset {offset}"
    found = kind(fs_type)
    if found is None:
        what = "no filesystem" if fs_type in ("empty", "unknown", "") else f"a {fs_type} filesystem"
        raise FilesystemError(f"{label} has {what}; files can only be read or written on ext2/3/4 and FAT")
    if writable and not found.caps.in_place:
        raise FilesystemError(f"{label}: {fs_type} cannot be written in place; files on it are read-only here")
    view = source.overlay if source is not None else None
    if view is not None and not view.touches(offset, offset + size):
        image_path, source = view.base, view.source
    return found.opener(image_path, offset, size, writable=writable, label=label, source=source)


def fsck(
    image_path: str | os.PathLike, offset: int, fs_type: str, label: str, overlay: Overlay | None = None
) -> tuple[bool, str]:
    """Check a filesystem without changing anything: (clean, checker output). `overlay`: the
    image is a unit's delta over this base."""
    if capabilities(fs_type).fsck:
        import tempfile  # only for e2fsck: verify --no-fsck does without it

        with tempfile.TemporaryDirectory(prefix="imagetools-fsck-") as tmp:
            image_path, offset = _fsck_input(image_path, offset, tmp, overlay)
            return e2fsprogs.e2fsck(e2fsprogs.device(image_path, offset, label, lambda: tmp))
    raise FilesystemError(
        f"cannot check {label} in place: only ext2/3/4 can be checked at an "
        "offset (fsck.vfat needs the partition as its own file)"
    )


def _fsck_input(
    image_path: str | os.PathLike, offset: int, tmp: str, view: Overlay | None
) -> tuple[str | os.PathLike, int]:
    """(file, offset) for e2fsck: an overlay's partition is materialized alone (0600 in the 0700
    temporary directory), since e2fsck reads a file; anything else is checked in place."""
    if view is None:
        return image_path, offset
    if not view.touches(offset, view.size):
        return view.base, offset
    part = os.path.join(tmp, "partition")
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view.copy_range(offset, view.size, fd)
    finally:
        os.close(fd)
    return part, 0
