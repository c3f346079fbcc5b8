"""Partition-table reader: MBR + EBR chains, GPT (CRC, backup, 4K sectors), errors, fuzzing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.disktables import (
    BASIC,
    ESP,
    LINUX,
    GptPart,
    MiB,
    ext_superblock,
    fat_boot_sector,
    gpt_chunks,
    gpt_header,
    mbr_chunks,
    mbr_entry,
    mbr_sector,
    swap_header,
    write_image,
)
from support.images import LAYOUTS
from support.tools import run_tool

from imagetools.errors import ImageFormatError
from imagetools.image import DiskImage, Partition, read_image
from imagetools.image.mbr import MAX_LOGICAL

S = 512


def img(tmp_path: Path, chunks: dict[int, bytes], size: int = 64 * MiB, name: str = "t.img") -> Path:
    return write_image(tmp_path / name, size, chunks)


def spans(image: DiskImage) -> list[tuple[int, int, int]]:
    return [(p.number, p.start, p.size) for p in image.partitions]


# --- MBR ------------------------------------------------------------------------------------
def test_mbr_primaries_numbered_by_slot(tmp_path):
    chunks = {0: mbr_sector([mbr_entry(0x0C, 2048, 2048, 0x80), bytes(16), mbr_entry(0x83, 8192, 4096)])}
    image = read_image(img(tmp_path, chunks))
    assert (image.table, image.sector_size, image.size) == ("mbr", 512, 64 * MiB)
    assert spans(image) == [(1, 2048 * S, 2048 * S), (3, 8192 * S, 4096 * S)]
    assert [p.type for p in image.partitions] == ["0x0c", "0x83"]
    assert image.warnings == [] and image.extended == []


@pytest.mark.parametrize("ext_type", [0x05, 0x0F, 0x85])
def test_ebr_chain_gives_logicals_from_5(tmp_path, ext_type):
    chunks = mbr_chunks(
        [(0x83, 2048, 2048), (ext_type, 8192, 40960)], [(0x82, 8193, 2047), (0x83, 16384, 8192), (0x83, 32768, 16384)]
    )
    image = read_image(img(tmp_path, chunks))
    assert spans(image) == [
        (1, 2048 * S, 2048 * S),
        (5, 8193 * S, 2047 * S),
        (6, 16384 * S, 8192 * S),
        (7, 32768 * S, 16384 * S),
    ]
    assert [p.logical for p in image.partitions] == [False, True, True, True]
    assert image.extended == [Partition(2, 8192 * S, 40960 * S, f"0x{ext_type:02x}")]


def test_extended_without_logicals(tmp_path):
    chunks = mbr_chunks([(0x83, 2048, 2048), (0x05, 8192, 8192)])
    image = read_image(img(tmp_path, chunks))
    assert spans(image) == [(1, 2048 * S, 2048 * S)]
    assert len(image.extended) == 1


def _chain(ext_lba: int, links: list[tuple[int, int]], sectors: int = 1 << 20) -> dict[int, bytes]:
    """EBRs at ext_lba + rel for each (rel, next_rel); each describes a one-sector logical."""
    chunks = {0: mbr_sector([mbr_entry(0x05, ext_lba, sectors)])}
    for rel, nxt in links:
        entries = [mbr_entry(0x83, 1, 1)]
        if nxt is not None:
            entries.append(mbr_entry(0x05, nxt, 2))
        chunks[(ext_lba + rel) * S] = mbr_sector(entries)
    return chunks


@pytest.mark.parametrize(
    "links, message",
    [
        ([(0, 4), (4, 0)], "loops back"),
        ([(0, 4), (4, 4)], "loops back"),
        ([(0, 1 << 21)], "outside extended partition"),
        ([(0, 4)], "no 0x55AA signature"),  # link to a blank sector
    ],
)
def test_ebr_chain_errors(tmp_path, links, message):
    with pytest.raises(ImageFormatError, match=message):
        read_image(img(tmp_path, _chain(2048, links), size=1024 * MiB))


def test_ebr_chain_too_long(tmp_path):
    links = [(4 * i, 4 * (i + 1)) for i in range(MAX_LOGICAL + 5)]
    with pytest.raises(ImageFormatError, match=f"more than {MAX_LOGICAL} links"):
        read_image(img(tmp_path, _chain(2048, links), size=1024 * MiB))


def test_ebr_chain_with_many_logicals_is_fine(tmp_path):
    links = [(4 * i, 4 * (i + 1)) for i in range(MAX_LOGICAL - 1)] + [(4 * (MAX_LOGICAL - 1), None)]
    image = read_image(img(tmp_path, _chain(2048, links), size=1024 * MiB))
    assert [p.number for p in image.partitions] == list(range(5, 5 + MAX_LOGICAL))


def test_logical_outside_extended(tmp_path):
    chunks = {0: mbr_sector([mbr_entry(0x05, 2048, 4096)]), 2048 * S: mbr_sector([mbr_entry(0x83, 1, 8192)])}
    with pytest.raises(ImageFormatError, match="logical partition 5 .* is not inside extended"):
        read_image(img(tmp_path, chunks))


# --- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size, message", [(0, "is empty"), (1, "is only 1 byte:"), (511, "only 511 bytes")])
def test_too_small(tmp_path, size, message):
    with pytest.raises(ImageFormatError, match=message):
        read_image(write_image(tmp_path / "x.img", size, {}))


def test_no_signature(tmp_path):
    with pytest.raises(ImageFormatError, match="no partition table found.*not a whole-disk image"):
        read_image(img(tmp_path, {0: os.urandom(510) + b"\0\0"}))


def test_bare_filesystem_is_named(tmp_path):
    with pytest.raises(ImageFormatError, match="looks like a bare ext4 filesystem"):
        read_image(img(tmp_path, {0: ext_superblock("data")}))


def test_boot_flags_must_be_0_or_80(tmp_path):
    with pytest.raises(
        ImageFormatError,
        match=r"no partition table found \(sector 0 has invalid MBR "
        r"boot flags\): this is not a whole-disk image",
    ):
        read_image(img(tmp_path, {0: mbr_sector([mbr_entry(0x83, 2048, 2048, status=0x12)])}))


def test_empty_mbr(tmp_path):
    with pytest.raises(ImageFormatError, match="the MBR partition table has no partitions$"):
        read_image(img(tmp_path, {0: mbr_sector([])}))


def test_bare_fat_filesystem_is_named(tmp_path):
    with pytest.raises(ImageFormatError, match="has no partitions: this looks like a bare vfat"):
        read_image(img(tmp_path, {0: fat_boot_sector()}))


def test_partition_past_end(tmp_path):
    chunks = {0: mbr_sector([mbr_entry(0x83, 2048, 2048), mbr_entry(0x83, 4096, 1 << 20)])}
    with pytest.raises(ImageFormatError, match=r"partition 2 .* extends past the end .* truncated"):
        read_image(img(tmp_path, chunks))


@pytest.mark.parametrize(
    "entries, pair",
    [
        ([(0x83, 2048, 4096), (0x83, 4096, 4096)], "1 and 2"),
        ([(0x83, 8192, 4096), (0x83, 2048, 8192)], "2 and 1"),
        ([(0x83, 2048, 100000), (0x83, 4096, 10), (0x83, 9000, 10)], "1 and 2"),
    ],
)
def test_overlapping_partitions(tmp_path, entries, pair):
    chunks = {0: mbr_sector([mbr_entry(*e) for e in entries])}
    with pytest.raises(ImageFormatError, match=f"partitions {pair} overlap"):
        read_image(img(tmp_path, chunks))


def test_overlapping_logicals(tmp_path):
    chunks = mbr_chunks([(0x05, 2048, 40960)], [(0x83, 4096, 8192), (0x83, 8192, 8192)])
    with pytest.raises(ImageFormatError, match="partitions 5 and 6 overlap|inside logical partition"):
        read_image(img(tmp_path, chunks))


def test_partition_at_sector_zero(tmp_path):
    with pytest.raises(ImageFormatError, match="starts at sector 0"):
        read_image(img(tmp_path, {0: mbr_sector([mbr_entry(0x83, 0, 2048)])}))


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(ImageFormatError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(ImageFormatError, match="no such file"):
        read_image(tmp_path / "missing.img")


# --- GPT ------------------------------------------------------------------------------------
TOTAL = 64 * MiB // S
GPT_PARTS = [
    GptPart(ESP, 2048, 4095, "ESP", "aaaaaaaa-0000-4000-8000-000000000001"),
    GptPart(LINUX, 4096, 8191, "primary"),
    GptPart(LINUX, 16384, 32767, "data"),
]


def test_gpt_entries(tmp_path):
    image = read_image(img(tmp_path, gpt_chunks(GPT_PARTS, TOTAL)))
    assert (image.table, image.sector_size, image.warnings) == ("gpt", 512, [])
    assert spans(image) == [(1, 2048 * S, 2048 * S), (2, 4096 * S, 4096 * S), (3, 16384 * S, 16384 * S)]
    first = image.partitions[0]
    assert (first.type, first.name, first.uuid) == (ESP, "ESP", "aaaaaaaa-0000-4000-8000-000000000001")


def test_gpt_entry_index_is_the_number(tmp_path):
    parts = [
        GptPart(LINUX, 2048, 4095),
        GptPart("00000000-0000-0000-0000-000000000000", 0, 0),
        GptPart(BASIC, 4096, 6143, "x"),
    ]
    image = read_image(img(tmp_path, gpt_chunks(parts, TOTAL)))
    assert [p.number for p in image.partitions] == [1, 3]


@pytest.mark.parametrize("damage", ["header", "entries", "signature"])
def test_gpt_falls_back_to_backup(tmp_path, damage):
    chunks = gpt_chunks(GPT_PARTS, TOTAL)
    if damage == "header":
        chunks[S] = chunks[S][:60] + b"\xff" + chunks[S][61:]
    elif damage == "entries":
        chunks[2 * S] = b"\x01" + chunks[2 * S][1:]
    else:
        chunks[S] = bytes(S)
    image = read_image(img(tmp_path, chunks))
    assert spans(image) == spans(read_image(img(tmp_path, gpt_chunks(GPT_PARTS, TOTAL), name="ok.img")))
    assert len(image.warnings) == 1
    assert re.match(
        r"primary GPT header is damaged \(.+\); using the backup header at sector "
        f"{TOTAL - 1}",
        image.warnings[0],
    )


def test_gpt_backup_damaged_is_a_warning(tmp_path):
    chunks = gpt_chunks(GPT_PARTS, TOTAL)
    chunks[(TOTAL - 1) * S] = bytes(S)
    image = read_image(img(tmp_path, chunks))
    assert len(image.partitions) == 3
    assert image.warnings and "backup GPT header" in image.warnings[0] and "damaged" in image.warnings[0]


def test_gpt_both_headers_damaged(tmp_path):
    chunks = gpt_chunks(GPT_PARTS, TOTAL)
    chunks[S] = bytes(S)
    chunks[(TOTAL - 1) * S] = b"EFI PART" + bytes(S - 8)
    with pytest.raises(ImageFormatError, match="no usable GPT: primary header: .*; backup header"):
        read_image(img(tmp_path, chunks))


def test_gpt_4096_byte_sectors(tmp_path):
    total = 64 * MiB // 4096
    parts = [GptPart(ESP, 256, 511, "ESP"), GptPart(LINUX, 512, 1023, "data")]
    image = read_image(img(tmp_path, gpt_chunks(parts, total, ss=4096)))
    assert image.sector_size == 4096
    assert spans(image) == [(1, 256 * 4096, 256 * 4096), (2, 512 * 4096, 512 * 4096)]


def test_gpt_4096_primary_damaged_uses_backup(tmp_path):
    total = 64 * MiB // 4096
    chunks = gpt_chunks([GptPart(LINUX, 256, 511)], total, ss=4096)
    chunks[4096] = bytes(4096)
    image = read_image(img(tmp_path, chunks))
    assert image.sector_size == 4096 and spans(image) == [(1, 256 * 4096, 256 * 4096)]
    assert "using the backup header" in image.warnings[0]


def test_hybrid_mbr_is_recognised(tmp_path):
    pmbr = mbr_sector([mbr_entry(0xEE, 1, 2047), mbr_entry(0x0C, 2048, 2048, 0x80)])
    image = read_image(img(tmp_path, gpt_chunks(GPT_PARTS, TOTAL, pmbr=pmbr)))
    assert image.table == "gpt" and len(image.partitions) == 3
    assert image.warnings == ["hybrid MBR: MBR entries 2 duplicate GPT partitions; using the GPT"]


def test_gpt_without_protective_mbr(tmp_path):
    image = read_image(img(tmp_path, gpt_chunks(GPT_PARTS, TOTAL, pmbr=bytes(S))))
    assert image.table == "gpt" and "no protective MBR" in image.warnings[0]


def test_protective_mbr_without_gpt(tmp_path):
    with pytest.raises(ImageFormatError, match="no usable GPT"):
        read_image(img(tmp_path, {0: mbr_sector([mbr_entry(0xEE, 1, TOTAL - 1)])}))


@pytest.mark.parametrize(
    "part, message",
    [
        (GptPart(LINUX, 5000, 4000), "ends .* before it starts"),
        (GptPart(LINUX, 10, 4000), "outside the usable area"),
        (GptPart(LINUX, 4096, TOTAL - 2), "outside the usable area"),
    ],
)
def test_gpt_bad_entries(tmp_path, part, message):
    with pytest.raises(ImageFormatError, match=message):
        read_image(img(tmp_path, gpt_chunks([part], TOTAL)))


def test_gpt_overlap(tmp_path):
    parts = [GptPart(LINUX, 2048, 8191), GptPart(LINUX, 8000, 9000)]
    with pytest.raises(ImageFormatError, match="partitions 1 and 2 overlap"):
        read_image(img(tmp_path, gpt_chunks(parts, TOTAL)))


def test_gpt_absurd_entry_count(tmp_path):
    chunks = gpt_chunks(GPT_PARTS, TOTAL)
    chunks[S] = gpt_header(1, TOTAL - 1, 34, TOTAL - 34, 2, 1 << 24, 128, 0)
    image = read_image(img(tmp_path, chunks))  # the backup is intact
    assert "implausible partition entry array" in image.warnings[0]


def test_gpt_truncated_image(tmp_path):
    """The backup header is gone and a partition is cut: the cut is the error."""
    path = img(tmp_path, gpt_chunks(GPT_PARTS, TOTAL))
    os.truncate(path, 20000 * S)
    with pytest.raises(ImageFormatError, match="partition 3 .* extends past the end .* truncated"):
        read_image(path)


# --- real images from scripts/make-image, checked against sfdisk ------------------------------
def sfdisk_json(path: Path) -> dict:
    return json.loads(run_tool("sfdisk", "--json", str(path)).stdout)["partitiontable"]


def assert_matches_sfdisk(image: DiskImage, path: Path) -> None:
    table = sfdisk_json(path)
    assert image.table == {"dos": "mbr", "gpt": "gpt"}[table["label"]]
    assert image.sector_size == table["sectorsize"]
    ours = {p.number: p for p in image.partitions + image.extended}
    theirs = {int(re.search(r"(\d+)$", p["node"]).group(1)): p for p in table["partitions"]}
    assert sorted(ours) == sorted(theirs)
    for n, p in theirs.items():
        mine = ours[n]
        assert (mine.start, mine.size) == (p["start"] * 512, p["size"] * 512)
        if table["label"] == "gpt":
            assert (mine.type, mine.uuid) == (p["type"].lower(), p["uuid"].lower())
            assert mine.name == p.get("name", "")
        else:
            assert int(mine.type, 16) == int(p["type"], 16)


@pytest.mark.integration
@pytest.mark.parametrize("layout", LAYOUTS)
def test_make_image_layouts_match_sfdisk(make_image, layout):
    path = make_image(layout)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    image = read_image(path)
    assert_matches_sfdisk(image, path)
    assert image.warnings == []
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


@pytest.mark.integration
def test_real_gpt_with_damaged_primary(make_image):
    path = make_image("uefiimg")
    original = read_image(path)
    with open(path, "r+b") as f:
        f.seek(S + 70)
        f.write(b"\xde\xad")  # the disk GUID: only the header CRC notices
    image = read_image(path)
    assert image.partitions == original.partitions
    assert "primary GPT header is damaged (header CRC mismatch)" in image.warnings[0]
    run_tool("sfdisk", "--json", str(path))  # sfdisk agrees the backup is usable


@pytest.mark.integration
def test_real_4096_byte_sector_gpt(tmp_path):
    path = write_image(tmp_path / "4k.img", 64 * MiB, {})
    script = "g\nn\n1\n\n+8M\nt\n1\nn\n2\n\n+16M\nw\n"
    run_tool("fdisk", "-b", "4096", str(path), input=script)
    listing = run_tool("fdisk", "-b", "4096", "-l", "-o", "Device,Start,Sectors,Type-UUID", str(path)).stdout
    rows = [line.split() for line in listing.splitlines() if line.startswith(str(path))]
    image = read_image(path)
    assert image.sector_size == 4096
    assert [(p.start, p.size, p.type) for p in image.partitions] == [
        (int(start) * 4096, int(sectors) * 4096, guid.lower()) for _, start, sectors, guid in rows
    ]


@pytest.mark.integration
def test_real_image_cut_mid_partition(make_image):
    path = make_image("extended")
    os.truncate(path, 60 * MiB)
    with pytest.raises(ImageFormatError, match="truncated"):
        read_image(path)


def test_8gib_image_reads_in_milliseconds(tmp_path):
    import time

    total = 8 * 1024 * MiB // S
    parts = [
        GptPart(ESP, 16384, 16384 + 32767),
        GptPart(LINUX, 1 << 20, (5 << 20) - 1),
        GptPart(LINUX, 5 << 20, (9 << 20) - 1),
        GptPart(LINUX, 9 << 20, total - 16384),
    ]
    path = img(tmp_path, gpt_chunks(parts, total), size=total * S)
    started = time.perf_counter()
    image = read_image(path)
    assert time.perf_counter() - started < 0.1
    assert image.size == 8 * 1024 * MiB and len(image.partitions) == 4


# --- fuzzing: only ImageFormatError, never a hang ---------------------------------------------
@contextmanager
def time_limit(seconds: float):
    def expired(*_):
        raise TimeoutError(f"parser ran longer than {seconds}s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    """One file rewritten by every example (module scope: hypothesis reruns the test body)."""
    return tmp_path_factory.mktemp("fuzz") / "fuzz.img"


def parse_fuzzed(path: Path, chunks: dict[int, bytes], size: int) -> None:
    """The parser's whole contract: a consistent DiskImage or an ImageFormatError, quickly."""
    write_image(path, size, chunks)
    with time_limit(2):
        try:
            image = read_image(path)
        except ImageFormatError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
    numbers = [p.number for p in image.partitions]
    assert len(numbers) == len(set(numbers)) and image.partitions
    for p in image.partitions + image.extended:
        assert 0 < p.start and p.size > 0 and p.end <= size
    top = sorted((p for p in image.partitions if not p.logical), key=lambda p: p.start)
    for a, b in zip(top, top[1:]):
        assert a.end <= b.start


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    return bytes(buf)


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8)
u32 = st.integers(0, 0xFFFFFFFF)
ptypes = st.sampled_from([0, 0x05, 0x0F, 0x85, 0x83, 0x82, 0x0C, 0xEE]) | st.integers(0, 255)
entry = st.builds(mbr_entry, ptypes, u32 | st.integers(0, 4096), u32 | st.integers(0, 4096), st.sampled_from([0, 0x80]))


