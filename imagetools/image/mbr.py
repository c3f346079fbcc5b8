"""MBR (msdos) partition tables: four primary entries and the EBR chain of logical partitions.

The EBR chain is a linked list stored on disk, so it is followed defensively: every link must stay
inside its extended partition, no EBR may be visited twice, and the chain length is bounded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ImageFormatError
from .model import Partition
from .source import ImageSource

SECTOR = 512
SIGNATURE = b"\x55\xaa"
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
GPT_PROTECTIVE = 0xEE
MAX_LOGICAL = 128  # Linux handles 256 partitions per disk; longer chains are corrupt
_ENTRY = struct.Struct("<B3sB3sII")


@dataclass(frozen=True)
class MbrEntry:
    slot: int  # 1-4
    status: int
    type: int
    lba: int
    sectors: int

    @property
    def used(self) -> bool:
        return self.type != 0 and self.sectors != 0


def has_signature(sector: bytes) -> bool:
    return len(sector) >= 512 and sector[510:512] == SIGNATURE


def entries(sector: bytes) -> list[MbrEntry]:
    """The four 16-byte entries at offset 446."""
    out = []
    for i in range(4):
        status, _chs1, ptype, _chs2, lba, sectors = _ENTRY.unpack_from(sector, 446 + 16 * i)
        out.append(MbrEntry(i + 1, status, ptype, lba, sectors))
    return out


def valid_boot_flags(table: list[MbrEntry]) -> bool:
    """Like Linux: a 0x55AA sector whose entries have flags other than 0/0x80 is not an MBR."""
    return all(e.status in (0x00, 0x80) for e in table)


def type_str(ptype: int) -> str:
    return f"0x{ptype:02x}"


def read_mbr(src: ImageSource, table: list[MbrEntry]) -> tuple[list[Partition], list[Partition]]:
    """(partitions, extended containers) from the primary entries plus every EBR chain."""
    parts: list[Partition] = []
    containers: list[Partition] = []
    next_logical = 5
    for e in table:
        if not e.used:
            continue
        if e.lba == 0:
            raise ImageFormatError(
                f"{src.path}: partition {e.slot} starts at sector 0, on top of the partition table: the MBR is corrupt"
            )
        p = Partition(e.slot, e.lba * SECTOR, e.sectors * SECTOR, type_str(e.type))
        if e.type in EXTENDED_TYPES:
            containers.append(p)
            logicals = _follow_ebr_chain(src, p, next_logical)
            next_logical += len(logicals)
            parts.extend(logicals)
        else:
            parts.append(p)
    parts.sort(key=lambda p: p.number)
    return parts, containers


def _follow_ebr_chain(src: ImageSource, ext: Partition, first_number: int) -> list[Partition]:
    ext_lba, ext_end = ext.start // SECTOR, ext.end // SECTOR
    if ext.end > src.size:
        raise ImageFormatError(
            f"{src.path}: extended partition {ext.number} (sectors {ext_lba}-{ext_end - 1}) extends "
            f"past the end of the image ({src.size} bytes): the image is truncated"
        )
    logicals: list[Partition] = []
    seen: set[int] = set()
    ebr_lba = ext_lba
    while True:
        if ebr_lba in seen:
            raise ImageFormatError(
                f"{src.path}: the extended partition's EBR chain loops back to sector {ebr_lba}: "
                "the partition table is corrupt"
            )
        if len(seen) >= MAX_LOGICAL:
            raise ImageFormatError(
                f"{src.path}: the EBR chain has more than {MAX_LOGICAL} links: the partition table is corrupt"
            )
        if not ext_lba <= ebr_lba < ext_end:
            raise ImageFormatError(
                f"{src.path}: an EBR link points to sector {ebr_lba}, outside extended partition "
                f"{ext.number} (sectors {ext_lba}-{ext_end - 1}): the partition table is corrupt"
            )
        seen.add(ebr_lba)
        sector = src.read(ebr_lba * SECTOR, SECTOR, f"extended boot record at sector {ebr_lba}")
        if ebr_lba == ext_lba and sector.count(0) == SECTOR:
            return logicals  # an extended partition with no logical partitions yet
        if not has_signature(sector):
            raise ImageFormatError(
                f"{src.path}: the extended boot record at sector {ebr_lba} has no 0x55AA signature: "
                "the extended partition chain is corrupt"
            )
        first, *links = entries(sector)
        if first.used and first.type not in EXTENDED_TYPES:
            logicals.append(_logical(src, ext, ebr_lba, first, first_number + len(logicals)))
        link = next((e for e in links if e.used and e.type in EXTENDED_TYPES), None)
        if link is None:
            break
        ebr_lba = ext_lba + link.lba
    _check_ebrs_outside_logicals(src, seen, logicals)
    return logicals


def _logical(src: ImageSource, ext: Partition, ebr_lba: int, e: MbrEntry, number: int) -> Partition:
    start = ebr_lba + e.lba
    end = start + e.sectors
    if e.lba == 0 or start * SECTOR < ext.start or end * SECTOR > ext.end:
        raise ImageFormatError(
            f"{src.path}: logical partition {number} (sectors {start}-{end - 1}) is not inside "
            f"extended partition {ext.number} (sectors {ext.start // SECTOR}-{ext.end // SECTOR - 1}) "
            "or overlaps its EBR: the partition table is corrupt"
        )
    return Partition(number, start * SECTOR, e.sectors * SECTOR, type_str(e.type), logical=True)


def _check_ebrs_outside_logicals(src: ImageSource, ebrs: set[int], logicals: list[Partition]) -> None:
    """Writing into a logical partition must never clobber the chain that describes it."""
    for lba in ebrs:
        for p in logicals:
            if p.start <= lba * SECTOR < p.end:
                raise ImageFormatError(
                    f"{src.path}: the extended boot record at sector {lba} lies inside logical "
                    f"partition {p.number}: the partition table is corrupt"
                )
