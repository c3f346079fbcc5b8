"""A small Mender Server for tests: deviceauth v2, useradm login, legacy admission v1.

It follows the OpenAPI documents in shared/reference/mender-api (and
fixtures/mender-api/admission_v1.yaml for the legacy API): every request and every response is
validated with openapi-core, and each violation is recorded in `violations` — the `mender`
fixtures fail the test when it is not empty.

Answers the real gateway gives but the service specs do not list (401 from the auth check, 429
from the rate limiter, 503) are checked against the common Error schema instead.

Behaviour modelled on deviceauth: preauthorize → 201 + Location; same identity again → 409 whose
body is the existing Device; PKCS#1 or unparsable keys → 400; identities matched after key sorting,
value types included; paging with per_page ≤ 500 and a Link header (first/next/prev).
Faults: `fail_next(status, count, retry_after)` answers the next requests with 429/5xx.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import threading
import time
import uuid
from collections import deque
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
# The Mender OpenAPI documents live in shared/ beside the repository checkout (override with
# MENDER_API_SPECS); without them the server cannot validate traffic, so that is an error.
REFERENCE = Path(os.environ.get("MENDER_API_SPECS")
                 or ROOT.parent / "shared" / "reference" / "mender-api")
if not (REFERENCE / "deviceauth" / "management_v2.yaml").is_file():
    raise RuntimeError(f"Mender OpenAPI specs not found at {REFERENCE}: put shared/ beside the "
                       "repository or set MENDER_API_SPECS")
LEGACY_SPEC = ROOT / "fixtures" / "mender-api" / "admission_v1.yaml"

DEVICES = "/api/management/v2/devauth/devices"
ADMISSION = "/api/management/v1/admission/devices"
LOGIN = "/api/management/v1/useradm/auth/login"
GATEWAY_STATUSES = {401, 429, 502, 503, 504}
STAMP = "2026-11-22T03:00:00Z"

_CONFIG = Config(extra_media_type_deserializers={"application/jwt": lambda data: data.decode("ascii")})
_SPECS = {
    "/api/management/v2/devauth/": REFERENCE / "deviceauth" / "management_v2.yaml",
    "/api/management/v1/useradm/": REFERENCE / "useradm" / "management_v1.yaml",
    "/api/management/v1/admission/": LEGACY_SPEC,
}
_loaded: dict[str, OpenAPI] = {}
_load_lock = threading.Lock()


def _spec_for(path: str) -> OpenAPI | None:
    for prefix, file in _SPECS.items():
        if path.startswith(prefix):
            with _load_lock:
                if prefix not in _loaded:
                    _loaded[prefix] = OpenAPI.from_file_path(str(file), config=_CONFIG)
            return _loaded[prefix]
    return None


_ERROR_SCHEMA = yaml.safe_load((REFERENCE / "common" / "schemas.yaml").read_text())["components"]["schemas"]["Error"]


def make_jwt(subject: str, lifetime: int = 3600) -> str:
    """A JWT-shaped token (unsigned: our server only compares it)."""
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    claims = {"sub": subject, "exp": int(time.time()) + lifetime, "jti": uuid.uuid4().hex, "scp": "mender.*"}
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{uuid.uuid4().hex}"


@dataclass
class Reply:
    status: int
    body: Any = None                  # JSON-serializable, str (raw text) or None
    headers: dict[str, str] | None = None
    content_type: str = "application/json"


class MenderTestServer:
    def __init__(self, *, users: dict[str, str] | None = None, tls: tuple[str, str] | None = None):
        self.users = users or {"admin@example.com": "correct horse"}
        self.tokens: set[str] = {"test-pat"}
        self.devices: dict[str, dict] = {}        # id → Device (deviceauth v2 shape)
        self.admission: list[dict] = []          # legacy auth sets
        self.violations: list[str] = []
        self.log: list[tuple[str, str, int]] = []   # (method, path, status)
        self.login_headers: list[str] = []
        self._faults: deque[tuple[int, float | None, str]] = deque()
        self._stalls: deque[float] = deque()
        self._lock = threading.RLock()
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "MenderTestServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

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
            self.devices[device_id] = {"id": device_id, "identity_data": identity, "created_ts": STAMP,
                                       "updated_ts": STAMP, "decommissioning": False, "auth_sets": []}
            self.add_auth_set(device_id, pubkey_pem, status)
            return device_id

    def add_auth_set(self, device_id: str, pubkey_pem: str, status: str = "pending") -> None:
        """What the server records when a device connects with this key (or is preauthorized)."""
        with self._lock:
            device = self.devices[device_id]
            device["auth_sets"].append({"id": str(uuid.uuid4()), "device_id": device_id,
                                        "identity_data": device["identity_data"], "pubkey": pubkey_pem,
                                        "status": status, "ts": STAMP})
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
        spec = _spec_for(path)
        request = MockRequest(self.url, method.lower(), path, args=query, headers=headers,
                              data=body, content_type=headers.get("Content-Type"))
        reply = self._route(method, path, dict(query), headers, body, spec, request)
        reply.headers = {**(reply.headers or {}), "X-MEN-RequestID": str(uuid.uuid4())}
        if isinstance(reply.body, dict) and "error" in reply.body:
            reply.body.setdefault("request_id", reply.headers["X-MEN-RequestID"])
        if spec is not None:
            self._check_response(spec, request, reply, f"{method} {path}")
        with self._lock:
            self.log.append((method, path, reply.status))
        return reply

    def _route(self, method: str, path: str, query: dict, headers: dict, body: bytes,
               spec: OpenAPI | None, request: MockRequest) -> Reply:
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
        self.admission.append({"id": auth_id, "device_id": uuid.uuid4().hex[:24],
                               "device_identity": data["device_identity"], "key": pem,
                               "status": "preauthorized", "attributes": identity, "request_time": STAMP})
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
                jsonschema.validate(reply.body, _ERROR_SCHEMA)
            except jsonschema.ValidationError as exc:
                self._violation(f"{what}: {reply.status} body is not an Error: {exc.message}")
        except Exception as exc:  # noqa: BLE001
            self._violation(f"{what}: response {reply.status} violates the spec: {exc}")

    def _violation(self, message: str) -> None:
        with self._lock:
            self.violations.append(message)


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
    chunk = items[(page - 1) * per_page: page * per_page]
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
    device["status"] = next((s for s in ("accepted", "pending", "preauthorized", "rejected") if s in statuses), "noauth")


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



def main() -> None:
    """Serve on 127.0.0.1 for scripts/demo: writes the URL to the file given, stops after the
    number of seconds given (default 600) or on SIGTERM. Accepts the token 'test-pat'."""
    import signal
    import sys

    url_file, lifetime = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 600.0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with MenderTestServer() as server:
        Path(url_file).write_text(server.url)
        time.sleep(lifetime)


if __name__ == "__main__":
    main()
