"""inject and verify on real images: round trips, every failure verify must name, read-only-ness.

Images come from scripts/make-image (conftest `make_image`); damage is done with the real tools
(debugfs sif/rm/symlink, mender-artifact install), independently of the code under test.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from support.tools import run_tool

from imagetools import keys, verify
from imagetools.errors import EnvironmentProblem, ImageFormatError, KeyMaterialError
from imagetools.inject import DEFAULT_KEY_PATH, inject_key
from imagetools.layout import open_layout
from imagetools.verify import verify_image

pytestmark = pytest.mark.integration

KEY_IN_DATA = "/mender/mender-agent.pem"


# --- helpers -------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def device(img: Path, role: str) -> str:
    """libext2fs' 'IMAGE?offset=N' name for a partition of the image."""
    return f"{img}?offset={open_layout(img).require(role).partition.start}"


def debugfs(img: Path, role: str, *commands: str) -> None:
    """Edit a partition with the real debugfs (our own writer is what is under test)."""
    proc = run_tool("debugfs", "-w", "-f", "-", device(img, role), input="\n".join(commands) + "\n")
    errors = [ln for ln in proc.stderr.splitlines() if ln and not ln.startswith("debugfs ")]
    assert not errors, errors


def read_back(img: Path, dest: Path) -> Path:
    """Dump the key from the image with debugfs, to a 0600 file."""
    run_tool("debugfs", "-R", f"dump {KEY_IN_DATA} {dest}", device(img, "data"))
    dest.chmod(0o600)
    return dest


def status(report: verify.VerifyReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def failed(report: verify.VerifyReport) -> list[str]:
    return [c.name for c in report.failed]


@pytest.fixture(scope="module")
def keyset(tmp_path_factory):
    """Key files made once per module (RSA generation is slow)."""
    d = tmp_path_factory.mktemp("keys")
    made = {}
    for name, spec in {"rsa": keys.KeySpec(bits=2048), "other": keys.KeySpec(type="ecdsa"), "small": None}.items():
        if spec is None:
            from cryptography.hazmat.primitives.asymmetric import rsa

            key = rsa.generate_private_key(65537, 1024)
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        else:
            key = keys.generate(spec)
            pem = keys.private_pem(key, spec.format)
        (d / f"{name}.key").write_bytes(pem)
        (d / f"{name}.pub").write_bytes(keys.public_pem(key))
        made[name] = key
    rsa_key = made["rsa"]
    (d / "rsa-pkcs1.pub").write_bytes(
        rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    )
    (d / "encrypted.key").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        )
    )
    (d / "garbage.key").write_bytes(b"not a key\n")
    return d


