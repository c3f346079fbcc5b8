"""The scratch copy of the data partition (personalize): a directory a SIGKILL leaves is removed
by the next run, nobody else's is touched, and a key never stays in a scratch after its unit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.inputs import devices_csv
from support.tools import ROOT

from imagetools import keys, personalize
from imagetools.errors import ToolMissingError
from imagetools.image import delta as delta_format
from imagetools.layout import open_layout
from imagetools.personalize import SCRATCH_PREFIX, Scratch, owner_tag
from imagetools.verify import data_path

pytestmark = pytest.mark.integration

KEY_REL = data_path("/data/mender/mender-agent.pem")


def _ended_pid() -> int:
    """The pid of a process that has ended (a scratch name with it and start time 1 is gone,
    even if the pid is reused meanwhile)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _name(pid: int, start: int, suffix: str) -> str:
    return f"{SCRATCH_PREFIX}{pid}-{start}-{os.stat('/proc/self/ns/pid').st_ino}-{suffix}"


def _scratch_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith(SCRATCH_PREFIX))


def _wait_for_scratch_file(root: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until a scratch file of the run holds data (its first unit's key went in, or is going in)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(f.stat().st_size for d in _scratch_dirs(root) for f in d.glob("data-*.img")):
            return
        time.sleep(0.01)
    pytest.fail(f"emit made no scratch file in {root} (exit {proc.poll()})")


def test_a_killed_emit_leaves_its_scratch_and_the_next_run_removes_only_that(make_image, tmp_path, cli):
    base = make_image("sdimg")
    shm, tmp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir(), tmp.mkdir()
    env = {**os.environ, "IMAGETOOLS_SCRATCH": str(shm), "TMPDIR": str(tmp)}
    exe = shutil.which("imagetools") or str(ROOT / ".venv" / "bin" / "imagetools")
    proc = subprocess.Popen(
        [
            exe,
            "emit",
            "--base",
            str(base),
            "--devices",
            str(devices_csv(tmp_path / "d.csv", 400)),
            "--out-dir",
            str(tmp_path / "OUT"),
            "--format",
            "delta",
            "--key-type",
            "ed25519",
            "--jobs",
            "2",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_scratch_file(shm, proc)
        assert proc.poll() is None, "emit ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    [left] = _scratch_dirs(shm)
    assert left.name.startswith(f"{SCRATCH_PREFIX}{proc.pid}-")

    live = shm / f"{SCRATCH_PREFIX}{owner_tag(os.getpid())}-live"  # this test process: alive
    live.mkdir()
    foreign = shm / _name(_ended_pid(), 1, "foreign")  # gone, but another user's
    foreign.mkdir()
    os.chown(foreign, 4242, 4242)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("not ours to remove")
    link = shm / _name(_ended_pid(), 1, "link")  # gone, but a link: never followed
    link.symlink_to(victim)
    other_ns = shm / f"{SCRATCH_PREFIX}{_ended_pid()}-1-1-otherns"  # another pid namespace's
    other_ns.mkdir()

    again = cli(
        "emit",
        "--base",
        base,
        "--devices",
        devices_csv(tmp_path / "one.csv", 1),
        "--out-dir",
        tmp_path / "OUT2",
        "--format",
        "delta",
        "--key-type",
        "ed25519",
        env={"IMAGETOOLS_SCRATCH": str(shm), "TMPDIR": str(tmp)},
    )
    assert again.returncode == 0, again.stderr
    assert not left.exists()
    assert set(_scratch_dirs(shm)) == {live, foreign, link, other_ns}
    assert link.is_symlink() and (victim / "keep").read_text() == "not ours to remove"


def _body(pem: bytes) -> bytes:
    """A line of the key's base64: what a scratch holding the key holds in one of its blocks."""
    return pem.splitlines()[1]


@pytest.mark.parametrize("failing", ["fsck", "diff"])
def test_a_unit_that_fails_after_its_key_was_written_leaves_no_trace_of_it(make_image, tmp_path, monkeypatch, failing):
    monkeypatch.setenv("E2FSPROGS_FAKE_TIME", "1700000000")  # deltas of the same key compare equal
    base = make_image("sdimg")
    data = open_layout(base).require("data")
    spec = keys.KeySpec(type="ed25519")
    first, failed, later = (keys.private_pem(keys.generate(spec)) for _ in range(3))
    (tmp_path / "reused").mkdir(), (tmp_path / "fresh").mkdir()
    scratch = Scratch(base, data, tmp_path / "reused")
    served, _ = scratch.delta(first, KEY_REL, "sha")  # the scratch serves a unit, then fails one
    assert _body(first) in b"".join(block for _, block in served.extents)  # the key's bytes as written

    def broken(*_args, **_kwargs):
        raise ToolMissingError(f"{failing} broke after the key was written")

    with monkeypatch.context() as patch:
        if failing == "fsck":
            patch.setattr(personalize, "fsck_check", broken)
        else:
            patch.setattr(delta_format, "diff", broken)
        with pytest.raises(ToolMissingError, match="broke"):
            scratch.delta(failed, KEY_REL, "sha")
    assert _body(failed) not in scratch.path.read_bytes()
    reused, _ = scratch.delta(later, KEY_REL, "sha")
    fresh, _ = Scratch(base, data, tmp_path / "fresh").delta(later, KEY_REL, "sha")
    assert reused == fresh and reused.extents
