"""Mender Server management API client: deviceauth v2, useradm login, legacy admission v1.

Why a client of our own rather than a curl loop: the server has no bulk preauthorize endpoint,
rate-limits with 429, answers 409 even when the same identity and key are re-posted, and a
factory run must survive a flaky link. Every request here is retried with exponential backoff on
connection errors, 5xx and 429 (honouring ``Retry-After``); POSTs are safe to retry because a
duplicate preauthorization answers 409, which the caller resolves by comparing keys, and DELETEs
because a repeat answers 404. TLS failures are not retried: a certificate we do not trust or a
server that speaks plain http stays so, and waiting would only hide the message.

The library never prints: ``on_retry`` hears about each retry (what failed, why, the wait) and
``on_request`` about each request's method and URL, for a caller that wants to show them.

Nothing the server sends is trusted: each answer is read whole within the request's deadline and
size cap, and its shape and types are checked against what the API promises before anything uses
it; anything else is a BadResponse (a ServerError, exit 4) quoting the server's request_id. Text
quoted from the server is cut to one printable line.

The token is kept out of every message, repr and log line; errors carry the server's ``error``
text and ``request_id`` so an operator can quote them to the server's admins.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import hashlib
import itertools
import json
import numbers
import os
import random
import re
import ssl
import stat
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx

from .errors import AuthError, ImageToolsError, KeyMaterialError, ServerError, UsageError, from_oserror
from .keys import PublicKey, load_public, write_secret
from .mender import (ACCEPTED, ADMISSION_V1, AUTH_SET_V2, DEVICE_V2, DEVICES_V2, ENV_SERVER_URL, ENV_TOKEN,
                     LOGIN, MAX_PER_PAGE, PREAUTHORIZED, canonical_identity)

MAX_PAGES = 10_000               # 5 million devices at 500 per page
MAX_BODY = 16 * 1024 * 1024      # a page of 500 devices with RSA-4096 keys is about 2 MiB
MAX_TOKEN_BYTES = 64 * 1024
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# OpenSSL's reasons when the other side answered a TLS hello with something that is not TLS
# (a plain http server's "HTTP/1.1 400"): 1.x/3.0, 3.2 and later, and a long non-TLS record.
PLAIN_HTTP_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"})
TOKEN_ENV, URL_ENV = ENV_TOKEN, ENV_SERVER_URL

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")   # device and auth set ids: UUIDs, hex ObjectIds
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")       # statuses: pending, accepted, ...
NOT_JSON = object()                                       # Reply.data of a body that is not JSON


class BadResponse(ServerError):
    """An answer that is not what the Mender API promises: not JSON, wrong shape or types, too
    large, a page walk that does not end. It says nothing about one unit, so batch commands stop
    on it (exit 4) instead of counting a unit as failed."""


@dataclass
class ServerSettings:
    """Where the server is and how to talk to it; ``token`` never appears in repr()."""

    url: str
    token: str | None = field(default=None, repr=False)
    token_source: str = ""          # e.g. "MENDER_TOKEN", shown in auth errors instead of the token
    ca_cert: str | None = None
    insecure: bool = False
    timeout: float = 30.0           # total per attempt: connect, headers and the whole body
    retries: int = 4                # extra attempts after the first
    backoff: float = 0.5            # first wait in seconds; doubles on every retry
    max_wait: float = 120.0         # longest single wait we accept, Retry-After included
    max_pages: int = MAX_PAGES      # a device list walk longer than this is refused

    def __post_init__(self) -> None:
        self.url = normalize_url(self.url)


def normalize_url(url: str | None) -> str:
    """'https://host/' → 'https://host'; refuse anything that is not a plain http(s) URL
    (credentials, query or fragment in it would end up in messages and requests)."""
    if not url:
        raise UsageError(f"no Mender Server URL: pass --server URL, set {URL_ENV} or set url in the [server] "
                         f"table of the config file")
    url = url.strip().rstrip("/")
    if not _plain_http_url(url):
        raise UsageError(f"not a server URL: {_one_line(url, 100)!r} (expected https://host[:port])")
    return url


def _plain_http_url(url: str) -> bool:
    if not url.isprintable() or " " in url:
        return False
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:   # e.g. 'http://[::1', a port out of range
        return False
    return (port_ok and parts.scheme in ("http", "https") and bool(parts.hostname)
            and not parts.query and not parts.fragment and "@" not in parts.netloc)


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
        return _read_token_file(token_file, f"token file {token_file}", UsageError), f"--token-file {token_file}"
    if env.get(TOKEN_ENV, "").strip():
        return check_token(env[TOKEN_ENV], TOKEN_ENV), TOKEN_ENV
    cached = token_cache_path(url)
    if not os.path.lexists(cached):
        raise AuthError(
            f"no credentials for {normalize_url(url)}: set {TOKEN_ENV} to a Personal Access Token, "
            f"pass --token-file FILE, or run: imagetools login --server {normalize_url(url)} "
            f"--username USER")
    token = _read_token_file(cached, f"the cached login token {cached}", AuthError)
    expiry = jwt_expiry(token)
    if expiry is not None and expiry <= datetime.now(timezone.utc):
        raise AuthError(f"the cached login for {normalize_url(url)} expired at {expiry:%Y-%m-%d %H:%M} UTC; "
                        f"run: imagetools login --server {normalize_url(url)} --username USER")
    return token, f"cached login ({cached})"


def _read_token_file(path: str | os.PathLike, what: str, unreadable: type[ImageToolsError]) -> str:
    """The token in a file: a regular file of at most 64 KiB holding one line (see check_token).
    ``unreadable`` is the error for a file that cannot be read or is no token file at all."""
    try:
        data = read_regular_file(path, MAX_TOKEN_BYTES)
    except OSError as exc:
        raise from_oserror(exc, f"cannot read {what}", unreadable) from None
    except ValueError as exc:
        raise unreadable(f"cannot use {what}: {exc}") from None
    return check_token(data.decode("ascii", "surrogateescape"), what)


def read_regular_file(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Opened non-blocking and checked with fstat before reading, so a FIFO does not block and a
    device such as /dev/zero does not fill the memory. Raises OSError, or ValueError saying why
    the file is refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise ValueError(f"it is {kind}, not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"it is larger than {_size(limit)}")
    return data


def check_token(token: str, source: str) -> str:
    """``token`` without surrounding whitespace, if it can go into an Authorization header: one
    line of printable ASCII without spaces. The error names ``source`` and what is wrong, never
    the token itself."""
    token = token.strip()
    if not token:
        raise AuthError(f"{source} is empty")
    problem = _token_problem(token)
    if problem:
        raise AuthError(f"{source} does not hold a token: {problem} (a token is one line of printable "
                        f"ASCII without spaces)")
    return token


def _token_problem(token: str) -> str | None:
    for position, char in enumerate(token, 1):
        if not "!" <= char <= "~":
            kind = ("a line break" if char in "\r\n" else "whitespace" if char.isspace()
                    else "a control character" if char.isascii() else "a non-ASCII character")
            return f"{kind} at character {position}"
    return None


def jwt_expiry(token: str) -> datetime | None:
    """The 'exp' claim of a JWT, if the token is one and has it (PATs are JWTs too)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return datetime.fromtimestamp(int(claims["exp"]), timezone.utc)
    except (ValueError, KeyError, TypeError, binascii.Error, OverflowError, RecursionError):
        return None


