"""Runs over many units: several requests in flight, and which errors end the run instead of one
unit."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TypeVar

from ..errors import ServerError
from ..server import BadResponse

T = TypeVar("T")
R = TypeVar("R")
GOOD_STATUSES = ("preauthorized", "accepted")


def run_all(fn: Callable[[T], R], items: list[T], jobs: int, progress: Callable[[R], None] | None) -> list[R]:
    """``fn`` over ``items``, at most ``jobs`` at a time; results in the items' order. An exception
    escaping ``fn`` (an abort) or Ctrl-C cancels the items not started yet and is re-raised."""
    results: dict[int, R] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="preauth") as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    results[futures[fut]] = fut.result()  # re-raises an abort
                    if progress:
                        progress(results[futures[fut]])
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return [results[i] for i in range(len(items))]


def aborts(exc: ServerError) -> bool:
    """True for errors that say nothing about one unit: no server, refused credentials, an answer
    breaking the API. Anything else with an HTTP status is the server refusing this unit."""
    return exc.status is None or exc.status in (401, 403) or isinstance(exc, BadResponse)
