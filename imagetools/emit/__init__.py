"""Batch emission: one verified, ready-to-flash image per unit, plus the preauthorization files.

Per unit: key → the data partition copied from the base and the key injected (e2fsck on it) →
the rest of the base copied (reflink or sparse) → the other checks → bmap and image SHA-256 in
one pass → written back with its batch → published. (_run says why in that order.)
Everything of a unit is built in OUT/.imagetools-tmp/ and published by renaming its directory to
OUT/<name>, so a run killed at any moment leaves no unit that looks complete; the next run removes
the leftovers, skips published units after a cheap re-check and finishes the rest. OUT's state
file records the base image and the settings so a changed base or changed key settings are noticed
(refused unless force). Keys of published units are never regenerated: force re-emits a published
unit with the key it already has (from private.key, or from its image if the private key files
were discarded).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
import contextlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from . import bmap, keys
from .devices import Device
from .errors import EnvironmentProblem, ImageToolsError, UsageError
from .inject import write_key
from .layout import PartInfo, open_layout
from .mender import canonical_identity
from .sparse import allocated_bytes, clone, copy_extents, sync_filesystem
from .units import human_size
from .verify import DEFAULT_KEY_PATH, Check, data_path, fsck_check, read_key_in_image, verify_image

STATE_FILE = ".imagetools-emit.json"
LOCK_FILE = ".imagetools-emit.lock"
TMP_DIR = ".imagetools-tmp"
UNIT_FILE = "unit.json"
BATCH_FILES = ("report.json", "preauth.json", "preauth.csv")
STATE_VERSION = 1
_REPLACED = "replaced-"
DATA_KEY_PATH = data_path(DEFAULT_KEY_PATH)
_MiB = 1 << 20
_CHUNK_UNITS = 128    # units per round of stage 1 then stage 2 (what a kill can cost)
_SYNC_BYTES = 1 << 30  # written back per syncfs, at most (the batch is 1 to 4 units per worker)


@dataclass(frozen=True)
class EmitOptions:
    key_spec: keys.KeySpec = field(default_factory=keys.KeySpec)
    jobs: int | None = None           # worker processes; None = all cores
    bmap: bool = True
    discard_private_keys: bool = False
    force: bool = False

    def settings(self) -> dict[str, Any]:
        """What a resumed run must agree on (jobs does not change the output)."""
        spec = self.key_spec
        key: dict[str, Any] = {"type": spec.type, "format": spec.format}
        if spec.type == "rsa":
            key["bits"] = spec.bits
        elif spec.type == "ecdsa":
            key["curve"] = spec.curve
        return {"key": key, "bmap": self.bmap, "discard_private_keys": self.discard_private_keys}


@dataclass
class UnitResult:
    name: str
    identity: dict[str, str]
    status: str                       # "emitted" | "skipped" | "failed" ("built": not yet published)
    fingerprint: str | None = None
    key_type: str | None = None
    key_source: str | None = None     # "generated" | "device list" | "kept"
    image: str | None = None
    image_sha256: str | None = None
    verify: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    disk_full: bool = False
    tmp: str | None = None            # a built unit's directory until it is published

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("disk_full"), data.pop("tmp")
        return data


@dataclass
class EmitResult:
    out_dir: str
    base: dict[str, Any]
    settings: dict[str, Any]
    copy_mode: str
    units: list[UnitResult]
    elapsed: float

    @property
    def ok(self) -> bool:
        return all(u.status != "failed" for u in self.units)

    def count(self, status: str) -> int:
        return sum(u.status == status for u in self.units)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "base": self.base, "settings": self.settings,
                "copy_mode": self.copy_mode, "elapsed": round(self.elapsed, 3), "ok": self.ok,
                "summary": {s: self.count(s) for s in ("emitted", "skipped", "failed")},
                "units": [u.to_dict() for u in self.units]}


Progress = Callable[[UnitResult, int, int], None]


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs for one unit (picklable)."""

    name: str
    identity: dict[str, str]
    key_path: str | None        # key file to use (device list, or a published unit's key)
    key_from_image: str | None  # published image holding the only copy of the key
    key_source: str
    base: str
    suffix: str
    out_dir: str
    options: EmitOptions
    base_sha256: str
    replace: bool
    data: PartInfo              # the base's data partition (every unit has the base's table)


# Set in the parent before the worker processes fork: the base's bmap/SHA-256 state to reuse.
_REUSE: bmap.Reuse | None = None


