"""Hostile and broken images with the real tools: crafted names, option-like file names, a
filesystem larger than its partition, over-long names, parallel writers, file modes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.hostile_data import data_clean, hostile_tree, with_data_tree

from imagetools import files, keys
from imagetools.errors import EnvironmentProblem, FilesystemError, ImageFormatError
from imagetools.fs import lock
from imagetools.fs.e2fsprogs import UnsafeName
from imagetools.fs.ext4 import Ext4Filesystem
from imagetools.inject import inject_key
from imagetools.layout import open_layout
from imagetools.verify import verify_image

pytestmark = pytest.mark.integration

INJECTIONS = [b'a"\n!touch pwned\n', b'b" ; !touch pwned', b"c\r!touch pwned", b'"quoted"']


def test_names_read_from_the_image_never_become_commands(make_image, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)  # where `!touch pwned` would land
    img = with_data_tree(make_image("sdimg"), hostile_tree(tmp_path / "tree", INJECTIONS + [b"plain"]))
    listed = {e.name for e in files.list_path(img, "/data/evil").entries}
    assert listed == {os.fsdecode(n) for n in INJECTIONS} | {"plain"}

    with pytest.raises(UnsafeName) as refused:
        files.remove(img, "/data/evil", recursive=True)
    assert "partition 4" in str(refused.value) and "nothing was changed" in str(refused.value)
    assert {e.name for e in files.list_path(img, "/data/evil").entries} == listed  # nothing removed
    result = cli("rm", "-r", f"{img}:/data/evil")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr

    pem = keys.private_pem(keys.generate(keys.KeySpec(type="ed25519")))
    inject_key(img, pem)
    assert verify_image(img, expected=keys.public_pem(keys.load_private(pem, "k"))).ok
    files.remove(img, "/data/evil/plain")
    assert not (tmp_path / "pwned").exists()
    data_clean(img)


def test_debugfs_listing_addresses_entries_by_inode(make_image, tmp_path):
    """The debugfs fallback lists names it could never quote, and refuses a garbled listing."""
    tree = hostile_tree(tmp_path / "tree", [b'"q"', b"sp ace", b"ok"])
    (tree / "nl").mkdir()
    (tree / "nl" / "a\nb").write_bytes(b"x")
    img = with_data_tree(make_image("sdimg"), tree)
    data = open_layout(img).require("data")
    with Ext4Filesystem(img, data.partition.start, data.partition.size) as fs:
        assert [e.name for e in fs._dbg_list("/evil")] == ['"q"', "ok", "sp ace"]
        with pytest.raises(FilesystemError, match="line break"):
            fs._dbg_list("/nl")


def test_option_like_image_file_name(make_image, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    name = "-R!touch pwned;x.sdimg"
    os.rename(make_image("sdimg"), tmp_path / name)
    files.install(name, "/data/mender/x", b"hello", mode=0o600)
    assert files.read_path(name, "/data/mender/x").data == b"hello"
    assert verify_image(name, fsck=True).check("e2fsck -fn clean on data").status == "pass"
    assert cli("cat", "--", f"{name}:/data/mender/x").stdout == "hello"
    assert not (tmp_path / "pwned").exists()


def _shrink_last_partition(img: Path, by: int) -> tuple[int, int]:
    """Make MBR entry 4 `by` bytes shorter, the filesystem in it unchanged: (new end, old end)."""
    with open(img, "r+b") as fh:
        fh.seek(446 + 3 * 16 + 8)
        start, sectors = (int.from_bytes(fh.read(4), "little") for _ in range(2))
        fh.seek(446 + 3 * 16 + 12)
        fh.write((sectors - by // 512).to_bytes(4, "little"))
    return (start + sectors) * 512 - by, (start + sectors) * 512


def _sha_range(img: Path, start: int, end: int) -> str:
    with open(img, "rb") as fh:
        fh.seek(start)
        return hashlib.sha256(fh.read(end - start)).hexdigest()


def test_filesystem_larger_than_its_partition_is_not_written(make_image, cli, tmp_path):
    img = make_image("sdimg")
    new_end, old_end = _shrink_last_partition(img, 4 << 20)
    beyond = _sha_range(img, new_end, old_end)
    whole = _sha_range(img, 0, old_end)
    with pytest.raises(ImageFormatError, match=r"spans \d+ bytes but its partition only \d+"):
        files.install(img, "/data/mender/big", os.urandom(3 << 20))
    result = cli("inject", img, "--key", _key_file(tmp_path))
    assert result.returncode == 2 and "partition only" in result.stderr, result.stderr
    assert _sha_range(img, new_end, old_end) == beyond and _sha_range(img, 0, old_end) == whole
    shown = cli("inspect", img)
    assert shown.returncode == 0 and "cannot be written to" in shown.stderr
    table = verify_image(img).check("partition table sane")
    assert table.status == "warn" and "partition only" in table.detail


def _key_file(tmp_path: Path) -> Path:
    path = tmp_path / "unit.key"
    if not path.exists():
        keys.write_secret(path, keys.private_pem(keys.generate(keys.KeySpec(type="ed25519"))))
    return path


def test_names_longer_than_ext4_allows_are_refused(make_image, cli, tmp_path):
    img = make_image("sdimg")
    before = [e.name for e in files.list_path(img, "/data/mender").entries]
    with pytest.raises(FilesystemError, match="255 bytes"):
        files.install(img, "/data/mender/" + "é" * 128, b"x")
    result = cli("install", _key_file(tmp_path), f"{img}:/data/mender/{'a' * 256}")
    assert result.returncode == 2 and "255 bytes" in result.stderr
    assert [e.name for e in files.list_path(img, "/data/mender").entries] == before
    data_clean(img)


def test_parallel_writers_take_turns(make_image, cli, tmp_path):
    img = make_image("sdimg")
    exe = Path(sys.executable).parent / "imagetools"
    sources = []
    for i in range(4):
        sources.append(tmp_path / f"f{i}")
        sources[-1].write_bytes(os.urandom(200_000))
    procs = [
        subprocess.Popen([exe, "install", src, f"{img}:/data/mender/f{i}"], stderr=subprocess.PIPE)
        for i, src in enumerate(sources)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0], [p.stderr.read() for p in procs]
    for i, src in enumerate(sources):
        assert files.read_path(img, f"/data/mender/f{i}").data == src.read_bytes()
    data_clean(img)


def test_a_second_writer_waits_then_fails_clearly(make_image, monkeypatch):
    img = make_image("sdimg")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            str(img),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(lock, "WAIT_SECONDS", 0.5)
        with pytest.raises(EnvironmentProblem, match="another imagetools process"):
            files.install(img, "/data/mender/x", b"x")
    finally:
        holder.kill()
        holder.wait()
    assert not files.list_path(img, "/data/mender").entries or "x" not in {
        e.name for e in files.list_path(img, "/data/mender").entries
    }


def test_inject_out_is_private_from_its_first_byte(make_image, tmp_path, monkeypatch):
    from imagetools import inject as inject_module

    os.umask(0o022)
    seen = []
    real = inject_module._inject

    def spy(image, *args):
        seen.append(os.stat(image).st_mode & 0o777)
        return real(image, *args)

    monkeypatch.setattr(inject_module, "_inject", spy)
    out = tmp_path / "unit.sdimg"
    inject_key(make_image("sdimg"), _key_file(tmp_path).read_bytes(), out=out)
    assert seen == [0o600] and out.stat().st_mode & 0o777 == 0o600


def test_every_file_emit_writes_is_private(make_image, tmp_path, monkeypatch):
    from imagetools import emit as emit_module
    from imagetools import personalize
    from imagetools.devices import parse_csv
    from imagetools.image import delta as delta_format

    os.umask(0o022)
    seen = []

    def spy_on(module, name, files):  # the modes of the files a key goes into, as it does
        real = getattr(module, name)

        def spy(*args):
            seen.append((name, [os.stat(p).st_mode & 0o777 for p in files(*args)]))
            return real(*args)

        monkeypatch.setattr(module, name, spy)

    spy_on(personalize, "write_key", lambda scratch, *_: (scratch, Path(scratch).parent))
    spy_on(delta_format, "apply", lambda _, image: (image, image.parent, image.parent.parent))
    devices = parse_csv("name,mac\nu1,02:00:00:00:00:01\nu2,02:00:00:00:00:02\n")
    out = tmp_path / "out"
    opts = emit_module.EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=1)
    assert emit_module.emit(make_image("sdimg"), devices, out, opts).ok
    assert seen == [("write_key", [0o600, 0o700]), ("apply", [0o600, 0o700, 0o700])] * 2
    for unit in ("u1", "u2"):
        assert (out / unit).stat().st_mode & 0o777 == 0o700
        for name in (f"{unit}.sdimg", "private.key"):
            assert (out / unit / name).stat().st_mode & 0o777 == 0o600
    assert json.loads((out / "preauth.json").read_text())[0]["name"] == "u1"
