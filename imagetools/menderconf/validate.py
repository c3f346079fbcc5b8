"""The values modify's options carry, checked before anything is read from an image: the server
URL, tenant token, Artifact name, mender.conf's mode, --set names and values, and the PEM files
given to -c (a certificate chain) and -v (a public key)."""

from __future__ import annotations

import re
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import KeyMaterialError, UsageError
from ..mender import token_problem
from ..strict import JsonError, JsonNumber, read_regular
from .settings import MAX_CERT_FILE, known, parse_json

MAX_TOKEN_FILE = 64 << 10  # a tenant token file given as -t @FILE
MAX_NAME = 4096  # an Artifact name (one line)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def check_server_uri(url: str) -> str:
    """http(s)://host[:port][/path] as given (the client drops a trailing '/' itself)."""
    shown = repr(url[:100])
    problem = _url_problem(url)
    if problem:
        raise UsageError(f"-u/--server-uri {shown}: {problem} (expected https://host[:port])")
    return url


def _url_problem(url: str) -> str | None:
    if not url.isascii() or not url.isprintable() or " " in url:
        return "not one line of printable ASCII"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a URL (bad host or port)"
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if not parts.hostname or port == 0:
        return "no host" if not parts.hostname else "port 0"
    if "@" in parts.netloc or parts.query or parts.fragment:
        return "credentials, a query or a fragment do not belong in the server URL"
    return None


def check_tenant_token(token: str, source: str = "-t/--tenant-token") -> str:
    """One line of printable ASCII without spaces (a JWT), surrounding whitespace dropped. The
    message names `source`, never the token."""
    token = token.strip()
    if not token:
        raise UsageError(f"{source}: the tenant token is empty")
    problem = token_problem(token)
    if problem:
        raise UsageError(f"{source}: the tenant token has {problem} (a tenant token is one line of printable ASCII)")
    return token


def check_artifact_name(name: str) -> str:
    """What artifact_info can carry and every client reads back the same: one line, no control
    characters, no '=' (older clients split the line at every '='), no surrounding whitespace
    (the client strips it)."""
    problem = (
        "is empty"
        if not name
        else f"is longer than {MAX_NAME} characters"
        if len(name) > MAX_NAME
        else "is not one line of printable characters"
        if not name.isprintable()
        else "has surrounding whitespace, which the client strips"
        if name != name.strip()
        else "contains '=', at which older clients split artifact_info"
        if "=" in name
        else None
    )
    if problem:
        raise UsageError(f"-n/--artifact-name {name[:100]!r} {problem}")
    return name


def parse_mode(text: str) -> int:
    """--mode: an octal permission mode (e.g. 0600), the permission bits only."""
    if not 1 <= len(text) <= 4 or any(c not in "01234567" for c in text) or int(text, 8) > 0o777:
        raise UsageError(
            f"--mode {text[:20]!r}: not an octal permission mode of mender.conf "
            "(0000-0777, e.g. 0600: readable by root only)"
        )
    return int(text, 8)


def check_setting_name(dotted: str, option: str) -> str:
    """'Name' or 'Object.Name': names as Go fields are spelled, at most 4 levels."""
    names = dotted.split(".")
    if len(names) > 4 or not all(_NAME.fullmatch(n) for n in names):
        raise UsageError(
            f"{option} {dotted[:100]!r}: not a setting name (letters, digits and '_', "
            "starting with a letter; '.' between the names of nested objects)"
        )
    spelled = known(dotted)
    if spelled is not None and spelled != dotted:
        raise UsageError(f"{option} {dotted}: the Mender client's setting is spelled {spelled}")
    return dotted


def parse_setting(text: str) -> tuple[str, Any]:
    """--set KEY=JSON: a sane name and a strict JSON value whose numbers are exact."""
    name, sep, raw = text.partition("=")
    if not sep:
        raise UsageError(f"--set {text[:100]!r}: expected KEY=JSON, e.g. --set UpdatePollIntervalSeconds=1800")
    name = check_setting_name(name, "--set")
    try:
        return name, parse_json(raw)
    except JsonError as exc:
        hint = f" (a string needs JSON quotes: --set '{name}=\"...\"')" if raw[:1] not in '{["-0123456789tfn' else ""
        raise UsageError(f"--set {name}: {exc}{hint}") from None


