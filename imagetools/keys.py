"""Device key material: generate, load, serialize, fingerprint, compare.

Keys are compared as SPKI DER, never as PEM text: the Mender Server re-serializes public keys,
and PKCS#1/PKCS#8/line-wrapping differences must not matter.

Nothing from outside is trusted: key files are read only if they are regular files of at most
64 KiB, must hold exactly one PEM block (parsed strictly here, not by searching the text), and RSA
keys are bounded in size before OpenSSL spends time checking them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .atomic import write_atomic
from .errors import EnvironmentProblem, KeyMaterialError
from .strict import read_regular, size_text

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PRIVATE_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)  # PrivateKey, for isinstance

KEY_TYPES = ("rsa", "ecdsa", "ed25519")
CURVES: dict[str, type[ec.SECP256R1] | type[ec.SECP384R1] | type[ec.SECP521R1]] = {
    "p256": ec.SECP256R1,
    "p384": ec.SECP384R1,
    "p521": ec.SECP521R1,
}
# The curves the Mender client can load (Go's crypto/x509 in client 3.x; the same NIST curves in 4.x+).
CLIENT_CURVES = frozenset(c.name for c in CURVES.values())
MIN_RSA_BITS = 2048
# Bigger keys only cost time: OpenSSL's check of an RSA key grows with the cube of its size
# (8192 bits already take seconds), so a huge key in a file is refused before it is checked.
MAX_RSA_BITS = 8192
DEFAULT_RSA_BITS = 3072
# The Mender client 3.x (Go crypto/rsa) refuses larger public exponents; OpenSSL wants odd ones.
MAX_RSA_EXPONENT = 2**31 - 1
FORMATS = ("pkcs1", "pkcs8")
# A key file is a few KiB (RSA-8192 PKCS#1 is 6.3 KiB); anything far larger is not a key.
MAX_KEY_FILE = 64 * 1024
# The unencrypted PEM forms the Mender client loads: PKCS#8, PKCS#1 (RSA) and SEC1 (EC).
PRIVATE_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY")


@dataclass(frozen=True)
class KeySpec:
    """What kind of key to generate; also recorded by emit to detect changed settings."""

    type: str = "rsa"
    bits: int = DEFAULT_RSA_BITS
    curve: str = "p256"
    format: str = "pkcs1"

    def __post_init__(self) -> None:
        if self.type not in KEY_TYPES:
            raise KeyMaterialError(f"unknown key type {self.type!r}; use one of {', '.join(KEY_TYPES)}")
        if self.type == "rsa" and not (isinstance(self.bits, int) and MIN_RSA_BITS <= self.bits <= MAX_RSA_BITS):
            raise KeyMaterialError(
                f"RSA keys need at least {MIN_RSA_BITS} and at most {MAX_RSA_BITS} bits (got {self.bits!r})"
            )
        if self.curve not in CURVES:
            raise KeyMaterialError(f"unknown curve {self.curve!r}; use one of {', '.join(CURVES)}")
        if self.format not in FORMATS:
            raise KeyMaterialError(f"unknown private key format {self.format!r}; use pkcs1 or pkcs8")

    @property
    def effective_format(self) -> str:
        """The format actually written: Ed25519 has no traditional (PKCS#1-like) form."""
        return "pkcs8" if self.type == "ed25519" else self.format


def generate(spec: KeySpec = KeySpec()) -> PrivateKey:
    if spec.type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.bits)
    if spec.type == "ecdsa":
        return ec.generate_private_key(CURVES[spec.curve]())
    return ed25519.Ed25519PrivateKey.generate()


def private_pem(key: PrivateKey, fmt: str = "pkcs1") -> bytes:
    """PEM the Mender client loads: 'traditional' (PKCS#1 for RSA, SEC1 for EC) or PKCS#8.

    Ed25519 has no traditional form, so it is always PKCS#8.
    """
    traditional = fmt == "pkcs1" and not isinstance(key, ed25519.Ed25519PrivateKey)
    pformat = serialization.PrivateFormat.TraditionalOpenSSL if traditional else serialization.PrivateFormat.PKCS8
    pem = key.private_bytes(serialization.Encoding.PEM, pformat, serialization.NoEncryption())
    _KNOWN_VALID.add(hashlib.sha256(pem).digest())
    return pem