@FUZZ
@given(st.binary(min_size=0, max_size=4096), st.integers(0, 1 << 20))
def test_fuzz_random_bytes(fuzz_file, data, size):
    parse_fuzzed(fuzz_file, {0: data}, max(size, len(data)))


@FUZZ
@given(
    st.lists(entry, max_size=4),
    st.dictionaries(st.integers(1, 4096), st.lists(entry, max_size=4), max_size=6),
    st.integers(512, 4 * MiB),
)
def test_fuzz_random_mbr_and_ebrs(fuzz_file, primaries, ebrs, size):
    chunks = {0: mbr_sector(primaries)}
    chunks.update({lba * S: mbr_sector(e) for lba, e in ebrs.items()})
    parse_fuzzed(fuzz_file, chunks, max(size, 4097 * S))


EXTENDED = mbr_chunks(
    [(0x0C, 2048, 2048), (0x83, 4096, 2048), (0x05, 8192, 12288)],
    [(0x82, 8200, 2040), (0x83, 10248, 2040), (0x83, 12296, 8184)],
)


@FUZZ
@given(st.sampled_from(sorted(EXTENDED)), edits)
def test_fuzz_mutated_ebr_chain(fuzz_file, offset, changes):
    chunks = dict(EXTENDED)
    chunks[offset] = mutate(chunks[offset], [(446 + p % 66, v) for p, v in changes])
    parse_fuzzed(fuzz_file, chunks, 32 * MiB)


