"""The station's live dashboard: one page and a stream of board snapshots, read-only.

A thin front end over the `Board` the station service writes: `GET /` is the page (one file
shipped in the package, no asset from the internet), `GET /api/state` the snapshot as JSON and
`GET /api/events` the same snapshots as server-sent events, pushed when the board changes and
every couple of seconds for the ledger's counts (other stations change those). Nothing here can
change the board or the ledger: every method but GET and HEAD is refused. Starlette and uvicorn
are a small, well-kept ASGI stack that does server-sent events without a framework on the page.

Beyond loopback every request needs the token; without a token the Host header must name a
loopback address too, so a web page elsewhere cannot read the dashboard by DNS rebinding. The
token is compared in constant time and never logged (uvicorn's logs are off).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import re
import socket
import threading
import time
from importlib import resources
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import EnvironmentProblem, UsageError, from_oserror
from .events import Board

POLL = 0.2  # seconds between looks at the board's version, per stream
COUNTS_EVERY = 2.0  # a snapshot is taken again this often even if the board did not change
HEARTBEAT = 15.0  # a comment line on an idle stream, so proxies and browsers keep it
MAX_STREAMS = 16  # open event streams (pages) at once
MAX_CONNECTIONS = 64  # uvicorn answers 503 beyond this
START_SECONDS = 10.0
STOP_SECONDS = 5.0
RETRY_MS = 2000  # what the page's EventSource waits before reconnecting
TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,256}")  # URL-safe, so ?token= needs no escaping
METHODS = ("GET", "HEAD")
SILENT = logging.CRITICAL + 1


def _page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy: its one inline script and style allowed by hash."""
    text = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    def digest(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S)
        if len(found) != 1:
            raise RuntimeError(f"page.html must hold exactly one <{tag}> element")
        return "'sha256-" + base64.b64encode(hashlib.sha256(found[0].encode()).digest()).decode() + "'"

    csp = (
        f"default-src 'self'; script-src {digest('script')}; style-src {digest('style')}; "
        "img-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return text.encode("utf-8"), csp


PAGE, CSP = _page()
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class WebServer:
    """A running dashboard; `stop()` ends it (and its open streams) within a few seconds."""

    def __init__(
        self, server: uvicorn.Server, thread: threading.Thread, stopping: threading.Event, host: str, port: int
    ) -> None:
        self._server, self._thread, self._stopping = server, thread, stopping
        self.host, self.port = host, port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def stop(self) -> None:
        self._stopping.set()
        self._server.should_exit = True
        self._thread.join(STOP_SECONDS)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(STOP_SECONDS / 2)

    def __enter__(self) -> WebServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_board(
    board: Board, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None, heartbeat: float = HEARTBEAT
) -> WebServer:
    """Serve BOARD's dashboard from a background thread; port 0 takes a free port."""
    if token is not None and not TOKEN.fullmatch(token):
        raise UsageError("the dashboard token must be 16 to 256 characters of A-Z a-z 0-9 . _ ~ -")
    if not 0 <= port <= 65535:
        raise UsageError(f"dashboard port {port} is not between 0 and 65535")
    family, address = _resolve(host, port)
    if token is None and not ipaddress.ip_address(address[0]).is_loopback:
        raise UsageError(
            f"the dashboard on {host} would be reachable from the network: give it a token or bind it to 127.0.0.1"
        )
    sock = _listen(family, address, host)
    stopping = threading.Event()
    config = uvicorn.Config(
        _app(board, token, stopping, heartbeat),
        http="h11",
        ws="none",
        lifespan="off",
        log_config=None,
        log_level=SILENT,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=int(STOP_SECONDS / 2),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=_run, args=(server, sock), name="imagetools-dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_SECONDS
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        web = WebServer(server, thread, stopping, host, sock.getsockname()[1])
        web.stop()
        sock.close()
        raise EnvironmentProblem(f"the dashboard did not start on {host}:{port} within {START_SECONDS:.0f} s")
    return WebServer(server, thread, stopping, host, sock.getsockname()[1])


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"cannot use {host!r} as the dashboard's address: {exc}") from None
    family, _, _, _, address = found[0]
    return family, address


def _listen(family: socket.AddressFamily, address: tuple[Any, ...], host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise from_oserror(
            exc, f"cannot listen on {host} port {address[1]} for the dashboard", EnvironmentProblem
        ) from None
    return sock


def _run(server: uvicorn.Server, sock: socket.socket) -> None:
    asyncio.run(server.serve(sockets=[sock]))


def _app(board: Board, token: str | None, stopping: threading.Event, heartbeat: float) -> ASGIApp:
    feed = _Feed(board)

    async def page(request: Request) -> Response:
        return Response(PAGE, media_type="text/html; charset=utf-8")

    async def state(request: Request) -> Response:
        return Response(await feed.current(), media_type="application/json")

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/api/state", state, methods=["GET"]),
        Route("/api/events", _Stream(feed, stopping, heartbeat), methods=["GET"]),
    ]
    return _Guard(Starlette(routes=routes), token)


class _Guard:
    """Before any route: GET/HEAD only, the token (or a loopback Host), security headers on all."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self._app = app
        self._token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        secured = _with_headers(send)
        refusal = self._refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, secured)
            return
        await self._app(scope, receive, secured)

    def _refusal(self, request: Request) -> Response | None:
        if request.method not in METHODS:
            return PlainTextResponse(
                "the dashboard is read-only: only GET is answered", 405, headers={"Allow": ", ".join(METHODS)}
            )
        if self._token is None:
            if not _loopback_host(request.headers.get("host", "")):
                return PlainTextResponse("open the dashboard as http://127.0.0.1:PORT/", 403)
            return None
        if not hmac.compare_digest(_given_token(request), self._token):
            return PlainTextResponse(
                "this dashboard needs its token: open it as /?token=TOKEN", 401, headers={"WWW-Authenticate": "Bearer"}
            )
        return None


def _given_token(request: Request) -> bytes:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    given = value.strip() if scheme.lower() == "bearer" else request.query_params.get("token", "")
    return given.encode("utf-8", "replace")


def _loopback_host(header: str) -> bool:
    """Whether a Host header names a loopback address (with or without a port)."""
    name = header.rsplit("]", 1)[0].lstrip("[") if header.startswith("[") else header.rsplit(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _with_headers(send: Send) -> Send:
    async def secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
        await send(message)

    return secured


class _Feed:
    """One snapshot shared by every reader, taken again when the board changes (at most once per
    POLL for each stream) or when it is COUNTS_EVERY seconds old; the ledger is asked in a thread."""

    def __init__(self, board: Board) -> None:
        self._board = board
        self._lock = asyncio.Lock()
        self._version = -1
        self._taken = 0.0
        self._body = b""

    async def current(self) -> bytes:
        async with self._lock:
            now = time.monotonic()
            if self._board.version != self._version or now - self._taken >= COUNTS_EVERY:
                self._version, self._body = await anyio.to_thread.run_sync(self._take)
                self._taken = now
            return self._body

    def _take(self) -> tuple[int, bytes]:
        snapshot = self._board.snapshot()
        return snapshot["version"], json.dumps(_finite(snapshot), default=str).encode()


def _finite(value: Any) -> Any:
    """JSON that a browser parses: NaN and infinities (a rate over no time) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class _Stream:
    """GET /api/events: the snapshot on connect and on each change, a heartbeat when idle."""

    def __init__(self, feed: _Feed, stopping: threading.Event, heartbeat: float) -> None:
        self._feed, self._stopping, self._heartbeat = feed, stopping, heartbeat
        self._open = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._open >= MAX_STREAMS:
            busy = PlainTextResponse(
                f"{MAX_STREAMS} dashboard pages are open already; close one and reload",
                503,
                headers={"Retry-After": "10"},
            )
            await busy(scope, receive, send)
            return
        self._open += 1
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"x-accel-buffering", b"no")],
                }
            )
            if scope["method"] == "HEAD":
                await send({"type": "http.response.body", "body": b""})
                return
            async with anyio.create_task_group() as group:
                group.start_soon(_until_disconnect, receive, group.cancel_scope)
                await self._pump(send)
                group.cancel_scope.cancel()
        finally:
            self._open -= 1

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.body", "body": f"retry: {RETRY_MS}\n\n".encode(), "more_body": True})
        sent, quiet_since = b"", time.monotonic()
        while not self._stopping.is_set():
            body = await self._feed.current()
            if body != sent:
                await send({"type": "http.response.body", "body": b"data: " + body + b"\n\n", "more_body": True})
                sent, quiet_since = body, time.monotonic()
            elif time.monotonic() - quiet_since >= self._heartbeat:
                await send({"type": "http.response.body", "body": b": heartbeat\n\n", "more_body": True})
                quiet_since = time.monotonic()
            await anyio.sleep(POLL)
        await send({"type": "http.response.body", "body": b""})


async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        continue
    scope.cancel()
