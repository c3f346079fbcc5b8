"""Debian's chromium, headless, driven by selenium through the system chromedriver.

Pages are read through the stable attributes of the dashboard: `data-slot` and `data-state` on
each tile, `data-count` (and `data-value`, the raw number) on each count, `data-link` on the
connection badge. Every read is one script call, so a page that changes in between is never
read half old, half new.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1600, 1000)
T = TypeVar("T")

_TILES = """return Object.fromEntries([...document.querySelectorAll('#tiles [data-slot]')]
                                    .map(e => [e.dataset.slot, e.dataset.state]));"""
_TILE = """const tile = [...document.querySelectorAll('#tiles [data-slot]')]
                .find(e => e.dataset.slot === arguments[0]);
           return tile ? tile.innerText : null;"""
_COUNTS = """return Object.fromEntries([...document.querySelectorAll('[data-count]')]
                                     .map(e => [e.dataset.count, e.dataset.value || null]));"""
_EVENTS = """const table = document.getElementById('events');
             return {multi: table.classList.contains('multi'),
                     rows: [...table.tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent))};"""


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


@contextlib.contextmanager
def open_page(url: str, *, width: int = WINDOW[0], height: int = WINDOW[1]) -> Iterator[Any]:
    """A headless chromium showing URL; the browser always quits. Skips when there is none."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # chromium keeps its profile and singleton socket in TMPDIR, crash reports in XDG_CONFIG_HOME:
    # one directory per browser, removed after
    scratch = tempfile.mkdtemp(prefix="dashboard-browser-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        f"--window-size={width},{height}",
        f"--user-data-dir={scratch}/profile",
    ):
        options.add_argument(flag)
    try:
        service = Service(
            executable_path=CHROMEDRIVER,
            env={
                **os.environ,
                "TMPDIR": scratch,
                "XDG_CONFIG_HOME": f"{scratch}/config",
                "XDG_CACHE_HOME": f"{scratch}/cache",
            },
        )
        driver = webdriver.Chrome(options=options, service=service)
        try:
            driver.set_page_load_timeout(20)
            driver.set_script_timeout(10)
            driver.get(url)
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def wait_until(
    driver: Any, predicate: Callable[[Any], T], timeout: float = 10.0, what: str = "the page to change"
) -> T:
    """PREDICATE(driver)'s first truthy value; fails the test after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate(driver)
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}; last seen: {last!r}")
        time.sleep(0.05)


def tile_states(driver: Any) -> dict[str, str]:
    """{slot: state} of every tile, in page order."""
    return dict(driver.execute_script(_TILES))


def tile_text(driver: Any, slot: str) -> str:
    """The text a person sees on SLOT's tile."""
    found = driver.execute_script(_TILE, slot)
    if found is None:
        raise KeyError(f"no tile for slot {slot!r}")
    return str(found)


def counts(driver: Any) -> dict[str, int | float | None]:
    """The line's counts as shown: passed, failed, interrupted, free (units left), per_hour."""
    return {name: _number(name, value) for name, value in driver.execute_script(_COUNTS).items()}


def events(driver: Any) -> tuple[bool, list[list[str]]]:
    """(whether the station column shows, the event rows as cell texts: time, station, slot,
    event, unit, detail)."""
    found = driver.execute_script(_EVENTS)
    return bool(found["multi"]), [list(row) for row in found["rows"]]


def link_state(driver: Any) -> str:
    """'connecting', 'connected' or 'disconnected' (the badge shows "disconnected — retrying")."""
    return str(driver.execute_script("return document.getElementById('link').dataset.link;"))


def save_screenshot(driver: Any, path: str | os.PathLike[str]) -> Path:
    """A PNG of the window as it is now (the README's picture of a busy line)."""
    path = Path(path)
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"chromium did not write a screenshot to {path}")
    return path


def _number(name: str, value: str | None) -> int | float | None:
    if not value:
        return None
    return float(value) if name == "per_hour" else int(value)
