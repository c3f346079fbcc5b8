"""Loading a private key proves the pair works with a signature (keys.check_pair) instead of
OpenSSL's RSA consistency check: milliseconds instead of ~130 ms for RSA-3072, and a corrupt or
inconsistent key is still refused with a KeyMaterialError."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from imagetools import keys, verify
from imagetools.errors import KeyMaterialError
from imagetools.inject import write_key
from imagetools.layout import open_layout
from imagetools.verify import verify_image

NO_ENCRYPTION = serialization.NoEncryption()


@pytest.fixture(scope="module")
def rsa3072() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 3072)


def _pem(key, fmt=serialization.PrivateFormat.TraditionalOpenSSL) -> bytes:
    """PEM serialized without private_pem, so this process does not know the key (no shortcut)."""
    return key.private_bytes(serialization.Encoding.PEM, fmt, NO_ENCRYPTION)


def _tampered(key: rsa.RSAPrivateKey, **changes) -> bytes:
    """The key's PKCS#1 PEM with some private numbers changed, encoded by hand: cryptography's
    RSAPrivateNumbers refuses p*q != n even with unsafe_skip_rsa_key_validation, loading does not."""
    n = key.private_numbers()
    fields = {
        "n": n.public_numbers.n,
        "e": n.public_numbers.e,
        "d": n.d,
        "p": n.p,
        "q": n.q,
        "dmp1": n.dmp1,
        "dmq1": n.dmq1,
        "iqmp": n.iqmp,
        **changes,
    }
    body = _der_int(0) + b"".join(_der_int(fields[f]) for f in ("n", "e", "d", "p", "q", "dmp1", "dmq1", "iqmp"))
    der = b"\x30" + _der_len(len(body)) + body
    return keys._encode_pem("RSA PRIVATE KEY", der)


def _der_len(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_int(v: int) -> bytes:
    raw = v.to_bytes(v.bit_length() // 8 + 1, "big")
    return b"\x02" + _der_len(len(raw)) + raw


def _best(fn, runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def test_rsa3072_load_and_check_takes_milliseconds(rsa3072):
    pem = _pem(rsa3072)
    before = _best(lambda: serialization.load_pem_private_key(pem, None))  # OpenSSL's full check

    def now():
        keys._KNOWN_VALID.discard(__import__("hashlib").sha256(pem).digest())
        keys.load_private(pem, "k.pem")

    after = _best(now)
    print(
        f"\nRSA-3072 load+check: before (OpenSSL consistency check) {before * 1000:.1f} ms, "
        f"after (skip + arithmetic + PKCS#1 v1.5 signature) {after * 1000:.1f} ms, {before / after:.0f}x"
    )
    assert after * 5 < before
    assert after < 0.05


@pytest.mark.parametrize(
    "make",
    [
        lambda: rsa.generate_private_key(65537, 2048),
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["rsa2048", "p256", "p384", "ed25519"],
)
def test_good_keys_of_every_type_pass(make):
    key = make()
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        if isinstance(key, ed25519.Ed25519PrivateKey) and fmt != serialization.PrivateFormat.PKCS8:
            continue
        loaded = keys.load_private(_pem(key, fmt), "k.pem", expected=key.public_key())
        assert keys.same_key(loaded, key)
    keys.check_pair(key)


@pytest.mark.parametrize(
    "change,why",
    [
        ("dmp1", "CRT values"),
        ("dmq1", "CRT values"),
        ("iqmp", "CRT values"),
        ("d", "private exponent"),
        ("q", "p\\*q is not its modulus"),
        ("p", "p\\*q is not its modulus"),
    ],
)
def test_inconsistent_rsa_keys_are_refused(rsa3072, change, why):
    """OpenSSL signs correctly with bad CRT values (it checks the CRT result with e and redoes it
    with d), so the arithmetic checks are what catches these; a signature alone would pass."""
    n = rsa3072.private_numbers()
    other = rsa.generate_private_key(65537, 3072).private_numbers()
    value = getattr(other, change) if change in ("p", "q") else getattr(n, change) ^ 2
    pem = _tampered(rsa3072, **{change: value})
    started = time.monotonic()
    with pytest.raises(KeyMaterialError, match=rf"k\.pem: RSA private key is inconsistent \(its {why}"):
        keys.load_private(pem, "k.pem")
    assert time.monotonic() - started < 0.05


def test_rsa_key_with_a_composite_factor_fails_its_signature():
    """p*q = n and every exponent consistent, but 'p' is the product of two primes: only the
    signature shows the key does not work (OpenSSL's full check finds it by primality)."""
    p1, p2 = (
        rsa.generate_private_key(65537, 1536).private_numbers().p,
        rsa.generate_private_key(65537, 1536).private_numbers().p,
    )
    q = rsa.generate_private_key(65537, 3072).private_numbers().p
    p, e = p1 * p2, 65537
    lam = (p - 1) * (q - 1) // __import__("math").gcd(p - 1, q - 1)
    d = pow(e, -1, lam)
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q))
    pem = _pem(numbers.private_key(unsafe_skip_rsa_key_validation=True))
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(pem, None)  # what OpenSSL says
    with pytest.raises(KeyMaterialError, match=r"k\.pem: RSA-\d+ private key does not work: a signature"):
        keys.load_private(pem, "k.pem")


