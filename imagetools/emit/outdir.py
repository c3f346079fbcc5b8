"""OUT's rules on disk: one emit at a time; everything is written under OUT/.imagetools-tmp/
first and renamed into place, so a run killed at any moment leaves nothing that looks complete;
the next run removes what a killed run left and puts back a published unit it was replacing."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from .. import atomic
from ..errors import EnvironmentProblem

LOCK_FILE = ".imagetools-emit.lock"
TMP_DIR = ".imagetools-tmp"
_REPLACED = "replaced-"


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """One emit per output directory at a time (workers of a killed run may still be exiting)."""
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(f"another imagetools emit is writing to {out}") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def clean_temp(out: Path) -> None:
    """Remove what a killed run left; put back a published unit that was being replaced."""
    tmp = out / TMP_DIR
    if not tmp.is_dir():
        return
    for entry in tmp.iterdir():
        if entry.name.startswith(_REPLACED) and not (out / entry.name[len(_REPLACED) :]).exists():
            os.rename(entry, out / entry.name[len(_REPLACED) :])
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def private_dir(path: Path) -> Path:
    """A 0700 directory (whatever the umask): unit directories hold private keys and images."""
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_text(path: Path, text: str) -> None:
    """A batch or state file of OUT, written by way of OUT's temp directory, so a killed run
    leaves nothing beside the units (no fsync: the next run writes them again)."""
    atomic.write_atomic(path, text.encode(), durable=False, tmp_dir=private_dir(path.parent / TMP_DIR))


def publish(tmp: Path, out: Path, name: str, replace: bool) -> None:
    """Rename the finished unit directory into place (a published unit being re-emitted is moved
    aside first; a killed run puts it back on the next start)."""
    target = out / name
    if replace and target.exists():
        aside = out / TMP_DIR / f"{_REPLACED}{name}"
        os.rename(target, aside)
        os.rename(tmp, target)
        shutil.rmtree(aside)
    else:
        os.rename(tmp, target)