def emit(base: str | os.PathLike, devices: list[Device], out_dir: str | os.PathLike,
         options: EmitOptions = EmitOptions(), progress: Progress | None = None) -> EmitResult:
    """Emit every unit of `devices` from `base` into `out_dir` (resuming a previous run there)."""
    started = time.monotonic()
    base, out = Path(base), Path(out_dir)
    _check_inputs(base, devices, out)
    data = open_layout(base).require("data")
    window = _window(data)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        _clean_temp(out)
        try:
            state = _read_state(out)
            base_id = _base_identity(base, state)
            published = _published_units(out, devices)

            scans: list[bmap.Scan] = []

            def base_scan() -> bmap.Scan:
                """The base hashed once per run (identity, and what units reuse)."""
                if not scans:
                    scans.append(bmap.scan(base, window=window))
                return scans[0]

            def content_sha256() -> str:
                return base_scan().sha256

            _check_changes(state, base_id, options, published, out, content_sha256)
            jobs = _plan(devices, published, base, out, options, data)
            copy_mode = _copy_mode(base, out)
            results: dict[str, UnitResult] = {}
            for device in devices:
                if device.name in published and not any(j.name == device.name for j in jobs):
                    results[device.name] = result = _recheck(out, device, published[device.name])
                    if progress:
                        progress(result, len(results), len(devices))
            if jobs:
                _check_space(base, out, len(jobs), copy_mode)
                for name in BATCH_FILES:
                    (out / name).unlink(missing_ok=True)
                base_id.setdefault("sha256", content_sha256())
                _write_state(out, base_id, options, complete=False)
                jobs = [replace(j, base_sha256=base_id["sha256"]) for j in jobs]
                _run(jobs, options.jobs, results, len(devices), progress, base_scan().reuse)
            units = [results[d.name] for d in devices]
            _write_batch_files(out, base_id, options, units, copy_mode, started)
            _write_state(out, base_id, options, complete=all(u.status != "failed" for u in units))
        finally:
            _clean_temp(out)
            shutil.rmtree(out / TMP_DIR, ignore_errors=True)
    return EmitResult(str(out), base_id, options.settings(), copy_mode, units, time.monotonic() - started)


# ---------------------------------------------------------------- planning (before any work)

def _check_inputs(base: Path, devices: list[Device], out: Path) -> None:
    if not devices:
        raise UsageError("the device list is empty")
    if not base.is_file():
        raise UsageError(f"base image {base} not found (or not a regular file)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output directory {out} exists and is not a directory")
    if out.resolve() in base.resolve().parents:
        raise UsageError(f"the base image {base} must not be inside the output directory {out}")


