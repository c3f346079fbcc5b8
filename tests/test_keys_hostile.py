"""Key files from outside are not trusted: special files, huge files, bundles, stray text, PEM
headers, encryption read from the PEM structure, RSA size and exponent limits, keygen --bits."""

from __future__ import annotations

import base64
import os
import shutil
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.limits import finishes_within, run_limited, run_python
from support.tls import certificate_pem
from support.tools import ROOT

from imagetools import keys
from imagetools.errors import KeyMaterialError

NO_ENCRYPTION = serialization.NoEncryption()


@pytest.fixture(scope="module")
def rsa_key():
    return keys.generate(keys.KeySpec(type="rsa", bits=2048))


@pytest.fixture(scope="module")
def ed_pem():
    return keys.private_pem(ed25519.Ed25519PrivateKey.generate(), "pkcs8")


# --- special and oversized files -------------------------------------------------------------------


@pytest.mark.parametrize(
    "read", [lambda p: keys.read_key_bytes(p, "private key"), keys.read_private_file, keys.read_public_file]
)
def test_fifo_is_refused_without_blocking(tmp_path, read):
    fifo = tmp_path / "key.pem"
    os.mkfifo(fifo)
    error = finishes_within(5, read, fifo)
    assert isinstance(error, KeyMaterialError), error
    assert f"{fifo} is a FIFO, not a regular file" in str(error)


@pytest.mark.parametrize(
    "read,what",
    [
        ("read_private_file(p)", "private key"),
        ("read_public_file(p)", "public key"),
        ("read_key_bytes(p, 'key file')", "key file"),
    ],
)
def test_dev_zero_is_refused_as_not_a_regular_file(read, what):
    child = run_python(f"import sys; from imagetools import keys; p = sys.argv[1]; keys.{read}", "/dev/zero")
    assert child.returncode == 1
    assert child.stderr.splitlines()[-1] == (
        f"imagetools.errors.KeyMaterialError: {what} /dev/zero is a character device, not a regular file"
    )


def test_directory_is_refused(tmp_path):
    with pytest.raises(KeyMaterialError, match="is a directory, not a regular file"):
        keys.read_public_file(tmp_path)


def test_size_cap_is_64_kib(tmp_path, ed_pem):
    padded = tmp_path / "padded.pem"
    padded.write_bytes(ed_pem + b"\n" * (keys.MAX_KEY_FILE - len(ed_pem)))
    assert keys.read_private_file(padded)
    padded.write_bytes(padded.read_bytes() + b"\n")
    with pytest.raises(KeyMaterialError, match=rf"{padded} is larger than 64 KiB"):
        keys.read_private_file(padded)


def test_huge_sparse_file_is_refused_without_reading_it(tmp_path):
    huge = tmp_path / "huge.pem"
    with open(huge, "wb") as f:
        f.truncate(8 << 30)
    started = time.monotonic()
    with pytest.raises(KeyMaterialError, match="larger than 64 KiB"):
        keys.read_key_bytes(huge, "private key")
    assert time.monotonic() - started < 1


def test_at_most_cap_plus_one_bytes_are_read_whatever_the_size_says(tmp_path, monkeypatch):
    """A file that grows after fstat (or a /proc file, which reports size 0) is still cut off."""
    big = tmp_path / "big.pem"
    big.write_bytes(b"A" * (4 << 20))
    real_fstat, real_read, total = os.fstat, os.read, []

    def fstat_size_zero(fd):
        st = real_fstat(fd)
        if st.st_ino != big.stat().st_ino:
            return st
        return os.stat_result(
            (
                st.st_mode,
                st.st_ino,
                st.st_dev,
                st.st_nlink,
                st.st_uid,
                st.st_gid,
                0,
                st.st_atime,
                st.st_mtime,
                st.st_ctime,
            )
        )

    def counting_read(fd, n):
        data = real_read(fd, n)
        if real_fstat(fd).st_ino == big.stat().st_ino:
            total.append(len(data))
        return data

    monkeypatch.setattr(keys.os, "fstat", fstat_size_zero)
    monkeypatch.setattr(keys.os, "read", counting_read)
    with pytest.raises(KeyMaterialError, match="larger than 64 KiB"):
        keys.read_key_bytes(big, "private key")
    assert sum(total) == keys.MAX_KEY_FILE + 1


