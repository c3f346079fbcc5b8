"""`imagetools keygen` through the real console script, checked against OpenSSL."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess

import pytest
from support.tools import run_tool

pytestmark = pytest.mark.integration


def _openssl_fingerprint(public_key) -> str:
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(public_key), "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return hashlib.sha256(der).hexdigest()


def test_default_is_keygen_client_rsa_3072(cli, tmp_path):
    result = cli("keygen", "--json")
    assert result.returncode == 0, result.stderr
    [made] = json.loads(result.stdout)["items"]
    private = tmp_path / "keys-client-generated" / "private.key"
    public = tmp_path / "keys-client-generated" / "public.key"
    assert made == {
        "private": "keys-client-generated/private.key",
        "public": "keys-client-generated/public.key",
        "type": "RSA-3072",
        "format": "pkcs1",
        "fingerprint": made["fingerprint"],
    }
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    derived = run_tool("openssl", "pkey", "-in", str(private), "-pubout").stdout
    assert derived == public.read_text()
    assert made["fingerprint"] == _openssl_fingerprint(public)
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def test_prefix_from_environment_and_option(cli, tmp_path):
    assert cli("keygen", "--type", "ed25519", env={"PREFIX_KEY": "unit7-"}).returncode == 0
    assert (tmp_path / "keys-client-generated" / "unit7-private.key").exists()
    assert cli("keygen", "--type", "ed25519", "--prefix", "opt-", env={"PREFIX_KEY": "env-"}).returncode == 0
    assert (tmp_path / "keys-client-generated" / "opt-public.key").exists()


def test_count_makes_distinct_numbered_pairs(cli, tmp_path):
    result = cli(
        "keygen",
        "--type",
        "ecdsa",
        "--curve",
        "p384",
        "--format",
        "pkcs8",
        "--count",
        "3",
        "--out-dir",
        "out",
        "--prefix",
        "dev-",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)["items"]
    assert [m["private"] for m in made] == [f"out/dev-{n}-private.key" for n in (1, 2, 3)]
    assert len({m["fingerprint"] for m in made}) == 3
    for m in made:
        assert m["type"] == "ECDSA-secp384r1"
        assert (tmp_path / m["private"]).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
        assert stat.S_IMODE((tmp_path / m["private"]).stat().st_mode) == 0o600
        assert m["fingerprint"] == _openssl_fingerprint(tmp_path / m["public"])


def test_existing_files_are_kept_without_force(cli, tmp_path):
    assert cli("keygen", "--type", "ed25519").returncode == 0
    private = tmp_path / "keys-client-generated" / "private.key"
    before = private.read_bytes()
    again = cli("keygen", "--type", "ed25519")
    assert again.returncode == 3
    assert "private.key exists" in again.stderr and "use --force" in again.stderr
    assert again.stderr.count("\n") == 1
    assert private.read_bytes() == before
    assert cli("keygen", "--type", "ed25519", "--force").returncode == 0
    assert private.read_bytes() != before
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "args,message",
    [
        (["--type", "ed25519", "--format", "pkcs1"], "no PKCS#1"),
        (["--bits", "1024"], "at least 2048"),
        (["--type", "ecdsa", "--bits", "4096"], "--bits applies to RSA"),
        (["--type", "rsa", "--curve", "p384"], "--curve applies to ECDSA"),
        (["--count", "0"], "--count"),
    ],
)
def test_bad_options_exit_2(cli, tmp_path, args, message):
    result = cli("keygen", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "keys-client-generated").exists()


def test_human_output_lists_files_and_fingerprints(cli):
    result = cli("keygen", "--type", "ed25519", "--count", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["PRIVATE", "(0600)"]
    assert "keys-client-generated/2-private.key" in lines[2] and "Ed25519 PKCS8" in lines[2]
