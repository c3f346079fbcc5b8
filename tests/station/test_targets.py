"""check_targets on real objects: loop devices (mounted, partitioned, swap, over a protected
file), links, a FIFO, missing paths. Each test detaches exactly the loop devices it attached and
unmounts what it mounted (the `host` fixture undoes everything in reverse order)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from imagetools.errors import EnvironmentProblem, UsageError
from imagetools.station.targets import check_targets

MiB = 1 << 20
MISSING_DEV = "/dev/imagetools-test-nonexistent-XYZ"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=False, input=stdin, capture_output=True, text=True)


class Host:
    """Loop devices, mounts and swap made for one test; `stack` undoes them in reverse order."""

    def __init__(self, stack: contextlib.ExitStack, tmp: Path):
        self.stack, self.tmp, self.count = stack, tmp, 0

    def file(self, size: int = 16 * MiB, table: str | None = None) -> Path:
        """A card image with some content, mode 0644 (a refused file must keep all three)."""
        self.count += 1
        path = self.tmp / f"card{self.count}.img"
        with open(path, "wb") as fh:
            fh.write(b"imagetools test card\n")
            fh.truncate(size)
        path.chmod(0o644)
        if table is not None:
            check(run("sfdisk", "-q", str(path), stdin=table))
        return path

    def loop(self, backing: Path, partitions: bool = False) -> str:
        if not os.path.exists("/dev/loop-control") or os.geteuid() != 0:
            pytest.skip("loop devices need root and /dev/loop-control")
        done = run("losetup", "-f", "--show", *(["-P"] if partitions else []), str(backing))
        if done.returncode != 0:
            pytest.skip(f"losetup cannot attach a loop device here: {done.stderr.strip()}")
        dev = done.stdout.strip()
        self.stack.callback(lambda: check(run("losetup", "-d", dev)))
        if partitions and not os.path.exists(f"{dev}p1"):  # this kernel does not scan loop tables itself
            check(run("partx", "-a", dev))
            self.stack.callback(lambda: run("partx", "-d", dev))
        return dev

    def mount(self, dev: str) -> Path:
        check(run("mkfs.ext4", "-q", "-F", dev))
        self.count += 1
        point = self.tmp / f"mnt{self.count}"
        point.mkdir()
        check(run("mount", dev, str(point)))
        self.stack.callback(lambda: check(run("umount", str(point))))
        return point


def check(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"{done.args}: {done.stderr.strip()}"


@pytest.fixture
def host(tmp_path):
    with contextlib.ExitStack() as stack:
        yield Host(stack, tmp_path)


def snapshot(path: Path) -> tuple[int, int, str]:
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), st.st_size, hashlib.sha256(path.read_bytes()).hexdigest()


def refused(path: Path, error: type[Exception], match: str, *, protected=(), need: int = MiB) -> None:
    """check_targets refuses the file and leaves its mode, size and content as they were."""
    before = snapshot(path)
    with pytest.raises(error, match=match):
        check_targets([str(path)], protected, need)
    assert snapshot(path) == before


def test_accepts_a_loop_device_a_partition_files_and_a_new_path(host, tmp_path):
    image = host.file(16 * MiB, "label: dos\nstart=2048, size=8192, type=83\n")
    dev = host.loop(image, partitions=True)
    empty = tmp_path / "empty.img"
    empty.touch()
    infos = check_targets([dev, str(host.file()), str(empty), str(tmp_path / "new.img")], [], 4 * MiB)
    assert [i.kind for i in infos] == ["block", "file", "file", "new"]
    block, full, zero, new = infos
    assert block.size == 16 * MiB and block.rdev == os.stat(dev).st_rdev and block.dev_ino is None
    assert block.write_zeroes_max_bytes is not None and block.discard_max_bytes is not None
    assert full.size == 16 * MiB and full.dev_ino[1] == os.stat(full.path).st_ino and full.rdev is None
    assert zero.size == 0 and new.size == 0 and new.path == str(tmp_path / "new.img")
    assert not (tmp_path / "new.img").exists()
    (part,) = check_targets([f"{dev}p1"], [], MiB)
    assert part.size == 4 * MiB and part.write_zeroes_max_bytes == block.write_zeroes_max_bytes


@pytest.mark.parametrize("how", ["direct", "through a link to /dev"])
def test_a_missing_dev_path_is_refused_and_not_created(tmp_path, how):
    target = MISSING_DEV
    if how != "direct":
        (tmp_path / "devlink").symlink_to("/dev")
        target = str(tmp_path / "devlink" / os.path.basename(MISSING_DEV))
    with pytest.raises(UsageError, match=r"does not exist: check the device name.*nothing is created"):
        check_targets([target], [], MiB)
    assert not os.path.lexists(MISSING_DEV)


def test_a_new_path_needs_an_existing_directory(tmp_path):
    with pytest.raises(UsageError, match="directory .*missing does not exist: create it"):
        check_targets([str(tmp_path / "missing" / "card.img")], [], MiB)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere.img")
    with pytest.raises(UsageError, match="symbolic link to .*nowhere.img, which does not exist"):
        check_targets([str(tmp_path / "dangling")], [], MiB)
    assert not (tmp_path / "missing").exists() and not (tmp_path / "nowhere.img").exists()


def test_neither_block_device_nor_file_is_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (str(fifo), str(tmp_path), "/dev/null"):
        with pytest.raises(UsageError, match="is neither a block device nor a regular file"):
            check_targets([target], [], MiB)


def test_the_same_target_twice_is_refused(host, tmp_path):
    card = host.file()
    (tmp_path / "link.img").symlink_to(card)
    os.link(card, tmp_path / "hard.img")
    dotted = f"{tmp_path}/./{card.name}"
    for other in (str(tmp_path / "link.img"), str(tmp_path / "hard.img"), dotted):
        with pytest.raises(UsageError, match="are the same target"):
            check_targets([str(card), other], [], MiB)
    with pytest.raises(UsageError, match="are the same target"):
        check_targets([str(tmp_path / "new.img"), f"{tmp_path}/./new.img"], [], MiB)
    dev = host.loop(host.file(16 * MiB, "label: dos\nstart=2048, size=8192, type=83\n"), partitions=True)
    (tmp_path / "devlink").symlink_to(dev)
    for other in (str(tmp_path / "devlink"), f"{dev}p1"):
        with pytest.raises(UsageError, match="are the same target"):
            check_targets([dev, other], [], MiB)
    assert len(check_targets([str(card), dev], [], MiB)) == 2


def test_a_protected_file_or_device_is_refused(host, tmp_path):
    base = host.file(16 * MiB, "label: dos\nstart=2048, size=8192, type=83\n")
    (tmp_path / "base-link.img").symlink_to(base)
    refused(tmp_path / "base-link.img", UsageError, "an input of this flash", protected=[base])
    dev = host.loop(base, partitions=True)
    for target in (dev, f"{dev}p1"):
        with pytest.raises(UsageError, match="loop device over.*an input of this flash"):
            check_targets([target], [str(tmp_path / "missing-unit-file"), base], MiB)
    other = host.loop(host.file())
    with pytest.raises(UsageError, match="an input of this flash"):
        check_targets([other], [other], MiB)


def test_a_mounted_loop_device_is_refused(host):
    dev = host.loop(host.file())
    point = host.mount(dev)
    with pytest.raises(EnvironmentProblem, match=f"in use \\({dev} is mounted on {point}\\): unmount it"):
        check_targets([dev], [], MiB)


def test_a_loop_device_with_a_mounted_partition_is_refused(host):
    dev = host.loop(host.file(16 * MiB, "label: dos\nstart=2048, type=83\n"), partitions=True)
    point = host.mount(f"{dev}p1")
    for target in (dev, f"{dev}p1"):
        with pytest.raises(EnvironmentProblem, match=f"{dev}p1 is mounted on {point}"):
            check_targets([target], [], MiB)


def test_the_file_behind_a_loop_device_is_refused(host):
    card = host.file()
    dev = host.loop(card)
    refused(card, EnvironmentProblem, f"backs {dev}: detach it with losetup -d {dev}")
    point = host.mount(dev)
    refused(
        card,
        EnvironmentProblem,
        f"backs {dev}, in use \\({dev} is mounted on {point}\\): unmount it .*then detach the loop device",
    )


def test_active_swap_is_refused(host):
    dev = host.loop(host.file())
    check(run("mkswap", "-q", dev))
    done = run("swapon", dev)
    if done.returncode != 0:
        pytest.skip(f"swapon is not permitted here: {done.stderr.strip()}")
    host.stack.callback(lambda: check(run("swapoff", dev)))
    with pytest.raises(EnvironmentProblem, match=f"{dev} is active swap\\): swapoff {dev}"):
        check_targets([dev], [], MiB)
    swapfile = host.tmp / "swapfile"
    swapfile.write_bytes(bytes(16 * MiB))  # no holes: swapon refuses sparse files
    swapfile.chmod(0o600)
    check(run("mkswap", "-q", str(swapfile)))
    check(run("swapon", str(swapfile)))
    host.stack.callback(lambda: check(run("swapoff", str(swapfile))))
    refused(swapfile, EnvironmentProblem, f"{swapfile} is active swap: swapoff {swapfile}")


def test_a_device_held_by_device_mapper_is_refused(host):
    if not os.path.exists("/sys/class/misc/device-mapper"):  # the driver, not a node left by dmsetup
        pytest.skip("no device-mapper in this kernel (/sys/class/misc/device-mapper missing)")
    dev = host.loop(host.file())
    name = f"imagetools-test-{os.getpid()}"
    check(run("dmsetup", "create", name, "--table", f"0 {16 * MiB // 512} linear {dev} 0"))
    host.stack.callback(lambda: check(run("dmsetup", "remove", name)))
    with pytest.raises(EnvironmentProblem, match=f"{dev} is held by dm-"):
        check_targets([dev], [], MiB)


def test_too_small_targets_are_refused(host):
    small = host.file(MiB)
    refused(small, UsageError, f"holds {MiB} bytes, the image needs {2 * MiB}: use a larger card", need=2 * MiB)
    dev = host.loop(small)
    with pytest.raises(UsageError, match=f"{dev} holds {MiB} bytes, the image needs {2 * MiB}"):
        check_targets([dev], [], 2 * MiB)


def test_a_free_loop_node_has_no_medium(host):
    if not os.path.exists("/dev/loop-control") or os.geteuid() != 0:
        pytest.skip("loop devices need root and /dev/loop-control")
    free = run("losetup", "-f")
    if free.returncode != 0:
        pytest.skip(f"losetup -f fails here: {free.stderr.strip()}")
    with pytest.raises(EnvironmentProblem, match="has no medium \\(0 bytes\\): insert a card"):
        check_targets([free.stdout.strip()], [], MiB)


def _fixed_disk() -> str | None:
    for name in sorted(os.listdir("/sys/block")):
        sysdir = f"/sys/block/{name}"
        if name.startswith("loop") or "/usb" in os.path.realpath(sysdir):
            continue
        if (
            Path(f"{sysdir}/removable").read_text().strip() == "0"
            and os.path.exists(f"/dev/{name}")
            and stat.S_ISBLK(os.stat(f"/dev/{name}").st_mode)
        ):
            return f"/dev/{name}"
    return None


def test_a_fixed_disk_is_refused_unless_allowed():
    disk = _fixed_disk()
    if disk is None:
        pytest.skip("this machine has no non-removable disk in /sys/block")
    with pytest.raises(UsageError, match="is a fixed disk \\(not removable\\).*--allow-fixed-disk"):
        check_targets([disk], [], 0)
    try:
        check_targets([disk], [], 0, allow_fixed_disk=True)
    except (UsageError, EnvironmentProblem) as exc:
        assert "fixed disk" not in str(exc)
