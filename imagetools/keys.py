"""Device key material: generate, load, serialize, fingerprint, compare.

Keys are compared as SPKI DER, never as PEM text: the Mender Server re-serializes public keys,
and PKCS#1/PKCS#8/line-wrapping differences must not matter.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .errors import EnvironmentProblem, KeyMaterialError

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey]
PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey]

KEY_TYPES = ("rsa", "ecdsa", "ed25519")
CURVES = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}
# The curves the Mender client can load (Go's crypto/x509 in client 3.x; the same NIST curves in 4.x+).
CLIENT_CURVES = frozenset(c.name for c in CURVES.values())
MIN_RSA_BITS = 2048
DEFAULT_RSA_BITS = 3072
FORMATS = ("pkcs1", "pkcs8")


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
        if self.type == "rsa" and self.bits < MIN_RSA_BITS:
            raise KeyMaterialError(f"RSA keys need at least {MIN_RSA_BITS} bits (got {self.bits})")
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
# validated). Loading one again skips OpenSSL's RSA consistency check, which costs ~130 ms for
# RSA-3072 (more than generating it) and would otherwise run in both inject and verify per unit.
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


def load_private(data: bytes, source: str) -> PrivateKey:
    """Parse an unencrypted private key of a type the Mender client loads, or explain why not."""
    if b"ENCRYPTED" in data:
        raise KeyMaterialError(f"{source}: private key is encrypted; the Mender client cannot use a passphrase-protected key")
    known = hashlib.sha256(data).digest() in _KNOWN_VALID
    try:
        key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=known)
    except TypeError:
        raise KeyMaterialError(f"{source}: private key is encrypted; the Mender client cannot use a passphrase-protected key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyMaterialError(f"{source}: not a PEM private key (expected RSA, ECDSA or Ed25519)") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise KeyMaterialError(f"{source}: unsupported key type {type(key).__name__}; the Mender client loads RSA, ECDSA and Ed25519")
    _KNOWN_VALID.add(hashlib.sha256(data).digest())
    return key


def check_acceptable(key: PrivateKey | PublicKey, source: str) -> None:
    """Refuse keys the client or server would reject (RSA below 2048 bits, curves the client lacks)."""
    pub = _public(key)
    if isinstance(pub, rsa.RSAPublicKey) and pub.key_size < MIN_RSA_BITS:
        raise KeyMaterialError(f"{source}: RSA key of {pub.key_size} bits; at least {MIN_RSA_BITS} are required")
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name not in CLIENT_CURVES:
        raise KeyMaterialError(
            f"{source}: ECDSA curve {pub.curve.name} is not loaded by the Mender client; "
            f"use one of {', '.join(sorted(CLIENT_CURVES))}")


def load_public(data: bytes, source: str) -> PublicKey:
    """Parse an SPKI public key; a PKCS#1 'RSA PUBLIC KEY' is refused with the fix."""
    if b"BEGIN RSA PUBLIC KEY" in data:
        raise KeyMaterialError(
            f"{source}: PKCS#1 'RSA PUBLIC KEY'; the Mender Server only accepts SPKI 'PUBLIC KEY' "
            f"(convert with: openssl rsa -RSAPublicKey_in -pubout)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyMaterialError(f"{source}: not a PEM public key (expected 'BEGIN PUBLIC KEY')") from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise KeyMaterialError(f"{source}: unsupported public key type {type(key).__name__}")
    return key


def read_private_file(path: str | os.PathLike) -> PrivateKey:
    return load_private(read_key_bytes(path, "private key"), str(path))


def read_public_file(path: str | os.PathLike) -> PublicKey:
    return load_public(read_key_bytes(path, "public key"), str(path))


def same_key(a: PrivateKey | PublicKey, b: PrivateKey | PublicKey) -> bool:
    return spki_der(a) == spki_der(b)


def write_secret(path: str | os.PathLike, data: bytes, force: bool = False, durable: bool = True) -> None:
    """Create a file 0600 from the first byte (O_EXCL unless force, then replaced atomically).

    durable=False skips the fsync, for callers that publish a whole directory by rename and
    check it again on resume (emit: an fsync per unit stalls the workers on the journal)."""
    path = Path(path)
    target = path.with_name(f".{path.name}.tmp{os.getpid()}") if force else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise EnvironmentProblem(f"{path} exists; use --force to overwrite") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if force:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def write_public(path: str | os.PathLike, data: bytes, force: bool = False) -> None:
    path = Path(path)
    if path.exists() and not force:
        raise EnvironmentProblem(f"{path} exists; use --force to overwrite")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
    return [(out / f"{prefix}{n:0{width}d}-private.key", out / f"{prefix}{n:0{width}d}-public.key")
            for n in range(1, count + 1)]


def generate_files(spec: KeySpec, pairs: Sequence[tuple[Path, Path]], *, force: bool = False,
                   jobs: int | None = None,
                   progress: Callable[[KeyFiles], None] | None = None) -> list[KeyFiles]:
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
        futures = {pool.submit(_generate_pair, spec, private, public, force): i
                   for i, (private, public) in enumerate(pairs)}
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
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(f"{what} {path} not found") from None
    except OSError as exc:
        raise KeyMaterialError(f"cannot read {what} {path}: {exc.strerror}") from None


def _public(key: PrivateKey | PublicKey) -> PublicKey:
    return key.public_key() if hasattr(key, "private_bytes") else key
