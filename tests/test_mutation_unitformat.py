"""unitformat, the edges scripts/mutation found untested: unit records read strictly, the batch key
made once, and every way read_signed refuses a unit, each with its message. Units are built by hand
(records, files, the real signer), so no image is needed."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from imagetools.errors import EnvironmentProblem, UsageError
from imagetools.unitformat import (
    BATCH_KEY,
    BATCH_PUB,
    SIG_FILE,
    UNIT_FILE,
    Fields,
    KeySource,
    UnitRecord,
    batch_fingerprint,
    batch_key,
    read_batch_public,
    read_signed,
    sign_unit,
    signed_files,
)

RECORD = {
    "name": "u1",
    "identity": {"mac": "02:00:00:00:00:01"},
    "fingerprint": "f" * 64,
    "key_type": "ed25519",
    "key_source": "generated",
    "image": "u1.delta",
    "image_size": 10,
    "image_mtime_ns": 1,
    "image_ctime_ns": 2,
    "image_sha256": "a" * 64,
    "base_sha256": "b" * 64,
    "settings": {"server": "x"},
    "files": ["u1.delta"],
    "verify": {"ok": True},
    "timings": {"t": 1.5, "n": 2},
    "format": "delta",
}


def _unit(out: Path, name: str = "u1", payload: bytes = b"delta bytes", **changes) -> Path:
    """OUT/<name>/ as emit leaves it: records, public key, the delta (or image + bmap), unit.sig."""
    record = {**RECORD, "name": name, **changes}
    unit = out / name
    unit.mkdir(parents=True)
    (unit / UNIT_FILE).write_text(json.dumps(record))
    (unit / "identity.json").write_text('{"mac": "02:00:00:00:00:01"}')
    (unit / "public.key").write_text("a public key")
    for file in record["files"]:
        (unit / file).write_bytes(payload)
    sign_unit(unit, batch_key(out))
    return unit


def _record(**changes) -> UnitRecord:
    return UnitRecord.from_json({**RECORD, **changes})


def test_a_signed_unit_reads_back_with_its_bytes_and_batch(tmp_path):
    unit = _unit(tmp_path / "OUT")
    signed = read_signed(unit)
    assert signed.record == _record()
    assert signed.directory == unit
    assert signed.blobs == {n: (unit / n).read_bytes() for n in (UNIT_FILE, "identity.json", "public.key", "u1.delta")}
    assert signed.batch == batch_fingerprint(batch_key(tmp_path / "OUT").public_key())
    assert signed.pinned is False
    assert read_signed(unit, trust=tmp_path / "OUT" / BATCH_PUB).pinned is True


def test_large_deltas_and_bmaps_are_within_their_limits(tmp_path):
    big = os.urandom(3 << 19)  # 1.5 MiB: more than a record may be
    delta = read_signed(_unit(tmp_path / "A", payload=big))
    assert delta.blobs["u1.delta"] == big
    image = read_signed(
        _unit(tmp_path / "B", payload=big, format="image", image="u1.img", files=["u1.img", "u1.img.bmap"])
    )
    assert image.blobs["u1.img.bmap"] == big


def test_the_batch_key_is_made_once_private_and_kept(tmp_path):
    key = batch_key(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / BATCH_KEY).st_mode) == 0o600
    pub = read_batch_public(tmp_path / BATCH_PUB)
    assert batch_fingerprint(pub) == batch_fingerprint(key.public_key())
    again = batch_key(tmp_path)
    assert batch_fingerprint(again.public_key()) == batch_fingerprint(key.public_key())
    assert sorted(os.listdir(tmp_path)) == [BATCH_KEY, BATCH_PUB]


def test_a_batch_key_of_another_type_is_refused(tmp_path):
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / BATCH_KEY).write_bytes(
        other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    with pytest.raises(EnvironmentProblem) as refused:
        batch_key(tmp_path)
    assert str(refused.value) == (
        f"{tmp_path / BATCH_KEY} is not an Ed25519 batch signing key: restore it or use a new OUT"
    )
    pub = tmp_path / "ec.pub"
    pub.write_bytes(
        other.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "junk.pub").write_text("not a key")
    for path in (pub, tmp_path / "junk.pub"):
        with pytest.raises(UsageError) as not_ed25519:
            read_batch_public(path)
        assert str(not_ed25519.value) == f"{path} is not an Ed25519 public key (a batch's {BATCH_PUB})"


def test_a_dangling_batch_key_link_is_refused_not_replaced(tmp_path):
    (tmp_path / BATCH_KEY).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(EnvironmentProblem, match="symbolic link"):
        batch_key(tmp_path)
    assert not (tmp_path / BATCH_PUB).exists()


def test_what_a_signature_covers_per_format():
    assert signed_files(_record()) == [UNIT_FILE, "identity.json", "public.key", "u1.delta"]
    image = _record(format="image", image="u1.img", files=["u1.img", "u1.img.bmap"])
    assert signed_files(image) == [UNIT_FILE, "identity.json", "public.key", "u1.img.bmap"]
    assert signed_files(replace(image, files=["u1.img"])) == [UNIT_FILE, "identity.json", "public.key"]


@pytest.mark.parametrize("image", ["", ".", "..", "a/b", "a\0b", "x" * 256])
def test_a_record_whose_image_is_not_a_file_name_is_refused(image):
    with pytest.raises(ValueError) as refused:
        _record(image=image)
    assert str(refused.value) == "unit.json: 'image' is not a file name"


def test_record_fields_are_read_as_emit_writes_them():
    assert asdict(_record()) == RECORD
    assert _record(image="x" * 255).image == "x" * 255
    assert _record().key_source is KeySource.GENERATED
    no_format = dict(RECORD)
    del no_format["format"], no_format["image_ctime_ns"], no_format["image_sha256"]
    old = UnitRecord.from_json(no_format)
    assert (old.format, old.image_ctime_ns, old.image_sha256) == ("image", None, None)
    assert _record(image_ctime_ns=None).image_ctime_ns is None
    assert _record(timings={"t": 1}).timings == {"t": 1}


@pytest.mark.parametrize(
    "field, value",
    [
        ("image_size", True),
        ("image_size", "10"),
        ("name", None),
        ("identity", {"mac": 1}),
        ("files", ["a", 2]),
        ("timings", {"t": "1"}),
        ("timings", {"t": False}),
        ("settings", []),
        ("image_ctime_ns", "2"),
    ],
)
def test_a_field_of_another_type_is_named(field, value):
    with pytest.raises(ValueError) as refused:
        _record(**{field: value})
    assert str(refused.value) == f"unit.json: {field!r} is missing or of another type"


def test_a_flag_where_a_flag_belongs_is_a_flag():
    assert Fields({"ok": True}, "x").get("ok", bool) is True


def test_an_unknown_format_and_a_non_object_are_refused():
    with pytest.raises(ValueError) as refused:
        _record(format="iso")
    assert str(refused.value) == "unit.json: 'format' is 'iso', not 'image' or 'delta'"
    with pytest.raises(ValueError) as not_object:
        UnitRecord.from_json([])
    assert str(not_object.value) == "unit.json is not a JSON object"


def test_a_record_file_is_read_without_following_links(tmp_path):
    (tmp_path / "real.json").write_text(json.dumps(RECORD))
    (tmp_path / UNIT_FILE).symlink_to(tmp_path / "real.json")
    assert UnitRecord.read(tmp_path / "real.json") == _record()
    with pytest.raises(UsageError) as linked:
        UnitRecord.read(tmp_path / UNIT_FILE)
    assert str(linked.value) == f"unit record {tmp_path / UNIT_FILE} is a symbolic link; give the file itself"
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UsageError) as not_json:
        UnitRecord.read(tmp_path / "bad.json")
    assert str(not_json.value).startswith(f"{tmp_path / 'bad.json'}: not JSON (")
    with pytest.raises(UsageError) as parsed:
        UnitRecord.parse(b"[1,", "OUT/u1/unit.json")
    assert str(parsed.value).startswith("OUT/u1/unit.json: not JSON (")
    _record().write(tmp_path / "written.json")
    assert UnitRecord.read(tmp_path / "written.json") == _record()


def _sig(unit: Path) -> dict:
    return json.loads((unit / SIG_FILE).read_text())


def _write_sig(unit_dir: Path, /, **changes) -> None:
    (unit_dir / SIG_FILE).write_text(json.dumps({**_sig(unit_dir), **changes}))


def test_a_unit_without_its_batch_key_or_signature_is_refused(tmp_path):
    unit = _unit(tmp_path / "OUT")
    (tmp_path / "OUT" / BATCH_PUB).rename(tmp_path / "kept.pub")
    with pytest.raises(UsageError) as no_pub:
        read_signed(unit)
    assert str(no_pub.value) == f"{unit}: no {BATCH_PUB} beside it to check its signature; give --trust BATCH.pub"
    assert read_signed(unit, trust=tmp_path / "kept.pub").pinned
    (unit / SIG_FILE).unlink()
    with pytest.raises(UsageError) as unsigned:
        read_signed(unit, trust=tmp_path / "kept.pub")
    assert str(unsigned.value) == (
        f"{unit} has no signature ({SIG_FILE}): emitted by an older imagetools or "
        "tampered with; run emit on its OUT again to sign it"
    )
    (unit / UNIT_FILE).unlink()
    with pytest.raises(UsageError) as not_a_unit:
        read_signed(unit, trust=tmp_path / "kept.pub")
    assert str(not_a_unit.value) == f"{unit} is not a unit directory emit wrote (no {UNIT_FILE})"


def test_a_unit_of_another_batch_names_both_keys(tmp_path):
    unit = _unit(tmp_path / "A")
    (tmp_path / "B").mkdir()
    batch_key(tmp_path / "B")
    theirs, ours = read_signed(unit).batch, batch_fingerprint(read_batch_public(tmp_path / "B" / BATCH_PUB))
    with pytest.raises(UsageError) as refused:
        read_signed(unit, trust=tmp_path / "B" / BATCH_PUB)
    assert str(refused.value) == (
        f"{unit} is signed by batch key {theirs[:16]}..., not by {tmp_path / 'B' / BATCH_PUB} "
        f"({ours[:16]}...): a unit of another batch, or a forged one"
    )


def test_a_changed_file_or_signature_is_refused(tmp_path):
    unit = _unit(tmp_path / "OUT")
    (unit / "u1.delta").write_bytes(b"other bytes")
    with pytest.raises(UsageError) as changed:
        read_signed(unit)
    assert str(changed.value) == f"{unit / 'u1.delta'} was changed after emit signed it: do not flash this unit"
    _write_sig(unit, unit="u2")
    with pytest.raises(UsageError) as forged:
        read_signed(unit)
    assert str(forged.value) == (
        f"{unit}/{SIG_FILE}: the signature does not verify: the unit was changed after emit signed it; do not flash it"
    )


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"version": 2}, "version 2, this imagetools reads 1"),
        ({"files": {f"f{i}": "0" for i in range(9)}}, "'files' names something that is not a file of the unit"),
        ({"files": {"../x": "0"}}, "'files' names something that is not a file of the unit"),
        ({"files": {"unit.json": 1}}, "unit.sig: 'files' is missing or of another type"),
        ({"signature": "not base64!"}, "Only base64 data is allowed"),
        ({"unit": 1}, "unit.sig: 'unit' is missing or of another type"),
        ({"batch": None}, "unit.sig: 'batch' is missing or of another type"),
    ],
)
def test_a_malformed_signature_file_says_what_is_wrong(tmp_path, changes, reason):
    unit = _unit(tmp_path / "OUT")
    _write_sig(unit, **changes)
    with pytest.raises(UsageError) as refused:
        read_signed(unit)
    message = str(refused.value)
    assert message.startswith(f"{unit / SIG_FILE}: not a unit signature (")
    assert reason in message
    if "base64" not in reason:
        assert message == f"{unit / SIG_FILE}: not a unit signature ({reason})"


def test_a_signature_that_is_not_json_names_its_file(tmp_path):
    unit = _unit(tmp_path / "OUT")
    (unit / SIG_FILE).write_text("{")
    with pytest.raises(UsageError) as refused:
        read_signed(unit)
    assert str(refused.value).startswith(f"{unit / SIG_FILE}: not JSON (")


def _linked(path: Path) -> None:
    """path replaced by a symlink to a copy of itself: the same bytes, reached through a link."""
    copy = path.with_name(path.name + ".copy")
    path.rename(copy)
    path.symlink_to(copy)


@pytest.mark.parametrize(
    "name, what", [(SIG_FILE, "unit signature"), ("public.key", "unit file"), ("u1.delta", "unit file")]
)
def test_a_unit_file_reached_through_a_symlink_is_refused(tmp_path, name, what):
    unit = _unit(tmp_path / "OUT")
    _linked(unit / name)
    with pytest.raises(UsageError) as refused:
        read_signed(unit)
    assert str(refused.value) == f"{what} {unit / name} is a symbolic link; give the file itself"


def test_batch_keys_reached_through_a_symlink_are_refused(tmp_path):
    batch_key(tmp_path)
    _linked(tmp_path / BATCH_PUB)
    with pytest.raises(UsageError) as public:
        read_batch_public(tmp_path / BATCH_PUB)
    assert str(public.value) == f"batch public key {tmp_path / BATCH_PUB} is a symbolic link; give the file itself"
    _linked(tmp_path / BATCH_KEY)
    with pytest.raises(EnvironmentProblem) as private:
        batch_key(tmp_path)
    assert str(private.value) == (f"batch signing key {tmp_path / BATCH_KEY} is a symbolic link; give the file itself")


def test_a_large_identity_file_is_over_a_record_s_limit(tmp_path):
    out = tmp_path / "OUT"
    unit = _unit(out)
    (unit / "identity.json").write_bytes(b" " * ((1 << 20) + 1))
    files = {**_sig(unit)["files"], "identity.json": hashlib.sha256(b" " * ((1 << 20) + 1)).hexdigest()}
    _resign(out, unit, "u1", files)
    with pytest.raises(UsageError) as refused:
        read_signed(unit)
    assert str(refused.value) == (f"unit file {unit / 'identity.json'} is larger than 1 MiB, the limit for a unit file")


def test_a_signed_record_that_is_not_json_names_its_file(tmp_path):
    out = tmp_path / "OUT"
    unit = _unit(out)
    (unit / UNIT_FILE).write_text("{")
    _resign(out, unit, "u1", {**_sig(unit)["files"], UNIT_FILE: hashlib.sha256(b"{").hexdigest()})
    with pytest.raises(UsageError) as refused:
        read_signed(unit)
    assert str(refused.value).startswith(f"{unit / UNIT_FILE}: not JSON (")


def test_unit_files_are_written_for_people_to_read(tmp_path):
    """unit.json and unit.sig are indented, unit.sig's names sorted: operators read and diff them."""
    unit = _unit(tmp_path / "OUT")
    sig = (unit / SIG_FILE).read_text()
    assert sig == json.dumps(json.loads(sig), indent=2, sort_keys=True) + "\n"
    assert list(json.loads(sig)) == sorted(json.loads(sig))
    _record().write(tmp_path / "written.json")
    assert (tmp_path / "written.json").read_text() == json.dumps(RECORD, indent=2) + "\n"


