"""What a plan holds, the edges scripts/mutation found untested in imagetools.station.plan: every
field of a delta, an image and a key plan, the bytes it sends, the refusals' exact messages, the
unit a bare key file stands for, and the must-zero cache that follows the source's identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.images import build_image
from support.tools import run_tool

from imagetools import keys
from imagetools.bmap import BlockRange
from imagetools.devices import load_devices
from imagetools.emit import EmitOptions, emit
from imagetools.errors import KeyMaterialError, UsageError
from imagetools.image import delta as delta_format
from imagetools.layout import open_layout
from imagetools.published import block_map, load_unit
from imagetools.station import plan as station_plan
from imagetools.station.plan import BLOCK, LEDGER_FILE, key_unit_name, plan_key, plan_unit
from imagetools.station.zeroing import must_zero
from imagetools.unitformat import BATCH_PUB, batch_key, sign_unit

pytestmark = pytest.mark.integration

SMALL = {"rootfs_mib": 16, "data_mib": 16}
ED25519 = keys.KeySpec(type="ed25519")


def _emit(base: Path, out: Path, **options) -> Path:
    devices = out.parent / f"{out.name}.csv"
    devices.write_text("name,mac\nu1,02:00:00:00:01:01\n")
    assert emit(base, load_devices(devices), out, EmitOptions(key_spec=ED25519, jobs=1, **options)).ok
    return out / "u1"


@pytest.fixture(scope="module")
def made(image_cache, tmp_path_factory) -> dict[str, Path]:
    """One small base, and a delta unit, an image unit and an image unit without bmap over it."""
    where = tmp_path_factory.mktemp("plan")
    base = where / "base.sdimg"
    subprocess.run(["cp", "--sparse=always", str(build_image(image_cache, "sdimg", SMALL)), str(base)], check=True)
    return {
        "base": base,
        "delta": _emit(base, where / "DELTA", format="delta"),
        "image": _emit(base, where / "IMAGE"),
        "nobmap": _emit(base, where / "NOBMAP", bmap=False),
    }


def _copy_out(unit_dir: Path, where: Path) -> Path:
    """The unit's whole OUT copied (its batch.pub beside it), sparse: the copy's unit directory."""
    subprocess.run(["cp", "-a", "--sparse=always", str(unit_dir.parent), str(where)], check=True)
    return where / unit_dir.parent.name / unit_dir.name


def _refusal(call, *args) -> str:
    with pytest.raises(UsageError) as refused:
        call(*args)
    return str(refused.value)


def test_a_delta_plan_is_the_base_s_map_with_the_unit_s_blocks_over_it(made):
    base, unit_dir = made["base"], made["delta"]
    plan = plan_unit(base, unit_dir)
    base_map, unit = block_map(base), load_unit(unit_dir)
    needs = must_zero(str(base), base_map.ranges, base_map.size)
    assert (plan.source, plan.size, plan.ranges) == (str(base), base.stat().st_size, base_map.ranges)
    assert plan.patches == unit.delta.extents and plan.patches
    assert plan.unit.fingerprint == unit.fingerprint and plan.unit.name == "u1"
    assert (plan.zeros, plan.journals) == (needs.zeros, needs.journals) and plan.zeros and plan.journals
    assert plan.inputs == (str(base), *(str(unit_dir / n) for n in sorted(os.listdir(unit_dir))))
    assert plan.ledger == str(unit_dir.resolve().parent / LEDGER_FILE)


def test_an_image_plan_is_the_unit_s_image_and_its_signed_bmap(made, tmp_path):
    unit_dir = _copy_out(made["image"], tmp_path)
    unit = load_unit(unit_dir)
    with open(unit.image, "ab") as f:  # bytes past the recorded size: the signed size is what is sent
        f.write(b"tail")
    plan = plan_unit(made["base"], unit_dir)
    needs = must_zero(str(unit.image), unit.image_ranges, unit.record.image_size)
    assert (plan.source, plan.size) == (str(unit.image), unit.record.image_size)
    assert plan.size == os.stat(unit.image).st_size - 4
    assert plan.ranges == unit.image_ranges and plan.patches == ()
    assert (plan.zeros, plan.journals) == (needs.zeros, needs.journals) and plan.zeros
    assert plan.inputs[0] == str(made["base"]) and plan.ledger == str(unit_dir.parent / LEDGER_FILE)
    assert (plan.unit.name, plan.unit.fingerprint) == (unit.name, unit.fingerprint)


def test_an_image_without_bmap_is_mapped_from_itself_never_from_an_unsigned_bmap(made, tmp_path):
    unit_dir = _copy_out(made["nobmap"], tmp_path)
    unit = load_unit(unit_dir)
    assert unit.image_ranges is None
    own = block_map(unit.image, use_bmap=False)
    forged = own.ranges[0]
    Path(f"{unit.image}.bmap").write_text(  # an unsigned bmap beside the image: never read
        f'<bmap><BlockSize>4096</BlockSize><Range chksum="{forged.sha256}">{forged.first}</Range></bmap>'
    )
    plan = plan_unit(made["base"], unit_dir)
    assert plan.ranges == own.ranges and plan.size == own.size == unit.record.image_size
    with open(unit.image, "r+b") as f:  # one mapped byte altered: its SHA-256 no longer the signed one
        f.seek(own.ranges[-1].first * BLOCK)
        byte = f.read(1)
        f.seek(own.ranges[-1].first * BLOCK)
        f.write(bytes([byte[0] ^ 1]))
    assert _refusal(plan_unit, made["base"], unit_dir) == (
        f"{unit.image} has no signed bmap and does not match the SHA-256 its unit.json records "
        f"({unit.record.image_sha256[:16]}...): the unit is damaged or was altered; emit it again"
    )


def test_a_signed_image_unit_with_neither_bmap_nor_sha256_is_refused(made, tmp_path):
    unit_dir = _copy_out(made["nobmap"], tmp_path)
    record = json.loads((unit_dir / "unit.json").read_text())
    del record["image_sha256"]
    (unit_dir / "unit.json").write_text(json.dumps(record))
    sign_unit(unit_dir, batch_key(unit_dir.parent))  # signed by its batch: only the record says too little
    image = load_unit(unit_dir).image
    assert _refusal(plan_unit, made["base"], unit_dir) == (
        f"{image} has no signed bmap and does not match the SHA-256 its unit.json records "
        "(none...): the unit is damaged or was altered; emit it again"
    )


def test_a_signed_delta_outside_the_data_partition_is_refused_naming_its_unit(made, tmp_path):
    unit_dir = _copy_out(made["delta"], tmp_path)
    unit = load_unit(unit_dir)
    rootfs = open_layout(made["base"]).require("rootfs-a").partition
    data = open_layout(made["base"]).require("data").partition
    evil = delta_format.Delta(
        unit.delta.base_size, unit.delta.base_sha256, (rootfs.start, rootfs.end), ((rootfs.start, bytes(4096)),)
    )
    blob = evil.render()
    (unit_dir / "u1.delta").write_bytes(blob)
    record = json.loads((unit_dir / "unit.json").read_text())
    if "image_sha256" in record:
        record["image_sha256"] = hashlib.sha256(blob).hexdigest()
    (unit_dir / "unit.json").write_text(json.dumps(record))
    sign_unit(unit_dir, batch_key(unit_dir.parent))
    assert _refusal(plan_unit, made["base"], unit_dir) == (
        f"{unit_dir}: its window {rootfs.start}-{rootfs.end} is not the data partition of {made['base']} "
        f"({data.start}-{data.end}): refused, it could write anywhere on the card"
    )


def test_a_unit_over_another_base_is_refused_naming_both_checksums(made, tmp_path):
    other = tmp_path / "other.sdimg"
    shutil.copy(made["base"], other)
    with open(other, "r+b") as f:
        f.seek(1 << 20)
        f.write(b"\x01")
    unit_dir = made["delta"]
    ours, theirs = block_map(other).sha256, load_unit(unit_dir).base_sha256
    assert _refusal(plan_unit, other, unit_dir) == (
        f"{other} (sha256 {ours[:16]}...) is not the base {unit_dir} was made from (sha256 {theirs[:16]}...)"
    )


def test_a_trusted_batch_key_is_checked(made, tmp_path):
    unit_dir = made["delta"]
    assert plan_unit(made["base"], unit_dir, unit_dir.parent / BATCH_PUB).unit.pinned
    assert not plan_unit(made["base"], unit_dir).unit.pinned
    stranger = tmp_path / "stranger.pub"
    stranger.write_bytes(keys.public_pem(keys.generate(ED25519).public_key()))
    with pytest.raises(UsageError):
        plan_unit(made["base"], unit_dir, stranger)


def test_the_bytes_sent_are_the_mapped_blocks_cut_at_the_end_the_patches_and_the_zeros(made):
    plan = plan_unit(made["base"], made["delta"])
    shaped = dataclasses.replace(
        plan,
        size=5 * BLOCK + 100,
        ranges=(BlockRange(0, 1, "0" * 64), BlockRange(3, 7, "0" * 64)),
        patches=((0, b"abc"), (9000, b"defgh")),
        zeros=((10, 30), (100, 101)),
    )
    assert shaped.total == 2 * BLOCK + (2 * BLOCK + 100) + 8 + 21
    assert dataclasses.replace(plan, patches=(), zeros=()).total == sum(
        min((r.last + 1) * BLOCK, plan.size) - r.first * BLOCK for r in plan.ranges
    )


def test_a_key_plan_injects_the_key_over_the_base(made, tmp_path):
    base = made["base"]
    unit = tmp_path / "OUT" / "unit7"
    unit.mkdir(parents=True)
    key = unit / "private.key"
    private = keys.generate(ED25519)
    keys.write_secret(key, keys.private_pem(private, "pkcs8"))
    plan = plan_key(base, key)
    base_map = block_map(base)
    needs = must_zero(str(base), base_map.ranges, base_map.size)
    assert (plan.source, plan.size, plan.ranges) == (str(base), base_map.size, base_map.ranges)
    assert plan.unit.name == "unit7" and plan.unit.fingerprint == keys.fingerprint(private)
    assert plan.unit.base_sha256 == plan.unit.delta.base_sha256 == base_map.sha256
    assert plan.unit.delta.extents == plan.patches and plan.patches
    assert keys.fingerprint(plan.unit.public_key) == keys.fingerprint(private)
    assert (plan.zeros, plan.journals) == (needs.zeros, needs.journals)
    assert plan.inputs == (str(base), str(key)) and plan.ledger == str(unit / LEDGER_FILE)


def test_a_key_file_that_cannot_be_used_is_refused_naming_it(made, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tmp_path / "k.pem"
    with pytest.raises(KeyMaterialError) as refused:
        plan_key(made["base"], key)
    assert str(refused.value) == f"private key {key} not found"
    key.write_text("not a key\n")
    with pytest.raises(KeyMaterialError) as refused:
        plan_key(made["base"], key)
    assert str(refused.value).startswith(f"{key}: not a PEM private key")
    key.unlink()
    keys.write_secret(key, keys.private_pem(ec.generate_private_key(ec.SECP256K1()), "pkcs8"))
    with pytest.raises(KeyMaterialError) as refused:
        plan_key(made["base"], key)
    assert str(refused.value).startswith(f"{key}: ECDSA curve secp256k1 is not loaded by the Mender client; use one of")


def test_a_key_plan_over_a_data_partition_that_fails_e2fsck_is_refused(made, tmp_path):
    base = tmp_path / "base.sdimg"
    subprocess.run(["cp", "--sparse=always", str(made["base"]), str(base)], check=True)
    data = open_layout(base).require("data").partition
    run_tool("debugfs", "-w", "-R", "sif <2> links_count 9", f"{base}?offset={data.start}")  # the root's count
    assert _refusal(plan_key, base, _key(tmp_path)).startswith(
        f"{base}: the data partition with the key injected fails e2fsck: errors found: Pass 1"
    )


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("OUT/u5/private.key", "u5"),
        ("OUT/u5/private", "u5"),
        ("OUT/u5/private.key.pem", "u5"),
        ("OUT/u5/other.key", "other"),
        ("OUT/u5/privates.key", "privates"),
        ("private.key", "private"),
    ],
)
def test_a_bare_key_file_stands_for_its_unit_directory(tmp_path, monkeypatch, path, name):
    monkeypatch.chdir(tmp_path)
    assert key_unit_name(Path(path)) == name


def test_the_zeros_follow_the_source_s_identity_and_only_one_is_kept(made, tmp_path):
    base = tmp_path / "base.sdimg"
    subprocess.run(["cp", "--sparse=always", str(made["base"]), str(base)], check=True)
    first = plan_unit(base, made["delta"])
    assert len(station_plan._needs_cache) == 1
    copy = tmp_path / "copy.sdimg"
    subprocess.run(["cp", "--sparse=always", str(base), str(copy)], check=True)
    plan_key(copy, _key(tmp_path))
    assert len(station_plan._needs_cache) == 1  # a station plans card after card: one entry, not one a base
    data = open_layout(base).require("data").partition
    st = os.stat(base)
    with open(base, "r+b") as f:  # the data filesystem's magic gone: all of its holes need zeroing now
        f.seek(data.start + 1024 + 0x38)
        f.write(b"\0\0")
    os.utime(base, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime, a new ctime
    assert os.stat(base).st_size == st.st_size and os.stat(base).st_mtime_ns == st.st_mtime_ns
    again = station_plan._needs(str(base), first.ranges, first.size)
    assert again == must_zero(str(base), first.ranges, first.size) and again.zeros != first.zeros


def _key(where: Path) -> Path:
    key = where / "k.pem"
    keys.write_secret(key, keys.private_pem(keys.generate(ED25519), "pkcs8"))
    return key
