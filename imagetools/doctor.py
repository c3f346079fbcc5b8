"""What this host has of the system tools imagetools and its scripts run: each tool's version, the
commands that need it, and for a missing one the Debian package that installs it.

Each probe runs the tool's own version option (never an option that acts on a device) with a
timeout and bounded output; tools without one are asked of dpkg. debugfs and e2fsck are asked
through their one builder, fs/e2fsprogs, like every other run of them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from .fs import e2fsprogs

PROBE_TIMEOUT = 5.0
_OUTPUT_MAX = 4096
_VERSION = re.compile(r"(?<![\w.])v?(\d+\.\d+(?:\.\d+)*(?:[-~+][0-9A-Za-z.+~-]+)?)")
_SBIN = ("/usr/sbin", "/sbin")


@dataclass(frozen=True)
class Tool:
    command: str
    package: str
    needed_by: str
    required: bool  # a default command fails without it
    version_args: tuple[str, ...] | None  # None: ask dpkg (e2fsprogs' tools: fs/e2fsprogs asks them)


TOOLS = (
    Tool(
        e2fsprogs.DEBUGFS,
        "e2fsprogs",
        "inject, install, cp, rm, modify, emit, flash --key (ext4 written in place)",
        True,
        None,
    ),
    Tool(e2fsprogs.E2FSCK, "e2fsprogs", "verify, emit, flash, materialize (the e2fsck -fn check)", True, None),
    Tool("e2cp", "e2tools", "scripts/make-image and the tests (the e2tools peer)", False, None),
    Tool("mcopy", "mtools", "scripts/make-image (FAT boot partitions)", False, ("--version",)),
    Tool("fsck.vfat", "dosfstools", "checking FAT boot partitions of flashed cards (tests, bench-flash)", False, None),
    Tool("mkfs.vfat", "dosfstools", "scripts/make-image (FAT boot partitions)", False, None),
    Tool(
        "bmaptool", "bmap-tools", "flashing emitted images with their .bmap outside imagetools", False, ("--version",)
    ),
    Tool(
        "mender-artifact",
        "mender-artifact",
        "--backend mender-artifact (install, cp, rm, cat, inject)",
        False,
        ("--version",),
    ),
    Tool("xz", "xz-utils", ".xz and .lzma bases (threaded; in process without it)", False, ("--version",)),
    Tool("zstd", "zstd", ".zst bases (in process without it)", False, ("--version",)),
    Tool("lz4", "lz4", ".lz4 bases (in process without it)", False, ("--version",)),
    Tool("bzip2", "bzip2", ".bz2 bases (in process without it)", False, ("--help",)),
    Tool("gzip", "gzip", ".gz bases (in process without it)", False, ("--version",)),
)


@dataclass(frozen=True)
class Finding:
    command: str
    package: str
    needed_by: str
    required: bool
    path: str | None
    version: str | None

    @property
    def present(self) -> bool:
        return self.path is not None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "present": self.present}


def check(tools: tuple[Tool, ...] = TOOLS) -> list[Finding]:
    return [_probe(tool) for tool in tools]


def missing_packages(findings: list[Finding], required_only: bool = False) -> list[str]:
    """The Debian packages to install, each once, in the table's order."""
    chosen = [f.package for f in findings if not f.present and (f.required or not required_only)]
    return list(dict.fromkeys(chosen))


def _probe(tool: Tool) -> Finding:
    path = _which(tool.command)
    version = None
    if path is not None and tool.package == "e2fsprogs":
        version = _e2fsprogs_version(tool.command)
    elif path is not None:
        version = _version_of(path, tool.version_args) if tool.version_args else _dpkg_version(tool.package)
    return Finding(tool.command, tool.package, tool.needed_by, tool.required, path, version)


def _e2fsprogs_version(command: str) -> str | None:
    """debugfs and e2fsck run only through their builder (fs/e2fsprogs), this probe too."""
    from .errors import ImageToolsError

    try:
        match = _VERSION.search(e2fsprogs.version(command))
    except ImageToolsError:
        return None
    return match.group(1) if match else None


def _which(command: str) -> str | None:
    found = shutil.which(command)
    if found:
        return found
    return next((p for p in (f"{d}/{command}" for d in _SBIN) if os.access(p, os.X_OK)), None)


def _version_of(path: str, args: tuple[str, ...]) -> str | None:
    text = _run([path, *args])
    match = _VERSION.search(text) if text else None
    return match.group(1) if match else None


def _dpkg_version(package: str) -> str | None:
    dpkg = shutil.which("dpkg-query")
    if dpkg is None:
        return None
    text = _run([dpkg, "-W", "-f=${Version}", package])
    return text.strip() or None if text and _VERSION.search(text) else None


def _run(args: list[str]) -> str | None:
    """The first bytes of what a probe printed (stdout and stderr); None if it could not run."""
    try:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (proc.stdout[:_OUTPUT_MAX] + b"\n" + proc.stderr[:_OUTPUT_MAX]).decode(errors="replace")
