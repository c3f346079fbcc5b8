"""Mender Server management API client: deviceauth v2, useradm login, legacy admission v1.

Why a client of our own rather than a curl loop: the server has no bulk preauthorize endpoint,
rate-limits with 429, answers 409 even when the same identity and key are re-posted, and a
factory run must survive a flaky link. Every request here is retried with exponential backoff on
connection errors, 5xx and 429 (honouring ``Retry-After``); POSTs are safe to retry because a
duplicate preauthorization answers 409, which the caller resolves by comparing keys.

The token is kept out of every message, repr and log line; errors carry the server's ``error``
text and ``request_id`` so an operator can quote them to the server's admins.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import json
import os
import random
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qsl, urlsplit

import httpx

from .errors import AuthError, KeyMaterialError, ServerError, UsageError
from .keys import PublicKey, load_public, write_secret

DEVICES_V2 = "/api/management/v2/devauth/devices"
ADMISSION_V1 = "/api/management/v1/admission/devices"
LOGIN = "/api/management/v1/useradm/auth/login"
MAX_PER_PAGE = 500
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
TOKEN_ENV = "MENDER_TOKEN"
URL_ENV = "MENDER_SERVER_URL"


@dataclass
class ServerSettings:
    """Where the server is and how to talk to it; ``token`` never appears in repr()."""

    url: str
    token: str | None = field(default=None, repr=False)
    token_source: str = ""          # e.g. "MENDER_TOKEN", shown in auth errors instead of the token
    ca_cert: str | None = None
    insecure: bool = False
    timeout: float = 30.0
    retries: int = 4                # extra attempts after the first
    backoff: float = 0.5            # first wait in seconds; doubles on every retry
    max_wait: float = 120.0         # longest single wait we accept, Retry-After included

    def __post_init__(self) -> None:
        self.url = normalize_url(self.url)


def normalize_url(url: str | None) -> str:
    """'https://host/' → 'https://host'; refuse anything that is not an http(s) URL."""
    if not url:
        raise UsageError(f"no Mender Server URL: pass --server URL or set {URL_ENV}")
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"not a server URL: {url!r} (expected https://host[:port])")
    return url


def canonical_identity(identity: Mapping[str, Any]) -> str:
    """The server matches identities after sorting keys; this is that form, compact."""
    return json.dumps(identity, sort_keys=True, separators=(",", ":"))


# --- credentials -------------------------------------------------------------------------------

def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imagetools"


def token_cache_path(url: str) -> Path:
    """One cached login JWT per server URL (named by a hash, so the URL is not in the name)."""
    digest = hashlib.sha256(normalize_url(url).encode()).hexdigest()[:16]
    return cache_dir() / f"jwt-{digest}"


def resolve_token(url: str, token_file: str | os.PathLike | None = None,
                  env: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """(token, where it came from): --token-file, then MENDER_TOKEN, then the cached login."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read token file {token_file}: {exc.strerror}") from None
        if not token:
            raise AuthError(f"token file {token_file} is empty")
        return token, f"--token-file {token_file}"
    if env.get(TOKEN_ENV, "").strip():
        return env[TOKEN_ENV].strip(), TOKEN_ENV
    cached = token_cache_path(url)
    try:
        token = cached.read_text().strip()
    except FileNotFoundError:
        raise AuthError(
            f"no credentials for {normalize_url(url)}: set {TOKEN_ENV} to a Personal Access Token, "
            f"pass --token-file FILE, or run: imagetools login --server {normalize_url(url)} "
            f"--username USER") from None
    except OSError as exc:
        raise AuthError(f"cannot read the cached login token {cached}: {exc.strerror}") from None
    expiry = jwt_expiry(token)
    if expiry is not None and expiry <= datetime.now(timezone.utc):
        raise AuthError(f"the cached login for {normalize_url(url)} expired at {expiry:%Y-%m-%d %H:%M} UTC; "
                        f"run: imagetools login --server {normalize_url(url)} --username USER")
    return token, f"cached login ({cached})"


