"""`imagetools emit`: one verified image per unit of a device list, plus preauth/report files."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import keys
from ..devices import load_devices
from ..emit import DryRun, EmitOptions, EmitResult, UnitFile, UnitFormat, dry_run, emit
from ..emit import shard as shard_devices
from ..errors import UsageError
from ..units import human_size
from .base import echo, main, print_envelope, print_table, units_failed, warn
from .bases import base_input
from .options import modify_options
from .progress import ProgressLine

FULL_TABLE_MAX = 50


def _unit_file_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--unit-file, given to the command as `unit_files` (parsed)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["unit_files"] = tuple(UnitFile.parse(text) for text in kwargs.pop("unit_file_specs"))
        return command(*args, **kwargs)

    return click.option(
        "--unit-file",
        "unit_file_specs",
        multiple=True,
        metavar="IMAGE_PATH=COLUMN[:MODE[:UID:GID]]",
        help="Write the unit's value of a device-list column (and a newline) to IMAGE_PATH "
        "(/data/... or rootfs A and B); mode 0644 and owner 0:0 unless given; "
        "COLUMN 'name' is the unit's name (repeatable).",
    )(wrapper)


@main.command("emit")
@base_input("base", remote=True)
@click.option(
    "--base",
    "base",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Base image (.sdimg, .uefiimg, .img ...); never modified.",
)
@click.option(
    "--devices",
    "devices",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Device list: CSV with a header (identity columns, optional name, key) or JSON.",
)
@click.option(
    "--out-dir",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory; re-running resumes there.",
)
@click.option(
    "--key-type",
    type=click.Choice(keys.KEY_TYPES),
    default="rsa",
    show_default=True,
    help="Type of the keys generated for units without a 'key' column.",
)
@click.option("--bits", type=int, default=keys.DEFAULT_RSA_BITS, show_default=True, help="RSA key size.")
@click.option("--curve", type=click.Choice(sorted(keys.CURVES)), default="p256", show_default=True, help="ECDSA curve.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, help="Worker processes (default: all cores).")
@click.option("--no-bmap", is_flag=True, help="Do not write .bmap files.")
@click.option(
    "--image-sha256",
    is_flag=True,
    help="Record each image unit's whole SHA-256 in unit.json (as sha256sum prints it). "
    "Off by default: an image unit's integrity record is its signed .bmap's range "
    "checksums, and the whole hash costs about a copy per unit. Implied by --no-bmap.",
)
@click.option(
    "--discard-private-keys",
    is_flag=True,
    help="Keep no private.key files: the only copy of each key is inside its image.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Accept a changed base image or settings: re-emit published units (keeping their keys).",
)
@click.option(
    "--format",
    "unit_format",
    type=click.Choice([f.value for f in UnitFormat]),
    default="image",
    show_default=True,
    help="image: a full image per unit; delta: only the blocks that differ "
    "from the base (flash or materialize it with the base).",
)
@click.option(
    "--shard",
    metavar="K/N",
    default=None,
    help="Emit only the K-th of N deterministic slices of the device list (1 <= K <= N).",
)
@click.option(
    "--allow-similar",
    is_flag=True,
    help="Accept identities that differ only in case or separators (02:00:... and 02-00-...).",
)
@modify_options(per_unit=True)
@_unit_file_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check and plan only: list what would be emitted or skipped and the space needed; "
    "write nothing (OUT is not even created).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def emit_command(
    base: Path,
    devices: Path,
    out_dir: Path,
    key_type: str,
    bits: int,
    curve: str,
    jobs: int | None,
    no_bmap: bool,
    image_sha256: bool,
    discard_private_keys: bool,
    force: bool,
    unit_format: str,
    shard: str | None,
    allow_similar: bool,
    as_json: bool,
    modify: Any,
    unit_files: tuple[UnitFile, ...],
    dry_run: bool,
) -> None:
    """Emit one ready-to-flash image per unit of the device list into OUT/<name>/ (image, .bmap,
    public.key, private.key, identity.json), plus OUT/preauth.json, preauth.csv and report.json.

    Every image is verified against its own public key before it is published. Interrupted runs
    resume: run the same command again.

    Full reference: docs/commands/emit.md
    """
    spec = keys.KeySpec(type=key_type, bits=bits, curve=curve)
    listed = load_devices(devices, allow_similar=allow_similar)
    if shard is not None:
        listed = shard_devices(listed, *_parse_shard(shard))
        if not listed:
            echo(f"shard {shard}: no unit of the device list falls in this slice")
            return
    options = EmitOptions(
        key_spec=spec,
        jobs=jobs,
        bmap=not no_bmap,
        discard_private_keys=discard_private_keys,
        force=force,
        format=unit_format,
        modify=modify,
        unit_files=unit_files,
        image_sha256=image_sha256,
    )
    if dry_run:
        return _dry_run(base, listed, out_dir, options, as_json)
    if as_json:
        result = emit(base, listed, out_dir, options)
    else:
        result = _with_progress(base, listed, out_dir, options)
    for message in result.warnings:
        warn(message)
    if as_json:
        _print_json(result.to_dict())
    else:
        _summary(result)
    failed = [(u.name, u.error or "") for u in result.units if u.status == "failed"]
    if failed:
        units_failed(failed, len(result.units), "failed", f"; they were not published (see {out_dir}/report.json)")


def _print_json(report: dict) -> None:
    """A run's or a dry run's report in the common envelope: its units are the items."""
    print_envelope("emit", report.pop("ok"), report.pop("units"), report.pop("summary"), **report)


def _parse_shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit()):
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. 3/8")
    return int(k), int(n)


def _with_progress(base: Path, listed, out_dir: Path, options: EmitOptions) -> EmitResult:
    """emit with a live status line on stderr, on a terminal only (see progress.ProgressLine)."""
    with ProgressLine("emitting", len(listed)) as line:
        return emit(
            base, listed, out_dir, options, progress=lambda r, _done, _total: line.advance(worked=r.status != "skipped")
        )


def _dry_run(base: Path, listed, out_dir: Path, options: EmitOptions, as_json: bool) -> None:
    """Exit 0 when a real run would emit without refusal, the same refusals otherwise, and 1
    when a published unit would fail its re-check (as the real run would report it)."""
    plan: DryRun = dry_run(base, listed, out_dir, options)
    for message in plan.warnings:
        warn(message)
    if as_json:
        _print_json(plan.to_dict())
    else:
        shown = plan.units if len(plan.units) <= FULL_TABLE_MAX else [u for u in plan.units if u.action != "skip"]
        print_table(["unit", "would", "detail"], [(u.name, u.action, u.detail) for u in shown[:FULL_TABLE_MAX]])
        echo()
        echo(
            f"dry run: would emit {plan.count('emit')}, re-emit {plan.count('re-emit')}, skip "
            f"{plan.count('skip')}, fail {plan.count('fail')}; needs about {human_size(plan.need_bytes)} "
            f"({plan.copy_mode} copies), {human_size(plan.free_bytes)} free in {out_dir}; nothing was written"
        )
    failed = [(u.name, u.detail or "") for u in plan.units if u.action == "fail"]
    if failed:
        units_failed(failed, len(plan.units), "would fail")


def _summary(result: EmitResult) -> None:
    units = result.units
    shown = units if len(units) <= FULL_TABLE_MAX else [u for u in units if u.status == "failed"]
    if shown:
        print_table(
            ["unit", "status", "key", "fingerprint", "image sha256", "seconds", "problem"],
            [
                (
                    u.name,
                    u.status,
                    u.key_type,
                    (u.fingerprint or "")[:16] or None,
                    (u.image_sha256 or "")[:16] or None,
                    f"{sum(u.timings.values()):.2f}" if u.status == "emitted" else None,
                    u.error,
                )
                for u in shown
            ],
        )
        echo()
    made = result.count("emitted")
    rate = f", {made / result.elapsed * 60:.1f} units/min" if made and result.elapsed > 0 else ""
    echo(
        f"{made} emitted, {result.count('skipped')} skipped (already done), {result.count('failed')} failed "
        f"in {result.elapsed:.1f}s{rate} ({result.copy_mode} copies)"
    )
    out = result.out_dir
    echo(
        f"preauthorize: imagetools preauth push {os.path.join(out, 'preauth.json')}   "
        f"report: {os.path.join(out, 'report.json')}"
    )
