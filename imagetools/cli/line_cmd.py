"""`imagetools station`: the long-running station of a production line."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import click

from ..errors import UsageError
from .base import echo, main
from .bases import base_input

TOKEN_ENV = "IMAGETOOLS_UI_TOKEN"


@main.command("station")
@base_input("base", remote=True)
@click.option(
    "--base",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The base image every unit of OUT was made from.",
)
@click.option(
    "--units",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The OUT directory of `imagetools emit` (its signed units).",
)
@click.option(
    "--slot",
    "slots",
    multiple=True,
    required=True,
    metavar="DEVICE",
    help="A card reader's device node (/dev/sdX; a loop device in tests); repeat per slot.",
)
@click.option(
    "--ledger",
    metavar="PATH|URL",
    help="The ledger: a SQLite file (default OUT/ledger.sqlite) or postgresql://... shared by the stations of a line.",
)
@click.option("--name", "name", metavar="NAME", help="This station's name in the ledger (default: the host name).")
@click.option(
    "--trust",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Pin the batch's public key: units signed by another key are refused.",
)
@click.option(
    "--ui",
    metavar="HOST:PORT",
    help="Serve the read-only dashboard there (e.g. 127.0.0.1:8080). Beyond localhost it needs "
    f"a token: in ${TOKEN_ENV} or --ui-token-file.",
)
@click.option(
    "--ui-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file holding the dashboard's token (never given on the command line).",
)
@click.option(
    "--labels",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write a label (PNG with a QR code of identity and key fingerprint) per passed card here.",
)
@click.option(
    "--drain",
    type=click.FloatRange(0, 3600),
    default=120.0,
    show_default=True,
    help="Seconds cards in flight get to finish after SIGTERM or Ctrl-C; then they are "
    "stopped and recorded as interrupted.",
)
@click.option("--no-fsck", is_flag=True, help="Skip e2fsck in each card's final verify.")
@click.option("--no-readback", is_flag=True, help="Skip reading each card back after writing.")
@click.option("--allow-fixed-disk", is_flag=True, help="Allow non-removable disks as slots.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON line.")
def station_command(
    base: Path,
    units: Path,
    slots: tuple[str, ...],
    ledger: str | None,
    name: str | None,
    trust: Path | None,
    ui: str | None,
    ui_token_file: Path | None,
    labels: Path | None,
    drain: float,
    no_fsck: bool,
    no_readback: bool,
    allow_fixed_disk: bool,
    as_json: bool,
) -> None:
    """Take cards as operators insert them: each gets the next free unit of the ledger.

    A slot holds a card when its device reports a size above zero. Each new card is checked
    (a mounted card is shown, never written; a card that already holds a unit that passed is
    shown as done), gets the next free unit (exactly once across every station sharing the
    ledger), is written, read back and verified like `flash`, and its result stays on show
    until the card is pulled. Slots work in parallel.

    SIGTERM or Ctrl-C: no new cards; cards in flight finish (or are stopped after --drain
    seconds and recorded as interrupted); exit 0. A second Ctrl-C stops them at once. A
    restarted station resumes from the ledger. With a ledger on PostgreSQL that goes away,
    new cards wait (the reason is shown) and the station retries.

    \b
    Examples:
      imagetools station --base base.sdimg --units out --slot /dev/sdb --slot /dev/sdc
      imagetools station --base base.sdimg --units out --slot /dev/sdb \\
          --ledger postgresql://line@db.factory/line --name st1 --ui 0.0.0.0:8080 --ui-token-file t
    Exit codes: 0 stopped, 2 bad options or units, 3 a host problem (ledger, slots).

    Full reference: docs/station.md
    """
    from ..station.service import Config, Station

    config = Config(
        str(base),
        str(units),
        tuple(slots),
        name or socket.gethostname(),
        ledger,
        str(trust) if trust else None,
        not no_fsck,
        not no_readback,
        str(labels) if labels else None,
        drain,
        allow_fixed_disk,
    )
    if labels:
        os.makedirs(labels, exist_ok=True)
    station = Station(config, on_event=_printer(as_json))
    try:
        web = _dashboard(station, ui, ui_token_file)
        _announce(station, web.url if web else None)
        _stop_on_signals(station)
        try:
            station.run()
        finally:
            if web is not None:
                web.stop()
    finally:
        station.close()


def _printer(as_json: bool):
    """The terminal front end: one line per event of the board."""

    def show(event) -> None:
        if as_json:
            echo(
                json.dumps(
                    {
                        "time": event.time,
                        "station": event.station,
                        "slot": event.slot,
                        "event": event.kind,
                        "unit": event.unit,
                        "message": event.message,
                        **({"detail": event.detail} if event.detail else {}),
                    }
                )
            )
        else:
            clock = time.strftime("%H:%M:%S", time.localtime(event.time))
            echo(f"{clock} {event.slot or '-'} {event.kind:<11} {event.unit or ''} {event.message}".rstrip())

    return show


def _announce(station, url: str | None) -> None:
    counts = station.counts()
    where = f"; dashboard at {url}" if url else ""
    echo(
        f"station {station.config.name}: {len(station.config.slots)} slot(s), "
        f"{counts.get('free', '?')} unit(s) free, {station.registered} newly registered{where}",
        err=True,
    )


def _dashboard(station, ui: str | None, token_file: Path | None):
    if ui is None:
        if token_file is not None:
            raise UsageError("--ui-token-file needs --ui HOST:PORT")
        return None
    host, sep, port = ui.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ui {ui!r}: give HOST:PORT, e.g. 127.0.0.1:8080")
    from ..station.web import serve_board

    return serve_board(station.board, host=host.strip("[]") or "127.0.0.1", port=int(port), token=_token(token_file))


def _token(token_file: Path | None) -> str | None:
    if token_file is None:
        return os.environ.get(TOKEN_ENV) or None
    from ..strict import read_regular

    token = read_regular(token_file, 4096, "the dashboard token file").decode("utf-8", "replace").strip()
    if not token:
        raise UsageError(f"{token_file} is empty: put the dashboard's token in it")
    return token


def _stop_on_signals(station) -> None:
    """First SIGTERM/Ctrl-C: no new cards, in-flight ones finish. Second: stop them now."""

    def handler(signum, frame) -> None:
        if station.closing.is_set():
            station.abort.set()
        station.closing.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
