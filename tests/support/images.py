"""Real Mender-style images built by scripts/make-image: the layouts, their roles, one cached build."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .tools import ROOT

MAKE_IMAGE = ROOT / "scripts" / "make-image"
# scripts/mutation keeps the builds across its mutants' test sessions (make-image runs no imagetools
# code, so no mutant can change what it builds); a test session's own cache is its tmp_path
PERSISTENT_CACHE = os.environ.get("IMAGETOOLS_TEST_IMAGE_CACHE")
SMALL = {"rootfs_mib": 8, "data_mib": 8, "boot_mib": 8}
LAYOUTS = ["sdimg", "uefiimg", "gptimg", "extended", "noboot"]
# The role of each partition number, as make-image lays each layout out.
LAYOUT_ROLES = {
    "sdimg": {1: "boot", 2: "rootfs-a", 3: "rootfs-b", 4: "data"},
    "uefiimg": {1: "boot", 2: "rootfs-a", 3: "rootfs-b", 4: "data"},
    "gptimg": {1: "boot", 2: "rootfs-a", 3: "rootfs-b", 4: "data"},
    "extended": {1: "boot", 2: "rootfs-a", 3: "rootfs-b", 5: "swap", 6: "data"},
    "noboot": {1: "rootfs-a", 2: "rootfs-b", 3: "data"},
}


def image_suffix(layout: str) -> str:
    """The file name ending Mender tools expect for a make-image layout."""
    return ".sdimg" if layout in ("sdimg", "extended", "noboot") else f".{layout}"


def build_image(cache: Path, layout: str, opts: dict) -> Path:
    """The image of `layout` with `opts` over SMALL, built into `cache` once and reused after."""
    merged = {**SMALL, **opts}
    key = layout + "".join(f"-{k}{v}" for k, v in sorted(merged.items()))
    out = cache / f"{key}{image_suffix(layout)}"
    if not out.exists():
        args = [str(MAKE_IMAGE), "--layout", layout]
        for name, value in sorted(merged.items()):
            flag = "--" + name.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value not in (False, None):
                args += [flag, str(value)]
        part = cache / f".{os.getpid()}-{out.name}"  # sessions may share the cache: whole builds only
        subprocess.run(args + [str(part)], check=True)
        os.replace(part, out)
    return out