def test_a_pair_that_does_not_match_fails_the_signature(rsa3072):
    other = rsa.generate_private_key(65537, 2048)
    with pytest.raises(KeyMaterialError, match="does not verify"):
        keys.check_pair(rsa3072, other.public_key(), "k")
    ed = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(KeyMaterialError, match="does not verify"):
        keys.check_pair(ed, ed25519.Ed25519PrivateKey.generate().public_key(), "k")
    p256 = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(KeyMaterialError, match="does not verify"):
        keys.check_pair(p256, ec.generate_private_key(ec.SECP256R1()).public_key(), "k")


class _Recording:
    """An expected public key that records the signatures checked with it."""

    def __init__(self, public):
        self.public, self.verified = public, 0

    def public_bytes(self, *args):
        return self.public.public_bytes(*args)

    def verify(self, *args):
        self.verified += 1
        return self.public.verify(*args)


def test_the_signature_is_checked_with_the_expected_public_key(rsa3072):
    pem = keys.private_pem(rsa3072)  # known to this process: even so, an expected key is used
    expected = _Recording(rsa3072.public_key())
    keys.load_private(pem, "k.pem", expected=expected)
    assert expected.verified == 1
    stranger = _Recording(rsa.generate_private_key(65537, 2048).public_key())
    keys.load_private(pem, "k.pem", expected=stranger)  # not the same key: the match check fails it
    assert stranger.verified == 0


def test_verify_refuses_an_inconsistent_key_in_an_image(make_image, rsa3072):
    img = make_image("sdimg")
    bad = _tampered(rsa3072, dmp1=rsa3072.private_numbers().dmp1 ^ 2)
    write_key(img, open_layout(img).require("data"), bad, verify.data_path(verify.DEFAULT_KEY_PATH))
    report = verify_image(img, expected=rsa3072.public_key(), fsck=False)
    assert [c.name for c in report.failed] == [verify.PARSES]
    assert "inconsistent (its CRT values" in report.check(verify.PARSES).detail


def test_verify_with_pubkey_passes_and_checks_the_signature_fast(make_image, rsa3072, cli, tmp_path):
    img = make_image("sdimg")
    write_key(img, open_layout(img).require("data"), _pem(rsa3072), verify.data_path(verify.DEFAULT_KEY_PATH))
    pub = tmp_path / "public.key"
    pub.write_bytes(keys.public_pem(rsa3072))
    started = time.monotonic()
    report = verify_image(img, expected=pub.read_bytes(), fsck=False)
    took = time.monotonic() - started
    assert report.ok, report.failed
    assert report.check(verify.MATCHES).status == "pass"
    run = cli("verify", img, "--pubkey", pub, "--no-fsck")
    assert run.returncode == 0, run.stderr
    print(f"\nverify_image(fsck=False) with an RSA-3072 key in the image: {took * 1000:.0f} ms")
