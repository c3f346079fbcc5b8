"""Runs over many units (imagetools.preauth.runs): results in order, at most `jobs` at a time,
an abort cancelling what has not started, and which server errors abort a run."""

from __future__ import annotations

import threading
import time

import pytest

from imagetools.errors import AuthError, ServerError
from imagetools.preauth import runs
from imagetools.preauth.runs import GOOD_STATUSES, aborts, run_all
from imagetools.server import BadResponse


def test_results_keep_the_items_order_and_progress_hears_each():
    heard: list[int] = []

    def slow_first(n: int) -> int:
        time.sleep(0.05 if n == 0 else 0)
        return n * 10

    assert run_all(slow_first, [0, 1, 2, 3], 4, heard.append) == [0, 10, 20, 30]
    assert sorted(heard) == [0, 10, 20, 30] and heard[-1] == 0  # the slow one is heard last
    assert run_all(slow_first, [], 4, heard.append) == []


@pytest.mark.parametrize("jobs", [1, 0, -3])
def test_at_most_jobs_at_a_time_and_at_least_one(jobs):
    lock = threading.Lock()
    active, most = 0, 0
    names: set[str] = set()

    def work(n: int) -> int:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
            names.add(threading.current_thread().name)
        time.sleep(0.02)
        with lock:
            active -= 1
        return n

    assert run_all(work, list(range(4)), jobs, None) == [0, 1, 2, 3]
    assert most == 1
    assert len(names) == 1 and next(iter(names)).startswith("preauth_")


def test_two_jobs_run_two_at_once():
    both = threading.Barrier(2, timeout=5)
    assert run_all(lambda n: both.wait() + 10 * n, [0, 1], 2, None) in ([10, 10], [1, 10], [0, 11])


def test_an_abort_cancels_the_items_not_started_and_is_raised():
    started: list[int] = []

    def work(n: int) -> int:
        started.append(n)
        if n == 0:
            raise AuthError("refused", 401)
        time.sleep(0.5)
        return n

    with pytest.raises(AuthError):
        run_all(work, list(range(6)), 1, None)
    assert started in ([0], [0, 1])  # the one a worker took before the abort may run; no other


def test_progress_is_not_called_for_an_abort():
    heard: list[int] = []

    def work(n: int) -> int:
        if n == 1:
            raise ServerError("gone")
        return n

    with pytest.raises(ServerError):
        run_all(work, [0, 1], 1, heard.append)
    assert heard == [0]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ServerError("no server"), True),
        (ServerError("unauthorized", 401), True),
        (ServerError("forbidden", 403), True),
        (AuthError("unauthorized", 401), True),
        (BadResponse("not the API", 200), True),
        (BadResponse("not the API", 201), True),
        (ServerError("bad request", 400), False),
        (ServerError("payment", 402), False),
        (ServerError("not found", 404), False),
        (ServerError("conflict", 409), False),
        (ServerError("busy", 500), False),
        (ServerError("busy", 503), False),
    ],
)
def test_which_errors_abort_a_run(error, expected):
    assert aborts(error) is expected


def test_the_good_statuses_are_preauthorized_and_accepted():
    assert GOOD_STATUSES == ("preauthorized", "accepted") and runs.GOOD_STATUSES is GOOD_STATUSES
