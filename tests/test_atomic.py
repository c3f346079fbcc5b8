"""Host files appear complete with their final mode, or not at all (no subprocess)."""

from __future__ import annotations

import os

import pytest

from imagetools.atomic import replace_when_done, write_atomic
from imagetools.errors import EnvironmentProblem


def test_mode_from_the_first_byte_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        with replace_when_done(tmp_path / "a.img", mode=0o644) as tmp:
            assert tmp.stat().st_mode & 0o777 == 0o644 and tmp.name == f".a.partial-{os.getpid()}.img"
        os.umask(0)
        write_atomic(tmp_path / "k", b"secret", mode=0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "a.img").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600 and (tmp_path / "k").read_bytes() == b"secret"


def test_exclusive_never_replaces_and_a_failure_leaves_nothing(tmp_path):
    target = tmp_path / "k"
    target.write_bytes(b"old")
    with pytest.raises(EnvironmentProblem, match="exists; use --force"):
        write_atomic(target, b"new", exclusive=True)
    with pytest.raises(RuntimeError):
        with replace_when_done(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    with pytest.raises(EnvironmentProblem):  # taken while we were writing
        with replace_when_done(tmp_path / "late", exclusive=True) as tmp:
            (tmp_path / "late").write_bytes(b"theirs")
    assert target.read_bytes() == b"old" and (tmp_path / "late").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "late"]
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
