"""Unit tests for imagetools.keys: formats, fingerprints, refusals, 0600 files, parallel generation."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa
from hypothesis import given
from hypothesis import strategies as st

from imagetools import keys
from imagetools.errors import EnvironmentProblem, KeyMaterialError

HEADERS = {
    ("rsa", "pkcs1"): b"-----BEGIN RSA PRIVATE KEY-----",
    ("rsa", "pkcs8"): b"-----BEGIN PRIVATE KEY-----",
    ("ecdsa", "pkcs1"): b"-----BEGIN EC PRIVATE KEY-----",
    ("ecdsa", "pkcs8"): b"-----BEGIN PRIVATE KEY-----",
    ("ed25519", "pkcs8"): b"-----BEGIN PRIVATE KEY-----",
}


@pytest.fixture(scope="module")
def rsa_key():
    return keys.generate(keys.KeySpec(type="rsa", bits=2048))


@pytest.mark.parametrize("key_type,fmt", sorted(HEADERS))
def test_private_pem_round_trips_in_each_format(key_type, fmt, rsa_key):
    key = rsa_key if key_type == "rsa" else keys.generate(keys.KeySpec(type=key_type))
    pem = keys.private_pem(key, fmt)
    assert pem.startswith(HEADERS[key_type, fmt])
    loaded = keys.load_private(pem, "test")
    assert keys.same_key(loaded, key)
    assert keys.public_pem(key).startswith(b"-----BEGIN PUBLIC KEY-----")


def test_ed25519_has_no_traditional_form():
    spec = keys.KeySpec(type="ed25519", format="pkcs1")
    assert spec.effective_format == "pkcs8"
    assert keys.private_pem(keys.generate(spec), "pkcs1").startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("curve,name", [("p256", "secp256r1"), ("p384", "secp384r1"), ("p521", "secp521r1")])
def test_ecdsa_curves(curve, name):
    key = keys.generate(keys.KeySpec(type="ecdsa", curve=curve))
    assert keys.describe(key) == f"ECDSA-{name}"
    keys.check_acceptable(key, "test")


def test_fingerprint_is_sha256_of_spki_der_and_format_independent(rsa_key):
    der = rsa_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert keys.fingerprint(rsa_key) == hashlib.sha256(der).hexdigest()
    pkcs8 = keys.load_private(keys.private_pem(rsa_key, "pkcs8"), "a")
    pkcs1 = keys.load_private(keys.private_pem(rsa_key, "pkcs1"), "b")
    assert keys.fingerprint(pkcs8) == keys.fingerprint(pkcs1) == keys.fingerprint(rsa_key.public_key())
    assert keys.describe(rsa_key) == "RSA-2048"


def test_public_key_pem_wrapping_does_not_matter(rsa_key):
    pem = keys.public_pem(rsa_key).decode()
    body = "".join(pem.splitlines()[1:-1])
    rewrapped = (
        "-----BEGIN PUBLIC KEY-----\n"
        + "\n".join(body[i : i + 76] for i in range(0, len(body), 76))
        + "\n-----END PUBLIC KEY-----\n"
    )
    assert keys.same_key(keys.load_public(rewrapped.encode(), "x"), rsa_key)


@pytest.mark.parametrize("encryption", ["pkcs8", "traditional"])
def test_encrypted_private_key_is_refused(encryption, rsa_key):
    fmt = serialization.PrivateFormat.PKCS8 if encryption == "pkcs8" else serialization.PrivateFormat.TraditionalOpenSSL
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, fmt, serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(KeyMaterialError, match="encrypted"):
        keys.load_private(pem, "k.pem")


@pytest.mark.parametrize("data", [b"", b"hello", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_garbage_private_key_is_refused(data):
    with pytest.raises(KeyMaterialError, match="k.pem: not a PEM private key"):
        keys.load_private(data, "k.pem")


def test_public_key_given_as_private_is_refused(rsa_key):
    with pytest.raises(KeyMaterialError, match="not a PEM private key"):
        keys.load_private(keys.public_pem(rsa_key), "k.pem")


@pytest.mark.parametrize("make", [lambda: dsa.generate_private_key(2048), lambda: ed448.Ed448PrivateKey.generate()])
def test_unsupported_key_types_are_refused(make):
    pem = make().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyMaterialError, match="unsupported key type"):
        keys.load_private(pem, "k.pem")


def test_small_rsa_and_foreign_curves_are_not_acceptable():
    with pytest.raises(KeyMaterialError, match="1024 bits"):
        keys.check_acceptable(rsa.generate_private_key(65537, 1024), "k")
    with pytest.raises(KeyMaterialError, match="secp256k1"):
        keys.check_acceptable(ec.generate_private_key(ec.SECP256K1()), "k")


def test_pkcs1_public_key_is_refused_with_the_fix(rsa_key):
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    with pytest.raises(KeyMaterialError, match="RSAPublicKey_in"):
        keys.load_public(pem, "pub.pem")


def test_keyspec_validation():
    with pytest.raises(KeyMaterialError, match="at least 2048"):
        keys.KeySpec(bits=1024)
    for bad in ({"type": "dsa"}, {"curve": "p192"}, {"format": "der"}):
        with pytest.raises(KeyMaterialError):
            keys.KeySpec(**bad)


@given(st.binary(min_size=32, max_size=32), st.sampled_from(["plain", "upper", "colons", "prefixed", "spaced"]))
def test_normalize_fingerprint_accepts_common_spellings(raw, style):
    hexfp = raw.hex()
    text = {
        "plain": hexfp,
        "upper": hexfp.upper(),
        "colons": ":".join(hexfp[i : i + 2] for i in range(0, 64, 2)),
        "prefixed": "SHA256:" + hexfp,
        "spaced": " ".join(hexfp[i : i + 4] for i in range(0, 64, 4)),
    }[style]
    assert keys.normalize_fingerprint(text) == hexfp


@given(st.text(max_size=80))
def test_normalize_fingerprint_rejects_non_fingerprints(text):
    stripped = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len("".join(stripped.split())) == 64 and all(c in "0123456789abcdef" for c in "".join(stripped.split())):
        return
    with pytest.raises(KeyMaterialError):
        keys.normalize_fingerprint(text)


def test_write_secret_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        keys.write_secret(tmp_path / "k", b"secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_write_secret_never_overwrites_without_force(tmp_path):
    target = tmp_path / "k"
    target.write_bytes(b"old")
    target.chmod(0o644)
    with pytest.raises(EnvironmentProblem, match="--force"):
        keys.write_secret(target, b"new")
    assert target.read_bytes() == b"old"
    keys.write_secret(target, b"new", force=True)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_pair_paths_names_like_keygen_client(tmp_path):
    assert keys.pair_paths(tmp_path, "unit-") == [(tmp_path / "unit-private.key", tmp_path / "unit-public.key")]
    many = keys.pair_paths(tmp_path, "u", 12)
    assert many[0] == (tmp_path / "u01-private.key", tmp_path / "u01-public.key")
    assert many[-1][1] == tmp_path / "u12-public.key"
    assert len({p for pair in many for p in pair}) == 24


def test_generate_files_in_parallel(tmp_path):
    pairs = keys.pair_paths(tmp_path / "out", "", 4)
    seen = []
    made = keys.generate_files(keys.KeySpec(type="ed25519"), pairs, jobs=2, progress=seen.append)
    assert [(k.private, k.public) for k in made] == pairs
    assert len(seen) == 4 and len({k.fingerprint for k in made}) == 4
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o700
    for k in made:
        assert stat.S_IMODE(k.private.stat().st_mode) == 0o600
        assert keys.fingerprint(keys.read_private_file(k.private)) == k.fingerprint
        assert keys.fingerprint(keys.read_public_file(k.public)) == k.fingerprint


def test_generate_files_refuses_before_generating_anything(tmp_path):
    pairs = keys.pair_paths(tmp_path, "", 3)
    pairs[2][1].write_text("keep")
    with pytest.raises(EnvironmentProblem, match="3-public.key exists"):
        keys.generate_files(keys.KeySpec(type="ed25519"), pairs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3-public.key"]
    made = keys.generate_files(keys.KeySpec(type="ed25519"), pairs, force=True)
    assert pairs[2][1].read_bytes() == keys.public_pem(keys.read_private_file(made[2].private))
