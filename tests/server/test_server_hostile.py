"""Nothing from the outside is trusted: a hostile HTTP server, odd token files, odd preauth files.

`Hostile` is a real HTTP server on 127.0.0.1 (a socket and a thread, no mocking of httpx) that
answers whatever each test tells it: trickled bodies, endless pages, broken JSON, wrong types.
Every such answer must end as a ServerError (exit 4) in bounded time, never another exception.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from support.inputs import new_pem

from imagetools import keys, preauth
from imagetools.errors import AuthError, DeviceListError, ServerError, UsageError
from imagetools.mender import DEVICES_V2
from imagetools.preauth import push, units
from imagetools.server import (
    BadResponse,
    MenderClient,
    ServerSettings,
    credentials,
    deviceauth,
    resolve_token,
    save_token,
    transport,
    useradm,
)
from imagetools.server.credentials import token_cache_path
from imagetools.server.transport import next_link, parse_retry_after

SECRET = "s3cret-token-4f9a2c"


class Hostile:
    """Answers each request with ``self.answer(handler)``; records (method, path, headers)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.answer: Callable[[Handler], None] = lambda h: h.reply(200, b"[]")
        self.stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda *args: None  # clients hang up on purpose here
        self._httpd.owner = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> Hostile:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as written, without a 40 ms ACK wait

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.owner.log.append((self.command, self.path, dict(self.headers.items())))
        self.server.owner.answer(self)

    do_GET = do_POST = _serve

    def reply(self, status: int, body: bytes | str | Any = b"", headers: dict[str, str] | None = None) -> None:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        payload = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def raw(self, data: bytes) -> None:
        """Send ``data`` as the whole answer (status line included), then hang up."""
        self.close_connection = True
        self.wfile.write(data)

    def trickle(self, head: bytes, drip: bytes, interval: float) -> None:
        """Send ``head``, then ``drip`` one byte per ``interval`` until the client hangs up."""
        self.close_connection = True
        try:
            self.wfile.write(head)
            for i in range(10_000):
                if self.server.owner.stop.wait(interval):
                    return
                self.wfile.write(drip[i % len(drip) :][:1])
                self.wfile.flush()
        except OSError:
            return

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hostile():
    with Hostile() as srv:
        yield srv


def client_for(srv: Hostile, **kw: Any) -> MenderClient:
    settings = ServerSettings(
        srv.url, token=SECRET, token_source="test", backoff=0.01, **{"retries": 0, "timeout": 2.0, **kw}
    )
    return MenderClient(settings)


def device(device_id: str = "d1", **fields: Any) -> dict:
    return {
        "id": device_id,
        "identity_data": {"mac": "aa"},
        "status": "accepted",
        "auth_sets": [{"id": "a1", "pubkey": new_pem(), "status": "accepted"}],
        **fields,
    }


def unit() -> preauth.Unit:
    return preauth.Unit("u1", {"mac": "aa"}, keys.generate(keys.KeySpec("ed25519")).public_key())


def raises_bad(call: Callable[[], Any]) -> BadResponse:
    with pytest.raises(BadResponse) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and SECRET not in message and info.value.exit_code == 4
    return info.value


# --- bounded waits -------------------------------------------------------------------------------

TRICKLE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"


def test_trickled_body_ends_at_the_total_deadline(hostile):
    hostile.answer = lambda h: h.trickle(TRICKLE_HEAD, b"[  ", 0.5)
    with client_for(hostile, timeout=1.0) as client:
        start = time.monotonic()
        with pytest.raises(ServerError, match="timed out") as info:
            list(deviceauth.iter_devices(client))
        elapsed = time.monotonic() - start
    assert elapsed < 2.0 and "tried 1 time" in str(info.value)
    assert not isinstance(info.value, AuthError)


def test_trickled_headers_and_endless_1xx_end_at_the_deadline(hostile):
    answers = iter(
        [
            lambda h: h.trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a", 0.2),
            lambda h: h.trickle(b"", b"HTTP/1.1 103 Early Hints\r\n\r\n", 0.01),
        ]
    )
    hostile.answer = lambda h: next(answers)(h)
    with client_for(hostile, timeout=1.0, retries=1) as client:
        start = time.monotonic()
        with pytest.raises(ServerError, match="timed out.*tried 2 times"):
            deviceauth.get_device(client, "d1")
        elapsed = time.monotonic() - start
    assert elapsed < 3.5 and len(hostile.log) == 2  # two attempts, each with its own deadline


