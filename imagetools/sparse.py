"""Sparse-aware file primitives: data extents, allocated size, reflink-or-sparse copy.

Images are mostly holes; copying or hashing the holes would cost time and disk for nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
from collections.abc import Iterator

FICLONE = 0x40049409  # linux/fs.h _IOW(0x94, 9, int)
_CHUNK = 4 << 20


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges that hold data, via SEEK_DATA/SEEK_HOLE; whole file if unsupported."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            if exc.errno == errno.EINVAL:
                yield (pos, size)
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield (start, end)
        pos = end


def allocated_bytes(path: str | os.PathLike) -> int:
    return os.stat(path).st_blocks * 512


def copy_sparse(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Copy src to dst (created 0600 or truncated) durably: reflink when the filesystem can, else
    only the data extents (holes stay holes). Returns 'reflink' or 'sparse'."""
    if clone(src, dst):
        return "reflink"
    copy_extents(src, dst)
    with open(dst, "rb") as f:
        os.fsync(f.fileno())
    return "sparse"


def open_private(dst: str | os.PathLike, flags: int = os.O_WRONLY) -> int:
    """dst opened for writing, created 0600 (an existing file is made 0600 too): every image we
    write will hold a private key, and must never be readable by others, not even for a moment."""
    fd = os.open(dst, flags | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def clone(src: str | os.PathLike | int, dst: str | os.PathLike) -> bool:
    """Reflink src (a path or an open descriptor) to dst (created 0600 or truncated) if the
    filesystem can share the blocks."""
    fd = open_private(dst, os.O_WRONLY | os.O_TRUNC)
    try:
        return clone_into(src, fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def reading(src: str | os.PathLike | int) -> Iterator[int]:
    """A descriptor to read `src` on: a path opened (and closed after), a descriptor as it is
    (the caller's open image: not opened again, left open)."""
    if isinstance(src, int):
        yield src
        return
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def clone_into(src: str | os.PathLike | int, fd: int) -> bool:
    """Reflink src (a path or an open descriptor) into the open file `fd`; False where the
    filesystem cannot share blocks."""
    with reading(src) as fin:
        try:
            fcntl.ioctl(fd, FICLONE, fin)
            return True
        except OSError:
            return False


def copy_extents(
    src: str | os.PathLike | int,
    dst: str | os.PathLike,
    *,
    inside: tuple[int, int] | None = None,
    outside: tuple[int, int] | None = None,
) -> None:
    """Copy src's data extents (src a path or an open descriptor) into dst (created 0600 if
    missing, sized like src), all of them or only their parts inside or outside a byte window:
    lets a caller work on one region of a large image before the rest is copied. Nothing is
    synced: that is the caller's choice."""
    with reading(src) as fin:
        fd = open_private(dst)
        try:
            size = os.fstat(fin).st_size
            os.ftruncate(fd, size)
            for start, end in data_ranges(fin, size):
                for a, b in _select(start, end, inside, outside):
                    _copy_range(fin, fd, a, b)
        finally:
            os.close(fd)


def _select(
    start: int, end: int, inside: tuple[int, int] | None, outside: tuple[int, int] | None
) -> list[tuple[int, int]]:
    if inside is not None:
        a, b = max(start, inside[0]), min(end, inside[1])
        return [(a, b)] if a < b else []
    if outside is not None:
        return [(a, b) for a, b in ((start, min(end, outside[0])), (max(start, outside[1]), end)) if a < b]
    return [(start, end)]


def sync_filesystem(path: str | os.PathLike) -> None:
    """Write back everything on path's filesystem and wait (syncfs; sync where unavailable)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(ctypes.c_int(fd)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fspath(path))
    except AttributeError:
        os.sync()
    finally:
        os.close(fd)


def _copy_range(fin: int, fout: int, start: int, end: int) -> None:
    pos = start
    while pos < end:
        try:
            n = os.copy_file_range(fin, fout, end - pos, pos, pos)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = _copy_chunk(fin, fout, pos, min(end, pos + _CHUNK))
        if n == 0:
            break
        pos += n


def _copy_chunk(fin: int, fout: int, start: int, end: int) -> int:
    data = os.pread(fin, end - start, start)
    if data.count(0) == len(data):  # keep zeros as holes
        return len(data)
    os.pwrite(fout, data, start)
    return len(data)
