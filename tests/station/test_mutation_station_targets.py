"""Which targets imagetools.station.targets lets a station write, the edges scripts/mutation found
untested: the exact message of every refusal (the operator's contract), what a target's info
holds, the udev record a serial comes from (bounded), the slot functions the station polls, a mount
point the kernel escapes, a loop device over a deleted file. Loop nodes come from support.slots
(a Rig detaches exactly what it attached); a partition table is read with partx and removed again."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
from support import mountns
from support.slots import Rig
from support.udev import udev_record

from imagetools.errors import EnvironmentProblem, UsageError
from imagetools.station import targets
from imagetools.station.targets import TargetInfo, check_targets, device_serial, slot_busy, slot_card

MiB = 1 << 20


def _run(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(list(args), input=stdin, capture_output=True, text=True)
    assert done.returncode == 0, f"{args}: {done.stderr.strip()}"


def _refusal(error: type[Exception], names, protected=(), need: int = MiB, **options) -> str:
    with pytest.raises(error) as refused:
        check_targets(names, protected, need, **options)
    return str(refused.value)


def _card(path: Path, size: int = 16 * MiB, table: str | None = None) -> Path:
    with open(path, "wb") as fh:
        fh.write(b"a used card\n")
        fh.truncate(size)
    if table is not None:
        _run("sfdisk", "-q", str(path), stdin=table)
    return path


def _queue(node: str, name: str) -> int:
    return int(Path(f"/sys/block/{os.path.basename(node)}/queue/{name}").read_text())


@pytest.fixture
def rig():
    with Rig(2) as rig:
        yield rig


@pytest.fixture
def stack():
    with contextlib.ExitStack() as stack:
        yield stack


def _partitioned(rig: Rig, stack: contextlib.ExitStack, card: Path) -> tuple[str, str]:
    """The card in the rig's first slot, its partition table read: (disk node, first partition)."""
    slot = rig.slots[0]
    rig.insert(slot, card)
    _run("partx", "-a", slot)
    stack.callback(lambda: subprocess.run(["partx", "-d", slot], capture_output=True))
    return slot, f"{slot}p1"


def _mounted(stack: contextlib.ExitStack, dev: str, point: Path) -> Path:
    _run("mkfs.ext4", "-q", "-F", dev)
    point.mkdir()
    _run("mount", dev, str(point))
    stack.callback(lambda: _run("umount", str(point)))
    return point


# --- new targets ---------------------------------------------------------------------------------