def test_oversized_answers_are_refused(hostile, monkeypatch):
    monkeypatch.setattr(transport, "MAX_BODY", 1000)
    answers = iter(
        [
            lambda h: h.raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[" + b" " * 2000 + b"]"),
            lambda h: h.trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n", b" ", 1),
        ]
    )
    hostile.answer = lambda h: next(answers)(h)
    with client_for(hostile) as client:
        assert "larger than" in str(raises_bad(lambda: list(deviceauth.iter_devices(client))))
        start = time.monotonic()
        assert "announces more than" in str(raises_bad(lambda: list(deviceauth.iter_devices(client))))
        assert time.monotonic() - start < 0.5


# --- paging --------------------------------------------------------------------------------------


def pages(next_url: Callable[[int], str]) -> Callable[[Handler], None]:
    def answer(h: Handler) -> None:
        page = int(dict(p.split("=") for p in h.path.split("?")[1].split("&"))["page"])
        h.reply(200, [device(f"d{page}")], {"Link": f'<{next_url(page)}>; rel="next"'})

    return answer


def test_endless_pages_stop_at_the_page_limit(hostile):
    hostile.answer = pages(lambda n: f"{DEVICES_V2}?page={n + 1}&per_page=500")
    with client_for(hostile, max_pages=40) as client:
        start = time.monotonic()
        error = raises_bad(lambda: list(deviceauth.iter_devices(client)))
    assert "more than 40 pages" in str(error) and len(hostile.log) == 40
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("target", ["?page=2&per_page=500", "?per_page=500&page=1"])
def test_a_repeating_page_link_is_refused(hostile, target):
    hostile.answer = pages(lambda n: f"{DEVICES_V2}{target}")
    with client_for(hostile) as client:
        error = raises_bad(lambda: list(deviceauth.iter_devices(client)))
    assert "already read" in str(error) and len(hostile.log) <= 2


def test_a_next_link_to_another_host_gets_no_token(hostile):
    with Hostile() as elsewhere:
        for target in (elsewhere.url, "https://127.0.0.1:" + hostile.url.rsplit(":", 1)[1], "//evil.example"):
            hostile.answer = pages(lambda n, target=target: f"{target}{DEVICES_V2}?page={n + 1}")
            with client_for(hostile) as client:
                assert "not sending the token there" in str(raises_bad(lambda: list(deviceauth.iter_devices(client))))
    assert elsewhere.log == []
    hostile.answer = pages(lambda n: f"{hostile.url}{DEVICES_V2}?page={n + 1}" if n < 3 else "")
    with client_for(hostile) as client:
        assert [d["id"] for d in deviceauth.iter_devices(client)] == ["d1", "d2", "d3"]  # same origin: followed


def test_next_link_parsing():
    assert next_link('</a?page=2>; rel="next", </a?page=1>; rel="first"') == "/a?page=2"
    assert next_link('</a?page=1>; rel=first, </b>; REL="prev next"') == "/b"
    assert next_link('</a>; rel="nextish"') is None and next_link(None) is None and next_link("<>") is None


# --- bad data ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, found",
    [
        (b"<html>502 bad gateway</html>", "got no JSON at all"),
        (b"\xff\xfe not utf-8", "got no JSON at all"),
        (b"[" * 100_000, "got no JSON at all"),
        ({"devices": []}, "got an object"),
        ([1, "x"], "a device is a number"),
        ([device(identity_data="mac=aa")], "identity_data is a string"),
        ([device(identity_data={"mac": {"nested": 1}})], "holds nested values"),
        ([device(auth_sets=[{"pubkey": 12345, "status": "accepted"}])], "pubkey is a number"),
        ([device(auth_sets={"pubkey": "x"})], "auth_sets is an object"),
        ([device(auth_sets=["x"])], "an auth set is a string"),
        ([device(status="\x1b[31mred")], "status"),
        ([device("../../useradm")], "is not an id"),
        ([{"identity_data": {}}], "is not an id"),
    ],
)
def test_malformed_device_lists_are_server_errors(hostile, body, found):
    hostile.answer = lambda h: h.reply(200, body, {"X-MEN-RequestID": "rid-77"})
    with client_for(hostile) as client:
        error = raises_bad(lambda: list(deviceauth.iter_devices(client)))
    assert found in str(error) and "request_id rid-77" in str(error) and error.request_id == "rid-77"
    assert "\x1b" not in str(error)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", {"id": 5}, {"id": "d1", "auth_sets": "x"}, {"id": "d1", "identity_data": "aa"}, {"error": 7}],
)
def test_malformed_409_aborts_the_push_instead_of_failing_a_unit(hostile, body):
    hostile.answer = lambda h: h.reply(409, body)
    with client_for(hostile) as client:
        raises_bad(lambda: push.push(client, [unit()]))


