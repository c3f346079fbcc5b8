"""A one-line progress display for batch commands on a terminal.

Honest numbers: the rate and ETA come from a moving window of the units that finished work
(skipped, already published units finish instantly and would inflate both), and the line is
drawn from the first second, with a spinner until the first unit finishes (the base is hashed
and the first units built before any is published). A thread redraws it, so it moves while a
slow unit is being built. The caller shows it only on a terminal.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import IO

from .text import escape

SPINNER = "|/-\\"
WINDOW = 32          # finished units the rate is measured over
_TICK = 0.2          # seconds between redraws
_BAR = 24


def duration(seconds: float) -> str:
    """'42s', '3m05s', '2h10m'."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """`with Progress(total, stream) as p: ... p.update(done, name, status, worked)`."""

    def __init__(self, total: int, stream: IO[str], label: str = "emitting") -> None:
        self.total, self.stream, self.label = total, stream, label
        self.started = time.monotonic()
        self.done, self.skipped, self.last = 0, 0, ""
        self.finished: collections.deque[float] = collections.deque([self.started], maxlen=WINDOW + 1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.stream.write("\r\x1b[K")
        self.stream.flush()

    def update(self, done: int, name: str, status: str, worked: bool) -> None:
        """A unit finished; worked=False for one that was only re-checked (skipped)."""
        with self._lock:
            self.done, self.last = done, f"{escape(name)} {status}"
            if worked:
                self.finished.append(time.monotonic())
            else:
                self.skipped += 1
        self.draw()

    def rate(self) -> float | None:
        """Units per second over the window (from the run's start until it is full)."""
        times = self.finished
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])

    def line(self, now: float) -> str:
        with self._lock:
            rate, left = self.rate(), self.total - self.done
            elapsed = duration(now - self.started)
            if rate is None:
                spin = SPINNER[int((now - self.started) / _TICK) % len(SPINNER)]
                skipped = f", {self.skipped} already done" if self.skipped else ""
                return f"{self.label} {spin} {self.done}/{self.total}{skipped}, {elapsed}, first unit in progress"
            filled = _BAR * self.done // max(self.total, 1)
            eta = max(0.0, left / rate - (now - self.finished[-1]))
            return (f"{self.label} [{'#' * filled}{'.' * (_BAR - filled)}] {self.done}/{self.total} "
                    f"{rate * 60:.1f} units/min, ETA {duration(eta)}, {elapsed}, last {self.last}")

    def draw(self) -> None:
        self.stream.write("\r" + self.line(time.monotonic()) + "\x1b[K")
        self.stream.flush()

    def _run(self) -> None:
        self.draw()
        while not self._stop.wait(_TICK):
            self.draw()
