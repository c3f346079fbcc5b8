"""Which targets a flashing station may write, decided before anything is opened for writing.

Checking only stats paths and reads /sys, /proc and /run/udev, so a refused target stays exactly
as it was. Kernel files are read bounded and may vanish meanwhile (a card pulled): "unknown".
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import EnvironmentProblem, UsageError, from_oserror

_ATTR_LIMIT = 64 << 10  # one sysfs attribute or udev record
_TABLE_LIMIT = 4 << 20  # /proc/self/mountinfo, /proc/swaps (a host with thousands of mounts)
FileId = tuple[int, int]  # (st_dev, st_ino)


@dataclass(frozen=True)
class TargetInfo:
    path: str  # as given
    kind: str  # "block", "file" (existing regular file) or "new" (to be created)
    size: int  # bytes the target holds now (0 for "new")
    rdev: int | None  # block devices
    dev_ino: FileId | None  # regular files
    serial: str | None  # block devices: the card/reader serial
    write_zeroes_max_bytes: int | None  # the whole disk's queue limit; None if unknown
    discard_max_bytes: int | None


def check_targets(
    targets: Sequence[str], protected: Sequence[str | os.PathLike], need: int, *, allow_fixed_disk: bool = False
) -> list[TargetInfo]:
    """Every target checked, or the first refusal raised (UsageError / EnvironmentProblem)."""
    files, disks = _protected(protected)
    seen: dict[object, str] = {}
    infos = []
    for target in targets:
        info, identity = _check(target, files, disks, need, allow_fixed_disk)
        if identity in seen:
            raise UsageError(
                f"{_q(target)} and {_q(seen[identity])} are the same target (or the same disk): give each card once"
            )
        seen[identity] = target
        infos.append(info)
    return infos


def device_serial(rdev: int) -> str | None:
    """The device's serial as udev recorded it (or the kernel's sysfs attribute)."""
    major, minor = os.major(rdev), os.minor(rdev)
    record = _read(f"/run/udev/data/b{major}:{minor}") or ""
    props = dict(
        line[2:].strip().split("=", 1) for line in record.splitlines() if line.startswith("E:") and "=" in line
    )
    if props.get("ID_SERIAL_SHORT") or props.get("ID_SERIAL"):
        return props.get("ID_SERIAL_SHORT") or props.get("ID_SERIAL")
    return (_read(f"/sys/dev/block/{major}:{minor}/device/serial", 256) or "").strip() or None


def slot_card(path: str) -> tuple[int, int | None] | None:
    """(bytes, disk sequence number) of the device node at PATH, from sysfs (no open: a reader
    is not woken and an empty one is not an error); None when PATH is not a block device node.
    Bytes are 0 for an empty reader or a detached loop device; the kernel's diskseq grows on
    every media change, so a card swapped between two looks is still a new card."""
    rdev = _node(path)
    if rdev is None:
        return None
    sectors = _int(f"{_sysdev(rdev)}/size")
    return (0 if sectors is None else sectors * 512), _int(f"{_sysdev(rdev)}/diskseq")


def slot_busy(path: str) -> str | None:
    """What keeps the disk at PATH from being written (a mounted partition, swap, a holder), as
    one line; None when nothing does. A desktop's automounter shows up here."""
    rdev = _node(path)
    disk = _disk(rdev) if rdev is not None else None
    found = _busy(_members(disk)) if disk is not None else None
    return found[0] if found else None


def _protected(paths: Sequence[str | os.PathLike]) -> tuple[dict[FileId, str], dict[int, str]]:
    """What no target may be: the inputs by file identity, and their whole disks when devices."""
    files: dict[FileId, str] = {}
    disks: dict[int, str] = {}
    for item in map(os.fsdecode, paths):
        try:
            st = os.stat(item)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise from_oserror(exc, f"cannot check {_q(item)}", UsageError) from None
        files[(st.st_dev, st.st_ino)] = item
        if stat.S_ISBLK(st.st_mode):
            disk = _disk(st.st_rdev)
            disks[(_devno(disk) if disk else None) or st.st_rdev] = item
    return files, disks


