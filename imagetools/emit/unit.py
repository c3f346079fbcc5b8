"""One unit, in two stages (runner.run says why): stage 1 makes the key files and the image's
data partition with the key injected, and checks it with e2fsck; stage 2 copies the rest of the
base, runs the other checks, hashes the image (bmap and SHA-256 in one pass) and writes the
unit's records. Both work in the unit's own temporary directory and never raise: a failure
becomes the result's error and the unit's files are removed.

The key's blocks are found on the process's reused scratch copy of the data partition (see
personalize) and written into the image; e2fsck checks the scratch, whose data partition is the
image's byte for byte. Only per-unit configuration, which reaches beyond the data partition, is
written into the image itself with debugfs. A delta unit has nothing to copy or write back, so it
goes through both stages in one call."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import bmap, files, keys
from ..errors import ImageToolsError
from ..image import ImageSource
from ..image import delta as delta_format
from ..image.source import Overlay
from ..inject import write_key
from ..layout import Layout, open_layout
from ..menderconf.modify import modify as modify_image
from ..personalize import Scratch, reused_scratch
from ..sparse import allocated_bytes, clone, copy_extents
from ..unitformat import UNIT_FILE, UnitRecord
from ..units import MiB
from ..verify import (
    DEFAULT_KEY_PATH,
    Check,
    VerifyReport,
    data_path,
    fsck_check,
    read_key_in_image,
    rootfs_checks,
    verify_image,
)
from .model import EmitOptions, Job, Status, UnitFormat, UnitResult
from .outdir import TMP_DIR, private_dir

DATA_KEY_PATH = data_path(DEFAULT_KEY_PATH)
DELTA_SUFFIX = ".delta"


@dataclass(frozen=True)
class Stage:
    """What stage 1 hands to stage 2 (picklable)."""

    tmp: Path
    image: Path
    cloned: bool
    fsck: Check
    files: list[str]


def prepare_unit(job: Job, scratch_dir: str, base: ImageSource) -> tuple[UnitResult, Stage | None]:
    """Stage 1 in a temporary directory: key files, image with the data partition (the whole
    image if reflinked) and the key, e2fsck of the data partition. A delta unit is finished
    here too (no stage left: None). `base` is job.base, open: read on its descriptor. Never
    raises."""
    result = UnitResult(job.name, job.identity, Status.FAILED, key_source=job.key_source)
    tmp = Path(job.out_dir) / TMP_DIR / f"{job.name}.{uuid.uuid4().hex[:12]}"
    stage = _guarded(job, result, tmp, lambda: _prepare(job, tmp, result, scratch_dir, base))
    if stage is not None and job.options.format == UnitFormat.DELTA:
        return finish_unit(job, result, stage, None, base), None
    return result, stage


def finish_unit(job: Job, result: UnitResult, stage: Stage, reuse: bmap.Reuse | None, base: ImageSource) -> UnitResult:
    """Stage 2: the rest of the image, the checks, bmap and SHA-256 (reusing what the image shares
    with the base), the unit's records; status "built" (the parent publishes it). Never raises."""
    if _guarded(job, result, stage.tmp, lambda: _finish(job, stage, result, reuse, base)) is not None:
        result.status, result.tmp = Status.BUILT, str(stage.tmp)
    return result


def _guarded(job: Job, result: UnitResult, tmp: Path, step: Callable[[], Any]) -> Any:
    """step() with every failure turned into result.error (and the unit's files removed)."""
    try:
        value = step()
        if result.error is None:
            return value
    except OSError as exc:
        result.error, result.disk_full = os_error(exc)
    except ImageToolsError as exc:
        result.error = str(exc)
        result.disk_full = _nearly_full(Path(job.out_dir), job.base)
    except Exception as exc:  # a worker must report, not die: the batch goes on
        result.error = f"{type(exc).__name__}: {exc}"
    shutil.rmtree(tmp, ignore_errors=True)
    result.status = Status.FAILED
    return None


