"""keys, the edges scripts/mutation found untested: exact messages (the source and what they name),
RSA bounds at their edge (8192 bits, exponents 3 and 2^31-1, a factor of 3), the in-process
generation path and the number of worker processes, and the shortcut for keys this process wrote."""

from __future__ import annotations

import math
import multiprocessing
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa

import imagetools.keys as keys
from imagetools.errors import EnvironmentProblem, KeyMaterialError

NO_ENCRYPTION = serialization.NoEncryption()
ED = keys.KeySpec(type="ed25519")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def _message(call, *args, **kwargs) -> str:
    with pytest.raises(KeyMaterialError) as refused:
        call(*args, **kwargs)
    return str(refused.value)


# --- DER by hand: keys that cryptography will not build, but a file may hold ------------------------


def _der_len(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def _der_int(v: int) -> bytes:
    return _der(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))


def _rsa_public_pem(n: int, e: int) -> bytes:
    """SPKI of (n, e), whatever they are (cryptography refuses an even exponent)."""
    algorithm = _der(0x30, bytes.fromhex("06092a864886f70d0101010500"))  # rsaEncryption, NULL
    spki = _der(0x30, algorithm + _der(0x03, b"\x00" + _der(0x30, _der_int(n) + _der_int(e))))
    return keys._encode_pem("PUBLIC KEY", spki)


def _rsa_private_pem(p: int, q: int, e: int = 65537) -> bytes:
    """PKCS#1 of the key with factors p and q (p may be 1 or 2: OpenSSL loads it unchecked)."""
    d = pow(e, -1, math.lcm(p - 1, q - 1) if p > 2 else q - 1)
    fields = (0, p * q, e, d, p, q, d % (p - 1) if p > 1 else 0, d % (q - 1), pow(q, -1, p) if p > 1 else 0)
    return keys._encode_pem("RSA PRIVATE KEY", _der(0x30, b"".join(map(_der_int, fields))))


# --- messages --------------------------------------------------------------------------------------


def test_keyspec_refusals_name_the_choices():
    assert _message(keys.KeySpec, type="dsa") == "unknown key type 'dsa'; use one of rsa, ecdsa, ed25519"
    assert _message(keys.KeySpec, curve="p192") == "unknown curve 'p192'; use one of p256, p384, p521"
    assert _message(keys.KeySpec, format="der") == "unknown private key format 'der'; use pkcs1 or pkcs8"


def test_normalize_fingerprint_refusal_names_the_text():
    assert keys.normalize_fingerprint(" SHA256:" + "AB" * 32 + " ") == "ab" * 32
    assert _message(keys.normalize_fingerprint, "abc") == "not a SHA-256 fingerprint: 'abc' (expected 64 hex digits)"


def test_load_public_messages_name_the_source(rsa_key):
    pub = keys.public_pem(rsa_key)
    assert _message(keys.load_public, b"", "p.pub") == "p.pub: not a PEM public key (expected 'BEGIN PUBLIC KEY')"
    assert _message(keys.load_public, pub + pub, "p.pub") == (
        "p.pub: holds 2 PEM blocks (PUBLIC KEY, PUBLIC KEY); which one is meant is unclear: "
        "put the public key alone in the file"
    )
    with_header = pub.replace(b"-----\n", b"-----\nComment: unit 7\n\n", 1)
    assert _message(keys.load_public, with_header, "p.pub") == (
        "p.pub: PEM header 'Comment' in the public key; OpenSSL (the Mender client) refuses such headers: "
        "remove the header lines"
    )
    garbage = keys._encode_pem("PUBLIC KEY", b"\x30\x03\x02\x01\x01")
    assert _message(keys.load_public, garbage, "p.pub") == "p.pub: not a PEM public key (expected 'BEGIN PUBLIC KEY')"
    ed448_pub = keys.public_pem(ed448.Ed448PrivateKey.generate().public_key())
    assert _message(keys.load_public, ed448_pub, "p.pub") == "p.pub: unsupported public key type Ed448PublicKey"


