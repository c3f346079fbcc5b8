"""ext4 layer in place: real images from scripts/make-image, checked with debugfs and e2fsck."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

import pytest
from support.debugfs import debugfs_stat
from support.tools import run_tool

from imagetools.errors import EnvironmentProblem, FilesystemError
from imagetools.fs import NoSpaceError, NotFoundError, SymlinkInPath
from imagetools.fs.ext4 import Ext4Filesystem
from imagetools.layout import open_layout
from imagetools.sparse import allocated_bytes

pytestmark = pytest.mark.integration


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def e2fsck_clean(img, offset: int) -> bool:
    return run_tool("e2fsck", "-fn", f"{img}?offset={offset}", check=False).returncode == 0


@pytest.fixture
def sdimg(make_image):
    img = make_image("sdimg")
    return img, open_layout(img)


def test_read_stat_list_and_links(sdimg):
    img, layout = sdimg
    with layout.rootfs_a.open(img) as fs:
        assert fs.read("/etc/hostname") == b"rootfs-a\n"
        entry = fs.stat("/var/lib/mender")
        assert (entry.type, entry.target) == ("symlink", "/data/mender")
        assert fs.readlink("/var/lib/mender") == "/data/mender"
        assert {"etc", "var", "lost+found"} <= {e.name for e in fs.list("/")}
        with pytest.raises(SymlinkInPath) as info:
            fs.stat("/var/lib/mender/mender-agent.pem")
        assert (info.value.link, info.value.target, info.value.rest) == (
            "/var/lib/mender",
            "/data/mender",
            "mender-agent.pem",
        )
        with pytest.raises(NotFoundError):
            fs.stat("/etc/nope")
        with pytest.raises(FilesystemError, match="not a directory"):
            fs.list("/etc/hostname")
        with pytest.raises(FilesystemError, match="is a directory"):
            fs.read("/etc")


def test_reading_never_writes(sdimg):
    img, layout = sdimg
    before = sha(img)
    os.chmod(img, 0o444)
    for part in (layout.rootfs_a, layout.data, layout.boot):
        with part.open(img) as fs:
            for entry in fs.list("/"):
                if entry.type == "file":
                    fs.read(entry.path)
    fs = Ext4Filesystem(img, layout.rootfs_a.partition.start)
    fs._dbg_list("/etc"), fs._dbg_read("/etc/hostname")  # the debugfs read path too
    fs.close()
    assert sha(img) == before


def test_write_mode_owner_replace_and_fsck(sdimg):
    img, layout = sdimg
    data = layout.data
    off = data.partition.start
    key = b"-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n"
    with data.open(img, writable=True) as fs:
        fs.write("/mender/mender-agent.pem", key, mode=0o600)
        assert fs.read("/mender/mender-agent.pem") == key
        assert debugfs_stat(img, off, "/mender/mender-agent.pem") == {
            "mode": 0o600,
            "uid": 0,
            "gid": 0,
            "type": "regular",
        }
        fs.write("/mender/mender-agent.pem", b"x" * 100_000, mode=0o640, uid=1000, gid=70000)
        assert fs.read("/mender/mender-agent.pem") == b"x" * 100_000
        assert debugfs_stat(img, off, "/mender/mender-agent.pem")["mode"] == 0o640
        entry = fs.stat("/mender/mender-agent.pem")
        assert (entry.mode, entry.uid, entry.gid, entry.size) == (0o640, 1000, 70000, 100_000)
        assert [e.name for e in fs.list("/mender")] == ["mender-agent.pem"]  # no temp name left
    assert e2fsck_clean(img, off)
    assert data.fsck(img)[0]


def test_mkdir_parents_and_remove(sdimg):
    img, layout = sdimg
    part = layout.rootfs_a
    with part.open(img, writable=True) as fs:
        with pytest.raises(NotFoundError, match="use -p"):
            fs.write("/opt/a/b/file", b"1")
        fs.write("/opt/a/b/file", b"1", parents=True)
        assert [(e.name, e.mode) for e in fs.list("/opt/a")] == [("b", 0o755)]
        fs.mkdir("/opt/a/c", mode=0o700, uid=5, gid=6)
        assert debugfs_stat(img, part.partition.start, "/opt/a/c") == {
            "mode": 0o700,
            "uid": 5,
            "gid": 6,
            "type": "directory",
        }
        with pytest.raises(FilesystemError, match="already exists"):
            fs.mkdir("/opt/a/c")
        fs.mkdir("/opt/a/c", mode=0o750, parents=True)  # install -d: existing dir gets the mode
        assert fs.stat("/opt/a/c").mode == 0o750
        with pytest.raises(FilesystemError, match="not a directory"):
            fs.write("/etc/hostname/x", b"1", parents=True)
        with pytest.raises(FilesystemError, match="is a directory"):
            fs.write("/opt/a", b"1")
        with pytest.raises(FilesystemError, match="use -r"):
            fs.remove("/opt")
        fs.remove("/opt", recursive=True)
        assert not fs.exists("/opt")
        fs.remove("/var/lib/mender")  # a symlink itself
        assert not fs.exists("/var/lib/mender")
        with pytest.raises(NotFoundError):
            fs.remove("/nope")
    assert e2fsck_clean(img, part.partition.start)


def test_paths_with_spaces_and_bad_characters(sdimg):
    img, layout = sdimg
    with layout.data.open(img, writable=True) as fs:
        fs.write("/mender/with space/key file", b"k", parents=True)
        assert fs.read("/mender/with space/key file") == b"k"
        with pytest.raises(FilesystemError, match="unsupported character"):
            fs.write('/mender/quo"te', b"k")
        with pytest.raises(FilesystemError, match="absolute"):
            fs.read("relative")


def test_disk_full_refused_before_any_change(make_image):
    img = make_image("sdimg")
    data = open_layout(img).data
    before = sha(img)
    with data.open(img, writable=True) as fs:
        with pytest.raises(NoSpaceError) as info:
            fs.write("/mender/big", os.urandom(9 << 20))
    assert info.value.exit_code == 3
    assert sha(img) == before


def test_disk_full_in_debugfs_removes_partial_file(make_image):
    """When the up-front estimate cannot be made (filesystem the ext4 package can't open),
    debugfs runs out of blocks mid-write: the partial file must go and fsck stay clean."""
    img = make_image("sdimg")
    data = open_layout(img).data
    fs = Ext4Filesystem(img, data.partition.start, writable=True)
    fs._vol = None  # what happens when the ext4 package cannot read the volume
    fs._open_volume = lambda: None
    with pytest.raises(NoSpaceError, match="no space left"):
        fs.write("/mender/newdir/big", os.urandom(9 << 20), parents=True)
    assert not fs.exists("/mender/newdir")
    fs.close()
    assert e2fsck_clean(img, data.partition.start)


def test_read_only_image_refused(make_image):
    img = make_image("sdimg")
    data = open_layout(img).data
    os.chmod(img, 0o444)
    with pytest.raises(EnvironmentProblem, match="read-only"):
        data.open(img, writable=True)


def test_writes_keep_the_image_sparse(make_image):
    img = make_image("sdimg", data_mib=64)
    data = open_layout(img).data
    before = allocated_bytes(img)
    with data.open(img, writable=True) as fs:
        fs.write("/mender/mender-agent.pem", os.urandom(2500), mode=0o600)
        fs.write("/mender/mender-agent.pem", os.urandom(2500), mode=0o600)
    growth = allocated_bytes(img) - before
    assert growth <= 256 << 10, growth


def test_block_mapped_and_inline_data_read_through_debugfs(make_image, tmp_path):
    """The ext4 package misreads block-mapped inodes (e2cp, ext2/3) and inline_data."""
    img = make_image("sdimg")
    data = open_layout(img).data
    payload = os.urandom(30_000)
    host = tmp_path / "payload"
    host.write_bytes(payload)
    run_tool("e2cp", "-P", "600", str(host), f"{img}?offset={data.partition.start}:/mender/e2cp.bin")
    with data.open(img) as fs:
        assert fs.read("/mender/e2cp.bin") == payload
        assert fs.stat("/mender/e2cp.bin").mode == 0o600

    raw = tmp_path / "inline.ext4"
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "small").write_bytes(b"tiny")
    (tree / "d" / "big").write_bytes(payload)
    os.symlink("d/small", tree / "link")
    subprocess.run(["truncate", "-s", "8M", str(raw)], check=True)
    run_tool("mkfs.ext4", "-q", "-F", "-O", "inline_data,^has_journal", "-d", str(tree), str(raw))
    with Ext4Filesystem(raw, 0, writable=True) as fs:
        assert fs.read("/d/small") == b"tiny"
        assert fs.read("/d/big") == payload
        assert fs.readlink("/link") == "d/small"
        assert sorted(e.name for e in fs.list("/d")) == ["big", "small"]
        fs.write("/d/new", b"hello", mode=0o600)
        assert fs.read("/d/new") == b"hello"
    assert run_tool("e2fsck", "-fn", str(raw), check=False).returncode == 0


def _zero_group_descriptors(img, start: int) -> None:
    with open(img, "r+b") as f:
        f.seek(start + 1024 + 24)
        size = 1024 << int.from_bytes(f.read(4), "little")
        f.seek(start + max(size, 2048))  # the table follows the superblock's block
        f.write(bytes(size))


def test_damage_the_package_asserts_on_or_seeks_past_is_a_filesystem_error(make_image):
    """A zeroed group descriptor table (the package's root inode is of no type: AssertionError)
    and an extent 2^60 bytes out (its seek: EINVAL) fall back to debugfs, which names them."""
    img = make_image("sdimg")
    part = open_layout(img).rootfs_a
    start = part.partition.start
    run_tool("debugfs", "-w", "-R", "sif /etc/hostname block[4] 0xffff0001", f"{img}?offset={start}")
    with part.open(img) as fs, pytest.raises(FilesystemError, match="^cannot read /etc/hostname in partition 2"):
        fs.read("/etc/hostname")
    _zero_group_descriptors(img, start)
    with part.open(img) as fs, pytest.raises(FilesystemError, match="^cannot read partition 2 .*inode table"):
        fs.read("/etc/os-release")


def test_ext2_filesystem(tmp_path):
    raw = tmp_path / "fs.ext2"
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "f").write_bytes(b"x" * 50_000)
    subprocess.run(["truncate", "-s", "8M", str(raw)], check=True)
    run_tool("mkfs.ext2", "-q", "-F", "-d", str(tree), str(raw))
    with Ext4Filesystem(raw, 0, writable=True) as fs:
        assert fs.read("/etc/f") == b"x" * 50_000
        fs.write("/etc/g", b"y" * 10_000, mode=0o600, parents=True)
        assert fs.read("/etc/g") == b"y" * 10_000
        assert [e.name for e in fs.list("/etc")] == ["f", "g"]
    assert run_tool("e2fsck", "-fn", str(raw), check=False).returncode == 0


def test_not_a_filesystem(make_image):
    img = make_image("extended")
    swap = open_layout(img).find("swap")
    with pytest.raises(FilesystemError, match="swap"):
        swap.open(img)


def test_unreplayed_journal_refused(make_image):
    img = make_image("sdimg")
    data = open_layout(img).data
    run_tool("debugfs", "-w", "-R", "feature needs_recovery", f"{img}?offset={data.partition.start}")
    before = sha(img)
    with data.open(img, writable=True) as fs:
        assert fs.list("/mender") == []
        with pytest.raises(FilesystemError, match="never replayed"):
            fs.write("/mender/k", b"1")
    assert sha(img) == before


def test_mounted_block_device_refused_for_writing():
    """A flashed card still mounted must not be written under the kernel's feet. Uses the
    block device this machine's / is mounted from (only checked, never opened for writing)."""
    from imagetools.fs.base import check_writable

    with open("/proc/self/mounts") as fh:
        sources = [line.split()[0] for line in fh if line.split()[1] == "/"]
    device = next(
        (s for s in sources if s.startswith("/dev/") and os.path.exists(s) and stat.S_ISBLK(os.stat(s).st_mode)), None
    )
    if device is None:
        pytest.skip("/ is not mounted from a visible block device here")
    with pytest.raises(EnvironmentProblem, match="is mounted on /"):
        check_writable(device)
