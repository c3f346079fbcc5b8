"""One flash: each target paired with its own unit, every target checked before any is opened for
writing, every attempt in the ledger from its start, the cards written in parallel, each read
back bypassing the page cache and verified read-only against its unit's public key."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EnvironmentProblem, ImageToolsError, UsageError
from ..image import ImageSource
from ..verify import verify_image
from .ledger import Ledger, is_url, open_ledger
from .plan import Plan
from .readback import expected_of, read_back
from .targets import TargetInfo, check_targets
from .writer import Interrupted, write_plan

Progress = Callable[[str, str, int, int], None]  # (target, phase, bytes done, bytes total)


@dataclass
class Card:
    """One target and what it gets, through one attempt."""

    info: TargetInfo
    plan: Plan
    ledger: Ledger
    attempt: int = 0
    fd: int = -1
    fresh: bool = False
    state: str = "failed"
    error: str | None = None
    bytes_written: int = 0
    zeroing: str | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)


def flash(
    pairs: list[tuple[str, Plan]],
    *,
    ledger: str | os.PathLike | None = None,
    again: bool = False,
    fsck: bool = True,
    readback: bool = True,
    progress: Progress | None = None,
    allow_fixed_disk: bool = False,
    stop: threading.Event | None = None,
    station: str | None = None,
) -> list[dict[str, Any]]:
    """Each (target, plan) written, read back, verified, recorded; returns the ledger's records
    of these attempts. Refusals (UsageError, EnvironmentProblem) come before any byte is written
    to any target; a card that fails is its record, not an exception."""
    _one_unit_one_card(pairs)
    protected = sorted({p for _, plan in pairs for p in plan.inputs})
    ledgers = _ledgers(pairs, ledger, station)
    try:
        protected += [lg.path for lg in ledgers.values()]
        try:
            infos = check_targets(
                [t for t, _ in pairs], protected, max(plan.size for _, plan in pairs), allow_fixed_disk=allow_fixed_disk
            )
        except ImageToolsError as exc:
            for target, plan in pairs:
                _refused(ledgers[_ledger_path(plan, ledger)], target, plan, exc)
            raise
        cards = [Card(info, plan, ledgers[_ledger_path(plan, ledger)]) for info, (_, plan) in zip(infos, pairs)]
        _begin_all(cards, again)
        _open_all(cards)
        _run_all(cards, fsck=fsck, readback=readback, progress=progress, stop=stop)
        return [card.ledger.record(card.attempt) for card in cards]
    finally:
        for lg in ledgers.values():
            lg.close()


def flash_allocated(
    target: str,
    plan: Plan,
    ledger: Ledger,
    attempt: int,
    *,
    fsck: bool = True,
    readback: bool = True,
    progress: Progress | None = None,
    allow_fixed_disk: bool = False,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """One card for an attempt the ledger has already begun (the station service allocates the
    unit and its attempt in one transaction): checked, written, read back, verified, ended.
    A refused target ends the attempt as refused (the unit stays free) and raises."""
    try:
        (info,) = check_targets([target], plan.inputs + (ledger.path,), plan.size, allow_fixed_disk=allow_fixed_disk)
        card = Card(info, plan, ledger, attempt)
        card.fd, card.fresh = _open_for_writing(info, plan.size)
    except BaseException as exc:
        ledger.end(attempt, "refused", error=f"not written: {exc}")
        raise
    _flash_one(card, fsck, readback, progress, stop)
    return ledger.record(attempt)


def _one_unit_one_card(pairs: list[tuple[str, Plan]]) -> None:
    if not pairs:
        raise UsageError("give at least one TARGET")
    seen: dict[str, str] = {}
    for target, plan in pairs:
        other = seen.setdefault(plan.unit.fingerprint, target)
        if other != target:
            raise UsageError(
                f"unit {plan.unit.name} is given for {other} and {target}: one unit goes onto "
                "one card; pair each target with its own unit (--card TARGET UNIT_DIR)"
            )


def _ledger_path(plan: Plan, ledger: str | os.PathLike | None) -> str:
    path = ledger or plan.ledger
    if path is None:
        raise UsageError("no ledger for this flash: give --ledger PATH")
    return os.fspath(path) if is_url(path) else os.path.abspath(path)


def _ledgers(pairs: list[tuple[str, Plan]], ledger: str | os.PathLike | None, station: str | None) -> dict[str, Ledger]:
    opened: dict[str, Ledger] = {}
    try:
        for _, plan in pairs:
            path = _ledger_path(plan, ledger)
            if path not in opened:
                opened[path] = _open_ledger(path, station)
    except BaseException:
        for lg in opened.values():
            lg.close()
        raise
    return opened


def _open_ledger(path: str, station: str | None) -> Ledger:
    return open_ledger(path, station=station)  # a read-only OUT is the ledger's EnvironmentProblem


def _begin_all(cards: list[Card], again: bool) -> None:
    """Every card's attempt recorded as started, or none: a refusal ends those already begun."""
    for i, card in enumerate(cards):
        try:
            _begin(card, again)
        except BaseException as exc:
            if isinstance(exc, ImageToolsError):
                _refused(card.ledger, card.info.path, card.plan, exc)
            for begun in cards[:i]:
                begun.ledger.end(begun.attempt, "refused", error=f"not written: {exc}")
            raise