@pytest.fixture
def injected(make_image, keyset):
    """An sdimg (empty rootfs B, like meta-mender) with the RSA key injected in place."""
    img = make_image("sdimg", empty_rootfs_b=True)
    inject_key(img, (keyset / "rsa.key").read_bytes())
    return img


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key_type,fmt,header",
    [
        ("rsa", "pkcs1", "RSA PRIVATE KEY"),
        ("rsa", "pkcs8", "PRIVATE KEY"),
        ("ecdsa", "pkcs1", "EC PRIVATE KEY"),
        ("ecdsa", "pkcs8", "PRIVATE KEY"),
        ("ed25519", "pkcs8", "PRIVATE KEY"),
    ],
)
def test_keygen_inject_verify_round_trip(cli, make_image, tmp_path, key_type, fmt, header):
    base = make_image("sdimg", name="base.sdimg")
    before = sha256(base)
    extra = ["--bits", "2048"] if key_type == "rsa" and fmt == "pkcs8" else []
    made = cli("keygen", "--type", key_type, "--format", fmt, *extra, "--json")
    assert made.returncode == 0, made.stderr
    fp = json.loads(made.stdout)["items"][0]["fingerprint"]
    private, public = tmp_path / "keys-client-generated/private.key", tmp_path / "keys-client-generated/public.key"

    out = cli("inject", "--key", private, base, "--out", tmp_path / "unit.sdimg")
    assert out.returncode == 0, out.stderr
    assert f"fingerprint SHA256 {fp}" in out.stdout
    assert sha256(base) == before, "inject --out must not touch the base image"

    result = cli("verify", tmp_path / "unit.sdimg", "--pubkey", public, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["fingerprint"] == fp
    static = next(c for c in report["items"] if c["name"] == verify.STATIC_KEY)
    assert static["status"] == "warn"  # the base has no Security.AuthPrivateKey (imagetools modify --static-key)
    assert {c["status"] for c in report["items"] if c is not static} == {"pass"}
    assert [c["name"] for c in report["items"]] == list(verify.CHECK_NAMES)

    key = read_back(tmp_path / "unit.sdimg", tmp_path / "read-back.pem")
    assert key.read_text().startswith(f"-----BEGIN {header}-----")
    assert key.read_bytes() == private.read_bytes()
    assert run_tool("openssl", "pkey", "-in", str(key), "-pubout").stdout == public.read_text()
    assert cli("verify", tmp_path / "unit.sdimg", "--fingerprint", fp.upper(), "--no-fsck").returncode == 0


@pytest.mark.parametrize("layout", ["uefiimg", "gptimg", "extended", "noboot"])
def test_inject_and_verify_on_other_layouts(make_image, keyset, layout):
    img = make_image(layout)
    result = inject_key(img, (keyset / "other.key").read_bytes())
    assert result.warnings == [] and result.image == str(img)
    report = verify_image(img, expected=keys.read_public_file(keyset / "other.pub"))
    assert report.ok, report.to_dict()
    assert report.fingerprint == result.fingerprint == keys.fingerprint(keys.read_public_file(keyset / "other.pub"))


def test_inject_replaces_an_existing_key_and_creates_the_directory(make_image, keyset):
    img = make_image("sdimg")
    debugfs(img, "data", "rmdir /mender")
    inject_key(img, (keyset / "other.key").read_bytes())
    inject_key(img, (keyset / "rsa.key").read_bytes())
    report = verify_image(img, expected=keys.read_public_file(keyset / "rsa.pub"))
    assert report.ok, report.to_dict()


def test_inject_out_is_atomic_and_sparse(make_image, keyset, tmp_path):
    base = make_image("sdimg")
    before, mtime = sha256(base), base.stat().st_mtime_ns
    out = tmp_path / "sub" / "unit.sdimg"
    out.parent.mkdir()
    result = inject_key(base, (keyset / "rsa.key").read_bytes(), out=out)
    assert result.image == str(out)
    assert (sha256(base), base.stat().st_mtime_ns) == (before, mtime)
    assert [p.name for p in out.parent.iterdir()] == ["unit.sdimg"]  # no temporary left behind
    assert out.stat().st_blocks * 512 < out.stat().st_size
    assert verify_image(out).ok


def test_inject_out_refuses_existing_file_without_force(cli, make_image, keyset, tmp_path):
    base = make_image("sdimg")
    out = tmp_path / "unit.sdimg"
    out.write_bytes(b"precious")
    result = cli("inject", "--key", keyset / "rsa.key", base, "--out", out)
    assert result.returncode == 3 and "--force" in result.stderr
    assert out.read_bytes() == b"precious"
    with pytest.raises(EnvironmentProblem, match="--force"):  # the library keeps the same policy
        inject_key(base, (keyset / "rsa.key").read_bytes(), out=out)
    assert out.read_bytes() == b"precious" and [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    assert cli("inject", "--key", keyset / "rsa.key", base, "--out", out, "--force").returncode == 0
    assert verify_image(out).ok


@pytest.mark.parametrize(
    "bad,message",
    [
        ("encrypted.key", "encrypted"),
        ("small.key", "1024 bits"),
        ("garbage.key", "not a PEM private key"),
        ("rsa.pub", "not a PEM private key"),
        ("missing.key", "not found"),
    ],
)
def test_inject_refuses_unusable_keys_before_touching_the_image(cli, make_image, keyset, bad, message):
    img = make_image("sdimg")
    before = sha256(img)
    result = cli("inject", "--key", keyset / bad, img)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert sha256(img) == before


def test_inject_warns_when_the_rootfs_lacks_the_link(cli, make_image, keyset):
    img = make_image("sdimg", no_symlink=True)
    result = cli("inject", "--key", keyset / "rsa.key", img, "--json")
    assert result.returncode == 0, result.stderr
    warnings = json.loads(result.stdout)["warnings"]
    assert len(warnings) == 2 and all("/var/lib/mender does not exist" in w for w in warnings)
    assert "imagetools: warning: /var/lib/mender link on rootfs A" in result.stderr


def test_inject_with_the_mender_artifact_backend(cli, make_image, keyset, tmp_path):
    base = make_image("sdimg", empty_rootfs_b=True)
    debugfs(base, "data", "rmdir /mender")
    before = sha256(base)
    result = cli(
        "inject", "--backend", "mender-artifact", "--key", keyset / "rsa.key", base, "--out", tmp_path / "unit.sdimg"
    )
    assert result.returncode == 0, result.stderr
    assert sha256(base) == before
    assert verify_image(tmp_path / "unit.sdimg", expected=keys.read_public_file(keyset / "rsa.pub")).ok


def test_mender_artifact_backend_refuses_layouts_it_cannot_handle(cli, make_image, keyset):
    img = make_image("extended")
    before = sha256(img)
    result = cli("inject", "--backend", "mender-artifact", "--key", keyset / "rsa.key", img)
    assert result.returncode == 2 and "exactly 4 partitions" in result.stderr
    assert sha256(img) == before


# --- verify: each failure names its check --------------------------------------------------------


def test_missing_key(make_image):
    report = verify_image(make_image("sdimg"))
    assert failed(report) == [verify.PRESENT]
    assert status(report)[verify.PARSES] == status(report)[verify.MODE] == "skip"
    assert report.fingerprint is None


def test_mismatched_key(cli, injected, keyset):
    result = cli("verify", injected, "--pubkey", keyset / "other.pub")
    assert result.returncode == 1
    assert "key matches expected" in result.stderr and "FAIL" in result.stdout
    report = verify_image(injected, expected=keys.read_public_file(keyset / "other.pub"), fsck=False)
    assert failed(report) == [verify.MATCHES]
    assert keys.fingerprint(keys.read_public_file(keyset / "other.pub")) in report.check(verify.MATCHES).detail


def test_pkcs1_public_key_as_expected_fails_the_match_check(cli, injected, keyset):
    result = cli("verify", injected, "--pubkey", keyset / "rsa-pkcs1.pub", "--json", "--no-fsck")
    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["items"]}
    assert checks[verify.MATCHES]["status"] == "fail"
    assert "PKCS#1" in checks[verify.MATCHES]["detail"] and "matches it" in checks[verify.MATCHES]["detail"]


def test_encrypted_key_in_image(make_image, keyset, tmp_path):
    img = make_image("sdimg")
    staged = tmp_path / "enc.pem"
    shutil.copy(keyset / "encrypted.key", staged)
    debugfs(img, "data", f"write {staged} {KEY_IN_DATA}", f"sif {KEY_IN_DATA} mode 0100600")
    report = verify_image(img, expected=keys.read_public_file(keyset / "rsa.pub"))
    assert failed(report) == [verify.PARSES]
    assert "encrypted" in report.check(verify.PARSES).detail
    assert status(report)[verify.MATCHES] == "skip"


@pytest.mark.parametrize("mode,hint", [("0644", ""), ("0130", "-m 0600")])
def test_wrong_mode(injected, mode, hint):
    debugfs(injected, "data", f"sif {KEY_IN_DATA} mode 0100{mode[1:]}")
    report = verify_image(injected, fsck=False)
    assert failed(report) == [verify.MODE]
    assert report.check(verify.MODE).detail.startswith(mode) and hint in report.check(verify.MODE).detail


def test_wrong_owner(injected):
    debugfs(injected, "data", f"sif {KEY_IN_DATA} uid 1000")
    report = verify_image(injected, fsck=False)
    assert failed(report) == [verify.OWNER]
    assert report.check(verify.OWNER).detail.startswith("1000:0")


def test_missing_symlink(make_image, keyset):
    img = make_image("sdimg", no_symlink=True)
    inject_key(img, (keyset / "rsa.key").read_bytes())
    report = verify_image(img, fsck=False)
    assert failed(report) == [verify.LINK_A, verify.LINK_B]
    assert "/var/lib/mender does not exist" in report.check(verify.LINK_A).detail


@pytest.mark.parametrize(
    "target,ok",
    [
        ("/data/mender", True),
        ("/data/mender/", True),
        ("../../data/mender", True),
        ("../../data/./mender", True),
        ("/data/other", False),
        ("/var/lib/mender-real", False),
    ],
)
def test_link_targets_absolute_and_relative(injected, target, ok):
    img = injected
    debugfs(img, "rootfs-a", "rm /var/lib/mender", f"symlink /var/lib/mender {target}")
    report = verify_image(img, fsck=False)
    assert (report.check(verify.LINK_A).status == "pass") is ok, report.check(verify.LINK_A)
    assert target.rstrip("/") in report.check(verify.LINK_A).detail


def test_link_through_an_intermediate_symlink_and_a_plain_directory(injected):
    debugfs(
        injected,
        "rootfs-a",
        "rm /var/lib/mender",
        "mkdir /persist",
        "symlink /persist/m ../data/mender",
        "symlink /var/lib/mender /persist/m",
    )
    assert verify_image(injected, fsck=False).check(verify.LINK_A).status == "pass"
    debugfs(injected, "rootfs-a", "rm /var/lib/mender", "mkdir /var/lib/mender")
    check = verify_image(injected, fsck=False).check(verify.LINK_A)
    assert check.status == "fail" and "is a directory on rootfs A" in check.detail


def test_full_rootfs_b_is_checked_and_empty_one_warns(make_image, keyset):
    full = make_image("sdimg")
    inject_key(full, (keyset / "rsa.key").read_bytes())
    assert status(verify_image(full, fsck=False))[verify.LINK_B] == "pass"
    empty = make_image("sdimg", empty_rootfs_b=True)
    inject_key(empty, (keyset / "rsa.key").read_bytes())
    report = verify_image(empty, fsck=False)
    assert report.ok and report.check(verify.LINK_B).status == "warn"


def test_corrupted_data_filesystem(cli, injected):
    debugfs(injected, "data", "sif /mender links_count 7")
    report = verify_image(injected)
    assert failed(report) == [verify.FSCK]
    assert "errors found" in report.check(verify.FSCK).detail
    assert cli("verify", injected).returncode == 1
    skipped = verify_image(injected, fsck=False)
    assert skipped.ok and skipped.check(verify.FSCK).status == "skip"


def test_wiped_data_superblock(injected):
    start = open_layout(injected).require("data").partition.start
    with open(injected, "r+b") as f:
        f.seek(start + 1024)
        f.write(bytes(1024))
    report = verify_image(injected)
    assert failed(report) == [verify.DATA]
    forced = verify_image(injected, overrides={"data": 4})
    assert failed(forced) == [verify.DATA, verify.FSCK]


@pytest.mark.parametrize("mode,ok", [("600", False), ("0600", True)])
def test_mender_artifact_install_decimal_trap(make_image, keyset, tmp_path, mode, ok):
    img = make_image("sdimg", empty_rootfs_b=True)
    key = tmp_path / "k.pem"
    shutil.copy(keyset / "rsa.key", key)
    run_tool("mender-artifact", "install", "-m", mode, str(key), f"{img}:{DEFAULT_KEY_PATH}")
    report = verify_image(img, expected=keys.read_public_file(keyset / "rsa.pub"), fsck=False)
    assert report.ok is ok
    if not ok:
        assert failed(report) == [verify.MODE] and "0130" in report.check(verify.MODE).detail


def test_no_data_partition_is_a_failed_check(make_image, keyset):
    img = make_image("sdimg")
    report = verify_image(img, overrides={"data": 3})  # rootfs B taken as data: no key there
    assert verify.PRESENT in failed(report)


# --- verify: read-only, block devices, unusable input --------------------------------------------


def test_verify_never_opens_the_target_for_writing(injected, keyset, monkeypatch):
    before, mtime = sha256(injected), injected.stat().st_mtime_ns
    opened = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, mode="r", *a, **kw):
        opened.append((str(file), mode))
        return real_open(file, mode, *a, **kw)

    def spy_os_open(path, flags, *a, **kw):
        opened.append((str(path), "w" if flags & (os.O_WRONLY | os.O_RDWR) else "r"))
        return real_os_open(path, flags, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    report = verify_image(injected, expected=keys.read_public_file(keyset / "rsa.pub"))
    monkeypatch.undo()
    assert report.ok
    mine = [(f, m) for f, m in opened if Path(f).name == injected.name]
    assert mine and all(set(m) <= set("rb") for _, m in mine), mine
    assert (sha256(injected), injected.stat().st_mtime_ns) == (before, mtime)


def test_verify_a_read_only_block_device(cli, injected, keyset):
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup for a loop device")
    proc = subprocess.run(["losetup", "--find", "--show", "--read-only", str(injected)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"no loop device here: {proc.stderr.strip()}")
    loop = proc.stdout.strip()
    try:
        result = cli("verify", loop, "--pubkey", keyset / "rsa.pub", "--json")
    finally:
        subprocess.run(["losetup", "--detach", loop], check=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["target"] == loop


def test_unusable_input_exits_2(cli, tmp_path, injected, keyset):
    text = tmp_path / "notes.sdimg"
    text.write_text("hello\n" * 200)
    for args in (
        [text],
        [tmp_path / "missing.sdimg"],
        [injected, "--pubkey", keyset / "garbage.key"],
        [injected, "--fingerprint", "abc"],
        [injected, "--path", "/etc/key.pem"],
        [injected, "--pubkey", keyset / "rsa.pub", "--fingerprint", "0" * 64],
    ):
        result = cli("verify", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("imagetools: error: ") and "Traceback" not in result.stderr
    with pytest.raises(ImageFormatError):
        verify_image(text)
    with pytest.raises(KeyMaterialError):
        verify_image(injected, expected=b"garbage")


def test_human_output(cli, injected, keyset):
    result = cli("verify", injected, "--pubkey", keyset / "rsa.pub")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert len([ln for ln in lines if " PASS " in ln]) == 10 and " WARN " in result.stdout
    assert result.stdout.rstrip().endswith("verify: OK")
    assert keys.fingerprint(keys.read_public_file(keyset / "rsa.pub")) in result.stdout


def test_data_path_forms():
    assert verify.data_path("/data/mender/mender-agent.pem") == KEY_IN_DATA
    assert verify.data_path("/var/lib/mender/mender-agent.pem") == KEY_IN_DATA
    assert verify.data_path("/data/./x/../k.pem") == "/k.pem"
