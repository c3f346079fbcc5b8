"""Read-only positioned reads on an image file or block device.

Only the sectors the parsers ask for are read, so an 8 GiB image inspects in milliseconds.
"""

from __future__ import annotations

import errno
import os
import stat

from ..errors import ImageFormatError, from_oserror


class ImageSource:
    """An image opened read-only; size comes from seeking to the end (works for block devices)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        from .overlay import lookup  # a unit delta attached under this name reads as its image

        self._view = lookup(self.path)
        try:
            opened = self._view.base if self._view is not None else self.path
            self.fd = os.open(opened, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise _open_error(self.path, exc) from exc
        try:
            mode = os.fstat(self.fd).st_mode
            if stat.S_ISDIR(mode):
                raise ImageFormatError(f"{self.path} is a directory, not a disk image")
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise ImageFormatError(f"{self.path} is not a regular file or block device")
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
        except BaseException:
            os.close(self.fd)
            raise

    def read(self, offset: int, length: int, what: str) -> bytes:
        """Exactly `length` bytes at `offset`, or an ImageFormatError naming `what` was cut off."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ImageFormatError(
                f"{self.path}: {what} at byte {offset} lies past the end of the image "
                f"({self.size} bytes): the image is truncated or not a disk image"
            )
        if self._view is not None:
            return self._view.pread(offset, length)
        chunks, done = [], 0
        while done < length:
            try:
                chunk = os.pread(self.fd, length - done, offset + done)
            except OSError as exc:
                raise from_oserror(exc, f"{self.path}: cannot read {what}", ImageFormatError) from exc
            if not chunk:
                raise ImageFormatError(f"{self.path}: {what} is cut off: the image is truncated")
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_error(path: str, exc: OSError) -> Exception:
    if exc.errno == errno.ENOENT:
        return ImageFormatError(f"{path}: no such file")
    return from_oserror(exc, f"cannot open {path}", ImageFormatError)