@pytest.mark.parametrize(
    "admission_set",
    [
        {"device_identity": 5, "key": "x"},
        {"device_identity": "{}", "key": 7},
        {"device_identity": "[" * 100_000, "key": "x", "device_id": "../x"},
    ],
)
def test_malformed_legacy_admission_sets_are_server_errors(hostile, admission_set):
    answers = iter([lambda h: h.reply(409, {"error": "exists"}), lambda h: h.reply(200, [admission_set])])
    hostile.answer = lambda h: next(answers)(h)
    with client_for(hostile) as client:
        raises_bad(lambda: push.push(client, [unit()], api="v1"))


def test_undecodable_gzip_body_is_a_server_error(hostile):
    hostile.answer = lambda h: h.reply(200, b"not gzip at all", {"Content-Encoding": "gzip"})
    with client_for(hostile) as client:
        assert "does not decode" in str(raises_bad(lambda: list(deviceauth.iter_devices(client))))


def test_409_with_an_error_body_falls_back_to_the_device_list(hostile):
    u = unit()
    answers = iter(
        [
            lambda h: h.reply(409, {"error": "device exists"}),
            lambda h: h.reply(
                200, [device(auth_sets=[{"pubkey": keys.public_pem(u.pubkey).decode(), "status": "preauthorized"}])]
            ),
        ]
    )
    hostile.answer = lambda h: next(answers)(h)
    with client_for(hostile) as client:
        [result] = push.push(client, [u])
    assert result.outcome == "already" and result.device_id == "d1"


@pytest.mark.parametrize(
    "headers, found",
    [
        ({}, "201 without a Location header"),
        ({"Location": "/devices/a b"}, "does not name a device"),
        ({"Location": f"{DEVICES_V2}/"}, "does not name a device"),
        ({"Location": "javascript:alert(1)"}, "does not name a device"),
        ({"Location": "http://[::1"}, "does not name a device"),
    ],
)
def test_201_without_a_usable_location_is_a_server_error(hostile, headers, found):
    hostile.answer = lambda h: h.reply(201, b"", headers)
    with client_for(hostile) as client:
        assert found in str(raises_bad(lambda: push.push(client, [unit()])))


def test_unicode_digit_retry_after_is_ignored(hostile):
    hostile.answer = lambda h: h.reply(429, {"error": "slow down"}, {"Retry-After": "²"})
    with client_for(hostile, retries=1) as client:
        start = time.monotonic()
        with pytest.raises(ServerError, match="tried 2 times.*HTTP 429") as info:
            deviceauth.get_device(client, "d1")
    assert info.value.status == 429 and time.monotonic() - start < 1
    assert parse_retry_after("²") is None and parse_retry_after("١٢") is None
    assert parse_retry_after("Mon, 99 Foo 2020 99:99:99 GMT") is None and parse_retry_after("3") == 3.0


def test_error_text_is_one_line_without_escapes_or_our_token(hostile):
    hostile.answer = lambda h: h.reply(
        400, {"error": f"bad\n\x1b[31mrequest\u202e with Bearer {h.headers['Authorization'][7:]}"}
    )
    with client_for(hostile) as client:
        [result] = push.push(client, [unit()])
    assert result.outcome == "failed" and "HTTP 400" in result.detail
    assert SECRET not in result.detail and "\n" not in result.detail and "\x1b" not in result.detail
    assert "\u202e" not in result.detail and "<hidden>" in result.detail


def test_non_jwt_login_answer_is_a_server_error(hostile):
    hostile.answer = lambda h: h.reply(200, b"aaa.bbb.c c\nd")
    with client_for(hostile) as client:
        assert "did not answer with a JWT" in str(raises_bad(lambda: useradm.login(client, "me", "pw")))


def test_the_token_reaches_the_server_unchanged(hostile):
    with client_for(hostile) as client:
        assert list(deviceauth.iter_devices(client)) == []
    assert hostile.log[0][2]["Authorization"] == f"Bearer {SECRET}"


# --- tokens ----------------------------------------------------------------------------------------


