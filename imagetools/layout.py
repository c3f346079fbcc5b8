"""Mender roles for the partitions of a disk image, each with a one-line reason.

Evidence, strongest first: caller overrides; the EFI system partition type and swap signatures;
filesystem labels and GPT names (meta-mender and mender-convert write "boot", "primary",
"secondary", "data"); then position in Mender's fixed order: boot, rootfs A, rootfs B, [swap],
data, extra parts. Detection never fails for a missing data partition: `require("data")` does,
listing what was seen, so `inspect` can still show the table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .errors import LayoutError
from .fs import Capabilities, Filesystem, capabilities, fsck, open_filesystem
from .image import DiskImage, ImageSource, Partition, read_image
from .image.probe import FsInfo, probe_source
from .image.source import Overlay
from .mender import ESP_GUID, FAT_GUIDS, LINUX_GUIDS, MBR_FAT_TYPES, MBR_LINUX_TYPES, MBR_SWAP_TYPE, SWAP_GUID


class Role(StrEnum):
    BOOT = "boot"
    ROOTFS_A = "rootfs-a"
    ROOTFS_B = "rootfs-b"
    SWAP = "swap"
    DATA = "data"
    EXTRA = "extra"  # anything else: left alone


ROLES = tuple(Role)
OVERRIDABLE = (Role.BOOT, Role.ROOTFS_A, Role.ROOTFS_B, Role.DATA)

ROOTFS_A_NAMES = {"primary", "rootfs", "rootfsa", "rootfs-a", "rootfs_a", "root", "roota", "root-a", "root_a"}
ROOTFS_B_NAMES = {"secondary", "rootfsb", "rootfs-b", "rootfs_b", "rootb", "root-b", "root_b"}
BOOT_NAMES = {"boot", "bootfs", "esp", "efi", "uboot", "u-boot"}
Roles = dict[int, tuple[Role, str]]  # partition number -> (role, reason)
# The reason of a role the caller chose (overrides); a CLI shows its own flag instead.
OVERRIDE_REASON = "chosen by the caller ({role} = partition {number})"
Infos = list[tuple[Partition, FsInfo]]


@dataclass
class PartInfo:
    partition: Partition
    fs: FsInfo
    role: Role
    reason: str

    def __post_init__(self) -> None:
        self.role = Role(self.role)

    @property
    def number(self) -> int:
        return self.partition.number

    @property
    def where(self) -> str:
        """'partition 4 (data, ext4)': how messages about its contents name a partition."""
        role = f"{self.role}, " if self.role else ""
        return f"partition {self.number} ({role}{self.fs.type})"

    @property
    def caps(self) -> Capabilities:
        """What this partition's filesystem supports (owner and mode, fsck, data, in-place writes)."""
        return capabilities(self.fs.type)

    def open(
        self, image_path: str | os.PathLike, writable: bool = False, source: ImageSource | None = None
    ) -> Filesystem:
        """This partition's filesystem in `image_path` (the image itself or a copy of it), read
        through `source` when the image is already open."""
        return open_filesystem(
            image_path,
            self.partition.start,
            self.partition.size,
            self.fs.type,
            writable=writable,
            label=self.where,
            source=source,
        )

    def fsck(self, image_path: str | os.PathLike, overlay: Overlay | None = None) -> tuple[bool, str]:
        """e2fsck -fn of this partition in `image_path` (a unit's delta over `overlay`'s base)."""
        return fsck(image_path, self.partition.start, self.fs.type, self.where, overlay)

    def describe(self) -> str:
        """`4 ext4 'data'`: how summaries of the table name a partition."""
        label = f" '{self.fs.label}'" if self.fs.label else ""
        name = f" (GPT name '{self.partition.name}')" if self.partition.name else ""
        return f"{self.number} {self.fs.type}{label}{name}"


