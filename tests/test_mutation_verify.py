"""verify, in process (mutmut credits no subprocess): the exact details of each check an operator
reads, the forms `expected` may take, the report's dict and summary, and the emit report lookup
that names whose key an image holds. Images are real (scripts/make-image), edited with debugfs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from support.tools import run_tool

import imagetools.verify as verify
from imagetools import keys
from imagetools.errors import KeyMaterialError, UsageError
from imagetools.inject import inject_key
from imagetools.layout import open_layout

pytestmark = pytest.mark.integration

KEY_IN_DATA = "/mender/mender-agent.pem"
SHOWN = "/data/mender/mender-agent.pem"


@pytest.fixture(scope="module")
def pair():
    key = keys.generate(keys.KeySpec(type="ed25519"))
    return key, keys.private_pem(key, "pkcs8")


@pytest.fixture(scope="module")
def other():
    return keys.generate(keys.KeySpec(type="ecdsa"))


@pytest.fixture
def injected(make_image, pair):
    img = make_image("sdimg", empty_rootfs_b=True)
    inject_key(img, pair[1])
    return img


def _debugfs(img: Path, *commands: str, role: str = "data") -> None:
    device = f"{img}?offset={open_layout(img).require(role).partition.start}"
    proc = run_tool("debugfs", "-w", "-f", "-", device, input="\n".join(commands) + "\n")
    assert not [ln for ln in proc.stderr.splitlines() if ln and not ln.startswith("debugfs ")]


def _details(report: verify.VerifyReport) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status.value, c.detail) for c in report.checks}


# --- the report --------------------------------------------------------------------------------------


def test_a_good_image_reports_every_check_in_order(injected, pair):
    key, _ = pair
    fp = keys.fingerprint(key)
    report = verify.verify_image(injected)
    assert [c.name for c in report.checks] == list(verify.CHECK_NAMES)
    assert (report.fingerprint, report.key_type, report.ok, report.failed) == (fp, "Ed25519", True, [])
    details = _details(report)
    assert details[verify.TABLE] == ("pass", "MBR, 4 partitions")
    assert details[verify.PRESENT] == ("pass", f"{SHOWN} ({len(pair[1])} bytes)")
    assert details[verify.PARSES] == ("pass", "Ed25519, unencrypted")
    assert details[verify.ACCEPTABLE] == ("pass", "Ed25519")
    assert details[verify.MATCHES] == ("skip", f"no expected key given; image key SHA256 {fp}")
    assert details[verify.MODE] == ("pass", "0600")
    assert details[verify.OWNER] == ("pass", "0:0")
    assert details[verify.LINK_A] == ("pass", "/var/lib/mender -> /data/mender (the data partition's mender/)")
    assert details[verify.LINK_B] == ("warn", "rootfs B is empty (filled by the first update); not checked")
    assert details[verify.STATIC_KEY] == (
        "warn",
        "rootfs A: Security.AuthPrivateKey not set; a missing or unreadable key is then silently replaced and "
        "the unit shows up pending (imagetools modify --static-key sets it)",
    )
    assert details[verify.FSCK] == ("pass", "clean")
    assert report.summary() == {"pass": 9, "fail": 0, "warn": 2, "skip": 1}
    as_dict = report.to_dict()
    assert as_dict["target"] == str(injected) and as_dict["ok"] is True
    assert (as_dict["fingerprint"], as_dict["key_type"]) == (fp, "Ed25519")
    assert as_dict["checks"][2] == {
        "id": "key-present",
        "name": verify.PRESENT,
        "status": "pass",
        "detail": details[verify.PRESENT][1],
    }
    assert [c["id"] for c in as_dict["checks"]] == [verify.CHECK_IDS[n] for n in verify.CHECK_NAMES]
    assert json.loads(json.dumps(as_dict)) == as_dict


def test_replace_puts_a_check_in_place_of_its_namesake():
    report = verify.VerifyReport("t")
    report.add(verify.TABLE, verify.Status.PASS, "a")
    report.add(verify.FSCK, verify.Status.SKIP, "b")
    report.replace(verify.Check(verify.FSCK, verify.Status.FAIL, "c"))
    assert [(c.name, c.status, c.detail) for c in report.checks] == [
        (verify.TABLE, verify.Status.PASS, "a"),
        (verify.FSCK, verify.Status.FAIL, "c"),
    ]
    assert not report.ok and report.failed == [report.check(verify.FSCK)]
    assert report.summary() == {"pass": 1, "fail": 1, "warn": 0, "skip": 0}


# --- expected keys and fingerprints ------------------------------------------------------------------


def test_every_form_of_the_expected_key_matches(injected, pair, tmp_path, monkeypatch):
    key, _ = pair
    fp = keys.fingerprint(key)
    pub = tmp_path / "k.pub"
    pub.write_bytes(keys.public_pem(key))
    monkeypatch.chdir(tmp_path)  # a relative path is the caller's (made absolute before anything else runs)
    forms = [str(pub), pub, "k.pub", keys.public_pem(key), bytearray(keys.public_pem(key)), key, key.public_key()]
    for form in forms:
        report = verify.verify_image(injected, expected=form, fsck=False)
        assert _details(report)[verify.MATCHES] == ("pass", f"SHA256 {fp}"), form
    report = verify.verify_image(injected, expected_fingerprint="SHA256:" + fp.upper(), fsck=False)
    assert _details(report)[verify.MATCHES] == ("pass", f"SHA256 {fp}")
    report = verify.verify_image(injected, expected=key, expected_fingerprint=fp, fsck=False)
    assert report.ok


def test_another_key_fails_the_match_naming_both(injected, pair, other):
    have, want = keys.fingerprint(pair[0]), keys.fingerprint(other)
    report = verify.verify_image(injected, expected=other.public_key(), fsck=False)
    assert report.failed == [report.check(verify.MATCHES)]
    assert _details(report)[verify.MATCHES] == ("fail", f"image key SHA256 {have}, expected {want}")
    report = verify.verify_image(injected, expected_fingerprint=want, fsck=False)
    assert _details(report)[verify.MATCHES] == ("fail", f"image key SHA256 {have}, expected {want}")


def test_unusable_expected_input_raises(injected, pair, other):
    with pytest.raises(TypeError) as wrong:
        verify.verify_image(injected, expected=42)
    assert str(wrong.value) == "expected must be a public key file path, PEM bytes or a key object, not int"
    with pytest.raises(KeyMaterialError) as disagree:
        verify.verify_image(injected, expected=pair[0], expected_fingerprint=keys.fingerprint(other))
    assert str(disagree.value) == "the expected public key and the expected fingerprint disagree"
    with pytest.raises(KeyMaterialError, match="^expected public key: not a PEM public key"):
        verify.verify_image(injected, expected=b"garbage")


PKCS1_PROBLEM = (
    "expected public key: PKCS#1 'RSA PUBLIC KEY'; the Mender Server only accepts SPKI 'PUBLIC KEY' "
    "(convert with: openssl rsa -RSAPublicKey_in -pubout)"
)


def _pkcs1(public) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)


def test_a_pkcs1_expected_key_says_whether_it_matches(make_image):
    """Its fingerprint is still compared, so the operator learns whether it is the right key."""
    rsa_key, problem = keys.generate(keys.KeySpec(bits=2048)), PKCS1_PROBLEM
    pkcs1 = _pkcs1(rsa_key.public_key())
    img = make_image("sdimg", empty_rootfs_b=True)
    inject_key(img, keys.private_pem(rsa_key))
    report = verify.verify_image(img, expected=pkcs1, fsck=False)
    assert _details(report)[verify.MATCHES] == ("fail", f"{problem} (the key in the image matches it)")
    stranger = keys.generate(keys.KeySpec(bits=2048)).public_key()
    pkcs1 = _pkcs1(stranger)
    report = verify.verify_image(img, expected=pkcs1, fsck=False)
    assert _details(report)[verify.MATCHES] == ("fail", f"{problem} (the key in the image does not match it either)")


# --- the key file in the image ---------------------------------------------------------------------------


def test_a_missing_key_skips_what_depends_on_it(make_image):
    report = verify.verify_image(make_image("sdimg", empty_rootfs_b=True), fsck=False)
    details = _details(report)
    assert details[verify.PRESENT] == ("fail", f"no file at {SHOWN}: the client would generate a new key")
    assert details[verify.PARSES] == ("skip", "no key")
    assert details[verify.ACCEPTABLE] == details[verify.MATCHES] == ("skip", "no usable key")
    assert details[verify.MODE] == details[verify.OWNER] == ("skip", "no key")
    assert details[verify.FSCK] == ("skip", "skipped (--no-fsck)")
    assert report.fingerprint is None and report.key_type is None
    assert report.failed == [report.check(verify.PRESENT)]


def test_a_key_path_elsewhere_is_named_as_given(injected):
    report = verify.verify_image(injected, path="/var/lib/mender/other.pem", fsck=False)
    assert _details(report)[verify.PRESENT] == (
        "fail",
        "no file at /var/lib/mender/other.pem: the client would generate a new key",
    )


def test_empty_linked_and_directory_keys_are_not_keys(injected, tmp_path):
    _debugfs(injected, f"rm {KEY_IN_DATA}", f"symlink {KEY_IN_DATA} /etc/elsewhere.pem")
    assert _details(verify.verify_image(injected, fsck=False))[verify.PRESENT] == (
        "fail",
        f"{SHOWN} is a symlink to /etc/elsewhere.pem, not a regular file",
    )
    _debugfs(injected, f"rm {KEY_IN_DATA}", f"mkdir {KEY_IN_DATA}")
    assert _details(verify.verify_image(injected, fsck=False))[verify.PRESENT] == (
        "fail",
        f"{SHOWN} is a dir, not a regular file",
    )
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    _debugfs(injected, f"rmdir {KEY_IN_DATA}", f"write {empty} {KEY_IN_DATA}")
    report = verify.verify_image(injected, fsck=False)
    assert _details(report)[verify.PRESENT] == ("fail", f"{SHOWN} is empty")
    assert _details(report)[verify.MODE][0] == "skip"


def test_a_key_file_larger_than_any_key_is_not_read(injected, tmp_path):
    big = tmp_path / "big.pem"
    big.write_bytes(b"A" * (keys.MAX_KEY_FILE + 1))
    _debugfs(injected, f"rm {KEY_IN_DATA}", f"write {big} {KEY_IN_DATA}", f"sif {KEY_IN_DATA} mode 0100600")
    details = _details(verify.verify_image(injected, fsck=False))
    assert details[verify.PRESENT] == ("pass", f"{SHOWN} ({keys.MAX_KEY_FILE + 1} bytes)")
    assert details[verify.PARSES] == (
        "fail",
        f"key in image: {keys.MAX_KEY_FILE + 1} bytes, more than any key file ({keys.MAX_KEY_FILE} at most)",
    )
    at_cap = tmp_path / "cap.pem"
    at_cap.write_bytes(b"A" * keys.MAX_KEY_FILE)
    _debugfs(injected, f"rm {KEY_IN_DATA}", f"write {at_cap} {KEY_IN_DATA}")
    details = _details(verify.verify_image(injected, fsck=False))
    assert details[verify.PARSES] == ("fail", "key in image: not a PEM private key (expected RSA, ECDSA or Ed25519)")


@pytest.mark.parametrize(
    "mode,detail",
    [
        ("0644", "0644, expected 0600"),
        ("0130", "0130, expected 0600 (mender-artifact -m 600 is decimal; use -m 0600)"),
        ("0400", "0400, expected 0600"),
    ],
)
def test_mode_details(injected, mode, detail):
    _debugfs(injected, f"sif {KEY_IN_DATA} mode 0100{mode[1:]}")
    assert _details(verify.verify_image(injected, fsck=False))[verify.MODE] == ("fail", detail)


def test_owner_details(injected):
    _debugfs(injected, f"sif {KEY_IN_DATA} uid 1000", f"sif {KEY_IN_DATA} gid 7")
    assert _details(verify.verify_image(injected, fsck=False))[verify.OWNER] == (
        "fail",
        "1000:7, expected 0:0 (root)",
    )
    _debugfs(injected, f"sif {KEY_IN_DATA} uid 0")
    assert _details(verify.verify_image(injected, fsck=False))[verify.OWNER] == ("fail", "0:7, expected 0:0 (root)")


# --- key paths -----------------------------------------------------------------------------------------


def test_data_path_forms_and_refusals():
    assert verify.data_path("/data/mender/x.pem") == "/mender/x.pem"
    assert verify.data_path("/var/lib/mender/x.pem") == "/mender/x.pem"
    assert verify.data_path(verify.DEFAULT_KEY_PATH) == "/mender/mender-agent.pem"
    with pytest.raises(UsageError) as relative:
        verify.data_path("data/mender/x.pem")
    assert str(relative.value) == (f"key path 'data/mender/x.pem' must be absolute, e.g. {verify.DEFAULT_KEY_PATH}")
    with pytest.raises(UsageError) as elsewhere:
        verify.data_path("/etc/mender/x.pem")
    assert str(elsewhere.value) == (
        f"key path '/etc/mender/x.pem' is not on the data partition; use a path under /data/ "
        f"(default {verify.DEFAULT_KEY_PATH})"
    )


# --- whose key is it (emit's report.json) ------------------------------------------------------------


def _report_json(path: Path, units) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"units": units}))
    return path


def test_report_beside_looks_beside_then_two_levels_up(tmp_path, monkeypatch):
    image = tmp_path / "OUT" / "unit-1" / "unit-1.sdimg"
    image.parent.mkdir(parents=True)
    assert verify.report_beside(image) is None
    up = _report_json(tmp_path / "OUT" / "report.json", [])
    assert verify.report_beside(image) == up
    beside = _report_json(image.parent / "report.json", [])
    assert verify.report_beside(image) == beside
    beside.unlink()
    beside.mkdir()  # not a file: not a report
    assert verify.report_beside(image) == up
    monkeypatch.chdir(tmp_path / "OUT")
    assert verify.report_beside(Path("unit-1") / "unit-1.sdimg") == up


def test_key_owner_is_the_unit_with_that_fingerprint(tmp_path):
    fp = "ab" * 32
    report = _report_json(
        tmp_path / "report.json",
        [
            "junk",
            {"name": 7, "fingerprint": fp},
            {"name": "u1", "fingerprint": "cd" * 32},
            {"name": "u2", "fingerprint": fp},
            {"name": "u3", "fingerprint": fp},
        ],
    )
    assert verify.key_owner(fp, report) == "u2"
    assert verify.key_owner("ef" * 32, report) is None
    for data in ({"units": {"name": "u2"}}, ["u2"], {"other": []}):
        (tmp_path / "odd.json").write_text(json.dumps(data))
        assert verify.key_owner(fp, tmp_path / "odd.json") is None


def test_explain_mismatch_names_whose_key_the_image_holds(injected, pair, other, tmp_path):
    fp = keys.fingerprint(pair[0])
    report_file = _report_json(tmp_path / "report.json", [{"name": "unit-9", "fingerprint": fp}])
    report = verify.verify_image(injected, expected=other, fsck=False)
    base = report.check(verify.MATCHES).detail
    verify.explain_mismatch(report, report_file)
    assert report.check(verify.MATCHES).detail == f"{base}; the key in the image is unit-9's (per {report_file})"
    report = verify.verify_image(injected, expected=other, fsck=False)
    nobody = _report_json(tmp_path / "nobody" / "report.json", [])
    verify.explain_mismatch(report, nobody)
    assert report.check(verify.MATCHES).detail == f"{base}; no unit in {nobody} has the key in the image"
    matching = verify.verify_image(injected, expected=pair[0], fsck=False)
    verify.explain_mismatch(matching, report_file)
    assert matching.check(verify.MATCHES).detail == f"SHA256 {fp}"
    skipped = verify.verify_image(injected, fsck=False)
    before = skipped.check(verify.MATCHES).detail
    verify.explain_mismatch(skipped, report_file)
    assert skipped.check(verify.MATCHES).detail == before


# --- an open image: a card's descriptor, a unit's overlay ----------------------------------------------


def test_a_delta_unit_verifies_through_its_overlay_e2fsck_included(make_image, tmp_path):
    """verify_image of an ImageSource: a unit's delta over its open base reads as its image, the
    table probed and e2fsck run through the overlay (by path, the delta file is no image)."""
    from support.units import one_unit

    from imagetools.image.source import ImageSource, Overlay
    from imagetools.published import load_unit

    base, unit_dir = one_unit(make_image, tmp_path)
    unit = load_unit(unit_dir)
    assert unit.delta is not None and unit.record is not None
    name = unit_dir / unit.record.image
    with ImageSource(base) as src:
        view = ImageSource(name, overlay=Overlay(src, unit.delta, unit.base_sha256))
        report = verify.verify_image(view, expected=unit.public_key)
        assert report.ok and report.target == str(name), _details(report)
        assert _details(report)[verify.FSCK] == ("pass", "clean")
        names = (verify.LINK_A, verify.LINK_B, verify.STATIC_KEY)
        given = [verify.Check(n, verify.Status.PASS, "given") for n in names]
        taken = verify.verify_image(view, expected=unit.public_key, fsck=False, rootfs=given)
        assert {c.name: c.detail for c in taken.checks if c.detail == "given"} == {c.name: "given" for c in given}


def test_the_rootfs_and_link_checks_alone_are_those_of_the_whole_report(injected):
    layout = open_layout(injected)
    whole = _details(verify.verify_image(injected, fsck=False))
    alone = verify.rootfs_checks(str(injected), layout, verify.data_path(verify.DEFAULT_KEY_PATH))
    assert [c.name for c in alone] == [verify.LINK_A, verify.LINK_B, verify.STATIC_KEY]
    assert {c.name: (c.status.value, c.detail) for c in alone} == {c.name: whole[c.name] for c in alone}
    links = verify.link_checks(str(injected), layout)
    assert {c.name: (c.status.value, c.detail) for c in links} == {c.name: whole[c.name] for c in links}


def test_a_weak_key_in_the_image_fails_acceptable_with_the_reason(make_image):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from imagetools import files

    img = make_image("sdimg")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    files.install(img, "/data/mender/mender-agent.pem", keys.private_pem(weak), mode=0o600)
    with pytest.raises(KeyMaterialError) as exc:
        keys.check_acceptable(weak, "key in image")
    report = verify.verify_image(img, fsck=False)
    assert _details(report)[verify.ACCEPTABLE] == ("fail", str(exc.value))
    assert _details(report)[verify.PARSES][0] == "pass"


# --- more of what the operator reads (survivors of verify's mutation run) -------------------------


@pytest.fixture(scope="module")
def rsa_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _install(img: Path, path: str, data: bytes, **kw) -> None:
    from imagetools import files

    files.install(img, path, data, **kw)


def test_an_rsa_key_is_named_by_type_and_size(make_image, rsa_key):
    img = make_image("sdimg", empty_rootfs_b=True)
    inject_key(img, keys.private_pem(rsa_key))
    report = verify.verify_image(img, fsck=False)
    details = _details(report)
    assert report.key_type == "RSA-2048"
    assert details[verify.PARSES] == ("pass", "RSA-2048, unencrypted")
    assert details[verify.ACCEPTABLE] == ("pass", "RSA-2048")
    assert details[verify.DATA] == ("pass", "partition 4 ext4 'data' (ext4 label 'data')")


def test_an_expected_key_always_proves_the_pair(make_image, rsa_key):
    """A key this process serialized itself skips the pair check, unless an expected key is
    given: then the key in the image must sign what the expected key verifies. An expected key
    the server would refuse (PKCS#1) is compared by fingerprint only: the parse check stays as
    without one."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    n = rsa_key.private_numbers()
    bad = rsa.RSAPrivateNumbers(n.p, n.q, n.d, n.dmp1 ^ 2, n.dmq1, n.iqmp, n.public_numbers).private_key(
        unsafe_skip_rsa_key_validation=True
    )
    img = make_image("sdimg", empty_rootfs_b=True)
    _install(img, SHOWN, keys.private_pem(bad), mode=0o600)
    checked = verify.verify_image(img, expected=bad.public_key(), fsck=False)
    assert _details(checked)[verify.PARSES] == (
        "fail",
        "key in image: RSA private key is inconsistent (its CRT values (d mod p-1, d mod q-1, q^-1 mod p) are "
        "wrong); the Mender client would refuse it",
    )
    assert checked.fingerprint is None and checked.failed == [checked.check(verify.PARSES)]
    unchecked = verify.verify_image(img, fsck=False)
    pkcs1 = verify.verify_image(img, expected=_pkcs1(bad.public_key()), fsck=False)
    assert _details(pkcs1)[verify.PARSES] == _details(unchecked)[verify.PARSES] == ("pass", "RSA-2048, unencrypted")
    assert _details(pkcs1)[verify.MATCHES] == ("fail", f"{PKCS1_PROBLEM} (the key in the image matches it)")


def test_a_missing_expected_key_file_is_named(injected, tmp_path):
    with pytest.raises(KeyMaterialError) as exc:
        verify.verify_image(injected, expected=tmp_path / "server.pub")
    assert str(exc.value) == f"expected public key {tmp_path / 'server.pub'} not found"


def _wipe_data_superblock(img: Path) -> None:
    start = open_layout(img).require("data").partition.start
    with open(img, "r+b") as f:
        f.seek(start + 1024)
        f.write(bytes(1024))


def test_no_readable_data_partition_is_named_and_skips_the_rest(injected):
    _wipe_data_superblock(injected)
    details = _details(verify.verify_image(injected))
    assert details[verify.DATA] == (
        "fail",
        "no data partition (choose one with --data-partition N); partitions seen: 1 vfat 'BOOT' as boot, "
        "2 ext4 'primary' as rootfs-a, 3 ext4 'secondary' as rootfs-b, 4 unknown as extra",
    )
    assert details[verify.PRESENT] == details[verify.FSCK] == ("skip", "no data partition")
    assert details[verify.PARSES] == ("skip", "no key")
    forced = _details(verify.verify_image(injected, overrides={"data": 4}))
    assert forced[verify.DATA] == (
        "fail",
        "partition 4 unknown: cannot read it: partition 4 (data, unknown) has no filesystem; files can only be "
        "read or written on ext2/3/4 and FAT",
    )
    assert forced[verify.PRESENT] == ("skip", "no data partition")
    assert forced[verify.FSCK] == (
        "fail",
        "cannot check partition 4 (data, unknown) in place: only ext2/3/4 can be checked at an offset "
        "(fsck.vfat needs the partition as its own file)",
    )


def test_a_key_path_through_a_file_fails_presence(make_image, tmp_path):
    img = make_image("sdimg", empty_rootfs_b=True)
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    _debugfs(img, "rmdir /mender", f"write {plain} /mender")
    report = verify.verify_image(img, fsck=False)
    assert _details(report)[verify.PRESENT] == (
        "fail",
        f"{SHOWN}: /mender is not a directory in partition 4 (data, ext4)",
    )
    assert report.check(verify.PARSES).status == "skip"


def test_table_warnings_are_each_listed(injected):
    _debugfs(injected, "ssv blocks_count 9000")
    _debugfs(injected, "ssv blocks_count 9000", role="rootfs-a")
    spans = (
        "its ext4 filesystem spans 36864000 bytes but the partition only 8388608; it cannot be written to "
        "(the table was shrunk without shrinking the filesystem)"
    )
    assert _details(verify.verify_image(injected, fsck=False))[verify.TABLE] == (
        "warn",
        f"MBR, 4 partitions; partition 2: {spans}; partition 4: {spans}",
    )


def test_an_interrupted_flash_says_how_to_redo_it(injected):
    from imagetools.errors import VerifyFailed

    with open(injected, "r+b") as f:
        f.write(bytes(64 * 1024))
    with pytest.raises(VerifyFailed) as exc:
        verify.verify_image(injected)
    assert str(exc.value) == (
        f"{injected}: no partition table, and its first 64 KiB are zeros: this looks like an interrupted flash; "
        f"flash it again (imagetools flash BASE {injected} --unit UNIT --again)"
    )


def test_fsck_names_its_first_four_lines_at_most_300_characters(injected, tmp_path):
    _debugfs(injected, "sif /mender links_count 7")  # e2fsck reports it after the four pass lines
    assert _details(verify.verify_image(injected))[verify.FSCK] == (
        "fail",
        "errors found: Pass 1: Checking inodes, blocks, and sizes; Pass 2: Checking directory structure; "
        "Pass 3: Checking directory connectivity; Pass 4: Checking reference counts",
    )
    name = "k" * 250
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    _debugfs(injected, "sif /mender links_count 2", f"write {plain} /mender/{name}", f"clri /mender/{name}")
    status, detail = _details(verify.verify_image(injected))[verify.FSCK]
    start = "errors found: Pass 1: Checking inodes, blocks, and sizes; Pass 2: Checking directory structure; Entry '"
    assert (status, detail[: len(start)], len(detail)) == ("fail", start, len("errors found: ") + 300)
    assert detail[len(start) :] == "k" * (len(detail) - len(start))


def test_the_emit_report_is_named_when_unusable(tmp_path):
    missing = tmp_path / "report.json"
    with pytest.raises(UsageError) as exc:
        verify.key_owner("ab" * 32, missing)
    assert str(exc.value) == f"emit report {missing} not found"
    missing.write_text("{nope")
    with pytest.raises(UsageError) as exc:
        verify.key_owner("ab" * 32, missing)
    assert str(exc.value) == (
        f"emit report {missing}: not JSON (Expecting property name enclosed in double quotes at line 1 column 2)"
    )


def test_explain_mismatch_without_a_match_check_changes_nothing(tmp_path):
    report = verify.VerifyReport("t", fingerprint="ab" * 32)
    report.add(verify.PRESENT, verify.Status.FAIL, "no key")
    verify.explain_mismatch(report, _report_json(tmp_path / "report.json", [{"name": "u", "fingerprint": "ab" * 32}]))
    assert [(c.name, c.detail) for c in report.checks] == [(verify.PRESENT, "no key")]


# --- Security.AuthPrivateKey, rootfs by rootfs ------------------------------------------------------

NOT_SET_HINT = (
    "; a missing or unreadable key is then silently replaced and the unit shows up pending "
    "(imagetools modify --static-key sets it)"
)


def _static_key(img: Path, conf: bytes, path: str = verify.DEFAULT_KEY_PATH) -> tuple[str, str]:
    _install(img, "/etc/mender/mender.conf", conf, partition=2)
    return _details(verify.verify_image(img, fsck=False, path=path))[verify.STATIC_KEY]


def _auth(value) -> bytes:
    return json.dumps({"Security": {"AuthPrivateKey": value}}).encode()


@pytest.mark.parametrize(
    "value,expected",
    [
        (
            "/var/lib/mender/mender-agent.pem",
            (
                "pass",
                "rootfs A: Security.AuthPrivateKey = /var/lib/mender/mender-agent.pem (a bad key fails on the device)",
            ),
        ),
        (
            "/data/mender/mender-agent.pem",
            (
                "pass",
                "rootfs A: Security.AuthPrivateKey = /data/mender/mender-agent.pem (a bad key fails on the device)",
            ),
        ),
        (
            "/etc/mender/k.pem",
            (
                "fail",
                "rootfs A: Security.AuthPrivateKey is /etc/mender/k.pem, not /var/lib/mender/mender-agent.pem: "
                "the client would use another key",
            ),
        ),
        ("", ("warn", "rootfs A: Security.AuthPrivateKey not set" + NOT_SET_HINT)),
        ("k.pem", ("fail", "rootfs A: Security.AuthPrivateKey is 'k.pem', not an absolute path")),
    ],
)
def test_the_static_key_setting(injected, value, expected):
    assert _static_key(injected, _auth(value)) == expected


def test_the_static_key_names_the_key_as_the_client_sees_it(injected):
    """Only the datastore prefix is shown as /var/lib/mender: a deeper data/mender stays."""
    assert _static_key(injected, _auth("/etc/k.pem"), path="/data/mender/x/data/mender/k.pem") == (
        "fail",
        "rootfs A: Security.AuthPrivateKey is /etc/k.pem, not /var/lib/mender/x/data/mender/k.pem: "
        "the client would use another key",
    )


def test_a_bad_or_unreadable_mender_conf_fails_the_static_key(injected):
    assert _static_key(injected, b"{not json") == (
        "fail",
        "rootfs A: /etc/mender/mender.conf on partition 2 (rootfs-a, ext4) is malformed: not JSON (Expecting "
        "property name enclosed in double quotes at line 1 column 2); the client would not start with it",
    )
    _install(injected, "/etc/mender/mender.conf", _auth("/var/lib/mender/mender-agent.pem"), partition=2)
    # not extent-mapped any more: its extent header read as a block number beyond the filesystem
    _debugfs(injected, "sif /etc/mender/mender.conf flags 0", role="rootfs-a")
    assert _details(verify.verify_image(injected, fsck=False))[verify.STATIC_KEY] == (
        "fail",
        "rootfs A: cannot read /etc/mender/mender.conf in partition 2 (rootfs-a, ext4): cat: Attempt to read "
        "block from filesystem resulted in short read while reading ext2 file",
    )


def test_the_static_key_reads_only_the_settings(injected):
    """An unreadable artifact_info (or trust file) is no business of this check."""
    _install(injected, "/etc/mender/artifact_info", b"artifact_name=release-1\n", partition=2)
    _debugfs(injected, "sif /etc/mender/artifact_info flags 0", role="rootfs-a")
    assert _static_key(injected, _auth("/var/lib/mender/mender-agent.pem"))[0] == "pass"


def test_the_static_key_of_both_root_filesystems(make_image, pair):
    img = make_image("sdimg")
    inject_key(img, pair[1])
    assert _details(verify.verify_image(img, fsck=False))[verify.STATIC_KEY] == (
        "warn",
        "rootfs A: Security.AuthPrivateKey not set; rootfs B: Security.AuthPrivateKey not set" + NOT_SET_HINT,
    )


def test_root_filesystems_that_are_not_filesystems(injected):
    layout = open_layout(injected)
    with open(injected, "r+b") as f:
        for role in ("rootfs-a", "rootfs-b"):
            part = layout.require(role).partition
            f.seek(part.start)
            f.write(bytes(part.size))
    details = _details(verify.verify_image(injected, fsck=False))
    assert details[verify.LINK_A] == ("warn", "rootfs A (partition 2) is empty: link not checked")
    assert details[verify.LINK_B] == ("warn", "rootfs B has no filesystem yet (filled by the first update)")
    assert details[verify.STATIC_KEY] == ("skip", "no root filesystem with a Mender configuration")


def test_a_rootfs_b_that_is_not_ext4_is_not_checked(make_image, pair):
    img = make_image("sdimg")
    inject_key(img, pair[1])
    part = open_layout(img).require("rootfs-b").partition
    with open(img, "r+b") as f:
        f.seek(part.start + 1024)
        f.write(bytes(1024))  # its superblock: what is left is no filesystem we know
    assert _details(verify.verify_image(img, fsck=False))[verify.LINK_B] == (
        "warn",
        "rootfs B (partition 3) is unknown: link not checked",
    )


# --- chosen partitions, link chains ----------------------------------------------------------------


def test_chosen_partitions_rule_every_check(injected):
    """With rootfs B taken as data there is no rootfs B (a warning), with it taken as rootfs A
    no rootfs A (a failure); the rootfs checks alone agree with the whole report."""
    details = _details(verify.verify_image(injected, fsck=False, overrides={"data": 3}))
    assert details[verify.LINK_B] == ("warn", "no rootfs B partition found")
    assert details[verify.LINK_A][0] == "pass"
    layout = open_layout(injected, overrides={"data": 3})
    alone = verify.rootfs_checks(str(injected), layout, verify.data_path(verify.DEFAULT_KEY_PATH))
    assert {c.name: (c.status.value, c.detail) for c in alone} == {c.name: details[c.name] for c in alone}
    links = verify.link_checks(str(injected), layout)
    assert {c.name: (c.status.value, c.detail) for c in links} == {c.name: details[c.name] for c in links}
    details = _details(verify.verify_image(injected, fsck=False, overrides={"rootfs-b": 2}))
    assert details[verify.LINK_A] == ("fail", "no rootfs A partition found")


def test_a_chain_of_links_is_shown_link_by_link(injected):
    _debugfs(
        injected,
        "rm /var/lib/mender",
        "mkdir /persist",
        "symlink /persist/m ../data/mender",
        "symlink /var/lib/mender /persist/m",
        role="rootfs-a",
    )
    assert _details(verify.verify_image(injected, fsck=False))[verify.LINK_A] == (
        "pass",
        "/var/lib/mender -> /persist/m, /persist/m -> ../data/mender (the data partition's mender/)",
    )
    _debugfs(injected, "rm /persist/m", "symlink /persist/m ../data/other", role="rootfs-a")
    assert _details(verify.verify_image(injected, fsck=False))[verify.LINK_A] == (
        "fail",
        "/var/lib/mender -> /persist/m, /persist/m -> ../data/other resolves to /data/other, not /data/mender: "
        "the client would not find the key",
    )
