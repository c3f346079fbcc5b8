"""The one small interface every filesystem inside an image implements (ext4, FAT).

Paths here are absolute paths *inside one partition*; which partition a user path lands on is
decided by imagetools.paths. Symbolic links are never followed by this layer: a link met in the
middle of a path raises SymlinkInPath so the caller can re-route (a rootfs link often points into
another partition, e.g. /var/lib/mender -> /data/mender).
"""

from __future__ import annotations

import os
import posixpath
import stat as stat_mod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from ..errors import EnvironmentProblem, FilesystemError, ImageFormatError, from_oserror
from ..image.probe import probe

# Characters debugfs' command parser cannot carry inside a quoted argument.
UNSAFE_CHARACTERS = ('"', "\n", "\r", "\0")
MAX_NAME_BYTES = 255  # one name in a directory: ext2/3/4's limit (FAT's is lower)
MAX_PATH_BYTES = 4095  # PATH_MAX; also keeps every debugfs command line far below its 8 KiB buffer


class EntryType(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"  # device, FIFO, socket


@dataclass(frozen=True)
class Entry:
    path: str  # absolute path inside the partition
    name: str
    type: EntryType
    mode: int  # permission bits only (e.g. 0o600), plus setuid/setgid/sticky
    uid: int
    gid: int
    size: int
    target: str | None = None  # symlink target
    inode: int | None = field(default=None, compare=False)  # ext: to address it without its name

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", EntryType(self.type))

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "name": self.name,
            "type": self.type,
            "mode": f"{self.mode:04o}",
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
            "target": self.target,
        }


class SymlinkInPath(FilesystemError):
    """A directory component of the path is a symbolic link; this layer does not follow it."""

    def __init__(self, link: str, target: str, rest: str):
        super().__init__(f"{link} is a symbolic link to {target}")
        self.link = link  # the link's own path inside the partition
        self.target = target  # its target, verbatim
        self.rest = rest  # what followed the link in the requested path ("" or "a/b")


class NotFoundError(FilesystemError):
    """The path does not exist in the partition."""


class NoSpaceError(FilesystemError):
    """The partition has no room for what was asked: an environment problem, not bad input."""

    exit_code = 3


class Filesystem(Protocol):
    """What imagetools needs from a filesystem inside an image."""

    label: str  # short description for messages, e.g. "ext4 at offset 33554432"

    def stat(self, path: str) -> Entry: ...
    def exists(self, path: str) -> bool: ...
    def list(self, path: str) -> list[Entry]: ...
    def read(self, path: str) -> bytes: ...
    def readlink(self, path: str) -> str: ...
    def write(
        self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0, parents: bool = False
    ) -> None: ...
    def mkdir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, parents: bool = False) -> None: ...
    def remove(self, path: str, recursive: bool = False) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Filesystem: ...
    def __exit__(self, *exc: object) -> None: ...


def normalize(path: str) -> str:
    """Absolute, normalized partition path; '..' cannot climb above the root."""
    if not path.startswith("/"):
        raise FilesystemError(f"path inside the image must be absolute: {path!r}")
    norm = "/" + posixpath.normpath(path).lstrip("/")  # normpath keeps a leading '//'
    why = unsafe_reason(norm)
    if why:
        raise FilesystemError(f"cannot use the path {path[:200]!r}: {why}")
    return norm


def unsafe_reason(path: str) -> str | None:
    """Why `path` cannot be addressed inside an image (debugfs cannot carry it in a command, or
    ext4 cannot hold it), or None when it can. For typed paths and names read from images alike."""
    for bad in UNSAFE_CHARACTERS:
        if bad in path:
            return f"unsupported character {bad!r} (debugfs commands cannot carry it)"
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "the name holds characters that are not valid in a file name"
    if len(raw) > MAX_PATH_BYTES:
        return f"the path is {len(raw)} bytes long (at most {MAX_PATH_BYTES})"
    longest = max((len(c) for c in raw.split(b"/")), default=0)
    if longest > MAX_NAME_BYTES:
        return f"a name in it is {longest} bytes long (ext4 allows at most {MAX_NAME_BYTES} bytes)"
    return None


def components(path: str) -> list[str]:
    return [c for c in normalize(path).split("/") if c]


def join(parent: str, name: str) -> str:
    return posixpath.join(parent, name)


def type_from_mode(mode: int) -> EntryType:
    if stat_mod.S_ISREG(mode):
        return EntryType.FILE
    if stat_mod.S_ISDIR(mode):
        return EntryType.DIR
    if stat_mod.S_ISLNK(mode):
        return EntryType.SYMLINK
    return EntryType.OTHER


def check_mode(mode: int) -> int:
    if not 0 <= mode <= 0o7777:
        raise FilesystemError(f"mode {mode:o} is not a permission mode (0000-7777)")
    return mode


def check_owner(value: int, what: str) -> int:
    if not 0 <= value < 2**32 - 1:
        raise FilesystemError(f"{what} {value} is out of range")
    return value


def check_writable(image_path: str) -> None:
    """Refuse a read-only image file before anything is changed (root ignores mode bits, we don't)."""
    try:
        st = os.stat(image_path)
    except OSError as exc:
        raise from_oserror(exc, f"cannot open image {image_path}", FilesystemError) from exc
    if stat_mod.S_ISBLK(st.st_mode):
        where = mount_point(st.st_rdev)
        if where:
            raise EnvironmentProblem(
                f"{image_path} (or one of its partitions) is mounted on {where}: unmount it before writing to it"
            )
    if not os.access(image_path, os.W_OK) or (st.st_mode & 0o222) == 0:
        raise EnvironmentProblem(
            f"image {image_path} is read-only (no write permission); make it writable or write to a copy"
        )
    try:
        os.close(os.open(image_path, os.O_RDWR))
    except OSError as exc:
        raise EnvironmentProblem(f"image {image_path} cannot be opened for writing: {exc.strerror}") from exc


def check_geometry(image_path: str, offset: int, size: int | None, label: str) -> None:
    """Refuse writing to a filesystem that claims more bytes than its partition (a table shrunk
    without shrinking the filesystem): debugfs and pyfatfs trust the superblock and would write
    into the next partition."""
    if size is None:
        fd = os.open(image_path, os.O_RDONLY)
        try:
            size = max(os.lseek(fd, 0, os.SEEK_END) - offset, 0)  # block devices too
        finally:
            os.close(fd)
    claimed = probe(image_path, offset, size).size
    if claimed > size:
        raise ImageFormatError(
            f"{label}: the filesystem spans {claimed} bytes but its partition only "
            f"{size}; writing could overwrite the next partition (fix the "
            "partition table or resize the filesystem first)"
        )


def mount_point(rdev: int) -> str | None:
    """Where this block device, or a partition of it, is mounted (None if nowhere)."""
    devices = {rdev}
    sysfs = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    try:
        children = os.listdir(sysfs)
    except OSError:
        children = []
    for child in children:
        try:
            with open(os.path.join(sysfs, child, "dev")) as fh:
                major, minor = fh.read().strip().split(":")
            devices.add(os.makedev(int(major), int(minor)))
        except (OSError, ValueError):
            continue
    try:
        with open("/proc/self/mounts") as fh:
            mounts = [line.split()[:2] for line in fh]
    except OSError:
        return None
    for source, point in mounts:
        if not source.startswith("/dev/"):
            continue
        try:
            if os.stat(source).st_rdev in devices:
                return point.replace("\\040", " ")
        except OSError:
            continue
    return None
