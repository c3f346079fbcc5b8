"""A data partition as an attacker would build one: any names, made by the real mkfs.ext4 -d."""

from __future__ import annotations

import os
from pathlib import Path

from imagetools.layout import open_layout

from .tools import run_tool


def with_data_tree(img: Path, tree: Path) -> Path:
    """Replace img's data partition by an ext4 made with `mkfs.ext4 -d tree` (as an attacker
    would build one), written in place at the partition's offset."""
    data = open_layout(img).require("data")
    fs_file = img.with_suffix(".data.ext4")
    run_tool(
        "mkfs.ext4",
        "-q",
        "-F",
        "-L",
        "data",
        "-d",
        str(tree),
        str(fs_file),
        f"{data.partition.size // 1024}k",
        env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"},
    )
    with open(img, "r+b") as out:
        out.seek(data.partition.start)
        out.write(fs_file.read_bytes())
    fs_file.unlink()
    return img


def hostile_tree(root: Path, names: list[bytes]) -> Path:
    """A tree for with_data_tree: an empty mender/ and evil/ holding a file for each name."""
    (root / "mender").mkdir(parents=True)
    evil = root / "evil"
    evil.mkdir()
    for name in names:
        (evil / os.fsdecode(name)).write_bytes(b"x")
    return root


def data_clean(img: Path) -> None:
    clean, output = open_layout(img).require("data").fsck(img)
    assert clean, output
