"""IMAGE:/path parsing and routing to partitions (no subprocesses)."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagetools.errors import FilesystemError, LayoutError, UsageError
from imagetools.fs.base import normalize
from imagetools.image import DiskImage, Partition
from imagetools.image.probe import FsInfo
from imagetools.layout import Layout, PartInfo
from imagetools.paths import Location, follow, parse_image_path, require_image_path, route

MiB = 1 << 20


def layout(*roles: tuple[int, str, str]) -> Layout:
    parts = [PartInfo(Partition(n, n * 8 * MiB, 8 * MiB, "0x83"), FsInfo(fs), role, "test") for n, role, fs in roles]
    image = DiskImage("disk.sdimg", "mbr", 512, 64 * MiB, [p.partition for p in parts])
    return Layout(image, parts)


SDIMG = layout((1, "boot", "vfat"), (2, "rootfs-a", "ext4"), (3, "rootfs-b", "ext4"), (4, "data", "ext4"))
NOBOOT = layout((1, "rootfs-a", "ext4"), (2, "rootfs-b", "ext4"), (3, "data", "ext4"))


def test_parse_simple_and_colons(tmp_path):
    img = tmp_path / "disk.sdimg"
    img.write_bytes(b"")
    assert parse_image_path(f"{img}:/data/mender/x") == (p := parse_image_path(f"{img}:/data//mender/./x"))
    assert (p.image, p.path) == (str(img), "/data/mender/x")
    odd = tmp_path / "my:disk:/"
    odd.mkdir()
    weird = odd / "a.sdimg"
    weird.write_bytes(b"")
    parsed = parse_image_path(f"{weird}:/etc/a:/b")
    assert (parsed.image, parsed.path) == (str(weird), "/etc/a:/b")
    assert parse_image_path(str(weird)) is None  # an existing host file
    assert parse_image_path("plain/host/file") is None
    with pytest.raises(UsageError, match="absolute"):
        parse_image_path(f"{img}:data/x")
    with pytest.raises(UsageError, match="image not found"):
        require_image_path(f"{tmp_path}/missing.sdimg:/data/x")
    with pytest.raises(UsageError, match="expected IMAGE:/path"):
        require_image_path("host-file")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(st.characters(blacklist_characters='/"\n\r\0', blacklist_categories=("Cs",)), min_size=1, max_size=8),
        min_size=0,
        max_size=5,
    )
)
def test_parse_roundtrip(tmp_path_factory, names):
    img = tmp_path_factory.getbasetemp() / "rt.sdimg"
    img.touch()
    inner = "/" + "/".join(names)
    parsed = parse_image_path(f"{img}:{inner}")
    assert parsed.image == str(img)
    assert parsed.path == normalize(inner)
    assert parsed.path.startswith("/") and "//" not in parsed.path


def test_normalize_refuses_what_debugfs_cannot_carry():
    assert normalize("/a/../../b/") == "/b"
    assert normalize("//a") == "/a"
    for bad in ('/a"b', "/a\nb", "/a\0b", "/\ud800", "/" + "x" * 256):
        with pytest.raises(FilesystemError):
            normalize(bad)
    with pytest.raises(FilesystemError):
        normalize("relative")


def test_route_like_mender_artifact():
    def where(path, **kw):
        return [(loc.part.partition.number, loc.path, loc.mount) for loc in route(SDIMG, path, **kw)]

    assert where("/data/mender/k") == [(4, "/mender/k", "/data")]
    assert where("/data") == [(4, "/", "/data")]
    assert where("/database") == [(2, "/database", "/")]
    assert where("/uboot/config.txt") == [(1, "/config.txt", "/uboot")]
    assert where("/boot/efi/EFI/x") == [(1, "/EFI/x", "/boot/efi")]
    assert where("/boot/grub/grub.cfg") == [(1, "/grub.cfg", "/boot/grub")]
    assert where("/boot/vmlinuz") == [(2, "/boot/vmlinuz", "/")]
    assert where("/etc/x") == [(2, "/etc/x", "/")]
    assert where("/etc/x", rootfs="b") == [(3, "/etc/x", "/")]
    assert where("/etc/x", write=True) == [(2, "/etc/x", "/"), (3, "/etc/x", "/")]
    assert where("/anything", partition=4) == [(4, "/anything", "/data")]
    with pytest.raises(LayoutError, match="no partition 9"):
        route(SDIMG, "/x", partition=9)
    with pytest.raises(LayoutError, match="boot"):
        route(NOBOOT, "/uboot/x")


def test_follow_links_across_partitions():
    rootfs_b = Location(SDIMG.rootfs_b, "/var/lib/mender", "/")
    to_data = follow(SDIMG, rootfs_b, "/var/lib/mender", "/data/mender", "key.pem")
    assert (to_data.part.role, to_data.path) == ("data", "/mender/key.pem")
    relative = follow(SDIMG, rootfs_b, "/etc/alt", "../usr/share/x", "y")
    assert (relative.part.role, relative.path) == ("rootfs-b", "/usr/share/x/y")  # stays on B
    data = Location(SDIMG.data, "/mender/link", "/data")
    up = follow(SDIMG, data, "/mender/link", "../../etc/hostname", "")
    assert (up.part.role, up.path) == ("rootfs-a", "/etc/hostname")  # escapes /data
    numbered = Location(SDIMG.parts[0], "/a", "")
    inside = follow(SDIMG, numbered, "/a", "/b/c", "d")
    assert (inside.part.partition.number, inside.path) == (1, "/b/c/d")
    assert posixpath.isabs(inside.path)
