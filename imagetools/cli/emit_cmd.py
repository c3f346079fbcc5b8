"""`imagetools emit`: one verified image per unit of a device list, plus preauth/report files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from .. import keys
from ..devices import load_devices
from ..emit import EmitOptions, EmitResult, UnitFormat, UnitResult, emit
from ..emit import shard as shard_devices
from ..errors import UsageError
from .base import echo, is_tty, main, print_json, print_table, units_failed
from .text import escape

FULL_TABLE_MAX = 50


@main.command("emit")
@click.option("--base", "base", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Base image (.sdimg, .uefiimg, .img ...); never modified.")
@click.option("--devices", "devices", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Device list: CSV with a header (identity columns, optional name, key) or JSON.")
@click.option("--out-dir", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory; re-running resumes there.")
@click.option("--key-type", type=click.Choice(keys.KEY_TYPES), default="rsa", show_default=True,
              help="Type of the keys generated for units without a 'key' column.")
@click.option("--bits", type=int, default=keys.DEFAULT_RSA_BITS, show_default=True, help="RSA key size.")
@click.option("--curve", type=click.Choice(sorted(keys.CURVES)), default="p256", show_default=True,
              help="ECDSA curve.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: all cores).")
@click.option("--no-bmap", is_flag=True, help="Do not write .bmap files.")
@click.option("--discard-private-keys", is_flag=True,
              help="Keep no private.key files: the only copy of each key is inside its image.")
@click.option("--force", is_flag=True,
              help="Accept a changed base image or settings: re-emit published units (keeping their keys).")
@click.option("--format", "unit_format", type=click.Choice([f.value for f in UnitFormat]), default="image",
              show_default=True, help="image: a full image per unit; delta: only the blocks that differ "
              "from the base (flash or materialize it with the base).")
@click.option("--shard", metavar="K/N", default=None,
              help="Emit only the K-th of N deterministic slices of the device list (1 <= K <= N).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def emit_command(base: Path, devices: Path, out_dir: Path, key_type: str, bits: int, curve: str,
                 jobs: int | None, no_bmap: bool, discard_private_keys: bool, force: bool,
                 unit_format: str, shard: str | None, as_json: bool) -> None:
    """Emit one ready-to-flash image per unit of the device list into OUT/<name>/ (image, .bmap,
    public.key, private.key, identity.json), plus OUT/preauth.json, preauth.csv and report.json.

    Every image is verified against its own public key before it is published. Interrupted runs
    resume: run the same command again.
    """
    spec = keys.KeySpec(type=key_type, bits=bits, curve=curve)
    listed = load_devices(devices)
    if shard is not None:
        listed = shard_devices(listed, *_parse_shard(shard))
        if not listed:
            echo(f"shard {shard}: no unit of the device list falls in this slice")
            return
    options = EmitOptions(key_spec=spec, jobs=jobs, bmap=not no_bmap,
                          discard_private_keys=discard_private_keys, force=force, format=unit_format)
    if is_tty() and not as_json:
        result = _with_progress(base, listed, out_dir, options)
    else:
        result = emit(base, listed, out_dir, options)
    if as_json:
        print_json(result.to_dict())
    else:
        _summary(result)
    failed = [(u.name, u.error or "") for u in result.units if u.status == "failed"]
    if failed:
        units_failed(failed, len(result.units), "failed",
                     f"; they were not published (see {out_dir}/report.json)")


def _parse_shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit()):
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. 3/8")
    return int(k), int(n)


def _with_progress(base: Path, listed, out_dir: Path, options: EmitOptions) -> EmitResult:
    started = time.monotonic()
    made = 0
    stream = click.get_text_stream("stderr")
    with click.progressbar(length=len(listed), label="emitting", show_eta=True, show_pos=True,
                           file=stream, item_show_func=lambda s: s) as bar:
        def progress(result: UnitResult, done: int, total: int) -> None:
            nonlocal made
            if result.status != "skipped":
                made += 1
            rate = made / max(time.monotonic() - started, 1e-6)
            bar.update(done - bar.pos, f"{rate * 60:.1f} units/min, last {escape(result.name)} {result.status}")

        return emit(base, listed, out_dir, options, progress=progress)


def _summary(result: EmitResult) -> None:
    units = result.units
    shown = units if len(units) <= FULL_TABLE_MAX else [u for u in units if u.status == "failed"]
    if shown:
        print_table(["unit", "status", "key", "fingerprint", "image sha256", "seconds", "problem"],
                    [(u.name, u.status, u.key_type, (u.fingerprint or "")[:16] or None,
                      (u.image_sha256 or "")[:16] or None,
                      f"{sum(u.timings.values()):.2f}" if u.status == "emitted" else None,
                      u.error) for u in shown])
        echo()
    made = result.count("emitted")
    rate = f", {made / result.elapsed * 60:.1f} units/min" if made and result.elapsed > 0 else ""
    echo(f"{made} emitted, {result.count('skipped')} already done, {result.count('failed')} failed "
         f"in {result.elapsed:.1f}s{rate} ({result.copy_mode} copies)")
    out = result.out_dir
    echo(f"preauthorize: imagetools preauth push {os.path.join(out, 'preauth.json')}   "
         f"report: {os.path.join(out, 'report.json')}")
