"""The repository root and running the real external tools the integration tests compare with."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_tool(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a real external tool, capturing text output."""
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)
