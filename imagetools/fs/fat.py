"""FAT12/16/32 (the boot / EFI system partition) in place, through pyfatfs.

pyfatfs 1.1.0 needs three corrections, all verified with fsck.vfat:
- it decides FAT12 vs FAT16 before it knows the root directory size, so small volumes made by
  mkfs.vfat (8 MiB: 4081 clusters) are treated as FAT16 and corrupted on write -> parse twice;
- it does not always write the FAT back after a removal (FAT12 leaks clusters) -> flush after
  every change; rewriting an existing file in place leaves a bad chain -> remove, then create;
- names are matched case-sensitively while mtools stores `config.txt` as `CONFIG.TXT` with
  lowercase flags -> our own case-insensitive lookup, and names shown as mtools/Linux show them.
FAT has no owners or permission bits: entries report 0:0 and 0755 (dirs) / 0644 (files), and
write/mkdir accept but cannot store mode, uid and gid.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import errno
import os
import posixpath
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fs.base import FS
from pyfatfs.PyFat import PyFat
from pyfatfs.PyFatFS import PyFatFS

from ..errors import FilesystemError
from . import lock
from .base import (
    Entry,
    EntryType,
    NoSpaceError,
    NotFoundError,
    check_geometry,
    check_mode,
    check_owner,
    check_writable,
    components,
    join,
    normalize,
)

if TYPE_CHECKING:  # an annotation only: a reader passes the image it already has open
    from ..image.source import ImageSource

_LOWER_BASE, _LOWER_EXT = 0x08, 0x10


class _PyFat(PyFat):
    def parse_header(self) -> None:
        super().parse_header()
        super().parse_header()  # second pass sees root_dir_sectors: right FAT12/16 decision


class _PyFatFS(PyFatFS):
    """PyFatFS on our corrected PyFat, timestamps in UTC."""

    def __init__(self, filename: str, offset: int, read_only: bool, source: ImageSource | None):  # noqa: D107
        FS.__init__(self)
        self.preserve_case = True
        self.fs = _PyFat(offset=offset, lazy_load=True)
        if read_only and source is not None:
            self.fs.set_fp(source.reader())
        else:
            self.fs.open(filename, read_only=read_only)
        self.tz = datetime.UTC


class FatFilesystem:
    """One FAT filesystem at a byte offset inside an image file."""

    def __init__(
        self,
        image_path: str | os.PathLike,
        offset: int,
        size: int,
        *,
        writable: bool = False,
        label: str | None = None,
        source: ImageSource | None = None,
    ):
        """`source`: the image already open, read through instead of opening it again."""
        self.image_path = os.fspath(image_path)
        self.offset = offset
        self.size = size
        self.writable = writable
        self.label = label or f"FAT filesystem at offset {offset}"
        self._lock: tuple[int, int] | None = None
        self._source = source
        if writable:
            check_writable(self.image_path)
            check_geometry(self.image_path, offset, size, self.label)
            self._lock = lock.acquire(self.image_path)
        self._fs: _PyFatFS | None = None
        try:
            self._fs = self._open(read_only=True)
        except BaseException:
            self.close()
            raise

    def _open(self, read_only: bool) -> _PyFatFS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "not cleanly unmounted" and FAT-type guesses
                return _PyFatFS(self.image_path, self.offset, read_only, self._source)
        except Exception as exc:  # pyfatfs raises its own types, struct errors, ...
            raise FilesystemError(f"cannot open the FAT filesystem of {self.label}: {exc}") from exc

    def close(self) -> None:
        if self._fs is not None:
            with contextlib.suppress(Exception):
                self._fs.close()
            self._fs = None
        if self._lock is not None:
            lock.release(self._lock)
            self._lock = None

    def __enter__(self) -> FatFilesystem:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def _opened(self) -> _PyFatFS:
        """The pyfatfs object, there from __init__ until close()."""
        assert self._fs is not None
        return self._fs

    # -- lookup -----------------------------------------------------------------------------
    def _find(self, path: str):
        """(canonical path, entry) with case-insensitive matching; the root has entry None."""
        entry = None
        canonical = "/"
        for name in components(path):
            directory = entry if entry is not None else self._opened.fs.root_dir
            if entry is not None and not entry.is_directory():
                raise FilesystemError(f"{canonical} is not a directory in {self.label}")
            match = _match(directory, name)
            if match is None:
                raise NotFoundError(f"{join(canonical, name)} does not exist in {self.label}")
            entry = match
            canonical = join(canonical, repr(match))
        return canonical, entry

    def _entry(self, path: str, entry) -> Entry:
        if entry is None:
            return Entry(path="/", name="/", type=EntryType.DIR, mode=0o755, uid=0, gid=0, size=0)
        is_dir = entry.is_directory()
        return Entry(
            path=path,
            name=_display_name(entry),
            type=EntryType.DIR if is_dir else EntryType.FILE,
            mode=0o755 if is_dir else 0o644,
            uid=0,
            gid=0,
            size=0 if is_dir else int(entry.filesize),
        )

    # -- reading ----------------------------------------------------------------------------
    def stat(self, path: str) -> Entry:
        path = normalize(path)
        canonical, entry = self._find(path)
        shown = join(posixpath.dirname(path), _display_name(entry)) if entry is not None else "/"
        return self._entry(shown, entry)

    def exists(self, path: str) -> bool:
        try:
            self._find(normalize(path))
        except NotFoundError:
            return False
        return True

    def list(self, path: str) -> list[Entry]:
        path = normalize(path)
        _, entry = self._find(path)
        directory = entry if entry is not None else self._opened.fs.root_dir
        if entry is not None and not entry.is_directory():
            raise FilesystemError(f"{path} is not a directory in {self.label}")
        dirs, files, _ = directory.get_entries()
        found = [self._entry(join(path, _display_name(e)), e) for e in dirs + files]
        return sorted(found, key=lambda e: e.name)

    def read(self, path: str) -> bytes:
        path = normalize(path)
        canonical, entry = self._find(path)
        if entry is None or entry.is_directory():
            raise FilesystemError(f"{path} is a directory in {self.label}")
        try:
            with self._opened.openbin(canonical, "r") as fh:
                data = fh.read()
        except Exception as exc:
            raise FilesystemError(f"cannot read {path} in {self.label}: {exc}") from exc
        if len(data) != int(entry.filesize):
            raise FilesystemError(f"cannot read {path} in {self.label}: short read")
        return data

    def readlink(self, path: str) -> str:
        raise FilesystemError(f"{normalize(path)} is not a symbolic link ({self.label} is FAT)")

    # -- writing ----------------------------------------------------------------------------
    def write(
        self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0, parents: bool = False
    ) -> None:
        """Create or replace a file (mode/uid/gid cannot be stored on FAT)."""
        path = normalize(path)
        check_mode(mode), check_owner(uid, "uid"), check_owner(gid, "gid")
        parent, name = posixpath.split(path)
        if not name:
            raise FilesystemError(f"/ is a directory in {self.label}")
        self._require_writable()
        base, missing = self._prepare_parent(parent, parents)
        existing = None if missing else _match_path(self, base, name)
        if existing is not None and existing[1].is_directory():
            raise FilesystemError(f"{path} is a directory in {self.label}")
        freed = _clusters(int(existing[1].filesize), self._cluster) if existing else 0
        self._check_space(_clusters(len(data), self._cluster) + len(missing) + 1 - freed)
        target = join(base, name)
        if existing is not None:
            target = join(base, _display_name(existing[1]))  # keep the name as it was shown
        with self._changing():
            self._make_dirs(missing)
            if existing is not None:
                self._opened.remove(existing[0])
            with self._opened.openbin(target, "wb") as fh:
                fh.write(data)
        if self.read(path) != data:
            raise FilesystemError(f"{path} in {self.label} did not read back as written")

    def mkdir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, parents: bool = False) -> None:
        path = normalize(path)
        check_mode(mode), check_owner(uid, "uid"), check_owner(gid, "gid")
        if path == "/" or self.exists(path):
            if self.stat(path).type != "dir":
                raise FilesystemError(f"{path} exists and is not a directory in {self.label}")
            if not parents:
                raise FilesystemError(f"{path} already exists in {self.label}")
            return
        self._require_writable()
        base, missing = self._prepare_parent(posixpath.dirname(path), parents)
        self._check_space(len(missing) + 1)
        with self._changing():
            self._make_dirs(missing + [join(base, posixpath.basename(path))])

    def remove(self, path: str, recursive: bool = False) -> None:
        path = normalize(path)
        if path == "/":
            raise FilesystemError(f"refusing to remove the root directory of {self.label}")
        self._require_writable()
        canonical, entry = self._find(path)
        is_dir = entry.is_directory()
        if is_dir and not recursive and not entry.is_empty():
            raise FilesystemError(f"{path} is a non-empty directory in {self.label} (use -r)")
        with self._changing():
            if is_dir:
                self._opened.removetree(canonical)
            else:
                self._opened.remove(canonical)

    # helpers
    @property
    def _cluster(self) -> int:
        return int(self._opened.fs.bytes_per_cluster)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Reopen read-write for one change, write the FAT back, close cleanly, reopen read-only."""
        self._require_writable()
        self.close()
        self._fs = self._open(read_only=False)
        try:
            yield
            self._opened.fs.flush_fat()
        except FilesystemError:
            raise
        except Exception as exc:
            raise FilesystemError(f"FAT write in {self.label} failed: {exc}") from exc
        finally:
            self.close()
            self._fs = self._open(read_only=True)

    def _require_writable(self) -> None:
        if not self.writable:
            raise FilesystemError(f"{self.label} was opened read-only")

    def _prepare_parent(self, directory: str, parents: bool) -> tuple[str, builtins.list[str]]:
        """Canonical existing part of directory + the missing directories to create."""
        canonical = "/"
        missing: list[str] = []
        for name in components(directory):
            if missing:
                missing.append(join(missing[-1], name))
                continue
            found = _match_path(self, canonical, name)
            if found is None:
                if not parents:
                    raise NotFoundError(
                        f"directory {join(canonical, name)} does not exist in "
                        f"{self.label} (use -p to create missing parent directories)"
                    )
                missing.append(join(canonical, name))
            elif not found[1].is_directory():
                raise FilesystemError(f"{found[0]} exists and is not a directory in {self.label}")
            else:
                canonical = found[0]
        return (missing[-1] if missing else canonical), missing

    def _make_dirs(self, paths: builtins.list[str]) -> None:
        for p in paths:
            self._opened.makedir(p)

    def _check_space(self, clusters: int) -> None:
        pyfat = self._opened.fs
        count = (pyfat._get_total_sectors() - pyfat.first_data_sector) // pyfat.bpb_header["BPB_SecPerClus"]
        free = sum(1 for value in pyfat.fat[2 : count + 2] if value == 0)
        if clusters > free:
            raise NoSpaceError(
                f"no space left in {self.label}: need {clusters} clusters of "
                f"{self._cluster} bytes, {free} are free; nothing was changed"
            )