def test_load_private_messages_name_the_source(rsa_key):
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION)
    with_header = pem.replace(b"-----\n", b"-----\nComment: unit 7\n\n", 1)
    assert _message(keys.load_private, with_header, "k.pem") == (
        "k.pem: PEM header 'Comment' in the private key; OpenSSL (the Mender client) refuses such headers: "
        "remove the header lines"
    )
    ed448_pem = ed448.Ed448PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION
    )
    assert _message(keys.load_private, ed448_pem, "k.pem") == (
        "k.pem: unsupported key type Ed448PrivateKey; the Mender client loads RSA, ECDSA and Ed25519"
    )


def test_parse_errors_name_the_source():
    assert _message(keys.load_private, b"key\xff", "k.pem") == "k.pem: not PEM text (byte 3 is not ASCII)"
    bad_header = b"-----BEGIN PRIVATE KEY-----\nComment: x\nno colon here\n\nAAAA\n-----END PRIVATE KEY-----\n"
    assert _message(keys.load_private, bad_header, "k.pem") == (
        "k.pem: line 3: expected a PEM header 'Name: value' or a blank line"
    )


@pytest.mark.parametrize(
    "count,shown", [(5, "B1, B2, B3, B4, B5"), (6, "B1, B2, B3, B4, B5, ..."), (7, "B1, B2, B3, B4, B5, ...")]
)
def test_at_most_five_labels_are_named(count, shown):
    data = b"".join(keys._encode_pem(f"B{i}", b"x") for i in range(1, count + 1))
    assert _message(keys.load_private, data, "k.pem") == (
        f"k.pem: holds {count} PEM blocks ({shown}); the Mender client reads only the first: "
        "put the private key alone in the file"
    )


def test_files_are_named_in_their_messages(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"hello\n")
    assert _message(keys.read_private_file, bad) == (f"{bad}: not a PEM private key (expected RSA, ECDSA or Ed25519)")
    assert _message(keys.read_public_file, bad) == f"{bad}: not a PEM public key (expected 'BEGIN PUBLIC KEY')"
    missing = tmp_path / "none.pub"
    assert _message(keys.read_public_file, missing) == f"public key {missing} not found"
    assert _message(keys.read_private_file, missing) == f"private key {missing} not found"


def test_foreign_curve_refusal_lists_the_client_curves():
    key = ec.generate_private_key(ec.SECP256K1())
    assert _message(keys.check_acceptable, key, "k.pem") == (
        "k.pem: ECDSA curve secp256k1 is not loaded by the Mender client; use one of secp256r1, secp384r1, secp521r1"
    )


# --- RSA limits at their edge ----------------------------------------------------------------------

EXPONENT_TAIL = "is not usable; the Mender client needs an odd one from 3 to 2^31-1 (65537 is usual)"


def test_rsa_size_limit_is_8192_bits_inclusive(rsa_key):
    n8192 = (1 << 8191) + 2 * rsa_key.public_key().public_numbers().n + 1  # odd, 8192 bits exactly
    assert keys.load_public(_rsa_public_pem(n8192, 65537), "p.pub").key_size == 8192
    n8193 = n8192 << 1 | 1
    too_big = _rsa_public_pem(n8193, 65537)
    assert _message(keys.load_public, too_big, "p.pub") == "p.pub: RSA key of 8193 bits; at most 8192 are accepted"
    key = keys.load_public(keys.public_pem(rsa_key), "p.pub")
    big = rsa.RSAPublicNumbers(65537, n8193).public_key()
    assert _message(keys.check_acceptable, big, "c.pub") == "c.pub: RSA key of 8193 bits; at most 8192 are accepted"
    keys.check_acceptable(key, "c.pub")


@pytest.mark.parametrize("e", [3, 9, 2**31 - 1])
def test_odd_exponents_from_3_to_2_31_minus_1_are_accepted(rsa_key, e):
    n = rsa_key.public_key().public_numbers().n
    key = keys.load_public(_rsa_public_pem(n, e), "p.pub")
    assert key.public_numbers().e == e
    keys.check_acceptable(key, "p.pub")


