"""delta.diff finds exactly the blocks a scratch changed, merged into extents, whatever the
chunk and piece boundaries; applying them to the base gives the scratch back (no subprocess)."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from imagetools.image import delta

BLOCK = delta.BLOCK
SIZE = 600 * BLOCK  # over two of diff's 1 MiB chunks, not a multiple of one


@settings(max_examples=60, deadline=None)
@given(
    changed=st.sets(st.integers(0, SIZE // BLOCK - 1), max_size=40),
    seed=st.binary(min_size=8, max_size=8),
    window=st.tuples(st.integers(0, 100), st.integers(400, SIZE // BLOCK + 3)),
)  # may end past the files
def test_diff_returns_exactly_the_changed_blocks(tmp_path_factory, changed, seed, window):
    tmp = tmp_path_factory.mktemp("diff")
    base = bytearray((seed * (SIZE // len(seed) + 1))[:SIZE])
    scratch = bytearray(base)
    for b in changed:
        scratch[b * BLOCK + 7] ^= 0x5A
    (tmp / "base").write_bytes(base)
    (tmp / "scratch").write_bytes(scratch)
    w = (window[0] * BLOCK, window[1] * BLOCK)
    with open(tmp / "base", "rb") as fb, open(tmp / "scratch", "rb") as fs:
        extents = delta.diff(fb.fileno(), fs.fileno(), w, [(0, SIZE + 3 * BLOCK)])
    found = {off // BLOCK + i for off, data in extents for i in range(len(data) // BLOCK)}
    assert found == {b for b in changed if w[0] // BLOCK <= b < w[1] // BLOCK}
    assert all(a + len(d) < b for (a, d), (b, _) in zip(extents, extents[1:]))  # merged, sorted
    patched = bytearray(base)
    for off, data in extents:
        patched[off : off + len(data)] = data
    assert patched[w[0] : w[1]] == scratch[w[0] : w[1]]
    for name in ("base", "scratch"):
        os.remove(tmp / name)