GPT = gpt_chunks(GPT_PARTS, TOTAL)


def fix_crcs(chunks: dict[int, bytes]) -> dict[int, bytes]:
    """Recompute both CRCs so mutations reach the checks behind them."""
    out = dict(chunks)
    for hdr_off, arr_off in ((S, 2 * S), ((TOTAL - 1) * S, (TOTAL - 33) * S)):
        h = bytearray(out[hdr_off])
        h[88:92] = zlib.crc32(out[arr_off]).to_bytes(4, "little")
        size = int.from_bytes(h[12:16], "little")
        h[16:20] = bytes(4)
        if 92 <= size <= S:
            h[16:20] = zlib.crc32(bytes(h[:size])).to_bytes(4, "little")
        out[hdr_off] = bytes(h)
    return out


@FUZZ
@given(
    st.sampled_from([S, 2 * S, (TOTAL - 1) * S, (TOTAL - 33) * S]),
    edits,
    st.booleans(),
    st.integers(40 * MiB, 64 * MiB),
)
def test_fuzz_mutated_gpt(fuzz_file, offset, changes, recompute, size):
    chunks = dict(GPT)
    limit = 92 if offset in (S, (TOTAL - 1) * S) else 3 * 128
    chunks[offset] = mutate(chunks[offset], [(p % limit, v) for p, v in changes])
    parse_fuzzed(fuzz_file, fix_crcs(chunks) if recompute else chunks, size)


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from([LINUX, ESP, BASIC]), st.integers(0, TOTAL + 100), st.integers(0, TOTAL + 100)),
        max_size=6,
    ),
    st.sampled_from([512, 4096]),
)
def test_fuzz_random_gpt_entries(fuzz_file, entries, ss):
    total = TOTAL * S // ss
    parts = [GptPart(t, a, b) for t, a, b in entries]
    parse_fuzzed(fuzz_file, gpt_chunks(parts, total, ss=ss, count=16), TOTAL * S)