def _check(
    target: str, files: dict[FileId, str], disks: dict[int, str], need: int, allow_fixed: bool
) -> tuple[TargetInfo, object]:
    """One target's info, and the identity that makes two targets the same."""
    path = os.path.abspath(target)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _check_new(target, path)
        return TargetInfo(target, "new", 0, None, None, None, None, None), ("new", os.path.realpath(path))
    except OSError as exc:
        raise from_oserror(exc, f"cannot use target {_q(target)}", UsageError) from None
    if stat.S_ISBLK(st.st_mode):
        return _check_block(target, st.st_rdev, files, disks, need, allow_fixed)
    if stat.S_ISREG(st.st_mode):
        return _check_file(target, st, files, need), ("file", st.st_dev, st.st_ino)
    raise UsageError(
        f"{_q(target)} is neither a block device nor a regular file: give a card's device "
        "(e.g. /dev/sdX) or an image file"
    )


def _check_new(target: str, path: str) -> None:
    """A missing target may be created, but never under /dev (a typo must not leave a 1 GiB
    file there), never through a dangling link, and only in an existing directory."""
    real = os.path.realpath(path)
    if any(("/" + p.lstrip("/") + "/").startswith("/dev/") for p in (path, real)):
        raise UsageError(
            f"{_q(target)} does not exist: check the device name and that the card reader is "
            "plugged in (nothing is created under /dev)"
        )
    if os.path.lexists(path):
        raise UsageError(f"{_q(target)} is a symbolic link to {_q(real)}, which does not exist: fix or remove the link")
    if not os.path.isdir(os.path.dirname(real)):
        raise UsageError(
            f"{_q(target)}: directory {_q(os.path.dirname(real))} does not exist: create it or fix the path"
        )


def _check_block(
    target: str, rdev: int, files: dict[FileId, str], disks: dict[int, str], need: int, allow_fixed: bool
) -> tuple[TargetInfo, object]:
    q, disk = _q(target), _disk(rdev)
    if disk is None:
        raise EnvironmentProblem(
            f"{q}: the kernel has no block device {os.major(rdev)}:{os.minor(rdev)} "
            "(reader unplugged?): plug it in and try again"
        )
    disk_rdev = _devno(disk) or rdev
    backing = _backing(disk)
    hit = disks.get(disk_rdev) or (files.get(backing) if backing else None)
    if hit:
        raise UsageError(f"{q} is (or is a loop device over) {_q(hit)}, an input of this flash: choose another target")
    if not allow_fixed and _fixed(disk):
        raise UsageError(
            f"{q} is a fixed disk (not removable): a station writes cards; "
            "--allow-fixed-disk if this really is a card writer"
        )
    busy = _busy(_members(disk))
    if busy:
        raise EnvironmentProblem(f"{q} is in use ({busy[0]}): {busy[1]}")
    size = (_int(f"{_sysdev(rdev)}/size") or 0) * 512
    if size == 0:
        raise EnvironmentProblem(f"{q} has no medium (0 bytes): insert a card")
    _check_size(q, size, need)
    info = TargetInfo(
        target,
        "block",
        size,
        rdev,
        None,
        device_serial(rdev),
        _int(f"{disk}/queue/write_zeroes_max_bytes"),
        _int(f"{disk}/queue/discard_max_bytes"),
    )
    return info, ("disk", disk_rdev)


def _check_file(target: str, st: os.stat_result, files: dict[FileId, str], need: int) -> TargetInfo:
    q, identity = _q(target), (st.st_dev, st.st_ino)
    if identity in files:
        raise UsageError(f"{q} is {_q(files[identity])}, an input of this flash: choose another target")
    for name in _listdir("/sys/block"):
        if name.startswith("loop") and _backing(f"/sys/block/{name}") == identity:
            busy, dev = _busy(_members(os.path.realpath(f"/sys/block/{name}"))), f"/dev/{name}"
            if busy:
                raise EnvironmentProblem(
                    f"{q} backs {dev}, in use ({busy[0]}): {busy[1]}, then detach the loop device (losetup -d {dev})"
                )
            raise EnvironmentProblem(f"{q} backs {dev}: detach it with losetup -d {dev}")
    for path in _swaps():
        if _file_id(path) == identity:
            raise EnvironmentProblem(f"{q} is active swap: swapoff {_q(path)}")
    if st.st_size:
        _check_size(q, st.st_size, need)
    return TargetInfo(target, "file", st.st_size, None, identity, None, None, None)


def _check_size(q: str, size: int, need: int) -> None:
    if size < need:
        raise UsageError(f"{q} holds {size} bytes, the image needs {need}: use a larger card")


