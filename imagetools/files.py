"""Files inside whole-disk images, by device path: list, read, install, mkdir, remove.

The library behind `imagetools ls/cat/cp/install/rm`. Paths are device paths (`/data/mender/x`,
`/etc/hostname`, `/uboot/config.txt`) routed to partitions by imagetools.paths, or partition
paths with `partition=N`. Symbolic links are followed across partitions where the device would
follow them (reading `/var/lib/mender/x` on the rootfs reads `/data/mender/x`).

backend="native" edits partitions in place; backend="mender-artifact" runs the reference tool.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import paths
from .errors import FilesystemError, UsageError
from .fs import NONE, Entry, NotFoundError, SymlinkInPath
from .fs.base import components, join, normalize
from .layout import PartInfo
from .mender import BACKENDS, MENDER_ARTIFACT, NATIVE
from .session import ImageSession

if TYPE_CHECKING:
    from .backends.mender_artifact import MenderArtifact

MAX_LINKS = 40


@dataclass
class Listing:
    where: str  # "/etc on partition 2 (ext4, rootfs-a)"
    entry: Entry  # the listed path itself
    entries: list[Entry]  # its contents (a directory) or just itself


@dataclass
class Read:
    where: str
    data: bytes
    entry: Entry | None  # None with the mender-artifact backend


@dataclass
class Change:
    where: list[str] = field(default_factory=list)  # what was written/removed, one per partition
    warnings: list[str] = field(default_factory=list)


class _Session(ImageSession):
    """An image session with the file commands' path resolution: links followed within and
    across partitions, as the device would (rootfs `rootfs` at /)."""

    def __init__(
        self, image: str | os.PathLike, overrides: dict[str, int] | None, rootfs: str = "a", *, writing: bool = False
    ):
        super().__init__(image, overrides=overrides, writing=writing)
        self.rootfs = rootfs

    def follow(self, loc: paths.Location, link: str, target: str, rest: str) -> paths.Location:
        return paths.follow(self.layout, loc, link, target, rest, rootfs=self.rootfs)

    def resolve(self, loc: paths.Location, *, follow_final: bool) -> tuple[paths.Location, Entry]:
        """Follow links (within and across partitions) until the path's own entry is reached."""
        for _ in range(MAX_LINKS):
            try:
                entry = self.filesystem(loc.part).stat(loc.path)
            except SymlinkInPath as link:
                loc = self.follow(loc, link.link, link.target, link.rest)
                continue
            except NotFoundError as exc:
                if loc.outer() == loc.path:
                    raise
                raise NotFoundError(f"{loc.outer()}: {exc}") from exc
            if follow_final and entry.type == "symlink":
                loc = self.follow(loc, loc.path, entry.target or "", "")
                continue
            return loc, entry
        raise FilesystemError(f"{loc.outer()}: too many levels of symbolic links")

    def resolve_parent(self, loc: paths.Location, *, follow_final: bool) -> paths.Location:
        """Follow links in the existing directories of a path that is about to be written or
        removed; the missing tail is left for the write (-p) to create. A link from another
        partition into the root filesystem is refused: that path exists twice (A and B)."""
        for _ in range(MAX_LINKS):
            fs = self.filesystem(loc.part)
            names = components(loc.path)
            here, redirected = "/", None
            for i, name in enumerate(names):
                here = join(here, name)
                last = i == len(names) - 1
                try:
                    entry = fs.stat(here)
                except NotFoundError:
                    break
                if entry.type == "symlink" and (follow_final or not last):
                    redirected = self.follow(loc, here, entry.target or "", "/".join(names[i + 1 :]))
                    break
                if entry.type != "dir":
                    break
            if redirected is None:
                return loc
            if _crosses_into_rootfs(loc, redirected):
                raise FilesystemError(
                    f"{loc.outer(here)} is a link to {entry.target} on the root "
                    "filesystem, which exists twice (A and B): address it directly"
                )
            loc = redirected
        raise FilesystemError(f"{loc.outer()}: too many levels of symbolic links")


def _crosses_into_rootfs(old: paths.Location, new: paths.Location) -> bool:
    return old.part.role not in paths.ROOTFS_ROLES and new.part.role in paths.ROOTFS_ROLES