@pytest.mark.parametrize(
    "e,shown",
    [
        (1, "1"),
        (2, "2"),
        (65538, "65538"),
        (2**31 + 1, "2147483649"),
        (2**63 + 1, "9223372036854775809"),  # 64 bits: still shown as a number
        (2**64 + 1, "of 65 bits"),
    ],
)
def test_unusable_exponents_are_refused_and_shown(rsa_key, e, shown):
    """OpenSSL loads a private key with any exponent (its numbers unchecked); public keys and
    key objects only with odd ones from 3 on."""
    n = rsa_key.private_numbers()
    fields = (0, n.public_numbers.n, e, 3, n.p, n.q, 1, 1, n.iqmp)  # d and CRT values: never reached
    private = keys._encode_pem("RSA PRIVATE KEY", _der(0x30, b"".join(map(_der_int, fields))))
    message = f"k.pem: RSA public exponent {shown} {EXPONENT_TAIL}"
    assert _message(keys.load_private, private, "k.pem") == message
    if e % 2 and e > 1:
        assert _message(keys.load_public, _rsa_public_pem(n.public_numbers.n, e), "k.pem") == message
        key = rsa.RSAPublicNumbers(e, n.public_numbers.n).public_key()
        assert _message(keys.check_acceptable, key, "c.pub") == message.replace("k.pem", "c.pub")


# --- the RSA numbers check ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prime() -> int:
    return rsa.generate_private_key(65537, 2048).private_numbers().p


@pytest.mark.parametrize("small_first", [True, False])
def test_a_consistent_key_with_a_factor_of_3_works(prime, small_first):
    """The numbers check is about consistency, not strength: 3 is a factor it accepts."""
    p, q = (3, prime) if small_first else (prime, 3)
    key = keys.load_private(_rsa_private_pem(p, q), "k.pem")
    assert key.private_numbers().p == p
    keys.check_pair(key, None, "k.pem")


@pytest.mark.parametrize("p", [1, 2])
def test_a_factor_below_3_is_refused_even_when_p_times_q_is_n(prime, p):
    assert _message(keys.load_private, _rsa_private_pem(p, prime), "k.pem") == (
        "k.pem: RSA private key is inconsistent (its p*q is not its modulus n); the Mender client would refuse it"
    )


def test_a_pem_this_process_serialized_is_not_checked_again(rsa_key):
    """private_pem records what it wrote, so inject and verify of the same unit sign nothing; a
    PEM of the same (broken) key written by anyone else is checked."""
    n = rsa_key.private_numbers()
    broken = rsa.RSAPrivateNumbers(n.p, n.q, n.d, n.dmp1 ^ 2, n.dmq1, n.iqmp, n.public_numbers).private_key(
        unsafe_skip_rsa_key_validation=True
    )
    foreign = broken.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION)
    assert "its CRT values" in _message(keys.load_private, foreign, "k.pem")
    ours = keys.private_pem(broken, "pkcs1")
    assert keys.same_key(keys.load_private(ours, "k.pem"), rsa_key)


# --- generate_files --------------------------------------------------------------------------------


def test_existing_targets_are_counted_in_the_refusal(tmp_path):
    pairs = keys.pair_paths(tmp_path, "", 3)
    pairs[1][0].write_text("keep")
    assert _refused(pairs) == f"{pairs[1][0]} exists; use --force to overwrite"
    pairs[2][0].write_text("keep")
    assert _refused(pairs) == f"{pairs[1][0]} exists (and 1 more); use --force to overwrite"
    pairs[0][1].write_text("keep")
    assert _refused(pairs) == f"{pairs[0][1]} exists (and 2 more); use --force to overwrite"
    pairs[2][1].symlink_to(tmp_path / "nowhere")
    assert _refused(pairs) == f"{pairs[0][1]} exists (and 3 more); use --force to overwrite"


def _refused(pairs) -> str:
    with pytest.raises(EnvironmentProblem) as refused:
        keys.generate_files(ED, pairs, jobs=1)
    return str(refused.value)


def _workers(before: set) -> set:
    """The live child processes started since `before`."""
    return set(multiprocessing.active_children()) - before


