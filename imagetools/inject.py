"""Put a device's private key into an image's data partition, in place, at the partition's offset.

The key is validated before anything is written (a key the client cannot load is silently replaced
on the device, which then shows up pending). With `out`, the base image is never touched: the new
image is a reflink/sparse copy made under a temporary name and renamed only once complete.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import keys
from .atomic import replace_when_done
from .errors import FilesystemError, UsageError
from .fs import lock
from .image import ImageSource
from .layout import PartInfo, open_layout
from .mender import BACKENDS, DATA_MOUNT, NATIVE
from .sparse import copy_sparse
from .verify import DEFAULT_KEY_PATH, Status, data_path, link_checks

KEY_MODE = 0o600
DIR_MODE = 0o755


@dataclass
class InjectResult:
    image: str
    fingerprint: str
    key_type: str
    warnings: list[str] = field(default_factory=list)


def inject_key(
    image: str | Path,
    key_pem: bytes,
    *,
    out: str | Path | None = None,
    force: bool = False,
    path: str = DEFAULT_KEY_PATH,
    backend: str = NATIVE,
    overrides: dict[str, int] | None = None,
    key_source: str = "private key",
) -> InjectResult:
    """Write `key_pem` (as given: PKCS#1, SEC1 or PKCS#8 PEM) to `path` on the data partition,
    mode 0600, owner 0:0, creating its directory and replacing an existing key. An existing `out`
    is replaced only with force. `key_source` names the key in errors (e.g. its file)."""
    key = keys.load_private(key_pem, key_source)
    keys.check_acceptable(key, key_source)
    key_rel = data_path(path)
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    result = InjectResult(str(image), keys.fingerprint(key), keys.describe(key))
    if out is None:
        return _inject(Path(image), key_pem, key_rel, backend, overrides, result)
    out = Path(out)
    if out.exists() and out.samefile(image):
        raise UsageError(f"--out {out} is the input image; omit --out to edit in place")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: directory {out.parent} does not exist")
    with replace_when_done(out, mode=0o600, exclusive=not force) as tmp:  # the image holds a key
        copy_sparse(image, tmp)
        _inject(tmp, key_pem, key_rel, backend, overrides, result)
    return replace(result, image=str(out))


def _inject(
    image: Path, key_pem: bytes, key_rel: str, backend: str, overrides: dict[str, int] | None, result: InjectResult
) -> InjectResult:
    with lock.exclusive(image):
        if backend == NATIVE:  # the image opened once: its table, the write's read-back, the links
            with ImageSource(image) as src:
                layout = open_layout(src, overrides)
                write_key(image, layout.require("data"), key_pem, key_rel, src)
                checks = link_checks(src, layout)
        else:  # mender-artifact rewrites the image behind our back: each step opens it anew
            layout = open_layout(image, overrides)
            data_part = layout.require("data")
            _write_mender_artifact(image, layout, data_part, key_pem, key_rel)
            _read_back(str(image), data_part, key_pem, key_rel)
            checks = link_checks(str(image), layout)
    result.warnings += [f"{c.name}: {c.detail}" for c in checks if c.status == Status.FAIL]
    return result


def write_key(
    image: str | Path, data_part: PartInfo, key_pem: bytes, key_rel: str, source: ImageSource | None = None
) -> None:
    """The write alone (the fs layer reads back what it wrote, through `source` when the image is
    open): for callers that already know the data partition and check the key and the links
    themselves, like emit."""
    with data_part.open(image, writable=True, source=source) as fs:
        parent = posixpath.dirname(key_rel)
        if parent != "/" and not fs.exists(parent):
            fs.mkdir(parent, mode=DIR_MODE, uid=0, gid=0, parents=True)
        fs.write(key_rel, key_pem, mode=KEY_MODE, uid=0, gid=0)


def _write_mender_artifact(image: Path, layout, data_part, key_pem: bytes, key_rel: str) -> None:
    from .backends.mender_artifact import MenderArtifact, check_layout

    check_layout(layout)
    with data_part.open(str(image)) as fs:  # each mender-artifact run copies every partition
        missing_dir = not fs.exists(posixpath.dirname(key_rel))
    with MenderArtifact(image) as tool:
        tool.install(DATA_MOUNT + key_rel, key_pem, KEY_MODE, parents=missing_dir)


def _read_back(image: str, data_part, key_pem: bytes, key_rel: str) -> None:
    """mender-artifact exits 0 on some failures and takes modes in decimal: confirm what landed."""
    with data_part.open(image) as fs:
        entry = fs.stat(key_rel)
        content = fs.read(key_rel)
    if content != key_pem or entry.mode != KEY_MODE or (entry.uid, entry.gid) != (0, 0):
        raise FilesystemError(
            f"{image}: the key read back from /data{key_rel} differs from what was written "
            f"(mode {entry.mode:04o}, owner {entry.uid}:{entry.gid}, {entry.size} bytes)"
        )
