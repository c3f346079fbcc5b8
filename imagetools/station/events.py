"""What a running station shows: one tile per slot and the last events, as plain data.

The station service is the only writer; the terminal and the web dashboard are readers of the
same board, so the two front ends can never disagree. Readers poll `version` (cheap) or block in
`wait`, then take a `snapshot`, a JSON-ready dict that holds no key material and no paths of
unit files.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

MAX_EVENTS = 20
# A tile's state; "done" is a card found holding a passed unit of this ledger (never rewritten).
TILE_STATES = (
    "empty",
    "mounted",
    "waiting",
    "writing",
    "reading back",
    "verifying",
    "passed",
    "failed",
    "interrupted",
    "done",
)


@dataclass(frozen=True)
class Tile:
    """One slot as the operator sees it."""

    slot: str
    station: str
    state: str = "empty"
    unit: str | None = None
    identity: dict[str, Any] | None = None
    serial: str | None = None
    done: int = 0
    total: int = 0
    rate: float = 0.0  # bytes per second of the current phase
    reason: str | None = None  # why a card failed, or why the slot waits
    since: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Event:
    """One line of the line's history: a card noticed, taken, passed, failed, pulled..."""

    time: float
    station: str
    slot: str
    kind: str
    unit: str | None = None
    message: str = ""
    detail: dict[str, Any] | None = None  # numbers for programs (a card's seconds, ...)


class Board:
    """Tiles and events of one station; thread-safe, with a version that grows on every change."""

    def __init__(self, station: str, slots: list[str], counts: Callable[[], dict[str, Any]] | None = None) -> None:
        self.station = station
        self._tiles = {slot: Tile(slot, station) for slot in slots}
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._counts = counts
        self._cond = threading.Condition()
        self.version = 0

    def tile(self, slot: str) -> Tile:
        with self._cond:
            return self._tiles[slot]

    def set(self, slot: str, state: str, **changes: Any) -> Tile:
        """A new state for SLOT (its progress reset unless given)."""
        if state not in TILE_STATES:
            raise ValueError(f"unknown tile state {state!r}")
        with self._cond:
            old = self._tiles[slot]
            keep = {} if state == old.state else {"since": old.since}
            tile = replace(old, state=state, done=0, total=0, rate=0.0, reason=None, since=time.time())
            self._tiles[slot] = replace(tile, **{**keep, **changes})
            self._changed()
            return self._tiles[slot]

    def progress(self, slot: str, done: int, total: int, rate: float) -> None:
        with self._cond:
            self._tiles[slot] = replace(self._tiles[slot], done=done, total=total, rate=rate)
            self._changed()

    def event(
        self, slot: str, kind: str, unit: str | None = None, message: str = "", detail: dict[str, Any] | None = None
    ) -> Event:
        event = Event(time.time(), self.station, slot, kind, unit, message, detail)
        with self._cond:
            self._events.append(event)
            self._changed()
        return event

    def wait(self, version: int, timeout: float) -> int:
        """Block until the board changes past VERSION (or TIMEOUT seconds); the new version."""
        with self._cond:
            self._cond.wait_for(lambda: self.version != version, timeout=max(0.0, min(timeout, 60.0)))
            return self.version

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            tiles = [asdict(t) for t in self._tiles.values()]
            events = [asdict(e) for e in reversed(self._events)]
            version = self.version
        counts = self._counts() if self._counts else {}
        return {"station": self.station, "version": version, "tiles": tiles, "events": events, "counts": counts}

    def _changed(self) -> None:
        self.version += 1
        self._cond.notify_all()
