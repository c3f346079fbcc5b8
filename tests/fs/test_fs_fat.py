"""FAT layer on the boot / EFI partition of real images, checked with fsck.vfat and mtools."""

from __future__ import annotations

import hashlib
import os

import pytest
from support.fscheck import fsck
from support.tools import run_tool

from imagetools.errors import FilesystemError
from imagetools.fs import NoSpaceError, NotFoundError
from imagetools.layout import open_layout

pytestmark = pytest.mark.integration


def mtype(img, offset: int, path: str) -> bytes:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    import subprocess

    return subprocess.run(
        ["mtype", "-i", f"{img}@@{offset}", f"::{path}"], check=True, capture_output=True, env=env
    ).stdout


@pytest.mark.parametrize("layout,boot_mib,bits", [("sdimg", 8, 12), ("uefiimg", 32, 16)])
def test_fat_read_write_replace_remove(make_image, layout, boot_mib, bits):
    img = make_image(layout, boot_mib=boot_mib)
    boot = open_layout(img).boot
    off = boot.partition.start
    with boot.open(img, writable=True) as fs:
        assert fs._fs.fs.fat_type == bits  # pyfatfs alone takes this 8 MiB FAT12 for FAT16
        # mtools stores config.txt as CONFIG.TXT + lowercase flags: found and shown lowercase
        assert fs.read("/CONFIG.TXT") == fs.read("/config.txt") == b"kernel=u-boot.bin\n"
        assert {"cmdline.txt", "config.txt", "EFI"} <= {e.name for e in fs.list("/")}
        fs.write("/config.txt", b"kernel=new\n")
        fs.write("/efi/boot/grub/Grub.cfg", os.urandom(100_000), parents=True)
        fs.write("/EFI/BOOT/grub/grub.CFG", b"set x=1\n")  # replaces, whatever the case
        fs.mkdir("/EFI/vendor/sub", parents=True)
        assert [e.name for e in fs.list("/efi/boot/grub")] == ["Grub.cfg"]
        assert fs.stat("/efi/boot/grub/grub.cfg").size == 8
        with pytest.raises(NotFoundError, match="use -p"):
            fs.write("/nodir/x", b"1")
        with pytest.raises(FilesystemError, match="use -r"):
            fs.remove("/EFI")
        fs.remove("/EFI/vendor", recursive=True)
        assert not fs.exists("/efi/vendor")
    assert mtype(img, off, "/config.txt") == b"kernel=new\n"
    assert mtype(img, off, "/EFI/BOOT/grub/Grub.cfg") == b"set x=1\n"
    clean, output = fsck(img, boot)
    assert clean, output


def test_fat_full_and_read_only_never_written(make_image):
    img = make_image("sdimg")
    boot = open_layout(img).boot
    before = hashlib.sha256(img.read_bytes()).hexdigest()
    with boot.open(img) as fs:
        fs.read("/cmdline.txt")
        with pytest.raises(FilesystemError, match="read-only"):
            fs.write("/x", b"1")
    with boot.open(img, writable=True) as fs:
        with pytest.raises(NoSpaceError):
            fs.write("/big.bin", os.urandom(9 << 20))
    assert hashlib.sha256(img.read_bytes()).hexdigest() == before
    assert (
        run_tool(
            "mdir",
            "-i",
            f"{img}@@{boot.partition.start}",
            "::/",
            check=False,
            env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        ).returncode
        == 0
    )