def test_oversized_bytes_are_refused_by_the_loaders_too(ed_pem):
    data = ed_pem + b"\n" * keys.MAX_KEY_FILE
    for load in (keys.load_private, keys.load_public):
        with pytest.raises(KeyMaterialError, match="more than a key file holds"):
            load(data, "k.pem")


def test_missing_and_unreadable_files_name_the_file(tmp_path, ed_pem):
    with pytest.raises(KeyMaterialError, match=r"private key .*missing.pem not found"):
        keys.read_private_file(tmp_path / "missing.pem")
    locked = tmp_path / "locked.pem"
    locked.write_bytes(ed_pem)
    locked.chmod(0)
    if os.access(locked, os.R_OK):
        pytest.skip("running as root: permissions do not stop reading")
    with pytest.raises(KeyMaterialError, match=r"cannot read private key .*locked.pem: Permission denied"):
        keys.read_private_file(locked)


# --- exactly one PEM block -------------------------------------------------------------------------


def test_certificate_and_key_bundle_is_refused(ed_pem):
    for bundle, labels in (
        (certificate_pem() + ed_pem, "CERTIFICATE, PRIVATE KEY"),
        (ed_pem + certificate_pem(), "PRIVATE KEY, CERTIFICATE"),
    ):
        with pytest.raises(KeyMaterialError) as err:
            keys.load_private(bundle, "bundle.pem")
        assert str(err.value) == (
            f"bundle.pem: holds 2 PEM blocks ({labels}); the Mender client reads only "
            f"the first: put the private key alone in the file"
        )


def test_key_followed_by_a_second_key_is_refused(ed_pem, rsa_key):
    with pytest.raises(KeyMaterialError, match=r"holds 2 PEM blocks \(PRIVATE KEY, RSA PRIVATE KEY\)"):
        keys.load_private(ed_pem + keys.private_pem(rsa_key), "two.pem")


@pytest.mark.parametrize(
    "before,after,line",
    [
        (b"Bag Attributes\n    localKeyID: 01\n", b"", 1),
        (b"\n\n# a note\n", b"", 3),
        (b"", b"trailing text\n", 4),
    ],
)
def test_text_outside_the_block_is_refused_with_its_line(ed_pem, before, after, line):
    with pytest.raises(
        KeyMaterialError,
        match=rf"k.pem: line {line} is text outside the PEM block; "
        rf"put the private key alone in the file",
    ):
        keys.load_private(before + ed_pem + after, "k.pem")


def test_blank_lines_crlf_and_trailing_spaces_around_the_block_are_fine(ed_pem):
    key = keys.load_private(ed_pem, "a")
    text = b"\n \t\n" + ed_pem.replace(b"\n", b"  \r\n") + b"\r\n\n"
    assert keys.same_key(keys.load_private(text, "b"), key)


def test_public_key_file_holds_one_public_key(rsa_key):
    pem = keys.public_pem(rsa_key)
    with pytest.raises(KeyMaterialError, match=r"holds 2 PEM blocks \(CERTIFICATE, PUBLIC KEY\)"):
        keys.load_public(certificate_pem() + pem, "pub.pem")
    with pytest.raises(KeyMaterialError, match="line 1 is text outside the PEM block; put the public key alone"):
        keys.load_public(b"server key:\n" + pem, "pub.pem")
    with pytest.raises(KeyMaterialError, match="not a PEM public key \\(it holds a 'CERTIFICATE' block"):
        keys.load_public(certificate_pem(), "pub.pem")
    with pytest.raises(KeyMaterialError, match="not a PEM public key \\(it holds a 'RSA PRIVATE KEY' block"):
        keys.load_public(keys.private_pem(rsa_key), "pub.pem")


