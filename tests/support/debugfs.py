"""What the real debugfs says of a file in an ext4 partition of an image."""

from __future__ import annotations

import re
from pathlib import Path

from .tools import run_tool


def debugfs_stat(img: Path, offset: int, path: str) -> dict:
    """Mode, owner and type of `path` in the ext4 at byte `offset` of img, as debugfs reads them."""
    out = run_tool("debugfs", "-R", f"stat {path}", f"{img}?offset={offset}").stdout
    mode = re.search(r"Mode:\s+(\d+)", out)
    owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    if mode is None or owner is None:
        raise AssertionError(f"debugfs has no stat of {path}: {out!r}")
    return {
        "mode": int(mode.group(1), 8),
        "uid": int(owner.group(1)),
        "gid": int(owner.group(2)),
        "type": re.search(r"Type: (\w+)", out).group(1),
    }
