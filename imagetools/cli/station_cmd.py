"""`imagetools flash`, `materialize` and `preauth merge`: the flashing station and scale-out."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import ImageToolsError, UsageError, VerifyFailed, from_oserror
from .base import echo, envelope, is_tty, main, print_envelope, print_json_line, print_table


@main.command("flash")
@click.argument("base", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("targets", nargs=-1)
@click.option("--unit", "unit_dir", type=click.Path(file_okay=False, path_type=Path),
              help="A unit directory emit published (--format delta or image).")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A private key to inject on the fly instead of a unit.")
@click.option("--log", "log", type=click.Path(dir_okay=False, path_type=Path),
              help="Station log (JSON lines): one record per card; refuses a unit already flashed.")
@click.option("--again", is_flag=True, help="Flash a unit the log shows as flashed already.")
@click.option("--no-fsck", is_flag=True, help="Skip e2fsck in the final verify.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--serve", is_flag=True,
              help="Stay up: read one request per line on stdin, answer each with a JSON line.")
def flash_command(base: Path, targets: tuple[str, ...], unit_dir: Path | None, key_file: Path | None,
                  log: Path | None, again: bool, no_fsck: bool, as_json: bool, serve: bool) -> None:
    """Write BASE's mapped blocks and the unit's blocks to each TARGET (block device or file,
    created if missing), checking every range's sha256; then verify each TARGET read-only.
    Several TARGETs are written in parallel. Exit 1 if any card fails. With --serve, the
    targets and the unit come in requests on stdin instead (see the README)."""
    from ..station import flash as station

    if serve:
        if targets or unit_dir or key_file or as_json:
            raise UsageError("--serve takes the targets and the unit from its requests: give BASE only")
        return _serve(base, log, again, not no_fsck)
    if not targets:
        raise UsageError("give at least one TARGET")
    if (unit_dir is None) == (key_file is None):
        raise UsageError("give exactly one of --unit UNIT_DIR and --key KEY")
    plan = station.plan_unit(base, unit_dir) if unit_dir else station.plan_key(base, key_file)
    bars = _Bars(list(targets)) if is_tty() and not as_json else None
    results = station.flash(plan, list(targets), log=log, again=again, fsck=not no_fsck,
                            progress=bars.update if bars else None)
    if bars:
        bars.done()
    if as_json:
        print_envelope("flash", all(r.ok for r in results), [r.to_dict() for r in results], _summary(results))
    else:
        print_table(["target", "unit", "fingerprint", "serial", "seconds", "result"],
                    [(r.target, r.unit, r.fingerprint[:16], r.serial, r.times.get("total"),
                      "ok" if r.ok else r.error) for r in results])
    failed = [r for r in results if not r.ok]
    if failed:
        raise VerifyFailed(f"{len(failed)} of {len(results)} card(s) failed, e.g. {failed[0].target}: "
                           f"{failed[0].error}")


def _summary(results: list) -> dict[str, int]:
    return {"cards": len(results), "ok": sum(r.ok for r in results), "failed": sum(not r.ok for r in results)}


def _serve(base: Path, log: Path | None, again: bool, fsck: bool) -> None:
    """The station process that stays up: each request line gets one JSON line back (the
    envelope of `flash --json`, with "request": its number, and "error" for a refused request);
    a bad request is refused and the next one is served. Exit 1 at the end of input if any
    request failed."""
    from ..station import flash as station

    failed, count = [], 0
    for count, line in enumerate(_lines(sys.stdin.buffer, station.MAX_REQUEST), 1):
        try:
            request = station.parse_request(line)
            plan = (station.plan_unit(base, request.unit) if request.unit
                    else station.plan_key(base, request.key))
            results = station.flash(plan, list(request.targets), log=log, again=again or request.again,
                                    fsck=fsck)
        except (ImageToolsError, OSError) as exc:
            error = str(exc if isinstance(exc, ImageToolsError) else from_oserror(exc, "request", UsageError))
            print_json_line(envelope("flash", False, [], _summary([]), request=count, error=error))
            failed.append((count, error))
            continue
        ok = all(r.ok for r in results)
        print_json_line(envelope("flash", ok, [r.to_dict() for r in results], _summary(results), request=count))
        if not ok:
            failed.append((count, next(r.error for r in results if not r.ok)))
    if failed:
        number, why = failed[0]
        raise VerifyFailed(f"{len(failed)} of {count} request(s) failed, e.g. request {number}: {why}")


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
    """One progress line per target on the terminal, redrawn in place."""

    def __init__(self, targets: list[str]):
        self.targets, self.state = targets, {t: (0, 1) for t in targets}
        sys.stderr.write("\n" * len(targets))

    def update(self, target: str, done: int, total: int) -> None:
        self.state[target] = (done, max(total, 1))
        lines = []
        for t in self.targets:
            d, n = self.state[t]
            filled = int(30 * d / n)
            lines.append(f"{t[-30:]:<30} [{'#' * filled}{'-' * (30 - filled)}] {100 * d // n:3d}%")
        sys.stderr.write(f"\x1b[{len(lines)}F" + "\n".join(lines) + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.flush()


@main.command("materialize")
@click.argument("unit_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out_image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--base", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The base the unit was made from (default: the one its emit run recorded).")
@click.option("--force", is_flag=True, help="Replace an existing OUT_IMAGE.")
def materialize_command(unit_dir: Path, out_image: Path, base: Path | None, force: bool) -> None:
    """Write a delta unit's full sparse image and its .bmap (verified, e2fsck included)."""
    from ..published import base_of, materialize

    report = materialize(unit_dir, out_image, base or base_of(unit_dir), force=force)
    echo(f"wrote {out_image} and {out_image}.bmap (verified, key SHA256 {report.fingerprint})")


@click.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The merged preauth file to write.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def merge_command(inputs: tuple[Path, ...], output: Path, force: bool) -> None:
    """Join shards' preauth files (or OUT directories holding preauth.json) into one; refuses
    duplicate names, identities and public keys."""
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
