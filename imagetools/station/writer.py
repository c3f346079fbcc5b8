"""Writing a plan onto one open target.

Only mapped blocks are written (the source's bmap, then the unit's few blocks), each range
checked against its sha256 as bmaptool does, plus the zeros the filesystems need (see zeroing):
on a card, the journals are read first and only their blocks that start with a JBD2 header are
zeroed.
A card is made to look unfinished first (the partition table areas at both ends of the image are
zeroed and flushed), everything else is written and flushed, and the table areas come last: a
flash interrupted at any point leaves no partition table, so the card never passes for a
finished one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import stat
import struct
import threading
from collections.abc import Callable
from typing import Any

from .. import strict
from ..bmap import BlockRange
from ..errors import ImageToolsError, UsageError
from ..image.probe import TABLE_AREA
from .plan import Plan
from .readback import stale_headers

_CHUNK = 4 << 20
BLKZEROOUT = 0x127F  # linux/fs.h _IO(0x12, 127)
_LIBC = ctypes.CDLL(None, use_errno=True)


class Interrupted(ImageToolsError):
    """The station was told to stop (SIGTERM, Ctrl-C) while this card was being written."""

    exit_code = 1


def write_plan(
    plan: Plan,
    fd: int,
    progress: Callable[[int], Any] = lambda n: None,
    fresh: bool = False,
    stop: threading.Event | None = None,
) -> tuple[int, str]:
    """Table areas zeroed and flushed; the mapped ranges (checked) and patches written, except
    the table areas; flushed; the table areas written; flushed. Returns bytes written and how
    the zeros were made. `stop`: checked between chunks (Interrupted). `fresh`:
    the target is a file this flash created (or found empty), all holes: nothing on it can look
    finished, so the first zeroing and flush are skipped."""
    areas = [(0, min(TABLE_AREA, plan.size)), (max(0, plan.size - TABLE_AREA), plan.size)]
    if not fresh:
        for a, b in areas:
            os.pwrite(fd, bytes(b - a), a)
        os.fsync(fd)
    zeroing, done = ("holes", 0) if fresh else make_zeros(fd, plan)
    held: dict[int, bytes] = {}
    with os.fdopen(strict.open_regular(plan.source, "image"), "rb", buffering=0) as src:
        hasher = _Hasher(plan, src.fileno())
        hasher.start()
        try:
            for r in plan.ranges:
                if stop is not None and stop.is_set():
                    raise Interrupted("the station was stopped while writing")
                done += _write_range(src.fileno(), fd, plan, r, areas, held)
                progress(done)
        except BaseException:
            hasher.join()
            raise
        hasher.check()  # every range matched its checksum before the table areas are written
    for off, data in plan.patches:  # after the base's bytes, whole: an extent may span a hole
        done += _put(fd, off, data, areas, held)
    os.fsync(fd)
    for off, data in sorted(held.items()):
        os.pwrite(fd, data, off)
    os.fsync(fd)
    progress(done)
    return done, zeroing


def make_zeros(fd: int, plan: Plan) -> tuple[str, int]:
    """What must read as zeros on a used target: how it was done, and the bytes zeroed on a
    card. A file gets every hole of the image punched (free, and the file then equals the
    image); a card gets BLKZEROOUT on the ranges its filesystems need zeroed (plan.zeros) and on
    the blocks of its journal areas that hold a stale JBD2 header: WRITE ZEROES where the card
    has it, written zeros otherwise, so a reader without it sends little more than bmaptool."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        pos = 0
        for r in list(plan.ranges) + [None]:
            end = plan.size if r is None else r.first * 4096
            if end > pos:
                _punch(fd, pos, end - pos)
            if r is not None:
                pos = (r.last + 1) * 4096
        return "punched", 0
    spans = [*plan.zeros, *stale_headers(fd, plan.journals)]
    how = {"written"}
    for a, b in spans:
        how.add(_zeroout(fd, a, b - a))
    return ("write-zeroes" if how == {"written", "write-zeroes"} else "written"), sum(b - a for a, b in spans)


