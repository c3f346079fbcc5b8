"""What emit takes and gives: its options, one result per unit and the batch's result, and the
job a worker gets for a unit. Status and key source are closed vocabularies, StrEnums so that
they compare equal to, and are written to JSON as, their plain strings."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .. import keys
from ..errors import FilesystemError, UsageError
from ..fs.base import check_mode, check_owner, normalize
from ..layout import PartInfo
from ..unitformat import KeySource  # noqa: F401 (part of emit's vocabulary)

if TYPE_CHECKING:  # an annotation only: unit.json's readers (emit.state) need no config module
    from ..menderconf.plan import ModifyPlan

MAX_UNIT_FILE_VALUE = 4096  # one identity value, one line


class Status(enum.StrEnum):
    """A unit's outcome in a run."""

    EMITTED = "emitted"
    SKIPPED = "skipped"  # published by an earlier run, still as recorded
    FAILED = "failed"
    BUILT = "built"  # internal: built and verified, not yet published


class UnitFormat(enum.StrEnum):
    """What a unit's directory holds: a full image, or the blocks that differ from the base."""

    IMAGE = "image"
    DELTA = "delta"


@dataclass(frozen=True)
class UnitFile:
    """A file written into every unit with that unit's value of a device-list column (plus a
    newline): e.g. a serial number an identity script reads. `name` is the unit's output name."""

    path: str  # device path: /data/... on the data partition, else rootfs A and B
    column: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0

    def __post_init__(self) -> None:
        where = f"--unit-file {self.path}"
        try:
            object.__setattr__(self, "path", normalize(self.path))
            check_mode(self.mode), check_owner(self.uid, "uid"), check_owner(self.gid, "gid")
        except FilesystemError as exc:
            raise UsageError(f"{where}: {exc}") from None
        if self.path == "/" or not self.column or self.column.casefold() == "key":
            raise UsageError(f"{where}: needs a file path and a device-list column other than 'key'")

    @classmethod
    def parse(cls, text: str) -> UnitFile:
        """IMAGE_PATH=COLUMN[:MODE[:UID:GID]], e.g. /data/serial=sn:0644:0:0 (mode in octal)."""
        path, sep, rest = text.partition("=")
        parts = rest.split(":")
        if not sep or len(parts) not in (1, 2, 4) or not all(p.isdigit() for p in parts[1:]):
            raise UsageError(
                f"--unit-file {text!r}: expected IMAGE_PATH=COLUMN[:MODE[:UID:GID]], "
                "e.g. /data/serial=sn:0644:0:0 (mode octal, owner numeric)"
            )
        if len(parts) > 1 and any(c not in "01234567" for c in parts[1]):
            raise UsageError(f"--unit-file {text!r}: mode {parts[1]!r} is not octal")
        mode = int(parts[1], 8) if len(parts) > 1 else 0o644
        uid, gid = (int(parts[2]), int(parts[3])) if len(parts) == 4 else (0, 0)
        return cls(path, parts[0], mode, uid, gid)

    def value(self, name: str, identity: dict[str, str]) -> str | None:
        """This unit's value (None when its row has no such column)."""
        return name if self.column.casefold() == "name" else identity.get(self.column)

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "column": self.column, "mode": f"{self.mode:04o}", "owner": f"{self.uid}:{self.gid}"}


