"""The dashboard: a real Board changed by the test, the page in Debian's headless chromium.

HTTP-level rules (read-only, token, headers, stream) are checked with httpx against the real
uvicorn server; what a person sees is checked in the browser, live, without reloading the page.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.browser import counts, events, link_state, open_page, tile_states, tile_text, wait_until

from imagetools.errors import UsageError
from imagetools.station.events import TILE_STATES, Board
from imagetools.station.web import COUNTS_EVERY, MAX_STREAMS, serve_board

TOKEN = "tok-3f9a.c0de_7e21~88aa41"
MB = 1_000_000
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">"\'&amp; x'
WORDS = {
    "empty": "EMPTY",
    "mounted": "MOUNTED",
    "waiting": "WAITING",
    "writing": "WRITING",
    "reading back": "READING BACK",
    "verifying": "VERIFYING",
    "passed": "PASS",
    "failed": "FAIL",
    "interrupted": "INTERRUPTED",
    "done": "DONE",
}


class Line:
    """The ledger's counts as the station service hands them to the board: changed by the test."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


@pytest.fixture
def line() -> Line:
    return Line()


@pytest.fixture
def board(line: Line) -> Board:
    return Board("st1", ["/dev/sdb", "/dev/sdc", "/dev/sdd"], line)


@pytest.fixture
def web(board: Board) -> Iterator[Any]:
    with serve_board(board) as server:
        yield server


def messages(response: httpx.Response) -> Iterator[str]:
    """The data of each server-sent event, and comment lines as ':comment'."""
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith(":"):
            yield line
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            yield "\n".join(data)
            data = []


def stream_status(client: httpx.Client, url: str) -> int:
    with client.stream("GET", url) as stream:
        return stream.status_code


def test_tiles_and_counts_follow_the_board_live(board: Board, line: Line, web: Any) -> None:
    with open_page(web.url) as driver:
        wait_until(
            driver,
            lambda d: tile_states(d) == dict.fromkeys(["/dev/sdb", "/dev/sdc", "/dev/sdd"], "empty"),
            what="three empty tiles",
        )
        driver.execute_script("window.__samePage = 42;")

        board.set("/dev/sdb", "writing", unit="unit0001")
        board.progress("/dev/sdb", 50 * MB, 100 * MB, 12.5e6)
        text = wait_until(
            driver, lambda d: "50 %" in tile_text(d, "/dev/sdb") and tile_text(d, "/dev/sdb"), what="writing 50 %"
        )
        assert "WRITING\n" in text and "50 % · 12.5 MB/s" in text and "unit0001" in text
        board.set("/dev/sdb", "reading back", unit="unit0001")
        board.progress("/dev/sdb", 25 * MB, 100 * MB, 80e6)
        wait_until(driver, lambda d: "READING BACK\n25 % · 80.0 MB/s" in tile_text(d, "/dev/sdb"), what="reading back")
        board.set("/dev/sdb", "passed", unit="unit0001", serial="SER-0042")
        board.set("/dev/sdc", "failed", unit="unit0002", reason="read-back mismatch at byte 4096")
        board.set("/dev/sdd", "mounted")
        wait_until(
            driver,
            lambda d: tile_states(d) == {"/dev/sdb": "passed", "/dev/sdc": "failed", "/dev/sdd": "mounted"},
            what="pass, fail, mounted",
        )
        assert "PASS" in tile_text(driver, "/dev/sdb") and "card SER-0042" in tile_text(driver, "/dev/sdb")
        assert "FAIL" in tile_text(driver, "/dev/sdc") and "mismatch at byte 4096" in tile_text(driver, "/dev/sdc")

        for state in TILE_STATES:
            board.set("/dev/sdd", state, unit="unit0003")
            wait_until(driver, lambda d, s=state: tile_states(d)["/dev/sdd"] == s, what=f"state {state}")
            assert WORDS[state] in tile_text(driver, "/dev/sdd").split("\n")

        # counts change in the ledger (another station) without any change on this board
        line.values = {"passed": 17, "failed": 2, "interrupted": 1, "free": 40, "per_hour": 61.5}
        wait_until(
            driver,
            lambda d: counts(d) == {"passed": 17, "failed": 2, "interrupted": 1, "free": 40, "per_hour": 61.5},
            timeout=COUNTS_EVERY + 5,
            what="the ledger's counts",
        )
        assert driver.execute_script("return window.__samePage;") == 42  # never reloaded