@contextlib.contextmanager
def _locked(out: Path):
    """One emit per output directory at a time (workers of a killed run may still be exiting)."""
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(f"another imagetools emit is writing to {out}") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def _clean_temp(out: Path) -> None:
    """Remove what a killed run left; put back a published unit that was being replaced."""
    tmp = out / TMP_DIR
    if not tmp.is_dir():
        return
    for entry in tmp.iterdir():
        if entry.name.startswith(_REPLACED) and not (out / entry.name[len(_REPLACED):]).exists():
            os.rename(entry, out / entry.name[len(_REPLACED):])
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _read_state(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(f"{out / STATE_FILE} is unreadable ({exc}); it records which base image "
                                 f"the units were made from: restore it or use a new output directory") from None


def _base_identity(base: Path, state: dict[str, Any] | None) -> dict[str, Any]:
    """Cheap identity (size, mtime, partition tables); the content hash is reused from the state
    when those still match, computed otherwise."""
    st = base.stat()
    ident = {"path": str(base.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "table_sha256": _table_sha256(base, st.st_size)}
    old = (state or {}).get("base", {})
    if all(old.get(k) == ident[k] for k in ("size", "mtime_ns", "table_sha256")) and "sha256" in old:
        ident["sha256"] = old["sha256"]
    return ident


def _table_sha256(base: Path, size: int) -> str:
    """First and last MiB: MBR/EBR, primary and backup GPT."""
    h = hashlib.sha256()
    with open(base, "rb") as f:
        h.update(f.read(_MiB))
        f.seek(max(0, size - _MiB))
        h.update(f.read(_MiB))
    return h.hexdigest()


def _published_units(out: Path, devices: list[Device]) -> dict[str, dict[str, Any]]:
    """Records of the listed units already published in OUT; a unit directory that disagrees with
    the device list is refused (for every such unit at once) before anything is written."""
    found: dict[str, dict[str, Any]] = {}
    problems = []
    for device in devices:
        unit_dir = out / device.name
        if not unit_dir.exists():
            continue
        try:
            record = json.loads((unit_dir / UNIT_FILE).read_text())
        except (OSError, ValueError):
            problems.append(f"{unit_dir} exists but was not written by imagetools emit; move it away")
            continue
        if record.get("identity") != device.identity:
            problems.append(f"{unit_dir} was emitted for identity {json.dumps(record.get('identity'))}, the device "
                            f"list (line {device.line}) now says {json.dumps(device.identity)}; a published unit "
                            f"keeps its identity: remove {unit_dir} or rename the unit")
        elif device.key_fingerprint and device.key_fingerprint != record.get("fingerprint"):
            problems.append(f"{unit_dir} holds key {record.get('fingerprint', '?')[:16]}…, the device list "
                            f"(line {device.line}) gives {device.key_path} ({device.key_fingerprint[:16]}…); "
                            f"remove {unit_dir} to re-emit it with that key")
        else:
            found[device.name] = record
    problems += _conflicts_elsewhere(out, devices)
    if problems:
        raise EnvironmentProblem(f"{out}: {len(problems)} published unit(s) conflict with the device list: "
                                 + "; ".join(problems))
    return found


def _other_units(out: Path, listed: set[str]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(unit directory, unit.json record) of the units published in OUT but not named in listed."""
    for unit_json in sorted(out.glob(f"*/{UNIT_FILE}")):
        if unit_json.parent.name in listed:
            continue
        try:
            record = json.loads(unit_json.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("identity"), dict):
            yield unit_json.parent, record


def _conflicts_elsewhere(out: Path, devices: list[Device]) -> list[str]:
    """One identity and one key per unit across the device list and everything published in OUT."""
    identities, fingerprints = {}, {}
    for unit_dir, record in _other_units(out, {d.name for d in devices}):
        identities[canonical_identity(record["identity"])] = unit_dir
        fingerprints[record.get("fingerprint")] = unit_dir
    problems = []
    for device in devices:
        other = identities.get(canonical_identity(device.identity))
        if other is not None:
            problems.append(f"identity {json.dumps(device.identity)} (line {device.line}) was already emitted "
                            f"as {other} with its own key; name the unit {other.name!r} again or remove {other}")
        other = fingerprints.get(device.key_fingerprint) if device.key_fingerprint else None
        if other is not None:
            problems.append(f"key {device.key_path} (line {device.line}) is already published for the unit "
                            f"{other}: every unit needs a key of its own")
    return problems


def _check_changes(state: dict[str, Any] | None, base_id: dict[str, Any], options: EmitOptions,
                   published: dict[str, dict[str, Any]], out: Path, content_sha256: Callable[[], str]) -> None:
    """Published units must come from this base with these settings, unless force."""
    if not published or options.force:
        return
    if state is None:  # state file lost: the unit records say what they were made from
        record = next(iter(published.values()))
        state = {"base": {"sha256": record.get("base_sha256")}, "settings": record.get("settings")}
    old_base = state.get("base", {})
    if "sha256" not in base_id:  # cheap identity differs: compare the content before refusing
        base_id["sha256"] = content_sha256()
    if old_base.get("sha256") != base_id["sha256"]:
        raise EnvironmentProblem(
            f"the base image differs from the one {len(published)} unit(s) in {out} were made from "
            f"({old_base.get('path', '?')}, sha256 {str(old_base.get('sha256'))[:16]}...); use --force to "
            f"re-emit them from this base (their keys are kept) or a new output directory")
    if state.get("settings") != options.settings():
        raise EnvironmentProblem(
            f"the settings differ from the run that made {len(published)} unit(s) in {out} "
            f"(was {json.dumps(state.get('settings'))}); use --force to re-emit the published units with the "
            f"new settings (they keep their keys; new keys follow the new settings) or a new output directory")


def _plan(devices: list[Device], published: dict[str, dict[str, Any]], base: Path, out: Path,
          options: EmitOptions, data: PartInfo) -> list[_Job]:
    jobs = []
    for device in devices:
        record = published.get(device.name)
        if record is not None and not options.force:
            continue
        key_path = str(device.key_path) if device.key_path else None
        key_from_image, source = None, "device list" if key_path else "generated"
        if record is not None and not key_path:
            source = "kept"
            private = out / device.name / "private.key"
            if private.exists():
                key_path = str(private)
            else:
                key_from_image = str(out / device.name / record["image"])
        jobs.append(_Job(device.name, device.identity, key_path, key_from_image, source, str(base),
                         _suffix(base), str(out), options, "", record is not None, data))
    return jobs


def _suffix(base: Path) -> str:
    return base.suffix or ".img"


def _copy_mode(base: Path, out: Path) -> str:
    """'reflink' if OUT's filesystem can clone the base (tried once), else 'sparse'."""
    probe = _private_dir(out / TMP_DIR) / f"reflink-probe-{uuid.uuid4().hex}"
    try:
        return "reflink" if clone(base, probe) else "sparse"
    finally:
        probe.unlink(missing_ok=True)


def _private_dir(path: Path) -> Path:
    """A 0700 directory (whatever the umask): unit directories hold private keys and images."""
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _check_space(base: Path, out: Path, units: int, copy_mode: str) -> None:
    """Refuse before starting if the units cannot fit: each costs the base's allocated size without
    reflink (a few MiB of changed blocks with it), plus its bmap and keys."""
    per_unit = (8 * _MiB if copy_mode == "reflink" else allocated_bytes(base) + 2 * _MiB)
    need = per_unit * units
    st = os.statvfs(out)
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise EnvironmentProblem(
            f"not enough space in {out}: {units} unit(s) need about {human_size(need)} "
            f"({human_size(per_unit)} each, {copy_mode} copies), {human_size(free)} free; free some space or "
            f"emit fewer units per run")


# ---------------------------------------------------------------- resume

def _recheck(out: Path, device: Device, record: dict[str, Any]) -> UnitResult:
    """A published unit: its files are there and unchanged since publication (stat only); if the
    image was touched since, verify it again (without fsck) before counting it done."""
    unit_dir = out / device.name
    result = _result_from_record(record, unit_dir, "skipped")
    missing = [f for f in record.get("files", []) if not (unit_dir / f).exists()]
    if missing:
        result.status, result.error = "failed", (f"published unit lost {', '.join(missing)}; "
                                                 f"use --force to re-emit it with its key")
        return result
    image = unit_dir / record["image"]
    st = image.stat()
    recorded = (record.get("image_size"), record.get("image_mtime_ns"),
                record.get("image_ctime_ns", st.st_ctime_ns))  # ctime: records before it was kept
    if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) == recorded:
        return result
    pub = keys.read_public_file(unit_dir / "public.key")
    report = verify_image(image, expected=pub, fsck=False)
    if not report.ok:
        result.status = "failed"
        result.error = ("published image changed and no longer verifies: "
                        + "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
                        + "; use --force to re-emit it with its key")
    return result


def _result_from_record(record: dict[str, Any], unit_dir: Path, status: str) -> UnitResult:
    return UnitResult(
        name=record["name"], identity=record["identity"], status=status,
        fingerprint=record.get("fingerprint"), key_type=record.get("key_type"),
        key_source=record.get("key_source"), image=str(unit_dir / record["image"]),
        image_sha256=record.get("image_sha256"), verify=record.get("verify"),
        timings=record.get("timings", {}))


# ---------------------------------------------------------------- running the units

def _run(jobs: list[_Job], workers: int | None, results: dict[str, UnitResult], total: int,
         progress: Progress | None, reuse: bmap.Reuse | None) -> None:
    """Units go in chunks through two stages. Stage 1 (key, data partition, debugfs, e2fsck) runs
    for a whole chunk first: debugfs and e2fsck fsync the image, and an fsync commits the journal,
    which waits for every other image being written back; so stage 1 runs while nothing is.
    Stage 2 (the rest of the copy, checks, hashing) never waits for the disk, and its images are
    written back in batches (see _Publisher) while the next ones are built."""
    global _REUSE
    _REUSE = reuse
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    publisher = _Publisher(Path(jobs[0].out_dir), results, total, progress,
                           batch=_sync_batch(jobs[0].base, workers))
    with _pool(workers) as pool:
        for start in range(0, len(jobs), _CHUNK_UNITS):
            staged = []
            chunk = [(job,) for job in jobs[start:start + _CHUNK_UNITS]]
            for (job,), (result, stage) in _each(pool, _prepare_unit, chunk, workers * 2, publisher.stopped):
                if stage is None:
                    publisher.add(result, job)
                else:
                    staged.append((job, result, stage))
            for (job, *_), result in _each(pool, _finish_unit, staged, workers * 2 + publisher.batch,
                                           publisher.stopped):
                publisher.add(result, job)
            publisher.flush()
            if publisher.stopped():
                break
    if publisher.disk_full:
        full = publisher.disk_full[0]
        left = sum(job.name not in results for job in jobs) + len(publisher.disk_full)
        raise EnvironmentProblem(
            f"disk full in {jobs[0].out_dir} while emitting {full.name} ({full.error}); "
            f"{sum(r.status == 'emitted' for r in results.values())} unit(s) published completely, "
            f"{left} not started or discarded; free some space and run the same command again to finish")


@contextlib.contextmanager
def _pool(workers: int):
    """Worker processes, or None to run in this process."""
    if workers == 1:
        yield None
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_worker_init)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _each(pool: ProcessPoolExecutor | None, fn: Callable, calls: list[tuple], inflight: int,
          stopped: Callable[[], bool]) -> Iterator[tuple[tuple, Any]]:
    """(args, fn(*args)) for each argument tuple, as they complete, at most `inflight` submitted at
    a time; nothing new is started once stopped() (a full disk)."""
    if pool is None:
        for args in calls:
            if stopped():
                return
            yield args, fn(*args)
        return
    queue = iter(calls)
    pending: dict[Future, tuple] = {}
    while True:
        if not stopped():
            for args in _take(queue, inflight - len(pending)):
                pending[pool.submit(fn, *args)] = args
        if not pending:
            return
        complete, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in complete:
            args = pending.pop(fut)
            try:
                yield args, fut.result()
            except BrokenProcessPool:
                raise EnvironmentProblem(
                    "a worker process died (out of memory or killed); units published so far "
                    "are complete: run the same command again to finish") from None


def _sync_batch(base: str, workers: int) -> int:
    """Units to make durable together: enough for efficient writeback, bounded in dirty memory."""
    return max(workers, min(4 * workers, _SYNC_BYTES // max(allocated_bytes(base), 1)))


class _Publisher:
    """Built units are written back together, one syncfs for a batch (an fsync per image waits
    for each image's writeback alone, which is several times slower and stalls its worker), and
    only then published by rename: a unit is never visible before its image is on disk."""

    def __init__(self, out: Path, results: dict[str, UnitResult], total: int,
                 progress: Progress | None, batch: int):
        self.out, self.results, self.total, self.progress, self.batch = out, results, total, progress, batch
        self.ready: list[tuple[UnitResult, _Job]] = []
        self.disk_full: list[UnitResult] = []

    def stopped(self) -> bool:
        return bool(self.disk_full)

    def add(self, result: UnitResult, job: _Job) -> None:
        if result.status == "built":
            self.ready.append((result, job))
            if len(self.ready) >= self.batch:
                self.flush()
        else:
            self._finished(result)

    def flush(self) -> None:
        if not self.ready:
            return
        ready, self.ready = self.ready, []
        try:
            sync_filesystem(self.out)
        except OSError as exc:
            for result, _ in ready:
                self._discard(result, exc)
            return
        for result, job in ready:
            try:
                _publish(Path(result.tmp), self.out, job.name, job.replace)
            except OSError as exc:
                self._discard(result, exc)
                continue
            result.status, result.tmp = "emitted", None
            result.image = str(self.out / job.name / Path(result.image).name)
            self._finished(result)

    def _discard(self, result: UnitResult, exc: OSError) -> None:
        shutil.rmtree(result.tmp, ignore_errors=True)
        result.status, result.tmp = "failed", None
        result.error, result.disk_full = _os_error(exc)
        self._finished(result)

    def _finished(self, result: UnitResult) -> None:
        self.results[result.name] = result
        if result.disk_full:
            self.disk_full.append(result)
        if self.progress:
            self.progress(result, len(self.results), self.total)


def _take(it: Iterator, n: int) -> list:
    out: list = []
    while len(out) < n:
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def _worker_init() -> None:
    """Workers die with the parent: an orphan must not publish behind a re-run's back."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C


@dataclass(frozen=True)
class _Stage:
    """What stage 1 hands to stage 2 (picklable)."""

    tmp: Path
    image: Path
    cloned: bool
    fsck: Check
    files: list[str]


def _prepare_unit(job: _Job) -> tuple[UnitResult, _Stage | None]:
    """Stage 1 in a temporary directory: key files, image with the data partition (the whole
    image if reflinked) and the key, e2fsck of the data partition. Never raises."""
    result = UnitResult(job.name, job.identity, "failed", key_source=job.key_source)
    tmp = Path(job.out_dir) / TMP_DIR / f"{job.name}.{uuid.uuid4().hex[:12]}"
    stage = _guarded(job, result, tmp, lambda: _prepare(job, tmp, result))
    return result, stage


def _finish_unit(job: _Job, result: UnitResult, stage: _Stage) -> UnitResult:
    """Stage 2: the rest of the image, the checks, bmap and SHA-256, the unit's records; status
    "built" (the parent publishes it). Never raises."""
    if _guarded(job, result, stage.tmp, lambda: _finish(job, stage, result)) is not None:
        result.status, result.tmp = "built", str(stage.tmp)
    return result


def _guarded(job: _Job, result: UnitResult, tmp: Path, step: Callable[[], Any]) -> Any:
    """step() with every failure turned into result.error (and the unit's files removed)."""
    try:
        value = step()
        if result.error is None:
            return value
    except OSError as exc:
        result.error, result.disk_full = _os_error(exc)
    except ImageToolsError as exc:
        result.error = str(exc)
        result.disk_full = _nearly_full(Path(job.out_dir), job.base)
    except Exception as exc:  # a worker must report, not die: the batch goes on
        result.error = f"{type(exc).__name__}: {exc}"
    shutil.rmtree(tmp, ignore_errors=True)
    result.status = "failed"
    return None


def _os_error(exc: OSError) -> tuple[str, bool]:
    """(message, whether the disk is full)."""
    message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return message, exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _prepare(job: _Job, tmp: Path, result: UnitResult) -> _Stage:
    t = time.monotonic()
    _private_dir(tmp.parent)
    tmp.mkdir(mode=0o700)
    os.chmod(tmp, 0o700)
    pem, private = _unit_key(job)
    result.fingerprint, result.key_type = keys.fingerprint(private), keys.describe(private)
    files = ["public.key", "identity.json", UNIT_FILE]
    if not job.options.discard_private_keys:
        keys.write_secret(tmp / "private.key", pem, durable=False)
        files.append("private.key")
    (tmp / "public.key").write_bytes(keys.public_pem(private))
    t = _lap(result, "key", t)
    image = tmp / f"{job.name}{job.suffix}"
    cloned = clone(job.base, image)
    if not cloned:
        copy_extents(job.base, image, inside=_window(job.data))
    t = _lap(result, "copy", t)
    write_key(image, job.data, pem, DATA_KEY_PATH)
    t = _lap(result, "inject", t)
    fsck = fsck_check(image, job.data)
    _lap(result, "verify", t)
    return _Stage(tmp, image, cloned, fsck, files)


def _finish(job: _Job, stage: _Stage, result: UnitResult) -> bool:
    t = time.monotonic()
    image, files = stage.image, list(stage.files)
    if not stage.cloned:
        copy_extents(job.base, image, outside=_window(job.data))
    t = _lap(result, "copy", t)
    report = verify_image(image, expected=keys.read_public_file(stage.tmp / "public.key"), fsck=False)
    report.replace(stage.fsck)
    result.verify = report.to_dict()
    result.verify["target"] = image.name
    t = _lap(result, "verify", t)
    if not report.ok:
        result.error = "verification failed: " + "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
        return False
    scan = bmap.scan(image, reuse=_REUSE)
    result.image_sha256 = scan.sha256
    if job.options.bmap:
        (stage.tmp / f"{image.name}.bmap").write_bytes(bmap.render(scan.size, scan.ranges))
        files.append(f"{image.name}.bmap")
    _lap(result, "bmap", t)
    result.image = str(image)
    files.append(image.name)
    (stage.tmp / "identity.json").write_text(json.dumps(job.identity, indent=2) + "\n")
    st = image.stat()
    record = {"name": job.name, "identity": job.identity, "fingerprint": result.fingerprint,
              "key_type": result.key_type, "key_source": job.key_source, "image": image.name,
              "image_size": st.st_size, "image_mtime_ns": st.st_mtime_ns,
              "image_ctime_ns": st.st_ctime_ns, "image_sha256": scan.sha256,
              "base_sha256": job.base_sha256, "settings": job.options.settings(), "files": sorted(files),
              "verify": result.verify, "timings": result.timings}
    (stage.tmp / UNIT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return True


def _window(data: PartInfo) -> tuple[int, int]:
    """The data partition's bytes: all that injection changes."""
    return data.partition.start, data.partition.end


def _unit_key(job: _Job) -> tuple[bytes, keys.PrivateKey]:
    """PEM and key object; a generated key is not parsed back (loading an RSA key validates it,
    which costs about half a key generation)."""
    if job.key_path or job.key_from_image:
        pem = (keys.read_key_bytes(job.key_path, "private key") if job.key_path
               else _key_from_image(job.key_from_image))
        return pem, keys.load_private(pem, f"key of {job.name}")
    private = keys.generate(job.options.key_spec)
    return keys.private_pem(private, job.options.key_spec.format), private


def _key_from_image(image: str) -> bytes:
    """The only copy of a published unit's key when its private.key was discarded."""
    data = open_layout(image).require("data")
    with data.open(image) as fs:
        return read_key_in_image(fs, DATA_KEY_PATH)


def _publish(tmp: Path, out: Path, name: str, replace: bool) -> None:
    """Rename the finished unit directory into place (a published unit being re-emitted is moved
    aside first; a killed run puts it back on the next start)."""
    target = out / name
    if replace and target.exists():
        aside = out / TMP_DIR / f"{_REPLACED}{name}"
        os.rename(target, aside)
        os.rename(tmp, target)
        shutil.rmtree(aside)
    else:
        os.rename(tmp, target)


def _lap(result: UnitResult, name: str, since: float) -> float:
    now = time.monotonic()
    result.timings[name] = round(result.timings.get(name, 0) + now - since, 4)
    return now


def _nearly_full(out: Path, base: str) -> bool:
    """Tools like debugfs report a full disk only as text: judge by the free space left."""
    try:
        st = os.statvfs(out)
        return st.f_bavail * st.f_frsize < max(allocated_bytes(base), 16 * _MiB)
    except OSError:
        return False


# ---------------------------------------------------------------- batch files

def _write_state(out: Path, base_id: dict[str, Any], options: EmitOptions, complete: bool) -> None:
    _write_atomic(out / STATE_FILE, json.dumps(
        {"version": STATE_VERSION, "base": base_id, "settings": options.settings(), "complete": complete},
        indent=2) + "\n")


def _write_batch_files(out: Path, base_id: dict[str, Any], options: EmitOptions, units: list[UnitResult],
                       copy_mode: str, started: float) -> None:
    """preauth.json/.csv list every unit published in OUT, by this run or an earlier one with
    another device list (pushing them must not leave a batch pending); report.json this run's."""
    good = [(u.name, u.identity, u.fingerprint) for u in units if u.status != "failed"]
    others = _other_units(out, {u.name for u in units})
    good += [(unit_dir.name, r["identity"], r.get("fingerprint")) for unit_dir, r in others]
    preauth = [{"name": name, "identity_data": identity,
                "pubkey": (out / name / "public.key").read_text()} for name, identity, _ in good]
    _write_atomic(out / "preauth.json", json.dumps(preauth, indent=2) + "\n")
    _write_atomic(out / "preauth.csv", _preauth_csv(preauth, [fp for *_, fp in good]))
    report = EmitResult(str(out), base_id, options.settings(), copy_mode, units, time.monotonic() - started)
    _write_atomic(out / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")


def _preauth_csv(preauth: list[dict[str, Any]], fingerprints: list[str | None]) -> str:
    import csv
    import io

    attrs: list[str] = []
    for rec in preauth:
        attrs += [a for a in rec["identity_data"] if a not in attrs]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([spreadsheet_safe(c) for c in ["name", *attrs, "fingerprint", "pubkey"]])
    for rec, fingerprint in zip(preauth, fingerprints):
        row = [rec["name"], *(rec["identity_data"].get(a, "") for a in attrs), fingerprint, rec["pubkey"]]
        writer.writerow([spreadsheet_safe(c or "") for c in row])
    return buf.getvalue()


def spreadsheet_safe(cell: str) -> str:
    """A cell a spreadsheet shows as text: one that could start a formula gets a leading "'"."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


def _write_atomic(path: Path, text: str) -> None:
    """Temporary name inside OUT's temp directory, so a killed run leaves nothing beside the units."""
    tmp = _private_dir(path.parent / TMP_DIR) / f"{path.name}.{os.getpid()}"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