@pytest.fixture
def no_env_token(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MENDER_TOKEN", raising=False)


def auth_refusal(call: Callable[[], Any], error: type[Exception] = AuthError) -> str:
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert SECRET not in message and SECRET[:8] not in message and "\n" not in message
    return message


@pytest.mark.parametrize(
    "content, found",
    [
        (f"{SECRET}\nsecond-line\n".encode(), "a line break at character 20"),
        (f"{SECRET[:6]} {SECRET[6:]}".encode(), "whitespace at character 7"),
        (f"{SECRET}\x00".encode(), "a control character"),
        (SECRET.encode() + b"\xff\xfe", "a non-ASCII character"),
        (f"{SECRET}é".encode(), "a non-ASCII character"),
        (b"\n\n", "is empty"),
    ],
)
def test_token_file_must_hold_one_line(tmp_path, content, found):
    path = tmp_path / "pat"
    path.write_bytes(content)
    message = auth_refusal(lambda: resolve_token("https://m.example.com", path))
    assert found in message and str(path) in message


def test_token_file_with_a_trailing_newline_is_fine(tmp_path):
    (tmp_path / "pat").write_text(f"  {SECRET}\r\n")
    assert resolve_token("https://m.example.com", tmp_path / "pat")[0] == SECRET


def test_token_file_must_be_a_small_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[str] = []
    reader = threading.Thread(
        target=lambda: outcome.append(auth_refusal(lambda: resolve_token("https://m.example.com", fifo), UsageError)),
        daemon=True,
    )
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading a FIFO token file blocked"
    assert "a FIFO, not a regular file" in outcome[0]
    (tmp_path / "big").write_bytes(b"x" * (credentials.MAX_TOKEN_BYTES + 1))
    assert "larger than 64 KiB" in auth_refusal(lambda: resolve_token("https://m", tmp_path / "big"), UsageError)
    assert "a directory" in auth_refusal(lambda: resolve_token("https://m", tmp_path), UsageError)


@pytest.mark.parametrize("value", [f"{SECRET}ö", f"{SECRET}\udcff", f"{SECRET}\n{SECRET}"])
def test_odd_mender_token_env_is_refused(no_env_token, value):
    message = auth_refusal(lambda: resolve_token("https://m.example.com", env={"MENDER_TOKEN": value}))
    assert "MENDER_TOKEN does not hold a token" in message


def test_odd_cached_login_token_is_refused(no_env_token):
    url = "https://m.example.com"
    path = token_cache_path(url)
    path.parent.mkdir(parents=True)
    path.write_bytes(SECRET.encode() + b"\n\xff\n")
    message = auth_refusal(lambda: resolve_token(url))
    assert "cached login token" in message and str(path) in message
    path.unlink()
    os.mkfifo(path)
    assert "not a regular file" in auth_refusal(lambda: resolve_token(url))
    assert "does not hold a token" in auth_refusal(lambda: save_token(url, f"{SECRET}\nx"))


def test_token_given_in_settings_is_checked_too():
    settings = ServerSettings("https://m.example.com", token=f"{SECRET}\nInjected: 1", token_source="pipeline")
    message = auth_refusal(lambda: MenderClient(settings))
    assert "pipeline does not hold a token: a line break" in message
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://host:99999", "http://user:pw@host", "http://h\nost", "http://host/?q=1"]
)
def test_odd_server_urls_are_usage_errors(url):
    with pytest.raises(UsageError, match="not a server URL"):
        ServerSettings(url)


# --- preauth files ---------------------------------------------------------------------------------


def entries(n: int = 2) -> list[dict]:
    return [
        {"name": f"unit{i}", "identity_data": {"mac": f"02:00:00:00:00:{i:02x}"}, "pubkey": new_pem()} for i in range(n)
    ]


def rewrapped(pem: str) -> str:
    """The same key in other PEM text: 40-character lines, CRLF."""
    lines = pem.strip().splitlines()
    b64 = "".join(lines[1:-1])
    return "\r\n".join([lines[0], *(b64[i : i + 40] for i in range(0, len(b64), 40)), lines[-1]]) + "\r\n"


def test_duplicate_public_keys_are_refused_as_der_not_pem(tmp_path):
    data = entries(3)
    data[2]["pubkey"] = rewrapped(data[0]["pubkey"])
    assert data[2]["pubkey"] != data[0]["pubkey"]
    path = tmp_path / "preauth.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DeviceListError) as info:
        preauth.load_units(path)
    assert "entry 3 (unit2): same public key as entry 1 (unit0) (fingerprint" in str(info.value)
    assert info.value.exit_code == 2


