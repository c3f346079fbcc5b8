"""The package installs anywhere: `python -m build` gives a wheel and an sdist; the wheel goes into
a fresh venv (no system site packages, pip's index as configured on the host) and runs there:
the version from the package metadata, `inspect` on a sample image, `doctor`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(
    ".venv",
    ".git",
    "*.egg-info",
    "__pycache__",
    "build",
    "dist",
    "demo-out",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
)

pytestmark = pytest.mark.integration


def _run(*args: str | Path, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc


def test_the_wheel_installs_into_a_fresh_venv_and_runs(make_image, tmp_path):
    src, dist, venv = tmp_path / "src", tmp_path / "dist", tmp_path / "venv"
    shutil.copytree(ROOT, src, ignore=SKIP, symlinks=True)  # the checkout is left as it is
    _run(sys.executable, "-m", "build", "--outdir", dist, src, cwd=tmp_path)
    [wheel], [sdist] = dist.glob("*.whl"), dist.glob("*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"imagetools/basecache.py", "imagetools/cli/doctor_cmd.py", "imagetools/image/compressed.py"} <= set(names)
    assert not [n for n in names if n.startswith("tests/")]
    members = {m.split("/", 1)[-1] for m in tarfile.open(sdist).getnames()}
    assert {"pyproject.toml", "README.md", "imagetools/remote.py"} <= members

    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", wheel, cwd=tmp_path)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin:/usr/sbin:/sbin"
    where = _run(
        venv / "bin" / "python",
        "-c",
        "import imagetools, importlib.metadata as m; print(imagetools.__file__); print(m.version('imagetools'))",
        cwd=tmp_path,
        env=env,
    )
    module, version = where.stdout.split()
    assert module.startswith(str(venv)), module  # the installed copy, not the checkout
    assert _run(venv / "bin" / "imagetools", "--version", cwd=tmp_path, env=env).stdout.split()[-1] == version

    sample = make_image("sdimg")
    shown = json.loads(_run(venv / "bin" / "imagetools", "inspect", "--json", sample, cwd=tmp_path, env=env).stdout)
    assert shown["ok"] and shown["summary"]["roles"] == {"boot": 1, "rootfs-a": 2, "rootfs-b": 3, "data": 4}
    doctor = json.loads(_run(venv / "bin" / "imagetools", "doctor", "--json", cwd=tmp_path, env=env).stdout)
    assert doctor["imagetools"] == version
