"""A udev database record for one device, for tests of what the station reads from it (the serial):
written under /run/udev/data where no udev runs, removed afterwards with the directories made for it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def udev_record(rdev: int) -> Iterator[Path]:
    """The path of block device RDEV's record (not yet written); skips where udev runs."""
    made = [d for d in ("/run/udev", "/run/udev/data") if not os.path.isdir(d)]
    record = Path(f"/run/udev/data/b{os.major(rdev)}:{os.minor(rdev)}")
    if not made and record.exists():
        pytest.skip(f"{record} exists: udev runs here")
    for d in made:
        os.mkdir(d)
    try:
        yield record
    finally:
        record.unlink(missing_ok=True)
        for d in reversed(made):
            os.rmdir(d)
