"""Batch emission on real images: every unit verified, bmaptool-flashable, atomic and resumable."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.inputs import devices_csv
from support.tools import ROOT, run_tool

from imagetools import bmap, keys
from imagetools.devices import load_devices, parse_csv
from imagetools.emit import LOCK_FILE, STATE_FILE, EmitOptions, emit, runner
from imagetools.errors import EnvironmentProblem, SettingsMismatch, UsageError
from imagetools.station.plan import plan_unit
from imagetools.unitformat import BATCH_KEY, BATCH_PUB
from imagetools.verify import verify_image

pytestmark = pytest.mark.integration

ED25519 = EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=2)
BATCH_FILES = {"preauth.json", "preauth.csv", "report.json"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fingerprints(out: Path) -> dict[str, str]:
    return {
        d.name: json.loads((d / "unit.json").read_text())["fingerprint"]
        for d in (out.iterdir() if out.exists() else ())
        if (d / "unit.json").exists()
    }


def _assert_clean(out: Path, names: set[str]) -> None:
    """Only published units, the batch files and emit's state remain: no temporaries."""
    assert {p.name for p in out.iterdir()} == names | BATCH_FILES | {STATE_FILE, LOCK_FILE, BATCH_KEY, BATCH_PUB}


@pytest.mark.parametrize("layout", ["sdimg", "uefiimg", "extended"])
def test_batch_across_layouts_verifies_and_flashes(make_image, cli, tmp_path, layout):
    base = make_image(layout, empty_rootfs_b=True)
    before = _sha256(base)
    devices = devices_csv(tmp_path / "devices.csv", 2, serials=True)
    out = tmp_path / "out"
    res = cli(
        "emit", "--base", base, "--devices", devices, "--out-dir", out, "--key-type", "ed25519", "--jobs", "2", "--json"
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["summary"] == {"emitted": 2, "skipped": 0, "failed": 0}
    assert _sha256(base) == before
    _assert_clean(out, {"u1", "u2"})
    preauth = json.loads((out / "preauth.json").read_text())
    assert [p["identity_data"] for p in preauth] == [
        {"mac": "02:00:00:00:00:01", "sn": "SN0001"},
        {"mac": "02:00:00:00:00:02", "sn": "SN0002"},
    ]
    for unit, record in zip(report["items"], preauth):
        unit_dir = out / unit["name"]
        image = unit_dir / f"{unit['name']}{base.suffix}"
        assert sorted(p.name for p in unit_dir.iterdir()) == sorted(
            [image.name, f"{image.name}.bmap", "public.key", "private.key", "identity.json", "unit.json", "unit.sig"]
        )
        verified = cli("verify", "--pubkey", unit_dir / "public.key", image)  # includes e2fsck -fn
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert (unit_dir / "private.key").stat().st_mode & 0o777 == 0o600
        private = keys.read_private_file(unit_dir / "private.key")
        assert keys.fingerprint(private) == unit["fingerprint"]
        assert record["pubkey"] == (unit_dir / "public.key").read_text() == keys.public_pem(private).decode()
        assert json.loads((unit_dir / "identity.json").read_text()) == record["identity_data"]
        assert unit["image_sha256"] is None  # opt-in (--image-sha256): the signed bmap is the record
    first = out / "u1" / f"u1{base.suffix}"
    flashed = tmp_path / "flashed.img"
    run_tool("bmaptool", "copy", "--bmap", f"{first}.bmap", str(first), str(flashed))
    run_tool("cmp", str(first), str(flashed))
    assert "u2,02:00:00:00:00:02,SN0002," in (out / "preauth.csv").read_text()


def test_resume_skips_published_units_and_keeps_their_keys(make_image, tmp_path):
    base = make_image("sdimg")
    out = tmp_path / "out"
    first = emit(base, load_devices(devices_csv(tmp_path / "d.csv", 2, serials=True)), out, ED25519)
    assert first.count("emitted") == 2
    keys_before = _fingerprints(out)
    again = emit(base, load_devices(devices_csv(tmp_path / "d.csv", 3, serials=True)), out, ED25519)
    assert [u.status for u in again.units] == ["skipped", "skipped", "emitted"]
    assert {k: v for k, v in _fingerprints(out).items() if k != "u3"} == keys_before
    assert len(json.loads((out / "preauth.json").read_text())) == 3
    _assert_clean(out, {"u1", "u2", "u3"})
    os.utime(out / "u1" / "u1.sdimg", (1, 1))  # touched since publication: verified again
    (out / "u2" / "u2.sdimg.bmap").unlink()  # incomplete: reported, never silently re-keyed
    third = emit(base, load_devices(tmp_path / "d.csv"), out, ED25519)
    assert [u.status for u in third.units] == ["skipped", "failed", "skipped"]
    assert "lost u2.sdimg.bmap" in third.units[1].error and _fingerprints(out)["u2"] == keys_before["u2"]


def test_changed_base_or_settings_refused_unless_forced_keys_kept(make_image, tmp_path):
    base, other = make_image("sdimg"), make_image("sdimg", data_mib=16)
    devices = load_devices(devices_csv(tmp_path / "d.csv", 2, serials=True))
    out = tmp_path / "out"
    discard = EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=2, discard_private_keys=True)
    emit(base, devices, out, discard)
    assert not (out / "u1" / "private.key").exists()
    keys_before = _fingerprints(out)
    with pytest.raises(SettingsMismatch, match="base image differs"):
        emit(other, devices, out, discard)
    with pytest.raises(SettingsMismatch, match="settings differ"):
        emit(base, devices, out, EmitOptions(key_spec=keys.KeySpec(type="ecdsa"), jobs=2, discard_private_keys=True))
    forced = emit(
        other, devices, out, EmitOptions(key_spec=discard.key_spec, jobs=2, discard_private_keys=True, force=True)
    )
    assert [(u.status, u.key_source) for u in forced.units] == [("emitted", "kept")] * 2
    assert _fingerprints(out) == keys_before  # the key came out of the old image
    for name, fp in keys_before.items():
        report = verify_image(out / name / f"{name}.sdimg", expected_fingerprint=fp, fsck=False)
        assert report.ok and os.path.getsize(out / name / f"{name}.sdimg") == os.path.getsize(other)
    _assert_clean(out, {"u1", "u2"})