def save_token(url: str, token: str) -> Path:
    """Cache a login JWT: directory 0700, file 0600 from the first byte, replaced atomically."""
    token = check_token(token, "the login token")
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


# --- answers -----------------------------------------------------------------------------------

@dataclass
class Reply:
    """A whole answer, read within the request's deadline and size cap."""

    status_code: int
    headers: httpx.Headers
    content: bytes = field(repr=False)
    request: httpx.Request = field(repr=False)

    @functools.cached_property
    def data(self) -> Any:
        """The body as JSON, or NOT_JSON (not UTF-8, not JSON, or nested deeper than the parser goes)."""
        try:
            return json.loads(self.content)
        except (ValueError, RecursionError):
            return NOT_JSON

    @property
    def is_redirect(self) -> bool:
        return self.status_code in (301, 302, 303, 307, 308) and "Location" in self.headers

    @property
    def request_id(self) -> str | None:
        rid = self.data.get("request_id") if isinstance(self.data, dict) else None
        if not isinstance(rid, str) or not rid:
            rid = self.headers.get("X-MEN-RequestID")
        return self.quote(rid, 64) if rid else None

    def quote(self, text: str, limit: int = 200) -> str:
        """Server text for a one-line message, our credentials blanked out should it echo them."""
        credential = self.request.headers.get("Authorization", "").partition(" ")[2]
        if credential:
            text = text.replace(credential, "<hidden>")
        return _one_line(text, limit)


