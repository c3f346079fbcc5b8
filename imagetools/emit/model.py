"""What emit takes and gives: its options, one result per unit and the batch's result, and the
job a worker gets for a unit. Status and key source are closed vocabularies, StrEnums so that
they compare equal to, and are written to JSON as, their plain strings."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .. import keys
from ..layout import PartInfo


class Status(enum.StrEnum):
    """A unit's outcome in a run."""

    EMITTED = "emitted"
    SKIPPED = "skipped"     # published by an earlier run, still as recorded
    FAILED = "failed"
    BUILT = "built"         # internal: built and verified, not yet published


class UnitFormat(enum.StrEnum):
    """What a unit's directory holds: a full image, or the blocks that differ from the base."""

    IMAGE = "image"
    DELTA = "delta"


class KeySource(enum.StrEnum):
    """Where a unit's key came from."""

    GENERATED = "generated"
    DEVICE_LIST = "device list"
    KEPT = "kept"           # a published unit re-emitted (force) with the key it already has


@dataclass(frozen=True)
class EmitOptions:
    key_spec: keys.KeySpec = field(default_factory=keys.KeySpec)
    jobs: int | None = None           # worker processes; None = all cores
    bmap: bool = True
    discard_private_keys: bool = False
    force: bool = False
    format: UnitFormat = UnitFormat.IMAGE

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", UnitFormat(self.format))  # a plain string is fine too

    def settings(self) -> dict[str, Any]:
        """What a resumed run must agree on (jobs does not change the output). The format is
        recorded only for deltas: runs from before it existed made images."""
        spec = self.key_spec
        key: dict[str, Any] = {"type": spec.type, "format": spec.format}
        if spec.type == "rsa":
            key["bits"] = spec.bits
        elif spec.type == "ecdsa":
            key["curve"] = spec.curve
        settings = {"key": key, "bmap": self.bmap, "discard_private_keys": self.discard_private_keys}
        if self.format == UnitFormat.DELTA:
            settings["format"] = str(self.format)
        return settings


@dataclass
class UnitResult:
    name: str
    identity: dict[str, str]
    status: Status
    fingerprint: str | None = None
    key_type: str | None = None
    key_source: KeySource | None = None
    image: str | None = None
    image_sha256: str | None = None
    verify: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    disk_full: bool = False
    tmp: str | None = None            # a built unit's directory until it is published

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("disk_full"), data.pop("tmp")
        return data


@dataclass
class EmitResult:
    out_dir: str
    base: dict[str, Any]
    settings: dict[str, Any]
    copy_mode: str
    units: list[UnitResult]
    elapsed: float

    @property
    def ok(self) -> bool:
        return all(u.status != Status.FAILED for u in self.units)

    def count(self, status: str) -> int:
        return sum(u.status == status for u in self.units)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "base": self.base, "settings": self.settings,
                "copy_mode": self.copy_mode, "elapsed": round(self.elapsed, 3), "ok": self.ok,
                "summary": {s: self.count(s) for s in (Status.EMITTED, Status.SKIPPED, Status.FAILED)},
                "units": [u.to_dict() for u in self.units]}


Progress = Callable[[UnitResult, int, int], None]


@dataclass(frozen=True)
class Job:
    """Everything a worker needs for one unit (picklable)."""

    name: str
    identity: dict[str, str]
    key_path: str | None        # key file to use (device list, or a published unit's key)
    key_from_image: str | None  # published image holding the only copy of the key
    key_source: KeySource
    base: str
    suffix: str
    out_dir: str
    options: EmitOptions
    base_sha256: str
    replace: bool
    data_part: PartInfo            # the base's data partition (every unit has the base's table)
