"""Read a card back from the medium and check every byte a flash wrote.

A card can take every write and flush without an error and still hold something else: a
fake-capacity card wraps writes past its real size onto earlier blocks or drops them, a worn one
returns stale or garbage blocks. Only reading it back shows that, and only if the read reaches
the card: right after a flash the page cache holds exactly what was written, so reads go
through O_DIRECT (or, where that is refused, after a flush and dropping the cached pages).

What is checked: the source's mapped ranges against their bmap sha256 (a range a patch overlaps
against the source's bytes with the patches applied), the patches outside every range against
their bytes, the zeroed ranges against zeros, and the journals' holes for stale JBD2 headers
(see zeroing: a flash zeroes the blocks of the card's journal areas that start with one; here
none may be left). One 4 MiB page-aligned buffer is reused for the whole card and hashed as it
is read, so memory stays bounded whatever the image size.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import hashlib
import mmap
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

from .. import bmap
from ..errors import UsageError, VerifyFailed, from_oserror
from ..published import block_map

if TYPE_CHECKING:
    from .plan import Plan

BLOCK = bmap.BLOCK_SIZE
_CHUNK = 4 << 20
_GAP = 64 << 10  # a gap this small between checked bytes is read through: one request, not two
_AHEAD = 3  # read-back buffers in turn: one being checked, the next ones being read
_ZEROS = bytes(_CHUNK)
JBD2_MAGIC = b"\xc0\x3b\x39\x98"  # journal_header_t.h_magic, big-endian on disk
_SECTOR = 512  # every fs block starts at a multiple of it: so may a journal header
Span = tuple[int, int]


class _NoHeader:
    """A check's want: no 512-byte boundary of the bytes starts with the JBD2 magic."""


_NO_HEADER = _NoHeader()


@dataclass(frozen=True)
class Expected:
    """What a card must read back: the layout a flash wrote, in the order it wrote it (zeros,
    then the ranges over them, then the patches over both)."""

    size: int  # image size in bytes
    ranges: Sequence[bmap.BlockRange]  # the source's mapped ranges with sha256
    patches: Sequence[tuple[int, bytes]]  # (byte offset, bytes) written over the ranges; disjoint
    zeros: Sequence[tuple[int, int]] = ()  # byte ranges [start, end) written as zeros
    source: str | None = None  # the ranges' file: needed only where a patch overlaps one
    journals: Sequence[tuple[int, int]] = ()  # byte ranges [start, end) where no JBD2 header may be

    @property
    def total(self) -> int:
        """The bytes read_back checks (and returns): a progress bar's total."""
        return sum(c.end - c.start for c in _checks(self))


@dataclass(frozen=True)
class _Patched:
    """A range a patch overlaps: its expected hash needs the source's bytes."""

    sha256: str
    patches: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class _Check:
    """Bytes [start, end) of the card must hash to `want` (str), equal it (bytes) or be zeros
    (None); `why` names what was written there in a failure."""

    start: int
    end: int
    want: str | bytes | None | _Patched | _NoHeader
    why: str

    @property
    def blocks(self) -> str:
        return f"blocks {self.start // BLOCK}-{(self.end - 1) // BLOCK}"


def read_back(
    target: str | os.PathLike | int,
    expected: Expected,
    progress: Callable[[int], object] = lambda n: None,
    name: str | None = None,
) -> int:
    """Check what TARGET holds against what a flash wrote, reading the medium (not the page
    cache). Returns the bytes checked (expected.total); VerifyFailed naming the first bad range.
    An int TARGET is an open fd, used as it is (cached pages dropped, not closed), `name` the
    path messages give for it (else the one it was opened from)."""
    name = name or _name(target)
    checks = _checks(expected)
    # Page-aligned, as O_DIRECT needs. Not closed: a traceback's frames may still hold slices.
    view = memoryview(mmap.mmap(-1, _CHUNK))
    with _opened(target, name) as fd:
        have = _length(fd, name)
        if have < expected.size:
            raise VerifyFailed(_short(name, have, expected.size))
        if any(isinstance(c.want, _Patched) for c in checks):
            checks = _resolve(checks, expected, view)
        return _run(fd, name, checks, view, expected.size, progress)


def expected_of(plan: Plan, zeroing: str | None) -> Expected:
    """What a card flashed with PLAN must read back. The zeros and the journals only where a flash
    wrote them (writer.make_zeros: "written", "write-zeroes"): a file's holes were punched."""
    card = zeroing in ("written", "write-zeroes")
    return Expected(
        plan.size, plan.ranges, plan.patches, plan.zeros if card else (), plan.source, plan.journals if card else ()
    )