# --- filesystem probe, against blkid and dumpe2fs on real filesystems ------------------------------
MKFS = {
    "ext2": ["mkfs.ext2", "-q", "-F", "-L", "two"],
    "ext3": ["mkfs.ext3", "-q", "-F", "-L", "three"],
    "ext4": ["mkfs.ext4", "-q", "-F", "-L", "four", "-O", "metadata_csum,^64bit", "-b", "4096"],
    "ext4-bigalloc": ["mkfs.ext4", "-q", "-F", "-O", "bigalloc", "-C", "16384"],
    "fat12": ["mkfs.vfat", "-n", "SMALL"],
    "fat32": ["mkfs.vfat", "-F", "32", "-n", "BIG32"],
    "fat-nolabel": ["mkfs.vfat"],
    "swap": ["mkswap", "-L", "sw"],
}


@pytest.mark.integration
@pytest.mark.parametrize("kind", sorted(MKFS))
def test_probe_matches_blkid(tmp_path, kind):
    from imagetools.image.probe import probe

    fs_file = write_image(tmp_path / "fs", 48 * MiB if kind == "fat32" else 8 * MiB, {})
    run_tool(*MKFS[kind], str(fs_file))
    path = write_image(tmp_path / "disk.img", 64 * MiB, {})
    with open(path, "r+b") as f:  # at a 1 MiB offset, as in a disk image
        f.seek(MiB)
        f.write(fs_file.read_bytes())
    info = probe(path, MiB, 8 * MiB)
    blkid = dict(
        line.split("=", 1) for line in run_tool("blkid", "-p", "-o", "export", str(fs_file)).stdout.splitlines()
    )
    assert (info.type, info.label, info.uuid) == (blkid["TYPE"], blkid.get("LABEL", ""), blkid["UUID"])
    if kind.startswith("ext"):
        header = run_tool("dumpe2fs", "-h", str(fs_file)).stdout
        features = re.search(r"^Filesystem features:\s+(.*)$", header, re.M).group(1).split()
        assert sorted(info.features) == sorted(features)
        assert info.block_size == int(re.search(r"^Block size:\s+(\d+)", header, re.M).group(1))


