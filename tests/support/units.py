"""Batches for station tests: a small base and an OUT of signed delta units, or one unit over a
base of the default size, made by the real emit; and the check that a card holds exactly one unit's key."""

from __future__ import annotations

from pathlib import Path

from imagetools import keys
from imagetools.devices import load_devices
from imagetools.emit import EmitOptions, emit
from imagetools.verify import verify_image

SMALL = {"rootfs_mib": 16, "data_mib": 16}  # make_image options: a base of about 56 MiB
DELTA = EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=1, format="delta")


def emit_units(make_image, tmp_path: Path, count: int) -> tuple[Path, Path]:
    """A small base and an OUT of COUNT signed delta units u000, u001, ..."""
    base = make_image("sdimg", **SMALL)
    devices = tmp_path / "devices.csv"
    devices.write_text(
        "name,mac\n" + "".join(f"u{i:03d},02:00:00:00:{i >> 8:02x}:{i & 255:02x}\n" for i in range(count))
    )
    out = tmp_path / "OUT"
    assert emit(base, load_devices(devices), out, DELTA).ok
    return base, out


def one_unit(make_image, tmp_path: Path) -> tuple[Path, Path]:
    """A base of the default size (base.sdimg) and the one signed delta unit OUT/u1 made from it."""
    base = make_image("sdimg", name="base.sdimg")
    (tmp_path / "d.csv").write_text("name,mac\nu1,02:00:00:00:01:01\n")
    assert emit(base, load_devices(tmp_path / "d.csv"), tmp_path / "OUT", DELTA).ok
    return base, tmp_path / "OUT" / "u1"


def holds_its_unit(card: Path, out: Path, unit: str) -> bool:
    """The card verifies against exactly that unit's public key."""
    return verify_image(card, expected=out / unit / "public.key", fsck=False).ok
