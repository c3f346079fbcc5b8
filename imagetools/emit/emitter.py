"""emit() and dry_run(): a batch run from its inputs (base, device list, OUT) to its report, and
the same run planned with nothing written. The package's docstring says how a run goes."""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .. import bmap, paths
from ..devices import Device
from ..image import ImageSource, read_image
from ..layout import Layout, detect_layout
from ..menderconf.modify import preview
from ..unitformat import SIG_FILE, UnitRecord, batch_key, sign_unit
from .batch import BATCH_FILES, write_preauth_files, write_report
from .model import DryRun, EmitOptions, EmitResult, Job, PlannedUnit, Progress, Status, UnitFormat, UnitResult
from .outdir import TMP_DIR, clean_temp, locked
from .plan import (
    can_reflink,
    check_changes,
    check_inputs,
    check_space,
    check_unit_files,
    choose_copy_mode,
    free_space,
    plan,
    published_units,
    recheck,
    space_needed,
)
from .runner import run
from .state import BaseIdentity, EmitState, base_identity, read_state, write_state
from .unit import first_copy, personal_window


def emit(
    base: str | os.PathLike,
    devices: list[Device],
    out_dir: str | os.PathLike,
    options: EmitOptions = EmitOptions(),
    progress: Progress | None = None,
) -> EmitResult:
    """Emit every unit of `devices` from `base` into `out_dir` (resuming a previous run there)."""
    started = time.monotonic()
    base, out = Path(base), Path(out_dir)
    check_inputs(base, devices, out)
    with ImageSource(base) as src:  # opened once: the table, the roles, the base's identity
        layout = detect_layout(read_image(src), None, src)
        warnings = _check_configuration(src, layout, devices, options)
        out.mkdir(parents=True, exist_ok=True)
        with locked(out):
            clean_temp(out)
            try:
                base_id, copy_mode, units = _emit_locked(
                    src, devices, out, options, progress, layout, started, warnings
                )
            finally:
                clean_temp(out)
                shutil.rmtree(out / TMP_DIR, ignore_errors=True)
    return EmitResult(
        str(out), base_id.to_json(), options.settings(), copy_mode, units, time.monotonic() - started, warnings
    )


def _check_configuration(base: ImageSource, layout: Layout, devices: list[Device], options: EmitOptions) -> list[str]:
    """The per-unit configuration checked once against the base and the device list, before
    anything is written: its refusals stop the run (exit 2), its warnings are given once."""
    layout.require("data")
    check_unit_files(devices, options)
    for unit_file in options.unit_files:
        paths.route(layout, unit_file.path, write=True)  # the partition it goes to exists
    if options.modify is None:
        return []
    return preview(base, options.modify, key_injected=True)


def _emit_locked(
    src: ImageSource,
    devices: list[Device],
    out: Path,
    options: EmitOptions,
    progress: Progress | None,
    layout: Layout,
    started: float,
    warnings: list[str],
) -> tuple[BaseIdentity, str, list[UnitResult]]:
    """The run, holding OUT's lock: plan, re-check or emit each unit, write the batch files."""
    base = Path(src.path)
    data_part, window = layout.require("data"), personal_window(layout, options)
    state = read_state(out)
    base_id = base_identity(src, state)
    published = published_units(out, devices)
    # The base hashed once per run, and only if needed (its identity, and what units reuse).
    base_scan = functools.cache(lambda: bmap.scan(base, window=window))
    check_changes(state, base_id, options, published, out, lambda: base_scan().whole_sha256())
    jobs = plan(devices, published, base, out, options, data_part, window, first_copy(layout, options, src.size))
    copy_mode = "delta" if options.format == UnitFormat.DELTA else choose_copy_mode(src.fd, out)
    results: dict[str, UnitResult] = {}
    planned = {job.name for job in jobs}
    for device in devices:
        if device.name in published and device.name not in planned:
            record = published[device.name]
            sha = base_scan().whole_sha256() if record.format == UnitFormat.DELTA else None
            results[device.name] = result = recheck(out, device, record, base, sha)
            if result.status == Status.SKIPPED and not (out / device.name / SIG_FILE).exists():
                sign_unit(out / device.name, batch_key(out))  # published by an imagetools that did not sign
            if progress:
                progress(result, len(results), len(devices))
    if jobs:
        check_space(base, out, len(jobs), copy_mode)
        for name in BATCH_FILES:
            (out / name).unlink(missing_ok=True)
        if base_id.sha256 is None:
            base_id.sha256 = base_scan().whole_sha256()
        write_state(out, EmitState(base_id, options.settings(), complete=False))
        jobs = [replace(j, base_sha256=base_id.sha256) for j in jobs]
        run(jobs, options.jobs, results, len(devices), progress, base_scan().reuse, src)
    units = [results[d.name] for d in devices]
    write_preauth_files(out, units)
    write_report(
        out,
        EmitResult(
            str(out), base_id.to_json(), options.settings(), copy_mode, units, time.monotonic() - started, warnings
        ),
    )
    complete = all(u.status != Status.FAILED for u in units)
    write_state(out, EmitState(base_id, options.settings(), complete))
    return base_id, copy_mode, units


def dry_run(
    base: str | os.PathLike, devices: list[Device], out_dir: str | os.PathLike, options: EmitOptions = EmitOptions()
) -> DryRun:
    """What emit(base, devices, out_dir, options) would do, and its refusals (raised, the same as
    a real run's), with nothing written: OUT is not created, locked or cleaned; published units
    are re-checked read-only. Reads without OUT's lock: a run in progress may change OUT."""
    base, out = Path(base), Path(out_dir)
    check_inputs(base, devices, out)
    with ImageSource(base) as src:
        layout = detect_layout(read_image(src), None, src)
        warnings = _check_configuration(src, layout, devices, options)
        state = read_state(out) if out.is_dir() else None
        base_id = base_identity(src, state)
        published = published_units(out, devices) if out.is_dir() else {}
        sha256 = functools.cache(lambda: bmap.scan(base).whole_sha256())
        check_changes(state, base_id, options, published, out, sha256)
        jobs = plan(
            devices,
            published,
            base,
            out,
            options,
            layout.require("data"),
            personal_window(layout, options),
            first_copy(layout, options, src.size),
        )
    if options.format == UnitFormat.DELTA:
        copy_mode = "delta"
    else:
        copy_mode = "reflink" if can_reflink(base, out) else "sparse"
    units = _planned_units(devices, published, jobs, out, base, sha256)
    need = space_needed(base, len(jobs), copy_mode)[0]
    if jobs:
        check_space(base, out, len(jobs), copy_mode)
    return DryRun(str(out), base_id.to_json(), options.settings(), copy_mode, units, need, free_space(out), warnings)


def _planned_units(
    devices: list[Device],
    published: dict[str, UnitRecord],
    jobs: list[Job],
    out: Path,
    base: Path,
    sha256: Callable[[], str],
) -> list[PlannedUnit]:
    """Each unit's fate: emitted, re-emitted (force), or skipped after the same read-only
    re-check a real run makes (which may fail it)."""
    planned = {job.name: job for job in jobs}
    units = []
    for device in devices:
        job = planned.get(device.name)
        if job is not None:
            units.append(PlannedUnit(device.name, "re-emit" if job.replace else "emit", str(job.key_source)))
            continue
        record = published[device.name]
        sha = sha256() if record.format == UnitFormat.DELTA else None
        result = recheck(out, device, record, base, sha)
        units.append(
            PlannedUnit(
                device.name,
                "fail" if result.status == Status.FAILED else "skip",
                result.error or "published, as recorded",
            )
        )
    return units