def check_card(
    target: str | os.PathLike,
    base: str | os.PathLike,
    unit_dir: str | os.PathLike | None = None,
    trust: str | os.PathLike | None = None,
) -> int:
    """Read-only check of a card flashed with BASE (and UNIT_DIR), e.g. at a QA station: every
    mapped range of the image and the unit's blocks (its signature checked, its delta bound to
    BASE, as for a flash), and no stale header in the journals. Returns bytes checked;
    VerifyFailed on the first mismatch."""
    from .plan import plan_unit
    from .zeroing import must_zero

    if unit_dir is None:
        base_map = block_map(base)
        journals = must_zero(base, base_map.ranges, base_map.size).journals
        return read_back(target, Expected(base_map.size, base_map.ranges, (), journals=journals))
    plan = plan_unit(base, unit_dir, trust)
    return read_back(target, Expected(plan.size, plan.ranges, plan.patches, source=plan.source, journals=plan.journals))


def _checks(expected: Expected) -> list[_Check]:
    """Every written byte once, sorted: ranges, patches outside them, zeros outside both."""
    size = expected.size
    ranges = [(r, span) for r in expected.ranges if (span := _extent(r, size))[0] < span[1]]
    extents = [span for _, span in ranges]
    patches = sorted((p for p in expected.patches if p[1]), key=lambda p: p[0])  # an empty one writes nothing
    patch_spans = [(off, off + len(data)) for off, data in patches]
    if any(a < 0 or b > size for a, b in patch_spans):
        raise UsageError(f"a patch lies outside the image of {size} bytes")
    if any(b > c for (_, b), (c, _) in pairwise(patch_spans)):
        raise UsageError("patches overlap: they must be disjoint (a delta's extents are)")
    checks = [_range_check(r, span, patches, patch_spans) for r, span in ranges]
    for (off, data), span in zip(patches, patch_spans):
        checks += [_Check(a, b, data[a - off : b - off], "the unit's blocks") for a, b in _minus([span], extents)]
    zeros = _minus(_minus(_merged((max(a, 0), min(b, size)) for a, b in expected.zeros), extents), patch_spans)
    checks += [_Check(a, b, None, "zeros") for a, b in zeros]
    journals = _minus(
        _minus(_minus(_merged((max(a, 0), min(b, size)) for a, b in expected.journals), extents), patch_spans), zeros
    )
    checks += [_Check(a, b, _NO_HEADER, "a stale journal header") for a, b in journals]
    return sorted(checks, key=lambda c: c.start)


