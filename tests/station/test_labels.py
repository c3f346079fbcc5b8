"""Labels: the PNG a printer takes, and a QR code that really reads back as the unit's record."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import qrcode
import qrcode.constants
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from imagetools.errors import EnvironmentProblem, KeyMaterialError, UsageError
from imagetools.station.labels import DPI, HEIGHT, WIDTH, label_payload, make_label

FINGERPRINT = "3f9a0c1d" * 8
IDENTITY = {"mac": "02:00:00:00:00:01", "sn": "SN0001"}


def scanned(path: Path) -> list[str]:
    """What a barcode scanner reads on the label (zxing-cpp, a real decoder)."""
    zxingcpp = pytest.importorskip("zxingcpp", reason="zxing-cpp is not installed (pip install zxing-cpp)")
    found = zxingcpp.read_barcodes(Image.open(path))
    return [code.text for code in found if code.format == zxingcpp.BarcodeFormat.QRCode]


def printed_modules(path: Path, size: int) -> list[list[bool]]:
    """The dark modules of the label's code, sampled at each module's centre."""
    gray = Image.open(path).convert("L")
    code = gray.crop((WIDTH - HEIGHT, 0, WIDTH, HEIGHT))  # the right-hand square
    left, top, right, _ = ImageOps.invert(code).getbbox()  # finder patterns mark the corners
    step = (right - left) / size
    return [
        [code.getpixel((int(left + (x + 0.5) * step), int(top + (y + 0.5) * step))) < 128 for x in range(size)]
        for y in range(size)
    ]


def encoded_modules(payload: str) -> list[list[bool]]:
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=0)
    code.add_data(payload.encode("ascii"))
    code.make(fit=True)
    return [list(row) for row in code.get_matrix()]


def test_label_for_the_printer_with_a_code_that_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "unit0001.png"
    make_label(path, unit="unit0001", identity=IDENTITY, fingerprint=FINGERPRINT)
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (WIDTH, HEIGHT) == (696, 342) and image.mode == "1"
    assert round(image.info["dpi"][0]) == DPI
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and os.listdir(tmp_path) == ["unit0001.png"]
    payload = label_payload(IDENTITY, FINGERPRINT)
    assert payload == '{"fingerprint":"' + FINGERPRINT + '","identity":{"mac":"02:00:00:00:00:01","sn":"SN0001"}}'
    expected = encoded_modules(payload)
    assert printed_modules(path, len(expected)) == expected
    assert [json.loads(text) for text in scanned(path)] == [{"identity": IDENTITY, "fingerprint": FINGERPRINT}]


def test_fingerprint_in_any_usual_spelling_and_never_a_bad_one(tmp_path: Path) -> None:
    spaced = "SHA256:" + ":".join(FINGERPRINT[i : i + 2].upper() for i in range(0, 64, 2))
    make_label(tmp_path / "a.png", unit="unit0002", identity={}, fingerprint=spaced)
    assert scanned(tmp_path / "a.png") == ['{"fingerprint":"' + FINGERPRINT + '","identity":{}}']
    for bad in ("", "3f9a", FINGERPRINT + "00", "z" * 64):
        with pytest.raises(KeyMaterialError):
            make_label(tmp_path / "b.png", unit="unit0002", identity={}, fingerprint=bad)
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("identity", [["mac"], {1: "a"}, {"a": {1, 2}}, {"a": float("nan")}, {"a": b"x"}])
def test_identity_that_is_not_json_is_refused(tmp_path: Path, identity: object) -> None:
    with pytest.raises(UsageError, match="identity must"):
        make_label(tmp_path / "x.png", unit="u", identity=identity, fingerprint=FINGERPRINT)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_identity_too_long_for_a_readable_code_is_refused(tmp_path: Path) -> None:
    nested: dict = {}
    for _ in range(100_000):
        nested = {"a": nested}
    with pytest.raises(UsageError, match="identity must"):
        make_label(tmp_path / "x.png", unit="u", identity=nested, fingerprint=FINGERPRINT)
    for identity in ({"sn": "x" * 700}, {f"k{i}": "v" * 30 for i in range(10_000)}):
        with pytest.raises(UsageError, match="too long for a label's QR code"):
            make_label(tmp_path / "x.png", unit="<b>unit\n</b>", identity=identity, fingerprint=FINGERPRINT)
    assert os.listdir(tmp_path) == []


def test_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "unit0003.png"
    path.write_bytes(b"an older label")
    make_label(path, unit="unit0003", identity=IDENTITY, fingerprint=FINGERPRINT)
    assert Image.open(path).size == (WIDTH, HEIGHT)
    (tmp_path / "taken.png").mkdir()
    for where in (tmp_path / "taken.png", tmp_path / "no-such-dir" / "x.png"):
        with pytest.raises(EnvironmentProblem, match="cannot write the label"):
            make_label(where, unit="unit0003", identity=IDENTITY, fingerprint=FINGERPRINT)
    assert sorted(os.listdir(tmp_path)) == ["taken.png", "unit0003.png"]


texts = st.text(st.characters(codec="utf-8"), max_size=30)
SURELY_FITS = 500  # bytes of payload (the 29 mm code holds up to version 20: 666 bytes)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    unit=st.text(st.characters(codec="utf-8"), max_size=2000),
    identity=st.dictionaries(texts, texts | st.lists(texts, max_size=3), max_size=4),
)
def test_any_name_and_identity_make_a_label_whose_code_is_the_record(tmp_path: Path, unit: str, identity: dict) -> None:
    path = tmp_path / "label.png"
    path.unlink(missing_ok=True)
    try:
        make_label(path, unit=unit, identity=identity, fingerprint=FINGERPRINT)
    except UsageError as exc:
        assert "too long" in str(exc) and len(label_payload(identity, FINGERPRINT)) > SURELY_FITS
        assert not path.exists()
        return
    assert Image.open(path).size == (WIDTH, HEIGHT)
    assert [json.loads(text) for text in scanned(path)] == [{"identity": identity, "fingerprint": FINGERPRINT}]


# The udev rule shipped beside the labels (docs/labels.md): run through the real udev rule engine
# (`udevadm test`) in a private mount namespace that holds only this rule and one that gives a
# block device a slot's ID_PATH, so nothing on the host is read or changed.
RULE = Path(__file__).resolve().parents[2] / "contrib" / "udev" / "99-imagetools-slots.rules"
SANDBOX = """set -e
mount -t tmpfs tmpfs /dev
mount -t tmpfs tmpfs /run
mount --bind "$1" /etc/udev/rules.d
mount --bind "$2" /usr/lib/udev/rules.d
exec udevadm test --action="$3" "/sys/class/block/$4"
"""
SET_BY_RULE = ("UDISKS_AUTO", "UDISKS_IGNORE", "UDISKS_SYSTEM", "SYSTEMD_READY")


def udev_properties(tmp_path: Path, id_path: str, action: str = "add") -> dict[str, str]:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "udevadm", "mount")):
        pytest.skip("needs root, unshare and udevadm to run the udev rule in a mount namespace")
    devices = sorted(os.listdir("/sys/class/block"))
    if not devices or not os.path.isdir("/etc/udev/rules.d") or not os.path.isdir("/usr/lib/udev/rules.d"):
        pytest.skip("no block device or udev rules directories here")
    rules, empty = tmp_path / "rules", tmp_path / "empty"
    rules.mkdir(parents=True)
    empty.mkdir()
    shutil.copy(RULE, rules)
    (rules / "50-slot.rules").write_text(f'SUBSYSTEM=="block", KERNEL=="{devices[0]}", ENV{{ID_PATH}}="{id_path}"\n')
    run = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            SANDBOX,
            "sh",
            str(rules),
            str(empty),
            action,
            devices[0],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if run.returncode != 0 and "unshare" in run.stderr:
        pytest.skip(f"no mount namespace here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stderr
    assert "Invalid" not in run.stderr, run.stderr
    return dict(line.split("=", 1) for line in run.stdout.splitlines() if re.fullmatch(r"[A-Z_]+=.*", line))


def test_udev_rule_keeps_automounters_off_the_slots_only(tmp_path: Path) -> None:
    examples = re.findall(r'^ENV\{ID_PATH\}=="([^"]+)", GOTO="imagetools_slot"$', RULE.read_text(), re.M)
    assert len(examples) == 3 and examples[2].endswith("*")
    for n, id_path in enumerate([examples[0], examples[2].replace("*", "1")]):
        found = udev_properties(tmp_path / f"slot{n}", id_path)
        assert found["ID_PATH"] == id_path
        assert {k: found.get(k) for k in SET_BY_RULE} == {
            "UDISKS_AUTO": "0",
            "UDISKS_IGNORE": "1",
            "UDISKS_SYSTEM": "1",
            "SYSTEMD_READY": "0",
        }
    other = udev_properties(tmp_path / "other", examples[0].replace("usb-0:3.1", "usb-0:2"))
    assert not set(SET_BY_RULE) & set(other)
