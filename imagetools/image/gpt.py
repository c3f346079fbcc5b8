"""GUID partition tables: header and entry-array CRC32 checks, backup-header fallback.

Both 512- and 4096-byte logical sectors are recognised by where the "EFI PART" header sits.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

from ..errors import ImageFormatError
from .model import Partition
from .source import ImageSource

SIGNATURE = b"EFI PART"
SECTOR_SIZES = (512, 4096)
MAX_ENTRY_ARRAY = 1 << 20  # 1 MiB: real tables use 16 KiB; more is garbage, not a table
_HEADER = struct.Struct("<8sIIII QQQQ 16s QIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")


class _Bad(Exception):
    """Why one GPT header copy is unusable (a reason, not yet the user's error)."""


@dataclass(frozen=True)
class Header:
    lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int


def detect_sector_size(src: ImageSource) -> int | None:
    """512 or 4096 when a primary GPT header signature is where that sector size puts it."""
    for ss in SECTOR_SIZES:
        if src.size >= 2 * ss and src.read(ss, 8, "GPT header") == SIGNATURE:
            return ss
    return None


def read_gpt(src: ImageSource, sector_size: int | None) -> tuple[int, list[Partition], list[str]]:
    """(sector size, partitions, warnings); ImageFormatError when neither header copy is usable."""
    warnings: list[str] = []
    sizes = (sector_size,) if sector_size else SECTOR_SIZES
    primary_errors = []
    for ss in sizes:
        try:
            header, array = _load(src, ss, 1)
        except _Bad as exc:
            primary_errors.append(str(exc))
            continue
        warnings += _check_backup(src, ss, header)
        return ss, _partitions(src, ss, header, array), warnings
    backup_errors = []
    for ss in sizes:
        last = src.size // ss - 1
        try:
            header, array = _load(src, ss, last)
        except _Bad as exc:
            backup_errors.append(str(exc))
            continue
        warnings.append(
            f"primary GPT header is damaged ({primary_errors[0]}); using the backup header at "
            f"sector {last} (rewrite the table to repair it, e.g. `sfdisk --dump IMG | sfdisk IMG`)"
        )
        return ss, _partitions(src, ss, header, array), warnings
    raise ImageFormatError(
        f"{src.path}: no usable GPT: primary header: {primary_errors[0]}; backup header at the "
        f"end of the image: {backup_errors[0]}"
    )


def _load(src: ImageSource, ss: int, lba: int) -> tuple[Header, bytes]:
    header = _header(src, ss, lba)
    array_len = header.entry_count * header.entry_size
    try:
        array = src.read(header.entries_lba * ss, array_len, "GPT partition entries")
    except ImageFormatError:
        raise _Bad(f"partition entries at sector {header.entries_lba} lie past the end of the image") from None
    if zlib.crc32(array) != header.entries_crc:
        raise _Bad("partition entry array CRC mismatch")
    return header, array


def _header(src: ImageSource, ss: int, lba: int) -> Header:
    if lba < 1 or (lba + 1) * ss > src.size:
        raise _Bad(f"sector {lba} is outside the image")
    raw = src.read(lba * ss, ss, "GPT header")
    (sig, _rev, hsize, hcrc, _res, my_lba, alt_lba, first, last, _guid, entries_lba, count, esize, ecrc) = (
        _HEADER.unpack_from(raw)
    )
    if sig != SIGNATURE:
        raise _Bad("no 'EFI PART' signature")
    if not _HEADER.size <= hsize <= ss:
        raise _Bad(f"invalid header size {hsize}")
    if zlib.crc32(raw[:16] + b"\0\0\0\0" + raw[20:hsize]) != hcrc:
        raise _Bad("header CRC mismatch")
    if my_lba != lba:
        raise _Bad(f"header at sector {lba} claims to be at sector {my_lba}")
    if esize < 128 or esize % 8 or count * esize > MAX_ENTRY_ARRAY:
        raise _Bad(f"implausible partition entry array ({count} entries of {esize} bytes)")
    array_end = entries_lba + -(-count * esize // ss)
    if first > last + 1 or entries_lba < 1 or (entries_lba <= last and array_end > first):
        raise _Bad("inconsistent usable-area and entry-array positions")
    return Header(lba, alt_lba, first, last, entries_lba, count, esize, ecrc)


def _check_backup(src: ImageSource, ss: int, primary: Header) -> list[str]:
    """The backup header is checked but its entries are not read: a CRC comparison suffices."""
    alt = primary.alternate_lba
    if (alt + 1) * ss > src.size:
        return [f"backup GPT header (sector {alt}) lies past the end of the image: the image may be truncated"]
    try:
        backup = _header(src, ss, alt)
    except _Bad as exc:
        return [
            f"backup GPT header at sector {alt} is damaged ({exc}); the primary is fine "
            "(rewrite the table to repair it, e.g. `sfdisk --dump IMG | sfdisk IMG`)"
        ]
    if backup.entries_crc != primary.entries_crc:
        return ["backup GPT partition entries differ from the primary ones; using the primary"]
    return []


def _partitions(src: ImageSource, ss: int, header: Header, array: bytes) -> list[Partition]:
    parts = []
    for i in range(header.entry_count):
        type_b, uniq_b, first, last, _attrs, name_b = _ENTRY.unpack_from(array, i * header.entry_size)
        if type_b == bytes(16):
            continue
        number = i + 1
        if last < first:
            raise ImageFormatError(
                f"{src.path}: GPT partition {number} ends (sector {last}) before it starts "
                f"(sector {first}): the partition table is corrupt"
            )
        if first < header.first_usable or (last > header.last_usable and (last + 1) * ss <= src.size):
            raise ImageFormatError(
                f"{src.path}: GPT partition {number} (sectors {first}-{last}) lies outside the "
                f"usable area (sectors {header.first_usable}-{header.last_usable}): "
                "the partition table is corrupt"
            )
        name = name_b.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        parts.append(
            Partition(
                number,
                first * ss,
                (last - first + 1) * ss,
                str(uuid.UUID(bytes_le=type_b)),
                name,
                str(uuid.UUID(bytes_le=uniq_b)),
            )
        )
    return parts
