#!/usr/bin/env -S sh -c 'exec "$(dirname "$0")/../../.venv/bin/python" "$0" "$@"'
"""A small Mender Server for tests and for trying imagetools without a server: deviceauth v2,
useradm login, legacy admission v1.

It follows the OpenAPI documents in shared/reference/mender-api (and
fixtures/mender-api/admission_v1.yaml for the legacy API): every request and every response is
validated with openapi-core, and each violation is recorded in `violations` — the `mender`
fixtures fail the test when it is not empty (run as a program, each one is printed on stderr).

Answers the real gateway gives but the service specs do not list (401 from the auth check, 429
from the rate limiter, 503) are checked against the common Error schema instead.

Behaviour modelled on deviceauth: preauthorize → 201 + Location; same identity again → 409 whose
body is the existing Device; PKCS#1 or unparsable keys → 400; identities matched after key sorting,
value types included; paging with per_page ≤ 500 and a Link header (first/next/prev); DELETE of an
auth set → 204 (the device goes too when it was preauthorized with that one set), DELETE of a
device (decommission) → 204, 404 for either when it is not there.
Faults: `fail_next(status, count, retry_after)` answers the next requests with 429/5xx.

As a program (see --help) it serves on 127.0.0.1 until SIGINT or SIGTERM. The first line of the
file finds the checkout's .venv (the server needs openapi-core and friends), so both
`tests/support/mender_server.py` and `.venv/bin/python tests/support/mender_server.py` work.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shlex
import signal
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jsonschema
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from openapi_core import Config, OpenAPI
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.request.exceptions import SecurityValidationError

ROOT = Path(__file__).resolve().parents[2]
SPECS_ENV = "MENDER_API_SPECS"
LEGACY_SPEC = ROOT / "fixtures" / "mender-api" / "admission_v1.yaml"
TEST_TOKEN = "test-pat"  # the Personal Access Token the server accepts unless told otherwise

DEVICES = "/api/management/v2/devauth/devices"
ADMISSION = "/api/management/v1/admission/devices"
LOGIN = "/api/management/v1/useradm/auth/login"
GATEWAY_STATUSES = {401, 429, 502, 503, 504}
STAMP = "2026-11-22T03:00:00Z"

_CONFIG = Config(extra_media_type_deserializers={"application/jwt": lambda data: data.decode("ascii")})


class SpecsMissing(RuntimeError):
    """The OpenAPI documents are not where we looked: without them nothing can be validated."""


class StateError(ValueError):
    """A --state file that is not one this server wrote."""


def default_reference() -> Path:
    """$MENDER_API_SPECS, else shared/reference/mender-api beside the repository checkout."""
    return Path(os.environ.get(SPECS_ENV) or ROOT.parent / "shared" / "reference" / "mender-api")


class Specs:
    """The OpenAPI documents traffic is validated against, each parsed on first use (openapi-core
    takes a while per document, so servers share one Specs: see default_specs)."""

    def __init__(self, reference: Path):
        if not (reference / "deviceauth" / "management_v2.yaml").is_file():
            raise SpecsMissing(
                f"Mender OpenAPI specs not found at {reference}: put shared/ beside the "
                f"repository, set {SPECS_ENV} or pass --specs DIR"
            )
        self.reference = reference
        self._files = {
            "/api/management/v2/devauth/": reference / "deviceauth" / "management_v2.yaml",
            "/api/management/v1/useradm/": reference / "useradm" / "management_v1.yaml",
            "/api/management/v1/admission/": LEGACY_SPEC,
        }
        schemas = yaml.safe_load((reference / "common" / "schemas.yaml").read_text())
        self.error_schema = schemas["components"]["schemas"]["Error"]
        self._loaded: dict[str, OpenAPI] = {}
        self._lock = threading.Lock()

    def for_path(self, path: str) -> OpenAPI | None:
        for prefix, file in self._files.items():
            if path.startswith(prefix):
                with self._lock:
                    if prefix not in self._loaded:
                        self._loaded[prefix] = OpenAPI.from_file_path(str(file), config=_CONFIG)
                return self._loaded[prefix]
        return None


_default_specs: list[Specs] = []


def default_specs() -> Specs:
    """The documents at default_reference(), parsed once per process."""
    if not _default_specs:
        _default_specs.append(Specs(default_reference()))
    return _default_specs[0]


def make_jwt(subject: str, lifetime: int = 3600) -> str:
    """A JWT-shaped token (unsigned: our server only compares it)."""

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"sub": subject, "exp": int(time.time()) + lifetime, "jti": uuid.uuid4().hex, "scp": "mender.*"}
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{uuid.uuid4().hex}"


@dataclass
class Reply:
    status: int
    body: Any = None  # JSON-serializable, str (raw text) or None
    headers: dict[str, str] | None = None
    content_type: str = "application/json"


class MenderTestServer:
    """The server on 127.0.0.1:``port`` (0: a free one), accepting ``token`` as a Personal Access
    Token. With ``state``, devices are loaded from that JSON file and saved to it after each
    request that changes them and on exit. ``on_violation`` hears of each spec violation."""

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        tls: tuple[str, str] | None = None,
        port: int = 0,
        token: str = TEST_TOKEN,
        specs: Specs | None = None,
        state: Path | None = None,
        on_violation: Callable[[str], None] | None = None,
    ):
        self.specs = specs or default_specs()
        self.users = users or {"admin@example.com": "correct horse"}
        self.tokens: set[str] = {token}
        self.devices: dict[str, dict] = {}  # id → Device (deviceauth v2 shape)
        self.admission: list[dict] = []  # legacy auth sets
        self.violations: list[str] = []
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self.login_headers: list[str] = []
        self.state = state
        self.on_violation = on_violation
        self._faults: deque[tuple[int, float | None, str]] = deque()
        self._stalls: deque[float] = deque()
        self._lock = threading.RLock()
        if state is not None and state.exists():
            self.devices, self.admission = _load_state(state)
        self._httpd = _QuietServer(("127.0.0.1", port), _handler_for(self))
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> MenderTestServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self.save()

    def save(self) -> None:
        """Write the devices to the state file (if any), whole or not at all."""
        if self.state is None:
            return
        with self._lock:
            text = json.dumps({"devices": list(self.devices.values()), "admission": self.admission}, indent=1)
            partial = self.state.with_name(self.state.name + ".partial")
            partial.write_text(text + "\n")
            os.replace(partial, self.state)

    # --- test controls ---

    def fail_next(self, status: int, count: int = 1, retry_after: float | None = None, prefix: str = "/") -> None:
        """Answer the next `count` requests under `prefix` with `status` (429/5xx)."""
        with self._lock:
            self._faults.extend([(status, retry_after, prefix)] * count)

    def stall_next(self, seconds: float, count: int = 1) -> None:
        """Answer the next `count` requests only after `seconds` (to trigger client timeouts)."""
        with self._lock:
            self._stalls.extend([seconds] * count)

    def seed_device(self, identity: dict, pubkey_pem: str, status: str = "preauthorized") -> str:
        """Put a device on the server directly (fast set-up for big lists)."""
        with self._lock:
            device_id = uuid.uuid4().hex[:24]
            self.devices[device_id] = {
                "id": device_id,
                "identity_data": identity,
                "created_ts": STAMP,
                "updated_ts": STAMP,
                "decommissioning": False,
                "auth_sets": [],
            }
            self.add_auth_set(device_id, pubkey_pem, status)
            return device_id

    def add_auth_set(self, device_id: str, pubkey_pem: str, status: str = "pending") -> None:
        """What the server records when a device connects with this key (or is preauthorized)."""
        with self._lock:
            device = self.devices[device_id]
            device["auth_sets"].append(
                {
                    "id": str(uuid.uuid4()),
                    "device_id": device_id,
                    "identity_data": device["identity_data"],
                    "pubkey": pubkey_pem,
                    "status": status,
                    "ts": STAMP,
                }
            )
            _refresh_status(device)

    def take_violations(self) -> list[str]:
        with self._lock:
            found, self.violations = self.violations, []
            return found

    def requests_to(self, method: str, path: str) -> list[int]:
        return [status for m, p, status in self.log if m == method and p == path]

    # --- request handling (called from handler threads) ---

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Reply:
        with self._lock:
            stall = self._stalls.popleft() if self._stalls else 0
        time.sleep(stall)
        parts = urlsplit(raw_path)
        path, query = parts.path, parse_qsl(parts.query)
        spec = self.specs.for_path(path)
        request = MockRequest(
            self.url,
            method.lower(),
            path,
            args=query,
            headers=headers,
            data=body,
            content_type=headers.get("Content-Type"),
        )
        reply = self._route(method, path, dict(query), headers, body, spec, request)
        reply.headers = {**(reply.headers or {}), "X-MEN-RequestID": str(uuid.uuid4())}
        if isinstance(reply.body, dict) and "error" in reply.body:
            reply.body.setdefault("request_id", reply.headers["X-MEN-RequestID"])
        if spec is not None:
            self._check_response(spec, request, reply, f"{method} {path}")
        with self._lock:
            self.log.append((method, path, reply.status))
        if method != "GET" and reply.status < 300:
            self.save()
        return reply

    def _route(
        self,
        method: str,
        path: str,
        query: dict,
        headers: dict,
        body: bytes,
        spec: OpenAPI | None,
        request: MockRequest,
    ) -> Reply:
        if spec is None:
            self._violation(f"{method} {path}: no such path in the Mender API documents")
            return _error(404, "not found")
        try:
            spec.validate_request(request)
        except SecurityValidationError as exc:
            self._violation(f"{method} {path}: {exc}")
            return _error(401, "authorization header missing")
        except Exception as exc:  # noqa: BLE001 — any validation failure is a spec violation
            self._violation(f"{method} {path}: request violates the spec: {exc}")
            return _error(400, f"invalid request: {exc}")
        fault = self._take_fault(path)
        if fault:
            return fault
        if path == LOGIN:
            return self._login(headers)
        if headers.get("Authorization", "").removeprefix("Bearer ") not in self.tokens:
            return _error(401, "unauthorized")
        data = json.loads(body) if body else None
        with self._lock:
            if path == DEVICES and method == "POST":
                return self._preauthorize(data)
            if path == DEVICES and method == "GET":
                items = [d for d in self.devices.values() if query.get("status") in (None, d["status"])]
                return _page(items, query, path)
            if path.startswith(DEVICES + "/") and method == "GET":
                device = self.devices.get(path.rsplit("/", 1)[1])
                return Reply(200, device) if device else _error(404, "device not found")
            if path.startswith(DEVICES + "/") and method == "DELETE":
                return self._delete(path.removeprefix(DEVICES + "/").split("/"))
            if path == ADMISSION and method == "POST":
                return self._admit(data)
            if path == ADMISSION and method == "GET":
                return _page(self.admission, query, path)
        return _error(404, "not found")

    def _take_fault(self, path: str) -> Reply | None:
        with self._lock:
            if not self._faults or not path.startswith(self._faults[0][2]):
                return None
            status, retry_after, _ = self._faults.popleft()
        headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else {}
        return _error(status, "too many requests" if status == 429 else "service unavailable", headers)

    def _login(self, headers: dict) -> Reply:
        self.login_headers.append(headers.get("Authorization", ""))
        try:
            user, _, password = base64.b64decode(headers["Authorization"].split(" ", 1)[1]).decode().partition(":")
        except (KeyError, IndexError, ValueError):
            return _error(401, "unauthorized")
        if self.users.get(user) != password:
            return _error(401, "unauthorized")
        token = make_jwt(user)
        self.tokens.add(token)
        return Reply(200, token, content_type="application/jwt")

    def _preauthorize(self, data: dict) -> Reply:
        identity = data["identity_data"]
        if not identity:
            return _error(400, "identity_data: cannot be blank")
        pem, problem = _reserialize(data["pubkey"])
        if problem:
            return _error(400, f"failed to decode preauth request: {problem}")
        canon = _canon(identity)
        device = next((d for d in self.devices.values() if _canon(d["identity_data"]) == canon), None)
        if device and not data.get("force"):
            return Reply(409, device)
        if device:
            device["auth_sets"] = [s for s in device["auth_sets"] if _der(s["pubkey"]) == _der(pem)]
            for auth_set in device["auth_sets"]:
                auth_set["status"] = "preauthorized"
            if not device["auth_sets"]:
                self.add_auth_set(device["id"], pem, "preauthorized")
            _refresh_status(device)
            device_id = device["id"]
        else:
            device_id = self.seed_device(identity, pem, "preauthorized")
        return Reply(201, None, {"Location": f"{DEVICES}/{device_id}"})

    def _delete(self, parts: list[str]) -> Reply:
        """DELETE devices/{id} (decommission) or devices/{id}/auth/{aid}, as deviceauth does it."""
        device = self.devices.get(parts[0])
        if device is None:
            return _error(404, "device not found")
        if len(parts) == 1:
            del self.devices[parts[0]]
            return Reply(204)
        found = [s for s in device["auth_sets"] if s["id"] == parts[2]] if parts[1:] == ["auth", parts[-1]] else []
        if not found:
            return _error(404, "authentication set not found")
        if len(device["auth_sets"]) == 1 and device["status"] == "preauthorized":
            del self.devices[parts[0]]
        else:
            device["auth_sets"].remove(found[0])
            _refresh_status(device)
        return Reply(204)

    def _admit(self, data: dict) -> Reply:
        try:
            identity = json.loads(data["device_identity"])
            assert isinstance(identity, dict) and identity
        except (ValueError, AssertionError):
            return _error(400, "device_identity: must be a JSON object encoded as a string")
        pem, problem = _reserialize(data["key"])
        if problem:
            return _error(400, f"failed to decode key: {problem}")
        if any(_canon(json.loads(s["device_identity"])) == _canon(identity) for s in self.admission):
            return _error(409, "device already exists")
        auth_id = hashlib.sha256((data["device_identity"] + pem).encode()).hexdigest()
        self.admission.append(
            {
                "id": auth_id,
                "device_id": uuid.uuid4().hex[:24],
                "device_identity": data["device_identity"],
                "key": pem,
                "status": "preauthorized",
                "attributes": identity,
                "request_time": STAMP,
            }
        )
        return Reply(201, None, {"Location": f"{ADMISSION}/{auth_id}"})

    # --- spec checks ---

    def _check_response(self, spec: OpenAPI, request: MockRequest, reply: Reply, what: str) -> None:
        payload = _encode(reply)
        response = MockResponse(payload, reply.status, headers=reply.headers, content_type=reply.content_type)
        try:
            spec.validate_response(request, response)
        except ResponseNotFound:
            if reply.status not in GATEWAY_STATUSES:
                self._violation(f"{what}: answer {reply.status} is not in the spec")
                return
            try:
                jsonschema.validate(reply.body, self.specs.error_schema)
            except jsonschema.ValidationError as exc:
                self._violation(f"{what}: {reply.status} body is not an Error: {exc.message}")
        except Exception as exc:  # noqa: BLE001
            self._violation(f"{what}: response {reply.status} violates the spec: {exc}")

    def _violation(self, message: str) -> None:
        with self._lock:
            self.violations.append(message)
        if self.on_violation:
            self.on_violation(message)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is part of the tests


def _handler_for(server: MenderTestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            reply = server.handle(self.command, self.path, dict(self.headers.items()), body)
            payload = _encode(reply)
            self.send_response(reply.status)
            for name, value in (reply.headers or {}).items():
                self.send_header(name, value)
            if payload:
                self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def _page(items: list[dict], query: dict, path: str) -> Reply:
    page, per_page = int(query.get("page", 1)), int(query.get("per_page", 20))
    if page < 1 or per_page < 1:
        return _error(400, "invalid page or per_page")
    chunk = items[(page - 1) * per_page : page * per_page]
    extra = {k: v for k, v in query.items() if k not in ("page", "per_page")}

    def link(p: int, rel: str) -> str:
        return f'<{path}?{urlencode({**extra, "page": p, "per_page": per_page})}>; rel="{rel}"'

    links = [link(1, "first")]
    if page > 1:
        links.append(link(page - 1, "prev"))
    if page * per_page < len(items):
        links.append(link(page + 1, "next"))
    return Reply(200, chunk, {"Link": ", ".join(links)})


def _refresh_status(device: dict) -> None:
    statuses = {s["status"] for s in device["auth_sets"]}
    device["status"] = next(
        (s for s in ("accepted", "pending", "preauthorized", "rejected") if s in statuses), "noauth"
    )


def _reserialize(pem: str) -> tuple[str, str]:
    """The server stores the key in its own serialization; refuses PKCS#1 and unsupported keys."""
    if "BEGIN RSA PUBLIC KEY" in pem:
        return "", "PKCS#1 RSA public key: only PKIX/SPKI 'PUBLIC KEY' is supported"
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        return "", "cannot parse public key"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name != "secp256r1":
        return "", f"unsupported ECDSA curve {key.curve.name}; only P-256"
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(), ""