def test_a_new_target_is_checked_by_its_resolved_path(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    assert check_targets([str(real / "a.img"), str(tmp_path / "b.img")], [], MiB) == [
        TargetInfo(str(real / "a.img"), "new", 0, None, None, None, None, None),
        TargetInfo(str(tmp_path / "b.img"), "new", 0, None, None, None, None, None),
    ]
    a, b = str(real / "a.img"), str(tmp_path / "via" / "a.img")
    assert _refusal(UsageError, [a, b]) == f"{b} and {a} are the same target (or the same disk): give each card once"


@pytest.mark.parametrize("target", ["/dev/imagetools-missing-x", "//dev/imagetools-missing-x"])
def test_a_missing_device_is_never_created(target):
    assert _refusal(UsageError, [target]) == (
        f"{target} does not exist: check the device name and that the card reader is plugged in "
        "(nothing is created under /dev)"
    )
    assert not os.path.lexists(target)


def test_a_new_target_needs_its_directory_and_no_dangling_link(tmp_path):
    under = "/devnull-imagetools-x/card.img"  # not under /dev: only its directory is missing
    assert _refusal(UsageError, [under]) == (
        f"{under}: directory /devnull-imagetools-x does not exist: create it or fix the path"
    )
    odd = str(tmp_path / "a\nb" / "card.img")
    assert _refusal(UsageError, [odd]) == (
        f"{odd!r}: directory {os.path.dirname(odd)!r} does not exist: create it or fix the path"
    )
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere.img")
    assert _refusal(UsageError, [str(link)]) == (
        f"{link} is a symbolic link to {tmp_path / 'nowhere.img'}, which does not exist: fix or remove the link"
    )
    assert not (tmp_path / "nowhere.img").exists()


def test_a_target_that_cannot_be_looked_up_is_refused_with_the_reason(tmp_path):
    plain = _card(tmp_path / "plain.img", MiB)
    assert _refusal(UsageError, [f"{plain}/x"]) == f"cannot use target {plain}/x: Not a directory"
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert _refusal(UsageError, [str(tmp_path / "a")]) == (
        f"cannot use target {tmp_path / 'a'}: Too many levels of symbolic links"
    )
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert _refusal(UsageError, [str(fifo)]) == (
        f"{fifo} is neither a block device nor a regular file: give a card's device (e.g. /dev/sdX) or an image file"
    )


def test_protected_paths_that_do_not_exist_are_skipped_others_must_be_checkable(tmp_path):
    plain = _card(tmp_path / "plain.img", MiB)
    card = str(tmp_path / "card.img")
    assert len(check_targets([card], [tmp_path / "gone", f"{plain}/x"], MiB)) == 1
    long = str(tmp_path / ("x" * 300))
    assert _refusal(UsageError, [card], [long]) == f"cannot check {long}: File name too long"


# --- files ---------------------------------------------------------------------------------------


def test_a_file_target_info_and_its_size_at_the_bound(tmp_path):
    card = _card(tmp_path / "card.img", 2 * MiB)
    st = os.stat(card)
    assert check_targets([str(card)], [], 2 * MiB) == [
        TargetInfo(str(card), "file", 2 * MiB, None, (st.st_dev, st.st_ino), None, None, None)
    ]
    assert _refusal(UsageError, [str(card)], need=2 * MiB + 1) == (
        f"{card} holds {2 * MiB} bytes, the image needs {2 * MiB + 1}: use a larger card"
    )
    empty = tmp_path / "empty.img"
    empty.touch()
    assert check_targets([str(empty)], [], 2 * MiB)[0].size == 0  # an empty file grows to the image


def test_a_file_that_is_an_input_is_refused_naming_the_input(tmp_path):
    base = _card(tmp_path / "base.img")
    (tmp_path / "card.img").symlink_to(base)
    assert _refusal(UsageError, [str(tmp_path / "card.img")], [base]) == (
        f"{tmp_path / 'card.img'} is {base}, an input of this flash: choose another target"
    )


def test_the_file_behind_a_loop_device_is_refused_with_what_to_do(rig, stack, tmp_path):
    card = _card(tmp_path / "card.img")
    slot = rig.slots[0]
    rig.insert(slot, card)
    assert _refusal(EnvironmentProblem, [str(card)]) == f"{card} backs {slot}: detach it with losetup -d {slot}"
    point = _mounted(stack, slot, tmp_path / "mnt")
    assert _refusal(EnvironmentProblem, [str(card)]) == (
        f"{card} backs {slot}, in use ({slot} is mounted on {point}): unmount it (umount {point}), "
        f"then detach the loop device (losetup -d {slot})"
    )


def test_a_file_named_as_a_deleted_backing_file_is_not_its_loop_device(rig, tmp_path):
    card = _card(tmp_path / "card.img")
    rig.insert(rig.slots[0], card)
    card.unlink()  # the kernel now names the backing file "…/card.img (deleted)"
    namesake = _card(tmp_path / "card.img (deleted)")
    assert [i.kind for i in check_targets([str(namesake)], [], MiB)] == ["file"]


def test_a_swap_file_is_refused(stack, tmp_path):
    swapfile = tmp_path / "swapfile"
    swapfile.write_bytes(bytes(16 * MiB))
    swapfile.chmod(0o600)
    _run("mkswap", "-q", str(swapfile))
    done = subprocess.run(["swapon", str(swapfile)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"swapon is not permitted here: {done.stderr.strip()}")
    stack.callback(lambda: _run("swapoff", str(swapfile)))
    assert _refusal(EnvironmentProblem, [str(swapfile)]) == f"{swapfile} is active swap: swapoff {swapfile}"


# --- block devices --------------------------------------------------------------------------------


def test_a_card_s_info_and_its_size_at_the_bound(rig, tmp_path):
    slot = rig.slots[0]
    rig.insert(slot, _card(tmp_path / "card.img", 4 * MiB))
    assert check_targets([slot], [], 4 * MiB) == [
        TargetInfo(
            slot,
            "block",
            4 * MiB,
            os.stat(slot).st_rdev,
            None,
            None,
            _queue(slot, "write_zeroes_max_bytes"),
            _queue(slot, "discard_max_bytes"),
        )
    ]
    assert _refusal(UsageError, [slot], need=4 * MiB + 1) == (
        f"{slot} holds {4 * MiB} bytes, the image needs {4 * MiB + 1}: use a larger card"
    )
    empty = rig.slots[1]
    assert _refusal(EnvironmentProblem, [empty]) == f"{empty} has no medium (0 bytes): insert a card"


def test_a_node_the_kernel_does_not_know_is_refused(tmp_path):
    node = tmp_path / "gone"
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(7, 1 << 19))
    assert _refusal(EnvironmentProblem, [str(node)]) == (
        f"{node}: the kernel has no block device 7:{1 << 19} (reader unplugged?): plug it in and try again"
    )


def test_a_card_over_an_input_or_an_input_s_disk_is_refused(rig, stack, tmp_path):
    base = _card(tmp_path / "base.img", 16 * MiB, "label: dos\nstart=2048, size=8192, type=83\n")
    disk, part = _partitioned(rig, stack, base)
    for target in (disk, part):
        assert _refusal(UsageError, [target], [tmp_path / "unit", base]) == (
            f"{target} is (or is a loop device over) {base}, an input of this flash: choose another target"
        )
    (tmp_path / "named").symlink_to(part)
    assert _refusal(UsageError, [disk], [tmp_path / "named"]) == (  # an input's partition: its whole disk
        f"{disk} is (or is a loop device over) {tmp_path / 'named'}, an input of this flash: choose another target"
    )
    assert _refusal(UsageError, [disk, part]) == (
        f"{part} and {disk} are the same target (or the same disk): give each card once"
    )


def test_a_busy_card_is_refused_saying_what_holds_it(rig, stack, tmp_path):
    disk, part = _partitioned(rig, stack, _card(tmp_path / "card.img", 16 * MiB, "label: dos\nstart=2048, type=83\n"))
    point = _mounted(stack, part, tmp_path / "media card\\x")  # the kernel escapes the space and the backslash
    for target in (disk, part):
        assert _refusal(EnvironmentProblem, [target]) == (
            f"{target} is in use ({part} is mounted on {point}): unmount it (umount {point})"
        )
    assert slot_busy(disk) == f"{part} is mounted on {point}"


def test_a_card_in_use_as_swap_or_held_is_refused(rig, stack, tmp_path):
    slot = rig.slots[0]
    rig.insert(slot, _card(tmp_path / "card.img"))
    _run("mkswap", "-q", slot)
    if subprocess.run(["swapon", slot], capture_output=True).returncode != 0:
        pytest.skip("swapon is not permitted here")
    with contextlib.ExitStack() as swap:
        swap.callback(lambda: _run("swapoff", slot))
        assert _refusal(EnvironmentProblem, [slot]) == f"{slot} is in use ({slot} is active swap): swapoff {slot}"
    if not os.path.exists("/sys/class/misc/device-mapper"):  # dmsetup would leave a dead /dev/mapper/control
        pytest.skip("no device-mapper in this kernel (/sys/class/misc/device-mapper missing)")
    name = f"imagetools-mut-{os.getpid()}"
    _run("dmsetup", "create", name, "--table", f"0 {16 * MiB // 512} linear {slot} 0")
    stack.callback(lambda: _run("dmsetup", "remove", name))
    holders = ", ".join(sorted(os.listdir(f"/sys/block/{os.path.basename(slot)}/holders")))
    assert _refusal(EnvironmentProblem, [slot]) == (
        f"{slot} is in use ({slot} is held by {holders}): remove that first (dmsetup remove, vgchange -an or "
        "mdadm --stop)"
    )


def _fixed_disk() -> str | None:
    for name in sorted(os.listdir("/sys/block")):
        sysdir = f"/sys/block/{name}"
        if name.startswith("loop") or "/usb" in os.path.realpath(sysdir):
            continue
        node = f"/dev/{name}"
        if Path(f"{sysdir}/removable").read_text().strip() == "0" and os.path.exists(node):
            if stat.S_ISBLK(os.stat(node).st_mode):
                return node
    return None


def test_a_fixed_disk_is_refused_unless_allowed():
    disk = _fixed_disk()
    if disk is None:
        pytest.skip("this machine has no non-removable disk in /sys/block")
    assert _refusal(UsageError, [disk], need=0) == (
        f"{disk} is a fixed disk (not removable): a station writes cards; --allow-fixed-disk if this really is "
        "a card writer"
    )
    try:
        check_targets([disk], [], 0, allow_fixed_disk=True)
    except (UsageError, EnvironmentProblem) as exc:  # in use, most likely: anything but "fixed"
        assert "fixed disk" not in str(exc)


# --- what the station polls -----------------------------------------------------------------------


def test_a_slot_reports_its_card_s_size_and_a_new_sequence_per_card(rig, tmp_path):
    slot = rig.slots[0]
    empty = slot_card(slot)
    assert empty is not None and empty[0] == 0 and isinstance(empty[1], int)
    rig.insert(slot, _card(tmp_path / "a.img", 3 * MiB))
    size, first = slot_card(slot)
    assert size == 3 * MiB and first > empty[1]
    rig.pull(slot)
    rig.insert(slot, _card(tmp_path / "b.img", 2 * MiB))
    assert slot_card(slot)[0] == 2 * MiB and slot_card(slot)[1] > first
    assert slot_busy(slot) is None
    assert slot_card(str(tmp_path / "a.img")) is None and slot_card(str(tmp_path / "missing")) is None
    assert slot_busy(str(tmp_path / "a.img")) is None
    relative = os.path.relpath(slot)  # only absolute paths are looked at
    assert slot_card(relative) is None and slot_busy(relative) is None


# --- the serial, from udev's record ------------------------------------------------------------------


@pytest.fixture
def udev(rig, tmp_path):
    """A card in a slot and the path of its udev record (support.udev: removed after)."""
    slot = rig.slots[0]
    rig.insert(slot, _card(tmp_path / "card.img", MiB))
    rdev = os.stat(slot).st_rdev
    with udev_record(rdev) as record:
        yield slot, rdev, record


def test_the_serial_is_udev_s_short_one_then_the_long_one(udev):
    slot, rdev, record = udev
    assert device_serial(rdev) is None  # no record, and a loop device has no device/serial
    record.write_text("S:disk/by-id/x\nE:ID_SERIAL=Long_Name_1234\nE:ID_SERIAL_SHORT=12=34\nE:NOVALUE\nI:1\n")
    assert device_serial(rdev) == "12=34" and check_targets([slot], [], MiB)[0].serial == "12=34"
    record.write_text("E:ID_SERIAL_SHORT=\nE:ID_SERIAL=Long_Name_1234\nS:ID_SERIAL_SHORT=no\n")
    assert device_serial(rdev) == "Long_Name_1234"
    record.write_text("E:ID_MODEL=x\nS:ID_SERIAL=not-a-property\n")
    assert device_serial(rdev) is None


def test_a_udev_record_is_read_up_to_its_bound(udev):
    _, rdev, record = udev
    line = "E:ID_SERIAL=bounded\n"
    pad = "E:PAD=" + "x" * (targets._ATTR_LIMIT - len(line) - 7) + "\n"
    record.write_text(pad + line)
    assert record.stat().st_size == targets._ATTR_LIMIT and device_serial(rdev) == "bounded"
    record.write_text("E:PAD=x" + pad[6:] + line)
    assert record.stat().st_size == targets._ATTR_LIMIT + 1 and device_serial(rdev) is None


def test_a_node_the_kernel_does_not_know_is_an_empty_slot(tmp_path):
    node = tmp_path / "gone"
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(7, 1 << 19))
    assert slot_card(str(node)) == (0, None) and slot_busy(str(node)) is None


