"""`imagetools inspect`: JSON against sfdisk for every layout, the table, warnings, exit codes."""

from __future__ import annotations

import json
import os
import re

import pytest
from support.disktables import MiB, write_image
from support.images import LAYOUT_ROLES, LAYOUTS
from support.tools import run_tool

pytestmark = pytest.mark.integration


def one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("imagetools: error: ") and "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_json_matches_sfdisk(make_image, cli, layout):
    path = make_image(layout, empty_rootfs_b=layout == "sdimg")
    result = cli("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    table = json.loads(run_tool("sfdisk", "--json", str(path)).stdout)["partitiontable"]
    assert doc["table"] == {"dos": "mbr", "gpt": "gpt"}[table["label"]]
    assert (doc["sector_size"], doc["size"]) == (512, os.path.getsize(path))
    ours = {p["number"]: p for p in doc["items"] + doc["extended"]}
    theirs = {int(re.search(r"(\d+)$", p["node"]).group(1)): p for p in table["partitions"]}
    assert sorted(ours) == sorted(theirs)
    for n, p in theirs.items():
        assert (ours[n]["start"], ours[n]["size"]) == (p["start"] * 512, p["size"] * 512)
        assert ours[n]["type"].lower().removeprefix("0x").lstrip("0") == p["type"].lower().lstrip("0")
        assert ours[n].get("name", "") == p.get("name", "")
    assert {p["number"]: p["role"] for p in doc["items"]} == LAYOUT_ROLES[layout]
    for p in doc["items"]:
        assert set(p) >= {"number", "start", "size", "type", "name", "fs", "label", "role", "reason"}
        assert p["reason"] and p["fs"] in ("vfat", "ext4", "swap")


def test_table_output(make_image, cli):
    path = make_image("extended")
    result = cli("inspect", path)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: MBR, 512-byte sectors, 72.0 MiB (75497472 bytes)"
    assert lines[1].split() == ["#", "START", "SIZE", "TYPE", "FS", "LABEL", "ROLE", "REASON"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert sorted(rows) == ["1", "2", "3", "4", "5", "6"]
    assert "0x05 Extended" in rows["4"] and "container of the logical partitions" in rows["4"]
    assert re.search(r"\bswap\s+swap\s+swap\s+swap signature$", rows["5"])
    assert re.search(r"\bext4\s+data\s+data\s+ext4 label 'data'$", rows["6"])


def test_no_data_partition_still_shows_the_table(make_image, cli):
    path = make_image("noboot")
    run_tool("sfdisk", "--quiet", "--delete", str(path), "3")
    result = cli("inspect", path)
    assert result.returncode == 0
    assert result.stderr.startswith("imagetools: warning: no data partition found")
    assert "--data-partition N" in result.stderr and len(result.stderr.splitlines()) == 1
    assert [line.split()[0] for line in result.stdout.splitlines()[2:]] == ["1", "2"]


def test_overrides(make_image, cli):
    result = cli("inspect", make_image("sdimg"), "--json", "--data-partition", "3", "--rootfs-b-partition", "4")
    assert result.returncode == 0, result.stderr
    parts = {p["number"]: (p["role"], p["reason"]) for p in json.loads(result.stdout)["items"]}
    assert parts[3] == ("data", "set by --data-partition 3")
    assert parts[4] == ("rootfs-b", "set by --rootfs-b-partition 4")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data-partition", "9"], "--data-partition 9: .* has no partition 9"),
        (["--boot-partition", "2", "--data-partition", "2"], "partition 2 cannot be both"),
    ],
)
def test_bad_overrides(make_image, cli, args, message):
    result = cli("inspect", make_image("sdimg"), *args)
    assert result.returncode == 2 and result.stdout == ""
    assert re.search(message, one_error_line(result))


def test_override_must_be_positive(make_image, cli):
    result = cli("inspect", make_image("sdimg"), "--data-partition", "0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("imagetools: error: invalid value for '--data-partition'")
    assert result.stderr.rstrip().endswith("(see imagetools inspect --help)")


def test_damaged_gpt_is_a_warning(make_image, cli):
    path = make_image("gptimg")
    with open(path, "r+b") as f:
        f.seek(512 + 60)
        f.write(b"\xff\xff")
    result = cli("inspect", path, "--json")
    assert result.returncode == 0
    assert "imagetools: warning: primary GPT header is damaged (header CRC mismatch)" in result.stderr
    assert "using the backup header" in json.loads(result.stdout)["warnings"][0]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty (0 bytes)"),
        (b"x", "is only 1 byte"),
        (os.urandom(1 << 20), "no partition table found"),
    ],
)
def test_bad_files_exit_2(tmp_path, cli, content, message):
    path = tmp_path / "bad.img"
    path.write_bytes(content)
    result = cli("inspect", path)
    assert result.returncode == 2 and result.stdout == ""
    assert message in one_error_line(result)


@pytest.mark.parametrize("layout", ["sdimg", "uefiimg", "extended"])
def test_cut_off_image_exits_2(make_image, cli, layout):
    path = make_image(layout)
    os.truncate(path, 30 * MiB)
    result = cli("inspect", path, "--json")
    assert result.returncode == 2 and result.stdout == ""
    line = one_error_line(result)
    assert "extends past the end of the image" in line and "truncated" in line


def test_missing_file_and_debug_traceback(tmp_path, cli):
    result = cli("inspect", tmp_path / "nope.img")
    assert result.returncode == 2 and "nope.img: no such file" in one_error_line(result)
    bad = write_image(tmp_path / "zero.img", 1 << 20, {})
    debug = cli("--debug", "inspect", bad)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ImageFormatError" in debug.stderr
