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
from .zeroing import must_zero

BLOCK = 4096
LEDGER_FILE = "ledger.sqlite"   # beside the units: OUT/ledger.sqlite


@dataclass(frozen=True)
class Plan:
    """What a target gets: the source file's mapped ranges, the unit's blocks over them, and the
    unmapped ranges the filesystems need to read as zeros. `inputs`: files no target may be."""

    source: str
    size: int
    ranges: tuple[BlockRange, ...]
    patches: tuple[tuple[int, bytes], ...]
    unit: Unit
    zeros: tuple[tuple[int, int], ...] = ()
    inputs: tuple[str, ...] = field(default=())
    ledger: str | None = None    # the ledger beside the unit's OUT (or the key file)

    @property
    def total(self) -> int:
        """Bytes sent to a card: mapped blocks, the unit's blocks, and the zeros."""
        mapped = sum(min((r.last + 1) * BLOCK, self.size) - r.first * BLOCK for r in self.ranges)
        return mapped + sum(len(d) for _, d in self.patches) + sum(b - a for a, b in self.zeros)


def plan_unit(base: str | os.PathLike, unit_dir: str | os.PathLike,
              trust: str | os.PathLike | None = None) -> Plan:
    """A published unit over BASE: its signature checked, the base the one it was made from,
    a delta bound to the base's own data partition."""
    require_base(base)
    unit = load_unit(unit_dir, trust)
    base_map = block_map(base)
    if base_map.sha256 != unit.base_sha256:
        raise UsageError(f"{base} (sha256 {base_map.sha256[:16]}...) is not the base {unit_dir} was "
                         f"made from (sha256 {unit.base_sha256[:16]}...)")
    unit_dir = Path(unit_dir)
    inputs = (str(base), *(str(unit_dir / n) for n in sorted(os.listdir(unit_dir))))
    ledger = str(unit_dir.resolve().parent / LEDGER_FILE)
    if unit.delta is None:
        assert unit.image is not None
        image_map = block_map(unit.image) if unit.image_ranges is None else None
        ranges = unit.image_ranges if image_map is None else image_map.ranges
        size = unit.record.image_size if unit.record else os.stat(unit.image).st_size
        return Plan(str(unit.image), size, tuple(ranges), (), unit, _zeros(str(unit.image), ranges, size),
                    inputs, ledger)
    bound_to_base(unit.delta, base, base_map, str(unit_dir))
    return Plan(str(base), base_map.size, base_map.ranges, unit.delta.extents, unit,
                _zeros(str(base), base_map.ranges, base_map.size), inputs, ledger)


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
    unit = Unit(key_unit_name(Path(key_file)), keys.fingerprint(private), private.public_key(),
                base_map.sha256, delta=delta)
    ledger = str(Path(key_file).resolve().parent / LEDGER_FILE)
    return Plan(str(base), base_map.size, base_map.ranges, delta.extents, unit,
                _zeros(str(base), base_map.ranges, base_map.size), (str(base), str(key_file)), ledger)


def key_unit_name(key_file: Path) -> str:
    """The unit a bare key file stands for: OUT/u/private.key is unit u, not `private`."""
    if key_file.stem in ("private", "private.key") and key_file.parent.name:
        return key_file.resolve().parent.name
    return key_file.stem


_zero_cache: dict[tuple, tuple[tuple[int, int], ...]] = {}


def _zeros(source: str, ranges, size: int) -> tuple[tuple[int, int], ...]:
    """must_zero of the source, once per file identity (a station plans card after card)."""
    st = os.stat(source)
    ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, len(ranges))
    if ident not in _zero_cache:
        _zero_cache.clear()
        _zero_cache[ident] = tuple(must_zero(source, ranges, size))
    return _zero_cache[ident]