def _has_files(part: PartInfo) -> bool:
    return part.caps != NONE  # a filesystem imagetools reads


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: choose {' or '.join(BACKENDS)}")


def _through_peer(
    session: _Session, partition: int | None, path: str, change: Change, action: Callable[[MenderArtifact], None]
) -> Change:
    """Run one change through the mender-artifact binary and record it."""
    with _peer(session, partition) as peer:
        action(peer)
    change.where.append(f"{normalize(path)} (via mender-artifact)")
    return change


def _peer(session: _Session, partition: int | None):
    from .backends.mender_artifact import MenderArtifact, check_layout

    if partition is not None:
        raise UsageError("--partition works with --backend native only (mender-artifact addresses partitions by path)")
    check_layout(session.layout)
    return MenderArtifact(session.path)


# -- reading ------------------------------------------------------------------------------------
def list_path(
    image: str | os.PathLike,
    path: str,
    *,
    follow: bool = True,
    partition: int | None = None,
    rootfs: str = "a",
    overrides: dict[str, int] | None = None,
) -> Listing:
    """Entries of a directory (or the entry of a file). A final symlink is followed unless
    follow=False (then the link itself is listed, like `ls -l link`)."""
    with _Session(image, overrides, rootfs) as s:
        loc = paths.route(s.layout, path, partition=partition, rootfs=rootfs)[0]
        loc, entry = s.resolve(loc, follow_final=follow)
        entries = s.filesystem(loc.part).list(loc.path) if entry.type == "dir" else [entry]
        return Listing(loc.describe(), entry, entries)


def read_path(
    image: str | os.PathLike,
    path: str,
    *,
    backend: str = NATIVE,
    partition: int | None = None,
    rootfs: str = "a",
    overrides: dict[str, int] | None = None,
) -> Read:
    """A file's content (and entry: mode, owner) from the image; links are followed."""
    _check_backend(backend)
    with _Session(image, overrides, rootfs) as s:
        if backend == MENDER_ARTIFACT:
            if rootfs != "a":
                raise UsageError("mender-artifact reads the root filesystem from rootfs A only")
            with _peer(s, partition) as peer:
                return Read(f"{path} (via mender-artifact)", peer.cat(path), None)
        loc = paths.route(s.layout, path, partition=partition, rootfs=rootfs)[0]
        loc, entry = s.resolve(loc, follow_final=True)
        return Read(loc.describe(), s.filesystem(loc.part).read(loc.path), entry)


# -- writing ------------------------------------------------------------------------------------
def _write_targets(
    s: _Session, path: str, partition: int | None, *, follow_final: bool, change: Change
) -> list[paths.Location]:
    """Where a write lands: rootfs paths on A and B (B skipped when it has no filesystem), after
    following links; if A's path leads out of the rootfs (e.g. into /data), only there."""
    locs = paths.route(s.layout, path, partition=partition, write=True)
    usable = []
    for loc in locs:
        if _has_files(loc.part):
            usable.append(loc)
        elif len(locs) > 1:
            change.warnings.append(
                f"skipped partition {loc.part.partition.number} ({loc.part.role}): it has no filesystem"
            )
        else:
            loc.part.open(s.path)  # raises the clear "no filesystem" error
    targets: list[paths.Location] = []
    for loc in usable:
        resolved = s.resolve_parent(loc, follow_final=follow_final)
        if resolved.part.role not in paths.ROOTFS_ROLES and loc.part.role in paths.ROOTFS_ROLES:
            return [resolved]  # the rootfs path is a link into another partition
        if all((t.part.partition.number, t.path) != (resolved.part.partition.number, resolved.path) for t in targets):
            targets.append(resolved)
    return targets


