"""Sparse-aware file primitives: data extents, allocated size, reflink-or-sparse copy.

Images are mostly holes; copying or hashing the holes would cost time and disk for nothing.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

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
    """Copy src to dst (created 0644 or truncated): reflink when the filesystem can, else only the
    data extents (holes stay holes). Returns 'reflink' or 'sparse'."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return "reflink"
        except OSError:
            pass
        size = os.fstat(fin.fileno()).st_size
        for start, end in data_ranges(fin.fileno(), size):
            _copy_range(fin.fileno(), fout.fileno(), start, end)
        fout.truncate(size)
        fout.flush()
        os.fsync(fout.fileno())
    return "sparse"


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


def remove_quietly(path: str | os.PathLike) -> None:
    Path(path).unlink(missing_ok=True)
