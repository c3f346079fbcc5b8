"""ext2/3/4 inside a whole-disk image, in place at the partition's byte offset.

Reads use the pure-Python `ext4` package (no subprocess, image opened read-only). It reads
block-mapped inodes (ext2/3, files written by e2cp) and inline_data wrongly or not at all, so such
inodes, and filesystems it cannot open, are read through debugfs instead.

Writes run debugfs -w on 'IMAGE?offset=N', one process per batch of commands. debugfs does not
stop or fail on errors, so every batch is checked (stderr) and its result verified by reading it
back; a failed write is undone (partial file and created directories removed). A file that already
exists is replaced in two steps: the new content is written under a temporary name first (that is
the step that can run out of space), then swapped in with rm + ln + unlink, which allocate nothing.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import posixpath
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import ext4

from ..errors import FilesystemError, from_oserror
from . import e2fsprogs, lock
from .base import (
    Entry,
    NoSpaceError,
    NotFoundError,
    SymlinkInPath,
    check_geometry,
    check_mode,
    check_owner,
    check_writable,
    components,
    join,
    normalize,
    type_from_mode,
)
from .e2fsprogs import Command, Inode

if TYPE_CHECKING:  # an annotation only: a reader passes the image it already has open
    from ..image.source import ImageSource

_EXTENTS_FL = 0x80000
_INLINE_DATA_FL = 0x10000000
_INCOMPAT_RECOVER = 0x4
_INCOMPAT_64BIT = 0x80


class _Unsupported(Exception):
    """The ext4 package cannot read this inode correctly; use debugfs."""


# What the ext4 package raises on structures it cannot parse (it reads untrusted bytes): those
# fall back to debugfs. Anything else (AttributeError, TypeError, ...) is a bug and propagates.
_PACKAGE_ERRORS = (
    _Unsupported,
    ext4.ChecksumError,
    ext4.ExtendedAttributeError,
    ext4.InodeError,
    ext4.InvalidStreamException,
    ext4.MagicError,
    struct.error,
    ValueError,
    IndexError,
    KeyError,
    EOFError,
    OverflowError,
    # a zeroed group descriptor table fails the package's own asserts (its root inode is of no
    # known type), and an extent far past the filesystem a seek (EINVAL): debugfs says which
    AssertionError,
    OSError,
)


class Ext4Filesystem:
    """One ext2/3/4 filesystem at a byte offset inside an image file or block device."""

    def __init__(
        self,
        image_path: str | os.PathLike,
        offset: int,
        size: int | None = None,
        *,
        writable: bool = False,
        label: str | None = None,
        source: ImageSource | None = None,
    ):
        """`size` is the partition's size in bytes (None: up to the end of the image); a
        filesystem that claims more is refused for writing, since debugfs would write past it.
        `source`: the image already open, read through instead of opening it again (a unit's
        overlay when the delta touches this partition)."""
        self.image_path = os.fspath(image_path)
        self.offset = offset
        self.writable = writable
        self.label = label or f"ext4 filesystem at offset {offset}"
        self._private: str | None = None
        self._lock: tuple[int, int] | None = None
        self._source = source
        self._overlay = source.overlay if source is not None else None
        self._size = size
        if writable and self._overlay is not None:
            raise FilesystemError(f"{self.label}: a unit delta is read-only; materialize it to write")
        if writable:
            check_writable(self.image_path)
            check_geometry(self.image_path, offset, size, self.label)
            self._lock = lock.acquire(self.image_path)
        self._device = (
            None
            if self._overlay is not None
            else e2fsprogs.device(self.image_path, offset, self.label, self._private_dir)
        )
        self._file: io.BufferedReader | None = None
        self._vol: ext4.Volume | None = None
        try:
            self._open_volume()
        except BaseException:
            self.close()
            raise

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._vol = None
        if self._private:
            import shutil  # a private directory is made only for writes and debugfs reads

            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None
        if self._lock is not None:
            lock.release(self._lock)
            self._lock = None

    def __enter__(self) -> Ext4Filesystem:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _private_dir(self) -> str:
        """A 0700 directory for staged data and the image alias, removed by close()."""
        if self._private is None:
            import tempfile  # not at the top: reads through the ext4 package need none (verify)

            self._private = tempfile.mkdtemp(prefix="imagetools-")
        return self._private

    @property
    def device(self) -> e2fsprogs.Device:
        """debugfs's device; for an overlay, the partition materialized (0600, in our 0700
        directory) the first time debugfs has to read what the ext4 package cannot."""
        if self._device is None:
            assert self._overlay is not None  # only an overlay has no device of its own
            part = os.path.join(self._private_dir(), "partition")
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                end = self._overlay.size if self._size is None else self.offset + self._size
                self._overlay.copy_range(self.offset, end, fd)
            finally:
                os.close(fd)
            self._device = e2fsprogs.device(part, 0, self.label, self._private_dir)
        return self._device

    def _open_volume(self) -> None:
        if self._file is not None:
            self._file.close()
        self._children: dict[tuple[int, bytes], object] = {}  # of this reader only: debugfs reopens it
        try:
            self._file = self._source.reader() if self._source is not None else open(self.image_path, "rb")  # noqa: SIM115 - kept open for the Volume
        except OSError as exc:
            raise from_oserror(exc, f"cannot open image {self.image_path}", FilesystemError) from exc
        try:
            self._vol = ext4.Volume(self._file, offset=self.offset)
        except _PACKAGE_ERRORS:  # the package refuses some feature sets: debugfs reads those
            self._vol = None

    # -- reading ----------------------------------------------------------------------------
    def stat(self, path: str) -> Entry:
        return self._read_op(self._pkg_stat, self._dbg_stat, normalize(path))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except NotFoundError:
            return False
        return True

    def list(self, path: str) -> list[Entry]:
        return self._read_op(self._pkg_list, self._dbg_list, normalize(path))

    def read(self, path: str) -> bytes:
        return self._read_op(self._pkg_read, self._dbg_read, normalize(path))

    def readlink(self, path: str) -> str:
        entry = self.stat(path)
        if entry.type != "symlink":
            raise FilesystemError(f"{entry.path} is not a symbolic link in {self.label}")
        return entry.target or ""

    def _read_op(self, pkg, dbg, path: str):
        if self._vol is not None:
            try:
                return pkg(path)
            except _PACKAGE_ERRORS:
                pass
        return dbg(path)

    # ext4 package
    @property
    def _pkg_vol(self) -> ext4.Volume:
        """The package's volume: _read_op calls the _pkg_ readers only when it opened one."""
        assert self._vol is not None
        return self._vol

    def _pkg_lookup(self, path: str):
        parts = components(path)
        inode = self._pkg_vol.root
        here = "/"
        for i, name in enumerate(parts):
            if isinstance(inode, ext4.SymbolicLink):
                raise SymlinkInPath(here, self._pkg_target(inode), "/".join(parts[i:]))
            if not isinstance(inode, ext4.Directory):
                raise FilesystemError(f"{here} is not a directory in {self.label}")
            inode = self._pkg_child(inode, name, here)
            here = join(here, name)
        return inode

    def _pkg_child(self, directory, name: str, here: str):
        """The entry `name` of directory, remembered: a write, then its read-back and the checks
        look up the same few directories again (each scan costs more than a debugfs command)."""
        wanted = name.encode("utf-8", "surrogateescape")
        key = (int(directory.i_no), wanted)
        if key not in self._children:
            _check_readable(directory)
            self._children[key] = next(
                (
                    self._pkg_vol.inodes[int(dirent.inode)]
                    for dirent, _ in directory.opendir()
                    if dirent.name_bytes == wanted
                ),
                None,
            )
        if self._children[key] is None:
            raise NotFoundError(f"{join(here, name)} does not exist in {self.label}")
        return self._children[key]

    def _pkg_entry(self, path: str, inode) -> Entry:
        mode = int(inode.i_mode)
        linux2 = inode.osd2.linux2
        kind = type_from_mode(mode)
        return Entry(
            path=path,
            name=posixpath.basename(path) or "/",
            type=kind,
            mode=mode & 0o7777,
            uid=int(inode.i_uid) | int(linux2.l_i_uid_high) << 16,
            gid=int(inode.i_gid) | int(linux2.l_i_gid_high) << 16,
            size=int(inode.i_size),
            target=self._pkg_target(inode) if kind == "symlink" else None,
        )

    def _pkg_target(self, inode) -> str:
        _check_readable(inode)
        return bytes(inode.readlink()).decode("utf-8", "surrogateescape")

    def _pkg_stat(self, path: str) -> Entry:
        return self._pkg_entry(path, self._pkg_lookup(path))

    def _pkg_list(self, path: str) -> builtins.list[Entry]:
        inode = self._pkg_lookup(path)
        if not isinstance(inode, ext4.Directory):
            raise FilesystemError(f"{path} is not a directory in {self.label}")
        _check_readable(inode)
        entries = []
        for dirent, _ in inode.opendir():
            name = bytes(dirent.name_bytes).decode("utf-8", "surrogateescape")
            if name in (".", ".."):
                continue
            entries.append(self._pkg_entry(join(path, name), self._pkg_vol.inodes[int(dirent.inode)]))
        return sorted(entries, key=lambda e: e.name)

    def _pkg_read(self, path: str) -> bytes:
        inode = self._pkg_lookup(path)
        _require_file(self._pkg_entry(path, inode), self.label)
        _check_readable(inode)
        data = inode.open().read()
        if len(data) != int(inode.i_size):
            raise _Unsupported("short read")
        return data

    # debugfs (read-only)
    def _dbg_walk(self, path: str) -> Entry:
        """Stat every prefix of path in one debugfs run; return the final entry (not followed)."""
        prefixes = ["/"]
        for name in components(path):
            prefixes.append(join(prefixes[-1], name))
        commands = [self._cmd("stat", p) for p in prefixes]
        result = e2fsprogs.run(self.device, commands)
        sections = result.sections(commands)
        for i, prefix in enumerate(prefixes):
            entry = e2fsprogs.parse_stat(prefix, sections[i])
            if entry is None:
                if i == 0:
                    raise FilesystemError(f"cannot read {self.label}: {'; '.join(result.errors[:2])}")
                raise NotFoundError(f"{prefix} does not exist in {self.label}")
            if i == len(prefixes) - 1:
                return self._dbg_with_target(entry)
            if entry.type == "symlink":
                entry = self._dbg_with_target(entry)
                rest = path[len(prefix) :].lstrip("/")
                raise SymlinkInPath(prefix, entry.target or "", rest)
            if entry.type != "dir":
                raise FilesystemError(f"{prefix} is not a directory in {self.label}")
        raise AssertionError("unreachable")

    def _dbg_with_target(self, entry: Entry) -> Entry:
        if entry.type != "symlink" or entry.target is not None:
            return entry
        ref = Inode(entry.inode) if entry.inode else entry.path
        result = e2fsprogs.request(self.device, self._cmd("cat", ref))
        target = result.stdout.decode("utf-8", "surrogateescape")
        return Entry(**{**entry.__dict__, "target": target})

    def _dbg_stat(self, path: str) -> Entry:
        return self._dbg_walk(path)

    def _dbg_list(self, path: str) -> builtins.list[Entry]:
        entry = self._dbg_walk(path)
        if entry.type != "dir":
            raise FilesystemError(f"{path} is not a directory in {self.label}")
        ls = [self._cmd("ls", "-p", path)]
        listing = e2fsprogs.parse_ls(e2fsprogs.run(self.device, ls).sections(ls)[0])
        if listing.garbled:
            raise FilesystemError(
                f"{path} in {self.label} holds a name with a line break, which debugfs cannot list unambiguously"
            )
        # by inode number: the names come from the image and need not be addressable
        commands = [self._cmd("stat", Inode(ino)) for ino, _, _ in listing.rows]
        sections = e2fsprogs.run(self.device, commands).sections(commands) if commands else []
        entries = []
        for (_, _, name), section in zip(listing.rows, sections):
            child = e2fsprogs.parse_stat(join(path, name), section)
            if child is not None:
                entries.append(self._dbg_with_target(child))
        return sorted(entries, key=lambda e: e.name)

    def _dbg_read(self, path: str) -> bytes:
        entry = self._dbg_walk(path)
        _require_file(entry, self.label)
        result = e2fsprogs.request(self.device, self._cmd("cat", path))
        # debugfs 1.47 `cat` pads small inline_data files to the 60-byte i_block: trust the size
        if result.errors or len(result.stdout) < entry.size:
            raise FilesystemError(f"cannot read {path} in {self.label}: {'; '.join(result.errors) or 'short read'}")
        return result.stdout[: entry.size]

    # -- writing ----------------------------------------------------------------------------
    def write(
        self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0, parents: bool = False
    ) -> None:
        """Create or replace a regular file with exactly this content, mode and owner."""
        self._require_writable()
        path = normalize(path)
        check_mode(mode), check_owner(uid, "uid"), check_owner(gid, "gid")
        if path == "/":
            raise FilesystemError(f"/ is a directory in {self.label}")
        parent, name = posixpath.split(path)
        missing = self._missing_dirs(parent, parents)
        existing = None if missing else self._stat_or_none(path)
        if existing is not None and existing.type == "dir":
            raise FilesystemError(f"{path} is a directory in {self.label}")
        self._check_space(len(data), len(missing))
        with self._staged(data) as source:
            if existing is None:
                self._run_or_undo(
                    self._mkdirs(missing) + self._put(source, path, mode, uid, gid), f"write {path}", [path], missing
                )
            else:
                tmp = join(parent, f".imagetools-new-{os.getpid()}")
                stale = [self._cmd("rm", tmp)] if self._stat_or_none(tmp) else []
                self._run_or_undo(stale + self._put(source, tmp, mode, uid, gid), f"write {path}", [tmp], [])
                swap = [self._cmd("rm", path), self._cmd("ln", tmp, path), self._cmd("unlink", tmp)]
                self._run_or_raise(swap, f"replace {path} (new content kept as {tmp})")
        self._verify(path, "file", mode, uid, gid, data)

    def mkdir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, parents: bool = False) -> None:
        """Create a directory. With parents, like `install -d`: missing parents are created 0755
        root-owned, and an existing directory is given the requested mode and owner."""
        self._require_writable()
        path = normalize(path)
        check_mode(mode), check_owner(uid, "uid"), check_owner(gid, "gid")
        existing = self._stat_or_none(path)
        if existing is not None:
            if existing.type != "dir":
                raise FilesystemError(f"{path} exists and is not a directory in {self.label}")
            if not parents:
                raise FilesystemError(f"{path} already exists in {self.label}")
            if (existing.mode, existing.uid, existing.gid) != (mode, uid, gid):
                self._run_or_raise(self._attrs(path, 0o040000 | mode, uid, gid), f"set attributes of {path}")
        else:
            missing = self._missing_dirs(posixpath.dirname(path), parents)
            self._check_space(0, len(missing) + 1)
            commands = self._mkdirs(missing) + [self._cmd("mkdir", path)] + self._attrs(path, 0o040000 | mode, uid, gid)
            self._run_or_undo(commands, f"create directory {path}", [], missing + [path])
        self._verify(path, "dir", mode, uid, gid, None)

    def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file or symlink, an empty directory, or with recursive a whole tree."""
        self._require_writable()
        path = normalize(path)
        if path == "/":
            raise FilesystemError(f"refusing to remove the root directory of {self.label}")
        entry = self.stat(path)
        if entry.type == "dir":
            if not recursive and self.list(path):
                raise FilesystemError(f"{path} is a non-empty directory in {self.label} (use -r)")
            commands = self._rm_tree(path)
        else:
            commands = [self._cmd("rm", path)]
        self._run_or_raise(commands, f"remove {path}")
        if self.exists(path):
            raise FilesystemError(f"debugfs did not remove {path} in {self.label}")

    def _rm_tree(self, path: str) -> builtins.list[Command]:
        """Every command of the removal, built (and so checked) before any of them runs."""
        commands: builtins.list[Command] = []
        for child in self.list(path):
            if child.type == "dir":
                commands += self._rm_tree(child.path)
            else:
                commands.append(self._cmd("rm", child.path))
        return commands + [self._cmd("rmdir", path)]

    # helpers
    def _require_writable(self) -> None:
        if not self.writable:
            raise FilesystemError(f"{self.label} was opened read-only")
        if self._vol is not None and int(self._vol.superblock.s_feature_incompat) & _INCOMPAT_RECOVER:
            # the kernel would replay the journal over our changes at the first mount
            raise FilesystemError(
                f"{self.label} has a journal that was never replayed (the image was "
                "taken from a running system): run e2fsck -fy on it first"
            )

    def _stat_or_none(self, path: str) -> Entry | None:
        try:
            return self.stat(path)
        except NotFoundError:
            return None

    def _missing_dirs(self, directory: str, parents: bool) -> builtins.list[str]:
        """Directories to create (outermost first) so that `directory` exists."""
        missing: list[str] = []
        here = "/"
        for name in components(directory):
            here = join(here, name)
            entry = None if missing else self._stat_or_none(here)
            if entry is None:
                if not parents:
                    raise NotFoundError(
                        f"directory {here} does not exist in {self.label} (use -p to create missing parent directories)"
                    )
                missing.append(here)
            elif entry.type == "symlink":
                raise SymlinkInPath(here, entry.target or "", directory[len(here) :].lstrip("/"))
            elif entry.type != "dir":
                raise FilesystemError(f"{here} exists and is not a directory in {self.label}")
        return missing

    def _check_space(self, nbytes: int, new_dirs: int) -> None:
        """Refuse up front what cannot fit, so a full partition is left exactly as it was."""
        if self._vol is None:
            return  # debugfs will report it; the partial file is then removed
        sb = self._vol.superblock
        bs = self._vol.block_size
        free = int(sb.s_free_blocks_count_lo)
        if int(sb.s_feature_incompat) & _INCOMPAT_64BIT:
            free |= int(sb.s_free_blocks_count_hi) << 32
        blocks = -(-nbytes // bs)
        need = blocks + blocks // 300 + new_dirs + 2  # data, extent blocks, dirs, a directory block
        if free < need:
            raise NoSpaceError(
                f"no space left in {self.label}: {nbytes} bytes need about {need} "
                f"blocks of {bs} bytes, {free} are free; nothing was changed"
            )
        if int(sb.s_free_inodes_count) < new_dirs + 1:
            raise NoSpaceError(f"no free inodes left in {self.label}; nothing was changed")

    @contextlib.contextmanager
    def _staged(self, data: bytes) -> Iterator[str]:
        """The data in a 0600 file inside our 0700 directory, for debugfs `write`; then deleted."""
        path = os.path.join(self._private_dir(), f"data-{os.urandom(6).hex()}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            yield path
        finally:
            Path(path).unlink(missing_ok=True)

    def _cmd(self, verb: str, *args: str | int | Inode) -> Command:
        return e2fsprogs.command(verb, *args, where=self.label)

    def _attrs(self, path: str, full_mode: int, uid: int, gid: int) -> builtins.list[Command]:
        return [
            self._cmd("sif", path, "mode", full_mode),
            self._cmd("sif", path, "uid", uid),
            self._cmd("sif", path, "gid", gid),
        ]

    def _mkdirs(self, paths: builtins.list[str]) -> builtins.list[Command]:
        """Parents created by -p: 0755 root:root, like `install -D` / `mkdir -p`."""
        commands: builtins.list[Command] = []
        for p in paths:
            commands += [self._cmd("mkdir", p)] + self._attrs(p, 0o040755, 0, 0)
        return commands

    def _put(self, source: str, path: str, mode: int, uid: int, gid: int) -> builtins.list[Command]:
        # `write` copies the staging file's mode (0600); set the real one explicitly.
        return [self._cmd("write", source, path)] + self._attrs(path, 0o100000 | mode, uid, gid)

    def _run(self, commands: builtins.list[Command]) -> e2fsprogs.Result:
        try:
            return e2fsprogs.run(self.device, commands, write=True)
        finally:
            self._open_volume()  # debugfs changed the image under our cached reader

    def _run_or_raise(self, commands: builtins.list[Command], what: str) -> None:
        result = self._run(commands)
        if result.errors:
            raise self._failure(what, result)

    def _run_or_undo(
        self, commands: builtins.list[Command], what: str, files: builtins.list[str], dirs: builtins.list[str]
    ) -> None:
        """Run; on any error remove what this batch may have created, then raise."""
        result = self._run(commands)
        if not result.errors:
            return
        undo = [self._cmd("rm", f) for f in files if self._exists_quietly(f)]
        undo += [self._cmd("rmdir", d) for d in reversed(dirs) if self._exists_quietly(d)]
        if undo:
            cleanup = self._run(undo)
            if cleanup.errors:
                raise FilesystemError(
                    f"could not {what} in {self.label} ({result.errors[0]}), and "
                    f"undoing it failed too ({cleanup.errors[0]}): run e2fsck"
                )
        raise self._failure(what, result)

    def _exists_quietly(self, path: str) -> bool:
        try:
            return self.exists(path)
        except FilesystemError:
            return False

    def _failure(self, what: str, result: e2fsprogs.Result) -> FilesystemError:
        if result.no_space:
            return NoSpaceError(f"no space left in {self.label}: could not {what}; nothing was changed")
        return FilesystemError(f"could not {what} in {self.label}: {result.errors[0]}")

    def _verify(self, path: str, kind: str, mode: int, uid: int, gid: int, data: bytes | None) -> None:
        entry = self.stat(path)
        got = (entry.type, entry.mode, entry.uid, entry.gid)
        if got != (kind, mode, uid, gid) or (data is not None and self.read(path) != data):
            raise FilesystemError(
                f"{path} in {self.label} did not come out as written "
                f"(got {entry.type} {entry.mode:04o} {entry.uid}:{entry.gid})"
            )


def _check_readable(inode) -> None:
    """The ext4 package reads i_block as data unless the inode uses extents: only right when the
    inode really keeps its data there (fast symlink, empty file)."""
    flags = int(inode.i_flags)
    if flags & _INLINE_DATA_FL:
        raise _Unsupported("inline_data")
    if flags & _EXTENTS_FL:
        return
    if int(inode.i_size) == 0:
        return
    if isinstance(inode, ext4.SymbolicLink) and int(inode.i_size) < 60 and int(inode.i_blocks_lo) == 0:
        return
    raise _Unsupported("block-mapped inode")


def _require_file(entry: Entry, label: str) -> None:
    if entry.type == "dir":
        raise FilesystemError(f"{entry.path} is a directory in {label}")
    if entry.type != "file":
        raise FilesystemError(f"{entry.path} is not a regular file in {label} ({entry.type})")
