"""Compressed bases, compressed by the real tools: every command that reads a base takes one, the
sparse cache (0600 entries, one good entry from racing processes, nothing from a bad input, the
size bound, list and clear), writers that refuse in place or compress their --out again."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.tools import ROOT, run_tool

from imagetools import basecache, keys
from imagetools.errors import EnvironmentProblem, ImageFormatError
from imagetools.image import compressed

pytestmark = pytest.mark.integration

TOOLS = {  # format -> the real tool's command line writing the compressed file to stdout
    "gzip": ["gzip", "-c"],
    "bzip2": ["bzip2", "-c"],
    "xz": ["xz", "-T0", "-c"],
    "zstd": ["zstd", "-T0", "-q", "-c"],
    "lz4": ["lz4", "-q", "-c"],
    "lzma": ["xz", "--format=lzma", "-c"],
}
SUFFIX = {"gzip": ".gz", "bzip2": ".bz2", "xz": ".xz", "zstd": ".zst", "lz4": ".lz4", "lzma": ".lzma"}


def squeeze(image: Path, fmt: str, name: str | None = None) -> Path:
    out = image.with_name(name or image.name + SUFFIX[fmt])
    with open(image, "rb") as fin, open(out, "wb") as fout:
        subprocess.run(TOOLS[fmt], stdin=fin, stdout=fout, check=True)
    return out


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached_images(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.endswith(".img")) if cache.exists() else []


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    where = tmp_path / "cache"
    monkeypatch.setenv(basecache.ENV_DIR, str(where))
    monkeypatch.delenv(basecache.ENV_MAX, raising=False)
    return where


@pytest.fixture
def base(make_image) -> Path:
    return make_image("sdimg", name="base.sdimg")


@pytest.mark.parametrize("side", ["library", "tool"])
@pytest.mark.parametrize("fmt", list(TOOLS))
def test_each_format_decompresses_into_a_private_sparse_entry(base, cache, monkeypatch, fmt, side):
    monkeypatch.setenv("IMAGETOOLS_DECOMPRESS", side)
    packed = squeeze(base, fmt)
    assert compressed.detect_file(packed).name == fmt  # by magic: the name plays no part
    renamed = packed.rename(packed.with_name("no-suffix"))
    path = Path(basecache.resolve(renamed))
    assert path.parent == cache and path.name == sha(renamed) + ".img"
    assert path.read_bytes() == base.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert path.stat().st_blocks <= base.stat().st_blocks + 8  # holes stay holes
    assert basecache.resolve(renamed) == str(path)  # the second use takes the entry
    assert renamed.read_bytes() and sha(renamed) == path.stem  # the original is never written


def test_an_uncompressed_base_is_used_as_it_is(base, cache):
    assert basecache.resolve(base) == str(base)
    assert not cache.exists()


def damaged(packed: Path, damage: str) -> Path:
    data = bytearray(packed.read_bytes())
    if damage == "truncated":
        del data[len(data) * 2 // 3 :]
    else:
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    packed.write_bytes(bytes(data))
    return packed


@pytest.mark.parametrize("fmt", list(TOOLS))
@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_base_is_refused_with_nothing_cached(base, cache, fmt, damage):
    packed = damaged(squeeze(base, fmt), damage)
    try:
        basecache.resolve(packed)
    except ImageFormatError as exc:
        assert fmt in str(exc) and "truncated" in str(exc) and str(packed) in str(exc)
    else:
        assert damage == "corrupt" and fmt in ("gzip", "lz4", "lzma"), "a damaged base was taken"
        pytest.skip(f"{fmt}: a flipped run decoded without error (no checksum over it)")
    assert cached_images(cache) == [] and not [p for p in cache.iterdir() if "partial" in p.name]


def test_a_damaged_base_is_one_line_and_exit_2(base, cache, cli):
    proc = cli("inspect", damaged(squeeze(base, "xz"), "truncated"))
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("imagetools: error: ") and "corrupt or truncated xz data" in line
    assert cached_images(cache) == []


def test_the_zstd_reader_refuses_a_frame_cut_at_a_block_boundary(base, cache, monkeypatch):
    """zstandard's own reader ends quietly on a cut frame: the frame walk catches it."""
    monkeypatch.setenv("IMAGETOOLS_DECOMPRESS", "library")
    packed = squeeze(base, "zstd")
    data = packed.read_bytes()
    packed.write_bytes(data[:-4])  # just the checksum gone
    with pytest.raises(ImageFormatError, match="truncated zstd"):
        basecache.resolve(packed)
    assert cached_images(cache) == []


