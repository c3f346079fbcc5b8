"""The preauth file: the units to preauthorize, as `imagetools emit` writes them (OUT/preauth.json,
with the same units for people in OUT/preauth.csv). A JSON list of ``{"name": str, "identity_data":
{str: str}, "pubkey": SPKI PEM}``; keys are compared as SPKI DER, never as PEM text."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DeviceListError, KeyMaterialError, UsageError
from ..keys import PublicKey, fingerprint, load_public, public_pem
from ..mender import canonical_identity
from ..strict import JsonError, parse
from .identity import PREAUTH_JSON, identity_problems, read_text, repeated

MAX_PREAUTH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Unit:
    name: str
    identity: dict[str, str]
    pubkey: PublicKey = field(repr=False)

    @property
    def pem(self) -> str:
        return public_pem(self.pubkey).decode()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.pubkey)


def load_units(path: str | os.PathLike) -> list[Unit]:
    """Parse and check a preauth file (a regular file of at most 256 MiB); every problem is
    reported at once (DeviceListError), before anything is sent. Messages name its full path."""
    path = Path(path).absolute()
    text = read_text(path, "preauth file", MAX_PREAUTH_BYTES)
    try:
        data = parse(text, PREAUTH_JSON)
    except JsonError as exc:
        raise DeviceListError(f"{path}: {exc}") from None
    if not isinstance(data, list):
        raise DeviceListError(f"{path}: expected a JSON list of {{name, identity_data, pubkey}} objects")
    return parse_units(data, str(path))


def load_target_units(path: str | Path) -> list[Unit]:
    """The units of a preauth file, or of an emit OUT directory (its preauth.json)."""
    path = Path(path).absolute()
    if path.is_dir():
        if not (path / "preauth.json").exists():
            raise UsageError(f"{path} has no preauth.json: not an emit OUT directory")
        path = path / "preauth.json"
    return load_units(path)


def parse_units(entries: list[Any], source: str) -> list[Unit]:
    """Units from preauth entries. Names, identities and public keys (compared as SPKI DER, not
    PEM text) must each be unique: the server would hold one device for two units."""
    units: list[Unit] = []
    problems: list[str] = []
    first: dict[tuple[str, str], str] = {}  # (what, value) → the entry that had it first
    for number, entry in enumerate(entries, 1):
        unit, where, errors = _parse_entry(number, entry)
        if unit is None:
            problems += [f"{where}: {e}" for e in errors]
            continue
        for label, value in (
            ("name", unit.name),
            ("identity", canonical_identity(unit.identity)),
            ("public key", unit.fingerprint),
        ):
            earlier = first.setdefault((label, value), where)
            if earlier != where:
                also = f" (fingerprint {value[:16]}…)" if label == "public key" else ""
                problems.append(f"{where}: same {label} as {earlier}{also}")
        units.append(unit)
    if problems:
        raise DeviceListError(f"{source}: " + "; ".join(problems))
    if not units:
        raise DeviceListError(f"{source}: no units")
    return units


def _parse_entry(number: int, entry: Any) -> tuple[Unit | None, str, list[str]]:
    """One entry as a Unit, or None with where it is and what is wrong with it."""
    if not isinstance(entry, dict):
        return None, f"entry {number}", ["not an object"]
    name, pem = entry.get("name"), entry.get("pubkey")
    good_name = isinstance(name, str) and name != "" and name.isprintable()
    where = f"entry {number} ({name})" if good_name else f"entry {number}"
    errors = [f"key {key!r} appears more than once" for key in repeated(entry)]
    errors += identity_problems(entry.get("identity_data"))
    if not good_name:
        errors.append("'name' must be a non-empty string of printable characters")
    key = None
    if not isinstance(pem, str) or not pem.isascii():
        errors.append("'pubkey' must be a PEM string")
    else:
        try:
            key = load_public(pem.encode(), "pubkey")
        except KeyMaterialError as exc:
            errors.append(str(exc))
    if errors:
        return None, where, errors
    assert isinstance(name, str) and key is not None  # otherwise there is an error above
    return Unit(name, dict(entry["identity_data"]), key), where, []


@dataclass(frozen=True)
class Entry:
    """A unit as the preauth files list it; load_units reads it back as a Unit."""

    name: str
    identity: dict[str, str]
    pem: str  # SPKI PEM text, as in the unit's public.key
    fingerprint: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "identity_data": self.identity, "pubkey": self.pem}


def render(entries: list[Entry]) -> str:
    """The preauth file (preauth.json)."""
    return json.dumps([e.to_json() for e in entries], indent=2) + "\n"


def render_csv(entries: list[Entry]) -> str:
    """preauth.csv: name, every identity attribute, fingerprint and pubkey PEM per unit, each cell
    safe to open in a spreadsheet."""
    attrs: list[str] = []
    for entry in entries:
        attrs += [a for a in entry.identity if a not in attrs]
    buf = io.StringIO()
    plain = csv.writer(buf, lineterminator="\n")
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)  # csv quotes "\n" cells, not "\r"
    plain.writerow([spreadsheet_safe(c) for c in ["name", *attrs, "fingerprint", "pubkey"]])
    for entry in entries:
        row = [entry.name, *(entry.identity.get(a, "") for a in attrs), entry.fingerprint, entry.pem]
        cells = [spreadsheet_safe(c or "") for c in row]
        (quoted if any("\r" in c for c in cells) else plain).writerow(cells)
    return buf.getvalue()


def spreadsheet_safe(cell: str) -> str:
    """A cell a spreadsheet shows as text: one that could start a formula gets a leading "'"."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell
