"""Filesystem integrity as the real checkers judge it, for any partition the tests write.

ext is checked in place by PartInfo.fsck (e2fsck -fn at an offset). fsck.vfat cannot start at
an offset, so the test copies just that partition's range to a scratch file: fine in a test, and
the reason the library itself offers no FAT check.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from imagetools.fs import EXT_TYPES
from imagetools.layout import PartInfo


def fsck(img: Path, part: PartInfo, scratch: Path | None = None) -> tuple[bool, str]:
    if part.fs.type in EXT_TYPES:
        return part.fsck(img)
    scratch = scratch or Path(f"{img}.p{part.partition.number}.vfat")
    try:
        subprocess.run(
            [
                "dd",
                f"if={img}",
                f"of={scratch}",
                "bs=512",
                "conv=sparse",
                "status=none",
                f"skip={part.partition.start}",
                f"count={part.partition.size}",
                "iflag=skip_bytes,count_bytes",
            ],
            check=True,
        )
        proc = subprocess.run(["fsck.vfat", "-n", str(scratch)], capture_output=True, text=True)
        return proc.returncode == 0, (proc.stdout + proc.stderr).strip()
    finally:
        scratch.unlink(missing_ok=True)
