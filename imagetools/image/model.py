"""The disk-image model every other module works with: partitions as byte offsets."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class Partition:
    """One partition, numbered as Linux numbers it (MBR logicals from 5, GPT entry index + 1)."""

    number: int
    start: int  # byte offset in the image
    size: int  # bytes
    type: str  # MBR: "0x83" style; GPT: lowercase type GUID
    name: str = ""  # GPT partition name
    uuid: str = ""  # GPT unique partition GUID, lowercase
    logical: bool = False

    @property
    def end(self) -> int:
        """First byte after the partition."""
        return self.start + self.size


class TableType(StrEnum):
    MBR = "mbr"
    GPT = "gpt"


@dataclass
class DiskImage:
    """A parsed partition table. `extended` holds MBR extended containers (not usable partitions)."""

    path: str
    table: TableType
    sector_size: int
    size: int  # bytes (file size or block device size)
    partitions: list[Partition]
    warnings: list[str] = field(default_factory=list)
    extended: list[Partition] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.table = TableType(self.table)
