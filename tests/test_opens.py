"""Each file is opened once along a command (issue 20): verify reads the image's table and its
filesystems on one descriptor; flash writes, reads back and verifies a card on the descriptor it
opened it with, and reads each unit file once; emit reads the base on one descriptor for every
unit, beside the one pass that hashes it (the bmap scan). Counted with an audit hook in a fresh
interpreter (support/opens.py); the counts are printed, and a test fails above them."""

from __future__ import annotations

import os

from support.inputs import devices_csv, random_file
from support.opens import count_opens
from support.units import one_unit

from imagetools import keys
from imagetools.inject import inject_key


def test_verify_opens_the_image_once(make_image, tmp_path):
    img = make_image("sdimg")
    key = keys.generate(keys.KeySpec(type="ed25519"))
    inject_key(img, keys.private_pem(key))
    (tmp_path / "public.key").write_bytes(keys.public_pem(key))
    code = f"""
from imagetools.verify import verify_image
assert verify_image({str(img)!r}, expected={str(tmp_path / "public.key")!r}, fsck=False).ok
"""
    opens = count_opens(code, [img])
    print(f"verify --no-fsck: {img.name} opened {opens[img]} time(s) (table + data, rootfs A, rootfs B)")
    assert opens[img] == 1


def test_flash_opens_the_card_once_and_each_unit_file_once(make_image, tmp_path):
    base, unit = one_unit(make_image, tmp_path)
    card = random_file(tmp_path / "card.img", base.stat().st_size)
    files = sorted(unit.iterdir())
    code = f"""
from imagetools.station.flash import flash
from imagetools.station.plan import plan_unit
[record] = flash([({str(card)!r}, plan_unit({str(base)!r}, {str(unit)!r}))])
assert record["state"] == "passed", record
"""
    opens = count_opens(code, [card, *files])
    print(
        f"flash --unit (read-back, e2fsck): card opened {opens[card]} time(s); unit files: "
        + ", ".join(f"{f.name} {opens[f]}" for f in files)
    )
    assert opens[card] == 1
    # private.key is never read: the signed delta holds the key's blocks
    assert {f.name: opens[f] for f in files} == {f.name: int(f.name != "private.key") for f in files}


def test_emit_opens_the_base_once_beside_its_hash(make_image, tmp_path):
    base = make_image("sdimg")
    devices = devices_csv(tmp_path / "devices.csv", 3)
    for fmt, configure in (("delta", ""), ("image", ""), ("image", "server_uri='https://mender.example.com'")):
        out = tmp_path / f"OUT-{fmt}-{bool(configure)}"
        code = f"""
from imagetools.devices import load_devices
from imagetools.emit import EmitOptions, emit
from imagetools.menderconf.plan import ModifyPlan
options = EmitOptions(format={fmt!r}, jobs=1, modify=ModifyPlan({configure}) if {bool(configure)} else None)
assert emit({str(base)!r}, load_devices({str(devices)!r}), {str(out)!r}, options).ok
"""
        opens = count_opens(code, [base])
        shown = f"emit --format {fmt}" + (" --server-uri" if configure else "")
        print(f"{shown}, 3 units: {base.name} opened {opens[base]} time(s) (the run + the bmap scan)")
        assert opens[base] == 2
        assert len([d for d in os.listdir(out) if (out / d).is_dir()]) == 3