def test_device_list_key_is_used_and_conflicts_refused(make_image, tmp_path):
    base = make_image("sdimg")
    key_pem = keys.private_pem(keys.generate(keys.KeySpec(type="ecdsa")))
    (tmp_path / "unit.pem").write_bytes(key_pem)
    (tmp_path / "d.csv").write_text("name,mac,key\nfixed,aa,unit.pem\n")
    out = tmp_path / "out"
    result = emit(base, load_devices(tmp_path / "d.csv"), out, ED25519)
    assert result.units[0].key_source == "device list"
    assert (out / "fixed" / "private.key").read_bytes() == key_pem
    assert result.units[0].key_type == "ECDSA-secp256r1"
    with pytest.raises(EnvironmentProblem, match="was emitted for identity"):
        emit(base, parse_csv("name,mac\nfixed,bb\n"), out, ED25519)
    with pytest.raises(EnvironmentProblem, match="already emitted as .*fixed with its own key"):
        emit(base, parse_csv("name,mac\nrenamed,aa\n"), out, ED25519)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["fixed", BATCH_PUB, *BATCH_FILES]
    )


def test_invalid_device_list_rejected_before_any_image(make_image, cli, tmp_path):
    base = make_image("sdimg")
    (tmp_path / "d.csv").write_text("name,mac\nok,aa\nbad/name,bb\nx,aa\n")
    res = cli("emit", "--base", base, "--devices", tmp_path / "d.csv", "--out-dir", tmp_path / "out")
    assert res.returncode == 2
    assert "line 3" in res.stderr and "line 4" in res.stderr
    assert not (tmp_path / "out").exists()


