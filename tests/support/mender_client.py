"""The real Mender client (Debian's mender-client 3.x) started on files taken out of an image.

`AuthServer` stands in for the server's device API: it records every POST to
/api/devices/v1/authentication/auth_requests (the body: id_data, pubkey, tenant_token; `signed`
keeps the raw body with its X-MEN-Signature header) and answers
401, so the client gives up after one attempt. With `cert`/`key` it speaks HTTPS.

`run_client` runs `mender bootstrap` in a private mount namespace (`unshare -m`, root) laid out
like the device: /etc/mender holds the files copied out of the image, /var/lib/mender is a
private directory (the datastore: device key, store), and the identity script, which Debian
ships only as an example, is a fixed one. Nothing on the host is changed.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

AUTH_REQUESTS = "/api/devices/v1/authentication/auth_requests"
IDENTITY = "mac=02:00:00:00:00:42"


class AuthServer:
    """127.0.0.1 on a free port; `requests` holds the JSON bodies of the auth requests."""

    def __init__(self, cert: Path | None = None, key: Path | None = None):
        self.requests: list[dict[str, Any]] = []
        self.signed: list[tuple[bytes, str | None]] = []  # (raw body, its X-MEN-Signature header)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        if cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if cert is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        requests, signed = self.requests, self.signed

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == AUTH_REQUESTS:
                    requests.append(json.loads(body))
                    signed.append((body, self.headers.get("X-MEN-Signature")))
                self.send_response(401 if self.path == AUTH_REQUESTS else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> AuthServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


_SCRIPT = r"""
set -e
mount --bind "$1/etc" /etc/mender
mount --bind "$1/identity" /usr/share/mender/identity
mount -t tmpfs -o mode=0755 tmpfs /var/lib
mkdir -m 0755 /var/lib/mender
mount --bind "$1/datastore" /var/lib/mender
exec mender --no-syslog --log-level info bootstrap
"""


def unshare_works() -> str | None:
    """None if private mount namespaces can be made here, else why not (the error output)."""
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


def run_client(
    work: Path, etc_files: dict[str, bytes], key: bytes | None = None, timeout: float = 60
) -> tuple[str, Path]:
    """Run the client once with `etc_files` (name -> content) as /etc/mender and `key` (if any)
    as /var/lib/mender/mender-agent.pem; returns (its log, the datastore directory)."""
    mender = shutil.which("mender")
    assert mender, "mender (Debian package mender-client) is not installed: run scripts/bootstrap"
    for sub in ("etc", "identity", "datastore"):
        (work / sub).mkdir(mode=0o755, parents=True)
    for name, content in etc_files.items():
        (work / "etc" / name).write_bytes(content)
    script = work / "identity" / "mender-device-identity"
    script.write_text(f"#!/bin/sh\necho {IDENTITY}\n")
    script.chmod(0o755)
    if key is not None:
        (work / "datastore" / "mender-agent.pem").write_bytes(key)
        (work / "datastore" / "mender-agent.pem").chmod(0o600)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _SCRIPT, "sh", str(work)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return proc.stdout + proc.stderr, work / "datastore"
