"""The JSON envelope is built by the library, the CLI only prints it: one shape for --json, flash
--serve replies and library callers, importable without the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imagetools.cli import base
from imagetools.envelope import envelope


def test_the_envelope_orders_its_fields_and_names_its_schema():
    doc = envelope("flash", False, [{"target": "/dev/sdb"}], {"cards": 1}, request=3)
    assert list(doc) == ["schema", "ok", "summary", "request", "items"]
    assert doc["schema"] == "imagetools.flash/1" and doc["ok"] is False and doc["request"] == 3
    with pytest.raises(TypeError, match="items"):
        envelope("flash", True, [], {}, items=[])


def test_the_cli_prints_the_librarys_envelope_and_the_library_needs_no_cli():
    assert base.envelope is envelope
    probe = "import sys, imagetools.envelope; print(sorted(m for m in sys.modules if m.startswith('imagetools')))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "imagetools.cli" not in loaded and "imagetools.envelope" in loaded