def os_error(exc: OSError) -> tuple[str, bool]:
    """(message, whether the disk is full)."""
    message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return message, exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _prepare(job: Job, tmp: Path, result: UnitResult, scratch_dir: str, base: ImageSource) -> Stage:
    t = time.monotonic()
    private_dir(tmp.parent)
    tmp.mkdir(mode=0o700)
    os.chmod(tmp, 0o700)
    pem, private = _unit_key(job, base)
    result.fingerprint, result.key_type = keys.fingerprint(private), keys.describe(private)
    files = ["public.key", "identity.json", UNIT_FILE]
    if not job.options.discard_private_keys:
        keys.write_secret(tmp / "private.key", pem, durable=False)
        files.append("private.key")
    (tmp / "public.key").write_bytes(keys.public_pem(private))
    t = _lap(result, "key", t)
    scratch = reused_scratch(scratch_dir, base, job.data_part)
    if job.options.format == UnitFormat.DELTA:
        return _prepare_delta(job, tmp, result, pem, files, t, scratch)
    image = tmp / f"{job.name}{job.suffix}"
    cloned = clone(base.fd, image)
    if not cloned:
        for span in job.first_copy:
            copy_extents(base.fd, image, inside=span)
    t = _lap(result, "copy", t)
    if job.options.configures:
        return Stage(tmp, image, cloned, _inject_and_configure(job, image, pem, result, t), files)
    # The key's blocks come from the scratch, whose e2fsck stands for the image's: their data
    # partitions are the same bytes. debugfs and e2fsck on the image itself would fsync it,
    # and each fsync waits for every image being written back.
    delta, fsck = scratch.delta(pem, DATA_KEY_PATH, job.base_sha256)
    delta_format.apply(delta, image)
    _lap(result, "inject", t)
    return Stage(tmp, image, cloned, fsck, files)


def _inject_and_configure(job: Job, image: Path, pem: bytes, result: UnitResult, t: float) -> Check:
    """The key and the per-unit configuration written into the image itself (modify and the
    unit files reach beyond the data partition), then its data partition's e2fsck."""
    write_key(image, job.data_part, pem, DATA_KEY_PATH)
    t = _lap(result, "inject", t)
    _configure(job, image)
    t = _lap(result, "configure", t)
    fsck = fsck_check(image, job.data_part)
    _lap(result, "verify", t)
    return fsck


def _configure(job: Job, image: Path) -> None:
    """The per-unit configuration, after the key (so --static-key finds it) and before any check:
    the modify plan on rootfs A and B, then each unit file with this unit's value. The run checked
    the plan against the base already, so its warnings are not repeated here."""
    if job.options.modify is not None:
        modify_image(image, job.options.modify)
    for unit_file, value in job.unit_files:
        files.install(
            image,
            unit_file.path,
            value.encode() + b"\n",
            mode=unit_file.mode,
            uid=unit_file.uid,
            gid=unit_file.gid,
            parents=True,
        )


def _prepare_delta(
    job: Job, tmp: Path, result: UnitResult, pem: bytes, files: list[str], t: float, scratch: Scratch
) -> Stage:
    """Stage 1 of a delta unit: the blocks the key changes, taken from a scratch copy of the data
    partition alone (see personalize), and that copy's e2fsck."""
    delta, fsck = scratch.delta(pem, DATA_KEY_PATH, job.base_sha256)
    t = _lap(result, "inject", t)
    image = tmp / f"{job.name}{DELTA_SUFFIX}"
    keys.write_secret(image, delta.render(), durable=False)  # it holds the key's blocks: 0600
    _lap(result, "copy", t)
    return Stage(tmp, image, False, fsck, files)


def _verify(job: Job, stage: Stage, base: ImageSource) -> VerifyReport:
    """Every check but e2fsck (stage 1 ran it); a delta is read through its overlay."""
    expected = keys.read_public_file(stage.tmp / "public.key")
    if job.options.format != UnitFormat.DELTA:
        return verify_image(stage.image, expected=expected, fsck=False)
    view = ImageSource(stage.image, overlay=Overlay(base, delta_format.read(stage.image), job.base_sha256))
    return verify_image(view, expected=expected, fsck=False, rootfs=_base_rootfs_checks(base, job.base_sha256))


@functools.lru_cache(maxsize=4)
def _base_rootfs_checks(base: ImageSource, base_sha256: str) -> list[Check]:
    """The base's rootfs checks, once per worker: a delta unit only changes the data partition,
    so its root filesystems are the base's (keyed by the base's SHA-256, checked by the overlay)."""
    return rootfs_checks(base, open_layout(base), DATA_KEY_PATH)