def test_outside_text_renders_as_text(line: Line) -> None:
    board = Board(HOSTILE, [HOSTILE, "/dev/sdc"], line)
    board.set(HOSTILE, "failed", unit=HOSTILE, serial=HOSTILE, reason=HOSTILE)
    board.event(HOSTILE, HOSTILE, HOSTILE, HOSTILE)
    line.values = {"passed": "<b>1</b>", "ledger": HOSTILE}
    with serve_board(board) as web, open_page(web.url) as driver:
        wait_until(driver, lambda d: tile_states(d).get(HOSTILE) == "failed", what="the hostile tile")
        assert tile_text(driver, HOSTILE).count(HOSTILE) == 5  # slot, station, unit, serial, reason
        _, rows = events(driver)
        assert rows[0][2:] == [HOSTILE] * 4
        assert driver.execute_script("return document.getElementById('ledger').textContent;") == "ledger: " + HOSTILE
        assert counts(driver)["passed"] is None  # not a number: not shown as one
        assert driver.execute_script("return [window.__pwned, document.images.length, document.scripts.length];") == [
            None,
            0,
            1,
        ]


def test_events_with_a_station_column_when_the_line_has_several(board: Board, line: Line, web: Any) -> None:
    board.event("/dev/sdb", "inserted", message="card of 8 GB")
    with open_page(web.url) as driver:
        multi, rows = wait_until(driver, lambda d: events(d)[1] and events(d), what="the board's event")
        assert not multi and rows[0][2:] == ["/dev/sdb", "inserted", "", "card of 8 GB"]
        line.values = {
            "stations": ["st1", "st2"],
            "recent": [
                {
                    "id": n,
                    "unit": f"unit{n:04d}",
                    "station": f"st{1 + n % 2}",
                    "slot": "/dev/sdc",
                    "state": "failed" if n == 24 else "passed",
                    "serial": f"S{n}",
                    "error": "bad card" if n == 24 else None,
                    "started": "2026-12-06T10:00:00+00:00",
                    "ended": None,
                }
                for n in range(24, -1, -1)
            ],
        }
        board.event("/dev/sdb", "pulled")
        multi, rows = wait_until(driver, lambda d: events(d)[0] and events(d), what="the ledger's attempts")
        assert len(rows) == 20
        assert rows[0][1:] == ["st1", "/dev/sdc", "failed", "unit0024", "bad card"]
        assert rows[1][1:] == ["st2", "/dev/sdc", "passed", "unit0023", "card S23"]
        assert driver.execute_script("return document.getElementById('title').textContent;") == "line: st1, st2"


def test_token_and_reconnect_after_a_restart(board: Board) -> None:
    web = serve_board(board, token=TOKEN)
    try:
        with open_page(f"{web.url}?token={TOKEN}") as driver:
            wait_until(driver, lambda d: link_state(d) == "connected", what="the stream with the token")
            web.stop()
            wait_until(driver, lambda d: link_state(d) == "disconnected", what="the disconnected badge")
            assert "disconnected — retrying" in driver.find_element("id", "link").text
            board.set("/dev/sdc", "writing", unit="unit0009")
            web = serve_board(board, port=web.port, token=TOKEN)
            wait_until(
                driver,
                lambda d: link_state(d) == "connected" and tile_states(d)["/dev/sdc"] == "writing",
                timeout=20,
                what="the page back on the restarted server",
            )
    finally:
        web.stop()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_read_only(board: Board, web: Any, method: str) -> None:
    before = board.version
    for path in ("", "api/state", "api/events", "api/nowhere"):
        answer = httpx.request(method, web.url + path, content=b'{"state": "passed"}')
        assert answer.status_code == 405 and answer.headers["allow"] == "GET, HEAD"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert board.version == before


