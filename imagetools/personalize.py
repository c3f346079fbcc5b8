"""A unit as a delta over its base: the key injected into a scratch file that holds only the
base's data partition, then compared with the base block by block.

The base is never copied: the scratch is a sparse file of the base's size holding the data
partition's allocated extents (a few MiB however large the image), so debugfs and e2fsck work on
it at the partition's offset exactly as on a full image. It lives in a 0700 directory as a 0600
file (it holds the key), on tmpfs when there is one, where the fsyncs of debugfs and e2fsck cost
nothing. A scratch serves unit after unit: once a unit's delta is taken, the base's bytes are
written back over exactly the blocks the delta holds, so the next unit starts from the base (and
no key stays behind in it). Copying the window again for every unit cost more than debugfs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .image import delta as delta_format
from .inject import write_key
from .layout import PartInfo
from .sparse import copy_extents, data_ranges
from .verify import Check, fsck_check

_SHM = "/dev/shm"


def scratch_root() -> str | None:
    """Where scratch files go: $IMAGETOOLS_SCRATCH, else /dev/shm if usable, else the default."""
    chosen = os.environ.get("IMAGETOOLS_SCRATCH")
    if chosen:
        return chosen
    return _SHM if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK | os.X_OK) else None


@contextlib.contextmanager
def scratch_space() -> Iterator[str]:
    """A 0700 directory for scratch files, removed with everything in it at the end."""
    tmp = tempfile.mkdtemp(prefix="imagetools-scratch-", dir=scratch_root())
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Scratch:
    """The base's data partition in a reusable scratch file (one per process: debugfs writes it)."""

    def __init__(self, base: str | os.PathLike, data: PartInfo, directory: str | os.PathLike):
        self.base, self.data = str(base), data
        self.window = (data.partition.start, data.partition.end)
        self.path = Path(directory) / f"data-{os.getpid()}-{data.partition.start}.img"
        self.fresh = False  # holds exactly the base's window

    def delta(self, pem: bytes, key_rel: str, base_sha256: str) -> tuple[delta_format.Delta, Check]:
        """The unit's delta (key at key_rel, 0600, 0:0) and the e2fsck check of its data
        partition. On any failure the scratch is rebuilt from the base before its next use."""
        if not self.fresh:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(self.path, 0)
            copy_extents(self.base, self.path, inside=self.window)  # created 0600
        self.fresh = False
        write_key(self.path, self.data, pem, key_rel)
        fsck = fsck_check(self.path, self.data)
        size = os.stat(self.base).st_size
        with open(self.base, "rb", buffering=0) as fb, open(self.path, "r+b", buffering=0) as fs:
            extents = delta_format.diff(fb.fileno(), fs.fileno(), self.window,
                                        list(data_ranges(fs.fileno(), size)))
            for off, data in extents:  # the base's bytes back: the next unit starts from the base
                os.pwrite(fs.fileno(), os.pread(fb.fileno(), len(data), off), off)
        self.fresh = True
        return delta_format.Delta(size, base_sha256, self.window, tuple(extents)), fsck


_reused: dict[tuple[str, str, int, int], Scratch] = {}


def reused_scratch(directory: str | os.PathLike, base: str | os.PathLike, data: PartInfo) -> Scratch:
    """This process's scratch in directory for base's data partition, kept for the units that
    follow (one at a time: a new directory or base replaces it)."""
    key = (str(directory), str(base), data.partition.start, data.partition.end)
    scratch = _reused.get(key)
    if scratch is None:
        _reused.clear()
        scratch = _reused[key] = Scratch(base, data, directory)
    return scratch


def make_delta(base: str | os.PathLike, data: PartInfo, pem: bytes, key_rel: str,
               base_sha256: str) -> tuple[delta_format.Delta, Check]:
    """One unit's delta and e2fsck check, in a scratch used once (flash --key)."""
    with scratch_space() as tmp:
        return Scratch(base, data, tmp).delta(pem, key_rel, base_sha256)
