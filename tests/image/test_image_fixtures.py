"""The committed partition tables (fixtures/tables) against what sfdisk read from them: the
parser's real-world cases, with no system tool and no subprocess."""

from __future__ import annotations

import re
import subprocess

import pytest
from support.fixture_files import sfdisk_table, table_image, table_names

from imagetools.image import DiskImage, read_image

NAMES = table_names()
WARNINGS = {
    "uefiimg-bad-primary": [
        r"primary GPT header is damaged \(header CRC mismatch\); "
        r"using the backup header at sector 589823 "
    ]
}


@pytest.fixture(autouse=True)
def no_subprocess(monkeypatch):
    """The promise of these tests: they run where e2fsprogs, mtools and util-linux are absent."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"the fixture tests must not run a process: {args}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def parse(name: str, tmp_path) -> DiskImage:
    return read_image(table_image(name, tmp_path / f"{name}.img"))


def test_every_layout_is_covered():
    assert NAMES == ["extended", "gptimg", "sdimg", "uefiimg", "uefiimg-4k", "uefiimg-bad-primary"]


@pytest.mark.parametrize("name", NAMES)
def test_table_matches_sfdisk(tmp_path, name):
    image, table = parse(name, tmp_path), sfdisk_table(name)
    ss = table["sectorsize"]
    assert (image.table, image.sector_size) == ({"dos": "mbr", "gpt": "gpt"}[table["label"]], ss)
    ours = {p.number: p for p in image.partitions + image.extended}
    theirs = {int(re.search(r"(\d+)$", p["node"]).group(1)): p for p in table["partitions"]}
    assert sorted(ours) == sorted(theirs)
    for number, p in theirs.items():
        mine = ours[number]
        assert (mine.start, mine.size) == (p["start"] * ss, p["size"] * ss)
        if table["label"] == "gpt":
            assert (mine.type, mine.uuid, mine.name) == (p["type"].lower(), p["uuid"].lower(), p["name"])
        else:
            assert int(mine.type, 16) == int(p["type"], 16)
            assert mine.logical == (number > 4)


@pytest.mark.parametrize("name", NAMES)
def test_warnings(tmp_path, name):
    warnings = parse(name, tmp_path).warnings
    expected = WARNINGS.get(name, [])
    assert len(warnings) == len(expected) and all(map(re.match, expected, warnings)), warnings


def test_extended_container_holds_the_logicals(tmp_path):
    image = parse("extended", tmp_path)
    (container,) = image.extended
    assert (container.number, container.type) == (4, "0x05")
    logicals = [p for p in image.partitions if p.logical]
    assert [(p.number, p.type) for p in logicals] == [(5, "0x82"), (6, "0x83")]
    assert all(container.start < p.start and p.end <= container.end for p in logicals)


@pytest.mark.parametrize("name", ["uefiimg-4k", "uefiimg-bad-primary"])
def test_same_recipe_same_partitions(tmp_path, name):
    """The recipe is in MiB, so 4096-byte sectors or a lost primary header change no byte offset."""
    assert parse(name, tmp_path).partitions == parse("uefiimg", tmp_path).partitions
