"""Names made of arbitrary bytes, put into a real ext4 with `mkfs.ext4 -d`, then ls, rm -r, verify
and inject on it: never a host side effect, never anything but our own errors, e2fsck clean."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.hostile_data import data_clean, hostile_tree, with_data_tree
from support.images import build_image

from imagetools import files, keys
from imagetools.errors import ImageToolsError
from imagetools.inject import inject_key
from imagetools.verify import verify_image

pytestmark = pytest.mark.integration

names = st.binary(min_size=1, max_size=255).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)
KEY = keys.private_pem(keys.generate(keys.KeySpec(type="ed25519")))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_image(tmp_path_factory.mktemp("names-base"), "sdimg", {})


@contextlib.contextmanager
def _workdir():
    """A fresh cwd per example: a `!touch pwned` escaping into a shell would land here."""
    old = os.getcwd()
    work = Path(tempfile.mkdtemp(prefix="imagetools-names-"))
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(old)
        shutil.rmtree(work, ignore_errors=True)


def _ours(call, *args, **kw):
    """Run a library call: it may refuse (ImageToolsError), never fail any other way."""
    try:
        return call(*args, **kw)
    except ImageToolsError:
        return None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(names, min_size=1, max_size=6, unique=True))
@example([b'x"\n!touch pwned\n', b"q\nlcd ..\ndump x pwned"])
@example([b"\x1b[2J\r\x85\x0c", "\u202e".encode() + b"\xff\xfe"])
def test_arbitrary_names_never_escape(base, names):
    with _workdir() as work:
        img = work / "img.sdimg"
        subprocess.run(["cp", "--sparse=always", str(base), str(img)], check=True)
        with_data_tree(img, hostile_tree(work / "tree", names))
        listing = _ours(files.list_path, img, "/data/evil")
        assert listing is not None  # the ext4 reader lists any name
        assert {e.name.encode("utf-8", "surrogateescape") for e in listing.entries} == set(names)
        removed = _ours(files.remove, img, "/data/evil", recursive=True)
        remaining = _ours(files.list_path, img, "/data/evil")
        assert (removed is not None) == (remaining is None)  # all removed, or nothing
        assert remaining is None or len(remaining.entries) == len(names)
        assert _ours(inject_key, img, KEY) is not None
        report = verify_image(img, expected=keys.public_pem(keys.load_private(KEY, "k")))
        assert report.ok, report.failed
        assert sorted(os.listdir(work)) == ["img.sdimg", "tree"]
        data_clean(img)