@dataclass(frozen=True)
class Retry:
    """A failed attempt that is about to be retried, as MenderClient's ``on_retry`` hears of it."""

    what: str          # the request, e.g. "list devices"
    attempt: int       # the attempt that failed, counted from 1
    attempts: int      # how many there are at most (1 + retries)
    reason: str        # why it failed, one line: "cannot reach the Mender Server at URL: ...", "HTTP 503: ..."
    wait: float        # seconds until the next attempt


@dataclass
class PreauthAnswer:
    """What the server said to one preauthorization: 201 created (with the id from Location) or
    409 with the conflicting device (None when an older server sends an Error instead)."""

    status: int
    device_id: str | None = None
    device: dict | None = None


# --- the client --------------------------------------------------------------------------------

class MenderClient:
    """A small, thread-safe client for the management endpoints imagetools needs.

    ``on_retry(Retry)`` is called before each wait for a retry, ``on_request(method, url)`` before
    each attempt is sent (the URL as sent, never with credentials). Both are called from the
    thread doing the request (push and remove run several), and must not raise."""

    def __init__(self, settings: ServerSettings, *, connections: int = 4,
                 on_retry: Callable[[Retry], None] | None = None,
                 on_request: Callable[[str, str], None] | None = None):
        self.settings = settings
        self.url = settings.url
        self.on_retry = on_retry
        token = check_token(settings.token, settings.token_source or "the token") if settings.token else None
        hooks = {"request": [lambda request: on_request(request.method, str(request.url))]} if on_request else {}
        self._http = httpx.Client(
            base_url=self.url,
            verify=_tls_verify(settings),
            timeout=settings.timeout,
            limits=httpx.Limits(max_connections=max(connections, 1)),
            auth=_Bearer(token) if token else None,
            headers={"User-Agent": "imagetools"},
            follow_redirects=False,
            event_hooks=hooks,
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

    def request(self, method: str, path: str, *, what: str, **kwargs: Any) -> Reply:
        """Send with retries; return any answer below 500 except 401/403/429 (raised as errors).

        Each attempt is over within ``timeout`` seconds (see _attempt); there are at most
        ``retries`` more, and no wait between them is longer than ``max_wait``. A TLS failure
        ends it at once (see _tls_failure)."""
        s = self.settings
        attempts = s.retries + 1
        for attempt in range(1, attempts + 1):
            wait = s.backoff * (2 ** min(attempt - 1, 30)) * (1 + random.random() / 10)
            try:
                reply = self._attempt(method, path, what, kwargs)
            except httpx.TransportError as exc:
                tls = self._tls_failure(exc)
                if tls:
                    raise ServerError(f"{what}: {tls}") from None
                reason = self._no_answer(exc)
                if attempt == attempts:
                    raise ServerError(f"{what}: {reason} ({_tries(attempts)})") from None
            else:
                if reply.status_code in (401, 403):
                    raise self._auth_error(reply, what)
                if reply.status_code not in RETRY_STATUSES:
                    return reply
                retry_after = parse_retry_after(reply.headers.get("Retry-After"))
                if retry_after is not None:
                    if retry_after > s.max_wait:
                        raise server_error(reply, f"{what} (server asks to retry after {retry_after:.0f} s)")
                    wait = max(wait, retry_after)
                if attempt == attempts:
                    raise server_error(reply, f"{what} ({_tries(attempts)})")
                reason = _answer_text(reply)
            wait = min(wait, s.max_wait)
            if self.on_retry:
                self.on_retry(Retry(what, attempt, attempts, reason, wait))
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _attempt(self, method: str, path: str, what: str, kwargs: dict[str, Any]) -> Reply:
        """One exchange, over within ``timeout`` seconds: connect, headers and the whole body.

        httpx's timeouts bound each read, so a server trickling a byte a second (or sending
        endless 1xx answers) would never time out. The exchange runs in a helper thread that we
        stop waiting for at the deadline; the helper gives up by itself at its next chunk."""
        timeout = self.settings.timeout
        outcome: Future[Reply] = Future()
        deadline = time.monotonic() + timeout
        threading.Thread(target=_fulfil, args=(outcome, self._exchange, method, path, what, deadline, kwargs),
                         name="imagetools-http", daemon=True).start()
        try:
            return outcome.result(timeout=timeout)
        except TimeoutError:
            raise httpx.ReadTimeout("no complete answer before the deadline") from None

    def _exchange(self, method: str, path: str, what: str, deadline: float, kwargs: dict[str, Any]) -> Reply:
        """Send and read the whole body, at most MAX_BODY bytes (in the helper thread of _attempt)."""
        with self._http.stream(method, path, **kwargs) as resp:
            head = Reply(resp.status_code, resp.headers, b"", resp.request)   # for error messages
            declared = resp.headers.get("Content-Length", "")
            if re.fullmatch(r"[0-9]{1,30}", declared) and int(declared) > MAX_BODY:
                raise _bad_response(head, what, f"it announces more than {_size(MAX_BODY)}; not reading it")
            body = bytearray()
            try:
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise _bad_response(head, what, f"it is larger than {_size(MAX_BODY)}; not reading it")
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("the answer did not end in time", request=resp.request)
            except httpx.DecodingError:
                raise _bad_response(head, what, "its body does not decode as its Content-Encoding says") from None
        return Reply(resp.status_code, resp.headers, bytes(body), resp.request)

    def _no_answer(self, exc: httpx.TransportError) -> str:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return f"cannot reach the Mender Server at {self.url}: {self._reason(exc)}"
        return f"no complete answer from the Mender Server at {self.url}: {self._reason(exc)}"

    def _tls_failure(self, exc: httpx.TransportError) -> str | None:
        """What to stop with when TLS itself failed, or None when retrying may help (no TLS error,
        or a handshake cut short: a restarting server or a flaky link does that)."""
        tls = _ssl_error(exc)
        if tls is None or isinstance(tls, _TRANSIENT_SSL) or tls.reason == "UNEXPECTED_EOF_WHILE_READING":
            return None
        reason = self._reason(exc)
        if isinstance(tls, ssl.SSLCertVerificationError) or tls.reason == "CERTIFICATE_VERIFY_FAILED":
            return (f"TLS certificate of {self.url} not trusted ({reason}); use --ca-cert FILE for a private CA "
                    f"(--insecure skips the check, test setups only)")
        if tls.reason in PLAIN_HTTP_REASONS:
            return (f"TLS handshake with {self.url} failed ({reason}): the server speaks plain http: "
                    f"use an http:// URL")
        return f"TLS handshake with {self.url} failed ({reason}); check the URL's port and the server's TLS setup"

    def _reason(self, exc: BaseException) -> str:
        """The transport error on one line, the token blanked out should the message quote it."""
        if isinstance(exc, httpx.TimeoutException):
            return f"timed out after {self.settings.timeout:g} s ({type(exc).__name__})"
        text = str(exc) or type(exc).__name__
        if self.settings.token:
            text = text.replace(self.settings.token.strip(), "<hidden>")
        return _one_line(text, 200)

    def _auth_error(self, reply: Reply, what: str) -> AuthError:
        err = server_error(reply, what)
        source = self.settings.token_source or "the token"
        hint = ("log in again (imagetools login), or check "
                f"{TOKEN_ENV} / --token-file" if reply.status_code == 401 else
                "the user or token lacks the permission for this")
        return AuthError(f"{err}; credentials from {source} were refused: {hint}",
                         err.status, err.request_id)

    # --- useradm ---

    def login(self, username: str, password: str) -> str:
        """POST auth/login with Basic auth; returns the JWT (not cached here: see save_token)."""
        try:
            reply = self.request("POST", LOGIN, what="login", auth=httpx.BasicAuth(username, password))
        except AuthError as exc:
            raise AuthError(f"login to {self.url} as {username!r} refused: wrong username or password "
                            f"(HTTP {exc.status}" + (f", request_id {exc.request_id})" if exc.request_id else ")"),
                            exc.status, exc.request_id) from None
        if reply.status_code != 200:
            raise server_error(reply, "login")
        token = reply.content.decode("ascii", "replace").strip().strip('"')
        if token.count(".") != 2 or _token_problem(token):
            raise BadResponse(f"login: {self.url} did not answer with a JWT (is this a Mender Server?)",
                              reply.status_code, reply.request_id)
        return token

    # --- deviceauth v2 ---

    def preauthorize(self, identity: Mapping[str, str], pubkey_pem: str, *, force: bool = False) -> PreauthAnswer:
        body: dict[str, Any] = {"identity_data": dict(identity), "pubkey": pubkey_pem}
        if force:
            body["force"] = True
        what = f"preauthorize {canonical_identity(identity)}"
        reply = self.request("POST", DEVICES_V2, json=body, what=what)
        if reply.status_code == 201:
            return PreauthAnswer(201, device_id=_location_id(reply, what))
        if reply.status_code == 409:
            return PreauthAnswer(409, device=_conflicting_device(reply, what))
        raise server_error(reply, what)

    def get_device(self, device_id: str) -> dict | None:
        what = f"get device {_one_line(device_id, 80)}"
        reply = self.request("GET", DEVICE_V2.format(device_id=quote(device_id, safe="")), what=what)
        if reply.status_code == 404:
            return None
        if reply.status_code != 200:
            raise server_error(reply, what)
        return _checked(reply, what, reply.data, _device_problem)

    def iter_devices(self, per_page: int = MAX_PER_PAGE) -> Iterator[dict]:
        """Every device, following the Link header's 'next' page; each one checked (_device_problem)."""
        yield from self._paged(DEVICES_V2, {"per_page": min(per_page, MAX_PER_PAGE)}, "list devices",
                               _device_problem)

    def remove_auth_set(self, device_id: str, auth_id: str) -> bool:
        """Remove one auth set: True when removed (204), False when the server has no such auth set
        or device (404). Removing the only auth set of a preauthorized device removes the device
        too, and removing an accepted one rejects the device (the API's rules)."""
        path = AUTH_SET_V2.format(device_id=quote(device_id, safe=""), auth_id=quote(auth_id, safe=""))
        return self._delete(path, f"remove auth set {_one_line(auth_id, 80)} of device {_one_line(device_id, 80)}")

    def decommission(self, device_id: str) -> bool:
        """Decommission a device with all its auth sets: True when done (204), False on 404."""
        path = DEVICE_V2.format(device_id=quote(device_id, safe=""))
        return self._delete(path, f"decommission device {_one_line(device_id, 80)}")

    def _delete(self, path: str, what: str) -> bool:
        reply = self.request("DELETE", path, what=what)
        if reply.status_code in (204, 404):
            return reply.status_code == 204
        if reply.status_code < 300:
            raise _bad_response(reply, what, "the API answers a removal with 204 No Content")
        raise server_error(reply, what)

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
        reply = self.request("POST", ADMISSION_V1, json=body, what=what)
        if reply.status_code in (201, 409):
            return reply.status_code
        raise server_error(reply, what)

    def iter_admission_sets(self, per_page: int = MAX_PER_PAGE) -> Iterator[dict]:
        yield from self._paged(ADMISSION_V1, {"per_page": per_page}, "list admission sets", _admission_problem)

    # --- paging ---

    def _paged(self, path: str, params: dict[str, Any], what: str,
               problem: Callable[[Any], str | None]) -> Iterator[dict]:
        """Follow rel="next" links, each item checked with ``problem``.

        Only the link's query is used (the path stays ours), and a link to another scheme or host
        is refused: the token goes to the configured server only. A page asked for twice, or more
        than ``max_pages`` pages (10,000 by default: 5 million devices at 500 per page), is a
        BadResponse, so a server answering endless pages cannot keep us forever."""
        query: dict[str, Any] = {"page": 1, **params}
        seen = {_query_key(query)}
        for number in itertools.count(1):
            reply = self.request("GET", path, params=query, what=what)
            if reply.status_code != 200:
                raise server_error(reply, what)
            if not isinstance(reply.data, list):
                raise _bad_response(reply, what, f"expected a JSON list, got {json_type(reply.data)}")
            yield from [_checked(reply, what, item, problem) for item in reply.data]
            link = next_link(reply.headers.get("Link"))
            if not reply.data or not link:
                return
            if number >= self.settings.max_pages:
                raise _bad_response(reply, what, f"more than {number} pages; the list does not end")
            query = self._next_query(reply, what, link)
            if _query_key(query) in seen:
                raise _bad_response(reply, what, f"the next-page link leads back to a page already read "
                                                f"({_one_line(_query_key(query), 80)}); the list would never end")
            seen.add(_query_key(query))

    def _next_query(self, reply: Reply, what: str, link: str) -> dict[str, str]:
        """The query of a next-page link, which must point to our own scheme and host (or be relative)."""
        ours = urlsplit(self.url)
        try:
            parts = urlsplit(link)
            scheme = parts.scheme.lower() or ours.scheme
            origin = (parts.hostname, parts.port or _default_port(scheme)) if parts.netloc else None
        except ValueError:
            raise _bad_response(reply, what, f"next-page link {reply.quote(link, 80)!r} is not a URL") from None
        if scheme != ours.scheme or origin not in (None, (ours.hostname, ours.port or _default_port(scheme))):
            raise _bad_response(reply, what, f"next-page link points to {reply.quote(link, 80)!r}, not to "
                                            f"{self.url}; not sending the token there")
        return dict(parse_qsl(parts.query))


def expected_key_for_identity(client: MenderClient, identity: Mapping[str, Any]) -> PublicKey:
    """The key the server will accept for this identity: the accepted auth set's key, else the
    preauthorized one. Raises ServerError when the server has neither."""
    device = client.find_device(identity)
    if device is None:
        raise ServerError(f"no device with identity {canonical_identity(identity)} on {client.url}; "
                          f"preauthorize it first (imagetools preauth push)")
    sets = device.get("auth_sets") or []
    for wanted in (ACCEPTED, PREAUTHORIZED):
        for auth_set in sets:
            if auth_set.get("status") == wanted and auth_set.get("pubkey"):
                try:
                    return load_public(auth_set["pubkey"].encode(), f"key of device {device['id']} on the server")
                except KeyMaterialError as exc:
                    raise ServerError(str(exc)) from None
    raise ServerError(f"device {device['id']} with identity {canonical_identity(identity)} has no "
                      f"accepted or preauthorized key on {client.url} (device status: {device.get('status')})")


# --- what the API promises ---------------------------------------------------------------------

def _checked(reply: Reply, what: str, item: Any, problem: Callable[[Any], str | None]) -> Any:
    """``item`` if ``problem`` finds nothing wrong with it, else a BadResponse saying what."""
    found = problem(item)
    if found:
        raise _bad_response(reply, what, found)
    return item


def _device_problem(item: Any) -> str | None:
    """Why ``item`` is not a Device as deviceauth v2 sends it (None if it is one): comparisons,
    messages and tables rely on these types. Optional fields may be missing or null."""
    if not isinstance(item, dict):
        return f"a device is {json_type(item)}, not an object"
    device_id = item.get("id")
    if not isinstance(device_id, str) or not _ID.fullmatch(device_id):
        return f"device id {_show(device_id)} is not an id"
    found = (_identity_problem(item.get("identity_data")) or _word_problem(item.get("status"), "status")
             or _auth_sets_problem(item.get("auth_sets")))
    return f"device {device_id}: {found}" if found else None


def _identity_problem(identity: Any) -> str | None:
    """Identity data must be an object of printable names to scalars or flat lists of them."""
    if identity is None:
        return None
    if not isinstance(identity, dict):
        return f"identity_data is {json_type(identity)}, not an object"
    for attr, value in identity.items():
        if not attr.isprintable():
            return f"identity attribute {_show(attr)} has control characters in its name"
        if not (_scalar(value) or isinstance(value, list) and all(_scalar(v) for v in value)):
            return f"identity attribute {_show(attr)} holds nested values"
    return None


def _auth_sets_problem(sets: Any) -> str | None:
    if sets is None:
        return None
    if not isinstance(sets, list):
        return f"auth_sets is {json_type(sets)}, not a list"
    return next(filter(None, map(_auth_set_problem, sets)), None)


def _auth_set_problem(item: Any) -> str | None:
    """Why ``item`` is not an AuthSet: the id (optional in the spec) is used in DELETE paths."""
    if not isinstance(item, dict):
        return f"an auth set is {json_type(item)}, not an object"
    auth_id = item.get("id")
    if auth_id is not None and not (isinstance(auth_id, str) and _ID.fullmatch(auth_id)):
        return f"auth set id {_show(auth_id)} is not an id"
    pubkey = item.get("pubkey")
    if not isinstance(pubkey, str) or not pubkey.isascii():
        return f"an auth set's pubkey is {json_type(pubkey)}, not PEM text"
    return _word_problem(item.get("status"), "auth set status")


def _admission_problem(item: Any) -> str | None:
    """Why ``item`` is not a legacy admission auth set (None if it is one)."""
    if not isinstance(item, dict):
        return f"an admission set is {json_type(item)}, not an object"
    if not isinstance(item.get("device_identity"), str):
        return f"an admission set's device_identity is {json_type(item.get('device_identity'))}, not a string"
    if not isinstance(item.get("key"), str) or not item["key"].isascii():
        return f"an admission set's key is {json_type(item.get('key'))}, not PEM text"
    device_id = item.get("device_id")
    if device_id is not None and not (isinstance(device_id, str) and _ID.fullmatch(device_id)):
        return f"admission device_id {_show(device_id)} is not an id"
    return _word_problem(item.get("status"), "admission status")


def _word_problem(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str) and _WORD.fullmatch(value):
        return None
    return f"{what} {_show(value)} is not a status"


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _location_id(reply: Reply, what: str) -> str:
    """The new device's id: the last path segment of Location (a URL we never follow)."""
    location = reply.headers.get("Location", "").strip()
    try:
        device_id = urlsplit(location).path.rpartition("/")[2]
    except ValueError:
        device_id = ""
    if not _ID.fullmatch(device_id):
        raise _bad_response(reply, what, f"Location {reply.quote(location, 80)!r} does not name a device"
                           if location else "201 without a Location header")
    return device_id


def _conflicting_device(reply: Reply, what: str) -> dict | None:
    """A 409's body: the Device holding the identity, or None for an Error (older servers)."""
    body = reply.data
    if isinstance(body, dict) and "id" not in body and isinstance(body.get("error"), str):
        return None
    return _checked(reply, what, body, _device_problem)


def next_link(value: str | None) -> str | None:
    """The target of the rel="next" entry of a Link header (RFC 8288), or None."""
    for target, params in re.findall(r"<([^>]*)>([^<]*)", value or ""):
        rel = re.search(r';\s*rel\s*=\s*(?:"([^"]*)"|([^\s;,]+))', params, re.I)
        if rel and "next" in (rel.group(1) or rel.group(2) or "").lower().split():
            return target.strip() or None
    return None


# --- helpers -----------------------------------------------------------------------------------

def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is delta-seconds (ASCII digits only: str.isdigit() also takes '²') or an HTTP
    date; anything else is ignored."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]+", value):
        return float(value)
    if not value.isascii():
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def server_error(reply: Reply, what: str) -> ServerError:
    """A ServerError quoting the server's 'error' and 'request_id', on one printable line."""
    return ServerError(f"{what}: {_answer_text(reply)}", reply.status_code, reply.request_id)


