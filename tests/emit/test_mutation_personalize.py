"""personalize, the edges scripts/mutation found untested: where scratch space goes, which names
sweep_scratch judges gone (and what it never removes), the owner tag of a process whose name holds
spaces and parentheses, and what a delta holds and leaves behind (in process, with real tools)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from support import mountns

import imagetools.personalize as personalize
from imagetools import keys
from imagetools.errors import ImageToolsError
from imagetools.layout import open_layout
from imagetools.personalize import SCRATCH_PREFIX
from imagetools.sparse import data_ranges
from imagetools.verify import Status, data_path

KEY_REL = data_path("/data/mender/mender-agent.pem")
NAMESPACE = os.stat("/proc/self/ns/pid").st_ino


def _start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat, read independently: the name is what lies between the first
    '(' and the last ')'."""
    text = Path(f"/proc/{pid}/stat").read_text()
    match = re.fullmatch(r"\d+ \((.*)\) (.*)\n?", text, re.S)
    assert match
    return int(match.group(2).split(" ")[19])


def _ended_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _name(pid: int, start: int, namespace: int = NAMESPACE, suffix: str = "abc_12") -> str:
    return f"{SCRATCH_PREFIX}{pid}-{start}-{namespace}-{suffix}"


@pytest.fixture
def odd_process(tmp_path):
    """A live process whose name holds ') (' and spaces, as /proc/PID/stat shows it."""
    exe = tmp_path / "a) (b c)"
    exe.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(exe), "30"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


# --- where scratch space goes --------------------------------------------------------------------


def test_scratch_root_is_the_variable_else_dev_shm(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGETOOLS_SCRATCH", str(tmp_path))
    assert personalize.scratch_root() == str(tmp_path)
    monkeypatch.setenv("IMAGETOOLS_SCRATCH", "")
    expected = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else None
    assert personalize.scratch_root() == expected
    monkeypatch.delenv("IMAGETOOLS_SCRATCH")
    assert personalize.scratch_root() == expected


def test_a_read_only_dev_shm_is_not_used_for_scratch(monkeypatch):
    """As root, access() grants any mode but not a read-only filesystem: /dev/shm mounted read-only
    (in a private mount namespace, support.mountns) is what a user without write permission sees."""
    monkeypatch.delenv("IMAGETOOLS_SCRATCH", raising=False)
    if not (os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK)):
        pytest.skip("/dev/shm is not usable here to begin with")
    assert personalize.scratch_root() == "/dev/shm"  # in this process too: mutmut selects tests by it
    code = (
        "mount('-t', 'tmpfs', '-o', 'ro', 'imagetools-ro-shm', '/dev/shm')\n"
        "from imagetools import personalize\nprint(personalize.scratch_root())\n"
    )
    assert mountns.run(code) == "None"