def test_two_processes_at_once_leave_one_good_entry(base, cache, cli):
    packed = squeeze(base, "xz")
    exe = ROOT / ".venv" / "bin" / "imagetools"
    env = {**os.environ, basecache.ENV_DIR: str(cache)}
    procs = [
        subprocess.Popen(
            [str(exe), "inspect", "--json", str(packed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert len({json.dumps(json.loads(o[0])["items"]) for o in outs}) == 1
    assert cached_images(cache) == [sha(packed) + ".img"]
    assert (cache / (sha(packed) + ".img")).read_bytes() == base.read_bytes()


def test_reading_commands_take_a_compressed_base(base, cache, cli, tmp_path):
    packed = squeeze(base, "zstd")
    plain = json.loads(cli("inspect", "--json", base).stdout)["items"]
    assert json.loads(cli("inspect", "--json", packed).stdout)["items"] == plain
    listing = cli("ls", f"{packed}:/etc")
    assert listing.returncode == 0 and listing.stdout == cli("ls", f"{base}:/etc").stdout
    cat = cli("cat", f"{packed}:/etc/os-release")
    assert cat.returncode == 0 and cat.stdout == cli("cat", f"{base}:/etc/os-release").stdout
    config = cli("config", "--json", packed)
    expected = json.loads(cli("config", "--json", base).stdout)["items"]
    assert config.returncode == 0 and json.loads(config.stdout)["items"] == expected


def test_writers_refuse_a_compressed_image_in_place_and_compress_their_out_again(base, cache, cli, tmp_path):
    packed = squeeze(base, "gzip")
    before = sha(packed)
    host = tmp_path / "f.txt"
    host.write_text("x\n")
    for args in (
        ["install", "-m", "644", host, f"{packed}:/data/f.txt"],
        ["rm", f"{packed}:/etc/hostname"],
        ["cp", host, f"{packed}:/data/f.txt"],
    ):
        proc = cli(*args)
        assert proc.returncode == 2 and "gzip-compressed" in proc.stderr and "decompress it" in proc.stderr
    key = tmp_path / "k.pem"
    keys.write_secret(key, keys.private_pem(keys.generate(keys.KeySpec(type="ed25519")), "pkcs8"))
    refused = cli("inject", "--key", key, packed)
    assert refused.returncode == 2 and "--out" in refused.stderr and len(refused.stderr.splitlines()) == 1
    onto = cli("inject", "--key", key, packed, "--out", packed, "--force")
    assert onto.returncode == 2 and "only ever read" in onto.stderr
    flashed = cli("flash", packed, packed, "--key", key)
    assert flashed.returncode == 2 and "only ever read" in flashed.stderr
    made = cli("inject", "--key", key, packed, "--out", tmp_path / "unit.sdimg.xz", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["image"] == str(tmp_path / "unit.sdimg.xz")
    assert compressed.detect_file(tmp_path / "unit.sdimg.xz").name == "xz"
    assert stat.S_IMODE((tmp_path / "unit.sdimg.xz").stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if "uncompressed" in p.name]
    pub = tmp_path / "k.pub"
    pub.write_bytes(keys.public_pem(keys.load_private(key.read_bytes(), str(key))))
    verified = cli("verify", tmp_path / "unit.sdimg.xz", "--pubkey", pub)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    modified = cli("modify", packed, "-n", "release-7", "--out", tmp_path / "prod.sdimg")
    assert modified.returncode == 0, modified.stderr
    assert compressed.detect_file(tmp_path / "prod.sdimg") is None
    assert "release-7" in cli("cat", f"{tmp_path / 'prod.sdimg'}:/etc/mender/artifact_info").stdout
    assert sha(packed) == before


def test_emit_flash_and_materialize_from_a_compressed_base(base, cache, cli, tmp_path):
    packed = squeeze(base, "xz")
    (tmp_path / "d.csv").write_text("name,mac\nu1,02:00:00:00:09:01\nu2,02:00:00:00:09:02\n")
    emitted = cli(
        "emit",
        "--base",
        packed,
        "--devices",
        tmp_path / "d.csv",
        "--out-dir",
        tmp_path / "OUT",
        "--format",
        "delta",
        "--key-type",
        "ed25519",
    )
    assert emitted.returncode == 0, emitted.stderr
    card = tmp_path / "card.img"
    flashed = cli("flash", packed, card, "--unit", tmp_path / "OUT" / "u1", "--json")
    assert flashed.returncode == 0, flashed.stderr
    assert json.loads(flashed.stdout)["items"][0]["state"] == "passed"
    back = cli("verify", card, "--base", packed, "--unit", tmp_path / "OUT" / "u1", "--no-fsck")
    assert back.returncode == 0, back.stdout + back.stderr
    made = cli("materialize", tmp_path / "OUT" / "u2", tmp_path / "u2.sdimg", "--base", packed)
    assert made.returncode == 0, made.stderr


def test_a_bmap_beside_the_compressed_image_is_found_as_bmaptool_finds_it(base, cache):
    run_tool("bmaptool", "create", "-o", f"{base}.bmap", str(base))
    packed = squeeze(base, "zstd")
    entry = Path(basecache.resolve(packed))
    assert Path(f"{entry}.bmap").read_bytes() == Path(f"{base}.bmap").read_bytes()
    Path(f"{base}.bmap").unlink()
    basecache.resolve(packed)
    assert not Path(f"{entry}.bmap").exists()  # none beside it any more: none used


def test_the_size_bound_refuses_and_evicts(base, cache, monkeypatch, cli):
    first, second = squeeze(base, "gzip"), squeeze(base, "lz4")
    monkeypatch.setenv(basecache.ENV_MAX, "4096")
    with pytest.raises(EnvironmentProblem, match=basecache.ENV_MAX):
        basecache.resolve(first)
    assert cached_images(cache) == []
    monkeypatch.setenv(basecache.ENV_MAX, str(base.stat().st_blocks * 512 * 3 // 2))  # room for one
    basecache.resolve(first)
    basecache.resolve(second)
    assert cached_images(cache) == [sha(second) + ".img"]


def test_cache_list_and_clear(base, cache, cli):
    packed = squeeze(base, "bzip2")
    basecache.resolve(packed)
    listed = json.loads(cli("cache", "list", "--json").stdout)
    assert listed["summary"]["entries"] == 1 and listed["items"][0]["sha256"] == sha(packed)
    assert listed["items"][0]["format"] == "bzip2" and listed["cache"] == str(cache)
    cleared = cli("cache", "clear")
    assert cleared.returncode == 0 and "removed" in cleared.stdout
    assert cached_images(cache) == [] and json.loads(cli("cache", "list", "--json").stdout)["items"] == []


def test_a_record_that_does_not_match_its_entry_is_made_again(base, cache):
    packed = squeeze(base, "gzip")
    entry = Path(basecache.resolve(packed))
    record = entry.with_suffix(".json")
    record.write_text(json.dumps({**json.loads(record.read_text()), "size": 1}))
    assert basecache.resolve(packed) == str(entry)
    assert entry.read_bytes() == base.read_bytes() and json.loads(record.read_text())["size"] == entry.stat().st_size


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_detect_never_fails_and_only_claims_a_known_magic(head):
    fmt = compressed.detect(head)
    magics = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18", b"\x5d")
    assert fmt is None or head.startswith(magics)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([b"\0" * 4096, b"\0" * 100, b"x" * 4096, b"\1" * 5000, b"\0" * 20000]), max_size=12),
    st.integers(min_value=1, max_value=9000),
)
def test_the_sparse_writer_keeps_the_bytes_and_leaves_zero_blocks_as_holes(tmp_path_factory, pieces, step):
    data = b"".join(pieces)
    path = tmp_path_factory.mktemp("sparse") / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        writer = compressed.SparseWriter(fd, 1 << 30, "test")
        for pos in range(0, len(data), step):
            writer.write(data[pos : pos + step])
        assert writer.finish() == len(data)
        assert os.pread(fd, len(data) + 1, 0) == data
        from imagetools.sparse import data_ranges

        for start, end in data_ranges(fd, len(data)):
            for block in range(start // 4096, -(-end // 4096)):
                chunk = data[block * 4096 : (block + 1) * 4096]
                assert chunk.count(0) != len(chunk) or len(chunk) < 4096  # no zero block was written
    finally:
        os.close(fd)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_the_zstd_frame_walk_refuses_garbage_cleanly(tmp_path_factory, tail):
    import io

    blob = b"\x28\xb5\x2f\xfd" + tail
    try:
        compressed._zstd_complete(io.BytesIO(blob), len(blob), "x")
    except ImageFormatError:
        pass