@dataclass
class Layout:
    image: DiskImage
    parts: list[PartInfo]
    notes: list[str] = field(default_factory=list)

    def find(self, role: str) -> PartInfo | None:
        _check_role(role)
        return next((p for p in self.parts if p.role == role), None)

    def require(self, role: str) -> PartInfo:
        found = self.find(role)
        if found is None:
            flag = f" (choose one with --{role}-partition N)" if role in OVERRIDABLE else ""
            raise LayoutError(f"{self.image.path}: no {role} partition found{flag}; partitions seen: {self.summary()}")
        return found

    def by_number(self, number: int) -> PartInfo:
        found = next((p for p in self.parts if p.number == number), None)
        if found is None:
            raise LayoutError(f"{self.image.path} has no partition {number}; partitions seen: {self.summary()}")
        return found

    def to_dict(self) -> dict[str, Any]:
        """The `inspect --json` document: byte offsets, one entry per usable partition."""
        img = self.image
        return {
            "image": img.path,
            "table": img.table,
            "sector_size": img.sector_size,
            "size": img.size,
            "partitions": [
                {
                    "number": p.number,
                    "start": p.partition.start,
                    "size": p.partition.size,
                    "type": p.partition.type,
                    "name": p.partition.name,
                    "fs": p.fs.type,
                    "label": p.fs.label,
                    "role": p.role,
                    "reason": p.reason,
                    "uuid": p.partition.uuid,
                    "fs_uuid": p.fs.uuid,
                    "logical": p.partition.logical,
                }
                for p in self.parts
            ],
            "extended": [{"number": c.number, "start": c.start, "size": c.size, "type": c.type} for c in img.extended],
            "warnings": self.warnings,
        }

    def summary(self) -> str:
        return ", ".join(f"{p.describe()} as {p.role}" for p in self.parts)

    @property
    def warnings(self) -> list[str]:
        """The table's warnings, filesystems larger than their partition, and what a Mender image
        is missing (e.g. no data partition)."""
        return self.image.warnings + self.oversized + self.notes

    @property
    def oversized(self) -> list[str]:
        """Filesystems that claim more than their partition: writing to them is refused."""
        return [
            f"partition {p.number}: its {p.fs.type} filesystem spans {p.fs.size} bytes but the "
            f"partition only {p.partition.size}; it cannot be written to (the table was shrunk "
            "without shrinking the filesystem)"
            for p in self.parts
            if p.fs.size > p.partition.size
        ]

    @property
    def data(self) -> PartInfo | None:
        return self.find(Role.DATA)

    @property
    def boot(self) -> PartInfo | None:
        return self.find(Role.BOOT)

    @property
    def rootfs_a(self) -> PartInfo | None:
        return self.find(Role.ROOTFS_A)

    @property
    def rootfs_b(self) -> PartInfo | None:
        return self.find(Role.ROOTFS_B)

    @property
    def rootfs(self) -> list[PartInfo]:
        return [p for p in (self.rootfs_a, self.rootfs_b) if p is not None]


def open_layout(image: str | os.PathLike | ImageSource, overrides: dict[str, int] | None = None) -> Layout:
    """Read the partition table of `image` and assign roles (a path is opened once; an open
    ImageSource is read through)."""
    if isinstance(image, ImageSource):
        return detect_layout(read_image(image), overrides, image)
    with ImageSource(image) as src:
        return detect_layout(read_image(src), overrides, src)


def detect_layout(
    image: DiskImage, overrides: dict[str, int] | None = None, source: ImageSource | None = None
) -> Layout:
    """Probe every partition's filesystem (through `source` when the caller has the image open)
    and assign Mender roles (see the module docstring)."""
    if source is None:
        with ImageSource(image.path) as src:
            return detect_layout(image, overrides, src)
    infos = [(p, probe_source(source, p.start, p.size)) for p in image.partitions]
    roles: Roles = {}
    _apply_overrides(image, infos, overrides or {}, roles)
    _assign_boot_and_swap(infos, roles)
    _assign_by_name(infos, roles)
    _assign_by_position(infos, roles)
    parts = [PartInfo(p, fs, *roles.get(p.number, _extra(p, fs, roles, infos))) for p, fs in infos]
    layout = Layout(image, parts)
    if layout.data is None:
        layout.notes.append(
            f"no data partition found (choose one with --data-partition N); partitions seen: {layout.summary()}"
        )
    return layout


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise LayoutError(f"unknown partition role {role!r} (known: {', '.join(ROLES)})")


def _apply_overrides(image: DiskImage, infos: Infos, overrides: dict[str, int], roles: Roles) -> None:
    numbers = {p.number for p, _ in infos}
    seen = ", ".join(f"{p.number} {fs.type}" for p, fs in infos)
    for role, number in overrides.items():
        if number is None:
            continue
        if role not in OVERRIDABLE:
            raise LayoutError(f"cannot override role {role!r} (only {', '.join(OVERRIDABLE)})")
        if number not in numbers:
            raise LayoutError(
                f"--{role}-partition {number}: {image.path} has no partition {number} (partitions: {seen})"
            )
        if number in roles:
            raise LayoutError(f"partition {number} cannot be both {roles[number][0]} and {role}")
        roles[number] = (Role(role), OVERRIDE_REASON.format(role=role, number=number))


def _taken(roles: Roles, role: str) -> bool:
    return any(r == role for r, _ in roles.values())


def _is_fat(p: Partition, fs: FsInfo) -> bool:
    return fs.type == "vfat" or (fs.type in ("empty", "unknown") and (p.type in MBR_FAT_TYPES or p.type in FAT_GUIDS))


def _is_linux(p: Partition, fs: FsInfo) -> bool:
    """Could hold a rootfs or data: an ext/squashfs filesystem, or a blank Linux-type partition."""
    if capabilities(fs.type).owner_mode or fs.type == "squashfs":
        return True
    return fs.type in ("empty", "unknown") and (p.type in MBR_LINUX_TYPES or p.type in LINUX_GUIDS)


