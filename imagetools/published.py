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
from dataclasses import dataclass
from pathlib import Path

from . import bmap, keys, strict
from .atomic import replace_when_done, write_atomic
from .errors import ImageFormatError, UsageError, VerifyFailed
from .image import ImageSource
from .image import delta as delta_format
from .image.delta import Delta
from .image.source import Overlay
from .layout import open_layout
from .sparse import copy_extents
from .unitformat import IDENTITY_FILE, MAX_BMAP, PUBLIC_FILE, STATE_FILE, UnitRecord, read_signed
from .verify import VerifyReport, verify_image

MAX_STATE = 1 << 20
CACHE_VERSION = 1


@dataclass(frozen=True)
class Unit:
    """A unit to write: its name, key, and either a delta over the base or its own image (with
    the ranges of its signed bmap). `pinned`: its signature was checked against a batch key the
    operator gave (--trust), not the one in its OUT."""

    name: str
    fingerprint: str
    public_key: keys.PublicKey
    base_sha256: str
    delta: Delta | None = None
    image: Path | None = None
    record: UnitRecord | None = None
    image_ranges: tuple[bmap.BlockRange, ...] | None = None
    identity: dict[str, str] | None = None
    batch: str | None = None
    pinned: bool = False


@dataclass(frozen=True)
class BlockMap:
    """An image's mapped ranges with their sha256 (bmap semantics) and its whole sha256."""

    size: int
    sha256: str
    ranges: tuple[bmap.BlockRange, ...]


def load_unit(unit_dir: str | os.PathLike, trust: str | os.PathLike | None = None) -> Unit:
    """The unit emit published in unit_dir (format image or delta), its signature checked first
    (against `trust`, a batch public key, when given)."""
    unit_dir = Path(unit_dir)
    signed = read_signed(unit_dir, Path(trust) if trust else None)
    record = signed.record
    public = keys.load_public(signed.blobs[PUBLIC_FILE], str(unit_dir / PUBLIC_FILE))
    if keys.fingerprint(public) != record.fingerprint:
        raise UsageError(f"{unit_dir}: public.key does not match the fingerprint in unit.json")
    identity = strict.loads(signed.blobs[IDENTITY_FILE], str(unit_dir / IDENTITY_FILE))
    common = dict(
        name=record.name,
        fingerprint=record.fingerprint,
        public_key=public,
        base_sha256=record.base_sha256,
        record=record,
        identity=identity,
        batch=signed.batch,
        pinned=signed.pinned,
    )
    path = unit_dir / record.image
    if record.format == "delta":
        delta = delta_format.parse(signed.blobs[record.image], str(path))
        if delta.base_sha256 != record.base_sha256:
            raise UsageError(
                f"{path}: made over base {delta.base_sha256[:16]}..., unit.json says {record.base_sha256[:16]}..."
            )
        return Unit(**common, delta=delta)
    os.close(strict.open_regular(path, "unit image", follow=False))  # a regular file, not a link
    bmap_blob = signed.blobs.get(f"{record.image}.bmap")
    ranges = None if bmap_blob is None else parse_bmap(bmap_blob, record.image_size, f"{path}.bmap")
    return Unit(**common, image=path, image_ranges=ranges)


def base_of(unit_dir: str | os.PathLike) -> Path:
    """The base recorded by the emit run that published unit_dir (its OUT's state file)."""
    state = Path(unit_dir).resolve().parent / STATE_FILE
    try:
        data = strict.loads(strict.read_regular(state, MAX_STATE, "emit state", follow=False), str(state))
        path = data["base"]["path"]
        if not (isinstance(path, str) and 0 < len(path) <= 4096 and "\0" not in path):
            raise TypeError
    except (UsageError, KeyError, TypeError):
        raise UsageError(f"no base recorded for {unit_dir} ({state} unreadable); give --base") from None
    return Path(path)