def _der(pem: str) -> bytes:
    key = serialization.load_pem_public_key(pem.encode())
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _canon(identity: dict) -> str:
    return json.dumps(identity, sort_keys=True, separators=(",", ":"))


def _error(status: int, message: str, headers: dict | None = None) -> Reply:
    return Reply(status, {"error": message}, headers)


def _encode(reply: Reply) -> bytes:
    if reply.body is None:
        return b""
    if isinstance(reply.body, str):
        return reply.body.encode()
    return json.dumps(reply.body).encode()


def _load_state(path: Path) -> tuple[dict[str, dict], list[dict]]:
    """Devices and admission sets from a --state file this server wrote (StateError otherwise)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read state file {path}: {exc}") from None
    devices = data.get("devices") if isinstance(data, dict) else None
    admission = data.get("admission", []) if isinstance(data, dict) else None
    good_devices = isinstance(devices, list) and all(
        isinstance(d, dict) and isinstance(d.get("id"), str) and isinstance(d.get("auth_sets"), list) for d in devices
    )
    if not (good_devices and isinstance(admission, list) and all(isinstance(a, dict) for a in admission)):
        raise StateError(
            f'{path} is not a state file of this server (expected {{"devices": [...], "admission": [...]}})'
        )
    return {d["id"]: d for d in devices}, admission


# --- as a program ---------------------------------------------------------------------------------


class _Stopped(Exception):
    """Raised by the SIGINT/SIGTERM handler to leave the serving loop."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped


def _token(text: str) -> str:
    if not text or not all("!" <= c <= "~" for c in text):
        raise argparse.ArgumentTypeError("a token is printable ASCII without spaces")
    return text


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError("a port is a number from 0 to 65535")
    return int(text)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mender_server.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A local stand-in for the Mender Server: deviceauth v2 (preauthorize, list, get,\n"
        "remove an auth set, decommission), useradm login, legacy admission v1. Every request\n"
        "and answer is validated against the Mender OpenAPI documents; violations are printed\n"
        "on stderr. It listens on 127.0.0.1 only.",
        epilog=f"""It needs the checkout's virtualenv (openapi-core, PyYAML, jsonschema): run it as
  .venv/bin/python tests/support/mender_server.py [OPTIONS]
or directly as tests/support/mender_server.py (its first line finds ../../.venv).

At start it prints two lines on stdout, flushed, then serves until SIGINT (Ctrl-C) or SIGTERM
(exit 0; exit 2 when it cannot start):
  MENDER_SERVER_URL=http://127.0.0.1:PORT
  MENDER_TOKEN=TOKEN
so a shell can take them over, e.g.
  .venv/bin/python tests/support/mender_server.py --state devices.json > server.env &
  sleep 1; set -a; . ./server.env; set +a
  imagetools preauth push OUT/preauth.json

The token is a test token (default {TEST_TOKEN!r}), the only secret this tool prints; login also
works, as admin@example.com with password 'correct horse'.""",
    )
    parser.add_argument("--port", type=_port, default=0, help="port to listen on (default 0: a free one)")
    parser.add_argument(
        "--token", type=_token, default=TEST_TOKEN, help=f"the Personal Access Token to accept (default {TEST_TOKEN!r})"
    )
    parser.add_argument(
        "--specs",
        type=Path,
        default=default_reference(),
        metavar="DIR",
        help=f"the mender-api reference documents (default: ${SPECS_ENV}, else "
        f"../shared/reference/mender-api beside the checkout; here {default_reference()})",
    )
    parser.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="JSON file to load the devices from at start (if it exists) and save them to "
        "after each change and on exit, so a restarted server has the same devices",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        server = MenderTestServer(
            port=args.port,
            token=args.token,
            specs=Specs(args.specs),
            state=args.state,
            on_violation=lambda m: print(f"mender_server: spec violation: {m}", file=sys.stderr, flush=True),
        )
    except (SpecsMissing, StateError) as exc:
        print(f"mender_server: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mender_server: error: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    try:
        with server:
            print(f"MENDER_SERVER_URL={server.url}", flush=True)
            print(f"MENDER_TOKEN={shlex.quote(args.token)}", flush=True)
            kept = f"; devices kept in {args.state}" if args.state else ""
            print(f"mender_server: serving {server.url} until SIGINT or SIGTERM{kept}", file=sys.stderr, flush=True)
            while True:
                signal.pause()
    except _Stopped:
        return 0


if __name__ == "__main__":
    sys.exit(main())
