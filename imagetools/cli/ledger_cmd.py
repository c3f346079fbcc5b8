"""`imagetools ledger report` and `ledger register`: what a line flashed, and what it may still take."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..station.ledger import REPORT_STATES
from .base import echo, main, print_envelope, print_table
from .server_options import ServerAccess, server_options

_LEDGER_HELP = (
    "The ledger: an SQLite file or a postgresql:// URL (default with --units: OUT/ledger.sqlite). "
    "A password in the URL is never shown; PGPASSWORD or ~/.pgpass keep it off the command line."
)
_UNITS_HELP = "An emit OUT: its units are registered first (signature-checked), so never-flashed units show."
_TRUST_HELP = "Check the units' signatures against this batch public key (a kept copy of OUT/batch.pub)."
CSV_FIELDS = (
    "name",
    "identity",
    "fingerprint",
    "state",
    "unit_state",
    "serial",
    "station",
    "slot",
    "target",
    "started",
    "ended",
    "bytes_written",
    "error",
)


@main.group("ledger")
def ledger_group() -> None:
    """The line's ledger: every card's attempt, and the units stations take from it.

    The ledger is an SQLite file (one host) or a PostgreSQL database that every station of a
    line shares (docs/line-postgresql.md). Exit codes: 0 ok, 2 bad input, 3 ledger unreachable.

    Full reference: docs/ledger.md
    """


@ledger_group.command("report")
@click.option("--ledger", "where", metavar="PATH|URL", help=_LEDGER_HELP)
@click.option("--units", "out", type=click.Path(file_okay=False, path_type=Path), metavar="OUT", help=_UNITS_HELP)
@click.option("--trust", type=click.Path(dir_okay=False, path_type=Path), metavar="BATCH.pub", help=_TRUST_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as the JSON envelope (schema ledger-report).")
@click.option("--csv", "as_csv", is_flag=True, help="Print a header and one CSV row per unit.")
@server_options(optional=True)
def report_command(
    server: ServerAccess | None, where: str | None, out: Path | None, trust: Path | None, as_json: bool, as_csv: bool
) -> None:
    """One row per unit: its state, and the card, station, slot and times of the attempt that
    decides it.

    States: free (never taken), writing (a card is being written now), passed (its key shipped
    on a card that passed), failed or interrupted (its key went onto a card that did not pass:
    the unit is retired, never flashed again). unit_state in --json and --csv is the ledger's
    own: free, passed or retired. Units seen only in attempts (flashed by hand, not
    registered) are listed too.

    With --server, a preauthorized column says whether the Mender Server holds each unit's
    identity with its key, preauthorized or accepted (true, false, or unknown for a unit whose
    identity the ledger lacks); the server's device list is read once.

    \b
    Examples:
      imagetools ledger report --units OUT
      imagetools ledger report --ledger postgresql://line@db.factory/line --units OUT --csv > line.csv
      imagetools ledger report --ledger OUT/ledger.sqlite --json
      imagetools ledger report --units OUT --server https://mender.example.com

    Full reference: docs/ledger.md
    """
    if as_json and as_csv:
        raise UsageError("give --json or --csv, not both")
    with _opened(where, out, trust, create=out is not None) as (led, entries):
        led.register(entries)
        rows, counts = led.report(), led.counts()
        path = led.path
    summary = {
        "units": len(rows),
        **{s: sum(r["state"] == s for r in rows) for s in REPORT_STATES},
        **{k: counts[k] for k in ("retired", "per_hour", "stations")},
    }
    facts: dict[str, Any] = {"ledger": path}
    if server is not None:
        facts["server"] = _mark_preauthorized(server, rows)
        summary["preauthorized"] = sum(r["preauthorized"] is True for r in rows)
    if as_json:
        print_envelope("ledger-report", True, rows, summary, **facts)
    elif as_csv:
        _print_csv(rows, server is not None)
    else:
        _print_human(rows, summary, facts)


@ledger_group.command("register")
@click.option(
    "--units",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="OUT",
    required=True,
    help="The emit OUT whose units go into the ledger (each signature-checked first).",
)
@click.option("--ledger", "where", metavar="PATH|URL", help=_LEDGER_HELP)
@click.option("--trust", type=click.Path(dir_okay=False, path_type=Path), metavar="BATCH.pub", help=_TRUST_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as the JSON envelope (ledger-register).")
def register_command(out: Path, where: str | None, trust: Path | None, as_json: bool) -> None:
    """Put OUT's units into the ledger, so stations can take them (`imagetools station`).

    Registering again is harmless: units already there are kept. A unit whose name is in the
    ledger with another key (or whose key is there under another name) is refused, and nothing
    is registered.

    \b
    Examples:
      imagetools ledger register --units OUT
      imagetools ledger register --units OUT --ledger postgresql://line@db.factory/line --trust batch.pub

    Full reference: docs/ledger.md
    """
    with _opened(where, out, trust, create=True) as (led, entries):
        new = led.register(entries)
        path = led.path
    if as_json:
        print_envelope(
            "ledger-register",
            True,
            [{"name": e.name, "fingerprint": e.fingerprint} for e in entries],
            {"units": len(entries), "new": new},
            ledger=path,
        )
    else:
        echo(f"registered {new} new unit(s) of {len(entries)} in {out} into ledger {path}")


@contextmanager
def _opened(where: str | None, out: Path | None, trust: Path | None, *, create: bool) -> Iterator[tuple[Any, list]]:
    """The ledger named (or OUT's own), and OUT's units (signature-checked) when given."""
    from ..station.ledger import Ledger, is_url, open_ledger

    if where is None:
        if out is None:
            raise UsageError("give --ledger PATH|URL or --units OUT (whose ledger is OUT/ledger.sqlite)")
        where = str(out / "ledger.sqlite")
    if not create and not is_url(where) and not os.path.lexists(where):
        raise UsageError(
            f"ledger {where} does not exist; name the ledger with --ledger, or give --units OUT "
            "to report on OUT's units"
        )
    entries = Ledger.units_of(out, trust) if out is not None else []
    with open_ledger(where) as led:
        yield led, entries


def _mark_preauthorized(server: ServerAccess, rows: list[dict[str, Any]]) -> str:
    """Each row's `preauthorized` (True, False, None: unknown) from one walk over the server's
    devices, as `preauth status` reads them; returns the server's URL."""
    from ..preauth.status import preauthorized

    with server.client() as client:
        marks = preauthorized(client, [(r["identity"], r["fingerprint"]) for r in rows])
    for row, mark in zip(rows, marks, strict=True):
        row["preauthorized"] = mark
    return server.settings().url


def _said(mark: bool | None) -> str:
    """A preauthorized mark as the table and the CSV write it."""
    return "unknown" if mark is None else str(mark).lower()


def _print_human(rows: list[dict[str, Any]], summary: dict[str, Any], facts: dict[str, Any]) -> None:
    asked = "server" in facts
    print_table(
        ["UNIT", "STATE", "SERIAL", "STATION", "SLOT", "ENDED", "BYTES", "KEY", "IDENTITY"]
        + (["PREAUTHORIZED"] if asked else []),
        [
            [
                r["name"],
                r["state"],
                r["serial"],
                r["station"],
                r["slot"],
                r["ended"] or r["started"],
                r["bytes_written"],
                (r["fingerprint"] or "")[:16] or None,
                _identity(r["identity"]),
            ]
            + ([_said(r["preauthorized"])] if asked else [])
            for r in rows
        ],
    )
    echo(
        f"{summary['units']} unit(s) in ledger {facts['ledger']}: {summary['passed']} passed, "
        f"{summary['free']} free, {summary['writing']} writing, {summary['failed']} failed, "
        f"{summary['interrupted']} interrupted; {summary['per_hour']} cards/hour over the last 10 minutes"
        + (f"; {summary['preauthorized']} preauthorized on {facts['server']}" if asked else "")
    )


def _identity(identity: dict[str, Any] | None) -> str | None:
    if not identity:
        return None
    return " ".join(f"{k}={v}" for k, v in sorted(identity.items()))


def _print_csv(rows: list[dict[str, Any]], asked: bool) -> None:
    from ..preauth import spreadsheet_safe

    fields = CSV_FIELDS + (("preauthorized",) if asked else ())
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for r in rows:
        cells = [
            json.dumps(r[f], sort_keys=True)
            if f == "identity" and r[f] is not None
            else _said(r[f])
            if f == "preauthorized"
            else r[f]
            for f in fields
        ]
        writer.writerow([spreadsheet_safe("" if c is None else str(c)) for c in cells])
    click.echo(buf.getvalue(), nl=False)
