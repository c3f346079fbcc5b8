"""A production line: station processes with loop-device slots sharing one ledger (a real
PostgreSQL, or SQLite for one station), a driver inserting and pulling cards, one station killed
mid-flash and restarted, the database restarted once. Afterwards no unit is on two cards, every
card that passed holds its unit's key and is passed in the ledger, the killed card is
interrupted and its unit retired, and no attempt is lost or left open."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.postgres import PostgresServer, unavailable
from support.slots import Rig
from support.station_proc import StationProcess
from support.units import emit_units, holds_its_unit

from imagetools.station.ledger import open_ledger

pytestmark = pytest.mark.integration

CARD_SECONDS = 10.0  # the bound per card of the line's run on a loaded 2-core machine


@dataclass
class Line:
    """The stations, their slots, and what the driver saw on each card."""

    args: list[str]
    slots: dict[str, list[str]]  # station name -> its slots
    procs: dict[str, StationProcess] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # slot -> events of its station consumed
    results: list[tuple[Path, str, str | None]] = field(default_factory=list)  # card, state, unit

    def start(self, name: str) -> None:
        slots = [arg for slot in self.slots[name] for arg in ("--slot", slot)]
        self.procs[name] = StationProcess(*self.args, *slots, "--name", name)
        for slot in self.slots[name]:
            self.seen[slot] = 0

    def tail(self) -> str:
        """The last events and error output of each station, for a failing test's message."""
        return "; ".join(f"{name}: {p.events[-6:]} {''.join(p.stderr)[-600:]}" for name, p in self.procs.items())

    def station_of(self, slot: str) -> str:
        return next(name for name, slots in self.slots.items() if slot in slots)

    def ending(self, slot: str) -> dict | None:
        """The next end event (passed, failed, interrupted) of SLOT's card, if there is one yet."""
        events = [e for e in self.procs[self.station_of(slot)].events if e["slot"] == slot]
        for i, event in enumerate(events[self.seen[slot] :], self.seen[slot]):
            if event["event"] in ("passed", "failed", "interrupted"):
                self.seen[slot] = i + 1
                return event
        return None

    def writing(self, name: str) -> str | None:
        """A slot of station NAME whose card is being written now."""
        events = self.procs[name].events
        for slot in self.slots[name]:
            mine = [e["event"] for e in events if e["slot"] == slot]
            if mine and mine[-1] == "taken":
                return slot
        return None


def drive(
    rig: Rig,
    line: Line,
    cards: int,
    size: int,
    tmp_path: Path,
    *,
    kill: str,
    at_kill: int,
    restart_db=None,
    at_restart: int = 0,
) -> str:
    """Insert and pull CARDS cards, killing station KILL mid-flash after AT_KILL cards (and
    restarting it), and calling RESTART_DB after AT_RESTART cards. Returns the killed card's slot."""
    inserted, killed_slot, deadline = 0, None, time.monotonic() + 120 + cards * CARD_SECONDS
    card_of: dict[str, Path] = {}
    while len(line.results) < cards + (1 if killed_slot else 0) or card_of:
        assert time.monotonic() < deadline, f"line stalled after {len(line.results)} cards: {line.tail()}"
        for slot in rig.slots:
            if slot not in card_of and inserted < cards:
                card_of[slot] = _card(tmp_path / f"card{inserted:03d}.img", size)
                rig.insert(slot, card_of[slot])
                inserted += 1
            elif slot in card_of and (event := line.ending(slot)) is not None:
                line.results.append((card_of[slot], event["event"], event["unit"]))
                rig.pull(slot)
                del card_of[slot]
        if killed_slot is None and inserted >= at_kill and (slot := line.writing(kill)) is not None:
            line.procs[kill].stop(signal.SIGKILL)
            killed_slot = slot
            line.results.append((card_of[slot], "killed", None))
            line.start(kill)  # the same card stays in; the restarted station resumes
        if restart_db is not None and inserted >= at_restart:
            restart_db()
            restart_db = None
        time.sleep(0.1)
    assert killed_slot is not None, f"station {kill} was never caught writing"
    return killed_slot


def _card(path: Path, size: int) -> Path:
    """A used card: stale bytes at the start (a table, a boot area), the rest as it may come."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(b"\xa5" * (1 << 20))
    return path


def check_line(line: Line, out: Path, ledger_url: str, killed: str) -> None:
    passed = [(card, unit) for card, state, unit in line.results if state == "passed"]
    units = [unit for _, unit in passed]
    assert len(units) == len(set(units)), "a unit went onto two cards"
    for card, unit in passed:
        assert holds_its_unit(card, out, unit), f"{card} does not hold {unit}'s key"
    with open_ledger(ledger_url) as ledger:
        records = ledger.records()
        assert not [r for r in records if r["state"] == "writing"], "an attempt was left open"
        assert {r["unit"] for r in records if r["state"] == "passed"} == set(units)
        interrupted = [r for r in records if r["state"] == "interrupted"]
        assert any(r["target"] == killed for r in interrupted), "the killed card is not interrupted"
        assert {r["fingerprint"] for r in interrupted} <= ledger.retired()
        assert ledger.counts()["passed"] == len(units)
        ids = [r["attempt"] for r in records]
        assert len(ids) == len(set(ids))


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
def test_three_stations_share_a_postgresql_ledger(make_image, tmp_path):
    cards = 60
    base, out = emit_units(make_image, tmp_path, cards + 6)
    with PostgresServer() as pg, Rig(6) as rig:
        url = pg.create_database("line")
        s = rig.slots
        line = Line(
            ["--base", str(base), "--units", str(out), "--ledger", url, "--no-fsck"],
            {"st1": s[0:2], "st2": s[2:4], "st3": s[4:6]},
        )
        try:
            for name in line.slots:
                line.start(name)
            killed = drive(
                rig,
                line,
                cards,
                base.stat().st_size,
                tmp_path,
                kill="st2",
                at_kill=12,
                restart_db=lambda: pg.restart(down=1.0),
                at_restart=30,
            )
        finally:
            codes = {name: proc.stop() for name, proc in line.procs.items()}
        assert codes == {"st1": 0, "st2": 0, "st3": 0}
        check_line(line, out, url, killed)
        assert any(e["event"] == "ledger" for p in line.procs.values() for e in p.events), (
            "the lost database was never shown"
        )


def test_one_station_with_the_sqlite_ledger(make_image, tmp_path):
    cards = 10
    base, out = emit_units(make_image, tmp_path, cards + 2)
    with Rig(2) as rig:
        line = Line(["--base", str(base), "--units", str(out), "--no-fsck"], {"st1": rig.slots})
        try:
            line.start("st1")
            killed = drive(rig, line, cards, base.stat().st_size, tmp_path, kill="st1", at_kill=4)
        finally:
            code = line.procs["st1"].stop()
        assert code == 0
        check_line(line, out, str(out / "ledger.sqlite"), killed)
