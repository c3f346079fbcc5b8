"""tests/support/mender_server.py as a program (started as a subprocess, driven with the real
`imagetools` CLI), and the network messages: retries one line each, TLS failures at once."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from support.inputs import macs, write_preauth
from support.mender_server import MenderTestServer
from support.tools import ROOT

from imagetools.errors import ServerError
from imagetools.server import MenderClient, ServerSettings, deviceauth

SCRIPT = ROOT / "tests" / "support" / "mender_server.py"


@contextmanager
def running(*args: str, stop: int = signal.SIGTERM) -> Iterator[dict[str, str]]:
    """The server as a subprocess on a free port; yields the variables it printed. Stopping it
    with ``stop`` must end it with exit 0 and no spec violation on stderr."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(20, proc.kill)
    watchdog.start()
    try:
        printed = dict(proc.stdout.readline().rstrip("\n").split("=", 1) for _ in range(2))
        watchdog.cancel()
        yield printed
    finally:
        watchdog.cancel()
        proc.send_signal(stop)
        code = proc.wait(timeout=10)
        errors = proc.stderr.read()
        proc.stdout.close(), proc.stderr.close()
    assert code == 0, errors
    assert "spec violation" not in errors, errors


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the server as a tool ----------------------------------------------------------------------------


def test_help_runs_from_its_own_first_line_and_exits_at_once():
    start = time.monotonic()
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 5
    for words in (
        "--port",
        "--token",
        "--specs",
        "--state",
        ".venv/bin/python tests/support/mender_server.py",
        "MENDER_SERVER_URL=http://127.0.0.1:PORT",
    ):
        assert words in result.stdout


def test_push_status_remove_round_trip_with_the_real_cli(cli, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0, 1))
    with running() as env:
        assert re.fullmatch(r"http://127\.0\.0\.1:[0-9]+", env["MENDER_SERVER_URL"])
        assert env["MENDER_TOKEN"] == "test-pat"
        pushed = cli("preauth", "push", "preauth.json", env=env)
        assert pushed.returncode == 0, pushed.stderr
        assert cli("preauth", "status", "preauth.json", env=env).returncode == 0
        removed = cli("preauth", "remove", "preauth.json", env=env)
        assert removed.returncode == 0 and "2 removed" in removed.stdout, removed.stderr
        gone = cli("preauth", "status", "preauth.json", "--json", env=env)
        assert gone.returncode == 1
        assert [u["status"] for u in json.loads(gone.stdout)["items"]] == ["missing", "missing"]


def test_state_survives_a_restart(cli, tmp_path):
    entries = write_preauth(tmp_path / "preauth.json", macs(0, 1))
    state = tmp_path / "devices.json"
    with running("--state", str(state), stop=signal.SIGINT) as env:
        assert cli("preauth", "push", "preauth.json", env=env).returncode == 0
    assert len(json.loads(state.read_text())["devices"]) == 2
    with running("--state", str(state)) as env:
        assert cli("preauth", "status", "preauth.json", env=env).returncode == 0
        again = cli("preauth", "push", "preauth.json", env=env)
        assert "0 preauthorized, 2 already" in again.stdout, again.stderr
        one = json.dumps(entries[0]["identity_data"])
        assert cli("preauth", "remove", "--identity", one, env=env).returncode == 0
    [left] = json.loads(state.read_text())["devices"]
    assert left["identity_data"] == entries[1]["identity_data"]


