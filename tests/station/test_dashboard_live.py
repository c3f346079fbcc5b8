"""The dashboard of a running station, in Debian's chromium: tiles follow cards inserted into and
pulled from loop-device slots, and the counts on the page are the ledger's."""

from __future__ import annotations

import os
import socket

import pytest
from support.browser import counts, missing, open_page, save_screenshot, tile_states, wait_until
from support.slots import Rig, random_card
from support.station_proc import StationProcess
from support.units import emit_units

from imagetools.station.ledger import open_ledger

pytestmark = [pytest.mark.integration, pytest.mark.skipif(missing() is not None, reason=str(missing()))]

SCREENSHOT_ENV = "IMAGETOOLS_SCREENSHOT"  # set to a PNG path to keep a picture of the busy line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_follows_the_cards_and_counts_what_the_ledger_holds(make_image, tmp_path):
    base, out = emit_units(make_image, tmp_path, 3)
    port = _free_port()
    with Rig(2) as rig:
        a, b = rig.slots
        station = StationProcess(
            "--base",
            base,
            "--units",
            out,
            "--slot",
            a,
            "--slot",
            b,
            "--name",
            "line-1",
            "--no-fsck",
            "--ui",
            f"127.0.0.1:{port}",
        )
        try:
            station.wait_for(lambda ev: any("dashboard at" in line for line in station.stderr) or None, 30)
            with open_page(f"http://127.0.0.1:{port}/") as page:
                wait_until(page, lambda d: tile_states(d) == {a: "empty", b: "empty"})
                rig.insert(a, random_card(tmp_path / "c0.img", base.stat().st_size))
                wait_until(page, lambda d: tile_states(d)[a] == "passed", 60)
                wait_until(page, lambda d: counts(d).get("passed") == 1, 10)
                rig.pull(a)
                wait_until(page, lambda d: tile_states(d)[a] == "empty")
                for slot, name in ((a, "c1.img"), (b, "c2.img")):
                    rig.insert(slot, random_card(tmp_path / name, base.stat().st_size))
                wait_until(page, lambda d: tile_states(d) == {a: "passed", b: "passed"}, 60)
                rig.pull(a)
                rig.insert(a, random_card(tmp_path / "c3.img", base.stat().st_size))
                wait_until(page, lambda d: tile_states(d)[a] == "waiting", 30)  # no unit left
                with open_ledger(out / "ledger.sqlite") as ledger:
                    want = ledger.counts()
                wait_until(
                    page,
                    lambda d: (
                        (counts(d).get("passed"), counts(d).get("free")) == (want["passed"], want["free"]) == (3, 0)
                    ),
                    10,
                )
                if os.environ.get(SCREENSHOT_ENV):
                    save_screenshot(page, os.environ[SCREENSHOT_ENV])
        finally:
            assert station.stop() == 0, "".join(station.stderr)
