"""Build partition tables and filesystem signatures byte by byte, for fast parser tests.

These write the on-disk formats independently of imagetools (struct + zlib only), so a test can
make any table, valid or subtly broken, in a sparse file without running external tools.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

LINUX = "0fc63daf-8483-4772-8e79-3d69d8477de4"
ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
SWAP = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
BASIC = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"
MiB = 1 << 20


def write_image(path: Path, size: int, chunks: dict[int, bytes]) -> Path:
    """A sparse file of `size` bytes with `chunks` ({offset: bytes}) written in place."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in chunks.items():
            f.seek(offset)
            f.write(data)
    return path


# --- MBR ------------------------------------------------------------------------------------
def mbr_entry(ptype: int, lba: int, sectors: int, status: int = 0) -> bytes:
    return struct.pack("<B3sB3sII", status, b"\0\0\0", ptype, b"\0\0\0", lba, sectors)


def mbr_sector(entries: list[bytes], signature: bool = True) -> bytes:
    table = b"".join(entries).ljust(64, b"\0")
    return bytes(446) + table + (b"\x55\xaa" if signature else b"\0\0")


def mbr_chunks(primaries: list[tuple[int, int, int]], logicals: list[tuple[int, int, int]] = ()) -> dict[int, bytes]:
    """Primaries (type, lba, sectors) in slots 1..n; logicals (type, lba, sectors) are chained
    through EBRs placed one sector before each logical, inside the first extended primary."""
    chunks = {0: mbr_sector([mbr_entry(*p) for p in primaries])}
    if logicals:
        ext_lba = next(lba for t, lba, _ in primaries if t in (0x05, 0x0F, 0x85))
        ebrs = [ext_lba] + [lba - 1 for _, lba, _ in logicals[1:]]
        for i, ((ptype, lba, sectors), ebr) in enumerate(zip(logicals, ebrs)):
            entries = [mbr_entry(ptype, lba - ebr, sectors)]
            if i + 1 < len(logicals):
                nxt = ebrs[i + 1]
                nxt_end = logicals[i + 1][1] + logicals[i + 1][2]
                entries.append(mbr_entry(0x05, nxt - ext_lba, nxt_end - nxt))
            chunks[ebr * 512] = mbr_sector(entries)
    return chunks


# --- GPT ------------------------------------------------------------------------------------
@dataclass
class GptPart:
    type: str
    first: int
    last: int
    name: str = ""
    uuid: str = "11111111-2222-3333-4444-555555555555"


def gpt_entry(p: GptPart, size: int = 128) -> bytes:
    raw = (
        uuid.UUID(p.type).bytes_le
        + uuid.UUID(p.uuid).bytes_le
        + struct.pack("<QQQ", p.first, p.last, 0)
        + p.name.encode("utf-16-le").ljust(72, b"\0")
    )
    return raw.ljust(size, b"\0")


def gpt_header(
    lba: int, alt: int, first: int, last: int, entries_lba: int, count: int, esize: int, array_crc: int, ss: int = 512
) -> bytes:
    fields = [
        b"EFI PART",
        0x00010000,
        92,
        0,
        0,
        lba,
        alt,
        first,
        last,
        uuid.UUID("01234567-89ab-cdef-0123-456789abcdef").bytes_le,
        entries_lba,
        count,
        esize,
        array_crc,
    ]
    fmt = "<8sIIII QQQQ 16s QIII"
    crc = zlib.crc32(struct.pack(fmt, *fields))
    fields[3] = crc
    return struct.pack(fmt, *fields).ljust(ss, b"\0")


def gpt_chunks(
    parts: list[GptPart],
    total_sectors: int,
    ss: int = 512,
    count: int = 128,
    esize: int = 128,
    pmbr: bytes | None = None,
) -> dict[int, bytes]:
    """Protective MBR, primary header + entries at LBA 1/2, backup entries + header at the end."""
    array = b"".join(gpt_entry(p, esize) for p in parts).ljust(count * esize, b"\0")
    array_sectors = -(-len(array) // ss)
    last_lba = total_sectors - 1
    first_usable = 2 + array_sectors
    last_usable = last_lba - 1 - array_sectors
    crc = zlib.crc32(array)
    backup_array_lba = last_lba - array_sectors
    if pmbr is None:
        pmbr = mbr_sector([mbr_entry(0xEE, 1, min(total_sectors - 1, 0xFFFFFFFF))])
    return {
        0: pmbr,
        ss: gpt_header(1, last_lba, first_usable, last_usable, 2, count, esize, crc, ss),
        2 * ss: array,
        backup_array_lba * ss: array,
        last_lba * ss: gpt_header(last_lba, 1, first_usable, last_usable, backup_array_lba, count, esize, crc, ss),
    }


# --- filesystem signatures -------------------------------------------------------------------
def ext_superblock(
    label: str = "",
    compat: int = 0x3C,
    incompat: int = 0x2C2,
    ro_compat: int = 0x47B,
    log_block: int = 2,
    fs_uuid: str = "0f0e0d0c-0b0a-0908-0706-050403020100",
) -> bytes:
    """The first 2 KiB of an ext filesystem (defaults: what mkfs.ext4 sets, ext4)."""
    sb = bytearray(1024)
    struct.pack_into("<I", sb, 0x18, log_block)
    sb[0x38:0x3A] = b"\x53\xef"
    struct.pack_into("<III", sb, 0x5C, compat, incompat, ro_compat)
    sb[0x68:0x78] = uuid.UUID(fs_uuid).bytes
    sb[0x78:0x88] = label.encode().ljust(16, b"\0")[:16]
    return bytes(1024) + bytes(sb)


def fat_boot_sector(label: str = "BOOT", fat32: bool = True, serial: int = 0x1234ABCD) -> bytes:
    bs = bytearray(512)
    bs[0:3] = b"\xeb\x58\x90"
    struct.pack_into("<HBHB", bs, 11, 512, 4, 32, 2)
    bs[21] = 0xF8
    ext = 66 if fat32 else 38
    if not fat32:
        struct.pack_into("<H", bs, 22, 64)
    bs[ext] = 0x29
    struct.pack_into("<I", bs, ext + 1, serial)
    bs[ext + 5 : ext + 16] = label.encode().ljust(11, b" ")
    bs[510:512] = b"\x55\xaa"
    return bytes(bs)


def swap_header(label: str = "swap", page: int = 4096) -> bytes:
    hdr = bytearray(page)
    hdr[1036:1052] = uuid.UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee").bytes
    hdr[1052:1068] = label.encode().ljust(16, b"\0")
    hdr[page - 10 :] = b"SWAPSPACE2"
    return bytes(hdr)