def test_duplicate_json_keys_and_inexact_numbers_are_refused(tmp_path):
    path = tmp_path / "preauth.json"
    [first, second] = entries(2)
    text = json.dumps([first, second])
    text = text.replace('"name": "unit1"', '"name": "unit1", "name": "unit9"', 1)
    text = text.replace(
        '{"mac": "02:00:00:00:00:00"}', '{"mac": "02:00:00:00:00:00", "sn": 12345678901234567890.5, "mac": "x"}', 1
    )
    path.write_text(text)
    with pytest.raises(DeviceListError) as info:
        preauth.load_units(path)
    message = str(info.value)
    assert "entry 2 (unit9): key 'name' appears more than once" in message
    assert "identity attribute 'mac' appears more than once" in message
    assert "(12345678901234567890.5)" in message and 'write "12345678901234567890.5"' in message
    path.write_text('[{"name": "a", "identity_data": {"sn": NaN}, "pubkey": "x"}]')
    with pytest.raises(DeviceListError, match="NaN is not a JSON value"):
        preauth.load_units(path)
    path.write_text("[" * 100_000)
    with pytest.raises(DeviceListError, match="nested too deeply"):
        preauth.load_units(path)


def test_preauth_file_must_be_a_regular_file_of_sane_size(tmp_path, monkeypatch):
    fifo = tmp_path / "preauth.json"
    os.mkfifo(fifo)
    outcome: list[Exception] = []
    reader = threading.Thread(
        target=lambda: outcome.append(pytest.raises(UsageError, preauth.load_units, fifo).value), daemon=True
    )
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading a FIFO preauth file blocked"
    assert "not a regular file" in str(outcome[0])
    big = tmp_path / "big.json"
    big.write_text(json.dumps(entries(3)))
    monkeypatch.setattr(units, "MAX_PREAUTH_BYTES", 300)
    with pytest.raises(UsageError, match="larger than 300 bytes"):
        preauth.load_units(big)
    (tmp_path / "latin1.json").write_bytes(b'[{"name": "\xe9"}]')
    with pytest.raises(UsageError, match="not UTF-8 text"):
        preauth.load_units(tmp_path / "latin1.json")


def test_lone_surrogates_and_control_characters_are_refused(tmp_path):
    data = entries(2)
    data[0]["identity_data"]["mac"] = "\udcff"
    data[1]["name"] = "unit\x1b[2J"
    path = tmp_path / "preauth.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DeviceListError) as info:
        preauth.load_units(path)
    assert "not valid Unicode" in str(info.value) and "'name' must be a non-empty string of printable" in str(
        info.value
    )
    assert "\x1b" not in str(info.value)


# --- the command line ------------------------------------------------------------------------------


@pytest.fixture
def env(hostile, tmp_path):
    (tmp_path / "preauth.json").write_text(json.dumps(entries(2)))
    return {
        "MENDER_SERVER_URL": hostile.url,
        "MENDER_TOKEN": SECRET,
        "IMAGETOOLS_BACKOFF": "0.01",
        "IMAGETOOLS_RETRIES": "0",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


def one_error_line(result, code: int = 4) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.startswith("imagetools: error:") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stdout + result.stderr
    return result.stderr


def test_cli_non_json_answers_exit_4(cli, env, hostile):
    hostile.answer = lambda h: h.reply(200, b"<html>hello</html>")
    assert "expected a JSON list" in one_error_line(cli("preauth", "status", "preauth.json", env=env))
    hostile.answer = lambda h: h.reply(409, b"<html>conflict</html>")
    assert "unexpected answer" in one_error_line(cli("preauth", "push", "preauth.json", env=env))


def test_cli_trickling_server_exits_4_within_the_timeout(cli, env, hostile):
    hostile.answer = lambda h: h.trickle(TRICKLE_HEAD, b"[ ", 1.0)
    start = time.monotonic()
    result = cli("preauth", "push", "preauth.json", "--timeout", "1", env=env)
    assert time.monotonic() - start < 4
    assert "timed out" in one_error_line(result)


def test_cli_bad_token_file_exits_without_contacting_the_server(cli, env, hostile, tmp_path):
    (tmp_path / "pat").write_text(f"{SECRET}\n{SECRET}\n")
    result = cli("preauth", "push", "preauth.json", "--token-file", "pat", env=env)
    assert "token file pat does not hold a token: a line break" in one_error_line(result)
    assert hostile.log == []


def test_cli_duplicate_public_keys_exit_2_before_any_request(cli, env, hostile, tmp_path):
    data = entries(2)
    data[1]["pubkey"] = rewrapped(data[0]["pubkey"])
    (tmp_path / "preauth.json").write_text(json.dumps(data))
    message = one_error_line(cli("preauth", "push", "preauth.json", env=env), code=2)
    assert "entry 2 (unit1): same public key as entry 1 (unit0)" in message
    assert hostile.log == []
