"""One writer per image: an exclusive lock held for the whole of a change.

Two debugfs runs writing the same filesystem at once corrupt its free-block counts, so every
writer takes the lock: `flock` on an image file, and on a block device also an O_EXCL open, which
the kernel refuses while the device or a partition of it is mounted or held by another O_EXCL
opener. The lock is re-entrant within a process (a change may open several partitions of one
image); a second writer waits briefly, then fails with a clear message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator

from ..errors import EnvironmentProblem

WAIT_SECONDS = 10.0
_held: dict[tuple[int, int], tuple[int, int]] = {}  # (st_dev, st_ino) -> (fd, depth)


@contextlib.contextmanager
def exclusive(image_path: str | os.PathLike, wait: float | None = None) -> Iterator[None]:
    """Hold the image's write lock for the duration of the block."""
    key = acquire(image_path, wait)
    try:
        yield
    finally:
        release(key)


def acquire(image_path: str | os.PathLike, wait: float | None = None) -> tuple[int, int]:
    """Take (or re-enter) the lock; the key returned is what release() wants."""
    path = os.fspath(image_path)
    st = os.stat(path)
    key = (st.st_dev, st.st_ino)
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        return key
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_EXCL if stat.S_ISBLK(st.st_mode) else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise EnvironmentProblem(
                f"{path} is in use (mounted, or opened by another writer): unmount it or wait for the other program"
            ) from None
        raise
    try:
        _flock(fd, path, WAIT_SECONDS if wait is None else wait)
    except BaseException:
        os.close(fd)
        raise
    _held[key] = (fd, 1)
    return key


def release(key: tuple[int, int]) -> None:
    fd, depth = _held.pop(key)
    if depth > 1:
        _held[key] = (fd, depth - 1)
    else:
        os.close(fd)  # drops the flock


def _flock(fd: int, path: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise EnvironmentProblem(
                    f"another imagetools process has been writing to {path} for over {wait:g} s; "
                    "run again when it is done (one writer per image at a time)"
                ) from None
            time.sleep(0.05)
