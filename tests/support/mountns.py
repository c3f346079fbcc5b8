"""A private mount namespace (unshare -m) for what no test machine has or may change: a USB
reader, an SD slot, a disk held by device-mapper, a serial in sysfs (a tmpfs over /sys/dev/block
holding the device's directory), a host with thousands of mounts (files bound over /proc's), a
read-only /dev/shm. A Python script runs there on the real code; everything is gone with it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_SETUP = """import json, os, subprocess, sys
spec = json.loads(sys.argv[1])
def mount(*args):
    subprocess.run(["mount", *args], check=True, capture_output=True)
for target, source in spec["over"].items():  # /proc/self is this process: its pid's own files
    mount("--bind", source, target.replace("/proc/self/", f"/proc/{os.getpid()}/"))
if spec["disk"] is not None:
    mount("-t", "tmpfs", "imagetools-fake-sysfs", "/sys/dev/block")
    disk = os.path.join("/sys/dev/block", spec["disk"])
    for name, text in {"dev": spec["dev"], **spec["files"]}.items():
        os.makedirs(os.path.dirname(os.path.join(disk, name)), exist_ok=True)
        if not name.endswith("/"):
            with open(os.path.join(disk, name), "w") as out:
                out.write(text)
    os.symlink(spec["disk"], os.path.join("/sys/dev/block", spec["dev"].strip()))
"""


def usable() -> str | None:
    """Why private mount namespaces cannot be used here, or None."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "a private mount namespace needs root and unshare"
    done = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"unshare -m fails here: {done.stderr.strip()}"


def run(
    code: str,
    node: str | None = None,
    disk: str | None = None,
    files: dict[str, str] | None = None,
    over: dict[str, Path] | None = None,
) -> str:
    """CODE's output, run where block device NODE's sysfs directory is DISK (under /sys/dev/block)
    holding FILES (name relative to DISK -> text; a name ending in / is a directory), and each of
    OVER's /proc files reads as the file given. NODE and DISK come together."""
    assert (node is None) == (disk is None), "a fake sysfs directory needs both the node and its path"
    reason = usable()
    if reason:
        pytest.skip(reason)
    dev = None
    if node is not None:
        rdev = os.stat(node).st_rdev
        dev = f"{os.major(rdev)}:{os.minor(rdev)}\n"
    spec = {
        "disk": disk,
        "dev": dev,
        "files": files or {},
        "over": {k: str(v) for k, v in (over or {}).items()},
    }
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", _SETUP + code, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.strip()
    return done.stdout.strip()
