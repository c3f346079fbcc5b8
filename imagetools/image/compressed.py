"""Compressed disk images: the format told by its magic bytes, never by the name, and decompressed
into a sparse file (runs of zero blocks become holes, as `cp --sparse=always` makes them).

Each format is decompressed by its system tool when it is installed and measured faster here
(`scripts/bench-bases`), else in process through the standard library or a well-kept binding
(`zstandard`, `lz4`). A corrupt or truncated input is an ImageFormatError, whichever decodes it.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from ..errors import EnvironmentProblem, ImageFormatError, ToolMissingError

BLOCK = 4096  # hole granularity, as cp --sparse=always and the filesystems use
CHUNK = 1 << 20  # bytes read from a decoder at a time
MAX_IMAGE = 1 << 40  # no disk image we take is larger than 1 TiB once decompressed
_ZERO_BLOCK = bytes(BLOCK)
_RUN = 16 * BLOCK  # zeros are skipped this many at a time first
_ZERO_RUN = bytes(_RUN)
_STDERR_MAX = 4096

Progress = Callable[[int, int], None]  # (compressed bytes read, compressed size)


@dataclass(frozen=True)
class Format:
    name: str
    suffixes: tuple[str, ...]
    package: str  # the Debian package of the tool
    decompress: tuple[str, ...]  # tool command reading stdin, writing stdout
    compress: tuple[str, ...]
    prefer_tool: bool  # measured faster than the library (scripts/bench-bases)


# The tool is preferred where scripts/bench-bases measured it faster (1.3 GiB base, 2 cores): xz
# decodes the blocks `xz -T0` writes on both cores (3.15 s against 3.67 s in process); zlib
# (5.4 s against 15.6 s), zstandard (1.00 against 1.26 s) and lz4.frame (1.73 against 1.79 s) in
# process beat their tools, which pay for a pipe in between; bz2 measured either way (58.6 against
# 48.5 s, then the other way round on a quieter machine) and stays in process.
FORMATS = {
    f.name: f
    for f in (
        Format("gzip", (".gz",), "gzip", ("gzip", "-dc"), ("gzip", "-c"), False),
        Format("bzip2", (".bz2",), "bzip2", ("bzip2", "-dc"), ("bzip2", "-c"), False),
        Format("xz", (".xz",), "xz-utils", ("xz", "-dc", "-T0"), ("xz", "-c", "-T0"), True),
        Format("lzma", (".lzma",), "xz-utils", ("xz", "-dc", "--format=lzma"), ("xz", "-c", "--format=lzma"), False),
        Format("zstd", (".zst", ".zstd"), "zstd", ("zstd", "-dcq"), ("zstd", "-cq", "-T0"), False),
        Format("lz4", (".lz4",), "lz4", ("lz4", "-dcq"), ("lz4", "-cq"), False),
    )
}


def detect(head: bytes) -> Format | None:
    """The compression format of a file starting with `head` (at least 13 bytes when the file
    has them), or None: an uncompressed image."""
    if head[:2] == b"\x1f\x8b":
        return FORMATS["gzip"]
    if head[:3] == b"BZh" and head[3:4] in b"123456789" and head[3:4]:
        return FORMATS["bzip2"]
    if head[:6] == b"\xfd7zXZ\x00":
        return FORMATS["xz"]
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return FORMATS["zstd"]
    if head[:4] == b"\x04\x22\x4d\x18":
        return FORMATS["lz4"]
    if _is_lzma_alone(head):
        return FORMATS["lzma"]
    return None


def _is_lzma_alone(head: bytes) -> bool:
    """The legacy .lzma header has no magic: properties 0x5d (what every encoder writes), a
    dictionary size of 2^n or 2^n + 2^(n-1), and an uncompressed size that is unknown (all 0xff)
    or below 2^48. A disk image (boot code or zeros) does not start like that."""
    if len(head) < 13 or head[0] != 0x5D:
        return False
    dict_size, size = struct.unpack("<IQ", head[1:13])
    n = dict_size.bit_length() - 1
    plausible = dict_size >= 4096 and dict_size in (1 << n, (1 << n) | (1 << max(n - 1, 0)))
    return plausible and (size == (1 << 64) - 1 or size < 1 << 48)


def detect_file(path: str | os.PathLike) -> Format | None:
    """detect() on a regular file's first bytes; None for anything else (a block device, a
    FIFO must not be opened here)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None  # the command that opens it names the problem
    try:
        if not _is_regular(fd):
            return None
        return detect(os.pread(fd, 16, 0))
    finally:
        os.close(fd)