def jwt_expiry(token: str) -> datetime | None:
    """The 'exp' claim of a JWT, if the token is one and has it (PATs are JWTs too)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return datetime.fromtimestamp(int(claims["exp"]), timezone.utc)
    except (ValueError, KeyError, TypeError, binascii.Error, OverflowError):
        return None


def save_token(url: str, token: str) -> Path:
    """Cache a login JWT: directory 0700, file 0600 from the first byte, replaced atomically."""
    path = token_cache_path(url)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret(path, token.encode() + b"\n", force=True)
    return path


class _Bearer(httpx.Auth):
    """Adds the token to each request; its repr hides the token."""

    def __init__(self, token: str):
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request):
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "_Bearer(<hidden>)"


# --- the client --------------------------------------------------------------------------------

@dataclass
class PreauthAnswer:
    """What the server said to one preauthorization: 201 created or 409 with the conflicting device."""

    status: int
    location: str | None = None
    device: dict | None = None


class MenderClient:
    """A small, thread-safe client for the management endpoints imagetools needs."""

    def __init__(self, settings: ServerSettings, *, connections: int = 4):
        self.settings = settings
        self.url = settings.url
        self._http = httpx.Client(
            base_url=self.url,
            verify=_tls_verify(settings),
            timeout=settings.timeout,
            limits=httpx.Limits(max_connections=max(connections, 1)),
            auth=_Bearer(settings.token) if settings.token else None,
            headers={"User-Agent": "imagetools"},
            follow_redirects=False,
        )

    def __enter__(self) -> "MenderClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"MenderClient({self.url!r})"

    # --- transport with retries ---

    def request(self, method: str, path: str, *, what: str, **kwargs: Any) -> httpx.Response:
        """Send with retries; return any answer below 500 except 401/403/429 (raised as errors)."""
        s = self.settings
        attempts = s.retries + 1
        for attempt in range(attempts):
            wait = s.backoff * (2 ** attempt) * (1 + random.random() / 10)
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if _is_certificate_error(exc):
                    raise ServerError(
                        f"{what}: TLS certificate of {self.url} not trusted ({_reason(exc)}); pass "
                        f"--ca-cert FILE for a private CA (--insecure skips the check, test setups only)"
                    ) from None
                if attempt + 1 == attempts:
                    raise ServerError(f"{what}: cannot reach the Mender Server at {self.url}: "
                                      f"{_reason(exc)} ({_tries(attempts)})") from None
            else:
                if resp.status_code in (401, 403):
                    raise self._auth_error(resp, what)
                if resp.status_code not in RETRY_STATUSES:
                    return resp
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                if retry_after is not None:
                    if retry_after > s.max_wait:
                        raise server_error(resp, f"{what} (server asks to retry after {retry_after:.0f} s)")
                    wait = max(wait, retry_after)
                if attempt + 1 == attempts:
                    raise server_error(resp, f"{what} ({_tries(attempts)})")
            time.sleep(min(wait, s.max_wait))
        raise AssertionError("unreachable")

    def _auth_error(self, resp: httpx.Response, what: str) -> AuthError:
        err = server_error(resp, what)
        source = self.settings.token_source or "the token"
        hint = ("log in again (imagetools login), or check "
                f"{TOKEN_ENV} / --token-file" if resp.status_code == 401 else
                "the user or token lacks the permission for this")
        return AuthError(f"{err}; credentials from {source} were refused: {hint}",
                         err.status, err.request_id)

    # --- useradm ---

    def login(self, username: str, password: str) -> str:
        """POST auth/login with Basic auth; returns the JWT (not cached here: see save_token)."""
        try:
            resp = self.request("POST", LOGIN, what="login", auth=httpx.BasicAuth(username, password))
        except AuthError as exc:
            raise AuthError(f"login to {self.url} as {username!r} refused: wrong username or password "
                            f"(HTTP {exc.status}" + (f", request_id {exc.request_id})" if exc.request_id else ")"),
                            exc.status, exc.request_id) from None
        if resp.status_code != 200:
            raise server_error(resp, "login")
        token = resp.text.strip().strip('"')
        if token.count(".") != 2:
            raise ServerError(f"login: {self.url} did not answer with a JWT (is this a Mender Server?)",
                              resp.status_code, _request_id(resp))
        return token

    # --- deviceauth v2 ---

    def preauthorize(self, identity: Mapping[str, str], pubkey_pem: str, *, force: bool = False) -> PreauthAnswer:
        body: dict[str, Any] = {"identity_data": dict(identity), "pubkey": pubkey_pem}
        if force:
            body["force"] = True
        resp = self.request("POST", DEVICES_V2, json=body, what=f"preauthorize {canonical_identity(identity)}")
        if resp.status_code == 201:
            return PreauthAnswer(201, location=resp.headers.get("Location"))
        if resp.status_code == 409:
            return PreauthAnswer(409, device=_json_object(resp))
        raise server_error(resp, f"preauthorize {canonical_identity(identity)}")

    def get_device(self, device_id: str) -> dict | None:
        resp = self.request("GET", f"{DEVICES_V2}/{device_id}", what=f"get device {device_id}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise server_error(resp, f"get device {device_id}")
        return _json_object(resp)

    def iter_devices(self, per_page: int = MAX_PER_PAGE) -> Iterator[dict]:
        """Every device, following the Link header's 'next' page."""
        yield from self._paged(DEVICES_V2, {"per_page": min(per_page, MAX_PER_PAGE)}, "list devices")

    def find_device(self, identity: Mapping[str, Any]) -> dict | None:
        """The device whose identity equals ``identity`` exactly (the v2 API has no identity filter)."""
        wanted = canonical_identity(identity)
        for device in self.iter_devices():
            if canonical_identity(device.get("identity_data") or {}) == wanted:
                return device
        return None

    # --- legacy admission v1 (Mender 1.4–1.7) ---

    def admission_preauthorize(self, identity: Mapping[str, str], pubkey_pem: str) -> int:
        """Returns 201 or 409; other answers raise."""
        body = {"device_identity": canonical_identity(identity), "key": pubkey_pem}
        what = f"preauthorize (admission v1) {body['device_identity']}"
        resp = self.request("POST", ADMISSION_V1, json=body, what=what)
        if resp.status_code in (201, 409):
            return resp.status_code
        raise server_error(resp, what)

    def iter_admission_sets(self, per_page: int = MAX_PER_PAGE) -> Iterator[dict]:
        yield from self._paged(ADMISSION_V1, {"per_page": per_page}, "list admission sets")

    # --- paging ---

    def _paged(self, path: str, params: dict[str, Any], what: str) -> Iterator[dict]:
        """Follow rel="next" links. Only the link's query is used, so a proxy rewriting hosts or
        path prefixes cannot send us elsewhere; a repeated link ends the walk."""
        query: dict[str, Any] = {"page": 1, **params}
        seen: set[str] = set()
        while True:
            resp = self.request("GET", path, params=query, what=what)
            if resp.status_code != 200:
                raise server_error(resp, what)
            items = resp.json()
            if not isinstance(items, list):
                raise ServerError(f"{what}: expected a JSON list from {self.url}", 200, _request_id(resp))
            yield from items
            nxt = resp.links.get("next", {}).get("url")
            if not items or not nxt:
                return
            next_query = urlsplit(nxt).query
            if next_query in seen:
                return
            seen.add(next_query)
            query = dict(parse_qsl(next_query))


