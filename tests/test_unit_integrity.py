"""What binds a unit to its base, through the public API and the CLI: a delta and its unit.json
must name the same base; the base's SHA-256 follows its content, not its inode and size; a
unit.json from before deltas (no `format`) is an image unit; emit's resume notices a base whose
partition table changed even with its size and mtime kept."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from imagetools import keys
from imagetools.devices import load_devices
from imagetools.emit import EmitOptions, emit
from imagetools.errors import SettingsMismatch, UsageError
from imagetools.image import delta as delta_format
from imagetools.published import block_map, load_unit
from imagetools.station.plan import plan_unit
from imagetools.unitformat import UNIT_FILE, UnitRecord, batch_key, sign_unit

pytestmark = pytest.mark.integration

ED25519 = keys.KeySpec(type="ed25519")
DELTA = EmitOptions(key_spec=ED25519, jobs=1, format="delta")
IMAGE = EmitOptions(key_spec=ED25519, jobs=1)


def _devices(path: Path, count: int) -> list:
    path.write_text("name,mac\n" + "".join(f"u{i},02:00:00:00:03:{i:02x}\n" for i in range(1, count + 1)))
    return load_devices(path)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """The bmap cache of these tests is theirs alone."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def delta_batch(make_image, tmp_path):
    base = make_image("sdimg")
    out = tmp_path / "OUT"
    assert emit(base, _devices(tmp_path / "d.csv", 2), out, DELTA).ok
    return base, out


def _edit_record(unit_dir: Path, change) -> None:
    """unit.json changed and the unit signed again with its batch's own key: only what the record
    says is wrong, never its signature."""
    record = json.loads((unit_dir / UNIT_FILE).read_text())
    change(record)
    (unit_dir / UNIT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    sign_unit(unit_dir, batch_key(unit_dir.parent))


# --- a delta and its unit.json name one base -----------------------------------------------------------


def test_a_delta_naming_another_base_than_its_unit_json_is_refused(delta_batch, tmp_path, cli):
    base, out = delta_batch
    unit = out / "u1"
    path = unit / "u1.delta"
    made = delta_format.read(path)
    other = hashlib.sha256(b"another base").hexdigest()
    path.write_bytes(delta_format.Delta(made.base_size, other, made.window, made.extents).render())
    sign_unit(unit, batch_key(out))
    with pytest.raises(UsageError, match=f"made over base {other[:16]}.*unit.json says"):
        load_unit(unit)
    card = tmp_path / "card.img"
    proc = cli("flash", base, card, "--unit", unit)
    assert proc.returncode == 2 and "unit.json says" in proc.stderr, proc.stderr
    assert not card.exists()
    assert cli("materialize", unit, tmp_path / "m.sdimg", "--base", base).returncode == 2
    assert not (tmp_path / "m.sdimg").exists()


def test_a_unit_json_naming_another_base_than_its_delta_is_refused(delta_batch, tmp_path, cli):
    base, out = delta_batch
    other = hashlib.sha256(b"another base").hexdigest()
    _edit_record(out / "u2", lambda r: r.update(base_sha256=other))
    with pytest.raises(UsageError, match=f"unit.json says {other[:16]}"):
        load_unit(out / "u2")
    proc = cli("flash", base, tmp_path / "card.img", "--unit", out / "u2")
    assert proc.returncode == 2 and "unit.json says" in proc.stderr
    assert not (tmp_path / "card.img").exists()
    assert load_unit(out / "u1").delta is not None  # the other unit of the batch is unharmed


# --- the base's SHA-256 follows its content ------------------------------------------------------------


def test_a_base_edited_in_place_gets_a_new_sha256_in_the_bmap_cache(delta_batch):
    base, out = delta_batch
    first = block_map(base, use_bmap=False)
    assert first.sha256 == _sha(base) and block_map(base, use_bmap=False) == first  # cached
    plan_unit(base, out / "u1")
    st = os.stat(base)
    time.sleep(0.05)  # past the kernel's timestamp granularity: the edit gets another ctime
    mapped = first.ranges[len(first.ranges) // 2]
    with open(base, "r+b") as f:  # in place: same inode, same size
        f.seek(mapped.first * 4096)
        f.write(b"\xa5" * 64)
    os.utime(base, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the mtime put back, as cp -p or rsync -t would
    now = os.stat(base)
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    edited = block_map(base, use_bmap=False)
    assert edited.sha256 == _sha(base) != first.sha256
    with pytest.raises(UsageError, match="is not the base"):
        plan_unit(base, out / "u1")


# --- a record without `format` -------------------------------------------------------------------------


def test_a_unit_json_without_format_is_an_image_unit(make_image, tmp_path, cli):
    base = make_image("sdimg")
    out = tmp_path / "OUT"
    assert emit(base, _devices(tmp_path / "d.csv", 1), out, IMAGE).ok
    unit = out / "u1"
    _edit_record(unit, lambda r: r.pop("format"))
    assert "format" not in json.loads((unit / UNIT_FILE).read_text())
    assert UnitRecord.read(unit / UNIT_FILE).format == "image"
    loaded = load_unit(unit)
    assert loaded.delta is None and loaded.image == unit / "u1.sdimg" and loaded.image_ranges
    card = tmp_path / "card.img"
    proc = cli("flash", base, card, "--unit", unit, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["items"][0]["ok"] is True
    zipped = {**json.loads((unit / UNIT_FILE).read_text()), "format": "zip"}
    with pytest.raises(ValueError, match="'format' is 'zip', not 'image' or 'delta'"):
        UnitRecord.parse(json.dumps(zipped).encode(), "unit.json")


# --- resume and the base's partition table -------------------------------------------------------------


def test_a_base_with_another_partition_table_but_the_same_size_and_mtime_is_refused_on_resume(make_image, tmp_path):
    base = make_image("sdimg")
    out = tmp_path / "OUT"
    assert emit(base, _devices(tmp_path / "d.csv", 1), out, DELTA).ok
    again = emit(base, _devices(tmp_path / "d.csv", 1), out, DELTA)
    assert [u.status for u in again.units] == ["skipped"]  # the same base goes on
    st = os.stat(base)
    with open(base, "r+b") as f:  # the MBR's disk identifier: another partition table, nothing else
        f.seek(440)
        old = f.read(4)
        f.seek(440)
        f.write(bytes(b ^ 0xFF for b in old))
    os.utime(base, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(base).st_size, os.stat(base).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SettingsMismatch, match="the base image differs"):
        emit(base, _devices(tmp_path / "d2.csv", 2), out, DELTA)
    assert sorted(p.name for p in out.iterdir()) == before