# Digests of PEMs serialized from keys this process holds in memory (generated or already
# checked). Loading one again skips even check_pair's signature (~2 ms for RSA-3072), which would
# otherwise run in both inject and verify per unit.
_KNOWN_VALID: set[bytes] = set()


def public_pem(key: PrivateKey | PublicKey) -> bytes:
    """SPKI 'BEGIN PUBLIC KEY', the only form the Mender Server accepts."""
    pub = _public(key)
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_der(key: PrivateKey | PublicKey) -> bytes:
    pub = _public(key)
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: PrivateKey | PublicKey) -> str:
    """SHA-256 of the SPKI DER, lowercase hex (what `--fingerprint` accepts)."""
    return hashlib.sha256(spki_der(key)).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Accept 'SHA256:ab:cd…', 'AB CD…' or plain hex; return plain lowercase hex."""
    hexpart = re.sub(r"^sha256:", "", text.strip(), flags=re.I)
    hexpart = re.sub(r"[\s:]", "", hexpart).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise KeyMaterialError(f"not a SHA-256 fingerprint: {text!r} (expected 64 hex digits)")
    return hexpart


def describe(key: PrivateKey | PublicKey) -> str:
    """Human type/size, e.g. 'RSA-3072', 'ECDSA-secp256r1', 'Ed25519'."""
    pub = _public(key)
    if isinstance(pub, rsa.RSAPublicKey):
        return f"RSA-{pub.key_size}"
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return f"ECDSA-{pub.curve.name}"
    return "Ed25519"


@dataclass(frozen=True)
class PemBlock:
    """One '-----BEGIN LABEL-----' block: its RFC 1421 headers and its decoded body."""

    label: str
    headers: tuple[tuple[str, str], ...]
    der: bytes


@dataclass(frozen=True)
class PemFile:
    """The blocks of a PEM file, and the first line of text outside every block (None if none)."""

    blocks: tuple[PemBlock, ...]
    stray_line: int | None


# RFC 7468 labels: printable ASCII, single hyphens or spaces between characters.
_LABEL = r"[\x21-\x2c\x2e-\x7e](?:[- ]?[\x21-\x2c\x2e-\x7e])*"
_BEGIN = re.compile(rf"-----BEGIN ({_LABEL})-----")
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/=]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_HEADER = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*):[ \t]*(.*)")
_PROC_TYPE_ENCRYPTED = re.compile(r"4,[ \t]*ENCRYPTED")


def parse_pem(data: bytes, source: str) -> PemFile:
    """Split PEM text into blocks, strictly: a BEGIN line, optional 'Name: value' headers ended by
    a blank line, base64 lines (padding only at the end), the matching END line. Key files are
    copied verbatim into images, so they are judged by their structure, never by substrings;
    anything malformed is a KeyMaterialError naming the line."""
    lines = [line.rstrip(" \t\r") for line in _pem_text(data, source).split("\n")]
    blocks: list[PemBlock] = []
    stray: int | None = None
    i = 0
    while i < len(lines):
        begin = _BEGIN.fullmatch(lines[i])
        if begin:
            block, i = _pem_block(lines, i, begin.group(1), source)
            blocks.append(block)
            continue
        if lines[i] and stray is None:
            stray = i + 1
        i += 1
    return PemFile(tuple(blocks), stray)


def _pem_text(data: bytes, source: str) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        hint = ""
        if data.startswith(b"\xef\xbb\xbf"):  # Go's pem.Decode (client 3.x) finds no block after it
            hint = "; it starts with a UTF-8 byte order mark: save it without one"
        elif data[:1] == b"\x30":
            hint = "; it looks like DER: convert it with openssl pkey -inform DER (-pubin for a public key)"
        raise KeyMaterialError(f"{source}: not PEM text (byte {exc.start} is not ASCII){hint}") from None


def _pem_block(lines: list[str], start: int, label: str, source: str) -> tuple[PemBlock, int]:
    """The block whose BEGIN line is lines[start], and the index after its END line."""
    end = f"-----END {label}-----"
    headers, i = _pem_headers(lines, start + 1, source)
    body: list[str] = []
    while i < len(lines) and lines[i] != end:
        if not _BASE64_LINE.fullmatch(lines[i]):
            if not any(lines[i:]):  # only blank lines left: the file is cut short
                i = len(lines)
                break
            raise KeyMaterialError(f"{source}: line {i + 1}: expected base64 or {_shown(end)!r}")
        body.append(lines[i])
        i += 1
    where = f"{source}: the {_shown(label)!r} block on line {start + 1}"
    if i >= len(lines):
        raise KeyMaterialError(f"{where} has no {_shown(end)!r} line")
    text = "".join(body)
    try:
        if not text or len(text) % 4 or not _BASE64.fullmatch(text):
            raise binascii.Error
        der = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        raise KeyMaterialError(f"{where} is not complete base64 (empty, cut short or padded inside)") from None
    return PemBlock(label, headers, der), i + 1


def _pem_headers(lines: list[str], i: int, source: str) -> tuple[tuple[tuple[str, str], ...], int]:
    """RFC 1421 headers right after the BEGIN line (base64 never holds ':'), up to a blank line;
    a line starting with a space or tab continues the previous header."""
    if i >= len(lines) or ":" not in lines[i]:
        return (), i
    headers: list[tuple[str, str]] = []
    while i < len(lines) and lines[i]:
        if headers and lines[i][0] in " \t":
            headers[-1] = (headers[-1][0], f"{headers[-1][1]} {lines[i].strip()}")
        elif header := _HEADER.fullmatch(lines[i]):
            headers.append((header.group(1), header.group(2)))
        else:
            raise KeyMaterialError(f"{source}: line {i + 1}: expected a PEM header 'Name: value' or a blank line")
        i += 1
    return tuple(headers), i + 1


def _shown(text: str) -> str:
    """File content quoted in a one-line message, cut to a readable length."""
    return text if len(text) <= 40 else text[:37] + "..."


def _encode_pem(label: str, der: bytes) -> bytes:
    """The canonical PEM of a parsed block: what cryptography decodes is exactly what we parsed."""
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode()


def _single_block(data: bytes, source: str, what: str, why: str) -> PemBlock | None:
    """The file's only PEM block, None when it has none (the caller says what was expected).
    Readers disagree about everything else (Go's pem.Decode in client 3.x takes the first block,
    OpenSSL skips text and blocks it does not want), so a file with more in it is refused."""
    if len(data) > MAX_KEY_FILE:
        raise KeyMaterialError(
            f"{source}: {len(data)} bytes, more than a key file holds (at most {size_text(MAX_KEY_FILE)})"
        )
    pem = parse_pem(data, source)
    if len(pem.blocks) > 1:
        labels = ", ".join(_shown(b.label) for b in pem.blocks[:5]) + (", ..." if len(pem.blocks) > 5 else "")
        raise KeyMaterialError(
            f"{source}: holds {len(pem.blocks)} PEM blocks ({labels}); {why}: put the {what} alone in the file"
        )
    if pem.blocks and pem.stray_line is not None:
        raise KeyMaterialError(
            f"{source}: line {pem.stray_line} is text outside the PEM block; put the {what} alone in the file"
        )
    return pem.blocks[0] if pem.blocks else None


def _refuse_headers(block: PemBlock, source: str, what: str) -> None:
    """OpenSSL (client 4.x and later) loads no PEM with headers other than its encryption ones."""
    if block.headers:
        raise KeyMaterialError(
            f"{source}: PEM header {_shown(block.headers[0][0])!r} in the {what}; "
            f"OpenSSL (the Mender client) refuses such headers: remove the header lines"
        )


def _encrypted(block: PemBlock) -> bool:
    """PKCS#8 'ENCRYPTED PRIVATE KEY', or a traditional PEM with OpenSSL's 'Proc-Type: 4,ENCRYPTED'."""
    return block.label == "ENCRYPTED PRIVATE KEY" or any(
        name == "Proc-Type" and _PROC_TYPE_ENCRYPTED.fullmatch(value) for name, value in block.headers
    )


