"""Bounded runs for hostile inputs: a call that must return in time, a child limited in memory
and time, so a regression fails its test instead of hanging or exhausting the suite."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading

import pytest


def finishes_within(seconds: float, fn, *args):
    """Run fn(*args) in a thread and return what it raised (None if nothing); fail, instead of
    hanging the suite, when it has not returned in time (a FIFO opened for reading blocks)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn(*args)
            outcome.append(None)
        except BaseException as exc:  # handed to the test, which checks what it is
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        _unblock_fifos(args)
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {seconds} s")
    return outcome[0]


def _unblock_fifos(args) -> None:
    """A reader blocked in open() of a FIFO is released once a writer opens and closes it."""
    for arg in args:
        if isinstance(arg, (str, os.PathLike)) and os.path.exists(arg):
            try:
                os.close(os.open(arg, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass


def run_limited(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command with 1 GiB of address space and a timeout: a regression that reads /dev/zero
    to the end or spends hours in OpenSSL (which holds the GIL) fails its test, not the test run."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv} did not finish within {timeout} s")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return run_limited(sys.executable, "-c", code, *args)
