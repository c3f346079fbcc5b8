"""Shared fixtures: real Mender-style images built by scripts/make-image, cached per session (or
across sessions, in IMAGETOOLS_TEST_IMAGE_CACHE: scripts/mutation's).

`make_image(layout, **opts)` returns a private sparse copy of a cached build, so each test may
write to its image freely.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from support.images import PERSISTENT_CACHE, build_image
from support.tools import ROOT

os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
# No user configuration file (~/.config/imagetools/config.toml) may change what tests see.
os.environ.pop("IMAGETOOLS_CONFIG", None)
os.environ["XDG_CONFIG_HOME"] = str(ROOT / "tests" / "no-such-config-dir")


LEAK_DIRS = tuple(dict.fromkeys(["/dev/shm", tempfile.gettempdir()]))
_BEFORE = pytest.StashKey[set]()


def _imagetools_entries() -> set[str]:
    """The imagetools* entries of /dev/shm and the system tmp dir (scratch, fsck, peer dirs)."""
    found = set()
    for where in LEAK_DIRS:
        try:
            found |= {os.path.join(where, n) for n in os.listdir(where) if n.startswith("imagetools")}
        except OSError:
            continue
    return found


def _leaked(before: set[str]) -> set[str]:
    """Entries made during the session that are still there: a scratch directory of another
    live process (a concurrent run on this machine) is not ours; anything else gets a moment to
    vanish (another run's e2fsck directory), then counts."""
    from imagetools.personalize import SCRATCH_PREFIX, owner_gone, owner_tag

    mine = f"{SCRATCH_PREFIX}{owner_tag(os.getpid())}-"

    def ours(path: str) -> bool:
        name = os.path.basename(path)
        return not name.startswith(SCRATCH_PREFIX) or name.startswith(mine) or owner_gone(name)

    new = {p for p in _imagetools_entries() - before if ours(p)}
    if new:
        time.sleep(2)
        new &= _imagetools_entries()
    return new


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _imagetools_entries()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite leaves nothing in /dev/shm or the tmp dir: a scratch copy there may hold a key."""
    leaked = _leaked(session.config.stash.get(_BEFORE, set()))
    if not leaked:
        return
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(
            f"FAILED: the tests left {len(leaked)} imagetools entries behind: " + ", ".join(sorted(leaked)), red=True
        )


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory) -> Path:
    if PERSISTENT_CACHE:
        Path(PERSISTENT_CACHE).mkdir(parents=True, exist_ok=True)
        return Path(PERSISTENT_CACHE)
    return tmp_path_factory.mktemp("image-cache")


@pytest.fixture
def make_image(image_cache, tmp_path):
    """Build (or reuse) an image and return a fresh sparse copy private to the test."""
    counter = iter(range(1000))

    def factory(layout: str = "sdimg", name: str | None = None, **opts) -> Path:
        src = build_image(image_cache, layout, opts)
        dst = tmp_path / (name or f"img{next(counter)}{src.suffix}")
        subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
        return dst

    return factory


@pytest.fixture
def cli(tmp_path):
    """Invoke the real `imagetools` console script; returns CompletedProcess."""
    exe = shutil.which("imagetools") or str(ROOT / ".venv" / "bin" / "imagetools")

    def invoke(*args: str, input: str | bytes | None = None, env: dict | None = None):
        full_env = {**os.environ, **(env or {})}
        text = not isinstance(input, bytes)
        return subprocess.run(
            [exe, *map(str, args)], capture_output=True, text=text, input=input, env=full_env, cwd=tmp_path
        )

    return invoke


@pytest.fixture
def tls_files(tmp_path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (file names), for the HTTPS stand-ins."""
    from support.tls import self_signed

    return tuple(map(str, self_signed(tmp_path)))


@pytest.fixture
def mender():
    """The spec-validating test server (tests/support/mender_server.py) on 127.0.0.1."""
    from support.mender_server import MenderTestServer

    with MenderTestServer() as srv:
        yield srv
    assert srv.violations == [], "requests or responses violated the OpenAPI specs"


@pytest.fixture
def env(mender, tmp_path):
    """The environment for CLI runs against `mender` (its token, quick retries, a private cache)."""
    return {
        "MENDER_SERVER_URL": mender.url,
        "MENDER_TOKEN": "test-pat",
        "IMAGETOOLS_BACKOFF": "0.01",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "MENDER_PASSWORD": "",
    }
