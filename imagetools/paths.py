"""`IMAGE:/path` addressing, compatible with mender-artifact, and routing to partitions.

mender-artifact's rules: `/data/...` is the data partition (path below /data), `/uboot`,
`/boot/efi` and `/boot/grub` are the boot partition, everything else is the root filesystem:
written to rootfs A *and* B, read from A. We add `--partition N` (any partition by number) and
`--rootfs b` (read from B).

Image file names may contain ':' (mender-artifact and e2tools split at the first one; we do not
use e2tools): the split is made at the first ':/' whose left side is an existing file, so
`my:disk.sdimg:/data/x` works.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import LayoutError, UsageError
from .fs.base import normalize
from .mender import BOOT_MOUNTS, DATA_MOUNT

if TYPE_CHECKING:
    from .layout import Layout, PartInfo

BOOT_PREFIXES = BOOT_MOUNTS
DATA_PREFIX = DATA_MOUNT
ROOTFS_ROLES = ("rootfs-a", "rootfs-b")


@dataclass(frozen=True)
class ImagePath:
    image: str  # the image file (or block device)
    path: str  # absolute path as seen on the running device, e.g. /data/mender/x

    def __str__(self) -> str:
        return f"{self.image}:{self.path}"


def _is_image_file(candidate: str) -> bool:
    try:
        mode = os.stat(candidate).st_mode
    except (OSError, ValueError):  # ValueError: NUL or an unencodable character in the name
        return False
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode)


def parse_image_path(text: str) -> ImagePath | None:
    """ImagePath for 'IMAGE:/path', None for anything else (a host path).

    'IMAGE:relative' with an existing IMAGE is a UsageError: paths inside images are absolute."""
    if _is_image_file(text):
        return None  # an existing host file whose name happens to contain ':/'
    splits = [i for i in range(len(text) - 1) if text[i] == ":" and text[i + 1] == "/"]
    for i in splits:
        if _is_image_file(text[:i]):
            return ImagePath(text[:i], normalize(text[i + 1 :]))
    head, sep, tail = text.rpartition(":")
    if sep and head and _is_image_file(head):
        raise UsageError(f"path inside the image must be absolute: {text!r} (write {head}:/{tail})")
    if splits:
        return ImagePath(text[: splits[0]], normalize(text[splits[0] + 1 :]))
    return None


def require_image_path(text: str) -> ImagePath:
    """Parse an argument that must be IMAGE:/path; say what is wrong otherwise."""
    parsed = parse_image_path(text)
    if parsed is None:
        raise UsageError(f"expected IMAGE:/path, got {text!r} (e.g. disk.sdimg:/data/mender/key)")
    if not os.path.exists(parsed.image):
        raise UsageError(f"image not found: {parsed.image}")
    return parsed


@dataclass(frozen=True)
class Location:
    """A path inside one partition, and where that partition appears on the device."""

    part: PartInfo
    path: str  # inside the partition
    mount: str  # "/", "/data", "/uboot", ... ; "" when addressed by number with no known place

    def outer(self, inner: str | None = None) -> str:
        """The device-side path of `inner` (default: self.path)."""
        inner = self.path if inner is None else inner
        if not self.mount:
            return inner
        return normalize(posixpath.join(self.mount, inner.lstrip("/")))

    def describe(self) -> str:
        role = f", {self.part.role}" if self.part.role else ""
        return f"{self.path} on partition {self.part.partition.number} ({self.part.fs.type}{role})"


def mount_of(part: PartInfo) -> str:
    """Where a partition with this role is mounted on a Mender device ('' if not known)."""
    if part.role in ROOTFS_ROLES:
        return "/"
    if part.role == "data":
        return DATA_PREFIX
    return ""


def route(
    layout: Layout,
    path: str,
    *,
    partition: int | None = None,
    rootfs: str = "a",
    write: bool = False,
    same_rootfs: PartInfo | None = None,
) -> list[Location]:
    """Partitions (and inner paths) a device path addresses: two for a rootfs write (A and B).

    same_rootfs pins rootfs paths to one rootfs (used when following a link found on it)."""
    path = normalize(path)
    if partition is not None:
        part = layout.by_number(partition)
        return [Location(part, path, mount_of(part))]
    for prefix in BOOT_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            boot = _require(layout, "boot", path)
            return [Location(boot, path[len(prefix) :] or "/", prefix)]
    if path == DATA_PREFIX or path.startswith(DATA_PREFIX + "/"):
        data = _require(layout, "data", path)
        return [Location(data, path[len(DATA_PREFIX) :] or "/", DATA_PREFIX)]
    if same_rootfs is not None:
        return [Location(same_rootfs, path, "/")]
    if write:
        parts = layout.rootfs
        if not parts:
            _require(layout, "rootfs-a", path)
        return [Location(p, path, "/") for p in parts]
    if rootfs not in ("a", "b"):
        raise UsageError(f"--rootfs must be a or b, not {rootfs!r}")
    return [Location(_require(layout, f"rootfs-{rootfs}", path), path, "/")]


def _require(layout: Layout, role: str, path: str) -> PartInfo:
    try:
        return layout.require(role)
    except LayoutError as exc:
        raise LayoutError(f"{path} lives on the {role} partition: {exc}") from exc


def follow(layout: Layout, loc: Location, link: str, target: str, rest: str, *, rootfs: str = "a") -> Location:
    """Where a symbolic link met at `link` (inside loc's partition) leads, with `rest` appended.

    Absolute targets are device paths (a rootfs link to /data/mender leads to the data
    partition); relative ones are resolved from the link's directory. In a partition addressed
    by number whose place on the device is unknown, links stay inside that partition."""
    if not target:
        raise UsageError(f"{loc.outer(link)} is a symbolic link with an empty target")
    base = "/" if target.startswith("/") else posixpath.dirname(link)
    if not loc.mount:
        return Location(loc.part, normalize(posixpath.join(base, target, rest)), "")
    origin = "/" if target.startswith("/") else loc.outer(base)
    outer = normalize(posixpath.join(origin, target, rest))
    pinned = loc.part if loc.part.role in ROOTFS_ROLES else None
    return route(layout, outer, rootfs=rootfs, same_rootfs=pinned)[0]
