"""`imagetools flash`, `materialize` and `preauth merge`: the flashing station and scale-out."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from ..envelope import envelope
from ..errors import ImageToolsError, UsageError, VerifyFailed, from_oserror
from .base import echo, is_tty, main, print_envelope, print_json_line, print_table
from .bases import base_input


@main.command("flash")
@base_input("base", remote=True)
@click.argument("base", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("targets", nargs=-1)
@click.option(
    "--unit",
    "unit_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The unit directory emit published for the one TARGET.",
)
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A private key to inject on the fly for the one TARGET, instead of a unit.",
)
@click.option(
    "--card",
    "cards",
    nargs=2,
    multiple=True,
    metavar="TARGET UNIT_DIR",
    help="A target and its own unit; repeat for several slots (written in parallel).",
)
@click.option(
    "--trust",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Pin the batch's public key (a copy of OUT/batch.pub kept by the station): "
    "units signed by any other key are refused.",
)
@click.option(
    "--ledger",
    metavar="PATH|URL",
    help="The ledger of every attempt (default: ledger.sqlite in the unit's OUT; "
    "name one when OUT is read-only; postgresql://... for a line's shared ledger).",
)
@click.option(
    "--log",
    "log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also append each attempt's record to this JSON-lines file.",
)
@click.option("--again", is_flag=True, help="Flash a unit the ledger shows as passed once more.")
@click.option("--no-fsck", is_flag=True, help="Skip e2fsck in the final verify.")
@click.option("--no-readback", is_flag=True, help="Skip reading the card back after writing.")
@click.option("--allow-fixed-disk", is_flag=True, help="Allow a non-removable disk as a target.")
@click.option(
    "--station", "station_name", metavar="NAME", help="This station's name in the ledger (default: the host name)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--serve", is_flag=True, help="Stay up: read one request per line on stdin, answer each with a JSON line."
)
def flash_command(
    base: Path,
    targets: tuple[str, ...],
    unit_dir: Path | None,
    key_file: Path | None,
    cards: tuple[tuple[str, str], ...],
    trust: Path | None,
    ledger: str | None,
    log: Path | None,
    again: bool,
    no_fsck: bool,
    no_readback: bool,
    allow_fixed_disk: bool,
    station_name: str | None,
    as_json: bool,
    serve: bool,
) -> None:
    """Write BASE and a unit onto each card, then read it back and verify it.

    Each TARGET (a card's block device, or an image file, created if missing) gets its own unit:
    `flash BASE TARGET --unit OUT/u1` for one card, `--card TARGET OUT/u1 --card TARGET2 OUT/u2`
    for several slots at once (written in parallel). A unit's signature is checked against
    OUT/batch.pub (or the key pinned with --trust) before anything is written; a target that is
    the base, an input, mounted, swap, or a fixed disk is refused. Only BASE's mapped blocks, the
    unit's blocks and the zeros the filesystems need are written, each range checked against its
    sha256; the card is then read back bypassing the page cache and verified read-only.

    Every attempt is recorded in the ledger (OUT/ledger.sqlite): a unit that passed is not flashed
    again without --again; a unit whose key went onto a card that failed or was interrupted is
    retired and never flashed again. Exit 0 if every card passed, 1 if a card failed or was
    interrupted, 2 for a refused request, 3 for a host problem.

    With --serve, requests come on stdin, one JSON object per line:
    {"cards": [{"target": "/dev/sdb", "unit": "OUT/u1"}], "again": false}; each gets one JSON
    reply line (the --json envelope with "request": N, and "error" when refused), preceded by
    {"progress": {...}} lines while its cards are written.

    \b
    Examples:
      imagetools flash base.sdimg /dev/sdb --unit OUT/unit0001
      imagetools flash base.sdimg --card /dev/sdb OUT/unit0001 --card /dev/sdc OUT/unit0002
      imagetools flash base.sdimg --serve --trust station/batch.pub

    Full reference: docs/commands/flash.md
    """
    from ..station import flash as station

    options: dict[str, Any] = dict(
        ledger=ledger,
        fsck=not no_fsck,
        readback=not no_readback,
        allow_fixed_disk=allow_fixed_disk,
        station=station_name,
    )
    if serve:
        if targets or unit_dir or key_file or cards or as_json:
            raise UsageError("--serve takes the targets and the units from its requests: give BASE only")
        return _serve(base, trust, log, again, options)
    pairs = _pairs(targets, unit_dir, key_file, cards)
    stop = _stop_on_signals()
    plans = [(t, _plan(base, unit, key, trust)) for t, unit, key in pairs]
    bars = _Bars([t for t, _, _ in pairs]) if is_tty() and not as_json else None
    records = station.flash(plans, again=again, progress=bars.update if bars else None, stop=stop, **options)
    if log is not None:
        station.export(records, log)
    _report(records, as_json)
    failed = [r for r in records if not r["ok"]]
    if failed:
        raise VerifyFailed(
            f"{len(failed)} of {len(records)} card(s) failed, e.g. {failed[0]['target']}: {failed[0]['error']}"
        )


def _pairs(
    targets: tuple[str, ...], unit_dir: Path | None, key_file: Path | None, cards: tuple[tuple[str, str], ...]
) -> list[tuple[str, str | None, str | None]]:
    """(target, unit, key) per card: one unit goes onto one card."""
    if cards:
        if targets or unit_dir or key_file:
            raise UsageError("give either --card TARGET UNIT_DIR (repeatable) or TARGET with --unit/--key")
        return [(t, u, None) for t, u in cards]
    if not targets:
        raise UsageError("give a TARGET with --unit UNIT_DIR (or --key KEY), or --card TARGET UNIT_DIR")
    if (unit_dir is None) == (key_file is None):
        raise UsageError("give exactly one of --unit UNIT_DIR and --key KEY")
    if len(targets) > 1:
        raise UsageError(
            f"{len(targets)} targets for one unit: one unit goes onto one card; pair each "
            "target with its own unit: --card TARGET UNIT_DIR --card TARGET2 UNIT_DIR2"
        )
    return [(targets[0], str(unit_dir) if unit_dir else None, str(key_file) if key_file else None)]


def _plan(base: Path, unit: str | None, key: str | None, trust: Path | None):
    from ..station.plan import plan_key, plan_unit

    if unit:
        return plan_unit(base, unit, trust)
    assert key is not None  # each card names a unit or a key (checked when it was read)
    return plan_key(base, key)


def _report(records: list[dict], as_json: bool) -> None:
    from ..station.flash import summary

    if as_json:
        print_envelope("flash", all(r["ok"] for r in records), records, summary(records))
        return
    print_table(
        ["target", "unit", "fingerprint", "serial", "seconds", "result"],
        [
            (
                r["target"],
                r["unit"],
                r["fingerprint"][:16],
                r["serial"],
                (r["times"] or {}).get("total"),
                "ok" if r["ok"] else r["error"],
            )
            for r in records
        ],
    )


def _stop_on_signals() -> threading.Event:
    """SIGTERM and Ctrl-C stop the cards at their next chunk: each is then recorded as
    interrupted (never a card that looks finished, never an attempt left open)."""
    stop = threading.Event()

    def handler(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _serve(base: Path, trust: Path | None, log: Path | None, again: bool, options: dict) -> None:
    """The station process that stays up: each request line gets one JSON line back (the
    envelope of `flash --json`, with "request": its number, and "error" for a refused request),
    whatever goes wrong inside it; progress lines ({"progress": ...}) come while cards are
    written. SIGTERM ends the station after the cards in flight. Exit 1 at the end of input if
    any request failed."""
    from ..station import flash as station
    from ..station.protocol import MAX_REQUEST, parse_request

    stop = _stop_on_signals()
    failed, count = [], 0
    for count, line in enumerate(_lines(sys.stdin.buffer, MAX_REQUEST), 1):
        try:
            request = parse_request(line)
            plans = [(c.target, _plan(base, c.unit, c.key, trust)) for c in request.cards]
            records = station.flash(
                plans, again=again or request.again, progress=_progress_lines(count), stop=stop, **options
            )
            if log is not None:
                station.export(records, log)
        except Exception as exc:  # every request gets its one reply, whatever went wrong
            error = _request_error(exc)
            print_json_line(envelope("flash", False, [], station.summary([]), request=count, error=error))
            failed.append((count, error))
            continue
        ok = all(r["ok"] for r in records)
        print_json_line(envelope("flash", ok, records, station.summary(records), request=count))
        if not ok:
            failed.append((count, next(r["error"] for r in records if not r["ok"])))
        if stop.is_set():
            break
    if failed:
        number, why = failed[0]
        raise VerifyFailed(f"{len(failed)} of {count} request(s) failed, e.g. request {number}: {why}")


def _request_error(exc: Exception) -> str:
    if isinstance(exc, ImageToolsError):
        return str(exc)
    if isinstance(exc, OSError):
        return str(from_oserror(exc, "request", UsageError))
    return f"internal error: {type(exc).__name__}: {exc}"


def _progress_lines(request: int):
    """A progress line per card at most every half second: phase, bytes, MB/s."""
    started = time.monotonic()
    last: dict[tuple[str, str], float] = {}  # (target, phase) -> when it was last told

    def tell(target: str, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last.get((target, phase), 0.0) < 0.5 and done < total:
            return
        last[(target, phase)] = now
        rate = done / max(now - started, 1e-6) / 1e6
        print_json_line(
            {
                "progress": {
                    "request": request,
                    "target": target,
                    "phase": phase,
                    "bytes": done,
                    "total": total,
                    "mb_per_s": round(rate, 1),
                }
            }
        )

    return tell


def _lines(stream, limit: int):
    """The lines of stream without their newline; a line over limit comes out cut at limit + 1
    bytes (so it is refused), the rest of it skipped."""
    while line := stream.readline(limit + 1):
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := stream.readline(limit + 1)) and not rest.endswith(b"\n"):
                pass
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield line


class _Bars:
    """One progress line per target on the terminal, redrawn in place: phase, MB/s, ETA."""

    def __init__(self, targets: list[str]):
        self.targets, self.started = targets, time.monotonic()
        self.state = {t: ("waiting", 0, 1) for t in targets}
        self.lock = threading.Lock()
        sys.stderr.write("\n" * len(targets))

    def update(self, target: str, phase: str, done: int, total: int) -> None:
        with self.lock:
            self.state[target] = (phase, done, max(total, 1))
            lines = [self._line(t, *self.state[t]) for t in self.targets]
            sys.stderr.write(f"\x1b[{len(lines)}F" + "\n".join(lines) + "\n")
            sys.stderr.flush()

    def _line(self, target: str, phase: str, done: int, total: int) -> str:
        rate = done / max(time.monotonic() - self.started, 1e-6)
        eta = f"{(total - done) / rate:4.0f}s" if rate and done < total else "   -"
        filled = int(30 * done / total)
        return (
            f"{target[-24:]:<24} {phase:<12} [{'#' * filled}{'-' * (30 - filled)}] "
            f"{100 * done // total:3d}% {rate / 1e6:6.1f} MB/s ETA {eta}"
        )


@main.command("materialize")
@base_input("base")
@click.argument("unit_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out_image", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--base",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The base the unit was made from (default: the one its emit run recorded).",
)
@click.option("--force", is_flag=True, help="Replace an existing OUT_IMAGE.")
@click.option(
    "--trust",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Pin the batch's public key instead of the unit's OUT/batch.pub.",
)
def materialize_command(unit_dir: Path, out_image: Path, base: Path | None, force: bool, trust: Path | None) -> None:
    """Write a delta unit's full sparse image and its .bmap (verified, e2fsck included). The
    unit's signature is checked first; OUT_IMAGE may not be the base or one of the unit's files.

    Full reference: docs/commands/materialize.md
    """
    from ..published import base_of, materialize

    report = materialize(unit_dir, out_image, base or base_of(unit_dir), force=force, trust=trust)
    echo(f"wrote {out_image} and {out_image}.bmap (verified, key SHA256 {report.fingerprint})")


@click.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The merged preauth file to write.",
)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def merge_command(inputs: tuple[Path, ...], output: Path, force: bool) -> None:
    """Join shards' preauth files (or OUT directories holding preauth.json) into one; refuses
    duplicate names, identities and public keys.

    Full reference: docs/commands/preauth.md
    """
    from ..merge import merge

    files = [p / "preauth.json" if p.is_dir() else p for p in inputs]
    units = merge(files, output, force=force)
    echo(f"merged {len(units)} unit(s) from {len(files)} file(s) into {output}")


def _attach_merge() -> None:
    """`preauth merge` joins the `preauth` group of server_cmd, without importing it here: flash
    and materialize must not pay for the server client (httpx, ~50 ms of a station's flash).
    The CLI loads server_cmd and then this module for `preauth`; whichever came first, the group
    gets the command when it is looked up."""
    server_cmd = sys.modules.get(f"{__package__}.server_cmd")
    if server_cmd is not None:
        server_cmd.preauth.add_command(merge_command)
    lookup = main.get_command

    def get_command(ctx: click.Context, name: str) -> click.Command | None:
        command = lookup(ctx, name)
        if name == "preauth" and isinstance(command, click.Group) and "merge" not in command.commands:
            command.add_command(merge_command)
        return command

    main.get_command = get_command  # type: ignore[method-assign]


_attach_merge()