def expected_key_for_identity(client: MenderClient, identity: Mapping[str, Any]) -> PublicKey:
    """The key the server will accept for this identity: the accepted auth set's key, else the
    preauthorized one. Raises ServerError when the server has neither."""
    device = client.find_device(identity)
    if device is None:
        raise ServerError(f"no device with identity {canonical_identity(identity)} on {client.url}; "
                          f"preauthorize it first (imagetools preauth push)")
    sets = device.get("auth_sets") or []
    for wanted in ("accepted", "preauthorized"):
        for auth_set in sets:
            if auth_set.get("status") == wanted and auth_set.get("pubkey"):
                try:
                    return load_public(auth_set["pubkey"].encode(), f"key of device {device.get('id')} on the server")
                except KeyMaterialError as exc:
                    raise ServerError(str(exc)) from None
    raise ServerError(f"device {device.get('id')} with identity {canonical_identity(identity)} has no "
                      f"accepted or preauthorized key on {client.url} (device status: {device.get('status')})")


# --- helpers -----------------------------------------------------------------------------------

def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def server_error(resp: httpx.Response, what: str) -> ServerError:
    """A ServerError quoting the server's 'error' and 'request_id'."""
    detail = ""
    try:
        body = resp.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            detail = body["error"]
    except ValueError:
        detail = " ".join(resp.text.split())[:200]   # e.g. a proxy's HTML error page, on one line
    if resp.is_redirect:
        detail = f"redirected to {resp.headers.get('Location')}; pass that server URL instead"
    rid = _request_id(resp)
    msg = f"{what}: HTTP {resp.status_code}" + (f": {detail}" if detail else "") + (f" (request_id {rid})" if rid else "")
    return ServerError(msg, resp.status_code, rid)


def _request_id(resp: httpx.Response) -> str | None:
    try:
        body = resp.json()
        if isinstance(body, dict) and isinstance(body.get("request_id"), str):
            return body["request_id"]
    except ValueError:
        pass
    return resp.headers.get("X-MEN-RequestID")


def _json_object(resp: httpx.Response) -> dict:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ServerError(f"{resp.request.method} {resp.request.url.path}: expected a JSON object, "
                          f"got {resp.text[:80]!r}", resp.status_code, resp.headers.get("X-MEN-RequestID"))
    return body


def _tls_verify(settings: ServerSettings) -> ssl.SSLContext | bool:
    if settings.insecure:
        return False
    if settings.ca_cert is None:
        return True
    try:
        return ssl.create_default_context(cafile=settings.ca_cert)
    except FileNotFoundError:
        raise UsageError(f"CA certificate {settings.ca_cert} not found") from None
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"cannot use CA certificate {settings.ca_cert}: {exc}") from None


def _is_certificate_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _tries(attempts: int) -> str:
    return f"tried {attempts} time{'s' if attempts != 1 else ''}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return str(exc) or type(exc).__name__