def test_eight_signed_files_are_allowed(tmp_path):
    files = [f"f{i}" for i in range(4)]
    unit = _unit(tmp_path / "OUT", format="image", image="u1.img", files=files)
    sig = _sig(unit)
    sig["files"].update({f: "0" for f in files})
    assert len(sig["files"]) == 7
    sig["files"]["f4"] = "0"
    (unit / SIG_FILE).write_text(json.dumps(sig))
    with pytest.raises(UsageError, match="the signature does not verify"):
        read_signed(unit)


def _resign(out: Path, unit: Path, name: str, files: dict[str, str]) -> None:
    """A signature the batch key really made, over another statement than emit's."""
    key = batch_key(out)
    batch = batch_fingerprint(key.public_key())
    statement = json.dumps(
        {"version": 1, "unit": name, "batch": batch, "files": files}, sort_keys=True, separators=(",", ":")
    ).encode()
    _write_sig(unit, unit=name, files=files, signature=base64.b64encode(key.sign(statement)).decode())


def test_a_signature_for_another_unit_or_other_files_is_refused(tmp_path):
    out = tmp_path / "OUT"
    unit = _unit(out)
    files = _sig(unit)["files"]
    message = f"{unit}: its signature covers other files or another unit than {UNIT_FILE} names"
    _resign(out, unit, "u2", files)
    with pytest.raises(UsageError) as other_unit:
        read_signed(unit)
    assert str(other_unit.value) == message
    fewer = {n: d for n, d in files.items() if n != "u1.delta"}
    _resign(out, unit, "u1", fewer)
    with pytest.raises(UsageError) as other_files:
        read_signed(unit)
    assert str(other_files.value) == message
    _resign(out, unit, "u1", {n: d for n, d in files.items() if n != UNIT_FILE})
    with pytest.raises(UsageError) as no_record:
        read_signed(unit)
    assert str(no_record.value).startswith(f"{unit}: unusable {UNIT_FILE} (")


def test_a_signed_record_that_is_not_a_record_is_refused(tmp_path):
    out = tmp_path / "OUT"
    unit = _unit(out)
    (unit / UNIT_FILE).write_text('{"name": "u1"}')
    files = {**_sig(unit)["files"], UNIT_FILE: hashlib.sha256(b'{"name": "u1"}').hexdigest()}
    _resign(out, unit, "u1", files)
    with pytest.raises(UsageError) as refused:
        read_signed(unit)
    assert str(refused.value) == f"{unit}: unusable {UNIT_FILE} (unit.json: 'image' is missing or of another type)"
