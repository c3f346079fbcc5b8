"""A unit's image as base + delta, read without ever being written out.

An Overlay serves reads of the composed image: the base's bytes with the delta's blocks on top.
While `attached(name, overlay)` is active, `name` (the delta's path, say) can be given to every
reader in the toolkit as if it were an image file: ImageSource reads the table through the
overlay, a filesystem in a partition the delta does not touch is opened on the base file itself
(`route`), and one the delta touches reads through `reader()`. So verify runs all of its checks
on a delta unit unchanged, and nothing is materialized except, for e2fsck, the touched partition.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import ImageFormatError, UsageError

if TYPE_CHECKING:  # an annotation only: whoever makes an Overlay has its Delta, readers need neither
    from .delta import Delta

_VIEWS: dict[str, Overlay] = {}


class Overlay:
    """Read-only view of `base` with `delta` applied; the delta must be for this base."""

    def __init__(self, base: str | os.PathLike, delta: Delta, base_sha256: str):
        self.base = os.path.abspath(os.fspath(base))
        self.delta = delta
        self.size = os.stat(self.base).st_size
        if self.size != delta.base_size or base_sha256 != delta.base_sha256:
            raise UsageError(
                f"{self.base} is not the base this delta was made from (its sha256 "
                f"{base_sha256[:16]}..., {self.size} bytes; the delta's base: "
                f"{delta.base_sha256[:16]}..., {delta.base_size} bytes)"
            )

    def pread(self, offset: int, n: int) -> bytes:
        """Up to n bytes at offset (short only at the end of the image)."""
        n = max(0, min(n, self.size - offset))
        with open(self.base, "rb", buffering=0) as f:
            buf = bytearray(os.pread(f.fileno(), n, offset))
        buf.extend(bytes(n - len(buf)))
        for off, data in self.delta.extents:
            a, b = max(off, offset), min(off + len(data), offset + n)
            if a < b:
                buf[a - offset : b - offset] = data[a - off : b - off]
        return bytes(buf)

    def touches(self, start: int, end: int) -> bool:
        return self.delta.touches(start, end)

    def reader(self) -> io.BufferedReader:
        """A seekable binary file object over the composed image (what the ext4 package reads)."""
        return io.BufferedReader(_Raw(self), buffer_size=64 * 1024)

    def copy_range(self, start: int, end: int, fd: int) -> None:
        """Bytes [start, end) of the composed image into fd at offset 0, holes kept as holes."""
        from ..sparse import data_ranges

        os.ftruncate(fd, end - start)
        with open(self.base, "rb", buffering=0) as f:
            pieces = [(max(a, start), min(b, end)) for a, b in data_ranges(f.fileno(), self.size)]
        pieces += [(max(off, start), min(off + len(data), end)) for off, data in self.delta.extents]
        for a, b in pieces:
            for pos in range(a, b, 1 << 20):
                n = min(1 << 20, b - pos)
                if n > 0:
                    os.pwrite(fd, self.pread(pos, n), pos - start)


class _Raw(io.RawIOBase):
    def __init__(self, overlay: Overlay):
        self.overlay, self.pos = overlay, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.overlay.size}[whence]
        if base + offset < 0:
            raise OSError(22, "negative seek position")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        data = self.overlay.pread(self.pos, len(buf))
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


@contextlib.contextmanager
def attached(name: str | os.PathLike, overlay: Overlay) -> Iterator[str]:
    """Make `name` read as the overlay's composed image for the duration (yields its key)."""
    key = os.path.abspath(os.fspath(name))
    if key in _VIEWS:
        raise ImageFormatError(f"{key} is already attached as an overlay")
    _VIEWS[key] = overlay
    try:
        yield key
    finally:
        del _VIEWS[key]


def lookup(path: str | os.PathLike) -> Overlay | None:
    """The overlay attached under `path`, if any."""
    if not _VIEWS:
        return None
    return _VIEWS.get(os.path.abspath(os.fspath(path)))


def route(path: str | os.PathLike, offset: int, size: int | None) -> str | os.PathLike:
    """The file to open for the region at offset: the base itself when the path is an overlay
    whose delta does not touch the region, else the path unchanged."""
    view = lookup(path)
    if view is None:
        return path
    end = view.size if size is None else offset + size
    return path if view.touches(offset, end) else view.base
