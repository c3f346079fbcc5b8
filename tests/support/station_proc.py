"""A real `imagetools station` process for tests: started with --json, its events collected
from stdout as they come, stopped with a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class StationProcess:
    """`imagetools station ARGS --json`; `events` grows while it runs."""

    def __init__(self, *args: str | Path, env: dict[str, str] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._lock = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imagetools", "station", *map(str, args), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 60.0) -> Any:
        """The first true value of PREDICATE(events), re-checked on each new event."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = predicate(self.events)
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"station: condition not met in {timeout} s; events "
                        f"{self.events[-8:]}, stderr {''.join(self.stderr)[-2000:]}"
                    )
                self._lock.wait(min(left, 0.5))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def _read(self, stream, events: bool) -> None:
        for line in stream:
            with self._lock:
                if events and line.startswith("{"):
                    self.events.append(json.loads(line))
                else:
                    self.stderr.append(line)
                self._lock.notify_all()


def ended(
    events: list[dict[str, Any]], slot: str, kinds: tuple[str, ...] = ("passed", "failed", "interrupted")
) -> list:
    """The events of SLOT that end a card."""
    return [e for e in events if e["slot"] == slot and e["event"] in kinds]
