"""Published units as a station reads them: a unit directory (image or delta), the base's block
map (from BASE.bmap, else computed once and cached), and materialize (base + delta -> image).

Everything here is read from outside and checked: unit.json and public.key are bounded, a delta
is validated (see image/delta) and must be for this base (its SHA-256), a bmap must describe an
image of the base's size with in-bounds, sorted ranges.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from . import bmap, keys
from .atomic import replace_when_done, write_atomic
from .emit.state import STATE_FILE, UNIT_FILE, UnitRecord
from .errors import ImageFormatError, UsageError, VerifyFailed
from .image import delta as delta_format, overlay
from .image.delta import Delta
from .image.overlay import Overlay
from .sparse import copy_extents
from .verify import VerifyReport, verify_image

MAX_RECORD = 1 << 20
MAX_BMAP = 64 << 20
CACHE_VERSION = 1


@dataclass(frozen=True)
class Unit:
    """A unit to write: its name, key, and either a delta over the base or its own image."""

    name: str
    fingerprint: str
    public_key: keys.PublicKey
    base_sha256: str
    delta: Delta | None = None
    image: Path | None = None
    record: UnitRecord | None = None


@dataclass(frozen=True)
class BlockMap:
    """An image's mapped ranges with their sha256 (bmap semantics) and its whole sha256."""

    size: int
    sha256: str
    ranges: tuple[bmap.BlockRange, ...]


def load_unit(unit_dir: str | os.PathLike) -> Unit:
    """The unit emit published in unit_dir (format image or delta)."""
    unit_dir = Path(unit_dir)
    record = _read_record(unit_dir / UNIT_FILE)
    public = keys.read_public_file(unit_dir / "public.key")
    if keys.fingerprint(public) != record.fingerprint:
        raise UsageError(f"{unit_dir}: public.key does not match the fingerprint in {UNIT_FILE}")
    path = unit_dir / record.image
    if record.format == "delta":
        delta = delta_format.read(path)
        if delta.base_sha256 != record.base_sha256:
            raise UsageError(f"{path}: made over base {delta.base_sha256[:16]}..., {UNIT_FILE} says "
                             f"{record.base_sha256[:16]}...")
        return Unit(record.name, record.fingerprint, public, record.base_sha256, delta=delta, record=record)
    if not path.is_file():
        raise UsageError(f"{unit_dir}: its image {record.image} is missing")
    return Unit(record.name, record.fingerprint, public, record.base_sha256, image=path, record=record)


def _read_record(path: Path) -> UnitRecord:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_RECORD:
            raise UsageError(f"{path}: not a unit record (not a regular file, or over {MAX_RECORD} bytes)")
        return UnitRecord.read(path)
    except FileNotFoundError:
        raise UsageError(f"{path.parent} is not a unit directory emit wrote (no {UNIT_FILE})") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable unit record ({exc})") from None


