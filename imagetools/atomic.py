"""Host files written so that nobody ever sees half of one, or sees a secret for a moment.

Everything we write on the host (keys, images, batch files, files copied out of images) goes
through here: a temporary name on the same filesystem, created with its final mode from the
first byte (0600 for anything that holds a key), fsynced when asked, then renamed into place in
one step. `exclusive` never replaces an existing file: the rename is a link(), which fails if the
name was taken in the meantime.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import EnvironmentProblem


def write_atomic(
    path: str | os.PathLike,
    data: bytes,
    *,
    mode: int = 0o644,
    exclusive: bool = False,
    durable: bool = True,
    tmp_dir: str | os.PathLike | None = None,
) -> None:
    """`path` holds exactly `data` with `mode`, or (on any error) is as it was."""
    with replace_when_done(path, mode=mode, exclusive=exclusive, durable=durable, tmp_dir=tmp_dir) as tmp:
        with open(tmp, "r+b") as fh:
            fh.write(data)


@contextlib.contextmanager
def replace_when_done(
    path: str | os.PathLike,
    *,
    mode: int = 0o644,
    exclusive: bool = False,
    durable: bool = True,
    tmp_dir: str | os.PathLike | None = None,
) -> Iterator[Path]:
    """A temporary path, created empty with `mode`, for the block to fill; when the block ends
    normally it becomes `path`, and on any error it is removed. Its name keeps the suffix
    (mender-artifact only accepts .sdimg/.uefiimg/.img names): `.NAME.partial-PID.SUFFIX`."""
    path = Path(path)
    if exclusive:
        _refuse_existing(path)
    tmp = Path(tmp_dir or path.parent) / f".{path.stem}.partial-{os.getpid()}{path.suffix}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not loosen or tighten what was asked
    finally:
        os.close(fd)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        _rename(tmp, path, exclusive)
        if durable:
            _fsync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _refuse_existing(path: Path) -> None:
    if path.exists() or path.is_symlink():
        raise EnvironmentProblem(f"{path} exists; use --force to overwrite")


def _rename(tmp: Path, path: Path, exclusive: bool) -> None:
    if not exclusive:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise EnvironmentProblem(f"{path} exists; use --force to overwrite") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        _refuse_existing(path)  # no hard links here (FAT): check, then rename
        os.replace(tmp, path)
        return
    tmp.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