def by_name(name: str | os.PathLike) -> Format | None:
    """The format a file name asks for (an output's suffix: NEW.sdimg.xz), or None."""
    lower = os.fspath(name).lower()
    return next((f for f in FORMATS.values() if lower.endswith(f.suffixes)), None)


def strip_suffix(name: str) -> str:
    """`image.sdimg.xz` -> `image.sdimg`: the uncompressed image's name."""
    fmt = by_name(name)
    if fmt is None:
        return name
    return next(name[: -len(s)] for s in fmt.suffixes if name.lower().endswith(s))


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def tool_path(fmt: Format) -> str | None:
    return shutil.which(fmt.decompress[0])


def decompress_into(
    src_fd: int,
    fmt: Format,
    out_fd: int,
    *,
    what: str,
    limit: int = MAX_IMAGE,
    progress: Progress | None = None,
    use_tool: bool | None = None,
) -> int:
    """Decompress the whole regular file `src_fd` (from offset 0) into `out_fd`, sparse: zero
    blocks are left as holes and the file is sized to the image at the end. Returns the image's
    size. ImageFormatError for corrupt or truncated input or an image over `limit` bytes."""
    if use_tool is None:
        use_tool = _choice(fmt)
    size = os.fstat(src_fd).st_size
    writer = SparseWriter(out_fd, limit, what)
    if use_tool and tool_path(fmt):
        _with_tool(src_fd, fmt, writer, what, size, progress)
    else:
        _with_library(src_fd, fmt, writer, what, size, progress)
    return writer.finish()


def _choice(fmt: Format) -> bool:
    """IMAGETOOLS_DECOMPRESS=library|tool forces a side (tests, benchmarks); default: measured."""
    forced = os.environ.get("IMAGETOOLS_DECOMPRESS", "")
    if forced not in ("", "library", "tool"):
        raise EnvironmentProblem(f"IMAGETOOLS_DECOMPRESS={forced!r}: use 'library' or 'tool'")
    return fmt.prefer_tool if not forced else forced == "tool"


