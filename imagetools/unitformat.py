"""The unit format, below both emit (which writes units) and the station (which reads them).

A unit directory OUT/<name>/ holds unit.json (UnitRecord), identity.json, public.key, the unit's
delta (or full image and its .bmap), and unit.sig: an Ed25519 signature, by the batch's signing
key, over the SHA-256 of each of those files. The batch key is made by the first emit into OUT:
its public half is OUT/batch.pub, its private half OUT/.imagetools-batch.key (0600 from its first
byte, never inside a unit directory). A station checks the signature before it writes anything,
against OUT/batch.pub or, pinned, against a copy the operator keeps (`--trust`): a unit directory
replaced together with OUT's public key is then refused too.

A unit's files are read from outside: each is a regular file opened without following symlinks,
bounded in size, hashed from the very bytes that are then parsed (no second read to swap).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from . import strict
from .errors import EnvironmentProblem, UsageError
from .image import delta as delta_format

UNIT_FILE = "unit.json"
STATE_FILE = ".imagetools-emit.json"  # OUT's state: the base and settings of the last run
SIG_FILE = "unit.sig"
IDENTITY_FILE = "identity.json"
PUBLIC_FILE = "public.key"
BATCH_PUB = "batch.pub"
BATCH_KEY = ".imagetools-batch.key"
SIG_VERSION = 1
MAX_RECORD = 1 << 20
MAX_SIG = 64 << 10
MAX_SMALL = 64 << 10  # identity.json, public.key, batch.pub
MAX_BMAP = 64 << 20
MAX_DELTA = delta_format.MAX_FILE


class KeySource(enum.StrEnum):
    """Where a unit's key came from."""

    GENERATED = "generated"
    DEVICE_LIST = "device list"
    KEPT = "kept"  # a published unit re-emitted (force) with the key it already has


@dataclass(frozen=True, kw_only=True)
class UnitRecord:
    """OUT/<name>/unit.json: what emit recorded about a published unit. The image's size, mtime
    and ctime let a later run skip the unit after a stat; its key is never regenerated."""

    name: str
    identity: dict[str, str]
    fingerprint: str
    key_type: str
    key_source: KeySource
    image: str  # file name inside the unit directory
    image_size: int
    image_mtime_ns: int
    image_ctime_ns: int | None  # None: a record from before it was kept
    image_sha256: str | None  # None: an image unit emitted without --image-sha256
    base_sha256: str
    settings: dict[str, Any]
    files: list[str]
    verify: dict[str, Any]
    timings: dict[str, float]
    format: str = "image"  # "delta": `image` names the delta file; image_sha256 is its sha256

    @classmethod
    def read(cls, path: Path) -> UnitRecord:
        """ValueError if it is not a record emit writes (UsageError if unreadable)."""
        return cls.parse(strict.read_regular(path, MAX_RECORD, "unit record", follow=False), str(path))

    @classmethod
    def parse(cls, blob: bytes, what: str) -> UnitRecord:
        return cls.from_json(strict.loads(blob, what))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, data: Any) -> UnitRecord:
        f = Fields(data, UNIT_FILE)
        image = f.get("image", str)
        if not is_file_name(image):
            raise ValueError(f"{UNIT_FILE}: 'image' is not a file name")
        return cls(
            name=f.get("name", str),
            identity=f.get("identity", dict, each=str),
            fingerprint=f.get("fingerprint", str),
            key_type=f.get("key_type", str),
            key_source=KeySource(f.get("key_source", str)),
            image=image,
            image_size=f.get("image_size", int),
            image_mtime_ns=f.get("image_mtime_ns", int),
            image_ctime_ns=f.get("image_ctime_ns", int, optional=True),
            image_sha256=f.get("image_sha256", str, optional=True),
            base_sha256=f.get("base_sha256", str),
            settings=f.get("settings", dict),
            files=f.get("files", list, each=str),
            verify=f.get("verify", dict),
            timings=f.get("timings", dict, each=(int, float)),
            format=_unit_format(f.get("format", str, optional=True)),
        )


