"""What the station ledger says of a batch's keys, for the server side: preauthorize what shipped,
never a retired key, and take retired keys off the server.

A key shipped when it went onto a card that passed; it is retired when it went onto a card that
failed or was interrupted (that card may be in a bin or in a pocket: the key must never be let
onto the server). Keys are matched by fingerprint, never by unit name. The ledger is read here,
never created: a path that does not exist is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..mender import canonical_identity
from .identity import identity_problems
from .remove import Target, removal_targets
from .units import Unit


@dataclass(frozen=True)
class LedgerKeys:
    """A ledger's view of its units' keys, by fingerprint; `rows` are its report rows."""

    where: str  # the ledger as messages name it (a URL without its password)
    passed: frozenset[str]
    retired: frozenset[str]
    rows: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Selection:
    """The units of a push, and those left out, by why."""

    push: list[Unit]
    not_flashed: list[Unit]  # no card passed with its key yet (only with shipped_only)
    retired: list[Unit]

    def counts(self) -> dict[str, int]:
        """The summary's counts of left-out units, under the words the note uses."""
        return {"not-flashed": len(self.not_flashed), "retired": len(self.retired)}


def read_ledger(where: str | os.PathLike) -> LedgerKeys:
    """The keys of the ledger at `where` (an SQLite file or a postgresql:// URL)."""
    from ..station.ledger import is_url, open_ledger

    if not is_url(where) and not os.path.lexists(where):
        raise UsageError(
            f"ledger {where} does not exist; name the ledger the stations write "
            "(OUT/ledger.sqlite, or the line's postgresql:// URL)"
        )
    with open_ledger(where) as led:
        rows = tuple(led.report())
        path = led.path
    return LedgerKeys(path, _keys(rows, "passed"), _keys(rows, "retired"), rows)


def ledger_beside(source: str | os.PathLike) -> Path | None:
    """The ledger of the emit OUT that `source` is (or holds the preauth file), when a station has
    written one there (OUT/ledger.sqlite); else None."""
    from ..station.plan import LEDGER_FILE

    path = Path(source).absolute()
    ledger = (path if path.is_dir() else path.parent) / LEDGER_FILE
    return ledger if os.path.lexists(ledger) else None


def select(units: list[Unit], keys: LedgerKeys, *, shipped_only: bool) -> Selection:
    """The units to push: with shipped_only those whose key passed onto a card, else all but the
    retired ones."""
    retired = [u for u in units if u.fingerprint in keys.retired]
    if shipped_only:
        push = [u for u in units if u.fingerprint in keys.passed]
        not_flashed = [u for u in units if u.fingerprint not in keys.passed | keys.retired]
    else:
        push, not_flashed = [u for u in units if u.fingerprint not in keys.retired], []
    return Selection(push, not_flashed, retired)


def retired_targets(keys: LedgerKeys, units: list[Unit] | None = None) -> tuple[list[Target], list[str]]:
    """Removal targets for the retired units: of `units` (keys from their preauth files) when
    given, else every retired unit of the ledger by its identity there and its fingerprint.
    Also the names of retired units whose identity the ledger lacks or that no client could
    send (they cannot be looked up on the server)."""
    if units is not None:
        return removal_targets([u for u in units if u.fingerprint in keys.retired], []), []
    found: dict[str, Target] = {}
    unknown = []
    for row in keys.rows:
        if row["unit_state"] != "retired" or not row["fingerprint"]:
            continue
        identity = row["identity"]
        if not identity or list(identity_problems(identity)):
            unknown.append(row["name"] or row["fingerprint"][:16])
            continue
        known = found.get(canonical_identity(identity))
        fingerprints = (known.fingerprints if known else ()) + (row["fingerprint"],)
        found[canonical_identity(identity)] = Target(
            dict(identity), name=known.name if known else row["name"], fingerprints=fingerprints
        )
    return list(found.values()), unknown


def _keys(rows: tuple[dict[str, Any], ...], state: str) -> frozenset[str]:
    return frozenset(r["fingerprint"] for r in rows if r["unit_state"] == state and r["fingerprint"])