class SparseWriter:
    """Writes a stream at increasing offsets, leaving every all-zero BLOCK-sized, aligned block as
    a hole; writes are coalesced into runs (one pwrite per run of data)."""

    def __init__(self, fd: int, limit: int, what: str):
        self.fd, self.limit, self.what = fd, limit, what
        self.pos = 0
        self.pending = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.pos + len(self.pending) + len(data) > self.limit:
            raise ImageFormatError(
                f"{self.what} decompresses to more than {self.limit} bytes: not a disk image this tool takes"
            )
        buf = self.pending + bytes(data) if self.pending else bytes(data)
        usable = len(buf) - len(buf) % BLOCK
        self._blocks(buf, usable)
        self.pending = buf[usable:]

    def finish(self) -> int:
        """Writes the last partial block and sizes the file; returns the size."""
        tail = self.pending
        if tail.count(0) != len(tail):
            os.pwrite(self.fd, tail, self.pos)
        self.pos += len(tail)
        self.pending = b""
        os.ftruncate(self.fd, self.pos)
        return self.pos

    def _blocks(self, buf: bytes, end: int) -> None:
        """buf[:end] (whole blocks) at self.pos: data runs written, zero blocks skipped."""
        view, data_from, search = memoryview(buf), 0, 0
        while (hole := buf.find(_ZERO_BLOCK, search, end)) >= 0:
            first = -(-hole // BLOCK) * BLOCK  # the only aligned block this run of zeros may fill
            if first + BLOCK > end:
                break
            if buf[first : first + BLOCK] != _ZERO_BLOCK:  # bytes slices: memcmp (memoryview's == is slow)
                search = first + 1
                continue
            stop = first + BLOCK
            while stop + _RUN <= end and buf[stop : stop + _RUN] == _ZERO_RUN:
                stop += _RUN
            while stop < end and buf[stop : stop + BLOCK] == _ZERO_BLOCK:
                stop += BLOCK
            self._pwrite(view[data_from:first], data_from)
            data_from = search = stop
        self._pwrite(view[data_from:end], data_from)
        self.pos += end

    def _pwrite(self, data: memoryview, offset: int) -> None:
        while data:
            n = os.pwrite(self.fd, data, self.pos + offset)
            data, offset = data[n:], offset + n


def _with_library(
    src_fd: int, fmt: Format, writer: SparseWriter, what: str, size: int, progress: Progress | None
) -> None:
    raw = os.fdopen(os.dup(src_fd), "rb", buffering=CHUNK)
    with raw:
        raw.seek(0)
        if fmt.name == "zstd":
            _zstd_complete(raw, size, what)
            raw.seek(0)
        try:
            with _library_reader(fmt, raw) as reader:
                while chunk := reader.read(CHUNK):
                    writer.write(chunk)
                    if progress:
                        progress(raw.tell(), size)
        except (OSError, EOFError, ValueError, RuntimeError, lzma.LZMAError) as exc:
            raise _corrupt(what, fmt, str(exc)) from None
        except Exception as exc:  # zstandard.ZstdError derives from Exception only
            if type(exc).__name__ != "ZstdError":
                raise
            raise _corrupt(what, fmt, str(exc)) from None


@contextlib.contextmanager
def _library_reader(fmt: Format, raw: IO[bytes]) -> Iterator[IO[bytes]]:
    if fmt.name == "gzip":
        reader: Any = gzip.GzipFile(fileobj=raw, mode="rb")
    elif fmt.name == "bzip2":
        reader = bz2.BZ2File(raw, "rb")
    elif fmt.name in ("xz", "lzma"):
        reader = lzma.LZMAFile(raw, "rb", format=lzma.FORMAT_XZ if fmt.name == "xz" else lzma.FORMAT_ALONE)
    elif fmt.name == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=CHUNK, read_across_frames=True, closefd=False
        )
    else:
        import lz4.frame

        reader = lz4.frame.LZ4FrameFile(raw, "rb")
    with reader:
        yield reader


def _zstd_complete(raw: IO[bytes], size: int, what: str) -> None:
    """zstandard's reader ends quietly on a cut-off frame: walk the frames' block headers (a seek
    per block, no decoding) so a truncated file is refused before anything is written."""
    pos, frames = 0, 0
    while pos < size:
        raw.seek(pos)
        head = raw.read(18)
        if len(head) >= 8 and head[:4] in _SKIPPABLE:
            pos += 8 + struct.unpack("<I", head[4:8])[0]
        elif head[:4] == b"\x28\xb5\x2f\xfd" and len(head) >= 5:
            pos = _zstd_blocks(raw, pos, head[4], what)
        else:
            raise _corrupt(what, FORMATS["zstd"], f"no zstd frame at byte {pos}")
        frames += 1
    if pos != size or not frames:
        raise _corrupt(what, FORMATS["zstd"], "the last frame is cut off")


_SKIPPABLE = {struct.pack("<I", 0x184D2A50 + i) for i in range(16)}


def _zstd_blocks(raw: IO[bytes], pos: int, fhd: int, what: str) -> int:
    """The end of the zstd frame at pos (RFC 8878 3.1.1): header, blocks, optional checksum."""
    fcs_flag, single, has_sum, dict_flag = fhd >> 6, fhd >> 5 & 1, fhd >> 2 & 1, fhd & 3
    fcs_size = (1, 2, 4, 8)[fcs_flag] if fcs_flag or single else 0
    pos += 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + fcs_size
    while True:
        raw.seek(pos)
        header = raw.read(3)
        if len(header) < 3:
            raise _corrupt(what, FORMATS["zstd"], "cut off inside a frame")
        value = int.from_bytes(header, "little")
        last, kind, length = value & 1, value >> 1 & 3, value >> 3
        if kind == 3:
            raise _corrupt(what, FORMATS["zstd"], f"reserved block type at byte {pos}")
        pos += 3 + (1 if kind == 1 else length)
        if last:
            return pos + 4 * has_sum


