"""A unit as a delta over its base: the key injected into a scratch file that holds only the
base's data partition, then compared with the base block by block.

The base is never copied: the scratch is a sparse file of the base's size holding the data
partition's allocated extents (a few MiB however large the image), so debugfs and e2fsck work on
it at the partition's offset exactly as on a full image. It lives in a 0700 directory as a 0600
file (it holds the key), on tmpfs when there is one, where the fsyncs of debugfs and e2fsck cost
nothing. A scratch serves unit after unit: once a unit's delta is taken, the base's bytes are
written back over exactly the blocks the delta holds, so the next unit starts from the base (and
no key stays behind in it); a unit that fails after its key was written empties the scratch
before the error goes on. Copying the window again for every unit cost more than debugfs.

A process killed with SIGKILL cannot remove its scratch directory, and on tmpfs that copy (maybe
with a key in it) would stay until the next boot: the directory's name carries its owner's pid,
start time and pid namespace, and every scratch_space() first removes the directories of ours
whose owner is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .image import ImageSource
from .image import delta as delta_format
from .inject import write_key
from .layout import PartInfo
from .sparse import copy_extents, data_ranges, reading
from .verify import Check, fsck_check

_SHM = "/dev/shm"
SCRATCH_PREFIX = "imagetools-scratch-"


def scratch_root() -> str | None:
    """Where scratch files go: $IMAGETOOLS_SCRATCH, else /dev/shm if usable, else the default."""
    chosen = os.environ.get("IMAGETOOLS_SCRATCH")
    if chosen:
        return chosen
    return _SHM if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK | os.X_OK) else None


@contextlib.contextmanager
def scratch_space() -> Iterator[str]:
    """A 0700 directory for scratch files, removed with everything in it at the end; the ones
    left by killed processes are removed first."""
    root = scratch_root()
    sweep_scratch(root or tempfile.gettempdir())
    tmp = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{owner_tag(os.getpid())}-", dir=root)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def owner_tag(pid: int) -> str:
    """'PID-STARTTIME-PIDNS' of a live process: a pid is reused, with another start time."""
    return f"{pid}-{_start_time(pid)}-{_pid_namespace()}"


def _start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (clock ticks after boot); OSError when there is no such process.
    The command name (field 2) may hold spaces and parentheses: fields are counted after its ')'."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


def _pid_namespace() -> int:
    """Our pid namespace: a pid of another one (a container sharing the directory) says nothing."""
    return os.stat("/proc/self/ns/pid").st_ino


def owner_gone(name: str) -> bool:
    """Whether `name` is a scratch directory name of this pid namespace whose owner process has
    ended (a name of another form or namespace is never judged gone)."""
    fields = name[len(SCRATCH_PREFIX) :].split("-") if name.startswith(SCRATCH_PREFIX) else []
    if len(fields) != 4 or not all(f.isdigit() for f in fields[:3]):
        return False
    pid, start, namespace = map(int, fields[:3])
    if namespace != _pid_namespace():
        return False
    try:
        return _start_time(pid) != start
    except (FileNotFoundError, ProcessLookupError):  # no such process (or it just ended)
        return True


def sweep_scratch(root: str) -> None:
    """Remove the scratch directories in root that are ours (our uid, a directory, not a link)
    and whose owner process is gone: a SIGKILL leaves them, perhaps with a key's blocks."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in filter(owner_gone, names):
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            shutil.rmtree(path, ignore_errors=True)  # opens it without following a link


class Scratch:
    """The base's data partition in a reusable scratch file (one per process: debugfs writes it)."""

    def __init__(self, base: str | os.PathLike | ImageSource, data: PartInfo, directory: str | os.PathLike):
        """`base` as a path is opened for each unit; as an open ImageSource (emit's), read on
        its descriptor."""
        self._source = base if isinstance(base, ImageSource) else None
        self.base, self.data = (base.path if isinstance(base, ImageSource) else str(base)), data
        self.window = (data.partition.start, data.partition.end)
        self.path = Path(directory) / f"data-{os.getpid()}-{data.partition.start}.img"
        self.fresh = False  # holds exactly the base's window

    def delta(self, pem: bytes, key_rel: str, base_sha256: str) -> tuple[delta_format.Delta, Check]:
        """The unit's delta (key at key_rel, 0600, 0:0) and the e2fsck check of its data
        partition. On any failure the scratch is emptied before the error goes on (the key does
        not stay in it) and rebuilt from the base before its next use."""
        if not self.fresh:
            self._empty()
            copy_extents(self._readable(), self.path, inside=self.window)  # created 0600
        self.fresh = False
        try:
            write_key(self.path, self.data, pem, key_rel)
            fsck = fsck_check(self.path, self.data)
            extents, size = self._taken_back()
        except BaseException:
            self._empty()
            raise
        self.fresh = True
        return delta_format.Delta(size, base_sha256, self.window, tuple(extents)), fsck

    def _taken_back(self) -> tuple[list[tuple[int, bytes]], int]:
        """(the extents where the scratch differs from the base, the base's size), with the
        base's bytes written back over them: the next unit starts from the base."""
        with reading(self._readable()) as fb, open(self.path, "r+b", buffering=0) as fs:
            size = os.fstat(fb).st_size
            extents = delta_format.diff(fb, fs.fileno(), self.window, list(data_ranges(fs.fileno(), size)))
            for off, data in extents:
                os.pwrite(fs.fileno(), os.pread(fb, len(data), off), off)
        return extents, size

    def _readable(self) -> str | int:
        return self._source.fd if self._source is not None else self.base

    def _empty(self) -> None:
        """The scratch truncated to nothing (the pages of tmpfs freed), if it exists."""
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.path, 0)


_reused: dict[tuple[str, str | ImageSource, int, int], Scratch] = {}


def reused_scratch(directory: str | os.PathLike, base: str | os.PathLike | ImageSource, data: PartInfo) -> Scratch:
    """This process's scratch in directory for base's data partition, kept for the units that
    follow (one at a time: a new directory or base replaces it)."""
    which = base if isinstance(base, ImageSource) else str(base)
    key = (str(directory), which, data.partition.start, data.partition.end)
    scratch = _reused.get(key)
    if scratch is None:
        _reused.clear()
        scratch = _reused[key] = Scratch(base, data, directory)
    return scratch


def make_delta(
    base: str | os.PathLike | ImageSource, data: PartInfo, pem: bytes, key_rel: str, base_sha256: str
) -> tuple[delta_format.Delta, Check]:
    """One unit's delta and e2fsck check, in a scratch used once (flash --key)."""
    with scratch_space() as tmp:
        return Scratch(base, data, tmp).delta(pem, key_rel, base_sha256)