def _busy(members: dict[int, str]) -> tuple[str, str] | None:
    """(what uses the disk or one of its partitions, what to do about it), or None."""
    for rdev, point in _mounts():
        if rdev in members:
            return f"{members[rdev]} is mounted on {_q(point)}", f"unmount it (umount {_q(point)})"
    for path in _swaps():
        node = _node(path)
        if node in members:
            return f"{members[node]} is active swap", f"swapoff {members[node]}"
    for rdev, name in members.items():
        holders = _listdir(f"{_sysdev(rdev)}/holders")
        if holders:
            return (
                f"{name} is held by {', '.join(holders)}",
                "remove that first (dmsetup remove, vgchange -an or mdadm --stop)",
            )
    return None


def _mounts() -> Iterator[tuple[int, str]]:
    """(device, mount point): each mount's major:minor, and its source's rdev if that is a node
    (a btrfs mount shows an anonymous major:minor)."""
    text = _read("/proc/self/mountinfo", _TABLE_LIMIT)
    if text is None:
        raise EnvironmentProblem(
            "cannot read /proc/self/mountinfo (missing or over 4 MiB), so cannot tell "
            "whether a target is mounted: mount /proc and try again"
        )
    for fields in (line.split(" ") for line in text.splitlines()):
        if "-" not in fields[6:]:
            continue
        point, source = _unescape(fields[4]), fields[fields.index("-", 6) + 2 :][:1]
        major, _, minor = fields[2].partition(":")
        if major.isdigit() and minor.isdigit():
            yield os.makedev(int(major), int(minor)), point
        node = _node(_unescape(source[0])) if source else None
        if node is not None:
            yield node, point


def _swaps() -> list[str]:
    """The active swap areas' paths (device nodes or files); none when the kernel has no swap
    (the kernel allows some 30 areas, so the bound never cuts the table short)."""
    text = _read("/proc/swaps", _TABLE_LIMIT) or ""
    return [_unescape(line.split()[0]) for line in text.splitlines()[1:] if line.split()]


def _disk(rdev: int) -> str | None:
    """The sysfs directory of the whole disk (the device, or a partition's parent); None when
    the kernel no longer knows the device."""
    sysdir = _sysdev(rdev)
    if not os.path.isdir(sysdir):
        return None
    real = os.path.realpath(sysdir)
    return os.path.dirname(real) if os.path.exists(f"{real}/partition") else real


def _members(disk: str) -> dict[int, str]:
    """The disk and its partitions: {rdev: "/dev/NAME"}."""
    dirs = [disk] + [f"{disk}/{c}" for c in _listdir(disk) if os.path.exists(f"{disk}/{c}/partition")]
    return {rdev: "/dev/" + os.path.basename(d) for d in dirs if (rdev := _devno(d)) is not None}


def _fixed(disk: str) -> bool:
    """A disk a station must not write by mistake. Loop devices are test media; USB readers may
    report removable 0 but sit under a /usb path; an mmc SD slot says type SD (eMMC says MMC)."""
    if os.path.basename(disk).startswith("loop") or "/usb" in disk:
        return False
    if (_read(f"{disk}/device/type") or "").strip() == "SD":
        return False
    return (_read(f"{disk}/removable") or "").strip() != "1"


def _backing(disk: str) -> FileId | None:
    """The identity of the file behind a loop device; None if none (or it was deleted)."""
    path = (_read(f"{disk}/loop/backing_file") or "").rstrip("\n")
    return _file_id(path) if path and not path.endswith(" (deleted)") else None


def _file_id(path: str) -> FileId | None:
    st = _stat(path)
    return (st.st_dev, st.st_ino) if st else None


def _node(path: str) -> int | None:
    """The rdev of the block device node at an absolute path, else None."""
    st = _stat(path)
    return st.st_rdev if st and stat.S_ISBLK(st.st_mode) else None


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path) if path.startswith("/") else None
    except (OSError, ValueError):
        return None


def _devno(sysdir: str) -> int | None:
    major, _, minor = (_read(f"{sysdir}/dev") or "").strip().partition(":")
    return os.makedev(int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def _int(path: str) -> int | None:
    text = (_read(path) or "").strip()
    return int(text) if text.isdigit() else None


def _sysdev(rdev: int) -> str:
    return f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _read(path: str, limit: int = _ATTR_LIMIT) -> str | None:
    """At most `limit` bytes of a kernel (or udev) file as text; None if missing, unreadable or longer."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError:
        return None
    return data.decode("utf-8", "surrogateescape") if len(data) <= limit else None


def _unescape(field: str) -> str:
    """A /proc path field: the kernel writes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _q(path: str) -> str:
    """A path fit for a one-line message: as given, or quoted when it holds control characters."""
    return path if path.isprintable() else repr(path)