def _clusters(nbytes: int, cluster: int) -> int:
    return -(-nbytes // cluster)


def _display_name(entry) -> str:
    """The name as Linux shows it: the long name, or the 8.3 name with mtools' lowercase flags."""
    if entry.lfn_entry is not None:
        return repr(entry)
    short = entry.get_short_name()
    base, dot, ext = short.partition(".")
    if entry.ntres & _LOWER_BASE:
        base = base.lower()
    if entry.ntres & _LOWER_EXT:
        ext = ext.lower()
    return base + dot + ext


def _match(directory, name: str):
    wanted = name.casefold()
    try:
        dirs, files, _ = directory.get_entries()
    except Exception as exc:
        if getattr(exc, "errno", None) == errno.ENOTDIR:
            return None
        raise
    for entry in dirs + files:
        if wanted in (repr(entry).casefold(), entry.get_short_name().casefold()):
            return entry
    return None


def _match_path(fat: FatFilesystem, canonical_dir: str, name: str):
    """(canonical path, entry) of name inside an existing directory, or None."""
    directory = fat._opened.fs.root_dir if canonical_dir == "/" else fat._opened.fs.root_dir.get_entry(canonical_dir)
    match = _match(directory, name)
    return None if match is None else (join(canonical_dir, repr(match)), match)