def test_pkcs1_public_key_is_recognised_by_its_label_not_a_substring(rsa_key):
    pkcs1 = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    with pytest.raises(KeyMaterialError, match="RSAPublicKey_in"):
        keys.load_public(pkcs1, "pub.pem")
    # A PKCS#1 body mislabelled 'PUBLIC KEY' is not SPKI: refused, without the conversion hint.
    mislabelled = pkcs1.replace(b"RSA PUBLIC KEY", b"PUBLIC KEY")
    with pytest.raises(KeyMaterialError, match="not a PEM public key") as err:
        keys.load_public(mislabelled, "pub.pem")
    assert "RSAPublicKey_in" not in str(err.value)


def test_der_and_byte_order_mark_are_refused_with_a_hint(rsa_key, ed_pem):
    der = rsa_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION)
    with pytest.raises(KeyMaterialError, match="looks like DER: convert it with openssl pkey -inform DER"):
        keys.load_private(der, "k.der")
    with pytest.raises(KeyMaterialError, match="byte order mark"):
        keys.load_private(b"\xef\xbb\xbf" + ed_pem, "k.pem")


@pytest.mark.parametrize(
    "mangle,message",
    [
        (lambda pem: pem.replace(b"-----END PRIVATE KEY-----\n", b""), "has no '-----END PRIVATE KEY-----' line"),
        (
            lambda pem: pem.replace(b"END PRIVATE KEY", b"END RSA PRIVATE KEY"),
            "expected base64 or '-----END PRIVATE KEY-----'",
        ),
        (lambda pem: pem.replace(b"\n-----END", b"\n\n-----END"), "line 3: expected base64"),
        (lambda pem: pem.replace(b"\n-----END", b"A\n-----END"), "is not complete base64"),
        (lambda pem: pem.replace(b"\n-----END", b"%\n-----END"), "line 2: expected base64"),
        (lambda pem: b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n", "is not complete base64 (empty"),
    ],
)
def test_malformed_blocks_name_the_problem(ed_pem, mangle, message):
    with pytest.raises(KeyMaterialError, match=message.replace("(", r"\(")):
        keys.load_private(mangle(ed_pem), "k.pem")


@pytest.mark.parametrize("body", ["eA==\neA==", "eA=\n=AAA", "eA==\n=", "eA", "e===", "=\neA=="])
def test_padding_only_at_the_end_of_the_body(body):
    text = f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n".encode()
    with pytest.raises(KeyMaterialError, match="is not complete base64"):
        keys.parse_pem(text, "k.pem")


def test_padding_may_be_wrapped_like_any_other_character():
    text = b"-----BEGIN X-----\ne\nA\n=\n=\n-----END X-----\n"
    assert keys.parse_pem(text, "k.pem").blocks[0].der == b"x"


# --- encryption is read from the PEM structure -----------------------------------------------------


def _ed25519_pem_with_encrypted_in_its_base64() -> bytes:
    """A valid key whose base64 spells ENCRYPTED: seed bytes 2..31 are base64 characters 24..63."""
    seed = b"\0\0" + base64.b64decode("ENCRYPTED" + "A" * 31)
    return keys.private_pem(ed25519.Ed25519PrivateKey.from_private_bytes(seed), "pkcs8")


def test_encrypted_in_the_base64_is_not_encryption():
    pem = _ed25519_pem_with_encrypted_in_its_base64()
    assert b"ENCRYPTED" in pem
    assert keys.describe(keys.load_private(pem, "k.pem")) == "Ed25519"


def test_encrypted_in_a_comment_outside_the_block_is_not_called_encryption(ed_pem):
    with pytest.raises(KeyMaterialError) as err:
        keys.load_private(b"# this key is NOT ENCRYPTED\n" + ed_pem, "k.pem")
    assert "line 1 is text outside the PEM block" in str(err.value)
    assert "encrypted" not in str(err.value).lower()


@pytest.mark.parametrize("header", [b"Comment: not ENCRYPTED", b"X-Note: ENCRYPTED", b"Proc-Type: 4,MIC-ONLY"])
def test_encrypted_in_another_header_is_not_called_encryption(ed_pem, header):
    begin, rest = ed_pem.split(b"\n", 1)
    with pytest.raises(KeyMaterialError) as err:
        keys.load_private(begin + b"\n" + header + b"\n\n" + rest, "k.pem")
    assert f"PEM header '{header.split(b':')[0].decode()}' in the private key" in str(err.value)
    assert "remove the header lines" in str(err.value)
    assert "is encrypted" not in str(err.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: rsa.generate_private_key(65537, 2048),
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ed25519.Ed25519PrivateKey.generate(),
    ],
)
@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_really_encrypted_keys_are_refused(make, fmt):
    key = make()
    if fmt == "traditional" and isinstance(key, ed25519.Ed25519PrivateKey):
        pytest.skip("Ed25519 has no traditional form")
    pformat = serialization.PrivateFormat.PKCS8 if fmt == "pkcs8" else serialization.PrivateFormat.TraditionalOpenSSL
    pem = key.private_bytes(serialization.Encoding.PEM, pformat, serialization.BestAvailableEncryption(b"pw"))
    [block] = keys.parse_pem(pem, "k.pem").blocks
    if fmt == "pkcs8":
        assert block.label == "ENCRYPTED PRIVATE KEY" and not block.headers
    else:
        assert block.headers[0] == ("Proc-Type", "4,ENCRYPTED") and block.headers[1][0] == "DEK-Info"
    with pytest.raises(KeyMaterialError, match="k.pem: private key is encrypted; the Mender client cannot use"):
        keys.load_private(pem, "k.pem")


# --- RSA size and exponent -------------------------------------------------------------------------


def test_keyspec_bits_are_bounded():
    assert keys.KeySpec(bits=keys.MAX_RSA_BITS).bits == 8192
    assert keys.KeySpec(bits=keys.MIN_RSA_BITS).bits == 2048
    for bad in (0, -1, 1024, 2047, 8193, 100000, 10**100, "4096", 3072.0):
        with pytest.raises(KeyMaterialError, match="at least 2048 and at most 8192 bits"):
            keys.KeySpec(bits=bad)
    assert keys.KeySpec(type="ed25519", bits=100000).type == "ed25519"  # bits apply to RSA only


def _fake_rsa_private(bits: int, e: int = 65537) -> rsa.RSAPrivateKey:
    """An RSA private key of `bits` bits made without finding primes (p and q are odd numbers, so
    OpenSSL's check would fail, but only after the size limit has refused it)."""
    p, q = (1 << (bits // 2)) + 1, (1 << (bits - bits // 2 - 1)) + 3
    pub = rsa.RSAPublicNumbers(e, p * q)
    numbers = rsa.RSAPrivateNumbers(p=p, q=q, d=3, dmp1=1, dmq1=1, iqmp=1, public_numbers=pub)
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def test_rsa_key_above_8192_bits_is_refused_before_it_is_checked():
    key = _fake_rsa_private(9000)
    assert key.key_size > keys.MAX_RSA_BITS
    for fmt in (serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8):
        pem = key.private_bytes(serialization.Encoding.PEM, fmt, NO_ENCRYPTION)
        started = time.monotonic()
        with pytest.raises(KeyMaterialError, match=rf"RSA key of {key.key_size} bits; at most 8192 are accepted"):
            keys.load_private(pem, "big.pem")
        assert time.monotonic() - started < 1
    with pytest.raises(KeyMaterialError, match="at most 8192"):
        keys.load_public(keys.public_pem(key), "big.pub")
    with pytest.raises(KeyMaterialError, match="at most 8192"):
        keys.check_acceptable(key.public_key(), "big.pub")


def test_largest_rsa_key_that_fits_in_64_kib_is_refused_quickly(tmp_path):
    """A real 80000-bit key still fits in 64 KiB; checking one would take OpenSSL hours without
    releasing the GIL, so the load runs in a child process that a timeout can end."""
    key = _fake_rsa_private(80000)
    pem = tmp_path / "huge.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_ENCRYPTION)
    )
    assert pem.stat().st_size <= keys.MAX_KEY_FILE
    child = run_python("import sys; from imagetools import keys; keys.read_private_file(sys.argv[1])", str(pem))
    assert child.returncode == 1 and "RSA key of 80000 bits; at most 8192 are accepted" in child.stderr


def _rsa_with_exponent(base: rsa.RSAPrivateKey, e: int) -> rsa.RSAPrivateKey:
    """`base`'s primes with the first odd exponent from `e` on that is invertible for them."""
    p, q = base.private_numbers().p, base.private_numbers().q
    while True:
        try:
            d = pow(e, -1, (p - 1) * (q - 1))
        except ValueError:
            e += 2
            continue
        return rsa.RSAPrivateNumbers(
            p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
        ).private_key()


@pytest.mark.parametrize("e", [2**31 + 11, 2**64 + 13, 2**300 + 7])
def test_absurd_public_exponent_is_refused(rsa_key, e):
    key = _rsa_with_exponent(rsa_key, e)
    for load, data in ((keys.load_private, keys.private_pem(key)), (keys.load_public, keys.public_pem(key))):
        with pytest.raises(KeyMaterialError, match="RSA public exponent .* is not usable"):
            load(data, "e.pem")
    with pytest.raises(KeyMaterialError, match="exponent"):
        keys.check_acceptable(key, "e.pem")


@pytest.mark.parametrize("e", [3, 2**31 - 301])
def test_odd_exponents_up_to_2_31_are_fine(rsa_key, e):
    key = _rsa_with_exponent(rsa_key, e)
    assert key.public_key().public_numbers().e <= keys.MAX_RSA_EXPONENT
    keys.check_acceptable(keys.load_private(keys.private_pem(key), "k"), "k")
    assert keys.same_key(keys.load_public(keys.public_pem(key), "k"), key)


def _imagetools() -> str:
    return shutil.which("imagetools") or str(ROOT / ".venv" / "bin" / "imagetools")


@pytest.mark.integration
@pytest.mark.parametrize("bits", ["100000", "1024", "0", "8193"])
def test_keygen_bits_out_of_range_fails_fast(tmp_path, bits):
    out = tmp_path / "tmp"
    result = run_limited(_imagetools(), "keygen", "--type", "rsa", "--bits", bits, "--out-dir", str(out), timeout=20)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"imagetools: error: RSA keys need at least 2048 and at most 8192 bits (got {bits})\n")
    assert not out.exists()


@pytest.mark.integration
def test_inject_with_special_key_files_fails_fast(tmp_path):
    os.mkfifo(tmp_path / "fifo.pem")
    for key, kind in (("/dev/zero", "a character device"), (tmp_path / "fifo.pem", "a FIFO")):
        result = run_limited(_imagetools(), "inject", "--key", str(key), str(tmp_path / "unit.sdimg"), timeout=20)
        assert result.returncode == 2
        assert result.stderr == f"imagetools: error: private key {key} is {kind}, not a regular file\n"


# --- the PEM parser, by property -------------------------------------------------------------------

_label_char = st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="-")
_labels = st.lists(st.tuples(st.sampled_from(["", "-", " "]), _label_char), min_size=1, max_size=12).map(
    lambda parts: parts[0][1] + "".join(sep + c for sep, c in parts[1:])
)
_header = st.tuples(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,10}", fullmatch=True),
    st.from_regex(r"[ -~]{0,20}", fullmatch=True).map(str.strip),
)


