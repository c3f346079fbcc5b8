"""The units through their two stages in worker processes (or in this process for one worker),
and the built units written back and published in batches."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from .. import bmap
from ..errors import EnvironmentProblem
from ..image import ImageSource
from ..personalize import scratch_space
from ..sparse import allocated_bytes, sync_filesystem
from ..unitformat import batch_key, sign_unit
from .model import Job, Progress, Status, UnitFormat, UnitResult
from .outdir import publish
from .unit import Stage, finish_unit, os_error, prepare_unit

_CHUNK_UNITS = 128  # units per round of stage 1 then stage 2 (what a kill can cost)
_SYNC_BYTES = 1 << 30  # written back per syncfs, at most (the batch is 1 to 4 units per worker)

# In a worker process only: the base's bmap/SHA-256 state and the open base (its descriptor
# inherited), set by the pool's initializer.
_worker_reuse: bmap.Reuse | None = None
_worker_base: ImageSource | None = None


def run(
    jobs: list[Job],
    workers: int | None,
    results: dict[str, UnitResult],
    total: int,
    progress: Progress | None,
    reuse: bmap.Reuse | None,
    base: ImageSource,
) -> None:
    """Units go in chunks through two stages. Stage 1 (key, data partition, debugfs, e2fsck) runs
    for a whole chunk first: debugfs and e2fsck fsync what they write (the scratch on tmpfs; the
    image itself with per-unit configuration), and on OUT's disk an fsync commits the journal,
    which waits for every other image being written back; so stage 1 runs while nothing is.
    Stage 2 (the rest of the copy, checks, hashing) never waits for the disk, and its images are
    written back in batches (see _Publisher) while the next ones are built. Delta units have no
    stage 2 (unit.prepare_unit finishes them), so they go through as one chunk: a chunk's end
    leaves a core idle until its last unit is done. Every unit reads the base on `base`, the
    run's one open of it (the workers inherit its descriptor)."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    chunk_units = len(jobs) if jobs[0].options.format == UnitFormat.DELTA else _CHUNK_UNITS
    publisher = _Publisher(Path(jobs[0].out_dir), results, total, progress, batch=_sync_batch(jobs[0].base, workers))
    with scratch_space() as scratch, _pool(workers, reuse, base) as pool:
        prepare = functools.partial(prepare_unit, base=base) if pool is None else _prepare_in_worker
        finish = functools.partial(finish_unit, reuse=reuse, base=base) if pool is None else _finish_in_worker
        for start in range(0, len(jobs), chunk_units):
            staged = []
            chunk = [(job, scratch) for job in jobs[start : start + chunk_units]]
            for (job, _), (result, stage) in _each(pool, prepare, chunk, workers * 2, publisher.stopped):
                if stage is None:
                    publisher.add(result, job)
                else:
                    staged.append((job, result, stage))
            for (job, *_), result in _each(pool, finish, staged, workers * 2 + publisher.batch, publisher.stopped):
                publisher.add(result, job)
            publisher.flush()
            if publisher.stopped():
                break
    if publisher.disk_full:
        full = publisher.disk_full[0]
        left = sum(job.name not in results for job in jobs) + len(publisher.disk_full)
        raise EnvironmentProblem(
            f"disk full in {jobs[0].out_dir} while emitting {full.name} ({full.error}); "
            f"{sum(r.status == Status.EMITTED for r in results.values())} unit(s) published completely, "
            f"{left} not started or discarded; free some space and run the same command again to finish"
        )


@contextlib.contextmanager
def _pool(workers: int, reuse: bmap.Reuse | None, base: ImageSource) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes, or None to run in this process. The workers get `reuse` and `base` as
    initargs: forked, they inherit them (never pickled; a SHA-256 state cannot be, and the base's
    descriptor is only valid because it is inherited)."""
    if workers == 1:
        yield None
        return
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init, initargs=(reuse, base)
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _worker_init(reuse: bmap.Reuse | None, base: ImageSource) -> None:
    """Workers die with the parent: an orphan must not publish behind a re-run's back."""
    global _worker_reuse, _worker_base
    _worker_reuse, _worker_base = reuse, base
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C


def _prepare_in_worker(job: Job, scratch_dir: str) -> tuple[UnitResult, Stage | None]:
    assert _worker_base is not None  # set by _worker_init before any call
    return prepare_unit(job, scratch_dir, _worker_base)


def _finish_in_worker(job: Job, result: UnitResult, stage: Stage) -> UnitResult:
    assert _worker_base is not None
    return finish_unit(job, result, stage, _worker_reuse, _worker_base)


def _each(
    pool: ProcessPoolExecutor | None, fn: Callable, calls: list[tuple], inflight: int, stopped: Callable[[], bool]
) -> Iterator[tuple[tuple, Any]]:
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
                    "are complete: run the same command again to finish"
                ) from None


def _take(it: Iterator, n: int) -> list:
    out: list = []
    while len(out) < n:
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def _tmp_dir(result: UnitResult) -> Path:
    """A built unit's directory (finish_unit sets it with the status)."""
    assert result.tmp is not None
    return Path(result.tmp)


def _sync_batch(base: str, workers: int) -> int:
    """Units to make durable together: enough for efficient writeback, bounded in dirty memory."""
    return max(workers, min(4 * workers, _SYNC_BYTES // max(allocated_bytes(base), 1)))


class _Publisher:
    """Built units are written back together, one syncfs for a batch (an fsync per image waits
    for each image's writeback alone, which is several times slower and stalls its worker), and
    only then published by rename: a unit is never visible before its image is on disk."""

    def __init__(self, out: Path, results: dict[str, UnitResult], total: int, progress: Progress | None, batch: int):
        self.out, self.results, self.total, self.progress, self.batch = out, results, total, progress, batch
        self.ready: list[tuple[UnitResult, Job]] = []
        self.disk_full: list[UnitResult] = []
        self.key = batch_key(out)  # in this process only: the workers never hold it

    def stopped(self) -> bool:
        return bool(self.disk_full)

    def add(self, result: UnitResult, job: Job) -> None:
        if result.status == Status.BUILT:
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
            for result, _ in ready:
                sign_unit(_tmp_dir(result), self.key)
            sync_filesystem(self.out)
        except OSError as exc:
            for result, _ in ready:
                self._discard(result, exc)
            return
        for result, job in ready:
            try:
                publish(_tmp_dir(result), self.out, job.name, job.replace)
            except OSError as exc:
                self._discard(result, exc)
                continue
            result.status, result.tmp = Status.EMITTED, None
            assert result.image is not None  # a built unit has its image
            result.image = str(self.out / job.name / Path(result.image).name)
            self._finished(result)

    def _discard(self, result: UnitResult, exc: OSError) -> None:
        shutil.rmtree(_tmp_dir(result), ignore_errors=True)
        result.status, result.tmp = Status.FAILED, None
        result.error, result.disk_full = os_error(exc)
        self._finished(result)

    def _finished(self, result: UnitResult) -> None:
        self.results[result.name] = result
        if result.disk_full:
            self.disk_full.append(result)
        if self.progress:
            self.progress(result, len(self.results), self.total)