def _answer_text(reply: Reply) -> str:
    """'HTTP 503: service unavailable (request_id ...)': an error answer on one printable line."""
    body = reply.data
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        detail = body["error"]
    elif body is NOT_JSON:
        detail = reply.content[:4096].decode("utf-8", "replace")   # e.g. a proxy's HTML error page
    else:
        detail = ""
    if reply.is_redirect:
        detail = f"redirected to {reply.headers['Location']}; pass that server URL instead"
    detail, rid = reply.quote(detail), reply.request_id
    return f"HTTP {reply.status_code}" + (f": {detail}" if detail else "") + (f" (request_id {rid})" if rid else "")


def _bad_response(reply: Reply, what: str, problem: str) -> BadResponse:
    rid = reply.request_id
    return BadResponse(f"{what}: unexpected answer from the Mender Server (HTTP {reply.status_code}): "
                       f"{problem}" + (f" (request_id {rid})" if rid else ""), reply.status_code, rid)


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one printable line: whitespace runs collapsed, control characters (escape
    sequences, bidi overrides) escaped, cut at ``limit`` characters."""
    text = " ".join(text[: limit * 4].split())
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_type(value: Any) -> str:
    """'a string', 'a number', ... for messages about JSON values."""
    if value is NOT_JSON:
        return "no JSON at all"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, numbers.Number):
        return "a number"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return "an array" if isinstance(value, list) else "an object"
    return "a string"


def _show(value: Any) -> str:
    """A scalar JSON value from the server for a message; containers only by their type."""
    if isinstance(value, (list, dict)) or value is NOT_JSON:
        return json_type(value)
    return _one_line(json.dumps(value), 60)


def _fulfil(future: Future, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn`` and hand its result, or whatever it raised, to the thread waiting on ``future``."""
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 — not handled here: re-raised in the waiting thread
        future.set_exception(exc)


def _query_key(query: Mapping[str, Any]) -> str:
    """A page's query in one spelling, whatever the order and types of its parameters."""
    return urlencode(sorted((str(k), str(v)) for k, v in query.items()))


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "https": 443}.get(scheme.lower())


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


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


# Connection trouble that shows up as an SSLError: the peer hung up or the socket failed mid-handshake.
_TRANSIENT_SSL = (ssl.SSLEOFError, ssl.SSLSyscallError, ssl.SSLZeroReturnError)


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ssl.SSLError behind an httpx transport error (httpx and httpcore chain it), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tries(attempts: int) -> str:
    return f"tried {attempts} time{'s' if attempts != 1 else ''}"
