"""The mender-artifact backend: the same file operations done by running the reference tool.

For cross-checking and for sites that must use the reference tool. It is slow (it extracts every
partition with dd and writes them back, filling the image's holes) and handles only images with
exactly four partitions. Its `-m` takes the mode literally (`600` would be read as decimal), so we
always pass 0NNN; its `cp`/`install` need the parent directory, so `-p` runs `install -d` first.
Image names it cannot parse (a ':' in the path, or a suffix other than .sdimg/.uefiimg/.img) are
handed to it through a symlink in a private temporary directory.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import FilesystemError, LayoutError, ToolMissingError, UsageError
from ..fs import normalize
from ..mender import BOOT_MOUNTS, DATA_MOUNT
from ..tools import find_tool

SUFFIXES = (".sdimg", ".uefiimg", ".img")
TIMEOUT = 3600


def binary() -> str:
    return find_tool("mender-artifact", "mender-artifact", " or use --backend native")


def check_layout(layout) -> None:
    """mender-artifact maps partitions by position: exactly 4 primary partitions."""
    parts = layout.image.partitions
    if len(parts) != 4 or any(p.logical for p in parts):
        seen = ", ".join(str(p.number) for p in parts)
        raise LayoutError(
            f"mender-artifact only handles images with exactly 4 partitions (boot, "
            f"rootfs A, rootfs B, data); {layout.image.path} has {len(parts)} "
            f"({seen}): use --backend native"
        )


class MenderArtifact:
    """Runs mender-artifact on one image; use as a context manager (cleans its temp dir)."""

    def __init__(self, image: str | os.PathLike):
        self.binary = binary()
        self.image = os.fspath(image)
        self._tmp = tempfile.mkdtemp(prefix="imagetools-peer-")  # 0700
        self.name = self._alias()

    def __enter__(self) -> MenderArtifact:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _alias(self) -> str:
        """An absolute name (never read as an option) that mender-artifact accepts: no ':' (it
        splits there) and a suffix it knows; other names are reached through a symlink."""
        image = os.path.abspath(self.image)
        if ":" not in image and image.endswith(SUFFIXES):
            return image
        suffix = next((s for s in SUFFIXES if image.endswith(s)), ".img")
        alias = os.path.join(self._tmp, "image" + suffix)
        os.symlink(image, alias)
        return alias

    def _target(self, path: str) -> str:
        return f"{self.name}:{normalize(path)}"

    def _run(self, *args: str, what: str) -> bytes:
        env = {**os.environ, "TMPDIR": os.environ.get("TMPDIR", tempfile.gettempdir())}
        try:
            proc = subprocess.run(
                [self.binary, *args], capture_output=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT, env=env
            )
        except OSError as exc:
            raise ToolMissingError(f"cannot run mender-artifact: {exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise FilesystemError(f"mender-artifact did not finish {what} within {TIMEOUT} s") from exc
        if proc.returncode != 0:
            output = proc.stderr or proc.stdout  # some of its errors go to stdout
            message = " ".join(output.decode("utf-8", "replace").split())
            raise FilesystemError(f"mender-artifact could not {what}: {message or f'exit {proc.returncode}'}")
        return proc.stdout

    def cat(self, path: str) -> bytes:
        return self._run("cat", self._target(path), what=f"read {path}")

    def install(self, path: str, data: bytes, mode: int, *, uid: int = 0, gid: int = 0, parents: bool = False) -> None:
        if uid or gid:
            raise UsageError("mender-artifact cannot set a file's owner (-o/-g): use --backend native")
        if parents:
            self.mkdir(posixpath.dirname(normalize(path)))
        source = Path(self._tmp) / "data"
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            self._run("install", "-m", f"0{mode:03o}", str(source), self._target(path), what=f"install {path}")
        finally:
            source.unlink(missing_ok=True)

    def mkdir(self, path: str) -> None:
        """`install -d`: creates missing parents too, and accepts an existing directory."""
        if normalize(path) in ("/", DATA_MOUNT, *BOOT_MOUNTS):
            return
        self._run("install", "-d", self._target(path), what=f"create directory {path}")

    def remove(self, path: str, recursive: bool = False) -> None:
        self._run("rm", *(["-r"] if recursive else []), self._target(path), what=f"remove {path}")
