"""Finding the external programs we run (e2fsprogs installs some into sbin, off a user's PATH)."""

from __future__ import annotations

import os

from .errors import ToolMissingError


def find_tool(name: str, package: str, hint: str = "") -> str:
    """Path of `name`, also looked for in /usr/sbin and /sbin; ToolMissingError naming the package."""
    import shutil  # only when a tool is about to run: shutil costs a verify's start ~1.5 ms

    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if not found:
        raise ToolMissingError(f"{name} not found: install the Debian package {package} (scripts/bootstrap does){hint}")
    return found