def test_a_udev_record_that_is_not_utf8_still_gives_the_serial(udev):
    _, rdev, record = udev
    record.write_bytes(b"E:ID_MODEL=\xff\xfe\nE:ID_SERIAL_SHORT=S\xc3\xa9rie\n")
    assert device_serial(rdev) == "S\u00e9rie"


def test_a_card_mounted_through_a_node_since_removed_is_still_mounted(rig, stack, tmp_path):
    """mountinfo names the node the card was mounted through: the device number tells."""
    slot = rig.slots[0]
    rig.insert(slot, _card(tmp_path / "card.img"))
    _run("mkfs.ext4", "-q", "-F", slot)
    node = tmp_path / "node"
    os.mknod(node, stat.S_IFBLK | 0o600, os.stat(slot).st_rdev)
    point = tmp_path / "mnt"
    point.mkdir()
    _run("mount", str(node), str(point))
    stack.callback(lambda: _run("umount", str(point)))
    node.unlink()
    assert _refusal(EnvironmentProblem, [slot]) == (
        f"{slot} is in use ({slot} is mounted on {point}): unmount it (umount {point})"
    )


def test_a_mount_naming_the_card_as_its_source_is_a_mount_of_the_card(rig, stack, tmp_path):
    """As btrfs shows: an anonymous device number, the card only as the mount's source."""
    slot = rig.slots[0]
    rig.insert(slot, _card(tmp_path / "card.img"))
    point = tmp_path / "mnt"
    point.mkdir()
    _run("mount", "-t", "tmpfs", slot, str(point))
    stack.callback(lambda: _run("umount", str(point)))
    assert _refusal(EnvironmentProblem, [slot]) == (
        f"{slot} is in use ({slot} is mounted on {point}): unmount it (umount {point})"
    )
    assert slot_busy(slot) == f"{slot} is mounted on {point}"