def load_private(data: bytes, source: str, expected: PublicKey | None = None) -> PrivateKey:
    """Parse an unencrypted private key of a type the Mender client loads, or explain why not.

    The pair is proven to work by a signature (check_pair), checked with `expected` when it is
    the same public key (verify --pubkey), else with the key's own public half; keys this
    process serialized itself (private_pem) skip it."""
    block = _single_block(data, source, "private key", "the Mender client reads only the first")
    if block is None:
        raise KeyMaterialError(f"{source}: not a PEM private key (expected RSA, ECDSA or Ed25519)")
    if _encrypted(block):
        raise KeyMaterialError(
            f"{source}: private key is encrypted; the Mender client cannot use a passphrase-protected key"
        )
    _refuse_headers(block, source, "private key")
    if block.label not in PRIVATE_LABELS:
        raise KeyMaterialError(
            f"{source}: not a PEM private key (it holds a {_shown(block.label)!r} block; "
            f"expected RSA, ECDSA or Ed25519)"
        )
    pem = _encode_pem(block.label, block.der)
    try:  # OpenSSL's costly RSA consistency check is replaced by check_pair, after the size limit
        key = serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyMaterialError(f"{source}: not a PEM private key (expected RSA, ECDSA or Ed25519)") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise KeyMaterialError(
            f"{source}: unsupported key type {type(key).__name__}; the Mender client loads RSA, ECDSA and Ed25519"
        )
    _check_rsa_limits(key.public_key(), source)
    digest = hashlib.sha256(data).digest()
    if digest not in _KNOWN_VALID or expected is not None:
        check_pair(key, expected if expected is not None and same_key(expected, key) else None, source)
    _KNOWN_VALID.add(digest)
    return key


