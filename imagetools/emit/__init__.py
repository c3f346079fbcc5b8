"""Batch emission: one verified, ready-to-flash image per unit, plus the preauthorization files.

Per unit: key → the data partition copied from the base and the key injected (e2fsck on it) →
the rest of the base copied (reflink or sparse) → the other checks → bmap and image SHA-256 in
one pass → written back with its batch → published. (runner.run says why in that order.)
Everything of a unit is built in OUT/.imagetools-tmp/ and published by renaming its directory to
OUT/<name>, so a run killed at any moment leaves no unit that looks complete; the next run removes
the leftovers, skips published units after a cheap re-check and finishes the rest. OUT's state
file records the base image and the settings so a changed base or changed key settings are noticed
(refused unless force). Keys of published units are never regenerated: force re-emits a published
unit with the key it already has (from private.key, or from its image if the private key files
were discarded).

The modules: model (options, results, vocabularies), state (what OUT remembers: unit.json and the
state file), plan (checks and jobs before any work), unit (a unit's two stages), runner (workers
and publishing), outdir (OUT's lock, temporary directory and renames), batch (preauth and report
files).
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from .. import bmap
from ..devices import Device
from ..image import ImageSource, read_image
from ..layout import PartInfo, detect_layout
from .batch import BATCH_FILES, write_preauth_files, write_report
from .model import EmitOptions, EmitResult, KeySource, Progress, Status, UnitFormat, UnitResult
from .outdir import LOCK_FILE, TMP_DIR, clean_temp, locked
from .plan import (check_changes, check_inputs, check_space, choose_copy_mode, plan, published_units,
                   recheck, shard)
from .runner import run
from .state import STATE_FILE, UNIT_FILE, BaseIdentity, EmitState, base_identity, read_state, write_state
from .unit import data_window

__all__ = ["emit", "shard", "EmitOptions", "EmitResult", "UnitResult", "Status", "UnitFormat", "KeySource",
           "Progress",
           "STATE_FILE", "LOCK_FILE", "TMP_DIR", "UNIT_FILE", "BATCH_FILES"]


def emit(base: str | os.PathLike, devices: list[Device], out_dir: str | os.PathLike,
         options: EmitOptions = EmitOptions(), progress: Progress | None = None) -> EmitResult:
    """Emit every unit of `devices` from `base` into `out_dir` (resuming a previous run there)."""
    started = time.monotonic()
    base, out = Path(base), Path(out_dir)
    check_inputs(base, devices, out)
    with ImageSource(base) as src:  # opened once: the table, the roles, the base's identity
        data_part = detect_layout(read_image(src), None, src).require("data")
        out.mkdir(parents=True, exist_ok=True)
        with locked(out):
            clean_temp(out)
            try:
                base_id, copy_mode, units = _emit_locked(src, devices, out, options, progress, data_part,
                                                         started)
            finally:
                clean_temp(out)
                shutil.rmtree(out / TMP_DIR, ignore_errors=True)
    return EmitResult(str(out), base_id.to_json(), options.settings(), copy_mode, units,
                      time.monotonic() - started)


def _emit_locked(src: ImageSource, devices: list[Device], out: Path, options: EmitOptions,
                 progress: Progress | None, data_part: PartInfo,
                 started: float) -> tuple[BaseIdentity, str, list[UnitResult]]:
    """The run, holding OUT's lock: plan, re-check or emit each unit, write the batch files."""
    base = Path(src.path)
    state = read_state(out)
    base_id = base_identity(src, state)
    published = published_units(out, devices)
    # The base hashed once per run, and only if needed (its identity, and what units reuse).
    base_scan = functools.cache(lambda: bmap.scan(base, window=data_window(data_part)))
    check_changes(state, base_id, options, published, out, lambda: base_scan().sha256)
    jobs = plan(devices, published, base, out, options, data_part)
    copy_mode = "delta" if options.format == UnitFormat.DELTA else choose_copy_mode(base, out)
    results: dict[str, UnitResult] = {}
    planned = {job.name for job in jobs}
    for device in devices:
        if device.name in published and device.name not in planned:
            record = published[device.name]
            sha = base_scan().sha256 if record.format == UnitFormat.DELTA else None
            results[device.name] = result = recheck(out, device, record, base, sha)
            if progress:
                progress(result, len(results), len(devices))
    if jobs:
        check_space(base, out, len(jobs), copy_mode)
        for name in BATCH_FILES:
            (out / name).unlink(missing_ok=True)
        if base_id.sha256 is None:
            base_id.sha256 = base_scan().sha256
        write_state(out, EmitState(base_id, options.settings(), complete=False))
        jobs = [replace(j, base_sha256=base_id.sha256) for j in jobs]
        run(jobs, options.jobs, results, len(devices), progress, base_scan().reuse)
    units = [results[d.name] for d in devices]
    write_preauth_files(out, units)
    write_report(out, EmitResult(str(out), base_id.to_json(), options.settings(), copy_mode, units,
                                 time.monotonic() - started))
    complete = all(u.status != Status.FAILED for u in units)
    write_state(out, EmitState(base_id, options.settings(), complete))
    return base_id, copy_mode, units