def test_probe_synthetic_signatures():
    from imagetools.image.probe import probe_bytes

    assert probe_bytes(b"hsqs" + bytes(8) + (131072).to_bytes(4, "little")).type == "squashfs"
    assert probe_bytes(bytes(65536)).type == "empty"
    assert probe_bytes(b"\x01" + bytes(65535)).type == "unknown"
    assert probe_bytes(b"").type == "unknown"
    swap64k = probe_bytes(swap_header("big", page=65536))
    assert (swap64k.type, swap64k.label, swap64k.block_size) == ("swap", "big", 65536)
    fat16 = probe_bytes(fat_boot_sector("OLD", fat32=False, serial=0xA1B2C3D4))
    assert (fat16.type, fat16.label, fat16.uuid) == ("vfat", "OLD", "A1B2-C3D4")
    unknown_bits = probe_bytes(ext_superblock(compat=0x4, incompat=0x2 | 1 << 30, ro_compat=1))
    assert unknown_bits.type == "ext4" and "FEATURE_INCOMPAT_30" in unknown_bits.features
    assert probe_bytes(ext_superblock(compat=0x4, incompat=0x2, ro_compat=0x3)).type == "ext3"
    assert probe_bytes(ext_superblock(log_block=40)).type == "unknown"


@FUZZ
@given(
    st.sampled_from([b"", b"hsqs", b"\xeb\x3c\x90", b"SWAPSPACE2"]),
    st.binary(max_size=8192),
    st.sampled_from([0, 1080, 4086]),
)
def test_fuzz_probe_never_raises(prefix, data, magic_at):
    from imagetools.image.probe import probe_bytes

    buf = bytearray(prefix + data)
    if magic_at and len(buf) > magic_at + 10:
        buf[magic_at : magic_at + 2] = b"\x53\xef" if magic_at == 1080 else b"SW"
    info = probe_bytes(bytes(buf))
    assert info.type in ("ext2", "ext3", "ext4", "vfat", "swap", "squashfs", "empty", "unknown")
