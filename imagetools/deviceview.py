"""An image's files as the running device sees them: the data partition mounted at /data, links
on the rootfs followed as the device follows them (/var/lib/mender is a link to /data/mender).

The one place that maps a device path into the data partition (on_data) and resolves a device
path across rootfs and data (resolve_on_rootfs, DeviceView): verify's link checks and the
Mender configuration (menderconf) both read through it.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, replace

from .errors import FilesystemError
from .fs import Filesystem, NotFoundError
from .mender import DATA_DATASTORE, DATA_MOUNT, DATASTORE

MAX_FILE = 1 << 20  # a file read through the view unless the caller says otherwise
MAX_LINKS = 40  # as Linux's path walk


def on_data(path: str, *, datastore: bool = False) -> str | None:
    """The path inside the data partition of a file below /data on the device ('/data/mender/x'
    → '/mender/x'), None for any other path. With `datastore`, the client's /var/lib/mender/...
    counts as below /data too (the link every Mender image has), without looking at the image."""
    norm = posixpath.normpath(path)
    prefixes = ((DATA_MOUNT, ""),) + (((DATASTORE, DATA_DATASTORE[len(DATA_MOUNT) :]),) if datastore else ())
    for prefix, inner in prefixes:
        if norm.startswith(prefix + "/"):
            return inner + norm[len(prefix) :]
    return None


def device_path(inner: str) -> str:
    """The device path of `inner` on the data partition (on_data's inverse)."""
    return DATA_MOUNT + inner


def is_empty(fs: Filesystem) -> bool:
    """Nothing but lost+found: a rootfs B meta-mender leaves for the first update to fill."""
    return not [e for e in fs.list("/") if e.name not in (".", "..", "lost+found")]


def resolve_on_rootfs(fs: Filesystem, path: str, max_links: int = MAX_LINKS) -> tuple[str, list[str]]:
    """Resolve `path` as the running system would with the data partition mounted at /data:
    follow symlinks (absolute and relative) component by component on the rootfs; below /data the
    rest lives on the data partition and is normalized lexically. Returns (resolved path, links
    followed as 'link -> target'); FilesystemError if a component is missing or links loop."""
    pending = [p for p in path.split("/") if p]
    done: list[str] = []
    chain: list[str] = []
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            done = done[:-1]
            continue
        if not done and "/" + name == DATA_MOUNT:
            return posixpath.normpath("/" + "/".join([name] + pending)), chain
        here = "/" + "/".join(done + [name])
        if not fs.exists(here):
            raise FilesystemError(f"{here} does not exist" + (f" (after {', '.join(chain)})" if chain else ""))
        entry = fs.stat(here)
        if entry.type == "symlink":
            if len(chain) >= max_links:
                raise FilesystemError(f"{path}: too many levels of symbolic links")
            link = entry.target if entry.target is not None else fs.readlink(here)
            chain.append(f"{here} -> {link}")
            if link.startswith("/"):
                done = []
            pending = [p for p in link.split("/") if p] + pending
            continue
        if pending and entry.type != "dir":
            raise FilesystemError(f"{here} is not a directory")
        done.append(name)
    return "/" + "/".join(done), chain


@dataclass
class FileState:
    """One file as found through the view."""

    path: str  # the device path looked up
    present: bool
    where: str  # where it was found, e.g. '/data/mender/mender.conf on the data partition'
    size: int | None = None
    mode: str | None = None  # '0600'
    owner: str | None = None  # '0:0'
    sha256: str | None = None
    problem: str | None = None


class DeviceView:
    """One rootfs with the data partition at /data (None: no readable data partition)."""

    def __init__(self, rootfs: Filesystem, data: Filesystem | None, where: str):
        self.rootfs, self.data, self.where = rootfs, data, where
        self._dirs: dict[str, str | FilesystemError] = {}  # directory -> where it resolves (or why not)

    def locate(self, path: str) -> tuple[Filesystem | None, str, str]:
        """(filesystem or None when unreachable, path inside it, how messages name it)."""
        directory = posixpath.dirname(path)
        if directory not in self._dirs:
            try:
                self._dirs[directory] = resolve_on_rootfs(self.rootfs, directory)[0]
            except FilesystemError as exc:
                self._dirs[directory] = exc
        parent = self._dirs[directory]
        if isinstance(parent, FilesystemError):
            return None, path, f"{path} on {self.where} ({parent})"
        full = posixpath.join(parent, posixpath.basename(path))
        inner = on_data(full)
        if inner is not None:
            where = f"{full} on the data partition" + ("" if full == path else f" (as {path})")
            return self.data, inner, where
        return self.rootfs, full, f"{full} on {self.where}" + ("" if full == path else f" (as {path})")

    def resolve(self, path: str) -> str | None:
        """Where `path` leads on the device ('/data/...' on the data partition); None if nowhere."""
        fs, inner, _ = self.locate(path)
        if fs is None:
            return None
        return device_path(inner) if fs is self.data else inner

    def read(self, path: str, limit: int = MAX_FILE, depth: int = 0) -> tuple[bytes | None, FileState]:
        """A regular file's content and state; None when absent. A link on the rootfs is followed
        (by its target's path, as the device would); anything else that is not a file is a problem."""
        fs, inner, where = self.locate(path)
        state = FileState(path, False, where)
        if fs is None:
            return None, state
        try:
            entry = fs.stat(inner)
        except NotFoundError:
            return None, state
        except FilesystemError as exc:
            return None, replace(state, problem=str(exc))
        if entry.type == "symlink" and fs is self.rootfs and depth < 8 and entry.target:
            target = posixpath.normpath(posixpath.join(posixpath.dirname(inner), entry.target))
            content, state = self.read(target, limit, depth + 1)
            return content, replace(state, path=path, where=f"{state.where} (through the link {inner})")
        state = replace(
            state, present=True, size=entry.size, mode=f"{entry.mode:04o}", owner=f"{entry.uid}:{entry.gid}"
        )
        if entry.type != "file":
            return None, replace(state, problem=f"{where} is a {entry.type}, not a regular file")
        if entry.size > limit:
            return None, replace(state, problem=f"{where} is {entry.size} bytes, more than the {limit} read")
        data = fs.read(inner)
        return data, replace(state, sha256=hashlib.sha256(data).hexdigest())
