"""Where the token comes from and where a login is kept: --token-file, MENDER_TOKEN, or the JWT
cached by `imagetools login` (one per server URL, 0600 from its first byte). A token is checked
before it can go into an Authorization header; messages name its source, never the token."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from ..errors import AuthError, ImageToolsError, UsageError
from ..keys import write_secret
from ..mender import token_problem
from ..strict import parse, read_regular
from .settings import TOKEN_ENV, normalize_url

MAX_TOKEN_BYTES = 64 * 1024


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imagetools"


def token_cache_path(url: str) -> Path:
    """One cached login JWT per server URL (named by a hash, so the URL is not in the name)."""
    digest = hashlib.sha256(normalize_url(url).encode()).hexdigest()[:16]
    return cache_dir() / f"jwt-{digest}"


def resolve_token(
    url: str, token_file: str | os.PathLike | None = None, env: Mapping[str, str] = os.environ
) -> tuple[str, str]:
    """(token, where it came from): --token-file, then MENDER_TOKEN, then the cached login."""
    if token_file is not None:
        return _read_token_file(token_file, "token file", UsageError), f"--token-file {token_file}"
    if env.get(TOKEN_ENV, "").strip():
        return check_token(env[TOKEN_ENV], TOKEN_ENV), TOKEN_ENV
    cached = token_cache_path(url)
    if not os.path.lexists(cached):
        raise AuthError(
            f"no credentials for {normalize_url(url)}: set {TOKEN_ENV} to a Personal Access Token, "
            f"pass --token-file FILE, or run: imagetools login --server {normalize_url(url)} "
            f"--username USER"
        )
    token = _read_token_file(cached, "the cached login token", AuthError)
    expiry = jwt_expiry(token)
    if expiry is not None and expiry <= datetime.now(UTC):
        raise AuthError(
            f"the cached login for {normalize_url(url)} expired at {expiry:%Y-%m-%d %H:%M} UTC; "
            f"run: imagetools login --server {normalize_url(url)} --username USER"
        )
    return token, f"cached login ({cached})"


def _read_token_file(path: str | os.PathLike, what: str, unreadable: type[ImageToolsError]) -> str:
    """The token in a file: a regular file of at most 64 KiB holding one line (see check_token).
    ``unreadable`` is the error for a file that cannot be read or is no token file at all."""
    data = read_regular(path, MAX_TOKEN_BYTES, what, unreadable)
    return check_token(data.decode("ascii", "surrogateescape"), f"{what} {path}")


def check_token(token: str, source: str) -> str:
    """``token`` without surrounding whitespace, if it can go into an Authorization header: one
    line of printable ASCII without spaces. The error names ``source`` and what is wrong, never
    the token itself."""
    token = token.strip()
    if not token:
        raise AuthError(f"{source} is empty")
    problem = token_problem(token)
    if problem:
        raise AuthError(
            f"{source} does not hold a token: {problem} (a token is one line of printable ASCII without spaces)"
        )
    return token


def jwt_expiry(token: str) -> datetime | None:
    """The 'exp' claim of a JWT, if the token is one and has it (PATs are JWTs too)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = parse(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return datetime.fromtimestamp(int(claims["exp"]), UTC)
    except (ValueError, KeyError, TypeError, binascii.Error, OverflowError):
        return None


def save_token(url: str, token: str) -> Path:
    """Cache a login JWT: directory 0700, file 0600 from the first byte, replaced atomically."""
    token = check_token(token, "the login token")
    path = token_cache_path(url)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret(path, token.encode() + b"\n", force=True)
    return path