# What check_pair signs: fixed, so the check is the same in every process.
_PAIR_MESSAGE = b"imagetools key pair check v1"


def check_pair(key: PrivateKey, public: PublicKey | None = None, source: str = "key") -> None:
    """Prove that the private key works with `public` (default: its own public half) in
    milliseconds, instead of OpenSSL's RSA consistency check (~130 ms for RSA-3072, mostly
    primality tests of p and q): a signature made with the private key (RSA PKCS#1 v1.5 with
    SHA-256, as the Mender client signs; ECDSA with SHA-256; Ed25519) must verify with `public`.

    For RSA the private numbers are checked arithmetically first (p*q = n, e*d = 1 mod p-1 and
    q-1, the CRT values d mod p-1, d mod q-1 and q^-1 mod p): OpenSSL checks a CRT signature
    with the public key and silently redoes it with d when it is wrong, so a key with bad CRT
    values (or a bad d and good CRT values) still signs correctly there, while other loaders
    (Go's crypto/rsa in client 3.x) refuse or mis-sign it. The signature then catches what the
    arithmetic cannot see cheaply (a p or q that is not prime)."""
    from cryptography.exceptions import InternalError, InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    public = key.public_key() if public is None else public
    try:
        if isinstance(key, rsa.RSAPrivateKey):
            _check_rsa_numbers(key.private_numbers(), source)
            signature = key.sign(_PAIR_MESSAGE, padding.PKCS1v15(), hashes.SHA256())
            # casts: a public key of another type fails the call (TypeError, caught below)
            cast(rsa.RSAPublicKey, public).verify(signature, _PAIR_MESSAGE, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            signature = key.sign(_PAIR_MESSAGE, ec.ECDSA(hashes.SHA256()))
            cast(ec.EllipticCurvePublicKey, public).verify(signature, _PAIR_MESSAGE, ec.ECDSA(hashes.SHA256()))
        else:
            cast(ed25519.Ed25519PublicKey, public).verify(key.sign(_PAIR_MESSAGE), _PAIR_MESSAGE)
    except (InvalidSignature, InternalError, ValueError, TypeError, AttributeError):
        raise KeyMaterialError(
            f"{source}: {describe(key)} private key does not work: a signature made "
            f"with it does not verify with its public key (the key is corrupt or "
            f"inconsistent); the Mender client would refuse it"
        ) from None


def _check_rsa_numbers(numbers: rsa.RSAPrivateNumbers, source: str) -> None:
    p, q, d, n, e = numbers.p, numbers.q, numbers.d, numbers.public_numbers.n, numbers.public_numbers.e
    problem = None
    if p < 3 or q < 3 or p * q != n:
        problem = "its p*q is not its modulus n"
    elif not 1 < d < n or (e * d) % (p - 1) != 1 or (e * d) % (q - 1) != 1:
        problem = "its private exponent d does not invert e"
    elif numbers.dmp1 != d % (p - 1) or numbers.dmq1 != d % (q - 1) or (numbers.iqmp * q) % p != 1:
        problem = "its CRT values (d mod p-1, d mod q-1, q^-1 mod p) are wrong"
    if problem:
        raise KeyMaterialError(
            f"{source}: RSA private key is inconsistent ({problem}); the Mender client would refuse it"
        )


def check_acceptable(key: PrivateKey | PublicKey, source: str) -> None:
    """Refuse keys the client or server would reject (RSA below 2048 bits, curves the client lacks)."""
    pub = _public(key)
    if isinstance(pub, rsa.RSAPublicKey) and pub.key_size < MIN_RSA_BITS:
        raise KeyMaterialError(f"{source}: RSA key of {pub.key_size} bits; at least {MIN_RSA_BITS} are required")
    _check_rsa_limits(pub, source)
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name not in CLIENT_CURVES:
        raise KeyMaterialError(
            f"{source}: ECDSA curve {pub.curve.name} is not loaded by the Mender client; "
            f"use one of {', '.join(sorted(CLIENT_CURVES))}"
        )


def _check_rsa_limits(pub: PublicKey, source: str) -> None:
    """Refuse RSA keys too big to check quickly, and exponents the clients refuse."""
    if not isinstance(pub, rsa.RSAPublicKey):
        return
    if pub.key_size > MAX_RSA_BITS:
        raise KeyMaterialError(f"{source}: RSA key of {pub.key_size} bits; at most {MAX_RSA_BITS} are accepted")
    e = pub.public_numbers().e
    if not (3 <= e <= MAX_RSA_EXPONENT and e % 2):
        shown = str(e) if e.bit_length() <= 64 else f"of {e.bit_length()} bits"
        raise KeyMaterialError(
            f"{source}: RSA public exponent {shown} is not usable; the Mender client needs "
            f"an odd one from 3 to 2^31-1 (65537 is usual)"
        )


def load_public(data: bytes, source: str) -> PublicKey:
    """Parse an SPKI public key; a PKCS#1 'RSA PUBLIC KEY' is refused with the fix."""
    block = _single_block(data, source, "public key", "which one is meant is unclear")
    if block is None:
        raise KeyMaterialError(f"{source}: not a PEM public key (expected 'BEGIN PUBLIC KEY')")
    if block.label == "RSA PUBLIC KEY":
        raise KeyMaterialError(
            f"{source}: PKCS#1 'RSA PUBLIC KEY'; the Mender Server only accepts SPKI 'PUBLIC KEY' "
            f"(convert with: openssl rsa -RSAPublicKey_in -pubout)"
        )
    if block.label != "PUBLIC KEY":
        raise KeyMaterialError(
            f"{source}: not a PEM public key (it holds a {_shown(block.label)!r} block; expected 'BEGIN PUBLIC KEY')"
        )
    _refuse_headers(block, source, "public key")
    try:
        key = serialization.load_pem_public_key(_encode_pem(block.label, block.der))
    except (ValueError, UnsupportedAlgorithm):
        raise KeyMaterialError(f"{source}: not a PEM public key (expected 'BEGIN PUBLIC KEY')") from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise KeyMaterialError(f"{source}: unsupported public key type {type(key).__name__}")
    _check_rsa_limits(key, source)
    return key


def read_private_file(path: str | os.PathLike) -> PrivateKey:
    return load_private(read_key_bytes(path, "private key"), str(path))


def read_public_file(path: str | os.PathLike) -> PublicKey:
    return load_public(read_key_bytes(path, "public key"), str(path))


def same_key(a: PrivateKey | PublicKey, b: PrivateKey | PublicKey) -> bool:
    return spki_der(a) == spki_der(b)


def write_secret(path: str | os.PathLike, data: bytes, force: bool = False, durable: bool = True) -> None:
    """A file 0600 from the first byte, complete or absent (an existing one only replaced with
    force). durable=False skips the fsync, for callers that publish a whole directory by rename
    and check it again on resume (emit: an fsync per unit stalls the workers on the journal)."""
    write_atomic(path, data, mode=0o600, exclusive=not force, durable=durable)


def write_public(path: str | os.PathLike, data: bytes, force: bool = False) -> None:
    write_atomic(path, data, mode=0o644, exclusive=not force)


@dataclass(frozen=True)
class KeyFiles:
    """One generated pair on disk, as keygen reports it."""

    private: Path
    public: Path
    fingerprint: str
    key_type: str
    format: str


def pair_paths(out_dir: str | os.PathLike, prefix: str = "", count: int = 1) -> list[tuple[Path, Path]]:
    """keygen-client's names ({prefix}private.key, {prefix}public.key); with count > 1 each pair is
    numbered, {prefix}{n}-private.key, zero-padded so the files sort in order."""
    out = Path(out_dir)
    if count == 1:
        return [(out / f"{prefix}private.key", out / f"{prefix}public.key")]
    width = len(str(count))
    return [
        (out / f"{prefix}{n:0{width}d}-private.key", out / f"{prefix}{n:0{width}d}-public.key")
        for n in range(1, count + 1)
    ]


def generate_files(
    spec: KeySpec,
    pairs: Sequence[tuple[Path, Path]],
    *,
    force: bool = False,
    jobs: int | None = None,
    progress: Callable[[KeyFiles], None] | None = None,
) -> list[KeyFiles]:
    """Generate one key pair per (private, public) path, in parallel over `jobs` processes (default:
    all cores) because RSA generation is CPU-bound. Refuses before generating anything if a target
    exists and not force; private files are 0600 from the first byte. Results keep `pairs` order."""
    if not force:
        existing = [p for pair in pairs for p in pair if p.exists() or p.is_symlink()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise EnvironmentProblem(f"{existing[0]} exists{more}; use --force to overwrite")
    for parent in {p.parent for pair in pairs for p in pair}:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    workers = min(jobs or os.cpu_count() or 1, len(pairs))
    if workers <= 1:
        results = []
        for private, public in pairs:
            results.append(_generate_pair(spec, private, public, force))
            if progress:
                progress(results[-1])
        return results
    from concurrent.futures import ProcessPoolExecutor, as_completed  # only --count pays the import

    done: dict[int, KeyFiles] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(_generate_pair, spec, private, public, force): i for i, (private, public) in enumerate(pairs)
        }
        try:
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                if progress:
                    progress(done[futures[future]])
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [done[i] for i in range(len(pairs))]


def _generate_pair(spec: KeySpec, private: Path, public: Path, force: bool) -> KeyFiles:
    """Worker: the private key never leaves the process that made it, except into its 0600 file."""
    key = generate(spec)
    write_secret(private, private_pem(key, spec.effective_format), force=force)
    write_public(public, public_pem(key), force=force)
    return KeyFiles(private, public, fingerprint(key), describe(key), spec.effective_format)


def read_key_bytes(path: str | os.PathLike, what: str) -> bytes:
    """The raw bytes of a key file, with a KeyMaterialError naming it when it cannot be read."""
    return read_regular(path, MAX_KEY_FILE, what, KeyMaterialError)


def _public(key: PrivateKey | PublicKey) -> PublicKey:
    return key.public_key() if isinstance(key, PRIVATE_TYPES) else key
