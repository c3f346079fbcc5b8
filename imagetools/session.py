"""One open image for the length of one command: one descriptor, its layout read once, each
filesystem opened at most once (read-only, when first asked for, read on that descriptor), and
the device's view of each rootfs.

Readers that take a session (verify, menderconf.read) share what one has opened instead of
opening the image again per check: verify opens the image once and reads the table and each of
data, rootfs A and rootfs B through it. A unit's delta reads as its image when the session's
source is its overlay. It lives above layout and fs (it holds both); image/ stays below them.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Self

from .deviceview import DeviceView
from .fs import Filesystem, lock
from .fs.base import check_writable
from .image import ImageSource, read_image
from .layout import Layout, PartInfo, detect_layout


class ImageSession:
    """The image `source`: a path, opened now and closed with the session, or an ImageSource
    the caller opened (a descriptor it holds, or a unit's overlay); `layout` read now unless
    given; filesystems opened on demand, all read through the source."""

    def __init__(
        self,
        source: str | os.PathLike | ImageSource,
        layout: Layout | None = None,
        overrides: dict[str, int] | None = None,
        *,
        writing: bool = False,
    ):
        """`writing`: the file commands' session (a path): the image refused up front if it
        cannot be written, its write lock held for the whole session, filesystems opened
        writable."""
        self._stack = ExitStack()
        self.writing = writing
        try:
            if writing:
                assert not isinstance(source, ImageSource)  # a write goes to a file, not a view
                check_writable(os.fspath(source))  # before anything is looked at, let alone changed
                self._stack.enter_context(lock.exclusive(source))  # every partition, the whole change
            if not isinstance(source, ImageSource):
                source = self._stack.enter_context(ImageSource(source))
            self.source, self.path, self.overlay = source, source.path, source.overlay
            self.layout = layout if layout is not None else detect_layout(read_image(source), overrides, source)
        except BaseException:
            self._stack.close()
            raise
        self._open: dict[int, Filesystem] = {}

    def filesystem(self, part: PartInfo) -> Filesystem:
        """`part`'s filesystem (writable in a writing session), opened the first time it is asked
        for (FilesystemError if it cannot be: asked again, it is tried again); its reads go
        through the session's descriptor."""
        if part.number not in self._open:
            fs = part.open(self.path, writable=self.writing, source=self.source)
            self._open[part.number] = self._stack.enter_context(fs)
        return self._open[part.number]

    def data(self) -> Filesystem | None:
        """The data partition's filesystem; None when there is none that can be one."""
        part = self.layout.data
        if part is None or not part.caps.data_partition:
            return None
        return self.filesystem(part)

    def device(self, rootfs: PartInfo) -> DeviceView:
        """`rootfs` as the running device sees it, the data partition at /data."""
        return DeviceView(self.filesystem(rootfs), self.data(), rootfs.where)

    def fsck(self, part: PartInfo) -> tuple[bool, str]:
        """e2fsck -fn of `part` (a delta's touched partition materialized alone for it)."""
        return part.fsck(self.path, self.overlay)

    def close(self) -> None:
        self._open.clear()
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
