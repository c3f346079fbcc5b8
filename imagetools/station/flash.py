"""The flashing station: base (+ unit delta, or a key injected on the fly) -> card, then verified.

Only mapped blocks are written (the base's bmap, then the unit's few blocks), each range checked
against its sha256 as bmaptool does. A card is made to look unfinished first (the partition
table areas at both ends of the image are zeroed and flushed), everything else is written and
flushed, and the table areas come last: a flash interrupted at any point leaves no partition
table, so the card never passes for a finished one. The card is then verified read-only against
the unit's public key, and a record is appended to the station log.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import stat
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import keys
from ..errors import EnvironmentProblem, ImageToolsError, UsageError
from ..fs.base import mount_point
from ..layout import open_layout
from ..published import Unit, block_map, load_unit
from ..verify import DEFAULT_KEY_PATH, data_path, verify_image

TABLE_AREA = 64 * 1024    # MBR / primary GPT at the start, backup GPT at the end of the image
_CHUNK = 4 << 20
BLKZEROOUT = 0x127F  # linux/fs.h _IO(0x12, 127)
_LIBC = ctypes.CDLL(None, use_errno=True)
MAX_LOG = 256 << 20
MAX_REQUEST = 64 << 10  # one --serve request line
MAX_TARGETS = 16
Progress = Callable[[str, int, int], None]   # (target, bytes done, bytes total)


@dataclass
class FlashResult:
    target: str
    unit: str
    fingerprint: str
    ok: bool = False
    serial: str | None = None
    error: str | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    bytes_written: int = 0
    times: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """What every target gets: the source file's mapped ranges, then the unit's blocks."""

    source: str
    size: int
    ranges: tuple
    patches: tuple[tuple[int, bytes], ...]
    unit: Unit

    @property
    def total(self) -> int:
        mapped = sum((r.last - r.first + 1) * 4096 for r in self.ranges)
        return min(mapped, self.size) + sum(len(d) for _, d in self.patches)


def plan_unit(base: str | os.PathLike, unit_dir: str | os.PathLike) -> Plan:
    """A published unit over BASE; the base must be the one the unit was made from."""
    unit = load_unit(unit_dir)
    base_map = block_map(base)
    if base_map.sha256 != unit.base_sha256:
        raise UsageError(f"{base} (sha256 {base_map.sha256[:16]}...) is not the base {unit_dir} was "
                         f"made from (sha256 {unit.base_sha256[:16]}...)")
    if unit.delta is None:
        image_map = block_map(unit.image)
        return Plan(str(unit.image), image_map.size, image_map.ranges, (), unit)
    return Plan(str(base), base_map.size, base_map.ranges, unit.delta.extents, unit)


def plan_key(base: str | os.PathLike, key_file: str | os.PathLike) -> Plan:
    """A unit made on the fly: KEY injected into a scratch copy of the data partition only."""
    from ..personalize import make_delta  # only --key pays for it

    pem = keys.read_key_bytes(key_file, "private key")
    private = keys.load_private(pem, str(key_file))
    keys.check_acceptable(private, str(key_file))
    base_map = block_map(base)
    data = open_layout(base).require("data")
    delta, fsck = make_delta(base, data, pem, data_path(DEFAULT_KEY_PATH), base_map.sha256)
    if fsck.status != "pass":
        raise UsageError(f"{base}: the data partition with the key injected fails e2fsck: {fsck.detail}")
    unit = Unit(Path(key_file).stem, keys.fingerprint(private), private.public_key(), base_map.sha256,
                delta=delta)
    return Plan(str(base), base_map.size, base_map.ranges, delta.extents, unit)


@dataclass(frozen=True)
class Request:
    """One card (or the cards of a multi-slot writer) for a station process that stays up
    (`flash --serve`): start-up is paid once per shift, not once per card."""

    targets: tuple[str, ...]
    unit: str | None = None
    key: str | None = None
    again: bool = False


def parse_request(line: bytes) -> Request:
    """A request line: a JSON object {"targets": [TARGET, ...], "unit": UNIT_DIR} or with "key":
    KEY instead of "unit", and optionally "again": true. It comes from another program: anything
    else, a key given twice, over MAX_REQUEST bytes or MAX_TARGETS targets is a UsageError."""
    if len(line) > MAX_REQUEST:
        raise UsageError(f"request over {MAX_REQUEST} bytes")
    try:
        data = json.loads(line, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"request is not a JSON object ({exc})") from None
    if not isinstance(data, dict) or set(data) - {"targets", "unit", "key", "again"}:
        raise UsageError('request must be a JSON object with "targets" and "unit" or "key" '
                         '(and optionally "again")')
    targets, unit, key, again = (data.get(k) for k in ("targets", "unit", "key", "again"))
    if not (isinstance(targets, list) and 0 < len(targets) <= MAX_TARGETS and all(map(_is_path, targets))):
        raise UsageError(f'"targets" must be a list of 1 to {MAX_TARGETS} paths')
    if (unit is None) == (key is None) or not _is_path(unit if key is None else key):
        raise UsageError('give exactly one of "unit" (a unit directory) and "key" (a key file)')
    if again is not None and not isinstance(again, bool):
        raise UsageError('"again" must be true or false')
    return Request(tuple(targets), unit, key, bool(again))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys_seen = [k for k, _ in pairs]
    if len(set(keys_seen)) != len(keys_seen):
        raise ValueError("a key is given twice")
    return dict(pairs)


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 4096 and "\0" not in value


def flash(plan: Plan, targets: list[str], *, log: str | os.PathLike | None = None, again: bool = False,
          fsck: bool = True, progress: Progress | None = None) -> list[FlashResult]:
    """Write the plan to every target in parallel, verify each, log each; refusals before any
    write (UsageError/EnvironmentProblem) stop everything, a failure of one card is its result."""
    if len(set(map(os.path.abspath, targets))) != len(targets):
        raise UsageError("a target is given twice")
    if log is not None and not again:
        _refuse_flashed(Path(log), plan.unit)
    opened = _open_targets(targets, plan.size)
    log_lock = threading.Lock()
    results: dict[int, FlashResult] = {}
    errors: dict[int, BaseException] = {}

    def one(i: int, args: tuple[str, int, str | None, bool]) -> None:
        try:
            results[i] = _flash_one(plan, *args, fsck=fsck, progress=progress)
            if log is not None:
                with log_lock:
                    _append_log(Path(log), results[i], plan)
        except BaseException as exc:  # raised below, once every card has ended
            errors[i] = exc

    # A plain thread per card: a pool (concurrent.futures) would add ~4 ms to every flash's start.
    threads = [threading.Thread(target=one, args=item) for item in enumerate(opened)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[min(errors)]
    return [results[i] for i in range(len(opened))]


def _open_targets(targets: list[str], size: int) -> list[tuple[str, int, str | None, bool]]:
    """Every target opened, or none: a refused one closes those opened before it (a station that
    stays up must not keep a card's device open, O_EXCL, after a refused request)."""
    opened: list[tuple[str, int, str | None, bool]] = []
    try:
        for target in targets:
            opened.append(_open_target(target, size))
    except BaseException:
        for _, fd, _, _ in opened:
            os.close(fd)
        raise
    return opened


def _open_target(target: str, size: int) -> tuple[str, int, str | None, bool]:
    """(target, fd open for writing, serial, fresh: a file created here or found empty, all
    holes); refuses mounted or too small targets."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, size)
        return target, fd, None, True
    if stat.S_ISBLK(st.st_mode):
        where = mount_point(st.st_rdev)
        if where:
            raise EnvironmentProblem(f"{target} (or one of its partitions) is mounted on {where}: unmount it")
        fd = _open(target, os.O_RDWR | os.O_EXCL)
        serial = device_serial(st.st_rdev)
    elif stat.S_ISREG(st.st_mode):
        fd = _open(target, os.O_RDWR)
        os.fchmod(fd, 0o600)  # a card image file will hold a key
        serial = None
    else:
        raise UsageError(f"{target} is neither a block device nor a regular file")
    have = os.lseek(fd, 0, os.SEEK_END)
    fresh = have == 0 and stat.S_ISREG(st.st_mode)
    if fresh:
        os.ftruncate(fd, size)
    elif have < size:
        os.close(fd)
        raise UsageError(f"{target} holds {have} bytes, the image needs {size}: use a larger card")
    return target, fd, serial, fresh


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot open {path} for writing: {exc.strerror} "
                                 "(in use or mounted?)") from None


def device_serial(rdev: int) -> str | None:
    """The device's serial as udev recorded it (or the kernel's sysfs attribute)."""
    major, minor = os.major(rdev), os.minor(rdev)
    try:
        with open(f"/run/udev/data/b{major}:{minor}") as fh:
            props = dict(line[2:].strip().split("=", 1) for line in fh if line.startswith("E:") and "=" in line)
        if props.get("ID_SERIAL_SHORT") or props.get("ID_SERIAL"):
            return props.get("ID_SERIAL_SHORT") or props.get("ID_SERIAL")
    except OSError:
        pass
    try:
        with open(f"/sys/dev/block/{major}:{minor}/device/serial") as fh:
            return fh.read(256).strip() or None
    except OSError:
        return None


def _flash_one(plan: Plan, target: str, fd: int, serial: str | None, fresh: bool = False, *, fsck: bool,
               progress: Progress | None) -> FlashResult:
    result = FlashResult(target, plan.unit.name, plan.unit.fingerprint, serial=serial)
    started = time.monotonic()
    try:
        try:
            result.bytes_written = write_plan(plan, fd, lambda n: progress and progress(target, n, plan.total),
                                              fresh=fresh)
        finally:
            os.close(fd)
        result.times["write"] = round(time.monotonic() - started, 3)
        report = verify_image(target, expected=plan.unit.public_key, fsck=fsck)
        result.checks = [asdict(c) for c in report.checks]
        result.ok = report.ok
        if not report.ok:
            result.error = "verify failed: " + "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
    except ImageToolsError as exc:
        result.error = str(exc)
    except OSError as exc:
        result.error = f"{target}: {exc.strerror or exc}"
    result.times["total"] = round(time.monotonic() - started, 3)
    return result


def write_plan(plan: Plan, fd: int, progress: Callable[[int], Any] = lambda n: None,
               fresh: bool = False) -> int:
    """Table areas zeroed and flushed; the mapped ranges (checked) and patches written, except
    the table areas; flushed; the table areas written; flushed. Returns bytes written. `fresh`:
    the target is a file this flash created (or found empty), all holes: nothing on it can look
    finished, so the first zeroing and flush are skipped."""
    areas = [(0, min(TABLE_AREA, plan.size)), (max(0, plan.size - TABLE_AREA), plan.size)]
    if not fresh:
        for a, b in areas:
            os.pwrite(fd, bytes(b - a), a)
        os.fsync(fd)
        zero_unmapped(fd, plan)
    held: dict[int, bytes] = {}
    done = 0
    with open(plan.source, "rb", buffering=0) as src:
        hasher = _Hasher(plan, src.fileno())
        hasher.start()
        try:
            for r in plan.ranges:
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
    return done


def zero_unmapped(fd: int, plan: Plan) -> None:
    """Make the image's holes read as zeros on the target, as they do in the image. mkfs relies
    on zeroed blocks it never wrote (the resize inode's reserved GDT blocks, inode tables marked
    zeroed), so only-mapped-blocks onto a used card (what `bmaptool copy` does) can leave an
    ext4 that e2fsck rejects. A file target gets holes punched (free); a block device gets
    BLKZEROOUT (WRITE ZEROES or discard where the card supports it, written zeros otherwise)."""
    is_file = stat.S_ISREG(os.fstat(fd).st_mode)
    pos = 0
    for r in list(plan.ranges) + [None]:
        end = plan.size if r is None else r.first * 4096
        if end > pos:
            (_punch if is_file else _zeroout)(fd, pos, end - pos)
        if r is not None:
            pos = (r.last + 1) * 4096


def _punch(fd: int, offset: int, length: int) -> None:
    if _LIBC.fallocate(fd, 0x01 | 0x02, ctypes.c_long(offset), ctypes.c_long(length)) != 0:  # KEEP_SIZE|PUNCH_HOLE
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, os.strerror(err))
        _write_zeros(fd, offset, length)


def _zeroout(fd: int, offset: int, length: int) -> None:
    try:
        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY):
            raise
        _write_zeros(fd, offset, length)


def _write_zeros(fd: int, offset: int, length: int) -> None:
    zeros = bytes(min(_CHUNK, length))
    for pos in range(offset, offset + length, len(zeros)):
        os.pwrite(fd, zeros[:offset + length - pos], pos)


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
        self.plan, self.src, self.bad, self.error = plan, src, None, None

    def run(self) -> None:
        buf = memoryview(bytearray(_CHUNK))
        try:
            for r in self.plan.ranges:
                h, pos, end = hashlib.sha256(), r.first * 4096, min((r.last + 1) * 4096, self.plan.size)
                while pos < end:
                    n = os.preadv(self.src, [buf[:min(_CHUNK, end - pos)]], pos)
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
            raise UsageError(f"{self.plan.source}: blocks {r.first}-{r.last} do not match their bmap checksum: "
                             "the image changed after its bmap was made (make a new one)")


def _put(fd: int, pos: int, data: bytes, areas, held: dict[int, bytes]) -> int:
    """Write data at pos, keeping back what falls in a table area (written last)."""
    cuts = sorted({pos, pos + len(data)} | {x for a, b in areas for x in (a, b) if pos < x < pos + len(data)})
    for a, b in zip(cuts, cuts[1:]):
        piece = data[a - pos:b - pos]
        if any(x <= a and b <= y for x, y in areas):
            held[a] = piece
        else:
            os.pwrite(fd, piece, a)
    return len(data)


def _refuse_flashed(log: Path, unit: Unit) -> None:
    for record in read_log(log):
        if record.get("ok") and record.get("fingerprint") == unit.fingerprint:
            raise UsageError(f"unit {unit.name} (key {unit.fingerprint[:16]}...) was already flashed to "
                             f"{record.get('target')} at {record.get('time')} per {log}; --again to "
                             "flash it once more")


def read_log(log: Path) -> list[dict[str, Any]]:
    """The station log's records (lines that are not JSON objects are skipped)."""
    try:
        if log.stat().st_size > MAX_LOG:
            raise UsageError(f"{log}: over {MAX_LOG} bytes; start a new station log")
        lines = log.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _append_log(log: Path, result: FlashResult, plan: Plan) -> None:
    """One JSON line per card, appended under a lock and flushed (stations may share a log)."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result.to_dict(),
              "base_sha256": plan.unit.base_sha256,
              "checks": {c["name"]: c["status"] for c in result.checks}}
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
