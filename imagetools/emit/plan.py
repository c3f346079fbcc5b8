"""Before any work: the inputs are usable; the units already published in OUT agree with the
device list (each keeps its identity and key, and no identity or key serves two units) and were
made from this base with these settings unless force; what is left to do fits in OUT. A
published unit that is not re-emitted is re-checked cheaply instead."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import keys
from ..devices import Device
from ..errors import EnvironmentProblem, SettingsMismatch, UsageError
from ..image import ImageSource
from ..image import delta as delta_format
from ..image.source import Overlay
from ..layout import PartInfo
from ..mender import canonical_identity
from ..sparse import allocated_bytes, clone, clone_into
from ..unitformat import UNIT_FILE, UnitRecord
from ..units import MiB, human_size
from ..verify import VerifyReport, verify_image
from .model import MAX_UNIT_FILE_VALUE, EmitOptions, Job, KeySource, Status, UnitResult
from .outdir import TMP_DIR, private_dir
from .state import BaseIdentity, EmitState, setting_changes, settings_options


def check_inputs(base: Path, devices: list[Device], out: Path) -> None:
    if not devices:
        raise UsageError("the device list is empty")
    if not base.is_file():
        raise UsageError(f"base image {base} not found (or not a regular file)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output directory {out} exists and is not a directory")
    if out.resolve() in base.resolve().parents:
        raise UsageError(f"the base image {base} must not be inside the output directory {out}")


def published_units(out: Path, devices: list[Device]) -> dict[str, UnitRecord]:
    """Records of the listed units already published in OUT; a unit directory that disagrees with
    the device list is refused (for every such unit at once) before anything is written."""
    found: dict[str, UnitRecord] = {}
    problems = []
    for device in devices:
        unit_dir = out / device.name
        if not unit_dir.exists():
            continue
        try:
            record = UnitRecord.read(unit_dir / UNIT_FILE)
        except (OSError, ValueError):
            problems.append(f"{unit_dir} exists but was not written by imagetools emit; move it away")
            continue
        if record.identity != device.identity:
            problems.append(
                f"{unit_dir} was emitted for identity {json.dumps(record.identity)}, the device "
                f"list (line {device.line}) now says {json.dumps(device.identity)}; a published unit "
                f"keeps its identity: remove {unit_dir} or rename the unit"
            )
        elif device.key_fingerprint and device.key_fingerprint != record.fingerprint:
            problems.append(
                f"{unit_dir} holds key {record.fingerprint[:16]}…, the device list "
                f"(line {device.line}) gives {device.key_path} ({device.key_fingerprint[:16]}…); "
                f"remove {unit_dir} to re-emit it with that key"
            )
        else:
            found[device.name] = record
    problems += _conflicts_elsewhere(out, devices)
    if problems:
        raise EnvironmentProblem(
            f"{out}: {len(problems)} published unit(s) conflict with the device list: " + "; ".join(problems)
        )
    return found


def other_units(out: Path, listed: set[str]) -> Iterator[tuple[Path, UnitRecord]]:
    """(unit directory, record) of the units published in OUT but not named in listed."""
    for unit_json in sorted(out.glob(f"*/{UNIT_FILE}")):
        if unit_json.parent.name in listed:
            continue
        try:
            yield unit_json.parent, UnitRecord.read(unit_json)
        except (OSError, ValueError):
            continue


def _conflicts_elsewhere(out: Path, devices: list[Device]) -> list[str]:
    """One identity and one key per unit across the device list and everything published in OUT."""
    identities, fingerprints = {}, {}
    for unit_dir, record in other_units(out, {d.name for d in devices}):
        identities[canonical_identity(record.identity)] = unit_dir
        fingerprints[record.fingerprint] = unit_dir
    problems = []
    for device in devices:
        other = identities.get(canonical_identity(device.identity))
        if other is not None:
            problems.append(
                f"identity {json.dumps(device.identity)} (line {device.line}) was already emitted "
                f"as {other} with its own key; name the unit {other.name!r} again or remove {other}"
            )
        other = fingerprints.get(device.key_fingerprint) if device.key_fingerprint else None
        if other is not None:
            problems.append(
                f"key {device.key_path} (line {device.line}) is already published for the unit "
                f"{other}: every unit needs a key of its own"
            )
    return problems


def check_changes(
    state: EmitState | None,
    base_id: BaseIdentity,
    options: EmitOptions,
    published: dict[str, UnitRecord],
    out: Path,
    content_sha256: Callable[[], str],
) -> None:
    """Published units must come from this base with these settings, unless force."""
    if not published or options.force:
        return
    old_sha256: str | None
    if state is None:  # state file lost: the unit records say what they were made from
        record = next(iter(published.values()))
        old_path, old_sha256, old_settings = "?", record.base_sha256, record.settings
    else:
        old_path, old_sha256, old_settings = state.base.path, state.base.sha256, state.settings
    if base_id.sha256 is None:  # cheap identity differs: compare the content before refusing
        base_id.sha256 = content_sha256()
    if old_sha256 != base_id.sha256:
        raise SettingsMismatch(
            f"the base image differs from the one {len(published)} unit(s) in {out} were made from "
            f"({old_path}, sha256 {str(old_sha256)[:16]}...); use --force to "
            f"re-emit them from this base (their keys are kept) or a new output directory"
        )
    if old_settings != options.settings():
        raise SettingsMismatch(_settings_refusal(out, old_settings, options.settings(), len(published)))


def _settings_refusal(out: Path, old: dict, new: dict, published: int) -> str:
    """What differs, both ways, and the command that goes on with the batch as it was made."""
    changes = setting_changes(old, new)
    was = " and ".join(f"{name} {value}" for name, value, _ in changes)
    asked = " and ".join(f"{name} {value}" for name, _, value in changes)
    command = shlex.join(
        ["imagetools", "emit", "--base", "BASE", "--devices", "DEVICES", "--out-dir", str(out), *settings_options(old)]
    )
    return (
        f"the settings differ from the run that made {published} unit(s) in {out}: it was emitted with "
        f"{was}, this run asks for {asked}; to go on with that batch, give its settings ({command}), "
        f"or add --force to re-emit the published units with this run's settings (they keep their "
        f"keys; new keys follow the new settings), or use a new output directory"
    )


def check_unit_files(devices: list[Device], options: EmitOptions) -> None:
    """Every unit has a value for every --unit-file column, one printable line (refused for all
    rows at once, exit 2, before anything is written)."""
    problems = []
    for unit_file in options.unit_files:
        for device in devices:
            value = unit_file.value(device.name, device.identity)
            if value is None:
                problems.append(
                    f"line {device.line}: no column {unit_file.column!r} (--unit-file "
                    f"{unit_file.path}; columns: {', '.join(sorted(device.identity))})"
                )
            elif not value.isprintable() or len(value.encode()) > MAX_UNIT_FILE_VALUE:
                problems.append(
                    f"line {device.line}: the {unit_file.column!r} value is not one printable "
                    f"line of at most {MAX_UNIT_FILE_VALUE} bytes (--unit-file {unit_file.path})"
                )
    if problems:
        raise UsageError(f"{len(problems)} device-list row(s) cannot fill --unit-file: " + "; ".join(problems[:20]))


def plan(
    devices: list[Device],
    published: dict[str, UnitRecord],
    base: Path,
    out: Path,
    options: EmitOptions,
    data_part: PartInfo,
    window: tuple[int, int],
    first_copy: tuple[tuple[int, int], ...],
) -> list[Job]:
    """A job per unit to emit: the unpublished ones, and with force the published ones too."""
    jobs = []
    for device in devices:
        record = published.get(device.name)
        if record is not None and not options.force:
            continue
        key_path = str(device.key_path) if device.key_path else None
        key_from_image, source = None, KeySource.DEVICE_LIST if key_path else KeySource.GENERATED
        if record is not None and not key_path:
            source = KeySource.KEPT
            private = out / device.name / "private.key"
            if private.exists():
                key_path = str(private)
            else:
                key_from_image = str(out / device.name / record.image)
        files = tuple((f, f.value(device.name, device.identity) or "") for f in options.unit_files)
        jobs.append(
            Job(
                device.name,
                device.identity,
                key_path,
                key_from_image,
                source,
                str(base),
                base.suffix or ".img",
                str(out),
                options,
                "",
                record is not None,
                data_part,
                window,
                first_copy,
                files,
            )
        )
    return jobs


def choose_copy_mode(base: Path | int, out: Path) -> str:
    """'reflink' if OUT's filesystem can clone the base (a path or the run's open descriptor;
    tried once), else 'sparse'."""
    probe = private_dir(out / TMP_DIR) / f"reflink-probe-{uuid.uuid4().hex}"
    try:
        return "reflink" if clone(base, probe) else "sparse"
    finally:
        probe.unlink(missing_ok=True)


def can_reflink(base: Path, out: Path) -> bool:
    """Whether OUT's filesystem (OUT's nearest existing directory) can clone the base, tried on an
    unnamed O_TMPFILE file that vanishes when closed: a dry run leaves nothing behind."""
    where = existing_dir(out)
    try:
        fd = os.open(where, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except OSError:
        return False  # no O_TMPFILE here: assume plain copies, the larger estimate
    try:
        return clone_into(base, fd)
    finally:
        os.close(fd)


def existing_dir(path: Path) -> Path:
    """path, or its nearest ancestor that exists (where OUT will be created)."""
    path = path.absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def space_needed(base: Path, units: int, copy_mode: str) -> tuple[int, int]:
    """(bytes for all units, per unit): each costs the base's allocated size without reflink (a
    few MiB of changed blocks with it), plus its bmap and keys; a delta well under 1 MiB."""
    per_unit = {"reflink": 8 * MiB, "delta": MiB}.get(copy_mode) or allocated_bytes(base) + 2 * MiB
    return per_unit * units, per_unit


def free_space(out: Path) -> int:
    st = os.statvfs(existing_dir(out))
    return st.f_bavail * st.f_frsize


def check_space(base: Path, out: Path, units: int, copy_mode: str) -> None:
    """Refuse before starting if the units cannot fit (see space_needed)."""
    need, per_unit = space_needed(base, units, copy_mode)
    free = free_space(out)
    if need > free:
        raise EnvironmentProblem(
            f"not enough space in {out}: {units} unit(s) need about {human_size(need)} "
            f"({human_size(per_unit)} each, {copy_mode} copies), {human_size(free)} free; free some space or "
            f"emit fewer units per run"
        )


def shard(devices: list[Device], index: int, count: int) -> list[Device]:
    """The index-th (1-based) of `count` slices of the device list: a unit's slice follows from
    its name alone (SHA-256), so the slices partition the list exactly, whatever the row order,
    and a unit stays in its slice when rows are added."""
    if not 1 <= index <= count:
        raise UsageError(f"shard {index}/{count}: K/N needs 1 <= K <= N")
    return [
        d for d in devices if int.from_bytes(hashlib.sha256(d.name.encode()).digest()[:8], "big") % count == index - 1
    ]


def recheck(out: Path, device: Device, record: UnitRecord, base: Path, base_sha256: str | None = None) -> UnitResult:
    """A published unit: its files are there and unchanged since publication (stat only); if the
    image was touched since, verify it again (without fsck) before counting it done."""
    unit_dir = out / device.name
    result = published_result(record, unit_dir, Status.SKIPPED)
    missing = [f for f in record.files if not (unit_dir / f).exists()]
    if missing:
        result.status, result.error = (
            Status.FAILED,
            (f"published unit lost {', '.join(missing)}; use --force to re-emit it with its key"),
        )
        return result
    image = unit_dir / record.image
    st = image.stat()
    ctime = st.st_ctime_ns if record.image_ctime_ns is None else record.image_ctime_ns
    if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (record.image_size, record.image_mtime_ns, ctime):
        return result
    pub = keys.read_public_file(unit_dir / "public.key")
    report = _verify_published(image, pub, record, base, base_sha256)
    if not report.ok:
        result.status = Status.FAILED
        result.error = (
            "published image changed and no longer verifies: "
            + "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
            + "; use --force to re-emit it with its key"
        )
    return result


def published_result(record: UnitRecord, unit_dir: Path, status: Status) -> UnitResult:
    """A published unit as this run reports it."""
    return UnitResult(
        name=record.name,
        identity=record.identity,
        status=status,
        fingerprint=record.fingerprint,
        key_type=record.key_type,
        key_source=record.key_source,
        image=str(unit_dir / record.image),
        image_sha256=record.image_sha256,
        verify=record.verify,
        timings=record.timings,
    )


def _verify_published(
    image: Path, pub: keys.PublicKey, record: UnitRecord, base: Path, base_sha256: str | None
) -> VerifyReport:
    """verify without fsck; a delta through its overlay on the base (which must be its own)."""
    if record.format != "delta":
        return verify_image(image, expected=pub, fsck=False)
    with ImageSource(base) as src:
        view = ImageSource(image, overlay=Overlay(src, delta_format.read(image), base_sha256 or ""))
        return verify_image(view, expected=pub, fsck=False)