@pytest.mark.parametrize("spec,label", [(ED, "PRIVATE KEY"), (keys.KeySpec(type="ecdsa"), "EC PRIVATE KEY")])
def test_one_job_generates_in_process_in_order(tmp_path, spec, label):
    pairs = keys.pair_paths(tmp_path / "a" / "b", "u", 3)
    seen: list[keys.KeyFiles] = []
    children: list[int] = []
    before = set(multiprocessing.active_children())  # a test runner's own, if any

    def progress(made: keys.KeyFiles) -> None:
        seen.append(made)
        children.append(len(_workers(before)))

    made = keys.generate_files(spec, pairs, jobs=1, progress=progress)
    assert seen == made and children == [0, 0, 0]
    assert [(k.private, k.public) for k in made] == pairs
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    for k in made:
        private = k.private.read_bytes()
        assert private.startswith(f"-----BEGIN {label}-----\n".encode())
        assert stat.S_IMODE(k.private.stat().st_mode) == 0o600
        assert stat.S_IMODE(k.public.stat().st_mode) == 0o644
        key = keys.load_private(private, "k")
        assert k.public.read_bytes() == keys.public_pem(key)
        fmt = "pkcs8" if spec.type == "ed25519" else "pkcs1"
        assert (k.fingerprint, k.key_type, k.format) == (keys.fingerprint(key), keys.describe(key), fmt)
    assert len({k.fingerprint for k in made}) == 3


def test_one_job_overwrites_only_with_force(tmp_path):
    pairs = keys.pair_paths(tmp_path, "", 1)
    for path in pairs[0]:
        path.write_text("old")
    [made] = keys.generate_files(ED, pairs, force=True, jobs=1)
    assert keys.fingerprint(keys.read_public_file(made.public)) == made.fingerprint
    assert keys.fingerprint(keys.read_private_file(made.private)) == made.fingerprint
    assert stat.S_IMODE(made.public.stat().st_mode) == 0o644


@pytest.mark.parametrize("jobs,workers", [(2, 2), (3, 3), (None, None)])
def test_jobs_is_the_number_of_worker_processes(tmp_path, jobs, workers):
    """Each progress call sees the pool's live workers: as many as jobs (default: the CPUs), at
    most one per pair."""
    pairs = keys.pair_paths(tmp_path, "", 4)
    seen: list[keys.KeyFiles] = []
    children: list[int] = []
    before = set(multiprocessing.active_children())  # a test runner's own, if any

    def progress(made: keys.KeyFiles) -> None:
        seen.append(made)
        children.append(len(_workers(before)))

    expected = min(workers or multiprocessing.cpu_count(), len(pairs))
    if expected < 2:
        pytest.skip("one CPU: the default is to generate in process")
    made = keys.generate_files(ED, pairs, jobs=jobs, progress=progress)
    assert set(children) == {expected}
    assert sorted(seen, key=made.index) == made
    assert not _workers(before)


def test_pair_paths_default_to_keygen_clients_names(tmp_path):
    assert keys.pair_paths(tmp_path) == [(tmp_path / "private.key", tmp_path / "public.key")]
    assert keys.pair_paths(tmp_path, count=2)[1] == (tmp_path / "2-private.key", tmp_path / "2-public.key")


# --- the PEM parser ---------------------------------------------------------------------------------


def test_headers_continue_on_indented_lines():
    text = (
        b"\n-----BEGIN X-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\nComment: one\n two\n\tthree\n\n"
        b"eA==\n-----END X-----\n"
    )
    [block] = keys.parse_pem(text, "k").blocks
    assert block.headers == (("Proc-Type", "4,ENCRYPTED"), ("DEK-Info", "AES-128-CBC,00"), ("Comment", "one two three"))
    assert block.der == b"x" and block.label == "X"


def test_blocks_cut_short_name_their_begin_line():
    assert _message(keys.parse_pem, b"\n\n-----BEGIN X-----\nName: v", "k") == (
        "k: the 'X' block on line 3 has no '-----END X-----' line"
    )
    assert _message(keys.parse_pem, b"\n-----BEGIN X-----\neA==\n\n", "k") == (
        "k: the 'X' block on line 2 has no '-----END X-----' line"
    )


@pytest.mark.parametrize("body", ["AAAA=", "AAAAeA==="])
def test_padding_past_a_whole_quantum_is_refused(body):
    assert _message(keys.parse_pem, f"-----BEGIN X-----\n{body}\n-----END X-----\n".encode(), "k") == (
        "k: the 'X' block on line 1 is not complete base64 (empty, cut short or padded inside)"
    )


