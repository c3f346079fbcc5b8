"""A worker's scratch (personalize.reused_scratch) after a unit failed once its key was in it,
the failure a real one: the e2fsck on PATH cannot run, or runs and reports errors. The next
unit's delta is the one a fresh scratch gives, and neither it nor the scratch holds a byte of the
failed unit's key. (test_scratch.py injects failures into our own functions instead.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagetools import keys
from imagetools.errors import ToolMissingError
from imagetools.layout import open_layout
from imagetools.personalize import Scratch, reused_scratch
from imagetools.verify import Status, data_path

pytestmark = pytest.mark.integration

KEY_REL = data_path("/data/mender/mender-agent.pem")
BROKEN = {
    "cannot run": "#!/nonexistent/interpreter\n",
    "reports errors": "#!/bin/sh\necho 'Inode 12 has illegal block(s).'\nexit 4\n",
}


def _pieces(pem: bytes) -> list[bytes]:
    """The key's base64 lines: any block holding the key holds them."""
    return [line for line in pem.splitlines() if line and not line.startswith(b"-----")]


def _traces(pem: bytes, data: bytes) -> list[bytes]:
    return [piece for piece in _pieces(pem) if piece in data]


@pytest.mark.parametrize("how", sorted(BROKEN))
def test_after_a_unit_failed_with_its_key_in_the_scratch_the_next_delta_is_a_fresh_ones(
    make_image, tmp_path, monkeypatch, how
):
    monkeypatch.setenv("E2FSPROGS_FAKE_TIME", "1700000000")  # deltas of one key compare equal
    base = make_image("sdimg")
    data = open_layout(base).require("data")
    spec = keys.KeySpec(type="ed25519")
    served, failed, later = (keys.private_pem(keys.generate(spec)) for _ in range(3))
    worker, fresh_dir, tools = tmp_path / "worker", tmp_path / "fresh", tmp_path / "bin"
    for d in (worker, fresh_dir, tools):
        d.mkdir()
    scratch = reused_scratch(worker, base, data)
    first, check = scratch.delta(served, KEY_REL, "ab" * 32)  # the worker's scratch serves a unit
    assert check.status == Status.PASS and _traces(served, b"".join(b for _, b in first.extents))

    e2fsck = tools / "e2fsck"
    e2fsck.write_text(BROKEN[how])
    e2fsck.chmod(0o755)
    with monkeypatch.context() as env:
        env.setenv("PATH", f"{tools}:{os.environ['PATH']}")
        if how == "cannot run":
            with pytest.raises(ToolMissingError, match="cannot run e2fsck"):
                scratch.delta(failed, KEY_REL, "ab" * 32)
        else:
            bad, check = scratch.delta(failed, KEY_REL, "ab" * 32)
            assert check.status == Status.FAIL and "illegal block" in check.detail
            assert _traces(failed, b"".join(b for _, b in bad.extents))  # the key was in it
    assert not _traces(failed, Path(scratch.path).read_bytes())

    again = reused_scratch(worker, base, data)
    assert again is scratch  # the same worker, the same scratch
    reused, check = again.delta(later, KEY_REL, "ab" * 32)
    assert check.status == Status.PASS
    fresh, _ = Scratch(base, data, fresh_dir).delta(later, KEY_REL, "ab" * 32)
    assert reused == fresh and reused.extents
    blocks = b"".join(b for _, b in reused.extents)
    assert not _traces(failed, blocks) and not _traces(served, blocks)
    assert not _traces(failed, Path(scratch.path).read_bytes())