def from_plain(value: Any, name: str) -> Any:
    """A --set value (parsed JSON, or Python values from a library caller) in the form mender.conf
    is written from: numbers as JsonNumber, each one exact for readers that go through doubles."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value) or len({k.casefold() for k in value}) != len(value):
            raise UsageError(f"--set {name}: object names must be strings, each given once (in any case)")
        return {k: from_plain(v, name) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [from_plain(v, name) for v in value]
    if not isinstance(value, (JsonNumber, int, float)):
        raise UsageError(f"--set {name}: a {type(value).__name__} is not a JSON value")
    number = value if isinstance(value, JsonNumber) else JsonNumber(repr(value))
    if not number.exact:
        raise UsageError(
            f"--set {name}: the number {number.text[:40]} changes when read as a double "
            "(as mender-artifact and most JSON readers read numbers)"
        )
    return number


def check_server_cert(pem: bytes, source: str) -> list[str]:
    """A PEM chain of X.509 certificates only (text between blocks is fine: both Go and OpenSSL
    skip it). Returns warnings (expired or not yet valid certificates)."""
    from cryptography import x509

    from .. import keys

    if len(pem) > MAX_CERT_FILE:
        raise KeyMaterialError(f"{source}: {len(pem)} bytes, more than a certificate chain holds (1 MiB)")
    blocks = keys.parse_pem(pem, source).blocks
    if not blocks:
        raise KeyMaterialError(f"{source}: not a PEM certificate (no 'BEGIN CERTIFICATE' block)")
    warnings = []
    for number, block in enumerate(blocks, 1):
        if "PRIVATE KEY" in block.label:
            raise KeyMaterialError(
                f"{source}: block {number} is a private key; the server certificate "
                "is readable by everyone on the device: never put a key in it"
            )
        if block.label != "CERTIFICATE" or block.headers:
            raise KeyMaterialError(f"{source}: block {number} is {block.label[:40]!r}, not a plain 'CERTIFICATE' block")
        try:
            cert = x509.load_der_x509_certificate(block.der)
        except ValueError:
            raise KeyMaterialError(f"{source}: block {number} is not a valid X.509 certificate") from None
        warnings += _validity(cert, f"{source}: certificate {number}")
    return warnings


def _validity(cert: Any, what: str) -> list[str]:
    from datetime import datetime

    now = datetime.now(UTC)
    if cert.not_valid_after_utc < now:
        return [f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d}"]
    if cert.not_valid_before_utc > now:
        return [f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"]
    return []


def check_verification_key(pem: bytes, source: str) -> str:
    """A public key the client can verify Artifact signatures with (SPKI PEM); a private key is
    refused: the signing key must never go into an image. Returns its description."""
    from .. import keys

    if len(pem) > keys.MAX_KEY_FILE:
        raise KeyMaterialError(f"{source}: {len(pem)} bytes, more than a key file holds")
    labels = [block.label for block in keys.parse_pem(pem, source).blocks]
    if any("PRIVATE KEY" in label for label in labels):
        raise KeyMaterialError(
            f"{source}: holds a private key; -v takes the public key that verifies "
            "Artifact signatures (openssl pkey -in KEY -pubout), and the signing key "
            "must never go into an image"
        )
    if labels == ["RSA PUBLIC KEY"]:
        raise KeyMaterialError(
            f"{source}: PKCS#1 'RSA PUBLIC KEY'; the client reads SPKI 'PUBLIC KEY' "
            "(convert with: openssl rsa -RSAPublicKey_in -pubout)"
        )
    key = keys.load_public(pem, source)
    keys.check_acceptable(key, source)
    return keys.describe(key)


def read_file(path: str | Path, limit: int, what: str) -> bytes:
    """A host file given as an option: a regular file of at most `limit` bytes (exit 2 else)."""
    return read_regular(path, limit, what, UsageError)