def test_labels_are_shown_whole_up_to_40_characters():
    forty, longer = "L" * 40, "M" * 41
    data = keys._encode_pem(forty, b"x") + keys._encode_pem(longer, b"x")
    assert _message(keys.load_public, data, "p.pub") == (
        f"p.pub: holds 2 PEM blocks ({forty}, {'M' * 37}...); which one is meant is unclear: "
        "put the public key alone in the file"
    )


def _numbers_key(p: int, q: int, d: int, e: int = 65537) -> rsa.RSAPrivateKey:
    """The key of these numbers, its CRT values consistent with d, whatever d is."""
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


D_WRONG = (
    "key: RSA private key is inconsistent (its private exponent d does not invert e); the Mender client would refuse it"
)


def test_d_must_invert_e_modulo_both_factors(rsa_key):
    """A d right modulo q-1 alone, or right modulo both but not below n, is refused as such
    (default source: 'key'), before any signature."""
    n = rsa_key.private_numbers()
    p, q, d = n.p, n.q, n.d
    assert _message(keys.check_pair, _numbers_key(p, q, d + (q - 1))) == D_WRONG
    assert _message(keys.check_pair, _numbers_key(q, p, d + (q - 1))) == D_WRONG


def test_d_of_1_is_refused_even_when_it_signs(rsa_key):
    """e = 1 + lcm(p-1, q-1) makes d = 1 consistent modulo both factors, and its signatures verify."""
    n = rsa_key.private_numbers()
    e = 1 + math.lcm(n.p - 1, n.q - 1)
    assert _message(keys.check_pair, _numbers_key(n.p, n.q, 1, e)) == D_WRONG


def test_d_at_or_above_n_is_refused(rsa_key):
    n = rsa_key.private_numbers()
    big_d = n.d + math.lcm(n.p - 1, n.q - 1) * (n.public_numbers.n // math.lcm(n.p - 1, n.q - 1) + 1)
    assert big_d > n.public_numbers.n
    fields = (0, n.public_numbers.n, 65537, big_d, n.p, n.q, n.dmp1, n.dmq1, n.iqmp)
    pem = keys._encode_pem("RSA PRIVATE KEY", _der(0x30, b"".join(map(_der_int, fields))))
    assert _message(keys.load_private, pem, "k.pem") == D_WRONG.replace("key:", "k.pem:", 1)


def test_write_public_replaces_a_file_only_with_force(tmp_path):
    target = tmp_path / "k.pub"
    target.write_bytes(b"old")
    with pytest.raises(EnvironmentProblem, match="--force"):
        keys.write_public(target, b"new")
    assert target.read_bytes() == b"old"
    keys.write_public(target, b"new", force=True)
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o644


def test_binary_files_get_a_hint():
    assert _message(keys.load_private, b"\xef\xbb\xbf-----BEGIN PRIVATE KEY-----\n", "k.pem") == (
        "k.pem: not PEM text (byte 0 is not ASCII); it starts with a UTF-8 byte order mark: save it without one"
    )
    assert _message(keys.load_public, b"\x30\x82\x01\xff", "k.pub") == (
        "k.pub: not PEM text (byte 1 is not ASCII); it looks like DER: "
        "convert it with openssl pkey -inform DER (-pubin for a public key)"
    )
    assert _message(keys.load_public, b"\xff", "k.pub") == "k.pub: not PEM text (byte 0 is not ASCII)"


def test_only_spaces_tabs_and_cr_end_a_line_unseen():
    assert keys.parse_pem(b"-----BEGIN X-----\neA== \t\r\n-----END X-----\n", "k").blocks[0].der == b"x"
    assert _message(keys.parse_pem, b"-----BEGIN X-----\neA==\x0c\n-----END X-----\n", "k") == (
        "k: line 2: expected base64 or '-----END X-----'"
    )


# --- the survivors of the run of 2026-12-07 ---------------------------------------------------------


def test_d_equal_to_n_is_refused_even_when_consistent():
    """p = 5, q = 7, e = 11: e*35 = 1 mod 4 and mod 6, so d = n = 35 passes the CRT checks; it
    must still be refused for not being below n (a file may hold it: OpenSSL loads it unchecked)."""
    p, q, e = 5, 7, 11
    fields = (0, p * q, e, p * q, p, q, (p * q) % (p - 1), (p * q) % (q - 1), pow(q, -1, p))
    pem = keys._encode_pem("RSA PRIVATE KEY", _der(0x30, b"".join(map(_der_int, fields))))
    assert _message(keys.load_private, pem, "k.pem") == D_WRONG.replace("key:", "k.pem:", 1)


def test_an_encrypted_header_counts_only_as_proc_type(rsa_key):
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                NO_ENCRYPTION).decode()  # fmt: skip
    first, rest = pem.split("\n", 1)
    for header in ("Comment: 4,ENCRYPTED", "Proc-Type: 4,MIC-ONLY"):
        name = header.split(":")[0]
        assert _message(keys.load_private, f"{first}\n{header}\n\n{rest}".encode(), "k") == (
            f"k: PEM header '{name}' in the private key; OpenSSL (the Mender client) refuses such headers: "
            "remove the header lines"
        )
    assert _message(keys.load_private, f"{first}\nProc-Type: 4, ENCRYPTED\n\n{rest}".encode(), "k") == (
        "k: private key is encrypted; the Mender client cannot use a passphrase-protected key"
    )


