"""Per-unit configuration in emit (modify options, --unit-file), --dry-run and the progress line,
on real images checked with the real tools (debugfs, e2fsck)."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import shutil
import subprocess
from pathlib import Path

import pytest
from support.inputs import devices_csv
from support.tools import ROOT, run_tool

from imagetools.emit import EmitOptions, UnitFile
from imagetools.errors import UsageError
from imagetools.layout import open_layout
from imagetools.menderconf.read import read as read_config

pytestmark = pytest.mark.integration

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJtZW5kZXIudGVuYW50IjoiZW1pdCJ9.c2VjcmV0LXNpZw"
URL = "https://prod.mender.example.com"
CONF = "/etc/mender/mender.conf"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _debugfs(img: Path, role: str, command: str) -> str:
    start = open_layout(img).require(role).partition.start
    return run_tool("debugfs", "-R", command, f"{img}?offset={start}").stdout


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*")}


@pytest.fixture
def setup(make_image, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")

    def make(layout: str = "sdimg", count: int = 2, **opts):
        devices = devices_csv(tmp_path / "devices.csv", count, serials=True)
        return make_image(layout, **opts), devices, tmp_path / "out", token

    return make


def _emit(cli, base, devices, out, *extra):
    return cli(
        "emit", "--base", base, "--devices", devices, "--out-dir", out, "--key-type", "ed25519", "--jobs", "2", *extra
    )


@pytest.mark.parametrize("layout", ["sdimg", "extended"])
def test_modify_and_unit_files_land_in_every_unit(setup, cli, layout):
    base, devices, out, token = setup(layout)
    before = _sha256(base)
    res = _emit(
        cli,
        base,
        devices,
        out,
        "-u",
        URL,
        "-t",
        f"@{token}",
        "-n",
        "release-7",
        "--static-key",
        "--set",
        "UpdatePollIntervalSeconds=1800",
        "--unit-file",
        "/data/serial=sn:0640:1000:1001",
        "--unit-file",
        "/etc/unit-name=name",
    )
    assert res.returncode == 0, res.stderr
    assert _sha256(base) == before
    for n in (1, 2):
        img = out / f"u{n}" / f"u{n}.sdimg"
        report = read_config(img)
        for rootfs in report.rootfs:
            assert rootfs.settings["ServerURL"] == URL and rootfs.settings["TenantToken"] == TOKEN
            assert rootfs.artifact_name == "release-7"
        for role in ("rootfs-a", "rootfs-b"):
            conf = json.loads(_debugfs(img, role, f"cat {CONF}"))
            assert conf["TenantToken"] == TOKEN and conf["Security"]["AuthPrivateKey"].endswith("mender-agent.pem")
            assert conf["UpdatePollIntervalSeconds"] == 1800
            assert _debugfs(img, role, "cat /etc/unit-name") == f"u{n}\n"
            clean, output = open_layout(img).require(role).fsck(img)
            assert clean, output
        assert _debugfs(img, "data", "cat /serial") == f"SN{n:04d}\n"
        stat = _debugfs(img, "data", "stat /serial")
        assert "Mode:  0640" in stat and re.search(r"User:\s+1000\s+Group:\s+1001", stat), stat
        shown = json.loads(cli("config", "--json", img).stdout)
        rootfs = shown.get("items", shown.get("rootfs"))  # the common --json envelope, or the older form
        assert [r["artifact_name"] for r in rootfs] == ["release-7", "release-7"]
        verified = cli("verify", "--pubkey", out / f"u{n}" / "public.key", img)  # e2fsck, static key
        assert verified.returncode == 0, verified.stdout
        assert "static key in mender.conf         PASS" in verified.stdout
        bmap = run_tool("bmaptool", "copy", "--bmap", f"{img}.bmap", str(img), str(img) + ".flashed")
        assert bmap.returncode == 0
        assert _sha256(Path(str(img) + ".flashed")) == _sha256(img)
        os.unlink(str(img) + ".flashed")


def test_token_is_in_no_file_but_the_images(setup, cli):
    base, devices, out, token = setup()
    assert _emit(cli, base, devices, out, "-t", f"@{token}", "--json").returncode == 0
    for path in out.rglob("*"):
        if path.is_file() and not path.name.endswith(".sdimg"):
            assert TOKEN.encode() not in path.read_bytes(), path
    state = json.loads((out / ".imagetools-emit.json").read_text())
    assert state["settings"]["modify"]["tenant_token_sha256"] == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert TOKEN.encode() in (out / "u1" / "u1.sdimg").read_bytes()


def test_resume_with_other_modify_options_is_refused(setup, cli):
    base, devices, out, token = setup()
    assert _emit(cli, base, devices, out, "-n", "release-7").returncode == 0
    again = _emit(cli, base, devices, out, "-n", "release-7")
    assert again.returncode == 0 and "2 skipped" in again.stdout
    other = _emit(cli, base, devices, out, "-n", "release-8")
    assert other.returncode == 2 and "settings differ" in other.stderr
    token_changed = _emit(cli, base, devices, out, "-n", "release-7", "-t", "other.token")
    assert token_changed.returncode == 2
    assert TOKEN not in token_changed.stderr and "other.token" not in token_changed.stderr
    forced = _emit(cli, base, devices, out, "-n", "release-8", "--force")
    assert forced.returncode == 0, forced.stderr
    assert read_config(out / "u1" / "u1.sdimg").rootfs[1].artifact_name == "release-8"


def test_bad_configuration_is_refused_before_anything_is_written(setup, cli, tmp_path):
    base, devices, out, token = setup()
    missing = _emit(cli, base, devices, out, "--unit-file", "/data/x=serial")
    assert missing.returncode == 2 and "no column 'serial'" in missing.stderr
    delta = _emit(cli, base, devices, out, "-n", "r7", "--format", "delta")
    assert delta.returncode == 2 and "--format delta" in delta.stderr
    syntax = _emit(cli, base, devices, out, "--unit-file", "/data/x=sn:0999")
    assert syntax.returncode == 2
    assert not out.exists()


def test_malformed_mender_conf_in_the_base_stops_the_run(setup, cli):
    base, devices, out, token = setup()
    for role in ("rootfs-a",):
        start = open_layout(base).require(role).partition.start
        bad = base.parent / "bad.conf"
        bad.write_text("{not json")
        subprocess.run(["debugfs", "-w", "-R", f"rm {CONF}", f"{base}?offset={start}"], capture_output=True)
        subprocess.run(
            ["debugfs", "-w", "-R", f"write {bad} {CONF}", f"{base}?offset={start}"], capture_output=True, check=True
        )
    res = _emit(cli, base, devices, out, "-u", URL)
    assert res.returncode == 2 and "malformed" in res.stderr
    assert not out.exists()


def test_empty_rootfs_b_is_warned_once(setup, cli):
    base, devices, out, token = setup(empty_rootfs_b=True)
    res = _emit(cli, base, devices, out, "-n", "release-7")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("skipped rootfs B") == 1


def test_dry_run_writes_nothing(setup, cli):
    base, devices, out, token = setup(count=3)
    res = _emit(cli, base, devices, out, "--dry-run", "-n", "release-7")
    assert res.returncode == 0, res.stderr
    assert "would emit 3" in res.stdout and not out.exists()
    assert _emit(cli, base, devices, out, "-n", "release-7").returncode == 0
    before = _snapshot(out)
    again = _emit(cli, base, devices, out, "--dry-run", "-n", "release-7", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["summary"]["skip"] == 3 and report["need_bytes"] == 0
    refused = _emit(cli, base, devices, out, "--dry-run", "-n", "release-8")
    assert refused.returncode == 2 and "settings differ" in refused.stderr
    forced = _emit(cli, base, devices, out, "--dry-run", "-n", "release-8", "--force")
    assert forced.returncode == 0 and "re-emit 3" in forced.stdout
    assert _snapshot(out) == before


def _run_on_pty(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal (stdout piped); return (exit code, terminal text)."""
    master, slave = pty.openpty()
    exe = shutil.which("imagetools") or str(ROOT / ".venv" / "bin" / "imagetools")
    proc = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=slave, cwd=cwd)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(), seen.decode(errors="replace")


