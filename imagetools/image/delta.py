"""The unit delta format: the few blocks in which a unit's image differs from its base.

A unit made from a shared base differs from it only in a handful of data-partition blocks (the
key's data block, its inode and directory blocks, bitmaps, group descriptors, superblock), so a
delta of a few KiB replaces a full image copy. The file is read from outside, so everything in
it is checked before use: sizes and counts are bounded, extents must be sorted, block-aligned,
disjoint and inside the window (the base's data partition) that the header names, and a trailing
SHA-256 covers every byte before it.

Layout (little-endian), version 1:

    0   8   magic b"ITDELTA\\n"
    8   4   version (1)
    12  4   block size (4096)
    16  8   base image size in bytes
    24  32  base image SHA-256 (as sha256sum prints it, holes read as zeros)
    56  8   window start (byte offset of the data partition in the base)
    64  8   window end (exclusive)
    72  4   extent count N
    76  4   reserved (0)
    80  16N extents: offset u64 (bytes, block-aligned), blocks u32, reserved u32 (0)
    ... the extents' bytes, in table order
    -32 32  SHA-256 of everything before it
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from ..errors import ImageFormatError
from ..strict import read_regular

MAGIC = b"ITDELTA\n"
VERSION = 1
BLOCK = 4096
MAX_EXTENTS = 4096
MAX_DATA = 16 << 20  # a key changes a few dozen blocks; 16 MiB is far beyond that
MAX_FILE = 80 + 16 * MAX_EXTENTS + MAX_DATA + 32
_HEADER = struct.Struct("<8sII Q 32s QQ II")
_EXTENT = struct.Struct("<QII")
_CHUNK = 1 << 20  # diff reads this much at a time
_PIECE = 64 * 1024  # and compares pieces this big before single blocks


@dataclass(frozen=True)
class Delta:
    """A parsed, validated delta: extents are (byte offset, bytes) over the base."""

    base_size: int
    base_sha256: str
    window: tuple[int, int]
    extents: tuple[tuple[int, bytes], ...]

    @property
    def data_bytes(self) -> int:
        return sum(len(data) for _, data in self.extents)

    def touches(self, start: int, end: int) -> bool:
        """Whether any extent overlaps bytes [start, end)."""
        return any(off < end and start < off + len(data) for off, data in self.extents)

    def render(self) -> bytes:
        """The file's bytes (validated first: we never write what we would refuse to read)."""
        _check(self, "delta")
        table = b"".join(_EXTENT.pack(off, len(data) // BLOCK, 0) for off, data in self.extents)
        head = _HEADER.pack(
            MAGIC,
            VERSION,
            BLOCK,
            self.base_size,
            bytes.fromhex(self.base_sha256),
            self.window[0],
            self.window[1],
            len(self.extents),
            0,
        )
        body = head + table + b"".join(data for _, data in self.extents)
        return body + hashlib.sha256(body).digest()


def parse(blob: bytes, what: str = "delta") -> Delta:
    """The delta in `blob`, or ImageFormatError naming the first thing that is wrong."""
    if len(blob) < _HEADER.size + 32 or blob[:8] != MAGIC:
        raise ImageFormatError(f"{what}: not an imagetools delta (no {MAGIC!r} header)")
    magic, version, block, base_size, sha, w0, w1, count, _ = _HEADER.unpack_from(blob)
    if version != VERSION or block != BLOCK:
        raise ImageFormatError(
            f"{what}: delta version {version}, block size {block}; this imagetools "
            f"reads version {VERSION} with {BLOCK}-byte blocks"
        )
    if hashlib.sha256(blob[:-32]).digest() != blob[-32:]:
        raise ImageFormatError(f"{what}: checksum mismatch: the delta is damaged or truncated")
    if count > MAX_EXTENTS:
        raise ImageFormatError(f"{what}: {count} extents, more than {MAX_EXTENTS}")
    pos, extents, table_end = _HEADER.size, [], _HEADER.size + count * _EXTENT.size
    if table_end > len(blob) - 32:
        raise ImageFormatError(f"{what}: {count} extents do not fit in {len(blob)} bytes")
    data_pos = table_end
    for _ in range(count):
        off, blocks, _reserved = _EXTENT.unpack_from(blob, pos)
        pos += _EXTENT.size
        n = blocks * BLOCK
        if n == 0 or data_pos + n > len(blob) - 32 or data_pos + n - table_end > MAX_DATA:
            raise ImageFormatError(f"{what}: extent at byte {off} has a bad length ({blocks} blocks)")
        extents.append((off, blob[data_pos : data_pos + n]))
        data_pos += n
    if data_pos != len(blob) - 32:
        raise ImageFormatError(f"{what}: {len(blob) - 32 - data_pos} bytes beyond the last extent")
    delta = Delta(base_size, sha.hex(), (w0, w1), tuple(extents))
    _check(delta, what)
    return delta


def read(path: str | os.PathLike) -> Delta:
    """A delta file, read only if it is a regular file of bounded size."""
    path = os.fspath(path)
    return parse(read_regular(path, MAX_FILE, "delta", ImageFormatError), path)


def _check(delta: Delta, what: str) -> None:
    """Extents sorted, aligned, disjoint, whole blocks, inside the window inside the base."""
    w0, w1 = delta.window
    if not (0 < w0 < w1 <= delta.base_size) or w0 % BLOCK or w1 % BLOCK:
        raise ImageFormatError(
            f"{what}: window {w0}-{w1} is not a block-aligned range inside the base ({delta.base_size} bytes)"
        )
    if len(delta.base_sha256) != 64 or len(delta.extents) > MAX_EXTENTS:
        raise ImageFormatError(f"{what}: bad base sha256 or too many extents")
    last = w0
    for off, data in delta.extents:
        if off % BLOCK or not data or len(data) % BLOCK or off < last or off + len(data) > w1:
            raise ImageFormatError(
                f"{what}: extent at byte {off} ({len(data)} bytes) is unaligned, "
                f"overlaps another or lies outside the window {w0}-{w1}"
            )
        last = off + len(data)
    if delta.data_bytes > MAX_DATA:
        raise ImageFormatError(f"{what}: {delta.data_bytes} bytes of blocks, more than {MAX_DATA}")


def apply(delta: Delta, image: str | os.PathLike) -> None:
    """Write the delta's blocks into image, a copy of the delta's base."""
    fd = os.open(image, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for off, data in delta.extents:
            os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def diff(
    base_fd: int, scratch_fd: int, window: tuple[int, int], ranges: list[tuple[int, int]]
) -> list[tuple[int, bytes]]:
    """Extents where the scratch differs from the base, looking only at `ranges` (the scratch's
    data ranges: everything else is the base's by construction). Block-aligned, merged. Read
    into two reused buffers: a fresh 1 MiB bytes object per read costs its page faults, more
    than the read and the comparison together."""
    out: list[tuple[int, bytes]] = []
    new, old = bytearray(_CHUNK), bytearray(_CHUNK)
    for start, end in ranges:
        start, end = max(window[0], start - start % BLOCK), min(window[1], -(-end // BLOCK) * BLOCK)
        for pos in range(start, end, _CHUNK):
            n = min(_CHUNK, end - pos)
            _read_into(scratch_fd, new, pos, n)
            _read_into(base_fd, old, pos, n)
            same = new == old if n == _CHUNK else new[:n] == old[:n]  # whole buffers: no copy
            if not same:
                _changed_blocks(out, pos, new[:n], old[:n])
    return out


def _changed_blocks(out: list[tuple[int, bytes]], pos: int, new: bytearray, old: bytearray) -> None:
    """Blocks only inside the 64 KiB pieces that differ: a unit changes a few blocks per MiB."""
    for piece in range(0, len(new), _PIECE):
        if new[piece : piece + _PIECE] == old[piece : piece + _PIECE]:
            continue
        for i in range(piece, min(piece + _PIECE, len(new)), BLOCK):
            block = bytes(new[i : i + BLOCK])
            if block == old[i : i + BLOCK]:
                continue
            off = pos + i
            if out and out[-1][0] + len(out[-1][1]) == off:
                out[-1] = (out[-1][0], out[-1][1] + block)
            else:
                out.append((off, block))


def _read_into(fd: int, buf: bytearray, pos: int, n: int) -> None:
    """buf[:n] = n bytes at pos; beyond the end reads as zeros (a hole at the end of a sparse file)."""
    got = os.preadv(fd, [memoryview(buf)[:n]], pos)
    buf[got:n] = bytes(n - got)