def _refused(ledger: Ledger, target: str, plan: Plan, exc: ImageToolsError) -> None:
    """A refusal is an attempt too: the ledger shows every card a station was asked to write."""
    unit = plan.unit
    ledger.refuse(
        unit=unit.name,
        fingerprint=unit.fingerprint,
        base_sha256=unit.base_sha256,
        target=target,
        error=str(exc),
        pinned=unit.pinned,
    )


def _begin(card: Card, again: bool) -> None:
    unit = card.plan.unit
    card.attempt = card.ledger.begin(
        unit=unit.name,
        fingerprint=unit.fingerprint,
        base_sha256=unit.base_sha256,
        target=card.info.path,
        serial=card.info.serial,
        pinned=unit.pinned,
        identity=unit.identity,
        again=again,
    )


def _open_all(cards: list[Card]) -> None:
    """Every target opened for writing, or none (and their attempts ended as not written)."""
    try:
        for card in cards:
            card.fd, card.fresh = _open_for_writing(card.info, card.plan.size)
    except BaseException as exc:
        for card in cards:
            if card.fd >= 0:
                os.close(card.fd)
            card.ledger.end(card.attempt, "refused", error=f"not written: {exc}")
        raise


def _open_for_writing(info: TargetInfo, size: int) -> tuple[int, bool]:
    """(fd, fresh: a file created here or found empty, all holes). A file that will hold a key
    is 0600 from its first byte; a card is opened O_EXCL (nobody else has it open)."""
    try:
        if info.kind == "new":
            fd = os.open(info.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        elif info.kind == "block":
            fd = os.open(info.path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
        else:
            fd = os.open(info.path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot open {info.path} for writing: {exc.strerror} (in use or mounted?)") from None
    st = os.fstat(fd)
    if (info.kind == "block" and st.st_rdev != info.rdev) or (
        info.kind == "file" and (st.st_dev, st.st_ino) != info.dev_ino
    ):
        os.close(fd)
        raise UsageError(f"{info.path} changed between its check and its opening: give the target again")
    if info.kind == "file":
        os.fchmod(fd, 0o600)
    fresh = info.kind == "new" or (info.kind == "file" and info.size == 0)
    if fresh:
        os.ftruncate(fd, size)
    return fd, fresh


def _run_all(
    cards: list[Card], *, fsck: bool, readback: bool, progress: Progress | None, stop: threading.Event | None
) -> None:
    """A plain thread per card: a pool would add ~4 ms to every flash's start."""
    threads = [threading.Thread(target=_flash_one, args=(card, fsck, readback, progress, stop)) for card in cards]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _flash_one(card: Card, fsck: bool, readback: bool, progress: Progress | None, stop: threading.Event | None) -> None:
    """Write, flush, read back, verify; the attempt ends passed, failed or interrupted whatever
    happens (a card's failure never escapes as an exception)."""
    target, plan = card.info.path, card.plan
    started = time.monotonic()
    try:
        try:  # the card is opened once: written, read back and verified on one descriptor
            tell = (lambda n: progress(target, "writing", n, plan.total)) if progress else (lambda n: None)
            card.bytes_written, card.zeroing = write_plan(plan, card.fd, tell, fresh=card.fresh, stop=stop)
            card.times["write"] = _lap(started)
            if readback:
                _read_back(card, progress)
                card.times["readback"] = _lap(started) - card.times["write"]
            if progress:
                progress(target, "verifying", plan.total, plan.total)
            report = verify_image(ImageSource(target, fd=card.fd), expected=plan.unit.public_key, fsck=fsck)
        finally:
            os.close(card.fd)
        card.checks = [c.to_dict() for c in report.checks]
        card.state = "passed" if report.ok else "failed"
        if not report.ok:
            card.error = "verify failed: " + "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
    except Interrupted:
        card.state, card.error = (
            "interrupted",
            (
                f"interrupted: {target} is not finished and unit "
                f"{plan.unit.name} is retired; flash the card again with another unit"
            ),
        )
    except ImageToolsError as exc:
        card.error = str(exc)
    except OSError as exc:
        card.error = f"{target}: {exc.strerror or exc}"
    except BaseException as exc:  # the attempt must end whatever happened; never a lost record
        card.error = f"{target}: unexpected {type(exc).__name__}: {exc}"
    card.times["total"] = _lap(started)
    card.ledger.end(
        card.attempt,
        card.state,
        error=card.error,
        bytes_written=card.bytes_written,
        zeroing=card.zeroing,
        checks=card.checks,
        times=card.times,
    )


def _read_back(card: Card, progress: Progress | None) -> None:
    plan = card.plan
    tell = (lambda n: progress(card.info.path, "reading back", n, plan.total)) if progress else (lambda n: None)
    read_back(card.fd, expected_of(plan, card.zeroing), tell, card.info.path)


def _lap(since: float) -> float:
    return round(time.monotonic() - since, 3)


def summary(records: list[dict[str, Any]]) -> dict[str, int]:
    return {"cards": len(records), "ok": sum(r["ok"] for r in records), "failed": sum(not r["ok"] for r in records)}


def export(records: list[dict[str, Any]], log: Path) -> None:
    """--log: the same records, one JSON line each, appended (the ledger is the authority)."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