def test_kill_at_random_points_then_resume(make_image, tmp_path):
    """SIGKILL at random moments: never a unit that looks complete but is not, keys never
    regenerated for a published unit, and a re-run finishes a clean, all-verified batch."""
    base = make_image("sdimg")
    devices = devices_csv(tmp_path / "d.csv", 24, serials=True)  # published in batches: several per run
    out = tmp_path / "out"
    exe = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "imagetools"
    if not exe.exists():
        exe = ROOT / ".venv" / "bin" / "imagetools"
    cmd = [
        str(exe),
        "emit",
        "--base",
        str(base),
        "--devices",
        str(devices),
        "--out-dir",
        str(out),
        "--key-type",
        "ed25519",
        "--jobs",
        "2",
    ]
    rng = random.Random(5)
    seen: dict[str, str] = {}
    progress = []
    for _ in range(6):
        # Kill once a random number of further units is out (0 = during start-up), plus a random
        # delay: lands mid-unit and mid-batch whatever the speed of the machine.
        target = min(len(seen) + rng.randint(0, 2), 20)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(_fingerprints(out)) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for name, fp in _fingerprints(out).items():
            assert seen.setdefault(name, fp) == fp, f"key of published unit {name} changed"
        for unit_dir in (d for d in out.glob("*") if not d.name.startswith(".") and d.is_dir()):
            record = json.loads((unit_dir / "unit.json").read_text())  # published ⇒ complete
            assert all((unit_dir / f).exists() for f in record["files"])
        progress.append(len(seen))
    assert any(0 < n < 24 for n in progress), f"no kill landed mid-batch: {progress}"
    final = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["summary"]["failed"] == 0
    names = {f"u{i}" for i in range(1, 25)}
    _assert_clean(out, names)
    for name, fp in _fingerprints(out).items():
        assert seen.get(name, fp) == fp
        assert verify_image(out / name / f"{name}.sdimg", expected_fingerprint=fp).ok


