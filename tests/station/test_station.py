"""Units as deltas over one base, materialize, the flashing station, shards and preauth merge."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from support.inputs import devices_csv
from support.tools import run_tool

from imagetools import keys
from imagetools.devices import load_devices
from imagetools.emit import EmitOptions, emit, shard
from imagetools.errors import DeviceListError, ImageFormatError
from imagetools.image import delta as delta_format
from imagetools.layout import open_layout
from imagetools.merge import merge
from imagetools.published import materialize, verify_unit

pytestmark = pytest.mark.integration

DELTA = EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=2, format="delta")


def _mapped_equal(a: Path, b: Path, start: int, end: int) -> bool:
    """The bytes of a's data extents within [start, end) are the same in b."""
    from imagetools.sparse import data_ranges

    with open(a, "rb") as fa, open(b, "rb") as fb:
        for s, e in data_ranges(fa.fileno(), os.fstat(fa.fileno()).st_size):
            s, e = max(s, start), min(e, end)
            if s < e and os.pread(fa.fileno(), e - s, s) != os.pread(fb.fileno(), e - s, s):
                return False
    return True


@pytest.mark.parametrize(
    "layout,opts", [("sdimg", {}), ("uefiimg", {}), ("extended", {}), ("sdimg", {"empty_rootfs_b": True})]
)
def test_delta_units_verify_through_overlay_and_materialize(make_image, tmp_path, layout, opts):
    base = make_image(layout, **opts)
    base_sha = hashlib.sha256(base.read_bytes()).hexdigest()
    out = tmp_path / "OUT"
    result = emit(base, load_devices(devices_csv(tmp_path / "d.csv", 2)), out, DELTA)
    assert result.ok and result.count("emitted") == 2
    unit_dir = out / "u1"
    record = json.loads((unit_dir / "unit.json").read_text())
    assert record["format"] == "delta" and record["base_sha256"] == base_sha
    assert (unit_dir / "u1.delta").stat().st_size < 128 * 1024
    assert (unit_dir / "u1.delta").stat().st_mode & 0o777 == 0o600
    report = verify_unit(unit_dir, base)
    assert report.ok and report.check("e2fsck -fn clean on data").status == "pass"
    image = tmp_path / f"u1{base.suffix}"
    assert materialize(unit_dir, image, base).ok
    assert image.stat().st_mode & 0o777 == 0o600
    data = open_layout(image).require("data")
    assert data.fsck(image)[0]
    card = tmp_path / "card.img"
    run_tool("bmaptool", "copy", "--bmap", f"{image}.bmap", str(image), str(card))
    assert card.read_bytes() == image.read_bytes()
    assert hashlib.sha256(base.read_bytes()).hexdigest() == base_sha  # the base is untouched


def test_a_reused_scratch_starts_every_unit_from_the_base(make_image, tmp_path):
    """Units after the first are taken from the same scratch: each must see the base alone,
    never the previous unit's key, and match a delta taken from a fresh scratch."""
    from imagetools.emit.unit import DATA_KEY_PATH
    from imagetools.personalize import Scratch

    base = make_image("sdimg")
    data = open_layout(base).require("data")
    window = (data.partition.start, data.partition.end)
    pems = [keys.private_pem(keys.generate(keys.KeySpec(type="ed25519"))) for _ in range(3)]
    scratch = Scratch(base, data, tmp_path)
    deltas = []
    for pem in pems:
        delta, fsck = scratch.delta(pem, DATA_KEY_PATH, "0" * 64)
        assert fsck.status == "pass"
        assert _mapped_equal(base, scratch.path, *window) and _mapped_equal(scratch.path, base, *window)
        deltas.append(delta)
    (tmp_path / "fresh").mkdir()
    fresh, _ = Scratch(base, data, tmp_path / "fresh").delta(pems[2], DATA_KEY_PATH, "0" * 64)
    assert [(o, len(d)) for o, d in deltas[2].extents] == [(o, len(d)) for o, d in fresh.extents]
    blob = deltas[2].render()
    assert pems[2] in blob and pems[0] not in blob and pems[1] not in blob


def test_one_worker_emits_delta_units_one_after_another(make_image, tmp_path):
    base = make_image("sdimg")
    out = tmp_path / "OUT"
    result = emit(
        base,
        load_devices(devices_csv(tmp_path / "d.csv", 3)),
        out,
        EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=1, format="delta"),
    )
    assert result.ok and result.count("emitted") == 3
    for name in ("u1", "u2", "u3"):
        assert verify_unit(out / name, base).ok
        image = tmp_path / f"{name}{base.suffix}"
        assert materialize(out / name, image, base).ok
        assert open_layout(image).require("data").fsck(image)[0]


def test_hostile_deltas_are_refused(make_image, tmp_path):
    base = make_image("sdimg")
    out = tmp_path / "OUT"
    emit(base, load_devices(devices_csv(tmp_path / "d.csv", 1)), out, DELTA)
    path = out / "u1" / "u1.delta"
    blob = path.read_bytes()
    with pytest.raises(ImageFormatError, match="checksum"):
        delta_format.parse(blob[:-40] + blob[-32:])
    good = delta_format.parse(blob)
    outside = delta_format.Delta(
        good.base_size, good.base_sha256, good.window, ((0, bytes(4096)),)
    )  # the partition table
    with pytest.raises(ImageFormatError, match="outside the window"):
        outside.render()
    with pytest.raises(ImageFormatError, match="not an imagetools delta"):
        delta_format.parse(b"x" * 200)


def test_shards_partition_the_list_and_merge_refuses_duplicates(make_image, tmp_path, cli):
    devices = load_devices(devices_csv(tmp_path / "d.csv", 40))
    slices = [shard(devices, k, 4) for k in range(1, 5)]
    names = [d.name for s in slices for d in s]
    assert sorted(names) == sorted(d.name for d in devices) and len(names) == len(set(names))
    assert [d.name for d in shard(list(reversed(devices)), 2, 4)] == [d.name for d in reversed(slices[1])]
    base = make_image("sdimg")
    csv = tmp_path / "d4.csv"
    devices_csv(csv, 4)
    for k in (1, 2):
        proc = cli(
            "emit",
            "--base",
            base,
            "--devices",
            csv,
            "--out-dir",
            tmp_path / f"S{k}",
            "--format",
            "delta",
            "--key-type",
            "ed25519",
            "--shard",
            f"{k}/2",
        )
        assert proc.returncode == 0, proc.stderr
    merged = cli("preauth", "merge", tmp_path / "S1", tmp_path / "S2", "-o", tmp_path / "all.json")
    assert merged.returncode == 0, merged.stderr
    assert sorted(u["name"] for u in json.loads((tmp_path / "all.json").read_text())) == ["u1", "u2", "u3", "u4"]
    with pytest.raises(DeviceListError, match="same name"):
        merge([tmp_path / "S1/preauth.json", tmp_path / "S1/preauth.json"], tmp_path / "dup.json")
    assert not (tmp_path / "dup.json").exists()
