"""The connection to the Mender Server: requests with retries and deadlines, whole answers read
within a size cap, page walks that must end.

Every request is retried with exponential backoff on connection errors, 5xx and 429 (honouring
``Retry-After``); POSTs are safe to retry because a duplicate preauthorization answers 409, which
the caller resolves by comparing keys, and DELETEs because a repeat answers 404. TLS failures are
not retried: a certificate we do not trust or a server that speaks plain http stays so, and
waiting would only hide the message. Endpoints live in the API modules (deviceauth, admission,
useradm); this module knows HTTP, not the API.

The library never prints: ``on_retry`` hears about each retry (what failed, why, the wait) and
``on_request`` about each request's method and URL, for a caller that wants to show them. The
token is kept out of every message, repr and log line.
"""

from __future__ import annotations

import email.utils
import functools
import itertools
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from ..errors import AuthError, ServerError, UsageError
from ..strict import STRICT, JsonError, json_type, parse, size_text
from .credentials import check_token
from .settings import TOKEN_ENV, ServerSettings, one_line

MAX_BODY = 16 * 1024 * 1024  # a page of 500 devices with RSA-4096 keys is about 2 MiB
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# OpenSSL's reasons when the other side answered a TLS hello with something that is not TLS
# (a plain http server's "HTTP/1.1 400"): 1.x/3.0, 3.2 and later, and a long non-TLS record.
PLAIN_HTTP_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"})
NOT_JSON = object()  # Reply.data of a body that is not JSON
# The server's answers under the strict policy: a key given twice, NaN or a document nested
# deeper than any API answer is no JSON we read (a BadResponse wherever a shape is expected).
ANSWER_JSON = STRICT


class BadResponse(ServerError):
    """An answer that is not what the Mender API promises: not JSON, wrong shape or types, too
    large, a page walk that does not end. It says nothing about one unit, so batch commands stop
    on it (exit 4) instead of counting a unit as failed."""


@dataclass
class Reply:
    """A whole answer, read within the request's deadline and size cap."""

    status_code: int
    headers: httpx.Headers
    content: bytes = field(repr=False)
    request: httpx.Request = field(repr=False)

    @functools.cached_property
    def data(self) -> Any:
        """The body as JSON, or NOT_JSON (not UTF-8, not JSON, or not JSON we read: ANSWER_JSON)."""
        try:
            return parse(self.content, ANSWER_JSON)
        except JsonError:
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
        return one_line(text, limit)


@dataclass(frozen=True)
class Retry:
    """A failed attempt that is about to be retried, as MenderClient's ``on_retry`` hears of it."""

    what: str  # the request, e.g. "list devices"
    attempt: int  # the attempt that failed, counted from 1
    attempts: int  # how many there are at most (1 + retries)
    reason: str  # why it failed, one line: "cannot reach the Mender Server at URL: ...", "HTTP 503: ..."
    wait: float  # seconds until the next attempt


class _Bearer(httpx.Auth):
    """Adds the token to each request; its repr hides the token."""

    def __init__(self, token: str):
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request):
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "_Bearer(<hidden>)"