def test_progress_on_a_terminal_and_silent_when_piped(setup, cli, tmp_path):
    base, devices, out, token = setup(count=6)
    args = [
        "emit",
        "--base",
        str(base),
        "--devices",
        str(devices),
        "--out-dir",
        str(out),
        "--key-type",
        "ed25519",
        "--jobs",
        "1",
        "-n",
        "release-7",
    ]
    code, screen = _run_on_pty(args, tmp_path)
    assert code == 0, screen
    assert "emitting" in screen and "units/min" in screen and "ETA" in screen
    assert re.search(r"emitting 0/6 [|/\\-]", screen), screen  # the spinner before the first unit
    piped = cli(*args[:-2], "-n", "release-7")
    assert piped.returncode == 0 and piped.stderr == ""


def test_unit_file_syntax():
    assert UnitFile.parse("/data/serial=sn") == UnitFile("/data/serial", "sn", 0o644, 0, 0)
    assert UnitFile.parse("/etc/x=sn:600:1:2") == UnitFile("/etc/x", "sn", 0o600, 1, 2)
    for bad in ("/data/serial", "/data/s=sn:0644:1", "relative=sn", "/data/s=key", "/data/s=sn:rw", "/=sn"):
        with pytest.raises(UsageError):
            UnitFile.parse(bad)
    with pytest.raises(UsageError):
        EmitOptions(unit_files=(UnitFile.parse("/a=sn"), UnitFile.parse("/a=mac")))