def _with_tool(src_fd: int, fmt: Format, writer: SparseWriter, what: str, size: int, progress: Progress | None) -> None:
    """The system tool decodes in its own process (reading our fd: its position is our progress)
    while this one finds the holes and writes."""
    import subprocess  # only bases decoded by a system tool pay for it (verify never does)

    os.lseek(src_fd, 0, os.SEEK_SET)
    command = [tool_path(fmt) or fmt.decompress[0], *fmt.decompress[1:]]
    try:
        proc = subprocess.Popen(command, stdin=src_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True)
    except OSError as exc:
        raise ToolMissingError(
            f"cannot run {command[0]}: {exc.strerror}; install the Debian package {fmt.package}"
        ) from None
    assert proc.stdout is not None and proc.stderr is not None
    errors = _drain(proc.stderr)
    try:
        _pipe_size(proc.stdout.fileno())
        out = proc.stdout
        while chunk := out.read(CHUNK):
            writer.write(chunk)
            if progress:
                progress(os.lseek(src_fd, 0, os.SEEK_CUR), size)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    status = proc.wait()
    errors.join(5)
    if status != 0:
        message = bytes(errors.data).decode(errors="replace").strip().splitlines()
        raise _corrupt(what, fmt, message[-1] if message else f"{command[0]} exited with status {status}")


class _drain(threading.Thread):
    """Reads a tool's stderr (bounded) so it never blocks on a full pipe."""

    def __init__(self, stream: IO[bytes]):
        super().__init__(daemon=True)
        self.stream, self.data = stream, bytearray()
        self.start()

    def run(self) -> None:
        with self.stream:
            while chunk := self.stream.read(4096):
                if len(self.data) < _STDERR_MAX:
                    self.data += chunk[: _STDERR_MAX - len(self.data)]


def _pipe_size(fd: int) -> None:
    """A 1 MiB pipe: fewer wake-ups between the decoder and us."""
    try:
        import fcntl

        fcntl.fcntl(fd, 1031, CHUNK)  # F_SETPIPE_SZ
    except OSError:
        pass


def _corrupt(what: str, fmt: Format, detail: str) -> ImageFormatError:
    detail = " ".join(detail.split())[:200]
    return ImageFormatError(f"{what}: corrupt or truncated {fmt.name} data ({detail}); download or copy it again")


def compress_to(src: str | os.PathLike, dst: str | os.PathLike, fmt: Format, *, exclusive: bool) -> None:
    """dst = src compressed, 0600 from its first byte (an image may hold a key), published whole."""
    from ..atomic import replace_when_done

    with replace_when_done(dst, mode=0o600, exclusive=exclusive) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC)
        try:
            compress_file(src, fd, fmt, os.fspath(dst))
        finally:
            os.close(fd)


def compress_file(src: str | os.PathLike, dst_fd: int, fmt: Format, what: str) -> None:
    """src (holes read as zeros) compressed into dst_fd by the format's tool, or in process."""
    import subprocess

    with open(src, "rb") as fin:
        path = shutil.which(fmt.compress[0])
        if path:
            proc = subprocess.run(
                [path, *fmt.compress[1:]], stdin=fin, stdout=dst_fd, stderr=subprocess.PIPE, check=False
            )
            if proc.returncode != 0:
                detail = proc.stderr.decode(errors="replace").strip()[-200:]
                raise EnvironmentProblem(f"{what}: {fmt.compress[0]} failed: {detail}")
            return
        with os.fdopen(os.dup(dst_fd), "wb") as raw, _library_writer(fmt, raw) as out:
            while chunk := fin.read(CHUNK):
                out.write(chunk)


@contextlib.contextmanager
def _library_writer(fmt: Format, raw: IO[bytes]) -> Iterator[IO[bytes]]:
    if fmt.name == "gzip":
        writer: Any = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)
    elif fmt.name == "bzip2":
        writer = bz2.BZ2File(raw, "wb")
    elif fmt.name in ("xz", "lzma"):
        writer = lzma.LZMAFile(raw, "wb", format=lzma.FORMAT_XZ if fmt.name == "xz" else lzma.FORMAT_ALONE)
    elif fmt.name == "zstd":
        import zstandard

        writer = zstandard.ZstdCompressor(threads=-1).stream_writer(raw, closefd=False)
    else:
        import lz4.frame

        writer = lz4.frame.LZ4FrameFile(raw, "wb")
    with writer:
        yield writer