def _encode(label: str, headers: list[tuple[str, str]], der: bytes, width: int, newline: str) -> str:
    b64 = base64.b64encode(der).decode()
    lines = [f"-----BEGIN {label}-----"]
    lines += [f"{name}: {value}" for name, value in headers] + ([""] if headers else [])
    lines += [b64[i : i + width] for i in range(0, len(b64), width)]
    return newline.join(lines + [f"-----END {label}-----", ""])


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(_labels, st.lists(_header, max_size=3), st.binary(min_size=1, max_size=200)), min_size=1, max_size=3
    ),
    st.integers(1, 100),
    st.sampled_from(["\n", "\r\n"]),
)
def test_pem_blocks_round_trip(blocks, width, newline):
    text = "\n".join(_encode(label, headers, der, width, newline) for label, headers, der in blocks)
    parsed = keys.parse_pem(text.encode(), "x.pem")
    assert parsed.stray_line is None
    assert [(b.label, list(b.headers), b.der) for b in parsed.blocks] == [
        (label, headers, der) for label, headers, der in blocks
    ]


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_ever_raise_key_material_error(data):
    for parse in (keys.parse_pem, keys.load_private, keys.load_public):
        try:
            parse(data, "x.pem")
        except KeyMaterialError:
            pass


_pieces = st.sampled_from(
    [
        "-----BEGIN PRIVATE KEY-----",
        "-----END PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----END RSA PRIVATE KEY-----",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----",
        "-----BEGIN PUBLIC KEY-----",
        "-----END PUBLIC KEY-----",
        "-----BEGIN -----",
        "-----BEGIN A--B-----",
        "Proc-Type: 4,ENCRYPTED",
        "DEK-Info: AES-128-CBC,00",
        "Comment: x",
        " continued",
        "",
        " ",
        "MC4CAQAwBQYDK2VwBCIEI",
        "AAAA",
        "AA==",
        "A=",
        "====",
        "ENCRYPTED",
        ":",
        "\r",
        "\t",
        "\x00",
        "MCowBQYDK2VwAyEA",
        "#",
    ]
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_pieces, st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=8)), max_size=30))
def test_pem_like_text_only_ever_raises_key_material_error(lines):
    data = "\n".join(lines).encode()
    for parse in (keys.parse_pem, keys.load_private, keys.load_public):
        try:
            parse(data, "x.pem")
        except KeyMaterialError:
            pass


