"""bmap 2.0 files (sha256) for `bmaptool copy`, and the image's SHA-256 from the same single pass.

A flashing station copies only the mapped blocks a bmap lists and checks each range's checksum, so
writing a card costs the image's data, not its size. Emitting thousands of images that differ from
their base only inside the data partition, we hash the base once and reuse its range checksums and
its SHA-256 state up to the data partition for every unit (`Reuse`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .sparse import data_ranges

BLOCK_SIZE = 4096
BMAP_VERSION = "2.0"
_CHUNK = 4 << 20
_ZEROS = memoryview(bytes(_CHUNK))
_PLACEHOLDER = "0" * 64


@dataclass(frozen=True)
class BlockRange:
    first: int  # block numbers, inclusive
    last: int
    sha256: str


@dataclass
class Reuse:
    """What a unit image shares with its base: outside blocks [window_first, window_end) the bytes
    are the base's, so the range checksums before the window and the SHA-256 state at
    window_first carry over (what follows the window is hashed again: the whole-image sha256
    needs it in order)."""

    window_first: int
    window_end: int
    known: dict[tuple[int, int], str]
    prefix: Any  # hashlib sha256 object after hashing blocks [0, window_first)


@dataclass
class Scan:
    size: int
    ranges: list[BlockRange]
    sha256: str | None  # of the whole image, holes read as zeros (= `sha256sum IMAGE`); None: not asked for
    reuse: Reuse | None = field(default=None, repr=False)  # only from scan(..., window=...)

    def whole_sha256(self) -> str:
        """sha256, of a scan that was asked for it (the default): its absence is a bug."""
        assert self.sha256 is not None, "scanned with whole=False"
        return self.sha256


def scan(
    path: str | os.PathLike, *, window: tuple[int, int] | None = None, reuse: Reuse | None = None, whole: bool = True
) -> Scan:
    """One pass over the data extents: per-range sha256 for the bmap plus the whole-image sha256.

    window=(start, end) bytes: also return a Reuse for images that differ only there (the base).
    reuse=: skip hashing what the unit shares with its base.
    whole=False: no whole-image sha256 (it hashes every hole as zeros; the ranges' checksums
    already cover every mapped byte).
    """
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        cuts: tuple[int, ...]  # the window's (first, end) blocks, or none
        cuts = _window_blocks(window) if window else (reuse.window_first, reuse.window_end) if reuse else tuple()
        spans = mapped_spans(fd, size, cuts)
        snap_at = cuts[0] * BLOCK_SIZE if window else None
        hashed = _WholeHash(size, snap_at) if whole or window else None
        if reuse is not None and hashed is not None:
            hashed.start_from(reuse.prefix, reuse.window_first * BLOCK_SIZE)
        ranges = []
        for first, last in spans:
            known = None
            if reuse is not None and last < reuse.window_first:
                known = reuse.known.get((first, last))
            ranges.append(BlockRange(first, last, known or _hash_range(fd, size, first, last, hashed)))
        if hashed is not None:
            hashed.zeros_to(size)
    result = Scan(size, ranges, None if hashed is None else hashed.hexdigest())
    if window:
        assert hashed is not None
        wf, we = cuts
        result.reuse = Reuse(wf, we, {(r.first, r.last): r.sha256 for r in ranges if r.last < wf}, hashed.snapshot)
    return result


def mapped_spans(fd: int, size: int, cuts: Iterable[int] = ()) -> list[tuple[int, int]]:
    """Block ranges covering every data extent (aligned outward, merged), split at block `cuts`."""
    spans: list[tuple[int, int]] = []
    for start, end in data_ranges(fd, size):
        first, last = start // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        if spans and first <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], max(last, spans[-1][1]))
        else:
            spans.append((first, last))
    for cut in sorted(set(cuts)):
        spans = [piece for span in spans for piece in _split(span, cut)]
    return spans


def render(size: int, ranges: list[BlockRange]) -> bytes:
    """The bmap XML, with BmapFileChecksum computed the way bmaptool checks it (over the file with
    the checksum field set to zeros)."""
    blocks = (size + BLOCK_SIZE - 1) // BLOCK_SIZE
    mapped = sum(r.last - r.first + 1 for r in ranges)
    percent = mapped * 100.0 / blocks if blocks else 0.0
    lines = [
        '<?xml version="1.0" ?>',
        "<!-- Block map (bmap) written by imagetools: the blocks of the image that hold data.",
        "     Flash with bmaptool copy (give this file with its bmap option). -->",
        f'<bmap version="{BMAP_VERSION}">',
        f"    <ImageSize> {size} </ImageSize>",
        f"    <BlockSize> {BLOCK_SIZE} </BlockSize>",
        f"    <BlocksCount> {blocks} </BlocksCount>",
        f"    <!-- Mapped: {mapped * BLOCK_SIZE} bytes or {percent:.1f}% -->",
        f"    <MappedBlocksCount> {mapped} </MappedBlocksCount>",
        "    <ChecksumType> sha256 </ChecksumType>",
        f"    <BmapFileChecksum> {_PLACEHOLDER} </BmapFileChecksum>",
        "    <BlockMap>",
    ]
    for r in ranges:
        span = f"{r.first}-{r.last}" if r.last != r.first else f"{r.first}"
        lines.append(f'        <Range chksum="{r.sha256}"> {span} </Range>')
    lines += ["    </BlockMap>", "</bmap>", ""]
    text = "\n".join(lines).encode()
    digest = hashlib.sha256(text).hexdigest().encode()
    return text.replace(_PLACEHOLDER.encode(), digest, 1)


def create(path: str | os.PathLike) -> bytes:
    """The bmap of an image file, hashing all of its data."""
    result = scan(path)
    return render(result.size, result.ranges)


class _WholeHash:
    """Whole-image sha256 fed in order: data where mapped, zeros for holes, never read from disk.
    Optionally keeps a copy of the state at one offset (the base's prefix for Reuse)."""

    def __init__(self, size: int, snap_at: int | None):
        self.h = hashlib.sha256()
        self.pos = 0
        self.size = size
        self.snap_at = snap_at
        self.snapshot: Any = None  # hashlib sha256 object at snap_at, once reached
        self._snap()

    def start_from(self, state: Any, pos: int) -> None:
        self.h, self.pos = state.copy(), pos

    def zeros_to(self, end: int) -> None:
        while self.pos < end:
            n = min(end - self.pos, _CHUNK, self._room())
            self.h.update(_ZEROS[:n])
            self.pos += n
            self._snap()

    def data(self, offset: int, buf: memoryview) -> None:
        """Feed buf (at image offset) where it extends past what is hashed already."""
        self.zeros_to(offset)
        skip = self.pos - offset
        while skip < len(buf):
            n = min(len(buf) - skip, self._room())
            self.h.update(buf[skip : skip + n])
            self.pos += n
            skip += n
            self._snap()

    def hexdigest(self) -> str:
        return self.h.hexdigest()

    def _room(self) -> int:
        if self.snap_at is not None and self.snapshot is None and self.pos < self.snap_at:
            return self.snap_at - self.pos
        return 1 << 62

    def _snap(self) -> None:
        if self.snapshot is None and self.snap_at is not None and self.pos == self.snap_at:
            self.snapshot = self.h.copy()


def _hash_range(fd: int, size: int, first: int, last: int, whole: _WholeHash | None) -> str:
    """sha256 of the blocks as bmaptool reads them (a final partial block is short)."""
    h = hashlib.sha256()
    pos, end = first * BLOCK_SIZE, min((last + 1) * BLOCK_SIZE, size)
    while pos < end:
        buf = memoryview(os.pread(fd, min(_CHUNK, end - pos), pos))
        if not buf:
            raise OSError(f"image shrank while hashing it (at byte {pos})")
        h.update(buf)
        if whole is not None and pos + len(buf) > whole.pos:
            whole.data(pos, buf)
        pos += len(buf)
    return h.hexdigest()


def _split(span: tuple[int, int], cut: int) -> list[tuple[int, int]]:
    first, last = span
    if first < cut <= last:
        return [(first, cut - 1), (cut, last)]
    return [span]


def _window_blocks(window: tuple[int, int]) -> tuple[int, int]:
    start, end = window
    return start // BLOCK_SIZE, (end + BLOCK_SIZE - 1) // BLOCK_SIZE
