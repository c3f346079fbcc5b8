"""`imagetools doctor`: each tool found with the version it reports itself, the commands that need
it, and for a missing one the Debian package to install."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from support.tools import run_tool

from imagetools import doctor

pytestmark = pytest.mark.integration


def test_doctor_reports_the_real_tools_and_their_versions(cli):
    proc = cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "imagetools.doctor/1" and doc["ok"]
    found = {item["command"]: item for item in doc["items"]}
    packages = {item["package"] for item in doc["items"]}
    assert {"e2fsprogs", "e2tools", "mtools", "dosfstools", "bmap-tools", "mender-artifact"} <= packages
    debugfs_line = run_tool("/usr/sbin/debugfs", "-V", check=False).stderr.splitlines()[0]
    assert found["debugfs"]["version"] in debugfs_line  # "debugfs 1.47.0 (5-Feb-2023)"
    assert (
        found["bmaptool"]["version"]
        in run_tool("bmaptool", "--version").stdout + run_tool("bmaptool", "--version").stderr
    )
    dpkg = run_tool("dpkg-query", "-W", "-f=${Version}", "e2tools").stdout
    assert found["e2cp"]["version"] == dpkg
    assert all(
        item["present"] == (shutil.which(item["command"]) is not None or item["path"] is not None)
        for item in doc["items"]
    )
    assert doc["summary"]["missing"] == 0 and doc["missing_packages"] == []
    table = cli("doctor")
    assert table.returncode == 0 and re.search(r"^mender-artifact\s+mender-artifact\s+\S+", table.stdout, re.M)


def test_a_missing_tool_names_its_package_once():
    tools = (
        doctor.Tool("imagetools-test-no-such-tool", "pkg-a", "nothing", True, ("--version",)),
        doctor.Tool("imagetools-test-no-such-tool-2", "pkg-a", "nothing", False, None),
        doctor.Tool("sh", "dash", "scripts", False, None),
    )
    findings = doctor.check(tools)
    assert [f.present for f in findings] == [False, False, True]
    assert findings[0].version is None and findings[0].to_dict()["present"] is False
    assert doctor.missing_packages(findings) == ["pkg-a"]
    assert doctor.missing_packages(findings, required_only=True) == ["pkg-a"]