def _punch(fd: int, offset: int, length: int) -> None:
    if _LIBC.fallocate(fd, 0x01 | 0x02, ctypes.c_long(offset), ctypes.c_long(length)) != 0:  # KEEP_SIZE|PUNCH_HOLE
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, os.strerror(err))
        _write_zeros(fd, offset, length)


def _zeroout(fd: int, offset: int, length: int) -> str:
    """BLKZEROOUT (the kernel writes zero pages itself where the device lacks WRITE ZEROES)."""
    try:
        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))
        return "write-zeroes" if _has_write_zeroes(fd) else "written"
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY):
            raise
        _write_zeros(fd, offset, length)
        return "written"


def _has_write_zeroes(fd: int) -> bool:
    rdev = os.fstat(fd).st_rdev
    path = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    for queue in (f"{path}/queue", f"{path}/../queue"):
        try:
            with open(f"{queue}/write_zeroes_max_bytes") as fh:
                return int(fh.read(64).strip() or 0) > 0
        except (OSError, ValueError):
            continue
    return False


def _write_zeros(fd: int, offset: int, length: int) -> None:
    zeros = bytes(min(_CHUNK, length))
    for pos in range(offset, offset + length, len(zeros)):
        os.pwrite(fd, zeros[: offset + length - pos], pos)


def _write_range(src: int, fd: int, plan: Plan, r, areas, held: dict[int, bytes]) -> int:
    """One bmap range, copied in the kernel (copy_file_range: no pass through this process);
    pieces in a table area are read and held back. Its checksum is checked by _Hasher, which
    reads the same range meanwhile. Returns bytes written."""
    pos, end = r.first * 4096, min((r.last + 1) * 4096, plan.size)
    start = pos
    while pos < end:
        n = min(_CHUNK, end - pos)
        if any(a < pos + n and pos < b for a, b in areas):
            buf = os.pread(src, n, pos)
            n = _put(fd, pos, buf, areas, held) if buf else 0
        else:
            n = _copy(src, fd, pos, n)
        if not n:
            raise UsageError(f"{plan.source} is shorter than its block map says (at byte {pos})")
        pos += n
    return end - start


def _copy(src: int, fd: int, pos: int, n: int) -> int:
    try:
        return os.copy_file_range(src, fd, n, pos, pos)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        buf = os.pread(src, n, pos)
        return os.pwrite(fd, buf, pos) if buf else 0


class _Hasher(threading.Thread):
    """The SHA-256 of every mapped range of the source, in a thread of its own while the ranges
    are copied (hashlib and preadv release the GIL): a flash costs max(hash, copy), not their
    sum. One reused buffer: memory stays bounded whatever the image size. check() runs before
    the table areas are written, so a mismatch never leaves a card that looks finished."""

    def __init__(self, plan: Plan, src: int):
        super().__init__(daemon=True)
        self.plan, self.src = plan, src
        self.bad: BlockRange | None = None
        self.error: OSError | None = None

    def run(self) -> None:
        buf = memoryview(bytearray(_CHUNK))
        try:
            for r in self.plan.ranges:
                h, pos, end = hashlib.sha256(), r.first * 4096, min((r.last + 1) * 4096, self.plan.size)
                while pos < end:
                    n = os.preadv(self.src, [buf[: min(_CHUNK, end - pos)]], pos)
                    if not n:
                        break
                    h.update(buf[:n])
                    pos += n
                if h.hexdigest() != r.sha256:
                    self.bad = r
                    return
        except OSError as exc:
            self.error = exc

    def check(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error
        if self.bad is not None:
            r = self.bad
            raise UsageError(
                f"{self.plan.source}: blocks {r.first}-{r.last} do not match their bmap checksum: "
                "the image changed after its bmap was made (make a new one)"
            )


def _put(fd: int, pos: int, data: bytes, areas, held: dict[int, bytes]) -> int:
    """Write data at pos, keeping back what falls in a table area (written last)."""
    cuts = sorted({pos, pos + len(data)} | {x for a, b in areas for x in (a, b) if pos < x < pos + len(data)})
    for a, b in zip(cuts, cuts[1:]):
        piece = data[a - pos : b - pos]
        if any(x <= a and b <= y for x, y in areas):
            held[a] = piece
        else:
            os.pwrite(fd, piece, a)
    return len(data)
