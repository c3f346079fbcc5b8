"""Card readers for station tests: loop device nodes as slots, files of random bytes as cards.

A detached loop node reads size 0, as a USB reader without a card does, so attaching a card
file to a slot's node inserts the card and detaching it pulls the card. Slots are taken from
high loop numbers that `losetup -f` (used by other tests) does not reach for; a Rig detaches
exactly the nodes it attached. A node is claimed with a lock in /run/lock while a Rig holds it, so
tests running at once (mutation testing's workers) never share one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

FIRST_SLOT = 200
LOCKS = "/run/lock" if os.path.isdir("/run/lock") else "/tmp"


def random_card(path: Path, size: int) -> Path:
    """A used card: SIZE random bytes (a stale table, stale filesystems, stale journals)."""
    with open(path, "wb") as f:
        for pos in range(0, size, 1 << 20):
            f.write(os.urandom(min(1 << 20, size - pos)))
    return path


class Rig:
    """Slots on loop nodes /dev/loopN; `insert` and `pull` a card; `close` detaches them all."""

    def __init__(self, count: int, first: int = FIRST_SLOT) -> None:
        if not os.access("/dev/loop-control", os.W_OK) or shutil.which("losetup") is None:
            pytest.skip("no usable /dev/loop-control or losetup (needs root)")
        self._claims: list[int] = []
        self.slots = [self._free_node(first + 10 * i) for i in range(count)]
        self.cards: dict[str, Path] = {}

    def insert(self, slot: str, card: Path) -> None:
        done = subprocess.run(["losetup", slot, str(card)], capture_output=True, text=True)
        if done.returncode != 0:
            raise AssertionError(f"losetup {slot} {card}: {done.stderr.strip()}")
        self.cards[slot] = card

    def pull(self, slot: str) -> None:
        if self.cards.pop(slot, None) is not None:
            subprocess.run(["losetup", "-d", slot], check=True, capture_output=True)

    def close(self) -> None:
        for slot in list(self.cards):
            self.pull(slot)
        while self._claims:
            os.close(self._claims.pop())

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _free_node(self, start: int) -> str:
        """A loop node with nothing attached: its size reads 0 (created on first attach)."""
        for number in range(start, start + 10):
            node = f"/dev/loop{number}"
            if not self._claim(number):
                continue
            if not os.path.exists(f"/sys/block/loop{number}") or _size(number) == 0:
                if not os.path.exists(node):
                    self._create(node)
                return node
            os.close(self._claims.pop())  # attached by someone else
        pytest.skip(f"no free loop node in /dev/loop{start}..{start + 9}")

    def _claim(self, number: int) -> bool:
        fd = os.open(f"{LOCKS}/slot-loop{number}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._claims.append(fd)
        return True

    @staticmethod
    def _create(node: str) -> None:
        """Make the node exist while empty: attach a one-sector file and detach it again."""
        dummy = Path(f"/tmp/slot-node-{os.getpid()}")
        dummy.write_bytes(b"\0" * 512)
        try:
            subprocess.run(["losetup", node, str(dummy)], check=True, capture_output=True)
            subprocess.run(["losetup", "-d", node], check=True, capture_output=True)
        finally:
            dummy.unlink()


def _size(number: int) -> int:
    try:
        return int(Path(f"/sys/block/loop{number}/size").read_text())
    except (OSError, ValueError):
        return 0
