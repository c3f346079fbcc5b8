"""The delta format, the edges scripts/mutation found untested: every refusal of parse with its
message, the file layout byte for byte (as the module docstring specifies it), and diff's block
merging across its read and compare sizes."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest

from imagetools.errors import ImageFormatError
from imagetools.image.delta import BLOCK, MAGIC, MAX_DATA, MAX_EXTENTS, MAX_FILE, Delta, apply, diff, parse, read

SHA = "ab" * 32
W0, W1 = 4 * BLOCK, 64 * BLOCK
SIZE = 80 * BLOCK


def _file(
    extents, *, version=1, block=BLOCK, base_size=SIZE, window=(W0, W1), count=None, table=None, tail=b"", reserved=0
) -> bytes:
    """A delta file as the format describes it, whatever its content (render refuses bad ones)."""
    count = len(extents) if count is None else count
    head = struct.pack("<8sIIQ32sQQII", MAGIC, version, block, base_size, bytes.fromhex(SHA), *window, count, reserved)
    rows = table if table is not None else b"".join(struct.pack("<QII", off, len(d) // BLOCK, 0) for off, d in extents)
    body = head + rows + b"".join(d for _, d in extents) + tail
    return body + hashlib.sha256(body).digest()


def _refused(blob: bytes) -> str:
    with pytest.raises(ImageFormatError) as refused:
        parse(blob, "u1.delta")
    return str(refused.value)


def test_render_writes_the_documented_layout():
    block = os.urandom(BLOCK)
    delta = Delta(SIZE, SHA, (W0, W1), ((W0, block), (W0 + 2 * BLOCK, block * 2)))
    blob = delta.render()
    assert blob == _file([(W0, block), (W0 + 2 * BLOCK, block * 2)])
    assert parse(blob) == delta
    assert delta.data_bytes == 3 * BLOCK


def test_an_empty_delta_round_trips():
    delta = Delta(SIZE, SHA, (W0, W1), ())
    assert parse(delta.render()) == delta
    assert len(delta.render()) == 80 + 32


def test_touches_is_true_exactly_for_overlapping_ranges():
    delta = Delta(SIZE, SHA, (W0, W1), ((W0 + BLOCK, bytes(BLOCK)),))
    start, end = W0 + BLOCK, W0 + 2 * BLOCK
    assert delta.touches(start, end) and delta.touches(start - 1, start + 1) and delta.touches(end - 1, end + 5)
    assert not delta.touches(start - 10, start) and not delta.touches(end, end + 10)


def test_a_short_or_foreign_file_is_not_a_delta():
    message = f"u1.delta: not an imagetools delta (no {MAGIC!r} header)"
    assert _refused(b"") == message
    assert _refused(b"XTDELTA\n" + _file([])[8:]) == message
    assert _refused(_file([])[:111]) == message
    assert parse(_file([])).extents == ()


def test_another_version_or_block_size_is_named():
    expected = "this imagetools reads version 1 with 4096-byte blocks"
    assert _refused(_file([], version=2)) == f"u1.delta: delta version 2, block size 4096; {expected}"
    assert _refused(_file([], block=512)) == f"u1.delta: delta version 1, block size 512; {expected}"


def test_a_damaged_delta_fails_its_checksum():
    blob = bytearray(_file([(W0, bytes(BLOCK))]))
    blob[100] ^= 1
    assert _refused(bytes(blob)) == "u1.delta: checksum mismatch: the delta is damaged or truncated"


def test_the_extent_count_is_bounded_and_must_fit():
    assert _refused(_file([], count=MAX_EXTENTS + 1)) == f"u1.delta: {MAX_EXTENTS + 1} extents, more than {MAX_EXTENTS}"
    blob = _file([], count=2, table=bytes(16))
    assert _refused(blob) == f"u1.delta: 2 extents do not fit in {len(blob)} bytes"
    exact = _file([], count=1, table=bytes(16))  # the table fits (its extent is then empty)
    assert _refused(exact) == "u1.delta: extent at byte 0 has a bad length (0 blocks)"


def test_an_extent_longer_than_the_file_is_refused():
    row = struct.pack("<QII", W0, 2, 0)
    blob = _file([(W0, bytes(BLOCK))], table=row)
    assert _refused(blob) == f"u1.delta: extent at byte {W0} has a bad length (2 blocks)"


def test_an_extent_running_into_the_checksum_is_refused():
    row = struct.pack("<QII", W0, 1, 0)
    assert _refused(_file([(W0, bytes(BLOCK - 16))], table=row)) == (
        f"u1.delta: extent at byte {W0} has a bad length (1 blocks)"
    )


def test_parse_names_the_delta_by_default():
    with pytest.raises(ImageFormatError) as refused:
        parse(b"")
    assert str(refused.value) == f"delta: not an imagetools delta (no {MAGIC!r} header)"


def test_bytes_beyond_the_last_extent_are_counted():
    assert _refused(_file([(W0, bytes(BLOCK))], tail=b"xyz")) == "u1.delta: 3 bytes beyond the last extent"


def test_the_window_must_be_aligned_and_inside_the_base():
    def message(w0, w1, size=SIZE):
        return f"u1.delta: window {w0}-{w1} is not a block-aligned range inside the base ({size} bytes)"

    assert parse(_file([], window=(BLOCK, SIZE))).window == (BLOCK, SIZE)
    for w0, w1 in [(0, W1), (W0, W0), (W1, W0), (W0, SIZE + BLOCK), (W0 + 1, W1), (W0, W1 - 1)]:
        assert _refused(_file([], window=(w0, w1))) == message(w0, w1)


def test_extents_must_be_aligned_sorted_disjoint_and_inside_the_window():
    def message(off, n):
        return (
            f"u1.delta: extent at byte {off} ({n} bytes) is unaligned, overlaps another or lies outside the "
            f"window {W0}-{W1}"
        )

    block = bytes(BLOCK)
    assert len(parse(_file([(W0, block), (W0 + BLOCK, block), (W1 - BLOCK, block)])).extents) == 3
    assert _refused(_file([(W0 + 1, block)])) == message(W0 + 1, BLOCK)
    assert _refused(_file([(W0 - BLOCK, block)])) == message(W0 - BLOCK, BLOCK)
    assert _refused(_file([(W1, block)])) == message(W1, BLOCK)
    assert _refused(_file([(W0 + BLOCK, block), (W0, block)])) == message(W0, BLOCK)
    assert _refused(_file([(W0, block * 2), (W0 + BLOCK, block)])) == message(W0 + BLOCK, BLOCK)


def test_render_refuses_what_parse_would():
    with pytest.raises(ImageFormatError, match="^delta: extent at byte 16385 .* is unaligned"):
        Delta(SIZE, SHA, (W0, W1), ((W0 + 1, bytes(BLOCK)),)).render()
    with pytest.raises(ImageFormatError, match="^delta: extent at byte 16384 .* is unaligned"):
        Delta(SIZE, SHA, (W0, W1), ((W0, bytes(BLOCK - 1)),)).render()
    with pytest.raises(ImageFormatError, match="^delta: extent at byte 16384 .* is unaligned"):
        Delta(SIZE, SHA, (W0, W1), ((W0, b""),)).render()
    with pytest.raises(ImageFormatError) as bad_sha:
        Delta(SIZE, "ab", (W0, W1), ()).render()
    assert str(bad_sha.value) == "delta: bad base sha256 or too many extents"
    many = tuple((W0 + i * BLOCK, bytes(BLOCK)) for i in range(MAX_EXTENTS + 1))
    with pytest.raises(ImageFormatError, match="^delta: bad base sha256 or too many extents$"):
        Delta(1 << 40, SHA, (BLOCK, 1 << 30), many).render()


def test_data_is_bounded_in_total():
    huge = MAX_DATA + BLOCK
    delta = Delta(1 << 40, SHA, (BLOCK, 1 << 30), ((BLOCK, bytes(huge)),))
    with pytest.raises(ImageFormatError) as refused:
        delta.render()
    assert str(refused.value) == f"delta: {huge} bytes of blocks, more than {MAX_DATA}"
    exact = Delta(1 << 40, SHA, (BLOCK, 1 << 30), ((BLOCK, bytes(MAX_DATA)),))
    assert parse(exact.render()).data_bytes == MAX_DATA
    two = _file(
        [(BLOCK, bytes(MAX_DATA)), (BLOCK + MAX_DATA, bytes(BLOCK))], base_size=1 << 40, window=(BLOCK, 1 << 30)
    )
    assert _refused(two) == f"u1.delta: extent at byte {BLOCK + MAX_DATA} has a bad length (1 blocks)"
    assert MAX_FILE == 80 + 16 * MAX_EXTENTS + MAX_DATA + 32


def test_read_takes_a_file_within_the_bound_and_names_it(tmp_path):
    path = tmp_path / "u1.delta"
    path.write_bytes(_file([(W0, bytes(BLOCK))]))
    assert read(path).extents == ((W0, bytes(BLOCK)),)
    path.write_bytes(b"junk" * 40)
    with pytest.raises(ImageFormatError, match=f"^{path}: not an imagetools delta"):
        read(path)
    with pytest.raises(ImageFormatError) as directory:
        read(tmp_path)
    assert str(directory.value) == f"delta {tmp_path} is a directory, not a regular file"


def test_apply_writes_each_extent_in_place(tmp_path):
    image = tmp_path / "img"
    image.write_bytes(bytes(SIZE))
    a, b = os.urandom(BLOCK), os.urandom(2 * BLOCK)
    apply(Delta(SIZE, SHA, (W0, W1), ((W0, a), (W0 + 4 * BLOCK, b))), image)
    data = image.read_bytes()
    assert len(data) == SIZE
    assert data[W0 : W0 + BLOCK] == a and data[W0 + 4 * BLOCK : W0 + 6 * BLOCK] == b
    assert data.count(0) == SIZE - BLOCK - 2 * BLOCK + a.count(0) + b.count(0)


def _pair(tmp_path, size: int, changes: list[int], *, short: int = 0) -> tuple[int, int, bytes]:
    """A base of `size` random bytes and a scratch copy with one byte changed in each block of
    `changes` (the scratch `short` bytes shorter: its end reads as zeros)."""
    base = bytearray(os.urandom(size))
    scratch = bytearray(base)
    for b in changes:
        scratch[b * BLOCK + 7] ^= 0xFF
    (tmp_path / "base").write_bytes(base)
    (tmp_path / "scratch").write_bytes(scratch[: size - short])
    return os.open(tmp_path / "base", os.O_RDONLY), os.open(tmp_path / "scratch", os.O_RDONLY), bytes(scratch)


def test_diff_finds_changed_blocks_and_merges_neighbours_across_reads(tmp_path):
    size = (2 << 20) + 20 * BLOCK  # two whole 1 MiB reads and a short one
    changes = [3, 4, 5, 40, 255, 256, 511, 512, 520]
    base, scratch, data = _pair(tmp_path, size, changes)
    try:
        out = diff(base, scratch, (0, size), [(0, size)])
    finally:
        os.close(base), os.close(scratch)

    def at(b, n=1):
        return (b * BLOCK, data[b * BLOCK : (b + n) * BLOCK])

    assert out == [at(3, 3), at(40), at(255, 2), at(511, 2), at(520)]


def test_diff_looks_only_inside_the_ranges_and_the_window(tmp_path):
    size = 64 * BLOCK
    base, scratch, data = _pair(tmp_path, size, [1, 10, 20, 30, 50])
    try:
        out = diff(
            base,
            scratch,
            (5 * BLOCK, 40 * BLOCK),
            [(0, 12 * BLOCK - 100), (20 * BLOCK + 9, 20 * BLOCK + 10), (29 * BLOCK + 1, 60 * BLOCK)],
        )
    finally:
        os.close(base), os.close(scratch)
    assert [off for off, _ in out] == [10 * BLOCK, 20 * BLOCK, 30 * BLOCK]
    assert out[1] == (20 * BLOCK, data[20 * BLOCK : 21 * BLOCK])


def test_diff_reads_a_short_scratch_as_zeros(tmp_path):
    size = 16 * BLOCK
    base, scratch, data = _pair(tmp_path, size, [], short=BLOCK + 10)
    try:
        out = diff(base, scratch, (0, size), [(0, size)])
    finally:
        os.close(base), os.close(scratch)
    tail = data[14 * BLOCK : 15 * BLOCK - 10] + bytes(BLOCK + 10)
    assert out == [(14 * BLOCK, tail)]  # the base's random bytes there are not all zeros


def test_diff_of_identical_files_is_empty(tmp_path):
    size = (1 << 20) + 3 * BLOCK
    base, scratch, _ = _pair(tmp_path, size, [])
    try:
        assert diff(base, scratch, (0, size), [(0, size)]) == []
    finally:
        os.close(base), os.close(scratch)
