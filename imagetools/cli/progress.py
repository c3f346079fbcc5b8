"""A progress line for the batch commands (emit, preauth push and remove) that tells the truth: shown from
the first second, a spinner until the first unit finishes, then rate and ETA from a moving window
of the most recent finished units (a rate averaged since the start climbs for the whole run while
connections warm up, and its ETA is minutes off at the end). Drawn on stderr only when it is a
terminal and -q is not given (see base.is_tty); otherwise nothing is written at all.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from .base import is_tty

SPINNER = "|/-\\"
WINDOW = 20  # finished units the rate is taken over
TICK = 0.2  # seconds between redraws while nothing finishes (the spinner, the clock)


class Rate:
    """Units per second over the last WINDOW finished units (their finish times)."""

    def __init__(self, window: int = WINDOW, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.finished: collections.deque[float] = collections.deque(maxlen=window + 1)
        self.finished.append(self.started)

    def add(self) -> None:
        self.finished.append(self.clock())

    def per_second(self) -> float | None:
        """None until one unit finished; the start counts as the window's first mark until the
        window is full, so the first units' rate includes their full time."""
        if len(self.finished) < 2:
            return None
        span = self.finished[-1] - self.finished[0]
        return (len(self.finished) - 1) / span if span > 0 else None

    def eta(self, remaining: int) -> float | None:
        rate = self.per_second()
        return remaining / rate if rate else None


class ProgressLine:
    """`with ProgressLine("preauthorizing", total) as line: ... line.advance()` (thread-safe:
    preauth calls it from its worker threads)."""

    def __init__(self, label: str, total: int, unit: str = "units", stream: TextIO | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.enabled = is_tty()
        self.done = 0
        self.rate = Rate()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._frame = 0

    def __enter__(self) -> ProgressLine:
        if self.enabled:
            self._draw()
            self._ticker.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self._ticker.join()
        with self._lock:
            self.stream.write("\r\x1b[K")  # leave the line empty for the table or the error
            self.stream.flush()

    def advance(self, _result: object = None, *, worked: bool = True) -> None:
        """One unit finished (any outcome); usable directly as a library progress callback.
        worked=False for one that was only re-checked (emit's skipped units finish at once and
        would inflate the rate)."""
        with self._lock:
            self.done += 1
            if worked:
                self.rate.add()
        if self.enabled:
            self._draw()

    def text(self) -> str:
        elapsed = self.rate.clock() - self.rate.started
        head = f"{self.label} {self.done}/{self.total}"
        rate = self.rate.per_second()
        if rate is None:
            return f"{head} {SPINNER[self._frame % len(SPINNER)]} {elapsed:.0f}s"
        eta = self.rate.eta(self.total - self.done) or 0.0
        return f"{head} {rate * 60:.0f} {self.unit}/min, {elapsed:.0f}s elapsed, ETA {_clock(eta)}"

    def _draw(self) -> None:
        with self._lock:
            self.stream.write("\r\x1b[K" + self.text())
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            self._frame += 1
            self._draw()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"