def _finish(job: Job, stage: Stage, result: UnitResult, reuse: bmap.Reuse | None, base: ImageSource) -> bool:
    t = time.monotonic()
    image, files = stage.image, list(stage.files)
    is_delta = job.options.format == UnitFormat.DELTA
    if not stage.cloned and not is_delta:
        copy_extents(base.fd, image, outside=job.window)
    t = _lap(result, "copy", t)
    report = _verify(job, stage, base)
    report.replace(stage.fsck)
    result.verify = report.to_dict()
    result.verify["target"] = image.name
    t = _lap(result, "verify", t)
    if not report.ok:
        result.error = "verification failed: " + "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
        return False
    if is_delta:  # no bmap: a station writes the base's mapped blocks, then these
        result.image_sha256 = hashlib.sha256(image.read_bytes()).hexdigest()
    else:
        scan = bmap.scan(image, reuse=reuse, whole=job.options.hashes_image)
        result.image_sha256 = scan.sha256
        if job.options.bmap:
            (stage.tmp / f"{image.name}.bmap").write_bytes(bmap.render(scan.size, scan.ranges))
            files.append(f"{image.name}.bmap")
    _lap(result, "bmap", t)
    result.image = str(image)
    files.append(image.name)
    (stage.tmp / "identity.json").write_text(json.dumps(job.identity, indent=2) + "\n")
    st = image.stat()
    assert result.fingerprint is not None and result.key_type is not None  # _prepare set them, with the stage
    UnitRecord(
        name=job.name,
        identity=job.identity,
        fingerprint=result.fingerprint,
        key_type=result.key_type,
        key_source=job.key_source,
        image=image.name,
        image_size=st.st_size,
        image_mtime_ns=st.st_mtime_ns,
        image_ctime_ns=st.st_ctime_ns,
        image_sha256=result.image_sha256,
        base_sha256=job.base_sha256,
        settings=job.options.settings(),
        files=sorted(files),
        verify=result.verify,
        timings=result.timings,
        format=str(job.options.format),
    ).write(stage.tmp / UNIT_FILE)
    return True


def personal_window(layout: Layout, options: EmitOptions) -> tuple[int, int]:
    """The bytes in which a unit may differ from its base: the data partition (the key), and with
    per-unit configuration also the rootfs partitions (modify, rootfs unit files) and the boot
    partition (a unit file may go there). Stage 1 copies these bytes, stage 2 the rest, and the
    base's bmap and SHA-256 state before them are reused."""
    parts = [layout.require("data")]
    if options.configures:
        parts += layout.rootfs
    if options.unit_files and layout.boot is not None:
        parts.append(layout.boot)
    return min(p.partition.start for p in parts), max(p.partition.end for p in parts)


def first_copy(layout: Layout, options: EmitOptions, size: int) -> tuple[tuple[int, int], ...]:
    """What stage 1 copies: the personal window, and with per-unit configuration also every byte
    outside the partitions (MBR, EBR chain, GPT and its backup), since modify and the file
    commands read the partition table. Stage 2 copies what is outside the window (again for
    the tables: the same bytes)."""
    window = personal_window(layout, options)
    if not options.configures:
        return (window,)
    gaps, pos = [], 0
    for start, end in sorted((p.partition.start, p.partition.end) for p in layout.parts):
        if start > pos:
            gaps.append((pos, start))
        pos = max(pos, end)
    return (window, *gaps, *([(pos, size)] if pos < size else []))


def _unit_key(job: Job, base: ImageSource) -> tuple[bytes, keys.PrivateKey]:
    """PEM and key object; a generated key is not parsed back (loading an RSA key validates it,
    which costs about half a key generation)."""
    if job.key_path:
        pem = keys.read_key_bytes(job.key_path, "private key")
    elif job.key_from_image:
        pem = _key_from_image(job.key_from_image, job, base)
    else:
        private = keys.generate(job.options.key_spec)
        return keys.private_pem(private, job.options.key_spec.format), private
    return pem, keys.load_private(pem, f"key of {job.name}")


def _key_from_image(image: str, job: Job, base: ImageSource) -> bytes:
    """The only copy of a published unit's key when its private.key was discarded (a delta's
    key is read through its overlay: only over the base it was made from)."""
    with contextlib.ExitStack() as stack:
        if image.endswith(DELTA_SUFFIX):
            src = ImageSource(image, overlay=Overlay(base, delta_format.read(image), job.base_sha256))
        else:
            src = stack.enter_context(ImageSource(image))
        data_part = open_layout(src).require("data")
        with data_part.open(image, source=src) as fs:
            return read_key_in_image(fs, DATA_KEY_PATH)


def _lap(result: UnitResult, name: str, since: float) -> float:
    now = time.monotonic()
    result.timings[name] = round(result.timings.get(name, 0) + now - since, 4)
    return now


def _nearly_full(out: Path, base: str) -> bool:
    """Tools like debugfs report a full disk only as text: judge by the free space left."""
    try:
        st = os.statvfs(out)
        return st.f_bavail * st.f_frsize < max(allocated_bytes(base), 16 * MiB)
    except OSError:
        return False
