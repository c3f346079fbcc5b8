"""Read-only positioned reads on an image file or block device.

Only the sectors the parsers ask for are read, so an 8 GiB image inspects in milliseconds. One
ImageSource serves everything a command reads from one image: the table parsers through `read`,
the filesystem readers through `reader()`, all as positioned reads on its one descriptor (which
may be borrowed: a station reads a card back on the descriptor it wrote it with).

An Overlay is a unit's image as base + delta, read without ever being written out: the base's
bytes with the delta's blocks on top. A reader is given it explicitly (`ImageSource(name,
overlay=...)`): the table is read through it, a filesystem in a partition the delta does not
touch is read from the base itself, and one the delta touches reads through the overlay. So
verify runs all of its checks on a delta unit unchanged, and nothing is materialized except, for
e2fsck, the touched partition.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from typing import TYPE_CHECKING

from ..errors import ImageFormatError, UsageError, from_oserror

if TYPE_CHECKING:  # an annotation only: whoever makes an Overlay has its Delta, readers need neither
    from .delta import Delta


class ImageSource:
    """An image opened read-only (or `fd`, borrowed and left open; or a unit's `overlay`, the
    base's bytes with the delta on top); size comes from seeking to the end (block devices too)."""

    def __init__(self, path: str | os.PathLike, *, fd: int | None = None, overlay: Overlay | None = None):
        self.path = os.fspath(path)
        self.overlay = overlay
        self.fd: int
        self.size: int
        if overlay is not None:
            self.fd, self.size, self._owned = overlay.source.fd, overlay.size, False
            return
        self._owned = fd is None
        self.fd = fd if fd is not None else _open(self.path)
        try:
            mode = os.fstat(self.fd).st_mode
            if stat.S_ISDIR(mode):
                raise ImageFormatError(f"{self.path} is a directory, not a disk image")
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise ImageFormatError(f"{self.path} is not a regular file or block device")
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
        except BaseException:
            self.close()
            raise

    def read(self, offset: int, length: int, what: str) -> bytes:
        """Exactly `length` bytes at `offset`, or an ImageFormatError naming `what` was cut off."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ImageFormatError(
                f"{self.path}: {what} at byte {offset} lies past the end of the image "
                f"({self.size} bytes): the image is truncated or not a disk image"
            )
        try:
            data = self.pread(offset, length)
        except OSError as exc:
            raise from_oserror(exc, f"{self.path}: cannot read {what}", ImageFormatError) from exc
        if len(data) < length:
            raise ImageFormatError(f"{self.path}: {what} is cut off: the image is truncated")
        return data

    def pread(self, offset: int, n: int) -> bytes:
        """Up to n bytes at offset: short only at the end (OSError as the kernel gives it)."""
        if self.overlay is not None:
            return self.overlay.pread(offset, n)
        chunks, done = [], 0
        while done < n:
            chunk = os.pread(self.fd, n - done, offset + done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)

    def reader(self) -> io.BufferedReader:
        """A seekable binary file object over the image (what the filesystem packages read), on
        this source's descriptor: no file is opened again."""
        return io.BufferedReader(_Raw(self), buffer_size=64 * 1024)

    def close(self) -> None:
        if self._owned:
            self._owned = False
            os.close(self.fd)

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Overlay:
    """Read-only view of the open `source` (the base) with `delta` applied; the delta must be
    for this base. The base is read on the source's descriptor, never opened again."""

    def __init__(self, source: ImageSource, delta: Delta, base_sha256: str):
        self.source = source
        self.base = os.path.abspath(source.path)
        self.delta = delta
        self.size = source.size
        if self.size != delta.base_size or base_sha256 != delta.base_sha256:
            raise UsageError(
                f"{self.base} is not the base this delta was made from (its sha256 "
                f"{base_sha256[:16]}..., {self.size} bytes; the delta's base: "
                f"{delta.base_sha256[:16]}..., {delta.base_size} bytes)"
            )

    def pread(self, offset: int, n: int) -> bytes:
        """Up to n bytes at offset (short only at the end of the image)."""
        n = max(0, min(n, self.size - offset))
        buf = bytearray(self.source.pread(offset, n))
        buf.extend(bytes(n - len(buf)))
        for off, data in self.delta.extents:
            a, b = max(off, offset), min(off + len(data), offset + n)
            if a < b:
                buf[a - offset : b - offset] = data[a - off : b - off]
        return bytes(buf)

    def touches(self, start: int, end: int) -> bool:
        return self.delta.touches(start, end)

    def copy_range(self, start: int, end: int, fd: int) -> None:
        """Bytes [start, end) of the composed image into fd at offset 0, holes kept as holes."""
        from ..sparse import data_ranges  # only e2fsck of a touched partition needs it

        os.ftruncate(fd, end - start)
        pieces = [(max(a, start), min(b, end)) for a, b in data_ranges(self.source.fd, self.size)]
        pieces += [(max(off, start), min(off + len(data), end)) for off, data in self.delta.extents]
        for a, b in pieces:
            for pos in range(a, b, 1 << 20):
                n = min(1 << 20, b - pos)
                if n > 0:
                    os.pwrite(fd, self.pread(pos, n), pos - start)


class _Raw(io.RawIOBase):
    """Positioned reads of a source as a file: its own position, the source's descriptor."""

    def __init__(self, source: ImageSource):
        self.source, self.pos = source, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.source.size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        data = self.source.pread(self.pos, len(buf))
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise ImageFormatError(f"{path}: no such file") from exc
        raise from_oserror(exc, f"cannot open {path}", ImageFormatError) from exc
