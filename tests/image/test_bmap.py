"""bmap 2.0 writer: format details bmaptool checks, the one-pass hashes, and real `bmaptool copy`."""

from __future__ import annotations

import hashlib
import os
import re
import shutil

import pytest
from support.tools import run_tool

from imagetools import bmap
from imagetools.sparse import allocated_bytes, copy_extents, copy_sparse

pytestmark = pytest.mark.skipif(shutil.which("bmaptool") is None, reason="bmap-tools not installed")


def _sparse_file(path, size, chunks):
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in chunks:
            f.seek(offset)
            f.write(data)
    return path


def test_file_checksum_is_what_bmaptool_recomputes(tmp_path):
    img = _sparse_file(tmp_path / "x.img", 10 << 20, [(0, b"\x01" * 5000), (3 << 20, os.urandom(9000))])
    text = bmap.create(img)
    stored = re.search(rb"<BmapFileChecksum> ([0-9a-f]{64}) </BmapFileChecksum>", text).group(1)
    assert hashlib.sha256(text.replace(stored, b"0" * 64)).hexdigest().encode() == stored
    assert b'<bmap version="2.0">' in text and b"<ChecksumType> sha256 </ChecksumType>" in text
    ranges = re.findall(rb'<Range chksum="([0-9a-f]{64})"> (\d+)(?:-(\d+))? </Range>', text)
    assert [(int(a), int(b or a)) for _, a, b in ranges] == [(0, 1), (768, 770)]
    data = img.read_bytes()
    assert ranges[1][0].decode() == hashlib.sha256(data[768 * 4096 : 771 * 4096]).hexdigest()


def test_whole_image_sha256_matches_the_file(tmp_path):
    img = _sparse_file(tmp_path / "odd.img", (5 << 20) + 123, [(4096 * 7 + 5, b"abc"), ((5 << 20) + 100, b"end")])
    assert bmap.scan(img).sha256 == hashlib.sha256(img.read_bytes()).hexdigest()


def test_reuse_of_the_base_gives_the_same_result(tmp_path):
    """Units differ from the base only inside the window: reusing the base's hashes must give
    exactly what hashing the unit from scratch gives."""
    base = _sparse_file(
        tmp_path / "base.img",
        12 << 20,
        [
            (0, os.urandom(4096 * 3)),
            (2 << 20, os.urandom(1 << 20)),
            ((6 << 20) - 4096, os.urandom(8192)),
            (8 << 20, os.urandom(100_000)),
            ((12 << 20) - 4096, os.urandom(4096)),
        ],
    )
    window = (6 << 20, 10 << 20)
    base_scan = bmap.scan(base, window=window)
    unit = tmp_path / "unit.img"
    copy_sparse(base, unit)
    with open(unit, "r+b") as f:
        for offset in (6 << 20, (7 << 20) + 10, (9 << 20) + 4000):
            f.seek(offset)
            f.write(os.urandom(3000))
    scratch = bmap.scan(unit, window=window)  # same range cuts, everything hashed again
    reused = bmap.scan(unit, reuse=base_scan.reuse)
    assert reused.sha256 == scratch.sha256 == hashlib.sha256(unit.read_bytes()).hexdigest()
    assert reused.ranges == scratch.ranges
    assert base_scan.sha256 == hashlib.sha256(base.read_bytes()).hexdigest()


@pytest.mark.integration
@pytest.mark.parametrize("layout", ["sdimg", "uefiimg"])
def test_bmaptool_copy_is_byte_identical(make_image, tmp_path, layout):
    img = make_image(layout)
    bmap_file = tmp_path / f"{img.name}.bmap"
    bmap_file.write_bytes(bmap.create(img))
    out = tmp_path / "flashed.img"
    run_tool("bmaptool", "copy", "--bmap", str(bmap_file), str(img), str(out))
    run_tool("cmp", str(img), str(out))


@pytest.mark.integration
def test_bmaptool_accepts_odd_sizes_and_empty_images(tmp_path):
    for name, size, chunks in [("odd.img", (3 << 20) + 777, [((3 << 20) + 700, b"tail")]), ("empty.img", 1 << 20, [])]:
        img = _sparse_file(tmp_path / name, size, chunks)
        (tmp_path / f"{name}.bmap").write_bytes(bmap.create(img))
        out = tmp_path / f"{name}.out"
        run_tool("bmaptool", "copy", "--bmap", str(tmp_path / f"{name}.bmap"), str(img), str(out))
        run_tool("cmp", str(img), str(out))


@pytest.mark.integration
def test_bmaptool_detects_a_changed_image(make_image, tmp_path):
    img = make_image("sdimg")
    bmap_file = tmp_path / "img.bmap"
    bmap_file.write_bytes(bmap.create(img))
    with open(img, "r+b") as f:
        f.seek(1000)
        f.write(b"changed after the bmap")
    res = run_tool("bmaptool", "copy", "--bmap", str(bmap_file), str(img), str(tmp_path / "o.img"), check=False)
    assert res.returncode != 0 and "checksum mismatch" in res.stderr


def test_copy_extents_in_two_parts_equals_the_source_and_keeps_holes(tmp_path):
    """emit copies the data partition first and the rest later: the two parts make the whole."""
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        for offset in (0, 3 << 20, 7 << 20):
            f.seek(offset)
            f.write(os.urandom(300_000))
        f.truncate(10 << 20)
    dst = tmp_path / "dst.img"
    window = ((2 << 20) + 4096, 8 << 20)
    copy_extents(src, dst, inside=window)
    part = dst.read_bytes()
    assert part[window[0] : window[1]] == src.read_bytes()[window[0] : window[1]]
    assert part[: window[0]].count(0) == window[0]
    copy_extents(src, dst, outside=window)
    assert dst.read_bytes() == src.read_bytes()
    assert allocated_bytes(dst) <= allocated_bytes(src)