def test_one_job_writes_the_format_of_the_spec(tmp_path):
    [made] = keys.generate_files(keys.KeySpec(bits=2048, format="pkcs8"), keys.pair_paths(tmp_path, "", 1), jobs=1)
    assert made.private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert (made.key_type, made.format) == ("RSA-2048", "pkcs8")


def test_generate_makes_the_type_of_the_spec():
    key = keys.generate(keys.KeySpec(bits=2048))
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert keys.describe(keys.generate(ED)) == "Ed25519" and keys.describe(keys.generate(ED).public_key()) == "Ed25519"
    assert keys.private_pem(key).startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")


def test_rsa_specs_take_8192_bits_and_no_more():
    assert keys.KeySpec(bits=keys.MAX_RSA_BITS).bits == 8192
    assert _message(keys.KeySpec, bits=8193) == "RSA keys need at least 2048 and at most 8192 bits (got 8193)"


@pytest.mark.parametrize("text", [b"-----BEGIN X-----", b"-----BEGIN X-----\neA=="])
def test_a_block_at_the_very_end_of_a_file_without_newline_has_no_end(text):
    assert _message(keys.parse_pem, text, "k") == "k: the 'X' block on line 1 has no '-----END X-----' line"


def test_a_line_after_a_header_that_is_not_one_is_refused():
    text = b"-----BEGIN X-----\nComment: one\nXeA==\n\neA==\n-----END X-----\n"
    assert _message(keys.parse_pem, text, "k") == "k: line 3: expected a PEM header 'Name: value' or a blank line"


def test_the_first_stray_line_is_named():
    block = keys._encode_pem("PUBLIC KEY", b"x").decode()
    assert keys.parse_pem(f"\nnote\nmore\n{block}".encode(), "k").stray_line == 2
    assert keys.parse_pem(f"{block}\n\nafter\n".encode(), "k").stray_line == 6
    assert keys.parse_pem(block.encode(), "k").stray_line is None
    assert _message(keys.load_public, f"{block}tail\n".encode(), "p.pub") == (
        "p.pub: line 4 is text outside the PEM block; put the public key alone in the file"
    )


def test_a_key_file_may_hold_64_kib_and_no_more(rsa_key):
    pem = keys.public_pem(rsa_key)
    exact = pem + b"\n" * (keys.MAX_KEY_FILE - len(pem))
    assert keys.same_key(keys.load_public(exact, "p.pub"), rsa_key)
    assert _message(keys.load_public, exact + b"\n", "p.pub") == (
        f"p.pub: {keys.MAX_KEY_FILE + 1} bytes, more than a key file holds (at most 64 KiB)"
    )


def test_a_public_key_file_holding_another_block_names_it():
    assert _message(keys.load_public, keys._encode_pem("CERTIFICATE", b"x"), "p.pub") == (
        "p.pub: not a PEM public key (it holds a 'CERTIFICATE' block; expected 'BEGIN PUBLIC KEY')"
    )