# --- hardware no test machine has, and kernel tables at their bounds (support.mountns) ----------------
# Each test checks the real node in this process too: mutmut runs a mutant's tests among those that
# reached its function in the pytest process, and the namespace's run is a subprocess.
CHECK = """
from imagetools.station.targets import check_targets, slot_busy
try:
    print(repr(check_targets([NODE], [], 1 << 20)[0].serial), slot_busy(NODE))
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def _check_script(path: str) -> str:
    return CHECK.replace("NODE", repr(path))


@pytest.fixture
def card(rig, tmp_path) -> str:
    """A slot holding a card, accepted as it is (a loop device: never fixed, nothing holds it)."""
    slot = rig.slots[0]
    rig.insert(slot, _card(tmp_path / "card.img"))
    assert [(i.kind, i.serial) for i in check_targets([slot], [], MiB)] == [("block", None)]
    return slot


def _checked(node: str, disk: str = "usb1/1-1/host0/block/sdz", **files: str) -> str:
    """check_targets' serial and slot_busy's answer for NODE (or the refusal), its sysfs directory
    being DISK (under /sys/dev/block) with FILES (name with / for __) besides a 16 MiB size."""
    made = {"size": f"{16 * MiB // 512}\n", "holders/": "", **{k.replace("__", "/"): v for k, v in files.items()}}
    return mountns.run(_check_script(node), node, disk, made)


@pytest.mark.parametrize(
    ("disk", "files", "fixed"),
    [
        ("pci0/ata1/host0/block/sdz", {"removable": "0\n"}, True),
        ("pci0/ata1/host0/block/sdz", {"removable": "1\n"}, False),  # a card reader that says so
        ("pci0/usb1/1-1/host0/block/sdz", {"removable": "0\n"}, False),  # USB readers often say 0
        ("pci0/mmc_host/mmc0/mmc0:0001/block/mmcblk9", {"device__type": "SD\n", "removable": "0\n"}, False),
        ("pci0/mmc_host/mmc0/mmc0:0001/block/mmcblk9", {"device__type": "MMC\n", "removable": "0\n"}, True),  # eMMC
    ],
    ids=["sata-disk", "removable", "usb-reader", "sd-slot", "emmc"],
)
def test_a_fixed_disk_is_told_from_usb_readers_sd_slots_and_removable_media(card, disk, files, fixed):
    refusal = (
        f"UsageError {card} is a fixed disk (not removable): a station writes cards; "
        "--allow-fixed-disk if this really is a card writer"
    )
    assert _checked(card, disk, **files) == (refusal if fixed else "None None")


def test_a_disk_held_by_device_mapper_or_raid_is_refused_naming_the_holders(card):
    assert _checked(card, **{"holders__dm-3": "", "holders__md127": ""}) == (
        f"EnvironmentProblem {card} is in use (/dev/sdz is held by dm-3, md127): "
        "remove that first (dmsetup remove, vgchange -an or mdadm --stop)"
    )


def test_the_serial_in_sysfs_is_read_up_to_256_bytes(card):
    assert _checked(card, device__serial="  SER-1 \n") == "'SER-1' None"
    assert _checked(card, device__serial="S" * 255 + "\n") == f"'{'S' * 255}' None"
    assert _checked(card, device__serial="S" * 256 + "\n") == "None None"  # 257 bytes: over the bound


def _mountinfo(tmp_path: Path, size: int, extra: str = "") -> Path:
    """The host's mount table padded with tmpfs mounts to about SIZE bytes, then EXTRA."""
    real = Path("/proc/self/mountinfo").read_text()
    line = "9000 1 0:99 / /imagetools-pad/{:07d} rw - tmpfs none rw\n"
    pads = "".join(line.format(i) for i in range(max(0, size - len(real)) // len(line.format(0)) + 1))
    path = tmp_path / "mountinfo"
    path.write_text(real + pads + extra)
    return path


def test_a_mount_table_over_64_kib_is_read_and_one_over_4_mib_refused(card, tmp_path):
    rdev = os.stat(card).st_rdev
    mounted = f"9999 1 {os.major(rdev)}:{os.minor(rdev)} / /media/card rw - ext4 {card} rw\n"
    code = _check_script(card)
    said = mountns.run(code, over={"/proc/self/mountinfo": _mountinfo(tmp_path, 100 << 10, mounted)})
    assert said == (
        f"EnvironmentProblem {card} is in use ({card} is mounted on /media/card): unmount it (umount /media/card)"
    )
    said = mountns.run(code, over={"/proc/self/mountinfo": _mountinfo(tmp_path, (4 << 20) + 1)})
    assert said == (
        "EnvironmentProblem cannot read /proc/self/mountinfo (missing or over 4 MiB), so cannot tell "
        "whether a target is mounted: mount /proc and try again"
    )


def test_a_swap_table_over_64_kib_is_read(tmp_path):
    target = _card(tmp_path / "swapfile", MiB)
    long = "/imagetools-no-such-dir/" + "s" * 4000
    table = "Filename Type Size Used Priority\n" + f"{long} file 1024 0 -2\n" * 20 + f"{target} file 1024 0 -2\n"
    (tmp_path / "swaps").write_text(table)
    assert [i.kind for i in check_targets([str(target)], [], MiB)] == ["file"]
    said = mountns.run(_check_script(str(target)), over={"/proc/swaps": tmp_path / "swaps"})
    assert said == f"EnvironmentProblem {target} is active swap: swapoff {target}"


def test_a_loop_device_over_a_file_hidden_by_a_mount_does_not_stop_checking_files(rig, tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    rig.insert(rig.slots[0], _card(hidden / "card.img"))
    target = _card(tmp_path / "target.img", MiB)
    assert [i.kind for i in check_targets([str(target)], [], MiB)] == ["file"]
    code = f"mount('-t', 'tmpfs', 'imagetools-cover', {str(hidden)!r})\n" + _check_script(str(target))
    assert mountns.run(code) == "None None"


@pytest.mark.parametrize("name", ["card.img ", "card.imgX"])  # the kernel's line ends in a newline alone
def test_a_backing_file_s_name_is_read_to_its_last_character(rig, tmp_path, name):
    card = _card(tmp_path / name)
    slot = rig.slots[0]
    rig.insert(slot, card)
    assert _refusal(EnvironmentProblem, [str(card)]) == f"{card} backs {slot}: detach it with losetup -d {slot}"


def test_only_paths_under_dev_itself_count_as_under_dev(tmp_path):
    assert _refusal(UsageError, ["/Xdev/card.img"]) == (
        "/Xdev/card.img: directory /Xdev does not exist: create it or fix the path"
    )
    link = tmp_path / "card.img"
    link.symlink_to("/dev/imagetools-missing/..")  # resolves to /dev itself, and does not exist
    assert _refusal(UsageError, [str(link)]) == (
        f"{link} does not exist: check the device name and that the card reader is plugged in "
        "(nothing is created under /dev)"
    )


def test_a_udev_record_that_never_ends_is_cut_at_its_bound(udev):
    _, rdev, record = udev
    record.symlink_to("/dev/zero")
    assert device_serial(rdev) is None