def stale_headers(fd: int, spans: Sequence[Span]) -> list[Span]:
    """The 4 KiB blocks of SPANS (4 KiB-aligned byte ranges) on the open card FD that hold a JBD2
    header at a 512-byte boundary, read from the medium (O_DIRECT where the kernel takes it, else
    flushed and cached pages dropped), merged. What a flash must zero of the card's journals."""
    found: list[Span] = []
    if not spans:
        return found
    view = memoryview(mmap.mmap(-1, _CHUNK))
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError:
        _drop_cache(fd)
    try:
        for a, b in _merged(spans):
            for pos in range(a, b, _CHUNK):
                piece = view[: _fill(fd, view[: min(_CHUNK, b - pos)], pos)]
                found += [(at // BLOCK * BLOCK, min(at // BLOCK * BLOCK + BLOCK, b)) for at in headers(pos, piece)]
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    return _merged(found)


def headers(pos: int, piece: memoryview) -> list[int]:
    """Offsets (of the card) of the 512-byte boundaries in PIECE, which starts at POS, that start
    with the JBD2 magic: one 4-byte word per sector, searched as one string."""
    skip = -pos % _SECTOR
    sectors = max(0, len(piece) - skip) // _SECTOR
    words = piece[skip : skip + sectors * _SECTOR].cast("I")[:: _SECTOR // 4].tobytes()
    hits = []
    i = words.find(JBD2_MAGIC)
    while i != -1:
        if i % 4 == 0:
            hits.append(pos + skip + i // 4 * _SECTOR)
        i = words.find(JBD2_MAGIC, i + 1)
    tail = skip + sectors * _SECTOR
    if len(piece) - tail >= len(JBD2_MAGIC) and piece[tail : tail + 4] == JBD2_MAGIC:
        hits.append(pos + tail)
    return hits


def _range_check(r: bmap.BlockRange, span: Span, patches: list[tuple[int, bytes]], patch_spans: list[Span]) -> _Check:
    a, b = span
    over = []
    for i in range(max(bisect.bisect_right(patch_spans, (a, a)) - 1, 0), len(patches)):
        c, d = patch_spans[i]
        if c >= b:
            break
        if a < d:
            over.append(patches[i])
    if not over:
        return _Check(a, b, r.sha256, "bmap checksum")
    return _Check(a, b, _Patched(r.sha256, tuple(over)), "bmap checksum, with the unit's blocks")


def _extent(r: bmap.BlockRange, size: int) -> Span:
    return r.first * BLOCK, min((r.last + 1) * BLOCK, size)


def _merged(spans: Iterable[Span]) -> list[Span]:
    """SPANS sorted, with those that overlap or touch made one."""
    out: list[Span] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        elif a < b:
            out.append((a, b))
    return out


def _minus(spans: Iterable[Span], taken: list[Span]) -> list[Span]:
    """The parts of SPANS outside every span of TAKEN (sorted, disjoint)."""
    starts = [a for a, _ in taken]
    out = []
    for a, b in spans:
        for i in range(max(bisect.bisect_right(starts, a) - 1, 0), len(taken)):
            c, d = taken[i]
            if c >= b:
                break
            if c > a:
                out.append((a, c))
            a = max(a, d)
        if a < b:
            out.append((a, b))
    return out


def _resolve(checks: list[_Check], expected: Expected, view: memoryview) -> list[_Check]:
    """Patched ranges turned into plain hash checks: the source's bytes (through the page cache,
    that is fine for the source) with the patches applied, hashed."""
    if expected.source is None:
        raise UsageError("a patch overlaps a mapped range: the source image is needed to check it")
    try:
        src = os.open(expected.source, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise from_oserror(exc, f"cannot read {expected.source}", UsageError) from None
    try:
        return [
            _Check(c.start, c.end, _patched_sha(src, expected.source, c, c.want, view), c.why)
            if isinstance(c.want, _Patched)
            else c
            for c in checks
        ]
    finally:
        os.close(src)


def _patched_sha(src: int, source: str, check: _Check, patched: _Patched, view: memoryview) -> str:
    """The sha256 of the source's bytes of CHECK with its patches applied; the bytes unpatched
    must match the bmap (else the source changed since, and the card cannot be judged by it)."""
    raw, new = hashlib.sha256(), hashlib.sha256()
    for pos in range(check.start, check.end, _CHUNK):
        piece = view[: min(_CHUNK, check.end - pos)]
        if _fill(src, piece, pos) < len(piece):
            raise UsageError(f"{source} is shorter than its block map says (at byte {pos})")
        raw.update(piece)
        for off, data in patched.patches:
            a, b = max(off, pos), min(off + len(data), pos + len(piece))
            if a < b:
                piece[a - pos : b - pos] = memoryview(data)[a - off : b - off]
        new.update(piece)
    if raw.hexdigest() != patched.sha256:
        raise UsageError(
            f"{source}: {check.blocks} do not match their bmap checksum: the image changed "
            "after its bmap was made (make a new one)"
        )
    return new.hexdigest()


def _run(
    fd: int, name: str, checks: list[_Check], view: memoryview, size: int, progress: Callable[[int], object]
) -> int:
    """One pass in offset order: aligned reads of up to _CHUNK, each fed to the checks it covers."""
    done, i, state = 0, 0, None
    for ws, we, chunk in _read_ahead(fd, name, _windows(checks), size, view):
        while i < len(checks) and checks[i].start < we:
            c = checks[i]
            if state is None or state.check is not c:
                state = _State(c)
            a, b = max(c.start, ws), min(c.end, we)
            if not state.feed(a, chunk[a - ws : b - ws]) or (c.end <= we and not state.passed()):
                raise VerifyFailed(
                    f"{name}: {c.blocks} read back differently from what was written "
                    f"({c.why}); the card is bad or fake-capacity: replace it"
                )
            if c.end > we:
                break
            done += c.end - c.start
            i += 1
        progress(done)
    return done


def _read_ahead(
    fd: int, name: str, windows: Iterator[Span], size: int, view: memoryview
) -> Iterator[tuple[int, int, memoryview]]:
    """The windows' bytes in order, read by a thread of its own one buffer ahead (preadv and
    hashlib release the GIL): a read-back costs max(read, hash), not their sum. _AHEAD buffers in
    turn (VIEW and more of its size), so memory stays bounded; each chunk yielded is valid until
    the next one is asked for."""
    free: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
    ready: queue.SimpleQueue[tuple[int, int, memoryview, memoryview] | BaseException | None] = queue.SimpleQueue()
    for buf in [view, *(memoryview(mmap.mmap(-1, len(view))) for _ in range(_AHEAD - 1))]:
        free.put(buf)

    def reader() -> None:
        try:
            for ws, we in windows:
                buf = free.get()
                if buf is None:
                    return
                ready.put((ws, we, _read(fd, name, buf, ws, we, size), buf))
            ready.put(None)
        except BaseException as exc:  # handed over: raised in the caller's thread
            ready.put(exc)

    thread = threading.Thread(target=reader, name="read-back", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            ws, we, chunk, buf = item
            yield ws, we, chunk
            free.put(buf)
    finally:
        free.put(None)  # a reader waiting for a buffer stops
        thread.join()


class _State:
    """One check fed its bytes in order."""

    def __init__(self, check: _Check):
        self.check = check
        self.hash = hashlib.sha256() if isinstance(check.want, str) else None

    def feed(self, pos: int, piece: memoryview) -> bool:
        if self.hash is not None:
            self.hash.update(piece)
            return True
        want = self.check.want
        if isinstance(want, _NoHeader):
            return not headers(pos, piece)
        assert not isinstance(want, (str, _Patched))  # a str is hashed above; patches are resolved first
        a = pos - self.check.start
        expect = _ZEROS[: len(piece)] if want is None else want[a : a + len(piece)]
        return piece.tobytes() == expect  # bytes == bytes is a memcmp; memoryview == is per item

    def passed(self) -> bool:
        return self.hash is None or self.hash.hexdigest() == self.check.want


def _windows(checks: list[_Check]) -> Iterator[Span]:
    """Block-aligned reads of up to _CHUNK covering every check, gaps under _GAP read through."""
    span: Span | None = None
    for c in checks:
        a, b = c.start // BLOCK * BLOCK, -(-c.end // BLOCK) * BLOCK
        if span is not None and a <= span[1] + _GAP:
            span = (span[0], max(span[1], b))
            continue
        if span is not None:
            yield from _split(span)
        span = (a, b)
    if span is not None:
        yield from _split(span)


def _split(span: Span) -> Iterator[Span]:
    for pos in range(span[0], span[1], _CHUNK):
        yield pos, min(pos + _CHUNK, span[1])


def _read(fd: int, name: str, view: memoryview, ws: int, we: int, size: int) -> memoryview:
    """Bytes [ws, we) of the card (the last block may end at the image's end)."""
    try:
        got = _fill(fd, view[: we - ws], ws)
    except OSError as exc:
        raise VerifyFailed(
            f"{name}: cannot read blocks {ws // BLOCK}-{(we - 1) // BLOCK} "
            f"({exc.strerror or exc}); the card is bad or was removed: replace it"
        ) from None
    if got < min(we, size) - ws:
        raise VerifyFailed(_short(name, ws + got, size))
    return view[:got]


def _fill(fd: int, buf: memoryview, pos: int) -> int:
    """Read until BUF is full or the file ends; returns the bytes read."""
    got = 0
    while got < len(buf):
        n = _preadv(fd, buf[got:], pos + got)
        if not n:
            break
        got += n
    return got


def _preadv(fd: int, buf: memoryview, pos: int) -> int:
    """os.preadv, falling back from O_DIRECT to dropped cached pages when a read refuses it."""
    try:
        return os.preadv(fd, [buf], pos)
    except OSError as exc:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if exc.errno != errno.EINVAL or not flags & os.O_DIRECT:
            raise
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
    _drop_cache(fd)
    return os.preadv(fd, [buf], pos)


@contextmanager
def _opened(target: str | os.PathLike | int, name: str) -> Iterator[int]:
    """The target open for reading past the page cache: O_DIRECT where the kernel accepts it,
    else flushed and its cached pages dropped. An int target (the descriptor a flash wrote the
    card with: not opened again) is flushed, switched to O_DIRECT for the read-back where it can
    be, and left open with its flags as they were."""
    flags = None
    try:
        if isinstance(target, int):
            _drop_cache(target)
            fd, owned, flags = target, False, _go_direct(target)
        else:
            fd, owned = _open_direct(os.fspath(target)), True
    except OSError as exc:
        raise from_oserror(exc, f"cannot open {name} to read it back", UsageError) from None
    try:
        yield fd
    finally:
        if owned:
            os.close(fd)
        elif flags is not None:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def _go_direct(fd: int) -> int:
    """O_DIRECT set on an open descriptor (F_SETFL may: where the filesystem refuses it, the
    cached pages were dropped instead); returns the flags to put back."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return flags


def _open_direct(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # tmpfs (before 6.6), ramfs, some FUSE: no O_DIRECT
            raise
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _drop_cache(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _drop_cache(fd: int) -> None:
    """Flush, then drop the cached pages (only clean pages can be dropped), so reads that follow
    reach the medium."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EROFS):
            raise
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _length(fd: int, name: str) -> int:
    """The target's size in bytes (the fd's position is kept: an int target is the caller's)."""
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
        raise UsageError(f"{name} is neither a block device nor a regular file")
    here = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.lseek(fd, here, os.SEEK_SET)


def _short(name: str, at: int, size: int) -> str:
    return f"{name} ends at byte {at}, the image needs {size}: a fake-capacity or damaged card"


def _name(target: str | os.PathLike | int) -> str:
    """A target as an operator knows it: an fd by the path it was opened from."""
    if not isinstance(target, int):
        return os.fsdecode(target)
    try:
        return os.readlink(f"/proc/self/fd/{target}")
    except OSError:
        return f"fd {target}"