def test_token_and_refusals_to_start(cli, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0))
    with running("--token", "s3cr3t-for-tests") as env:
        assert env["MENDER_TOKEN"] == "s3cr3t-for-tests"
        wrong = cli("preauth", "status", "preauth.json", env={**env, "MENDER_TOKEN": "test-pat"})
        assert wrong.returncode == 4 and "HTTP 401" in wrong.stderr
    (tmp_path / "bad.json").write_text('{"devices": 3}')
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    with busy:
        refusals = {
            "specs not found": ["--specs", str(tmp_path)],
            "not a state file": ["--state", str(tmp_path / "bad.json")],
            "cannot listen": ["--port", str(busy.getsockname()[1])],
            "a port is a number": ["--port", "70000"],
        }
        started = {
            found: subprocess.Popen(
                [sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for found, args in refusals.items()
        }
        for found, proc in started.items():
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == 2 and found in err and out == "", (found, err)


# --- network messages ----------------------------------------------------------------------------------

SLOW_RETRIES = ("--retries", "4", "--backoff", "0.5")  # 7.5 s of waiting, were anything retried


def test_an_untrusted_certificate_fails_at_once_with_the_hint(cli, tls_files, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0))
    with MenderTestServer(tls=tls_files) as srv:
        env = {"MENDER_SERVER_URL": srv.url, "MENDER_TOKEN": "test-pat"}
        start = time.monotonic()
        refused = cli("preauth", "status", "preauth.json", *SLOW_RETRIES, env=env)
        assert time.monotonic() - start < 3  # the CLI's start-up; no retry waits
        assert refused.returncode == 4 and refused.stderr.count("\n") == 1, refused.stderr
        assert "not trusted" in refused.stderr and "use --ca-cert FILE for a private CA" in refused.stderr
        settings = ServerSettings(srv.url, token="test-pat", retries=4, backoff=0.5)
        start = time.monotonic()
        with MenderClient(settings) as client, pytest.raises(ServerError, match="--ca-cert FILE"):
            deviceauth.get_device(client, "x")
        assert time.monotonic() - start < 0.5
        trusted = cli("preauth", "push", "preauth.json", "--ca-cert", tls_files[0], env=env)
        assert trusted.returncode == 0, trusted.stderr
    assert srv.violations == []


def test_https_to_a_plain_http_server_fails_at_once_with_the_hint(cli, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0))
    with MenderTestServer() as srv:
        url = srv.url.replace("http://", "https://")
        start = time.monotonic()
        result = cli(
            "preauth", "status", "preauth.json", "--server", url, *SLOW_RETRIES, env={"MENDER_TOKEN": "test-pat"}
        )
        assert time.monotonic() - start < 3
    assert result.returncode == 4 and result.stderr.count("\n") == 1, result.stderr
    assert "the server speaks plain http: use an http:// URL" in result.stderr


def test_each_retry_is_one_line_and_verbose_shows_the_url(cli, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0))
    url = f"http://127.0.0.1:{closed_port()}"
    args = ("preauth", "status", "preauth.json", "--server", url, "--retries", "2", "--backoff", "0.01")
    result = cli(*args, env={"MENDER_TOKEN": "test-pat"})
    assert result.returncode == 4
    first, second, error = result.stderr.splitlines()
    assert first.startswith(f"imagetools: list devices: attempt 1 of 3 failed: cannot reach the Mender Server at {url}")
    assert re.search(r"; retrying in 0\.0[0-9] s$", first) and "attempt 2 of 3 failed" in second
    assert error.startswith("imagetools: error: ") and "tried 3 times" in error
    verbose = cli(*args, "-v", env={"MENDER_TOKEN": "test-pat"})
    shown = [line for line in verbose.stderr.splitlines() if line.startswith("imagetools: GET ")]
    assert shown == [f"imagetools: GET {url}/api/management/v2/devauth/devices?page=1&per_page=500"] * 3
    offline = cli("verify", "unit.sdimg", "-v")
    assert offline.returncode == 2 and "--verbose is only used with --server" in offline.stderr


def test_a_retried_answer_is_quoted_and_the_library_stays_quiet(cli, tmp_path, capfd):
    write_preauth(tmp_path / "preauth.json", macs(0))
    with MenderTestServer() as srv:
        srv.fail_next(503)
        result = cli(
            "preauth",
            "status",
            "preauth.json",
            "--backoff",
            "0.01",
            env={"MENDER_SERVER_URL": srv.url, "MENDER_TOKEN": "test-pat"},
        )
        assert result.returncode == 1, result.stderr  # the unit is missing: the listing worked
        [line] = result.stderr.splitlines()[:1]
        assert "list devices: attempt 1 of 5 failed: HTTP 503: service unavailable (request_id " in line
        heard = []
        srv.fail_next(503, count=2)
        settings = ServerSettings(srv.url, token="test-pat", backoff=0.01)
        with MenderClient(settings, on_retry=heard.append) as client:
            assert deviceauth.get_device(client, "x") is None
    assert [(r.attempt, r.attempts) for r in heard] == [(1, 5), (2, 5)]
    assert heard[0].wait < heard[1].wait and heard[0].reason.startswith("HTTP 503")
    assert capfd.readouterr() == ("", "")