def is_file_name(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name and len(name) <= 255


class Fields:
    """A JSON object's fields, each of the type emit writes, or ValueError naming the first that
    is not."""

    def __init__(self, data: Any, what: str):
        if not isinstance(data, dict):
            raise ValueError(f"{what} is not a JSON object")
        self.data, self.what = data, what

    def get(
        self,
        key: str,
        kind: type | tuple[type, ...],
        *,
        each: type | tuple[type, ...] | None = None,
        optional: bool = False,
    ) -> Any:
        """data[key], of `kind`; `each`: the type of every value of an object or item of a list."""
        value: Any = self.data.get(key)  # a JSON value; checked below before it is used
        if value is None and optional:
            return None
        if not _is(value, kind) or (
            each is not None and not all(_is(v, each) for v in (value.values() if isinstance(value, dict) else value))
        ):
            raise ValueError(f"{self.what}: {key!r} is missing or of another type")
        return value


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    """isinstance, except that a JSON true or false is no number."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _unit_format(value: str | None) -> str:
    """unit.json's format: absent in records from before deltas (they are images)."""
    if value not in (None, "image", "delta"):
        raise ValueError(f"{UNIT_FILE}: 'format' is {value!r}, not 'image' or 'delta'")
    return value or "image"


# --- the batch signing key ---------------------------------------------------------------------


def batch_key(out: Path) -> ed25519.Ed25519PrivateKey:
    """OUT's batch signing key, made by the first run (private half 0600 from its first byte)."""
    path = out / BATCH_KEY
    try:
        pem = strict.read_regular(path, MAX_SMALL, "batch signing key", EnvironmentProblem, follow=False)
    except EnvironmentProblem:
        if os.path.lexists(path):
            raise
        return _new_batch_key(out)
    key = serialization.load_pem_private_key(pem, None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise EnvironmentProblem(f"{path} is not an Ed25519 batch signing key: restore it or use a new OUT")
    return key


def _new_batch_key(out: Path) -> ed25519.Ed25519PrivateKey:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(out / BATCH_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    tmp = out / f".{BATCH_PUB}.tmp"
    tmp.write_bytes(pub)
    os.replace(tmp, out / BATCH_PUB)
    return key


def batch_fingerprint(public: ed25519.Ed25519PublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def read_batch_public(path: Path) -> ed25519.Ed25519PublicKey:
    pem = strict.read_regular(path, MAX_SMALL, "batch public key", follow=False)
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        key = None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UsageError(f"{path} is not an Ed25519 public key (a batch's {BATCH_PUB})")
    return key


# --- signing and checking a unit ---------------------------------------------------------------


def signed_files(record: UnitRecord) -> list[str]:
    """What a unit's signature covers: its records, its public key, and its delta, or its full
    image's bmap (whose range checksums a flash checks as it writes) and, when recorded, the
    image's SHA-256 through unit.json."""
    names = [UNIT_FILE, IDENTITY_FILE, PUBLIC_FILE]
    if record.format == "delta":
        names.append(record.image)
    elif f"{record.image}.bmap" in record.files:
        names.append(f"{record.image}.bmap")
    return names


def _statement(name: str, batch: str, files: dict[str, str]) -> bytes:
    body = {"version": SIG_VERSION, "unit": name, "batch": batch, "files": files}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_unit(unit_dir: Path, key: ed25519.Ed25519PrivateKey) -> None:
    """unit.sig for the finished unit directory (before it is published)."""
    record = UnitRecord.read(unit_dir / UNIT_FILE)
    files = {n: hashlib.sha256((unit_dir / n).read_bytes()).hexdigest() for n in signed_files(record)}
    batch = batch_fingerprint(key.public_key())
    statement = _statement(record.name, batch, files)
    sig = {
        "version": SIG_VERSION,
        "unit": record.name,
        "batch": batch,
        "files": files,
        "signature": base64.b64encode(key.sign(statement)).decode(),
    }
    (unit_dir / SIG_FILE).write_text(json.dumps(sig, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class SignedUnit:
    """A unit directory whose signature verified: the bytes of its signed files, as read once."""

    directory: Path
    record: UnitRecord
    blobs: dict[str, bytes]
    batch: str  # the signing key's fingerprint
    pinned: bool  # checked against a key the operator gave, not OUT's own


def read_signed(unit_dir: Path, trust: Path | None = None) -> SignedUnit:
    """The unit's signed files, each checked against the signature (UsageError before anything
    else is done with them)."""
    sig = _read_sig(unit_dir)
    pub_path = trust or unit_dir.resolve().parent / BATCH_PUB
    if trust is None and not os.path.lexists(pub_path):
        raise UsageError(f"{unit_dir}: no {BATCH_PUB} beside it to check its signature; give --trust BATCH.pub")
    public = read_batch_public(pub_path)
    batch = batch_fingerprint(public)
    if sig["batch"] != batch:
        raise UsageError(
            f"{unit_dir} is signed by batch key {sig['batch'][:16]}..., not by {pub_path} "
            f"({batch[:16]}...): a unit of another batch, or a forged one"
        )
    try:
        public.verify(sig["signature"], _statement(sig["unit"], batch, sig["files"]))
    except InvalidSignature:
        raise UsageError(
            f"{unit_dir}/{SIG_FILE}: the signature does not verify: the unit was changed "
            "after emit signed it; do not flash it"
        ) from None
    blobs = {name: _read_signed_file(unit_dir, name, digest, _limit(name)) for name, digest in sig["files"].items()}
    try:
        record = UnitRecord.parse(blobs[UNIT_FILE], str(unit_dir / UNIT_FILE))
    except (KeyError, ValueError) as exc:
        raise UsageError(f"{unit_dir}: unusable {UNIT_FILE} ({exc})") from None
    if record.name != sig["unit"] or set(signed_files(record)) != set(sig["files"]):
        raise UsageError(f"{unit_dir}: its signature covers other files or another unit than {UNIT_FILE} names")
    return SignedUnit(unit_dir, record, blobs, batch, trust is not None)


def _read_sig(unit_dir: Path) -> dict[str, Any]:
    path = unit_dir / SIG_FILE
    if not os.path.lexists(path):
        if not os.path.lexists(unit_dir / UNIT_FILE):
            raise UsageError(f"{unit_dir} is not a unit directory emit wrote (no {UNIT_FILE})")
        raise UsageError(
            f"{unit_dir} has no signature ({SIG_FILE}): emitted by an older imagetools or "
            "tampered with; run emit on its OUT again to sign it"
        )
    data = strict.loads(strict.read_regular(path, MAX_SIG, "unit signature", follow=False), str(path))
    try:
        f = Fields(data, SIG_FILE)
        if f.get("version", int) != SIG_VERSION:
            raise ValueError(f"version {data['version']}, this imagetools reads {SIG_VERSION}")
        files = f.get("files", dict, each=str)
        if not all(is_file_name(n) for n in files) or len(files) > 8:
            raise ValueError("'files' names something that is not a file of the unit")
        signature = base64.b64decode(f.get("signature", str), validate=True)
        return {"unit": f.get("unit", str), "batch": f.get("batch", str), "files": files, "signature": signature}
    except ValueError as exc:  # binascii.Error is one
        raise UsageError(f"{path}: not a unit signature ({exc})") from None


def _limit(name: str) -> int:
    return MAX_DELTA if name.endswith(".delta") else MAX_BMAP if name.endswith(".bmap") else MAX_RECORD


def _read_signed_file(unit_dir: Path, name: str, digest: str, limit: int) -> bytes:
    blob = strict.read_regular(unit_dir / name, limit, "unit file", follow=False)
    if hashlib.sha256(blob).hexdigest() != digest:
        raise UsageError(f"{unit_dir / name} was changed after emit signed it: do not flash this unit")
    return blob