def require_base(base: str | os.PathLike) -> os.stat_result:
    """A base is a regular file (a FIFO would hang the station, a device is no base image)."""
    try:
        st = os.stat(base)
    except FileNotFoundError:
        raise UsageError(f"base image {base} not found") from None
    except OSError as exc:
        raise UsageError(f"cannot read base image {base}: {exc.strerror}") from None
    strict.require_regular(st, base, "base image")
    return st


def block_map(image: str | os.PathLike, use_bmap: bool = True) -> BlockMap:
    """IMAGE's block map: ranges from IMAGE.bmap when present, the sha256 from a one-pass scan
    cached per file identity (so a station hashes its base once, not once per card)."""
    image = Path(image)
    require_base(image)
    cached = _scan_cached(image)
    bmap_file = Path(f"{image}.bmap")
    if use_bmap and os.path.lexists(bmap_file):
        blob = strict.read_regular(bmap_file, MAX_BMAP, "bmap", ImageFormatError)
        return BlockMap(cached.size, cached.sha256, parse_bmap(blob, cached.size, str(bmap_file)))
    return cached


def bound_to_base(delta: Delta, base: str | os.PathLike | ImageSource, base_map: BlockMap, what: str) -> None:
    """A delta writes only into the base's data partition, as the base's own partition table
    gives it, and only over the very base it was made from: whatever the delta claims."""
    shown = base.path if isinstance(base, ImageSource) else base
    if (delta.base_size, delta.base_sha256) != (base_map.size, base_map.sha256):
        raise UsageError(
            f"{what} was made over a base of {delta.base_size} bytes (sha256 "
            f"{delta.base_sha256[:16]}...), not over {shown} ({base_map.size} bytes, "
            f"{base_map.sha256[:16]}...)"
        )
    part = open_layout(base).require("data").partition
    if delta.window != (part.start, part.end):
        raise UsageError(
            f"{what}: its window {delta.window[0]}-{delta.window[1]} is not the data partition "
            f"of {shown} ({part.start}-{part.end}): refused, it could write anywhere on the card"
        )


def _cache_path(image: Path) -> Path:
    st = os.stat(image)
    ident = f"{image.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagetools" / "bmap"
    return root / (hashlib.sha256(ident.encode()).hexdigest() + ".json")


def _scan_cached(image: Path) -> BlockMap:
    cache = _cache_path(image)
    try:
        data = strict.loads(strict.read_regular(cache, MAX_BMAP, "bmap cache", follow=False), str(cache))
        if data.get("version") == CACHE_VERSION:
            return BlockMap(data["size"], data["sha256"], tuple(bmap.BlockRange(a, b, c) for a, b, c in data["ranges"]))
    except (UsageError, AttributeError, KeyError, TypeError, ValueError):
        pass
    scan = bmap.scan(image)
    result = BlockMap(scan.size, scan.whole_sha256(), tuple(scan.ranges))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(
            cache,
            json.dumps(
                {
                    "version": CACHE_VERSION,
                    "size": scan.size,
                    "sha256": scan.sha256,
                    "ranges": [[r.first, r.last, r.sha256] for r in scan.ranges],
                }
            ).encode(),
            durable=False,
        )
    except OSError:
        pass  # no cache: the next run scans again
    return result


_RANGE = re.compile(rb'<Range\s+chksum="([0-9a-f]{64})"\s*>\s*(\d+)(?:\s*-\s*(\d+))?\s*</Range>')


