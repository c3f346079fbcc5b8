"""The station service on real loop-device slots: cards inserted and pulled, each taking the next
free unit of the ledger once, read back and verified; a mounted card is shown, never written; a
card that already holds a passed unit is done; SIGTERM lets cards in flight finish."""

from __future__ import annotations

import signal
import subprocess

import pytest
from support.slots import Rig, random_card
from support.station_proc import StationProcess, ended
from support.units import emit_units, holds_its_unit

from imagetools.station.ledger import open_ledger

pytestmark = pytest.mark.integration


@pytest.fixture
def rig():
    with Rig(2) as rig:
        yield rig


def test_cards_take_the_next_free_units_and_stay_shown_until_pulled(make_image, tmp_path, rig):
    base, out = emit_units(make_image, tmp_path, 3)
    size = base.stat().st_size
    a, b = rig.slots
    station = StationProcess("--base", base, "--units", out, "--slot", a, "--slot", b, "--name", "st1", "--no-fsck")
    try:
        cards = [random_card(tmp_path / f"card{i}.img", size) for i in range(4)]
        rig.insert(a, cards[0])
        rig.insert(b, cards[1])
        station.wait_for(lambda ev: len(ended(ev, a)) == 1 and len(ended(ev, b)) == 1)
        assert [e["event"] for e in ended(station.events, a) + ended(station.events, b)] == ["passed", "passed"]
        rig.pull(a)
        station.wait_for(lambda ev: any(e["slot"] == a and e["event"] == "pulled" for e in ev))
        assert len(ended(station.events, b)) == 1  # a card is written once while it stays
        rig.insert(a, cards[2])
        station.wait_for(lambda ev: len(ended(ev, a)) == 2)
        rig.pull(b)
        rig.insert(b, cards[3])  # no unit left: the card waits
        station.wait_for(lambda ev: any(e["slot"] == b and e["event"] == "waiting" for e in ev))
        rig.pull(a)
    finally:
        assert station.stop() == 0, "".join(station.stderr)
    taken = {e["unit"]: e["slot"] for e in station.events if e["event"] == "passed"}
    assert sorted(taken) == ["u000", "u001", "u002"]
    for card, unit in zip(cards[:3], _units_in_order(station.events, a, b)):
        assert holds_its_unit(card, out, unit)
    with open_ledger(out / "ledger.sqlite") as ledger:
        assert ledger.passed_units() == {"u000", "u001", "u002"} and ledger.counts()["free"] == 0


def _units_in_order(events: list[dict], a: str, b: str) -> list[str]:
    """The units of cards 0 (slot a), 1 (slot b), 2 (slot a again), from the passed events."""
    on_a = [e["unit"] for e in ended(events, a)]
    on_b = [e["unit"] for e in ended(events, b)]
    return [on_a[0], on_b[0], on_a[1]]


def test_a_restarted_station_shows_a_passed_card_as_done_and_a_mounted_card_is_not_written(make_image, tmp_path, rig):
    base, out = emit_units(make_image, tmp_path, 2)
    a, b = rig.slots
    card = random_card(tmp_path / "card.img", base.stat().st_size)
    rig.insert(a, card)
    first = StationProcess("--base", base, "--units", out, "--slot", a, "--no-fsck")
    try:
        first.wait_for(lambda ev: ended(ev, a))
    finally:
        assert first.stop() == 0
    bare = tmp_path / "mounted.img"
    subprocess.run(["truncate", "-s", str(base.stat().st_size), bare], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", bare], check=True)
    rig.insert(b, bare)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro", b, mnt], check=True)
    try:
        second = StationProcess("--base", base, "--units", out, "--slot", a, "--slot", b, "--no-fsck")
        try:
            second.wait_for(lambda ev: any(e["slot"] == a and e["event"] == "done" for e in ev))
            second.wait_for(lambda ev: any(e["slot"] == b and e["event"] == "mounted" for e in ev))
        finally:
            assert second.stop(signal.SIGINT) == 0
    finally:
        subprocess.run(["umount", mnt], check=True)
    assert not ended(second.events, a) and not ended(second.events, b)
    with open_ledger(out / "ledger.sqlite") as ledger:
        assert ledger.counts()["passed"] == 1 and ledger.counts()["free"] == 1
