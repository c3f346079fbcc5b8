"""What a flashing station's per-card commands import. Start-up is most of what they cost (verify
--no-fsck reads a few KiB of the image), so neither may load what it never uses: the emitter
behind emit.state, thread or process pools, the server client, the runner of external tools."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagetools import keys
from imagetools.devices import load_devices
from imagetools.emit import EmitOptions, emit
from imagetools.inject import inject_key

pytestmark = pytest.mark.integration

NEVER = {
    "imagetools.emit.emitter",
    "imagetools.emit.runner",
    "imagetools.emit.plan",
    "imagetools.devices",
    "imagetools.server",
    "httpx",
    "concurrent.futures",
    "multiprocessing",
}


def _loaded(*argv: str | Path) -> set[str]:
    """The modules `imagetools ARGV...` has imported when it exits (a fresh interpreter)."""
    code = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.__stderr__))\n"
        f"sys.argv = ['imagetools', *{[str(a) for a in argv]!r}]\n"
        "from imagetools.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return set(json.loads(proc.stderr.splitlines()[-1]))


def test_verify_no_fsck_imports_no_emitter_pool_or_tool_runner(make_image, tmp_path):
    image = make_image("sdimg")
    key = keys.generate(keys.KeySpec(type="rsa", bits=3072))
    inject_key(image, keys.private_pem(key))
    (tmp_path / "public.key").write_bytes(keys.public_pem(key))
    loaded = _loaded("verify", "--no-fsck", image, "--pubkey", tmp_path / "public.key")
    assert not loaded & (NEVER | {"imagetools.emit", "subprocess", "tempfile"})


def test_flash_imports_no_emitter_or_pool(make_image, tmp_path):
    base = make_image("sdimg")
    devices = tmp_path / "devices.csv"
    devices.write_text("name,mac\nu1,02:00:00:00:01:01\n")
    options = EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=1, format="delta")
    assert emit(base, load_devices(devices), tmp_path / "OUT", options).ok
    loaded = _loaded("flash", base, tmp_path / "card.img", "--unit", tmp_path / "OUT" / "u1", "--no-fsck")
    assert not loaded & NEVER
    assert not any(m.startswith("imagetools.emit") for m in loaded)  # the station reads units only
    assert "imagetools.unitformat" in loaded  # through the unit format, below emit and station
