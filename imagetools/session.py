"""One open image for the length of one command: its layout read once, each filesystem opened at
most once (read-only, when first asked for), and the device's view of each rootfs.

Readers that take a session (verify, menderconf.read) share what one has opened instead of
opening the image again per check: verify reads the table once and each of data, rootfs A and
rootfs B once. It lives above layout and fs (it holds both); image/ stays below them.
"""

from __future__ import annotations

import os
from contextlib import ExitStack

from .deviceview import DeviceView
from .fs import Filesystem
from .layout import Layout, PartInfo, open_layout


class ImageSession:
    """`layout` of the image at `path` (read now unless given), filesystems opened on demand."""

    def __init__(self, path: str | os.PathLike, layout: Layout | None = None, overrides: dict[str, int] | None = None):
        self.path = os.fspath(path)
        self.layout = layout if layout is not None else open_layout(self.path, overrides)
        self._open: dict[int, Filesystem] = {}
        self._stack = ExitStack()

    def filesystem(self, part: PartInfo) -> Filesystem:
        """`part`'s filesystem, read-only, opened the first time it is asked for (FilesystemError
        if it cannot be: asked again, it is tried again)."""
        if part.number not in self._open:
            self._open[part.number] = self._stack.enter_context(part.open(self.path))
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

    def close(self) -> None:
        self._open.clear()
        self._stack.close()

    def __enter__(self) -> ImageSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