def base_of(unit_dir: str | os.PathLike) -> Path:
    """The base recorded by the emit run that published unit_dir (its OUT's state file)."""
    state = Path(unit_dir).resolve().parent / STATE_FILE
    try:
        return Path(json.loads(state.read_text())["base"]["path"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"no base recorded for {unit_dir} ({state} unreadable); give --base") from None


def block_map(image: str | os.PathLike, use_bmap: bool = True) -> BlockMap:
    """IMAGE's block map: ranges from IMAGE.bmap when present, the sha256 from a one-pass scan
    cached per file identity (so a station hashes its base once, not once per card)."""
    image = Path(image)
    cached = _scan_cached(image)
    bmap_file = Path(f"{image}.bmap")
    if use_bmap and bmap_file.is_file():
        ranges = parse_bmap(bmap_file, cached.size)
        return BlockMap(cached.size, cached.sha256, ranges)
    return cached


def _cache_path(image: Path) -> Path:
    st = os.stat(image)
    ident = f"{image.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagetools" / "bmap"
    return root / (hashlib.sha256(ident.encode()).hexdigest() + ".json")


def _scan_cached(image: Path) -> BlockMap:
    cache = _cache_path(image)
    try:
        data = json.loads(cache.read_text())
        if data.get("version") == CACHE_VERSION:
            return BlockMap(data["size"], data["sha256"],
                            tuple(bmap.BlockRange(a, b, c) for a, b, c in data["ranges"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    scan = bmap.scan(image)
    result = BlockMap(scan.size, scan.sha256, tuple(scan.ranges))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(cache, json.dumps({"version": CACHE_VERSION, "size": scan.size, "sha256": scan.sha256,
                                        "ranges": [[r.first, r.last, r.sha256] for r in scan.ranges]}).encode(),
                     durable=False)
    except OSError:
        pass  # no cache: the next run scans again
    return result


_RANGE = re.compile(rb'<Range\s+chksum="([0-9a-f]{64})"\s*>\s*(\d+)(?:\s*-\s*(\d+))?\s*</Range>')


def parse_bmap(path: Path, image_size: int) -> tuple[bmap.BlockRange, ...]:
    """A bmap 2.0 (sha256) file's ranges, checked against the image they claim to describe."""
    if path.stat().st_size > MAX_BMAP:
        raise ImageFormatError(f"{path}: over {MAX_BMAP} bytes; not a bmap")
    text = path.read_bytes()
    size = re.search(rb"<ImageSize>\s*(\d+)\s*</ImageSize>", text)
    block = re.search(rb"<BlockSize>\s*(\d+)\s*</BlockSize>", text)
    kind = re.search(rb"<ChecksumType>\s*(\w+)\s*</ChecksumType>", text)
    if not (size and block and kind) or kind.group(1) != b"sha256" or int(block.group(1)) != bmap.BLOCK_SIZE:
        raise ImageFormatError(f"{path}: not a bmap 2.0 with sha256 checksums and "
                               f"{bmap.BLOCK_SIZE}-byte blocks")
    if int(size.group(1)) != image_size:
        raise ImageFormatError(f"{path} describes an image of {int(size.group(1))} bytes, the image "
                               f"has {image_size}: make a new bmap (bmaptool create)")
    blocks, ranges, last = -(-image_size // bmap.BLOCK_SIZE), [], -1
    for m in _RANGE.finditer(text):
        first = int(m.group(2))
        end = int(m.group(3) or first)
        if not last < first <= end < blocks:
            raise ImageFormatError(f"{path}: range {first}-{end} is out of order or past the image")
        ranges.append(bmap.BlockRange(first, end, m.group(1).decode()))
        last = end
    return tuple(ranges)


def overlay_for(base: str | os.PathLike, unit: Unit) -> Overlay:
    """The unit's image as base + delta; the base must be the one the delta was made over."""
    sha = block_map(base, use_bmap=False).sha256
    return Overlay(base, unit.delta, sha)


def materialize(unit_dir: str | os.PathLike, out_image: str | os.PathLike, base: str | os.PathLike,
                force: bool = False) -> VerifyReport:
    """Write the unit's full image (sparse, 0600 from its first byte) and its .bmap, verified
    (every check, e2fsck included) before it gets its name. VerifyFailed if a check fails."""
    unit = load_unit(unit_dir)
    if unit.delta is None:
        raise UsageError(f"{unit_dir} holds a full image already ({unit.image})")
    view = overlay_for(base, unit)
    out_image = Path(out_image)
    with replace_when_done(out_image, mode=0o600, exclusive=not force) as tmp:
        copy_extents(view.base, tmp)
        delta_format.apply(unit.delta, tmp)
        report = verify_image(tmp, expected=unit.public_key)
        if not report.ok:
            raise VerifyFailed(f"{out_image}: materialized image fails "
                               + "; ".join(f"{c.name}: {c.detail}" for c in report.failed))
        write_atomic(Path(f"{out_image}.bmap"), bmap.create(tmp))
    report.target = str(out_image)
    return report


def verify_unit(unit_dir: str | os.PathLike, base: str | os.PathLike, fsck: bool = True) -> VerifyReport:
    """verify of a published unit; a delta is read through its overlay, never materialized."""
    unit = load_unit(unit_dir)
    if unit.delta is None:
        return verify_image(unit.image, expected=unit.public_key, fsck=fsck)
    name = Path(unit_dir) / unit.record.image
    with overlay.attached(name, overlay_for(base, unit)):
        return verify_image(name, expected=unit.public_key, fsck=fsck)
