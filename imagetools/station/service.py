"""The station service: cards are taken as operators insert them, each gets the next free unit
of the ledger, and what happens is on the board until the card is pulled.

One thread per slot, each a small loop over the card in its slot: empty → noticed → (mounted |
already done | allocated → written → read back → verified) → shown until pulled. A unit is
taken in the ledger's allocation transaction, so stations sharing a ledger never take the same
one. The ledger may go away (PostgreSQL restarted): every call to it is retried with a visible
reason, and allocation carries a token, so a retry never takes a second unit.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ..errors import ImageToolsError, LedgerUnavailable, UsageError
from ..published import block_map, require_base
from ..verify import verify_image
from .events import Board, Event
from .flash import flash_allocated
from .ledger import Ledger, open_ledger
from .plan import LEDGER_FILE, Plan, plan_unit
from .targets import device_serial, slot_busy, slot_card
from .watcher import Watcher

FINAL = frozenset({"passed", "failed", "interrupted", "done"})  # shown until the card is pulled
PHASES = {"writing": "writing", "reading back": "reading back", "verifying": "verifying"}
RETRY_MAX = 5.0  # seconds between two tries of an unreachable ledger
NO_UNIT_RETRY = 2.0  # seconds before a waiting card asks the ledger again
COUNTS_TTL = 1.0  # the line's counts are read from the ledger at most this often
PROGRESS_EVERY = 0.25  # seconds between two progress updates of a tile
_UNIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Config:
    """What a station runs with (the CLI's options)."""

    base: str
    units: str
    slots: tuple[str, ...]
    name: str
    ledger: str | None = None
    trust: str | None = None
    fsck: bool = True
    readback: bool = True
    labels: str | None = None
    drain: float = 120.0  # seconds in-flight cards get to finish after a stop
    allow_fixed_disk: bool = False


class Station:
    """A running station: its ledger, its board, one worker per slot."""

    def __init__(self, config: Config, on_event: Callable[[Event], None] | None = None) -> None:
        _check_slots(config.slots)
        require_base(config.base)
        self.config = config
        self.base_sha256 = block_map(config.base).sha256
        self._on_event = on_event
        self.closing = threading.Event()  # no new cards
        self.abort = threading.Event()  # cards in flight stop (recorded as interrupted)
        self.watcher = Watcher()
        self.ledger = _Patient(
            open_ledger(config.ledger or os.path.join(config.units, LEDGER_FILE), station=config.name), self
        )
        try:
            self.registered = self.ledger.register(Ledger.units_of(config.units, config.trust))
        except BaseException:
            self.close()
            raise
        self._counts: tuple[float, dict[str, Any]] = (0.0, {})
        self._retry_at: dict[str, float] = {}
        self._card_seq: dict[str, int | None] = {}  # the disk sequence of the card each tile shows
        self.board = Board(config.name, list(config.slots), self.counts)

    def run(self) -> None:
        """Serve the slots until `closing` is set, then let cards in flight finish (or be
        interrupted after the drain bound) and return."""
        workers = [threading.Thread(target=self._slot, args=(slot,), name=f"slot {slot}") for slot in self.config.slots]
        for worker in workers:
            worker.start()
        while not self.closing.wait(0.5):  # a timed wait lets signal handlers run
            pass
        deadline = time.monotonic() + self.config.drain
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self.abort.set()
        for worker in workers:
            worker.join()

    def close(self) -> None:
        self.watcher.close()
        self.ledger.close()

    def counts(self) -> dict[str, Any]:
        """The line's counts and last attempts, read from the ledger at most once a second."""
        at, counts = self._counts
        if time.monotonic() - at > COUNTS_TTL:
            try:
                inner = self.ledger.inner
                counts = {**inner.counts(), "recent": inner.recent(20)}
            except LedgerUnavailable as exc:
                counts = {**counts, "ledger": str(exc)}
            self._counts = (time.monotonic(), counts)
        return counts

    def event(
        self, slot: str, kind: str, unit: str | None = None, message: str = "", detail: dict[str, Any] | None = None
    ) -> None:
        event = self.board.event(slot, kind, unit, message, detail)
        if self._on_event is not None:
            self._on_event(event)

    def _slot(self, slot: str) -> None:
        """One slot's loop; a card's failure is its tile, never the end of the loop."""
        while not self.closing.is_set():
            try:
                self._look(slot)
            except LedgerUnavailable:
                pass  # only an allocation after a stop gives up (no new cards): the loop ends
            except ImageToolsError as exc:
                self.board.set(slot, "failed", reason=str(exc))
                self.event(slot, "failed", None, str(exc))
            self.watcher.wait()

    def _look(self, slot: str) -> None:
        state = self.board.tile(slot).state
        size, seq = slot_card(slot) or (0, None)
        if size == 0 or seq != self._card_seq.setdefault(slot, seq):
            self._card_seq[slot] = seq
            if state != "empty":
                self.board.set(slot, "empty", unit=None, identity=None, serial=None)
                self.event(slot, "pulled")
            if size == 0:
                return
            state = "empty"
        if state in FINAL:
            return
        busy = slot_busy(slot)
        if busy is not None:
            if state != "mounted":
                self.board.set(slot, "mounted", reason=busy)
                self.event(slot, "mounted", None, f"{busy}: not written while mounted")
            return
        if state in ("empty", "mounted") and self._holds_passed(slot):
            return
        if state == "waiting" and time.monotonic() < self._retry_at.get(slot, 0.0):
            return
        self._take(slot)

    def _holds_passed(self, slot: str) -> bool:
        """A card that already holds a unit this ledger shows as passed is done, not rewritten
        (a station restarted with its cards in, a card put back by mistake)."""
        try:
            found = verify_image(slot, fsck=False).fingerprint
        except (ImageToolsError, OSError):
            return False
        if found is None or self.ledger.unit_state(found) != "passed":
            return False
        self.board.set(slot, "done", reason="holds a unit that passed")
        self.event(slot, "done", None, "this card already holds a unit that passed: pull it")
        return True

    def _take(self, slot: str) -> None:
        """The next free unit onto the card in SLOT."""
        started = time.monotonic()
        serial = _serial(slot)
        allocation = self.ledger.allocate(
            slot=slot,
            target=slot,
            serial=serial,
            base_sha256=self.base_sha256,
            pinned=self.config.trust is not None,
            token=uuid.uuid4().hex,
        )
        if allocation is None:
            self._retry_at[slot] = time.monotonic() + NO_UNIT_RETRY
            if self.board.tile(slot).state != "waiting":
                self.event(slot, "waiting", None, "no free unit left in the ledger")
            self.board.set(
                slot, "waiting", reason="no free unit left in the ledger", serial=serial, unit=None, identity=None
            )
            return
        unit = allocation.unit
        self.board.set(slot, "writing", unit=unit, identity=allocation.identity, serial=serial)
        self.event(slot, "taken", unit, f"unit {unit} for card {serial or slot}")
        plan = self._plan(slot, allocation)
        if plan is None:
            return
        record = flash_allocated(
            slot,
            plan,
            cast(Ledger, self.ledger),
            allocation.attempt,
            fsck=self.config.fsck,
            readback=self.config.readback,
            progress=self._progress(slot),
            allow_fixed_disk=self.config.allow_fixed_disk,
            stop=self.abort,
        )
        self._ended(slot, unit, record, time.monotonic() - started)

    def _plan(self, slot: str, allocation: Any) -> Plan | None:
        """The allocated unit's plan; a unit whose directory does not check out is failed (and
        so retired) before anything is written: its files are not what the ledger registered."""
        unit = allocation.unit
        try:
            if not _UNIT_NAME.fullmatch(unit):
                raise UsageError(f"the ledger names unit {unit!r}, which is not a unit directory name")
            plan = plan_unit(self.config.base, Path(self.config.units) / unit, self.config.trust)
            if plan.unit.fingerprint != allocation.fingerprint:
                raise UsageError(f"unit {unit}'s key is not the one the ledger registered for it")
        except ImageToolsError as exc:
            error = f"unit {unit} not written: {exc}"
            self.ledger.end(allocation.attempt, "failed", error=error)
            self.board.set(slot, "failed", unit=unit, reason=error)
            self.event(slot, "failed", unit, error)
            return None
        return plan

    def _ended(self, slot: str, unit: str, record: dict[str, Any], seconds: float) -> None:
        """The card's result on its tile; the event tells the card's seconds and how many of
        them were the station's own (allocation, plan, ledger, events), not the flash's."""
        state = record.get("state", "failed")
        reason = record.get("error")
        flash_seconds = float((record.get("times") or {}).get("total") or 0.0)
        self.board.set(slot, state if state in FINAL else "failed", reason=reason)
        self.event(
            slot,
            state,
            unit,
            reason or f"unit {unit} passed",
            {
                "seconds": round(seconds, 3),
                "station_seconds": round(seconds - flash_seconds, 3),
                "bytes_written": record.get("bytes_written"),
            },
        )
        if state == "passed" and self.config.labels:
            self._label(slot, unit, record)

    def _label(self, slot: str, unit: str, record: dict[str, Any]) -> None:
        from .labels import make_label  # Pillow and qrcode only for stations that print

        try:
            make_label(
                os.path.join(self.config.labels or "", f"{unit}.png"),
                unit=unit,
                identity=record.get("identity") or {},
                fingerprint=record.get("fingerprint", ""),
            )
        except (ImageToolsError, OSError) as exc:
            self.event(slot, "label", unit, f"no label: {exc}")

    def _progress(self, slot: str) -> Callable[[str, str, int, int], None]:
        """The flash's progress as the tile's phase, percent and MB/s (throttled)."""
        phase, told, start = "", 0.0, time.monotonic()

        def tell(target: str, now_phase: str, done: int, total: int) -> None:
            nonlocal phase, told, start
            now = time.monotonic()
            if now_phase != phase:
                phase, start = now_phase, now
                self.board.set(slot, PHASES.get(now_phase, "writing"))
            elif now - told < PROGRESS_EVERY and done < total:
                return
            told = now
            elapsed = now - start
            self.board.progress(slot, done, total, done / elapsed if elapsed > 0 else 0.0)

        return tell


class _Patient:
    """The ledger, each call retried while the ledger is unreachable, with the reason on every
    tile that waits for it; a stop gives up on allocations (no new cards) but never on ending
    an attempt, which must reach the ledger."""

    def __init__(self, ledger: Ledger, station: Station) -> None:
        self.inner = ledger
        self.path = ledger.path
        self._station = station
        self._told = ("", 0.0)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not callable(method) or name == "close":
            return method

        def patient(*args: Any, **kwargs: Any) -> Any:
            wait = 0.2
            while True:
                try:
                    return method(*args, **kwargs)
                except LedgerUnavailable as exc:
                    if name == "allocate" and self._station.closing.is_set():
                        raise
                    self._waiting(str(exc))
                    time.sleep(wait)
                    wait = min(wait * 2, RETRY_MAX)

        return patient

    def _waiting(self, why: str) -> None:
        """Told on the board when the reason changes, and every RETRY_MAX seconds while it lasts."""
        if self._told[0] == why and time.monotonic() - self._told[1] < RETRY_MAX:
            return
        self._told = (why, time.monotonic())
        if hasattr(self._station, "board"):
            self._station.event("", "ledger", None, f"{why}: retrying")


def _serial(slot: str) -> str | None:
    try:
        return device_serial(os.stat(slot).st_rdev)
    except OSError:
        return None


def _check_slots(slots: tuple[str, ...]) -> None:
    if not slots:
        raise UsageError("give at least one --slot DEVICE")
    seen: dict[int, str] = {}
    for slot in slots:
        if slot_card(slot) is None:
            raise UsageError(
                f"--slot {slot}: not a block device node (a card reader's /dev/sdX, or a loop device for tests)"
            )
        rdev = os.stat(slot).st_rdev
        if rdev in seen:
            raise UsageError(f"--slot {slot} is the same device as --slot {seen[rdev]}: give each slot once")
        seen[rdev] = slot
