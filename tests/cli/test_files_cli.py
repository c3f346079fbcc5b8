"""ls/cat/cp/install/rm end to end through the console script, on every fixture layout, with
e2fsck/fsck.vfat after writes and cross-checks against the real mender-artifact."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
from click.testing import CliRunner
from support.debugfs import debugfs_stat
from support.fscheck import fsck
from support.tools import run_tool

from imagetools.cli import main
from imagetools.layout import open_layout
from imagetools.sparse import allocated_bytes

pytestmark = pytest.mark.integration

KEY = (
    b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIExampleExampleExampleExampleExample\n"
    b"-----END PRIVATE KEY-----\n"
)
needs_mender_artifact = pytest.mark.skipif(
    shutil.which("mender-artifact") is None, reason="mender-artifact not installed"
)


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def all_clean(img) -> None:
    for part in open_layout(img).parts:
        if part.fs.type in ("ext4", "vfat"):
            clean, output = fsck(img, part)
            assert clean, f"partition {part.partition.number}: {output}"


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def run():
    """The same click commands in-process (the console script's start-up costs 0.3 s a call);
    returns an object with returncode/stdout/stderr like the `cli` fixture."""
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        result.returncode = result.exit_code
        return result

    return invoke


@pytest.fixture
def keyfile(tmp_path):
    path = tmp_path / "key.pem"
    path.write_bytes(KEY)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "layout,opts",
    [
        ("sdimg", {}),
        ("uefiimg", {}),
        ("extended", {}),
        ("noboot", {}),
        ("sdimg", {"empty_rootfs_b": True}),
    ],
    ids=["sdimg", "uefiimg", "extended", "noboot", "empty-rootfs-b"],
)
def test_every_command_on_every_layout(make_image, run, keyfile, tmp_path, layout, opts):
    cli = run
    img = make_image(layout, **opts)
    parts = open_layout(img)

    # install into /data, read back three ways
    ok(cli("install", "-m", "600", keyfile, f"{img}:/data/mender/mender-agent.pem"))
    assert debugfs_stat(img, parts.data.partition.start, "/mender/mender-agent.pem") == {
        "mode": 0o600,
        "uid": 0,
        "gid": 0,
        "type": "regular",
    }
    assert ok(cli("cat", f"{img}:/data/mender/mender-agent.pem")).stdout == KEY.decode()
    assert ok(cli("cat", f"{img}:/var/lib/mender/mender-agent.pem")).stdout == KEY.decode()  # link
    listing = json.loads(ok(cli("ls", "--json", f"{img}:/var/lib/mender/")).stdout)
    assert [(e["name"], e["mode"], e["uid"]) for e in listing["items"]] == [("mender-agent.pem", "0600", 0)]
    assert "mender -> /data/mender" in ok(cli("ls", "-l", f"{img}:/var/lib")).stdout

    # rootfs paths go to A and B; -p creates parents (also on an empty rootfs B)
    ok(cli("install", "-p", "-m", "0644", "-o", "1000", "-g", "1001", keyfile, f"{img}:/etc/imagetools/conf"))
    for rootfs, part in (("a", parts.rootfs_a), ("b", parts.rootfs_b)):
        assert ok(cli("cat", "--rootfs", rootfs, f"{img}:/etc/imagetools/conf")).stdout == KEY.decode()
        assert debugfs_stat(img, part.partition.start, "/etc/imagetools/conf") == {
            "mode": 0o644,
            "uid": 1000,
            "gid": 1001,
            "type": "regular",
        }
    ok(cli("install", "-d", "-m", "700", f"{img}:/data/mender/sub/deep"))
    assert debugfs_stat(img, parts.data.partition.start, "/mender/sub/deep")["mode"] == 0o700

    # cp both ways; image -> host keeps the mode
    ok(cli("cp", f"{img}:/data/mender/mender-agent.pem", tmp_path / "out.pem"))
    assert (tmp_path / "out.pem").read_bytes() == KEY
    assert (tmp_path / "out.pem").stat().st_mode & 0o777 == 0o600
    ok(cli("cp", keyfile, f"{img}:/data/copy.pem"))
    assert debugfs_stat(img, parts.data.partition.start, "/copy.pem")["mode"] == 0o600
    ok(cli("cp", keyfile, f"{img}:/data/mender"))  # into a directory: keeps the name
    assert debugfs_stat(img, parts.data.partition.start, "/mender/key.pem")["mode"] == 0o600

    # rm: file, then a tree from both rootfs
    ok(cli("rm", f"{img}:/data/copy.pem"))
    assert "copy.pem" not in ok(cli("ls", f"{img}:/data")).stdout
    ok(cli("rm", "-r", f"{img}:/etc/imagetools"))
    for rootfs in ("a", "b"):
        assert "imagetools" not in ok(cli("ls", "--rootfs", rootfs, f"{img}:/etc")).stdout.split()

    if parts.boot is not None:  # FAT boot / EFI partition, names case-insensitive
        ok(cli("install", "-m", "644", keyfile, f"{img}:/boot/efi/EFI/BOOT/test.pem"))
        assert ok(cli("cat", f"{img}:/uboot/efi/boot/TEST.PEM")).stdout == KEY.decode()
        assert "config.txt" in ok(cli("ls", f"{img}:/uboot")).stdout.split()
    all_clean(img)


def test_partition_by_number_and_reading_never_writes(make_image, cli, tmp_path):
    img = make_image("uefiimg")
    before = sha(img)
    assert ok(cli("cat", "--partition", "3", f"{img}:/etc/hostname")).stdout == "rootfs-b\n"
    assert "mender" in ok(cli("ls", "--partition", "4", f"{img}:/")).stdout.split()
    ok(cli("ls", "-l", "--json", f"{img}:/etc"))
    ok(cli("cp", f"{img}:/etc/os-release", tmp_path))
    assert (tmp_path / "os-release").read_text().startswith("ID=")
    assert sha(img) == before
    r = cli("cat", "--partition", "9", f"{img}:/x")
    assert r.returncode == 2 and "no partition 9" in r.stderr
    # layout overrides: call partition 3 the data partition
    assert ok(cli("cat", "--data-partition", "3", f"{img}:/data/etc/hostname")).stdout == "rootfs-b\n"


def test_writes_keep_images_sparse(make_image, cli, keyfile):
    img = make_image("sdimg", data_mib=64, rootfs_mib=64)
    before = allocated_bytes(img)
    ok(cli("install", "-m", "600", keyfile, f"{img}:/data/mender/mender-agent.pem"))
    ok(cli("install", "-m", "600", keyfile, f"{img}:/data/mender/mender-agent.pem"))
    assert allocated_bytes(img) - before <= 256 << 10


def error_of(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imagetools: error: "), result.stderr
    return lines[0]


def test_bad_input_leaves_the_image_intact(make_image, cli, keyfile, tmp_path):
    img = make_image("sdimg", empty_rootfs_b=True)
    before = sha(img)
    cases = [
        (["cat", f"{img}:/data/mender/nope"], 2, "does not exist"),
        (["install", "-m", "600", keyfile, f"{img}:/data/newdir/key"], 2, "use -p"),
        (["install", keyfile, f"{img}:/etc/only-on-a/x"], 2, "use -p"),
        (["install", keyfile, f"{img}:/etc/x"], 2, "rootfs B is empty"),
        (["install", "-p", keyfile, f"{img}:/etc/hostname/x"], 2, "not a directory"),
        (["install", keyfile, f"{img}:/data/mender"], 2, "is a directory"),
        (["install", "-m", "9", keyfile, f"{img}:/data/k"], 2, "octal"),
        (["install", "-o", "root", keyfile, f"{img}:/data/k"], 2, "numeric"),
        (["rm", f"{img}:/etc"], 2, "use -r"),
        (["rm", f"{img}:/nope"], 2, "not found"),
        (["ls", f"{img}:relative"], 2, "absolute"),
        (["cp", keyfile, tmp_path / "x"], 2, "exactly one"),
        (["cat", f"{tmp_path}/missing.sdimg:/x"], 2, "image not found"),
    ]
    for args, code, text in cases:
        result = cli(*args)
        assert result.returncode == code, (args, result.stderr)
        assert text in error_of(result), (args, result.stderr)
    assert sha(img) == before

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 << 20))
    full = cli("install", big, f"{img}:/data/mender/big.bin")
    assert full.returncode == 3 and "no space left" in error_of(full)
    assert sha(img) == before

    img.chmod(0o444)
    ro = cli("install", "-m", "600", keyfile, f"{img}:/data/mender/key")
    assert ro.returncode == 3 and "read-only" in error_of(ro)
    assert sha(img) == before
    all_clean(img)


def test_image_path_with_colon_and_question_mark(make_image, cli, keyfile):
    for name in ("fac:tory.sdimg", "what?.sdimg"):
        img = make_image("sdimg", name=name)
        ok(cli("install", "-m", "600", keyfile, f"{img}:/data/mender/key"))
        assert ok(cli("cat", f"{img}:/data/mender/key")).stdout == KEY.decode()
        all_clean(img)


@needs_mender_artifact
def test_cross_check_with_mender_artifact(make_image, cli, keyfile, tmp_path):
    img = make_image("sdimg", name="cross:check.sdimg")  # ':' also exercises the alias
    data = open_layout(img).data
    ok(cli("install", "-m", "600", keyfile, f"{img}:/data/mender/ours.pem"))
    alias = tmp_path / "alias.sdimg"
    alias.symlink_to(img)
    theirs = run_tool("mender-artifact", "cat", f"{alias}:/data/mender/ours.pem").stdout
    assert theirs.encode() == KEY

    run_tool("mender-artifact", "install", "-m", "0600", str(keyfile), f"{alias}:/data/mender/theirs.pem")
    assert ok(cli("cat", f"{img}:/data/mender/theirs.pem")).stdout == KEY.decode()
    assert debugfs_stat(img, data.partition.start, "/mender/theirs.pem") == {
        "mode": 0o600,
        "uid": 0,
        "gid": 0,
        "type": "regular",
    }

    # our mender-artifact backend: mode passed as 0NNN, parents made with install -d
    ok(
        cli(
            "install",
            "--backend",
            "mender-artifact",
            "-p",
            "-m",
            "600",
            keyfile,
            f"{img}:/data/mender/new/dir/peer.pem",
        )
    )
    assert debugfs_stat(img, data.partition.start, "/mender/new/dir/peer.pem") == {
        "mode": 0o600,
        "uid": 0,
        "gid": 0,
        "type": "regular",
    }
    assert ok(cli("cat", "--backend", "mender-artifact", f"{img}:/data/mender/ours.pem")).stdout == KEY.decode()
    ok(cli("rm", "--backend", "mender-artifact", f"{img}:/data/mender/ours.pem"))
    assert "ours.pem" not in ok(cli("ls", f"{img}:/data/mender")).stdout
    all_clean(img)


def test_mender_artifact_backend_refusals(make_image, cli, keyfile):
    img = make_image("extended")
    r = cli("install", "--backend", "mender-artifact", "-m", "600", keyfile, f"{img}:/data/k")
    assert r.returncode == 2 and "exactly 4 partitions" in error_of(r)
    img = make_image("sdimg")
    r = cli("cat", "--backend", "mender-artifact", f"{img}:/etc/hostname", env={"PATH": "/nonexistent"})
    assert r.returncode == 3 and "mender-artifact not found" in error_of(r)
    r = cli("install", "--backend", "mender-artifact", "-o", "5", keyfile, f"{img}:/data/k")
    assert r.returncode == 2 and "owner" in error_of(r)


def test_rootfs_without_filesystem_is_skipped(make_image, run, keyfile):
    img = make_image("sdimg")
    b = open_layout(img).rootfs_b
    with open(img, "r+b") as fh:  # wipe rootfs B's superblock: a never-formatted slot
        fh.seek(b.partition.start)
        fh.write(bytes(1 << 20))
    result = run("install", "-m", "644", keyfile, f"{img}:/etc/conf")
    assert result.returncode == 0, result.stderr
    assert "skipped partition 3" in result.stderr and "no filesystem" in result.stderr
    assert run("cat", f"{img}:/etc/conf").stdout_bytes == KEY
    r = run("cat", "--rootfs", "b", f"{img}:/etc/conf")
    assert r.returncode == 2 and "no filesystem" in r.stderr
