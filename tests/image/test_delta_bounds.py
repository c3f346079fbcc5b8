"""The bounds a delta must keep, at the delta reader (parse, read, render) and at bound_to_base:
an extent may end exactly at its window's end and not one block past; extents are sorted and
disjoint; the window lies inside the base; the extent count is bounded. Blobs are built here
byte by byte from the documented file layout (image/delta.py), not by the code under test."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagetools.errors import ImageFormatError, UsageError
from imagetools.image import delta
from imagetools.layout import open_layout
from imagetools.published import block_map, bound_to_base

B = 4096
SHA = "ab" * 32


def blob(
    base_size: int, window: tuple[int, int], extents: list[tuple[int, int]], sha: str = SHA, count: int | None = None
) -> bytes:
    """A delta file as the format documents it: extents are (byte offset, blocks); each extent's
    bytes are its index + 1 repeated, so misplaced bytes show."""
    head = struct.pack(
        "<8sIIQ32sQQII",
        b"ITDELTA\n",
        1,
        B,
        base_size,
        bytes.fromhex(sha),
        window[0],
        window[1],
        len(extents) if count is None else count,
        0,
    )
    table = b"".join(struct.pack("<QII", off, blocks, 0) for off, blocks in extents)
    data = b"".join(bytes([i % 251 + 1]) * (blocks * B) for i, (_, blocks) in enumerate(extents))
    body = head + table + data
    return body + hashlib.sha256(body).digest()


def refused(data: bytes, match: str) -> None:
    with pytest.raises(ImageFormatError, match=match):
        delta.parse(data)


WINDOW = (4 * B, 20 * B)
BASE_SIZE = 24 * B


def test_an_extent_may_end_exactly_at_the_window_end_but_not_one_block_past():
    at_end = delta.parse(blob(BASE_SIZE, WINDOW, [(18 * B, 2)]))
    assert at_end.extents == ((18 * B, bytes([1]) * 2 * B),)
    assert delta.parse(blob(BASE_SIZE, WINDOW, [(4 * B, 16)])).data_bytes == 16 * B  # the whole window
    refused(blob(BASE_SIZE, WINDOW, [(18 * B, 3)]), "outside the window")
    refused(blob(BASE_SIZE, WINDOW, [(20 * B, 1)]), "outside the window")
    refused(blob(BASE_SIZE, WINDOW, [(3 * B, 1)]), "outside the window")  # before its start
    refused(blob(BASE_SIZE, WINDOW, [(3 * B, 2)]), "outside the window")  # straddling it
    past = delta.Delta(BASE_SIZE, SHA, WINDOW, ((19 * B, bytes(2 * B)),))
    with pytest.raises(ImageFormatError, match="outside the window"):
        past.render()


def test_overlapping_or_out_of_order_extents_are_refused():
    assert len(delta.parse(blob(BASE_SIZE, WINDOW, [(4 * B, 1), (5 * B, 1)])).extents) == 2  # adjacent
    for extents in (
        [(4 * B, 2), (5 * B, 1)],  # the second starts inside the first
        [(6 * B, 1), (6 * B, 1)],  # the same block twice
        [(8 * B, 1), (4 * B, 1)],  # out of order, disjoint
        [(4 * B, 1), (10 * B, 4), (12 * B, 1)],
    ):
        refused(blob(BASE_SIZE, WINDOW, extents), "overlaps another")
        pieces = tuple((off, bytes(n * B)) for off, n in extents)
        with pytest.raises(ImageFormatError, match="overlaps another"):
            delta.Delta(BASE_SIZE, SHA, WINDOW, pieces).render()


def test_a_window_ending_past_the_base_is_refused():
    assert delta.parse(blob(20 * B, WINDOW, [(19 * B, 1)])).window == WINDOW  # ends at the base's end
    for base_size in (20 * B - 1, 19 * B, 0):
        refused(blob(base_size, WINDOW, [(4 * B, 1)]), "inside the base")
    for window in ((0, 8 * B), (8 * B, 8 * B), (8 * B, 4 * B), (4 * B + 512, 8 * B), (4 * B, 8 * B + 1)):
        refused(blob(BASE_SIZE, window, []), "window")


def test_more_extents_than_the_bound_are_refused():
    most = [(B + i * 2 * B, 1) for i in range(delta.MAX_EXTENTS)]
    window = (B, B + 2 * B * (delta.MAX_EXTENTS + 1))
    assert len(delta.parse(blob(window[1], window, most)).extents) == delta.MAX_EXTENTS
    over = most + [(window[1] - B, 1)]
    refused(blob(window[1], window, over), f"{delta.MAX_EXTENTS + 1} extents, more than {delta.MAX_EXTENTS}")
    refused(blob(window[1], window, most[:1], count=0xFFFFFFFF), "more than")  # a count the file cannot hold
    refused(blob(window[1], window, most[:1], count=delta.MAX_EXTENTS), "do not fit")
    refused(blob(window[1], window, most[:3], count=4), "bad length")  # data read as a table entry
    pieces = tuple((off, bytes(B)) for off, _ in over)
    with pytest.raises(ImageFormatError, match="too many extents"):
        delta.Delta(window[1], SHA, window, pieces).render()


def test_read_refuses_what_parse_refuses(tmp_path):
    path = tmp_path / "u.delta"
    path.write_bytes(blob(BASE_SIZE, WINDOW, [(19 * B, 2)]))
    with pytest.raises(ImageFormatError, match=f"{path}: extent at byte {19 * B}"):
        delta.read(path)
    path.write_bytes(blob(BASE_SIZE, WINDOW, [(19 * B, 1)]))
    assert delta.read(path).extents[0][0] == 19 * B


def _model_accepts(base_size: int, window: tuple[int, int], extents: list[tuple[int, int]]) -> bool:
    """The documented rules, as sets of blocks: an aligned window inside the base, whole-block
    extents at aligned offsets, in ascending order, none sharing a block, all inside the window."""
    w0, w1 = window
    if not (0 < w0 < w1 <= base_size and w0 % B == 0 and w1 % B == 0) or len(extents) > delta.MAX_EXTENTS:
        return False
    inside = set(range(w0 // B, w1 // B))
    written: set[int] = set()
    previous = -1
    for off, blocks in extents:
        span = set(range(off // B, off // B + blocks))
        if off % B or not span or not span <= inside or span & written or off // B < previous:
            return False
        written |= span
        previous = off // B
    return True


_extent = st.tuples(st.integers(0, 30), st.sampled_from([0, 0, 0, 0, 1, 512]), st.integers(0, 4))


@settings(max_examples=400, deadline=None)
@given(
    w0=st.integers(0, 8),
    w1=st.integers(0, 30),
    size=st.integers(0, 32 * B),
    jitter=st.sampled_from([0, 0, 1, 512]),
    raw=st.lists(_extent, max_size=6),
    ordered=st.booleans(),
)
def test_parse_accepts_exactly_the_deltas_the_rules_allow(w0, w1, size, jitter, raw, ordered):
    window = (w0 * B + jitter, w1 * B)
    extents = [(start * B + off, blocks) for start, off, blocks in raw]
    if ordered:
        extents.sort()
    data = blob(size, window, extents)
    try:
        parsed = delta.parse(data)
    except ImageFormatError as exc:
        assert "\n" not in str(exc)
        assert not _model_accepts(size, window, extents), exc
        return
    assert _model_accepts(size, window, extents)
    assert parsed.render() == data
    for off, piece in parsed.extents:
        assert window[0] <= off and off + len(piece) <= window[1] <= parsed.base_size


# --- bound to a real base ---------------------------------------------------------------------------


@pytest.fixture
def base(make_image, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = make_image("sdimg")
    return image, block_map(image, use_bmap=False), open_layout(image).require("data").partition


def test_bound_to_base_takes_an_extent_at_the_data_partition_end_and_nothing_past(base):
    image, base_map, data = base
    window = (data.start, data.end)
    last = delta.parse(blob(base_map.size, window, [(data.end - 2 * B, 2)], base_map.sha256))
    bound_to_base(last, image, base_map, "last blocks")
    with pytest.raises(ImageFormatError, match="outside the window"):
        delta.parse(blob(base_map.size, window, [(data.end - B, 2)], base_map.sha256))
    assert data.end + B <= base_map.size, "the test base needs space after its data partition"
    one_past = delta.parse(blob(base_map.size, (data.start, data.end + B), [(data.end, 1)], base_map.sha256))
    with pytest.raises(UsageError, match="is not the data partition"):
        bound_to_base(one_past, image, base_map, "one past")
    with pytest.raises(ImageFormatError, match="inside the base"):
        delta.parse(blob(data.end - B, window, [(data.start, 1)], base_map.sha256))


def test_bound_to_base_refuses_a_window_past_the_base_whatever_the_delta_claims(base):
    image, base_map, data = base
    past = delta.Delta(base_map.size, base_map.sha256, (data.start, base_map.size + B), ((data.start, bytes(B)),))
    with pytest.raises(ImageFormatError, match="inside the base"):
        past.render()  # never written, never read (parse runs the same check)
    with pytest.raises(UsageError, match="is not the data partition"):
        bound_to_base(past, image, base_map, "past")
    bigger = delta.Delta(
        base_map.size + 8 * B, base_map.sha256, (data.start, base_map.size + 8 * B), ((data.start, bytes(B)),)
    )
    delta.parse(bigger.render())  # consistent in itself: only the real base refutes it
    with pytest.raises(UsageError, match="made over a base of"):
        bound_to_base(bigger, image, base_map, "bigger")
    shifted = delta.Delta(base_map.size, base_map.sha256, (data.start + B, data.end), ((data.start + B, bytes(B)),))
    with pytest.raises(UsageError, match="is not the data partition"):
        bound_to_base(delta.parse(shifted.render()), image, base_map, "shifted")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.integers(-4, 4), blocks=st.integers(1, 6), shift=st.integers(-2, 2))
def test_whatever_parses_and_binds_writes_only_inside_the_data_partition(base, first, blocks, shift):
    image, base_map, data = base
    window = (data.start, data.end + shift * B)
    start = (data.start if first >= 0 else data.end) + first * B
    try:
        made = delta.parse(blob(base_map.size, window, [(start, blocks)], base_map.sha256))
        bound_to_base(made, image, base_map, "random")
    except (ImageFormatError, UsageError):
        assert not (shift == 0 and data.start <= start and start + blocks * B <= data.end)
        return
    assert shift == 0
    assert all(data.start <= off and off + len(piece) <= data.end for off, piece in made.extents)
