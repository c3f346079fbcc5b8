"""The card gets exactly its unit: signed units, deltas bound to the base, targets that can never
be the base or an input, one unit per card, every attempt in the ledger, cards read back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.inputs import devices_csv, random_file
from support.tools import run_tool

from imagetools import keys
from imagetools.devices import load_devices
from imagetools.emit import EmitOptions, emit
from imagetools.errors import ImageFormatError, UsageError
from imagetools.image import delta as delta_format
from imagetools.image import read_image
from imagetools.layout import open_layout
from imagetools.published import block_map, bound_to_base, load_unit, materialize
from imagetools.station import flash as station
from imagetools.station.ledger import open_ledger
from imagetools.station.plan import plan_key, plan_unit
from imagetools.unitformat import BATCH_KEY, BATCH_PUB, sign_unit

pytestmark = pytest.mark.integration

DELTA = EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=1, format="delta")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def batch(make_image, tmp_path):
    """A base and an OUT of three signed delta units."""
    base = make_image("sdimg")
    out = tmp_path / "OUT"
    assert emit(base, load_devices(devices_csv(tmp_path / "d.csv", 3)), out, DELTA).ok
    return base, out


def test_a_card_is_written_read_back_verified_and_recorded(batch, tmp_path, cli):
    base, out = batch
    card = random_file(tmp_path / "card.img", base.stat().st_size)
    proc = cli("flash", base, card, "--unit", out / "u1", "--json", "--log", tmp_path / "log.jsonl")
    assert proc.returncode == 0, proc.stderr
    [item] = json.loads(proc.stdout)["items"]
    assert item["state"] == "passed" and item["ok"] and item["unit"] == "u1" and not item["pinned"]
    assert {c["id"] for c in item["checks"]} and all("status" in c for c in item["checks"])
    assert "readback" in item["times"] and item["base_sha256"] == load_unit(out / "u1").base_sha256
    assert json.loads((tmp_path / "log.jsonl").read_text()) == item  # the export is the ledger's record
    with open_ledger(out / "ledger.sqlite") as ledger:
        assert ledger.unit_state(item["fingerprint"]) == "passed"
    again = cli("flash", base, card, "--unit", out / "u1")
    assert again.returncode == 2 and "--again" in again.stderr
    assert cli("flash", base, card, "--unit", out / "u1", "--again").returncode == 0
    assert os.stat(card).st_mode & 0o777 == 0o600


def test_one_unit_goes_onto_one_card(batch, tmp_path, cli):
    base, out = batch
    cards = [tmp_path / "a.img", tmp_path / "b.img"]
    proc = cli("flash", base, *cards, "--unit", out / "u1")
    assert proc.returncode == 2 and "one unit goes onto one card" in proc.stderr
    assert not any(c.exists() for c in cards)
    same = cli("flash", base, "--card", cards[0], out / "u1", "--card", cards[1], out / "u1")
    assert same.returncode == 2 and "one unit goes onto one card" in same.stderr
    paired = cli("flash", base, "--card", cards[0], out / "u1", "--card", cards[1], out / "u2", "--json")
    assert paired.returncode == 0, paired.stderr
    items = json.loads(paired.stdout)["items"]
    assert [(i["target"], i["unit"]) for i in items] == [(str(cards[0]), "u1"), (str(cards[1]), "u2")]


def test_a_changed_unit_is_refused_before_anything_is_written(batch, tmp_path, cli):
    base, out = batch
    card = random_file(tmp_path / "card.img", base.stat().st_size)
    before = _sha(card)
    record = out / "u1" / "unit.json"
    record.write_text(record.read_text().replace('"u1"', '"u1x"', 1))
    proc = cli("flash", base, card, "--unit", out / "u1")
    assert proc.returncode == 2 and "changed after emit signed it" in proc.stderr
    # a delta rewritten with a recomputed trailing checksum: the signature still catches it
    path = out / "u2" / "u2.delta"
    blob = bytearray(path.read_bytes()[:-32])
    blob[-1] ^= 1
    path.write_bytes(bytes(blob) + hashlib.sha256(blob).digest())
    proc = cli("flash", base, card, "--unit", out / "u2")
    assert proc.returncode == 2 and "signed" in proc.stderr
    (out / "u3" / "unit.sig").unlink()
    proc = cli("flash", base, card, "--unit", out / "u3")
    assert proc.returncode == 2 and "no signature" in proc.stderr
    assert _sha(card) == before and proc.stderr.count("\n") == 1


def test_a_pinned_batch_key_refuses_a_unit_re_signed_with_another(batch, tmp_path, cli):
    base, out = batch
    pinned = tmp_path / "batch.pub"
    shutil.copy(out / BATCH_PUB, pinned)
    card = tmp_path / "card.img"
    forged = tmp_path / "FORGED"
    forged.mkdir()
    shutil.copytree(out / "u1", forged / "u1")
    from imagetools.unitformat import batch_key

    sign_unit(forged / "u1", batch_key(forged))  # a whole new OUT: its own batch key
    assert cli("flash", base, card, "--unit", forged / "u1", "--ledger", tmp_path / "l.sqlite").returncode == 0
    proc = cli(
        "flash",
        base,
        tmp_path / "c2.img",
        "--unit",
        forged / "u1",
        "--trust",
        pinned,
        "--again",
        "--ledger",
        tmp_path / "l.sqlite",
    )
    assert proc.returncode == 2 and "not by" in proc.stderr and not (tmp_path / "c2.img").exists()
    ok = cli("flash", base, tmp_path / "c3.img", "--unit", out / "u2", "--trust", pinned, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["items"][0]["pinned"] is True
    assert (out / BATCH_KEY).stat().st_mode & 0o777 == 0o600
    assert not any(BATCH_KEY in p.name for p in out.rglob("*") if p.parent != out)


def test_a_delta_is_bound_to_the_base_data_partition(batch):
    base, out = batch
    unit = load_unit(out / "u1")
    base_map = block_map(base)
    layout = open_layout(base)
    rootfs = layout.require("rootfs-a").partition
    evil = delta_format.Delta(
        unit.delta.base_size, unit.delta.base_sha256, (rootfs.start, rootfs.end), ((rootfs.start, bytes(4096)),)
    )
    with pytest.raises(UsageError, match="not the data partition"):
        bound_to_base(evil, base, base_map, "evil")
    bigger = delta_format.Delta(unit.delta.base_size * 2, unit.delta.base_sha256, unit.delta.window, unit.delta.extents)
    with pytest.raises(UsageError, match="made over a base of"):
        bound_to_base(bigger, base, base_map, "bigger")
    huge = delta_format.Delta(
        1 << 63, unit.delta.base_sha256, ((1 << 62), (1 << 62) + 8192), (((1 << 62), bytes(4096)),)
    )
    with pytest.raises(UsageError):
        bound_to_base(huge, base, base_map, "huge")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, 1 << 24),
    length=st.integers(1, 64),
    extra=st.integers(0, 1 << 40),
    claim=st.integers(0, 1 << 41),
)
def test_nothing_a_delta_says_writes_outside_the_data_partition(batch, start, length, extra, claim):
    base, out = batch
    base_map = block_map(base)
    data = open_layout(base).require("data").partition
    w0 = start * 4096
    window = (w0, w0 + (length + extra // 4096) * 4096)
    try:
        delta = delta_format.Delta(claim or base_map.size, base_map.sha256, window, ((w0, bytes(length * 4096)),))
        delta_format.parse(delta.render())
        bound_to_base(delta, base, base_map, "random")
    except (UsageError, ImageFormatError):
        return
    assert all(data.start <= off and off + len(blob) <= data.end for off, blob in delta.extents)


def test_the_base_and_the_inputs_are_never_targets(batch, tmp_path, cli):
    base, out = batch
    before = _sha(base)
    link = tmp_path / "link.img"
    link.symlink_to(base)
    hard = tmp_path / "hard.img"
    os.link(base, hard)
    for target in (base, link, hard, out / "u1" / "u1.delta", out / "ledger.sqlite"):
        proc = cli("flash", base, target, "--unit", out / "u1")
        assert proc.returncode == 2, (target, proc.stderr)
    assert _sha(base) == before and read_image(base)
    with open_ledger(out / "ledger.sqlite") as ledger:
        assert ledger.unit_state(load_unit(out / "u1").fingerprint) == "free"
    proc = cli("materialize", out / "u1", base, "--base", base, "--force")
    assert proc.returncode == 2 and _sha(base) == before


def test_paths_inside_a_unit_are_not_followed(batch, tmp_path, cli):
    base, out = batch
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only\n")
    delta = out / "u1" / "u1.delta"
    delta.rename(tmp_path / "moved.delta")
    delta.symlink_to(tmp_path / "moved.delta")
    proc = cli("flash", base, tmp_path / "card.img", "--unit", out / "u1")
    assert proc.returncode == 2 and "symbolic link" in proc.stderr and not (tmp_path / "card.img").exists()
    state = out / ".imagetools-emit.json"
    data = json.loads(state.read_text())
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data["base"]["path"] = str(fifo)
    state.write_text(json.dumps(data))
    proc = cli("materialize", out / "u2", tmp_path / "m.img")
    assert proc.returncode == 2 and "FIFO" in proc.stderr
    nested = out / "u3" / "unit.sig"
    nested.write_text("[" * 20000 + "]" * 20000)
    proc = cli("flash", base, tmp_path / "c.img", "--unit", out / "u3")
    assert proc.returncode == 2 and "nested" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_answers_every_request_even_a_hostile_one(batch, tmp_path, cli):
    base, out = batch
    cards = [tmp_path / f"c{i}.img" for i in range(3)]
    requests = [
        {"cards": [{"target": str(cards[0]), "unit": str(out / "u1")}]},
        "[" * 20000 + "]" * 20000,
        {"targets": [str(cards[1]), str(cards[2])], "unit": str(out / "u2")},
        {"cards": [{"target": str(cards[1]), "unit": str(out / "u2")}], "again": "yes"},
        {"cards": [{"target": str(base), "unit": str(out / "u2")}]},
        {
            "cards": [
                {"target": str(cards[1]), "unit": str(out / "u2")},
                {"target": str(cards[2]), "unit": str(out / "u3")},
            ]
        },
    ]
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    proc = cli("flash", base, "--serve", input=text)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    replies = [r for r in lines if "progress" not in r]
    assert [r["request"] for r in replies] == [1, 2, 3, 4, 5, 6]
    assert [r["ok"] for r in replies] == [True, False, False, False, False, True]
    assert "nested" in replies[1]["error"] and "one card" in replies[2]["error"]
    assert '"again"' in replies[3]["error"]
    assert any("progress" in r and r["progress"]["phase"] == "writing" for r in lines)
    assert read_image(base)


def test_a_failed_card_retires_its_unit(batch, tmp_path):
    base, out = batch
    plan = plan_unit(base, out / "u1")
    victim = plan.ranges[len(plan.ranges) // 2]
    card = tmp_path / "card.img"
    with open(base, "r+b") as f:  # the base changes after its map was cached: like a bad read
        f.seek(victim.first * 4096)
        f.write(b"\xff" * 16)
    [record] = station.flash([(str(card), plan)])
    assert record["state"] == "failed" and "checksum" in record["error"]
    with pytest.raises(ImageFormatError):
        read_image(card)  # never a card that looks finished
    with pytest.raises(UsageError, match="retired"):
        station.flash([(str(card), plan)], again=True)


def test_a_key_on_the_fly_is_named_by_its_unit_directory(make_image, tmp_path):
    base = make_image("gptimg")
    unit = tmp_path / "OUT" / "unit7"
    unit.mkdir(parents=True)
    key = unit / "private.key"
    keys.write_secret(key, keys.private_pem(keys.generate(keys.KeySpec(type="ed25519")), "pkcs8"))
    card = random_file(tmp_path / "card", base.stat().st_size)
    [record] = station.flash([(str(card), plan_key(base, key))])
    assert record["ok"], record["error"]
    assert record["unit"] == "unit7"


def test_materialize_checks_the_signature_and_keeps_the_base(batch, tmp_path):
    base, out = batch
    image = tmp_path / "u1.sdimg"
    assert materialize(out / "u1", image, base).ok
    assert (image.stat().st_mode & 0o777) == 0o600
    for layout_part in ("rootfs-a", "data"):
        part = open_layout(image).require(layout_part).partition
        run_tool("e2fsck", "-fn", f"{image}?offset={part.start}")


def test_refusals_leave_no_target_open_and_nothing_written(batch, tmp_path):
    """A station that stays up must not keep a card open after refusing a request."""
    base, out = batch
    small = tmp_path / "small.img"
    small.write_bytes(b"x")
    os.chmod(small, 0o644)
    before = sorted(os.listdir("/proc/self/fd"))
    plans = [(str(tmp_path / "new.img"), plan_unit(base, out / "u1")), (str(small), plan_unit(base, out / "u2"))]
    with pytest.raises(UsageError, match="larger card"):
        station.flash(plans)
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert small.read_bytes() == b"x" and small.stat().st_mode & 0o777 == 0o644
    assert not (tmp_path / "new.img").exists()
    with pytest.raises(UsageError, match="is not the base"):
        plan_unit(make_other_base(tmp_path, base), out / "u1")
    link = tmp_path / "card-link.img"
    link.symlink_to(tmp_path / "card.img")
    with pytest.raises(UsageError):
        station.flash(
            [
                (str(tmp_path / "card.img"), plan_unit(base, out / "u1")),
                (str(tmp_path / "./card.img"), plan_unit(base, out / "u2")),
            ]
        )
    with open_ledger(out / "ledger.sqlite") as ledger:
        assert {r["state"] for r in ledger.records()} == {"refused"}


def make_other_base(tmp_path: Path, base: Path) -> Path:
    """The base with one byte of its boot gap changed: same size, another SHA-256."""
    other = tmp_path / "other.sdimg"
    shutil.copy(base, other)
    with open(other, "r+b") as f:
        f.seek(1 << 20)
        f.write(b"\x01")
    return other


def test_verify_base_reads_a_card_back_at_a_qa_station(batch, tmp_path, cli):
    base, out = batch
    card = tmp_path / "card.img"
    assert cli("flash", base, card, "--unit", out / "u1").returncode == 0
    ok = cli("verify", card, "--base", base, "--unit", out / "u1", "--no-fsck", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["read_back"] > 0
    rootfs = open_layout(base).require("rootfs-a").partition
    with open(card, "r+b") as f:  # 8 MiB of noise in rootfs A: the table, key and fsck checks miss it
        f.seek(rootfs.start + (rootfs.end - rootfs.start) // 2)
        f.write(os.urandom(8 << 20))
    bad = cli("verify", card, "--base", base, "--unit", out / "u1", "--no-fsck")
    assert bad.returncode == 1 and "read back differently" in bad.stderr
