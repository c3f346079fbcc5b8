"""When a slot's card comes and goes: a slot holds a card when its device reports a size above
zero (an empty USB reader and a detached loop device both read 0).

Sizes are read from sysfs every POLL seconds, so a card is noticed well within a second on any host;
where a udev daemon runs, its block-device events wake the readers at once. Containers and
minimal hosts have no udev daemon: polling alone is then the watcher, not a fallback that is
never exercised.
"""

from __future__ import annotations

import os
import select
import threading
from typing import Any

POLL = 0.1  # seconds between two looks at a slot without udev (a sysfs read)
UDEV_CONTROL = "/run/udev/control"


class Watcher:
    """Wakes every waiter when udev reports a block device event, or after the poll interval."""

    def __init__(self, poll: float = POLL) -> None:
        self.poll = poll
        self._changed = threading.Condition()
        self._generation = 0
        self._closed = threading.Event()
        self._monitor = _udev_monitor()
        self._thread: threading.Thread | None = None
        if self._monitor is not None:
            self._thread = threading.Thread(target=self._listen, name="udev", daemon=True)
            self._thread.start()

    @property
    def udev(self) -> bool:
        return self._monitor is not None

    def wait(self, timeout: float | None = None) -> None:
        """Until a udev event or the poll interval (or TIMEOUT, if shorter) has passed."""
        limit = self.poll if timeout is None else min(timeout, self.poll)
        with self._changed:
            seen = self._generation
            self._changed.wait_for(lambda: self._generation != seen or self._closed.is_set(), limit)

    def close(self) -> None:
        self._closed.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(2 * self.poll + 1)

    def _listen(self) -> None:
        monitor = self._monitor
        assert monitor is not None
        while not self._closed.is_set():
            ready, _, _ = select.select([monitor.fileno()], [], [], self.poll)
            if ready and monitor.poll(timeout=0) is not None:
                with self._changed:
                    self._generation += 1
                    self._changed.notify_all()


def _udev_monitor() -> Any:
    """A netlink monitor of block devices when a udev daemon runs here, else None."""
    if not os.path.exists(UDEV_CONTROL):
        return None
    try:
        import pyudev

        monitor = pyudev.Monitor.from_netlink(pyudev.Context())
        monitor.filter_by("block")
        monitor.start()
        return monitor
    except (ImportError, OSError, ValueError):
        return None