def test_headers_and_state(board: Board, line: Line, web: Any) -> None:
    line.values = {"passed": 3, "per_hour": float("nan")}
    page = httpx.get(web.url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"].startswith("default-src 'self'; script-src 'sha256-")
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer" and "server" not in page.headers
    assert b"http://" not in page.content and b"https://" not in page.content  # nothing from the internet
    state = json.loads(httpx.get(web.url + "api/state").text, parse_constant=pytest.fail)
    assert state["counts"] == {"passed": 3, "per_hour": None} and len(state["tiles"]) == 3
    assert httpx.get(web.url + "api/nowhere").status_code == 404


def test_network_bind_needs_a_token(board: Board) -> None:
    with pytest.raises(UsageError, match="give it a token"):
        serve_board(board, host="0.0.0.0")
    for bad in ("short", "x" * 15, "has space in it 123456", "é" * 20, "x" * 257):
        with pytest.raises(UsageError, match="token must be"):
            serve_board(board, host="0.0.0.0", token=bad)
    with serve_board(board, host="0.0.0.0", token=TOKEN) as web:
        assert httpx.get(f"http://127.0.0.1:{web.port}/").status_code == 401


def test_token_on_every_route_and_never_logged(
    board: Board, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    with serve_board(board, token=TOKEN) as web:
        for path in ("", "api/state", "api/events", "api/nowhere"):
            for params, headers in (
                ({}, {}),
                ({"token": TOKEN[:-1] + "X"}, {}),
                ({}, {"Authorization": "Bearer"}),
                ({}, {"Authorization": "Basic " + TOKEN}),
            ):
                refused = httpx.get(web.url + path, params=params, headers=headers)
                assert refused.status_code == 401 and TOKEN not in refused.text
        assert httpx.get(web.url, params={"token": TOKEN}).status_code == 200
        assert httpx.get(web.url + "api/state", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert httpx.get(web.url + "api/nowhere", params={"token": TOKEN}).status_code == 404
    out, err = capfd.readouterr()
    ours = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]  # not the client's
    assert not [r for r in ours if r.name.startswith("uvicorn")]
    assert TOKEN not in out + err + "".join(r.getMessage() for r in ours)


def test_loopback_without_token_wants_a_loopback_host(web: Any) -> None:
    assert httpx.get(web.url, headers={"Host": "evil.example"}).status_code == 403
    assert httpx.get(web.url, headers={"Host": "evil.example:80"}).status_code == 403
    assert httpx.get(web.url, headers={"Host": f"localhost:{web.port}"}).status_code == 200


def test_stream_snapshot_changes_heartbeat_and_stop(board: Board) -> None:
    with serve_board(board, heartbeat=0.3) as web, httpx.Client(timeout=10) as client:
        with client.stream("GET", web.url + "api/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            received = messages(stream)
            assert json.loads(next(received))["version"] == board.version
            board.set("/dev/sdb", "writing", unit="unit0001")
            changed = json.loads(next(received))
            assert changed["tiles"][0]["state"] == "writing" and changed["version"] == board.version
            assert next(received) == ": heartbeat"
            started = time.monotonic()
            web.stop()
            assert set(received) <= {": heartbeat"} and time.monotonic() - started < 3  # the stream ended


def test_streams_are_bounded(web: Any) -> None:
    with httpx.Client(timeout=10) as client:
        streams = [client.stream("GET", web.url + "api/events") for _ in range(MAX_STREAMS)]
        opened = [s.__enter__() for s in streams]
        try:
            assert all(r.status_code == 200 for r in opened)
            assert client.get(web.url + "api/events").status_code == 503
            streams.pop().__exit__(None, None, None)
            opened.pop()
            deadline = time.monotonic() + 5
            while (status := stream_status(client, web.url + "api/events")) != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert status == 200
        finally:
            for s in streams:
                s.__exit__(None, None, None)
