"""Byte spans, [start, end) pairs, as the zeroing plan needs them: merged, subtracted, clipped to
blocks, intersected; linear in the number of spans (a filesystem has at most MAX_SPANS)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .. import bmap
from ..image.model import Partition

ALIGN = bmap.BLOCK_SIZE
Span = tuple[int, int]  # [start, end): bytes, or blocks inside one filesystem


def outside(parts: Iterable[Partition], size: int) -> list[Span]:
    """Everything of [0, size) no usable partition covers (extended containers are outside)."""
    return subtract([(0, size)], merge([(p.start, p.end) for p in parts]))


def holes(ranges: Sequence[bmap.BlockRange], size: int) -> list[Span]:
    """[0, size) less the mapped blocks."""
    mapped = [(r.first * ALIGN, min((r.last + 1) * ALIGN, size)) for r in ranges]
    return subtract([(0, size)], merge(mapped))


def clip(spans: Iterable[Span], low: int, high: int) -> list[Span]:
    """Spans rounded out to ALIGN, then cut to [low, high)."""
    out = []
    for a, b in spans:
        a, b = max(a // ALIGN * ALIGN, low), min(-(-b // ALIGN) * ALIGN, high)
        if a < b:
            out.append((a, b))
    return out


def merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, with overlapping or touching spans joined."""
    out: list[Span] = []
    for a, b in sorted(s for s in spans if s[0] < s[1]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def subtract(spans: list[Span], cut: list[Span]) -> list[Span]:
    """Merged `spans` less merged `cut`."""
    out: list[Span] = []
    i = 0
    for a, b in spans:
        while i < len(cut) and cut[i][1] <= a:
            i += 1
        j = i
        while j < len(cut) and cut[j][0] < b:
            if cut[j][0] > a:
                out.append((a, cut[j][0]))
            a = max(a, cut[j][1])
            j += 1
        if a < b:
            out.append((a, b))
    return out


def intersect(xs: list[Span], ys: list[Span]) -> list[Span]:
    """Merged spans in both merged lists, touching results joined."""
    out: list[Span] = []
    i = j = 0
    while i < len(xs) and j < len(ys):
        a, b = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if a < b:
            out.append((a, b))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return merge(out)