@dataclass(frozen=True)
class EmitOptions:
    key_spec: keys.KeySpec = field(default_factory=keys.KeySpec)
    jobs: int | None = None  # worker processes; None = all cores
    bmap: bool = True
    discard_private_keys: bool = False
    force: bool = False
    format: UnitFormat = UnitFormat.IMAGE
    modify: ModifyPlan | None = None  # applied to every unit after its key, before verify
    unit_files: tuple[UnitFile, ...] = ()
    image_sha256: bool = False  # image units: record the whole image's SHA-256 (see hashes_image)

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", UnitFormat(self.format))  # a plain string is fine too
        object.__setattr__(self, "unit_files", tuple(self.unit_files))
        if self.configures and self.format == UnitFormat.DELTA:
            raise UsageError(
                "--format delta cannot carry per-unit configuration yet (a delta covers "
                "the data partition only): drop the modify options and --unit-file, or "
                "use --format image, or modify the base once with imagetools modify --out"
            )
        paths = [f.path for f in self.unit_files]
        if len(set(paths)) != len(paths):
            raise UsageError("--unit-file: the same path is given twice")

    @property
    def hashes_image(self) -> bool:
        """Whether an image unit's record carries its whole SHA-256. Its integrity record is its
        signed bmap's range checksums; the whole hash (every hole hashed as zeros, about as long
        as copying the image) is opt-in, and taken anyway where there is no bmap to rely on."""
        return self.image_sha256 or not self.bmap

    @property
    def configures(self) -> bool:
        """Whether units get more than their key (rootfs and other partitions change too)."""
        return self.modify is not None or bool(self.unit_files)

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
        if self.modify is not None:  # recorded only when given: older runs had none
            settings["modify"] = self.modify.summary()
        if self.unit_files:
            settings["unit_files"] = [f.to_json() for f in self.unit_files]
        if self.image_sha256 and self.format == UnitFormat.IMAGE:  # recorded only when given
            settings["image_sha256"] = True
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
    tmp: str | None = None  # a built unit's directory until it is published

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
    warnings: list[str] = field(default_factory=list)  # once per run, e.g. rootfs B skipped

    @property
    def ok(self) -> bool:
        return all(u.status != Status.FAILED for u in self.units)

    def count(self, status: str) -> int:
        return sum(u.status == status for u in self.units)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "base": self.base,
            "settings": self.settings,
            "copy_mode": self.copy_mode,
            "elapsed": round(self.elapsed, 3),
            "ok": self.ok,
            "summary": {s: self.count(s) for s in (Status.EMITTED, Status.SKIPPED, Status.FAILED)},
            "warnings": self.warnings,
            "units": [u.to_dict() for u in self.units],
        }


@dataclass
class PlannedUnit:
    """A unit as a dry run sees it: what a real run would do with it, and why."""

    name: str
    action: str  # "emit", "re-emit" (force), "skip" (published, as recorded), "fail"
    detail: str | None = None


@dataclass
class DryRun:
    """What `emit` would do, with nothing written: the units, the space needed and free."""

    out_dir: str
    base: dict[str, Any]
    settings: dict[str, Any]
    copy_mode: str
    units: list[PlannedUnit]
    need_bytes: int
    free_bytes: int
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(u.action != "fail" for u in self.units)

    def count(self, action: str) -> int:
        return sum(u.action == action for u in self.units)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": True,
            "out_dir": self.out_dir,
            "base": self.base,
            "settings": self.settings,
            "copy_mode": self.copy_mode,
            "ok": self.ok,
            "need_bytes": self.need_bytes,
            "free_bytes": self.free_bytes,
            "warnings": self.warnings,
            "summary": {a: self.count(a) for a in ("emit", "re-emit", "skip", "fail")},
            "units": [asdict(u) for u in self.units],
        }


Progress = Callable[[UnitResult, int, int], None]


@dataclass(frozen=True)
class Job:
    """Everything a worker needs for one unit (picklable)."""

    name: str
    identity: dict[str, str]
    key_path: str | None  # key file to use (device list, or a published unit's key)
    key_from_image: str | None  # published image holding the only copy of the key
    key_source: KeySource
    base: str
    suffix: str
    out_dir: str
    options: EmitOptions
    base_sha256: str
    replace: bool
    data_part: PartInfo  # the base's data partition (every unit has the base's table)
    window: tuple[int, int] = (0, 0)  # bytes a unit may differ from the base in (personal_window)
    first_copy: tuple[tuple[int, int], ...] = ()  # byte spans stage 1 copies (unit.first_copy)
    unit_files: tuple[tuple[UnitFile, str], ...] = ()  # each with this unit's value
