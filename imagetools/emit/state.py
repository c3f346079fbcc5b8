"""What OUT remembers between runs: each published unit's unit.json (UnitRecord) and OUT's state
file, which records the base image and the settings so that a changed base or changed key
settings are noticed (refused unless force). Each file is read and written through one type; a
file that is not what emit writes (malformed, a field missing or of another type) counts as
unreadable."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import EnvironmentProblem
from ..image import ImageSource
from ..units import MiB
from .model import KeySource, Status, UnitResult
from .outdir import write_text

STATE_FILE = ".imagetools-emit.json"
UNIT_FILE = "unit.json"
STATE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class UnitRecord:
    """OUT/<name>/unit.json: what emit recorded about a published unit. The image's size, mtime
    and ctime let a later run skip the unit after a stat; its key is never regenerated."""

    name: str
    identity: dict[str, str]
    fingerprint: str
    key_type: str
    key_source: KeySource
    image: str                      # file name inside the unit directory
    image_size: int
    image_mtime_ns: int
    image_ctime_ns: int | None      # None: a record from before it was kept
    image_sha256: str
    base_sha256: str
    settings: dict[str, Any]
    files: list[str]
    verify: dict[str, Any]
    timings: dict[str, float]
    format: str = "image"           # "delta": `image` names the delta file; image_sha256 is its sha256

    @classmethod
    def read(cls, path: Path) -> UnitRecord:
        """OSError if unreadable, ValueError if it is not a record emit writes."""
        return cls.from_json(json.loads(path.read_text()))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, data: Any) -> UnitRecord:
        f = _Fields(data, UNIT_FILE)
        image = f.get("image", str)
        if image in ("", ".", "..") or "/" in image:
            raise ValueError(f"{UNIT_FILE}: 'image' is not a file name")
        return cls(name=f.get("name", str), identity=f.get("identity", dict, each=str),
                   fingerprint=f.get("fingerprint", str), key_type=f.get("key_type", str),
                   key_source=KeySource(f.get("key_source", str)), image=image,
                   image_size=f.get("image_size", int), image_mtime_ns=f.get("image_mtime_ns", int),
                   image_ctime_ns=f.get("image_ctime_ns", int, optional=True),
                   image_sha256=f.get("image_sha256", str), base_sha256=f.get("base_sha256", str),
                   settings=f.get("settings", dict), files=f.get("files", list, each=str),
                   verify=f.get("verify", dict), timings=f.get("timings", dict, each=(int, float)),
                   format=_unit_format(f.get("format", str, optional=True)))

    def result(self, unit_dir: Path, status: Status) -> UnitResult:
        """The published unit as this run reports it."""
        return UnitResult(name=self.name, identity=self.identity, status=status,
                          fingerprint=self.fingerprint, key_type=self.key_type,
                          key_source=self.key_source, image=str(unit_dir / self.image),
                          image_sha256=self.image_sha256, verify=self.verify, timings=self.timings)


@dataclass
class BaseIdentity:
    """The base image: size, mtime and partition tables are cheap to get; sha256 (a full read) is
    taken from the state file while those match, else filled in when first needed."""

    path: str
    size: int
    mtime_ns: int
    table_sha256: str
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EmitState:
    """OUT/.imagetools-emit.json: the base and settings of the last run, and whether it finished
    with every unit published."""

    base: BaseIdentity
    settings: dict[str, Any]
    complete: bool

    @classmethod
    def from_json(cls, data: Any) -> EmitState:
        f = _Fields(data, "state")
        base = _Fields(f.get("base", dict), "base")
        return cls(BaseIdentity(base.get("path", str), base.get("size", int), base.get("mtime_ns", int),
                                base.get("table_sha256", str), base.get("sha256", str, optional=True)),
                   f.get("settings", dict), f.get("complete", bool))

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "base": self.base.to_json(), "settings": self.settings,
                "complete": self.complete}


def read_state(out: Path) -> EmitState | None:
    try:
        return EmitState.from_json(json.loads((out / STATE_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(f"{out / STATE_FILE} is unreadable ({exc}); it records which base image "
                                 f"the units were made from: restore it or use a new output directory") from None


def write_state(out: Path, state: EmitState) -> None:
    write_text(out / STATE_FILE, json.dumps(state.to_json(), indent=2) + "\n")


def base_identity(base: ImageSource, state: EmitState | None) -> BaseIdentity:
    """Cheap identity (size, mtime, partition tables) of the base, already open; the content hash
    is reused from the state when those still match, computed otherwise."""
    st = os.fstat(base.fd)
    ident = BaseIdentity(str(Path(base.path).resolve()), base.size, st.st_mtime_ns, _table_sha256(base))
    old = state.base if state is not None else None
    if old is not None and (old.size, old.mtime_ns, old.table_sha256) == (ident.size, ident.mtime_ns,
                                                                           ident.table_sha256):
        ident.sha256 = old.sha256
    return ident


def _table_sha256(base: ImageSource) -> str:
    """First and last MiB: MBR/EBR, primary and backup GPT."""
    head = base.read(0, min(MiB, base.size), "the partition table")
    tail_at = max(0, base.size - MiB)
    return hashlib.sha256(head + base.read(tail_at, base.size - tail_at, "the backup table")).hexdigest()


class _Fields:
    """A JSON object's fields, each of the type emit writes, or ValueError naming the first that
    is not."""

    def __init__(self, data: Any, what: str):
        if not isinstance(data, dict):
            raise ValueError(f"{what} is not a JSON object")
        self.data, self.what = data, what

    def get(self, key: str, kind: type | tuple[type, ...], *, each: type | tuple[type, ...] | None = None,
            optional: bool = False) -> Any:
        """data[key], of `kind`; `each`: the type of every value of an object or item of a list."""
        value = self.data.get(key)
        if value is None and optional:
            return None
        if not _is(value, kind) or (each is not None and not all(
                _is(v, each) for v in (value.values() if isinstance(value, dict) else value))):
            raise ValueError(f"{self.what}: {key!r} is missing or of another type")
        return value


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    """isinstance, except that a JSON true or false is no number."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _unit_format(value: str | None) -> str:
    """unit.json's format: absent in records from before deltas (they are images)."""
    if value not in (None, "image", "delta"):
        raise ValueError(f"{UNIT_FILE}: 'format' is {value!r}, not 'image' or 'delta'")
    return value or "image"