class MenderClient:
    """A small, thread-safe client of the management API's transport.

    ``on_retry(Retry)`` is called before each wait for a retry, ``on_request(method, url)`` before
    each attempt is sent (the URL as sent, never with credentials). Both are called from the
    thread doing the request (push and remove run several), and must not raise."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        connections: int = 4,
        on_retry: Callable[[Retry], None] | None = None,
        on_request: Callable[[str, str], None] | None = None,
    ):
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

    def __enter__(self) -> MenderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"MenderClient({self.url!r})"

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
        threading.Thread(
            target=_fulfil,
            args=(outcome, self._exchange, method, path, what, deadline, kwargs),
            name="imagetools-http",
            daemon=True,
        ).start()
        try:
            return outcome.result(timeout=timeout)
        except TimeoutError:
            raise httpx.ReadTimeout("no complete answer before the deadline") from None

    def _exchange(self, method: str, path: str, what: str, deadline: float, kwargs: dict[str, Any]) -> Reply:
        """Send and read the whole body, at most MAX_BODY bytes (in the helper thread of _attempt)."""
        with self._http.stream(method, path, **kwargs) as resp:
            head = Reply(resp.status_code, resp.headers, b"", resp.request)  # for error messages
            declared = resp.headers.get("Content-Length", "")
            if re.fullmatch(r"[0-9]{1,30}", declared) and int(declared) > MAX_BODY:
                raise bad_response(head, what, f"it announces more than {size_text(MAX_BODY)}; not reading it")
            body = bytearray()
            try:
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise bad_response(head, what, f"it is larger than {size_text(MAX_BODY)}; not reading it")
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("the answer did not end in time", request=resp.request)
            except httpx.DecodingError:
                raise bad_response(head, what, "its body does not decode as its Content-Encoding says") from None
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
            return (
                f"TLS certificate of {self.url} not trusted ({reason}); use --ca-cert FILE for a private CA "
                f"(--insecure skips the check, test setups only)"
            )
        if tls.reason in PLAIN_HTTP_REASONS:
            return f"TLS handshake with {self.url} failed ({reason}): the server speaks plain http: use an http:// URL"
        return f"TLS handshake with {self.url} failed ({reason}); check the URL's port and the server's TLS setup"

    def _reason(self, exc: BaseException) -> str:
        """The transport error on one line, the token blanked out should the message quote it."""
        if isinstance(exc, httpx.TimeoutException):
            return f"timed out after {self.settings.timeout:g} s ({type(exc).__name__})"
        text = str(exc) or type(exc).__name__
        if self.settings.token:
            text = text.replace(self.settings.token.strip(), "<hidden>")
        return one_line(text, 200)

    def _auth_error(self, reply: Reply, what: str) -> AuthError:
        err = server_error(reply, what)
        source = self.settings.token_source or "the token"
        hint = (
            f"log in again (imagetools login), or check {TOKEN_ENV} / --token-file"
            if reply.status_code == 401
            else "the user or token lacks the permission for this"
        )
        return AuthError(f"{err}; credentials from {source} were refused: {hint}", err.status, err.request_id)

    def paged(
        self, path: str, params: dict[str, Any], what: str, problem: Callable[[Any], str | None]
    ) -> Iterator[dict]:
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
                raise bad_response(reply, what, f"expected a JSON list, got {kind(reply.data)}")
            yield from [checked(reply, what, item, problem) for item in reply.data]
            link = next_link(reply.headers.get("Link"))
            if not reply.data or not link:
                return
            if number >= self.settings.max_pages:
                raise bad_response(reply, what, f"more than {number} pages; the list does not end")
            query = self._next_query(reply, what, link)
            if _query_key(query) in seen:
                raise bad_response(
                    reply,
                    what,
                    f"the next-page link leads back to a page already read "
                    f"({one_line(_query_key(query), 80)}); the list would never end",
                )
            seen.add(_query_key(query))

    def _next_query(self, reply: Reply, what: str, link: str) -> dict[str, str]:
        """The query of a next-page link, which must point to our own scheme and host (or be relative)."""
        ours = urlsplit(self.url)
        try:
            parts = urlsplit(link)
            scheme = parts.scheme.lower() or ours.scheme
            origin = (parts.hostname, parts.port or _default_port(scheme)) if parts.netloc else None
        except ValueError:
            raise bad_response(reply, what, f"next-page link {reply.quote(link, 80)!r} is not a URL") from None
        if scheme != ours.scheme or origin not in (None, (ours.hostname, ours.port or _default_port(scheme))):
            raise bad_response(
                reply,
                what,
                f"next-page link points to {reply.quote(link, 80)!r}, not to {self.url}; not sending the token there",
            )
        return dict(parse_qsl(parts.query))


def checked(reply: Reply, what: str, item: Any, problem: Callable[[Any], str | None]) -> Any:
    """``item`` if ``problem`` finds nothing wrong with it, else a BadResponse saying what."""
    found = problem(item)
    if found:
        raise bad_response(reply, what, found)
    return item


def kind(value: Any) -> str:
    """'a string', 'an object', ... for messages about the server's JSON; 'no JSON at all'."""
    return "no JSON at all" if value is NOT_JSON else json_type(value, article=True)


def next_link(value: str | None) -> str | None:
    """The target of the rel="next" entry of a Link header (RFC 8288), or None."""
    for target, params in re.findall(r"<([^>]*)>([^<]*)", value or ""):
        rel = re.search(r';\s*rel\s*=\s*(?:"([^"]*)"|([^\s;,]+))', params, re.I)
        if rel and "next" in (rel.group(1) or rel.group(2) or "").lower().split():
            return target.strip() or None
    return None


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
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def server_error(reply: Reply, what: str) -> ServerError:
    """A ServerError quoting the server's 'error' and 'request_id', on one printable line."""
    return ServerError(f"{what}: {_answer_text(reply)}", reply.status_code, reply.request_id)


def _answer_text(reply: Reply) -> str:
    """'HTTP 503: service unavailable (request_id ...)': an error answer on one printable line."""
    body = reply.data
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        detail = body["error"]
    elif body is NOT_JSON:
        detail = reply.content[:4096].decode("utf-8", "replace")  # e.g. a proxy's HTML error page
    else:
        detail = ""
    if reply.is_redirect:
        detail = f"redirected to {reply.headers['Location']}; pass that server URL instead"
    detail, rid = reply.quote(detail), reply.request_id
    return f"HTTP {reply.status_code}" + (f": {detail}" if detail else "") + (f" (request_id {rid})" if rid else "")


def bad_response(reply: Reply, what: str, problem: str) -> BadResponse:
    rid = reply.request_id
    return BadResponse(
        f"{what}: unexpected answer from the Mender Server (HTTP {reply.status_code}): "
        f"{problem}" + (f" (request_id {rid})" if rid else ""),
        reply.status_code,
        rid,
    )


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