def _names(p: Partition, fs: FsInfo) -> list[tuple[str, str]]:
    """(lowercased name, where it came from) for the filesystem label and the GPT name."""
    out = []
    if fs.label:
        out.append((fs.label.lower(), f"{fs.type} label '{fs.label}'"))
    if p.name:
        out.append((p.name.lower(), f"GPT name '{p.name}'"))
    return out


def _boot_named(p: Partition, fs: FsInfo) -> bool:
    """An ext4 partition labelled 'boot' is a /boot, never a Mender rootfs."""
    return any(n in BOOT_NAMES for n, _ in _names(p, fs))


def _assign_boot_and_swap(infos: Infos, roles: Roles) -> None:
    for p, fs in infos:
        if p.number in roles:
            continue
        if fs.type == "swap" or (fs.type in ("empty", "unknown") and p.type in (MBR_SWAP_TYPE, SWAP_GUID)):
            why = "swap signature" if fs.type == "swap" else f"swap partition type {p.type}"
            roles[p.number] = (Role.SWAP, why)
    if _taken(roles, Role.BOOT):
        return
    free = [(p, fs) for p, fs in infos if p.number not in roles]
    esp = next(((p, fs) for p, fs in free if p.type == ESP_GUID), None)
    if esp:
        roles[esp[0].number] = (Role.BOOT, "EFI system partition type GUID")
        return
    for p, fs in free:
        named = next((src for n, src in _names(p, fs) if n in BOOT_NAMES), None)
        if named and _is_fat(p, fs):
            roles[p.number] = (Role.BOOT, f"{named} on a FAT partition")
            return
    first = min(infos, key=lambda i: i[0].start)
    if first[0].number not in roles and _is_fat(*first):
        what = "vfat filesystem" if first[1].type == "vfat" else f"FAT partition type {first[0].type}"
        roles[first[0].number] = (Role.BOOT, f"{what} in the first partition")


def _assign_by_name(infos: Infos, roles: Roles) -> None:
    wanted = (
        (Role.DATA, {"data"}, True),
        (Role.ROOTFS_A, ROOTFS_A_NAMES, False),
        (Role.ROOTFS_B, ROOTFS_B_NAMES, False),
    )
    for role, names, data_only in wanted:
        if _taken(roles, role):
            continue
        for p, fs in infos:
            if p.number in roles or not _is_linux(p, fs) or (data_only and not capabilities(fs.type).data_partition):
                continue
            named = next((src for n, src in _names(p, fs) if n in names), None)
            if named:
                roles[p.number] = (role, named)
                break


def _assign_by_position(infos: Infos, roles: Roles) -> None:
    """Mender's order: rootfs A, rootfs B, then data; rootfs candidates must precede data."""
    ordered = sorted(infos, key=lambda i: i[0].start)
    data = next((p for p, _ in ordered if roles.get(p.number, ("",))[0] == Role.DATA), None)
    start_of = {p.number: p.start for p, _ in infos}
    placed = {r: start_of[n] for n, (r, _) in roles.items()}
    for role, ordinal in ((Role.ROOTFS_A, "first"), (Role.ROOTFS_B, "second")):
        if role in placed:
            continue
        after = placed.get(Role.ROOTFS_A, -1) if role == Role.ROOTFS_B else -1
        before = placed.get(Role.ROOTFS_B) if role == Role.ROOTFS_A else None
        for p, fs in ordered:
            if (
                p.number in roles
                or not _is_linux(p, fs)
                or _boot_named(p, fs)
                or p.start <= after
                or (before is not None and p.start >= before)
                or (data is not None and p.start >= data.start)
            ):
                continue
            blank = ", not formatted" if fs.type == "empty" else ""
            roles[p.number] = (
                role,
                f"{ordinal} Linux partition before data{blank}" if data else f"{ordinal} Linux partition{blank}",
            )
            placed[role] = p.start
            break
    if data is None and Role.ROOTFS_B in placed:
        for p, fs in ordered:
            if p.number not in roles and capabilities(fs.type).data_partition and p.start > placed[Role.ROOTFS_B]:
                roles[p.number] = (Role.DATA, f"first {fs.type} partition after rootfs B")
                break


def _extra(p: Partition, fs: FsInfo, roles: Roles, infos: Infos) -> tuple[Role, str]:
    data_start = next((q.start for q, _ in infos if roles.get(q.number, ("",))[0] == Role.DATA), None)
    if data_start is not None and p.start > data_start:
        return Role.EXTRA, f"{fs.type} partition after data"
    if _is_fat(p, fs):
        return Role.EXTRA, f"{fs.type} partition that is not the first one"
    return Role.EXTRA, f"{fs.type} partition with no Mender role"