def parse_bmap(text: bytes, image_size: int, path: str) -> tuple[bmap.BlockRange, ...]:
    """A bmap 2.0 (sha256) file's ranges, checked against the image they claim to describe."""
    size = re.search(rb"<ImageSize>\s*(\d+)\s*</ImageSize>", text)
    block = re.search(rb"<BlockSize>\s*(\d+)\s*</BlockSize>", text)
    kind = re.search(rb"<ChecksumType>\s*(\w+)\s*</ChecksumType>", text)
    if not (size and block and kind) or kind.group(1) != b"sha256" or int(block.group(1)) != bmap.BLOCK_SIZE:
        raise ImageFormatError(f"{path}: not a bmap 2.0 with sha256 checksums and {bmap.BLOCK_SIZE}-byte blocks")
    if int(size.group(1)) != image_size:
        raise ImageFormatError(
            f"{path} describes an image of {int(size.group(1))} bytes, the image "
            f"has {image_size}: make a new bmap (bmaptool create)"
        )
    blocks, ranges, last = -(-image_size // bmap.BLOCK_SIZE), [], -1
    for m in _RANGE.finditer(text):
        first = int(m.group(2))
        end = int(m.group(3) or first)
        if not last < first <= end < blocks:
            raise ImageFormatError(f"{path}: range {first}-{end} is out of order or past the image")
        ranges.append(bmap.BlockRange(first, end, m.group(1).decode()))
        last = end
    return tuple(ranges)


def overlay_for(base: ImageSource, unit: Unit) -> Overlay:
    """The unit's image as the open base + delta, once the delta is bound to this base
    (bound_to_base)."""
    assert unit.delta is not None
    base_map = block_map(base.path, use_bmap=False)
    bound_to_base(unit.delta, base, base_map, f"unit {unit.name}")
    return Overlay(base, unit.delta, base_map.sha256)


def materialize(
    unit_dir: str | os.PathLike,
    out_image: str | os.PathLike,
    base: str | os.PathLike,
    force: bool = False,
    trust: str | os.PathLike | None = None,
) -> VerifyReport:
    """Write the unit's full image (sparse, 0600 from its first byte) and its .bmap, verified
    (every check, e2fsck included) before it gets its name. VerifyFailed if a check fails."""
    unit = load_unit(unit_dir, trust)
    if unit.delta is None:
        raise UsageError(f"{unit_dir} holds a full image already ({unit.image})")
    out_image = Path(out_image)
    require_base(base)
    with ImageSource(base) as src:
        overlay_for(src, unit)  # the delta bound to this base, or refused
        _refuse_input_as_output(out_image, [Path(base), *(Path(unit_dir) / n for n in os.listdir(unit_dir))])
        with replace_when_done(out_image, mode=0o600, exclusive=not force) as tmp:
            copy_extents(src.fd, tmp)
            delta_format.apply(unit.delta, tmp)
            report = verify_image(tmp, expected=unit.public_key)
            if not report.ok:
                raise VerifyFailed(
                    f"{out_image}: materialized image fails "
                    + "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
                )
            write_atomic(Path(f"{out_image}.bmap"), bmap.create(tmp))
    report.target = str(out_image)
    return report


def _refuse_input_as_output(out: Path, inputs: list[Path]) -> None:
    """OUT_IMAGE must not be (a name of) the base or a unit file: replacing the base with a
    unit's image would put that unit's private key on every later card."""
    for name in (out, Path(f"{out}.bmap")):
        try:
            st = os.stat(name)
        except OSError:
            continue
        for path in inputs:
            try:
                other = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino):
                raise UsageError(f"{out} is {path}, an input of materialize: give another output file")


def verify_unit(
    unit_dir: str | os.PathLike, base: str | os.PathLike, fsck: bool = True, trust: str | os.PathLike | None = None
) -> VerifyReport:
    """verify of a published unit; a delta is read through its overlay, never materialized."""
    unit = load_unit(unit_dir, trust)
    if unit.delta is None:
        assert unit.image is not None  # a unit holds either a delta or its own image
        return verify_image(unit.image, expected=unit.public_key, fsck=fsck)
    assert unit.record is not None  # load_unit keeps it
    name = Path(unit_dir) / unit.record.image
    require_base(base)
    with ImageSource(base) as src:
        return verify_image(ImageSource(name, overlay=overlay_for(src, unit)), expected=unit.public_key, fsck=fsck)
