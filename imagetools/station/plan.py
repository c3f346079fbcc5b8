"""What a card gets: a plan made from the base and one unit (or a key injected on the fly),
every input bound to the base before anything is written."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import keys
from ..bmap import BlockRange
from ..errors import UsageError
from ..layout import open_layout
from ..published import Unit, block_map, bound_to_base, load_unit, require_base
from ..verify import DEFAULT_KEY_PATH, data_path
from .zeroing import Needs, must_zero

BLOCK = 4096
LEDGER_FILE = "ledger.sqlite"  # beside the units: OUT/ledger.sqlite


@dataclass(frozen=True)
class Plan:
    """What a target gets: the source file's mapped ranges, the unit's blocks over them, the
    unmapped ranges the filesystems need to read as zeros, and the unmapped journal ranges where a
    card's stale JBD2 headers are zeroed (see zeroing). `inputs`: files no target may be."""

    source: str
    size: int
    ranges: tuple[BlockRange, ...]
    patches: tuple[tuple[int, bytes], ...]
    unit: Unit
    zeros: tuple[tuple[int, int], ...] = ()
    inputs: tuple[str, ...] = field(default=())
    ledger: str | None = None  # the ledger beside the unit's OUT (or the key file)
    journals: tuple[tuple[int, int], ...] = ()

    @property
    def total(self) -> int:
        """Bytes sent to a card: mapped blocks, the unit's blocks, and the zeros."""
        mapped = sum(min((r.last + 1) * BLOCK, self.size) - r.first * BLOCK for r in self.ranges)
        return mapped + sum(len(d) for _, d in self.patches) + sum(b - a for a, b in self.zeros)


def plan_unit(base: str | os.PathLike, unit_dir: str | os.PathLike, trust: str | os.PathLike | None = None) -> Plan:
    """A published unit over BASE: its signature checked, the base the one it was made from,
    a delta bound to the base's own data partition."""
    require_base(base)
    unit = load_unit(unit_dir, trust)
    base_map = block_map(base)
    if base_map.sha256 != unit.base_sha256:
        raise UsageError(
            f"{base} (sha256 {base_map.sha256[:16]}...) is not the base {unit_dir} was "
            f"made from (sha256 {unit.base_sha256[:16]}...)"
        )
    unit_dir = Path(unit_dir)
    inputs = (str(base), *(str(unit_dir / n) for n in sorted(os.listdir(unit_dir))))
    ledger = str(unit_dir.resolve().parent / LEDGER_FILE)
    if unit.delta is None:
        assert unit.image is not None
        assert unit.record is not None  # load_unit records every image unit
        ranges = unit.image_ranges if unit.image_ranges is not None else _unmapped_image(unit)
        size = unit.record.image_size
        needs = _needs(str(unit.image), ranges, size)
        return Plan(str(unit.image), size, tuple(ranges), (), unit, needs.zeros, inputs, ledger, needs.journals)
    bound_to_base(unit.delta, base, base_map, str(unit_dir))
    needs = _needs(str(base), base_map.ranges, base_map.size)
    return Plan(
        str(base), base_map.size, base_map.ranges, unit.delta.extents, unit, needs.zeros, inputs, ledger, needs.journals
    )


def _unmapped_image(unit: Unit) -> tuple[BlockRange, ...]:
    """An image unit without a bmap (emit --no-bmap): its ranges from the image itself (never from
    an unsigned .bmap beside it), the image bound by the SHA-256 its signed unit.json records."""
    assert unit.image is not None
    assert unit.record is not None
    image_map = block_map(unit.image, use_bmap=False)
    want = unit.record.image_sha256
    if want is None or image_map.sha256 != want:
        raise UsageError(
            f"{unit.image} has no signed bmap and does not match the SHA-256 its unit.json records "
            f"({(want or 'none')[:16]}...): the unit is damaged or was altered; emit it again"
        )
    return image_map.ranges


def plan_key(base: str | os.PathLike, key_file: str | os.PathLike) -> Plan:
    """A unit made on the fly: KEY injected into a scratch copy of the data partition only."""
    from ..personalize import make_delta  # only --key pays for it

    require_base(base)
    pem = keys.read_key_bytes(key_file, "private key")
    private = keys.load_private(pem, str(key_file))
    keys.check_acceptable(private, str(key_file))
    base_map = block_map(base)
    data = open_layout(base).require("data")
    delta, fsck = make_delta(base, data, pem, data_path(DEFAULT_KEY_PATH), base_map.sha256)
    if fsck.status != "pass":
        raise UsageError(f"{base}: the data partition with the key injected fails e2fsck: {fsck.detail}")
    unit = Unit(
        key_unit_name(Path(key_file)), keys.fingerprint(private), private.public_key(), base_map.sha256, delta=delta
    )
    ledger = str(Path(key_file).resolve().parent / LEDGER_FILE)
    needs = _needs(str(base), base_map.ranges, base_map.size)
    return Plan(
        str(base),
        base_map.size,
        base_map.ranges,
        delta.extents,
        unit,
        needs.zeros,
        (str(base), str(key_file)),
        ledger,
        needs.journals,
    )


def key_unit_name(key_file: Path) -> str:
    """The unit a bare key file stands for: OUT/u/private.key is unit u, not `private`."""
    if key_file.stem in ("private", "private.key") and key_file.parent.name:
        return key_file.resolve().parent.name
    return key_file.stem


_needs_cache: dict[tuple, Needs] = {}


def _needs(source: str, ranges, size: int) -> Needs:
    """must_zero of the source, once per file identity (a station plans card after card)."""
    st = os.stat(source)
    ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, len(ranges))
    if ident not in _needs_cache:
        _needs_cache.clear()
        _needs_cache[ident] = must_zero(source, ranges, size)
    return _needs_cache[ident]