_GENERATED = [
    ("rsa", "pkcs1", "RSA PRIVATE KEY"),
    ("rsa", "pkcs8", "PRIVATE KEY"),
    ("ecdsa", "pkcs1", "EC PRIVATE KEY"),
    ("ecdsa", "pkcs8", "PRIVATE KEY"),
    ("ed25519", "pkcs8", "PRIVATE KEY"),
]


@pytest.fixture(scope="module")
def generated(rsa_key):
    return {t: rsa_key if t == "rsa" else keys.generate(keys.KeySpec(type=t)) for t in ("rsa", "ecdsa", "ed25519")}


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(_GENERATED), st.integers(1, 120), st.sampled_from(["\n", "\r\n"]))
def test_generated_keys_round_trip_through_the_parser(generated, kind, width, newline):
    key_type, fmt, label = kind
    key = generated[key_type]
    pem = keys.private_pem(key, fmt)
    [block] = keys.parse_pem(pem, "k").blocks
    pformat = (
        serialization.PrivateFormat.PKCS8 if label == "PRIVATE KEY" else serialization.PrivateFormat.TraditionalOpenSSL
    )
    assert block.label == label and not block.headers
    assert block.der == key.private_bytes(serialization.Encoding.DER, pformat, NO_ENCRYPTION)
    rewrapped = _encode(label, [], block.der, width, newline).encode()
    assert keys.same_key(keys.load_private(rewrapped, "k"), key)
    public = _encode("PUBLIC KEY", [], keys.spki_der(key), width, newline).encode()
    assert keys.fingerprint(keys.load_public(public, "k")) == keys.fingerprint(key)


def test_parser_is_linear_on_a_file_at_the_cap():
    text = (
        "-----BEGIN PRIVATE KEY-----\n" + "QUFB\n" * ((keys.MAX_KEY_FILE - 60) // 5) + "-----END PRIVATE KEY-----\n"
    ).encode()
    started = time.monotonic()
    with pytest.raises(KeyMaterialError, match="not a PEM private key"):
        keys.load_private(text, "k.pem")
    assert time.monotonic() - started < 1
