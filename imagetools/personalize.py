"""A unit as a delta over its base: the key injected into a scratch file that holds only the
base's data partition, then compared with the base block by block.

The base is never copied: the scratch is a sparse file of the base's size holding the data
partition's allocated extents (a few MiB however large the image), so debugfs and e2fsck work on
it at the partition's offset exactly as on a full image. It lives in a 0700 directory as a 0600
file (it holds the key), on tmpfs when there is one, where the fsyncs of debugfs and e2fsck cost
nothing, and it is deleted as soon as the delta is taken.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

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


def make_delta(base: str | os.PathLike, data: PartInfo, pem: bytes, key_rel: str,
               base_sha256: str) -> tuple[delta_format.Delta, Check]:
    """The unit's delta (key at key_rel, 0600, 0:0) and the e2fsck check of its data partition."""
    tmp = tempfile.mkdtemp(prefix="imagetools-unit-", dir=scratch_root())  # 0700
    try:
        scratch = Path(tmp) / "data.img"
        window = (data.partition.start, data.partition.end)
        copy_extents(base, scratch, inside=window)  # created 0600
        write_key(scratch, data, pem, key_rel)
        fsck = fsck_check(scratch, data)
        size = os.stat(base).st_size
        with open(base, "rb", buffering=0) as fb, open(scratch, "rb", buffering=0) as fs:
            ranges = list(data_ranges(fs.fileno(), size))
            extents = delta_format.diff(fb.fileno(), fs.fileno(), window, ranges)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return delta_format.Delta(size, base_sha256, window, tuple(extents)), fsck