def test_scratch_space_is_a_private_directory_removed_with_its_content(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGETOOLS_SCRATCH", str(tmp_path))
    stale = tmp_path / _name(_ended_pid(), 1)
    stale.mkdir()
    (stale / "data-1-2.img").write_bytes(b"key")
    with pytest.raises(RuntimeError, match="unit failed"):
        with personalize.scratch_space() as tmp:
            assert not stale.exists()  # swept first
            assert Path(tmp).parent == tmp_path
            assert Path(tmp).name.startswith(f"{SCRATCH_PREFIX}{personalize.owner_tag(os.getpid())}-")
            assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o700
            assert not personalize.owner_gone(Path(tmp).name)
            (Path(tmp) / "sub").mkdir()
            (Path(tmp) / "sub" / "x").write_bytes(b"key")
            raise RuntimeError("unit failed")
    assert list(tmp_path.iterdir()) == []


# --- owner tags and gone owners --------------------------------------------------------------------


def test_owner_tag_is_pid_start_time_and_namespace(odd_process):
    assert personalize.owner_tag(odd_process) == f"{odd_process}-{_start_ticks(odd_process)}-{NAMESPACE}"
    assert personalize.owner_tag(os.getpid()) == f"{os.getpid()}-{_start_ticks(os.getpid())}-{NAMESPACE}"
    assert not personalize.owner_gone(_name(odd_process, _start_ticks(odd_process)))


def test_a_live_pid_with_another_start_time_is_gone(odd_process):
    start = _start_ticks(odd_process)
    assert personalize.owner_gone(_name(odd_process, start + 1))
    assert personalize.owner_gone(_name(odd_process, start - 1))
    assert personalize.owner_gone(_name(_ended_pid(), start))


@pytest.mark.parametrize(
    "name",
    [
        "imagetools-other-1-2-3-abc",
        f"imagetools-scratch-{os.getpid()}-1-{NAMESPACE}",  # three fields
        f"imagetools-scratch-{os.getpid()}-1-{NAMESPACE}-abc-def",  # five
        f"imagetools-scratch-x{os.getpid()}-1-{NAMESPACE}-abc",
        f"imagetools-scratch-{os.getpid()}-1x-{NAMESPACE}-abc",
        f"imagetools-scratch-{os.getpid()}-1-{NAMESPACE}x-abc",
        f"imagetools-scratch-{os.getpid()}-1-{NAMESPACE + 1}-abc",  # another pid namespace
        f"imagetools-scratch-{os.getpid()}-1-{NAMESPACE - 1}-abc",
    ],
)
def test_names_of_another_form_or_namespace_are_never_gone(name):
    assert personalize.owner_gone(name.replace(f"-{os.getpid()}-1-", f"-{_ended_pid()}-1-")) is False


def test_a_gone_name_with_any_suffix_is_judged(tmp_path):
    assert personalize.owner_gone(_name(_ended_pid(), 1, suffix="")) is True
    assert personalize.owner_gone(f"{SCRATCH_PREFIX}{_ended_pid()}-1-{NAMESPACE}-x") is True


def test_sweep_removes_only_our_gone_directories(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    gone = [root / _name(_ended_pid(), 1, suffix=s) for s in ("a", "b", "c")]
    for d in gone:
        (d / "inner").mkdir(parents=True)
        (d / "inner" / "data.img").write_bytes(b"key")
    live = root / _name(os.getpid(), _start_ticks(os.getpid()))
    live.mkdir()
    foreign = root / _name(_ended_pid(), 1, suffix="foreign")
    foreign.mkdir()
    os.chown(foreign, 4242, 4242)
    a_file = root / _name(_ended_pid(), 1, suffix="file")
    a_file.write_bytes(b"not a directory")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    link = root / _name(_ended_pid(), 1, suffix="link")
    link.symlink_to(victim)
    other = root / "unrelated"
    other.mkdir()
    personalize.sweep_scratch(str(root))
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in (live, foreign, a_file, link, other))
    assert (victim / "keep").read_text() == "x" and link.is_symlink()


def test_sweeping_a_missing_root_does_nothing(tmp_path):
    personalize.sweep_scratch(str(tmp_path / "missing"))
    assert list(tmp_path.iterdir()) == []


# --- the scratch and its deltas (real debugfs and e2fsck) ----------------------------------------


@pytest.fixture
def base(make_image, monkeypatch):
    monkeypatch.setenv("E2FSPROGS_FAKE_TIME", "1700000000")  # deltas of the same key compare equal
    return make_image("sdimg")


@pytest.fixture(scope="module")
def pems() -> list[bytes]:
    return [keys.private_pem(keys.generate(keys.KeySpec(type="ed25519"))) for _ in range(2)]


def _window(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


@pytest.mark.integration
def test_a_delta_holds_the_base_and_leaves_the_scratch_as_the_base(base, tmp_path, pems):
    data = open_layout(base).require("data")
    start, end = data.partition.start, data.partition.end
    scratch = personalize.Scratch(base, data, tmp_path)
    assert scratch.path == tmp_path / f"data-{os.getpid()}-{start}.img"
    assert scratch.window == (start, end)
    delta, check = scratch.delta(pems[0], KEY_REL, "cd" * 32)
    assert (delta.base_size, delta.base_sha256, delta.window) == (base.stat().st_size, "cd" * 32, (start, end))
    assert check.status == Status.PASS and delta.extents
    assert all(start <= off and off + len(block) <= end for off, block in delta.extents)
    assert stat.S_IMODE(scratch.path.stat().st_mode) == 0o600
    assert scratch.path.stat().st_size == base.stat().st_size
    assert _window(scratch.path, start, end) == _window(base, start, end)  # the key is gone from it
    again, _ = scratch.delta(pems[0], KEY_REL, "cd" * 32)  # the scratch serves the next unit as is
    assert again == delta
    other, _ = scratch.delta(pems[1], KEY_REL, "cd" * 32)
    assert other != delta


@pytest.mark.integration
def test_reused_scratch_is_one_per_directory_and_base(base, tmp_path):
    data = open_layout(base).require("data")
    first = personalize.reused_scratch(tmp_path / "a", base, data)
    assert personalize.reused_scratch(tmp_path / "a", base, data) is first
    assert personalize.reused_scratch(str(tmp_path / "a"), str(base), data) is first
    second = personalize.reused_scratch(tmp_path / "b", base, data)
    assert second is not first and second.path.parent == tmp_path / "b"
    third = personalize.reused_scratch(tmp_path / "a", base, data)  # replaced, not kept beside
    assert third is not first and third.path.parent == tmp_path / "a"
    rootfs = open_layout(base).require("rootfs-a")
    assert personalize.reused_scratch(tmp_path / "a", base, rootfs) is not third


@pytest.mark.integration
def test_make_delta_is_a_fresh_scratch_and_leaves_nothing(base, tmp_path, monkeypatch, pems):
    root = tmp_path / "shm"
    root.mkdir()
    monkeypatch.setenv("IMAGETOOLS_SCRATCH", str(root))
    data = open_layout(base).require("data")
    delta, check = personalize.make_delta(base, data, pems[0], KEY_REL, "ef" * 32)
    assert check.status == Status.PASS and delta.base_sha256 == "ef" * 32
    assert list(root.iterdir()) == []
    (tmp_path / "fresh").mkdir()
    fresh, _ = personalize.Scratch(base, data, tmp_path / "fresh").delta(pems[0], KEY_REL, "ef" * 32)
    assert fresh == delta


def _opens_of(path: Path, monkeypatch) -> list[str]:
    """os.open and open() calls naming PATH from now on (a spy: every call goes through)."""
    import builtins

    seen: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spied(real):
        def call(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) == os.path.realpath(path):
                seen.append(str(file))
            return real(file, *args, **kwargs)

        return call

    monkeypatch.setattr(builtins, "open", spied(real_open))
    monkeypatch.setattr(os, "open", spied(real_os_open))
    return seen


@pytest.mark.integration
def test_a_scratch_over_the_open_base_reads_it_on_its_descriptor_and_copies_only_the_window(
    base, tmp_path, pems, monkeypatch
):
    """emit's workers hand the scratch the run's open base: the same delta as from the path,
    the base never opened again, and only the data partition's bytes in the scratch."""
    from imagetools.image import ImageSource

    data = open_layout(base).require("data")
    start, end = data.partition.start, data.partition.end
    (tmp_path / "path").mkdir()
    by_path, _ = personalize.Scratch(base, data, tmp_path / "path").delta(pems[0], KEY_REL, "ab" * 32)
    with ImageSource(base) as src:
        scratch = personalize.Scratch(src, data, tmp_path)
        assert scratch.base == str(base)
        opened = _opens_of(base, monkeypatch)
        delta, _ = scratch.delta(pems[0], KEY_REL, "ab" * 32)
        monkeypatch.undo()
    assert opened == [] and delta == by_path
    with open(scratch.path, "rb") as f:  # the rootfs were not copied in: data only in the window
        held = list(data_ranges(f.fileno(), scratch.path.stat().st_size))
    assert held and all(start <= a and b <= end for a, b in held), (held, start, end)


@pytest.mark.integration
def test_reused_scratch_tells_open_bases_and_base_paths_apart(base, make_image, tmp_path):
    from imagetools.image import ImageSource

    data = open_layout(base).require("data")
    other = make_image("sdimg", name="other.sdimg")
    assert personalize.reused_scratch(tmp_path, base, data) is not personalize.reused_scratch(tmp_path, other, data)
    with ImageSource(base) as one, ImageSource(base) as two:
        first = personalize.reused_scratch(tmp_path, one, data)
        assert personalize.reused_scratch(tmp_path, one, data) is first
        assert personalize.reused_scratch(tmp_path, two, data) is not first


# --- the survivors of the run of 2026-12-07 ------------------------------------------------------


def test_dev_shm_is_used_only_as_a_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("IMAGETOOLS_SCRATCH", raising=False)
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"")
    a_file.chmod(0o755)  # writable and executable, but no directory
    for where, expected in ((tmp_path, str(tmp_path)), (a_file, None), (tmp_path / "no", None)):
        monkeypatch.setattr(personalize, "_SHM", str(where))
        assert personalize.scratch_root() == expected, where


def test_a_name_without_the_prefix_is_never_gone():
    tag = f"{_ended_pid()}-1-{NAMESPACE}-abc"
    assert personalize.owner_gone(SCRATCH_PREFIX + tag) is True
    assert personalize.owner_gone("x" * len(SCRATCH_PREFIX) + tag) is False


def test_a_directory_that_cannot_be_removed_is_left_and_the_sweep_goes_on(tmp_path):
    """An immutable file (chattr +i, as root) keeps one gone directory; the sweep neither fails
    nor stops there."""
    root = tmp_path / "root"
    stuck, after = root / _name(_ended_pid(), 1, suffix="a"), root / _name(_ended_pid(), 1, suffix="b")
    for d in (stuck, after):
        d.mkdir(parents=True)
    (stuck / "pinned").write_bytes(b"x")
    if subprocess.run(["chattr", "+i", str(stuck / "pinned")], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not possible here (needs root and a filesystem with the flag)")
    try:
        personalize.sweep_scratch(str(root))
        assert [p.name for p in root.iterdir()] == [stuck.name] and (stuck / "pinned").exists()
    finally:
        subprocess.run(["chattr", "-i", str(stuck / "pinned")], check=True)


@pytest.mark.integration
def test_a_failed_delta_leaves_the_scratch_empty(base, tmp_path, pems):
    data = open_layout(base).require("data")
    scratch = personalize.Scratch(base, data, tmp_path)
    with pytest.raises(ImageToolsError):
        scratch.delta(pems[0], data_path("/data/no/such/dir/key.pem") + "/", "cd" * 32)
    assert scratch.path.stat().st_size == 0
