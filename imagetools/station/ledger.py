"""The station ledger: every flash attempt of a unit onto a card, and the units a line may take.

`open_ledger` gives the backend a path or URL names: an SQLite file beside the units (one host)
or a PostgreSQL database (every station of a line). The shared methods are in ledger_base, the
rules in ledger_rules; their schema and meaning are documented in docs/ledger.md.
"""

from __future__ import annotations

import os
import socket
from typing import TypeGuard

from .ledger_base import KILLED, SCHEMA_VERSION, Allocation, Ledger, UnitEntry
from .ledger_rules import REPORT_STATES, _line

__all__ = ["KILLED", "REPORT_STATES", "SCHEMA_VERSION", "Allocation", "Ledger", "UnitEntry", "is_url", "open_ledger"]

URL_SCHEMES = ("postgresql://", "postgres://")


def open_ledger(where: str | os.PathLike, *, station: str | None = None) -> Ledger:
    """The ledger at `where`: an SQLite file path, or a postgresql:// URL (a line's shared
    database); created or migrated to this schema, this host's dead attempts reaped."""
    if is_url(where):
        from .ledger_pg import PostgresLedger

        return PostgresLedger.connect(where, _line(station or socket.gethostname()) or "")
    from .ledger_sqlite import SqliteLedger

    return SqliteLedger.connect(os.fspath(where), _line(station or socket.gethostname()) or "")


def is_url(where: str | os.PathLike) -> TypeGuard[str]:
    """Whether `where` names a PostgreSQL ledger rather than a file."""
    return isinstance(where, str) and where.startswith(URL_SCHEMES)