@pytest.fixture
def small_fs(tmp_path):
    """A small tmpfs, to run out of space for real (needs root; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_space_check_refuses_before_starting(make_image, tmp_path, small_fs):
    base = make_image("sdimg")
    with pytest.raises(EnvironmentProblem, match="not enough space"):
        emit(base, load_devices(devices_csv(tmp_path / "d.csv", 20, serials=True)), small_fs / "out", ED25519)
    assert not [p for p in (small_fs / "out").iterdir() if p.suffix != ".lock"]


def test_disk_full_midway_is_clean_and_resumable(make_image, tmp_path, small_fs, monkeypatch):
    monkeypatch.setattr(runner, "_SYNC_BYTES", 1)  # publish unit by unit: fill up after the first
    base = make_image("sdimg")
    devices = load_devices(devices_csv(tmp_path / "d.csv", 3, serials=True))
    out = small_fs / "out"
    filler = small_fs / "filler"

    def fill_after_first(result, done, total):
        if done == 1:
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\xff" * (1 << 20))
                        f.flush()
                except OSError:
                    pass

    options = EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=1)
    with pytest.raises(EnvironmentProblem, match="disk full"):
        emit(base, devices, out, options, progress=fill_after_first)
    assert {p.name for p in out.iterdir()} == {"u1", STATE_FILE, LOCK_FILE, BATCH_KEY, BATCH_PUB}
    filler.unlink()
    result = emit(base, devices, out, options)
    assert [u.status for u in result.units] == ["skipped", "emitted", "emitted"]
    _assert_clean(out, {"u1", "u2", "u3"})


def test_a_unit_that_fails_verify_is_never_published(make_image, cli, tmp_path):
    """A base whose rootfs lacks the /var/lib/mender link: the client would not find the key."""
    base = make_image("sdimg", no_symlink=True)
    devices = devices_csv(tmp_path / "d.csv", 2, serials=True)
    out = tmp_path / "out"
    result = cli("emit", "--base", base, "--devices", devices, "--out-dir", out, "--key-type", "ed25519", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert [u["status"] for u in report["items"]] == ["failed", "failed"]
    assert "/var/lib/mender link" in report["items"][0]["error"]
    assert not (out / "u1").exists() and not (out / "u2").exists()
    assert json.loads((out / "preauth.json").read_text()) == []
    assert (out / "preauth.csv").read_text().count("\n") == 1  # the header alone


def test_resume_verifies_again_an_image_changed_in_place(make_image, tmp_path):
    """Same size, and even the mtime put back: the key inside was replaced, so it is re-verified."""
    base = make_image("sdimg")
    devices = load_devices(devices_csv(tmp_path / "d.csv", 1, serials=True))
    out = tmp_path / "out"
    emit(base, devices, out, ED25519)
    image = out / "u1" / "u1.sdimg"
    st = image.stat()
    other = keys.private_pem(keys.generate(keys.KeySpec(type="ed25519")))
    from imagetools import files

    files.install(image, "/data/mender/mender-agent.pem", other, mode=0o600)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image.stat().st_size == st.st_size and image.stat().st_mtime_ns == st.st_mtime_ns
    again = emit(base, devices, out, ED25519)
    assert again.units[0].status == "failed" and "no longer verifies" in again.units[0].error


def test_batch_files_cover_every_published_unit_and_keys_stay_unique(make_image, tmp_path):
    base = make_image("sdimg")
    out = tmp_path / "out"
    key = tmp_path / "k1.pem"
    key.write_bytes(keys.private_pem(keys.generate(keys.KeySpec(type="ed25519"))))
    (tmp_path / "a.csv").write_text('name,mac,key\nu1,=HYPERLINK("x"),k1.pem\n')
    emit(base, load_devices(tmp_path / "a.csv"), out, ED25519)
    emit(base, load_devices(devices_csv(tmp_path / "b.csv", 1, start=2, serials=True)), out, ED25519)
    assert [p["name"] for p in json.loads((out / "preauth.json").read_text())] == ["u2", "u1"]
    csv_text = (out / "preauth.csv").read_text()
    assert "'=HYPERLINK" in csv_text and "'-----BEGIN PUBLIC KEY" in csv_text
    assert "\n=" not in csv_text and ",=" not in csv_text and ",-" not in csv_text
    (tmp_path / "c.csv").write_text("name,mac,key\nu9,02:00:00:00:00:09,k1.pem\n")
    with pytest.raises(EnvironmentProblem, match="already published for the unit"):
        emit(base, load_devices(tmp_path / "c.csv"), out, ED25519)
    assert not (out / "u9").exists()


def test_the_whole_image_sha256_is_opt_in_and_taken_where_there_is_no_bmap(make_image, tmp_path):
    """An image unit's integrity record is its signed bmap; --image-sha256 adds the whole hash, and
    --no-bmap implies it: the station then binds the image by that hash instead."""
    base = make_image("sdimg")
    devices = load_devices(devices_csv(tmp_path / "d.csv", 1, serials=True))
    runs = {
        "plain": ED25519,
        "hashed": dataclasses.replace(ED25519, image_sha256=True),
        "no-bmap": dataclasses.replace(ED25519, bmap=False),
    }
    for name, options in runs.items():
        result = emit(base, devices, tmp_path / name, options)
        assert result.ok
        image = tmp_path / name / "u1" / "u1.sdimg"
        recorded = json.loads((tmp_path / name / "u1" / "unit.json").read_text())["image_sha256"]
        assert recorded == result.units[0].image_sha256 == (None if name == "plain" else _sha256(image))
        plan = plan_unit(base, tmp_path / name / "u1")
        assert [(r.first, r.last) for r in plan.ranges] == [(r.first, r.last) for r in bmap.scan(image).ranges]
    with pytest.raises(SettingsMismatch, match="--image-sha256"):
        emit(base, devices, tmp_path / "hashed", ED25519)
    image = tmp_path / "no-bmap" / "u1" / "u1.sdimg"
    with open(image, "r+b") as f:  # a changed byte in a mapped block of rootfs A
        at = bmap.scan(image).ranges[3].first * bmap.BLOCK_SIZE
        os.pwrite(f.fileno(), bytes([os.pread(f.fileno(), 1, at)[0] ^ 1]), at)
    with pytest.raises(UsageError, match="does not match the SHA-256 its unit.json records"):
        plan_unit(base, tmp_path / "no-bmap" / "u1")
