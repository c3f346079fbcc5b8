"""Preauthorize units: one POST per unit through an API version (server.APIS), at most `jobs` at a
time. Re-running is safe: our key already there for the identity counts as done."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum

from ..errors import ServerError, UsageError
from ..server import APIS, MenderClient, PreauthApi, preauth_api
from ..server.api import Created, Taken
from ..server.shapes import matches, short_fingerprint
from .runs import GOOD_STATUSES, aborts, run_all
from .units import Unit


class Outcome(StrEnum):
    PREAUTHORIZED = "preauthorized"  # 201
    ALREADY = "already"  # 409, and the server holds our key for the identity
    CONFLICT = "conflict"  # 409 with another key
    FAILED = "failed"  # the server refused this unit
    DRY_RUN = "dry-run"


OUTCOMES = (Outcome.PREAUTHORIZED, Outcome.ALREADY, Outcome.CONFLICT, Outcome.FAILED)


@dataclass
class PushResult:
    name: str
    identity: dict[str, str]
    fingerprint: str
    outcome: Outcome
    detail: str = ""
    device_id: str | None = None
    device_status: str | None = None

    def __post_init__(self) -> None:
        self.outcome = Outcome(self.outcome)

    def to_dict(self) -> dict:
        return asdict(self)


def push(
    client: MenderClient | None,
    units: list[Unit],
    *,
    force: bool = False,
    api: str = "v2",
    jobs: int = 4,
    dry_run: bool = False,
    progress: Callable[[PushResult], None] | None = None,
) -> list[PushResult]:
    """One POST per unit, at most ``jobs`` at a time. Unit-level refusals become 'failed' results;
    authentication failures and an unreachable server abort the run (ServerError)."""
    version = preauth_api(api)
    if force and not version.force:
        with_force = " or ".join(a.name for a in APIS.values() if a.force)
        raise UsageError(f"--force needs the {with_force} API; the {version.long_name} has no force flag")
    if dry_run:
        return [
            PushResult(
                u.name,
                u.identity,
                u.fingerprint,
                Outcome.DRY_RUN,
                f"would POST {version.title}" + (" with force" if force else ""),
            )
            for u in units
        ]
    if client is None:
        raise UsageError("preauthorizing needs a server connection (only a dry run works without)")
    return run_all(lambda unit: _guarded(version, client, unit, force), units, jobs, progress)


def summarize(results: list[PushResult]) -> dict[str, int]:
    return {outcome: sum(r.outcome == outcome for r in results) for outcome in OUTCOMES}


def _guarded(version: PreauthApi, client: MenderClient, unit: Unit, force: bool) -> PushResult:
    """A refusal with an HTTP status fails this unit only. No status (no server), refused
    credentials or an answer breaking the API (BadResponse) abort the run."""
    try:
        answer = version.preauthorize(client, unit.identity, unit.pem, unit.pubkey, force)
    except ServerError as exc:
        if aborts(exc):
            raise
        return PushResult(unit.name, unit.identity, unit.fingerprint, Outcome.FAILED, str(exc))
    if isinstance(answer, Created):
        return PushResult(
            unit.name,
            unit.identity,
            unit.fingerprint,
            Outcome.PREAUTHORIZED,
            answer.detail,
            answer.device_id,
            "preauthorized",
        )
    return _judge_conflict(unit, answer)


def _judge_conflict(unit: Unit, taken: Taken) -> PushResult:
    """409: our key already preauthorized/accepted → 'already'; anything else is a conflict."""
    mine = [status for pem, status in taken.sets if matches(pem, unit.pubkey)]
    base = (unit.name, unit.identity, unit.fingerprint)
    device_id, device_status = taken.device_id, taken.device_status
    good = [s for s in mine if s in GOOD_STATUSES]
    if good:
        return PushResult(*base, Outcome.ALREADY, f"same key already {good[0]}", device_id, device_status)
    if mine:
        detail = (
            f"our key is on device {device_id} but its auth set is {mine[0]}; "
            f"accept it on the server or push again with --force"
        )
    else:
        theirs = ", ".join(short_fingerprint(pem) for pem, _ in taken.sets) or "none readable"
        detail = (
            f"device {device_id or '?'} ({device_status or 'unknown status'}) already has this identity "
            f"with a different key ({theirs}); push with --force to replace it"
        )
    return PushResult(*base, Outcome.CONFLICT, detail, device_id, device_status)
