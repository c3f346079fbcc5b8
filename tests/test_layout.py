"""Mender roles: labels, GPT names and types, position, overrides, missing data partition."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.disktables import (
    BASIC,
    ESP,
    LINUX,
    SWAP,
    GptPart,
    MiB,
    ext_superblock,
    fat_boot_sector,
    gpt_chunks,
    mbr_chunks,
    mbr_entry,
    mbr_sector,
    swap_header,
    write_image,
)
from support.images import LAYOUT_ROLES
from support.tools import run_tool

from imagetools.errors import LayoutError
from imagetools.image import read_image
from imagetools.layout import ROLES, detect_layout, open_layout

S = 512
P = 16384  # every synthetic partition is 8 MiB, starting at 8 MiB boundaries


def mbr_layout(tmp_path, parts, overrides=None):
    """parts: (mbr type, first bytes of the partition or None) placed at 8 MiB, 16 MiB, ..."""
    assert len(parts) <= 4
    chunks = {0: mbr_sector([mbr_entry(t, P * (i + 1), P) for i, (t, _) in enumerate(parts)])}
    chunks.update({P * (i + 1) * S: data for i, (_, data) in enumerate(parts) if data})
    path = write_image(tmp_path / "t.img", (len(parts) + 2) * 8 * MiB, chunks)
    return open_layout(path, overrides)


def gpt_layout(tmp_path, parts, overrides=None):
    """parts: (type GUID, GPT name, first bytes or None), like mbr_layout."""
    table = [GptPart(t, P * (i + 1), P * (i + 2) - 1, name) for i, (t, name, _) in enumerate(parts)]
    chunks = gpt_chunks(table, (len(parts) + 2) * P)
    chunks.update({P * (i + 1) * S: data for i, (_, _, data) in enumerate(parts) if data})
    return open_layout(write_image(tmp_path / "g.img", (len(parts) + 2) * P * S, chunks), overrides)


def roles(layout) -> dict[int, str]:
    return {p.number: p.role for p in layout.parts}


EXT = ext_superblock
FAT = fat_boot_sector


# --- real images ------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("layout", sorted(LAYOUT_ROLES))
@pytest.mark.parametrize("empty_b", [False, True])
def test_make_image_roles(make_image, layout, empty_b):
    found = open_layout(make_image(layout, empty_rootfs_b=empty_b))
    assert roles(found) == LAYOUT_ROLES[layout]
    assert found.require("data").fs.label == "data"
    assert [p.role for p in found.rootfs] == ["rootfs-a", "rootfs-b"]
    assert all(p.reason and "\n" not in p.reason for p in found.parts)
    assert found.warnings == []


@pytest.mark.integration
def test_unlabelled_filesystems_use_position(make_image):
    path = make_image("sdimg")
    image = read_image(path)
    for p in image.partitions[1:]:
        run_tool("e2label", f"{path}?offset={p.start}", "")
    found = detect_layout(image)
    assert roles(found) == LAYOUT_ROLES["sdimg"]
    assert found.rootfs_a.reason == "first Linux partition"
    assert found.data.reason == "first ext4 partition after rootfs B"


@pytest.mark.integration
def test_wiped_rootfs_b_is_still_rootfs_b(make_image):
    path = make_image("sdimg")
    image = read_image(path)
    with open(path, "r+b") as f:
        f.seek(image.partitions[2].start)
        f.write(bytes(1 << 16))
    found = detect_layout(image)
    assert roles(found) == LAYOUT_ROLES["sdimg"]
    assert found.rootfs_b.fs.type == "empty"
    assert "not formatted" in found.rootfs_b.reason


# --- synthetic tables ---------------------------------------------------------------------------
def test_position_rules(tmp_path):
    found = gpt_layout(
        tmp_path, [(BASIC, "", FAT("")), (LINUX, "", EXT()), (LINUX, "", EXT()), (LINUX, "", EXT()), (LINUX, "", EXT())]
    )
    assert roles(found) == {1: "boot", 2: "rootfs-a", 3: "rootfs-b", 4: "data", 5: "extra"}
    assert found.boot.reason == "vfat filesystem in the first partition"
    assert found.by_number(5).reason == "ext4 partition after data"


def test_two_unlabelled_linux_partitions_have_no_data(tmp_path):
    found = mbr_layout(tmp_path, [(0x0C, FAT("")), (0x83, EXT()), (0x83, EXT())])
    assert roles(found) == {1: "boot", 2: "rootfs-a", 3: "rootfs-b"}
    assert found.data is None
    assert found.warnings[0].startswith("no data partition found (choose one with --data-partition N)")
    with pytest.raises(LayoutError) as exc:
        found.require("data")
    message = str(exc.value)
    assert "no data partition found" in message and "\n" not in message
    assert "partitions seen: 1 vfat as boot, 2 ext4 as rootfs-a, 3 ext4 as rootfs-b" in message


def test_labels_beat_position(tmp_path):
    found = mbr_layout(tmp_path, [(0x83, EXT("data")), (0x83, EXT("secondary")), (0x83, EXT("primary"))])
    assert roles(found) == {1: "data", 2: "rootfs-b", 3: "rootfs-a"}
    assert found.data.reason == "ext4 label 'data'"


def test_rootfs_after_data_is_extra(tmp_path):
    found = mbr_layout(tmp_path, [(0x83, EXT()), (0x83, EXT("data")), (0x83, EXT())])
    assert roles(found) == {1: "rootfs-a", 2: "data", 3: "extra"}


def test_unformatted_linux_partition_as_rootfs_b(tmp_path):
    found = mbr_layout(tmp_path, [(0x0C, FAT()), (0x83, EXT("primary")), (0x83, None), (0x83, EXT("data"))])
    assert roles(found) == {1: "boot", 2: "rootfs-a", 3: "rootfs-b", 4: "data"}
    assert found.rootfs_b.reason == "second Linux partition before data, not formatted"


def test_swap_by_signature_or_type(tmp_path):
    found = mbr_layout(tmp_path, [(0x83, EXT()), (0x83, swap_header()), (0x82, None), (0x83, EXT("data"))])
    assert roles(found) == {1: "rootfs-a", 2: "swap", 3: "swap", 4: "data"}
    assert found.by_number(2).reason == "swap signature"
    assert found.by_number(3).reason == "swap partition type 0x82"


def test_ext4_boot_partition_is_not_a_rootfs(tmp_path):
    found = mbr_layout(tmp_path, [(0x83, EXT("boot")), (0x83, EXT()), (0x83, EXT()), (0x83, EXT("data"))])
    assert roles(found) == {1: "extra", 2: "rootfs-a", 3: "rootfs-b", 4: "data"}


def test_swap_type_with_a_filesystem_goes_by_the_filesystem(tmp_path):
    found = mbr_layout(tmp_path, [(0x83, EXT()), (0x82, EXT()), (0x83, EXT("data"))])
    assert roles(found) == {1: "rootfs-a", 2: "rootfs-b", 3: "data"}


def test_fat_elsewhere_is_extra(tmp_path):
    found = mbr_layout(tmp_path, [(0x83, EXT()), (0x0C, FAT("")), (0x83, EXT()), (0x83, EXT("data"))])
    assert roles(found) == {1: "rootfs-a", 2: "extra", 3: "rootfs-b", 4: "data"}
    assert found.by_number(2).reason == "vfat partition that is not the first one"
    assert found.boot is None


def test_squashfs_rootfs(tmp_path):
    squash = b"hsqs" + bytes(8) + (131072).to_bytes(4, "little")
    found = mbr_layout(tmp_path, [(0x0C, FAT()), (0x83, squash), (0x83, squash), (0x83, EXT("data"))])
    assert roles(found) == {1: "boot", 2: "rootfs-a", 3: "rootfs-b", 4: "data"}
    assert found.rootfs_a.fs.type == "squashfs"


def test_unknown_non_linux_partition_is_extra(tmp_path):
    found = mbr_layout(tmp_path, [(0x07, b"\xeb\x52\x90NTFS    "), (0x83, EXT("data"))])
    assert roles(found) == {1: "extra", 2: "data"}


def test_gpt_types_and_names(tmp_path):
    parts = [
        GptPart(ESP, P, 2 * P - 1),
        GptPart(LINUX, 2 * P, 3 * P - 1, "rootfs-a"),
        GptPart(LINUX, 3 * P, 4 * P - 1, "rootfs-b"),
        GptPart(SWAP, 4 * P, 5 * P - 1),
        GptPart(LINUX, 5 * P, 6 * P - 1, "data"),
    ]
    chunks = gpt_chunks(parts, 7 * P)
    chunks.update({2 * P * S: EXT(), 3 * P * S: EXT(), 5 * P * S: EXT()})
    found = open_layout(write_image(tmp_path / "g.img", 7 * P * S, chunks))
    assert roles(found) == {1: "boot", 2: "rootfs-a", 3: "rootfs-b", 4: "swap", 5: "data"}
    assert found.boot.reason == "EFI system partition type GUID"
    assert found.rootfs_b.reason == "GPT name 'rootfs-b'"
    assert found.data.reason == "GPT name 'data'"


def test_logical_data_partition(tmp_path):
    chunks = mbr_chunks(
        [(0x0C, P, P), (0x83, 2 * P, P), (0x83, 3 * P, P), (0x05, 4 * P, 3 * P)],
        [(0x82, 4 * P + 2048, P - 2048), (0x83, 6 * P, P)],
    )
    chunks.update({P * S: FAT(), 2 * P * S: EXT(), 3 * P * S: EXT(), 6 * P * S: EXT()})
    found = open_layout(write_image(tmp_path / "e.img", 8 * P * S, chunks))
    assert roles(found) == {1: "boot", 2: "rootfs-a", 3: "rootfs-b", 5: "swap", 6: "data"}


# --- overrides and lookups ----------------------------------------------------------------------
def test_overrides_win(tmp_path):
    found = gpt_layout(
        tmp_path,
        [(BASIC, "", FAT()), (LINUX, "", EXT()), (LINUX, "", EXT()), (LINUX, "", EXT("data")), (LINUX, "", EXT())],
        overrides={"data": 5, "rootfs-b": 4},
    )
    assert roles(found) == {1: "boot", 2: "rootfs-a", 3: "extra", 4: "rootfs-b", 5: "data"}
    assert found.data.reason == "chosen by the caller (data = partition 5)"


def test_override_gives_the_missing_data_partition(tmp_path):
    found = mbr_layout(tmp_path, [(0x83, EXT()), (0x83, EXT())], overrides={"data": 2})
    assert roles(found) == {1: "rootfs-a", 2: "data"}
    assert found.warnings == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data": 7}, r"--data-partition 7: .* has no partition 7 \(partitions: 1 ext4, 2 ext4\)"),
        ({"swap": 1}, "cannot override role 'swap'"),
    ],
)
def test_bad_overrides(tmp_path, overrides, message):
    with pytest.raises(LayoutError, match=message):
        mbr_layout(tmp_path, [(0x83, EXT()), (0x83, EXT())], overrides=overrides)


def test_lookups(tmp_path):
    found = mbr_layout(tmp_path, [(0x83, EXT("primary")), (0x83, EXT("data"))])
    assert found.by_number(2).role == "data"
    assert found.rootfs == [found.rootfs_a] and found.rootfs_b is None and found.boot is None
    with pytest.raises(LayoutError, match="has no partition 3; partitions seen: 1 ext4 'primary'"):
        found.by_number(3)
    with pytest.raises(LayoutError, match="no boot partition found"):
        found.require("boot")
    with pytest.raises(LayoutError, match="unknown partition role"):
        found.find("root")
    assert {p.role for p in found.parts} <= set(ROLES)


# --- any mix of partitions: one partition per singular role, a reason for each ------------------
FS_KINDS = {
    "ext4": lambda label: EXT(label),
    "vfat": lambda label: FAT(label.upper()[:11]),
    "swap": lambda label: swap_header(label),
    "empty": lambda label: None,
    "squashfs": lambda label: b"hsqs" + bytes(12),
    "junk": lambda label: b"\x01" * 4096,
}
LABELS = ["", "data", "primary", "secondary", "rootfs", "boot", "DATA", "other"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0x83, 0x0C, 0x82, 0x07]), st.sampled_from(sorted(FS_KINDS)), st.sampled_from(LABELS)
        ),
        min_size=1,
        max_size=4,
    ),
    st.dictionaries(st.sampled_from(["data", "boot", "rootfs-a", "rootfs-b"]), st.integers(1, 4), max_size=2),
)
def test_any_mix_gets_consistent_roles(tmp_path_factory, parts, overrides):
    tmp = tmp_path_factory.mktemp("mix")
    try:
        found = mbr_layout(tmp, [(t, FS_KINDS[kind](label)) for t, kind, label in parts], overrides)
    except LayoutError as exc:  # only bad overrides may fail
        assert "partition" in str(exc) and overrides
        return
    singular = [p.role for p in found.parts if p.role not in ("swap", "extra")]
    assert len(singular) == len(set(singular))
    assert all(p.role in ROLES and p.reason and "\n" not in p.reason for p in found.parts)
    for role, number in overrides.items():
        assert found.by_number(number).role == role
    if found.rootfs_a and found.rootfs_b and "rootfs" not in " ".join(overrides):
        named = "label" in found.rootfs_a.reason + found.rootfs_b.reason
        assert named or found.rootfs_a.partition.start < found.rootfs_b.partition.start