def _check_parent(s: _Session, loc: paths.Location, parents: bool) -> None:
    """Before anything is written: the parent directory exists (or -p), with a hint for an empty
    rootfs B."""
    if parents:
        return
    parent = posixpath.dirname(loc.path)
    fs = s.filesystem(loc.part)
    try:
        entry = fs.stat(parent)
    except NotFoundError as exc:
        hint = ""
        if loc.part.role == "rootfs-b" and {e.name for e in fs.list("/")} <= {"lost+found"}:
            hint = (
                " — rootfs B is empty: use -p to create the directories there too, or "
                f"--partition {s.layout.require('rootfs-a').partition.number} to write rootfs A only"
            )
        raise NotFoundError(
            f"{loc.outer(parent)}: directory does not exist on partition "
            f"{loc.part.partition.number} ({loc.part.role}); use -p to create it{hint}"
        ) from exc
    if entry.type != "dir":
        raise FilesystemError(f"{loc.outer(parent)} is not a directory")


def install(
    image: str | os.PathLike,
    path: str,
    data: bytes,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    parents: bool = False,
    backend: str = NATIVE,
    partition: int | None = None,
    overrides: dict[str, int] | None = None,
) -> Change:
    """Write a file (created or replaced) with mode and owner; a rootfs path goes to A and B."""
    _check_backend(backend)
    change = Change()
    with _Session(image, overrides, writing=True) as s:
        if backend == MENDER_ARTIFACT:
            return _through_peer(
                s,
                partition,
                path,
                change,
                lambda peer: peer.install(path, data, mode, uid=uid, gid=gid, parents=parents),
            )
        targets = _write_targets(s, path, partition, follow_final=True, change=change)
        for loc in targets:
            _check_parent(s, loc, parents)
            if not loc.part.caps.owner_mode and (mode not in (0o644, 0o755) or uid or gid):
                change.warnings.append(
                    f"{loc.describe()}: FAT stores no permissions or owner; "
                    f"mode {mode:04o} and owner {uid}:{gid} not applied"
                )
        for loc in targets:
            s.filesystem(loc.part).write(loc.path, data, mode=mode, uid=uid, gid=gid, parents=parents)
            change.where.append(loc.describe())
    return change


def make_dir(
    image: str | os.PathLike,
    path: str,
    *,
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    backend: str = NATIVE,
    partition: int | None = None,
    overrides: dict[str, int] | None = None,
) -> Change:
    """`install -d`: create a directory and any missing parents (as GNU install and
    mender-artifact do), or set mode/owner of an existing one."""
    _check_backend(backend)
    change = Change()
    with _Session(image, overrides, writing=True) as s:
        if backend == MENDER_ARTIFACT:
            if uid or gid or mode != 0o755:
                raise UsageError(
                    "mender-artifact creates directories 0755 root:root only: use --backend native for -m/-o/-g"
                )
            return _through_peer(s, partition, path, change, lambda peer: peer.mkdir(path))
        targets = _write_targets(s, path, partition, follow_final=True, change=change)
        for loc in targets:
            s.filesystem(loc.part).mkdir(loc.path, mode=mode, uid=uid, gid=gid, parents=True)
            change.where.append(loc.describe())
    return change


def remove(
    image: str | os.PathLike,
    path: str,
    *,
    recursive: bool = False,
    backend: str = NATIVE,
    partition: int | None = None,
    overrides: dict[str, int] | None = None,
) -> Change:
    """Remove a file, link or (recursive) directory; a rootfs path from A and B where present."""
    _check_backend(backend)
    change = Change()
    with _Session(image, overrides, writing=True) as s:
        if backend == MENDER_ARTIFACT:
            return _through_peer(s, partition, path, change, lambda peer: peer.remove(path, recursive))
        targets = _write_targets(s, path, partition, follow_final=False, change=change)
        present = [loc for loc in targets if s.filesystem(loc.part).exists(loc.path)]
        if not present:
            raise NotFoundError(
                f"{normalize(path)}: not found on " + ", ".join(f"partition {t.part.partition.number}" for t in targets)
            )
        for loc in targets:
            if loc not in present:
                change.warnings.append(f"{loc.describe()}: not present, nothing to remove there")
        for loc in present:
            entry = s.filesystem(loc.part).stat(loc.path)
            if entry.type == "dir" and not recursive and s.filesystem(loc.part).list(loc.path):
                raise FilesystemError(f"{loc.outer()} is a non-empty directory (use -r)")
        for loc in present:
            s.filesystem(loc.part).remove(loc.path, recursive=recursive)
            change.where.append(loc.describe())
    return change
