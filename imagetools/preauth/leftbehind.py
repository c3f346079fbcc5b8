"""Preauthorizations left behind: a typo in an identity, fixed in the preauth file and pushed
again, leaves the misspelt identity preauthorized on the server, where a device could claim it."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from ..keys import spki_der
from ..mender import PREAUTHORIZED, canonical_identity
from ..server import MenderClient
from ..server.deviceauth import iter_devices
from ..server.shapes import pem_der
from .units import Unit


@dataclass(frozen=True)
class LeftBehind:
    """A device still preauthorized on the server that the preauth file no longer has, but that
    looks like one of its units (see left_behind)."""

    device_id: str
    identity: dict[str, str]
    unit: str  # the file's unit it looks like
    reason: str

    @property
    def remove_command(self) -> str:
        """The command that takes it off the server, ready to paste into a shell."""
        return "imagetools preauth remove --identity " + shlex.quote(canonical_identity(self.identity))

    def to_dict(self) -> dict:
        return {**asdict(self), "remove_command": self.remove_command}


def find_left_behind(client: MenderClient, units: list[Unit]) -> list[LeftBehind]:
    """left_behind over the server's device list: one walk, bounded like every listing."""
    return left_behind(list(iter_devices(client)), units)


def left_behind(devices: list[dict], units: list[Unit]) -> list[LeftBehind]:
    """Preauthorized devices whose identity the file does not have but that look like its units.

    The case this is for: a typo in an identity, fixed in the file and pushed again, leaves the
    misspelt identity preauthorized on the server, where a device could still claim it. "Looks
    like one of ours" means either of:
    - a preauthorized auth set holds the key of a unit of the file (the identity was edited, the
      key kept); or
    - the identity has a unit's attribute names, differs from it in exactly one value, and shares
      with it a value that no other unit of the file and no other such device has (the serial
      number of {"mac": "..:03", "sn": "SN3"} fixed to {"mac": "..:33", "sn": "SN3"}).
    Not "any preauthorized device with the same attribute names", nor "one value apart" alone:
    with Mender's default identity (the MAC only) or an attribute every unit shares (a SKU) those
    would name every not-yet-booted unit of earlier batches on every push. The cost: a typo in a
    single-attribute identity, fixed and pushed with a new key, goes unnoticed here."""
    in_file = {canonical_identity(u.identity) for u in units}
    strays = [
        d
        for d in devices
        if _all_strings(d.get("identity_data")) and canonical_identity(d["identity_data"]) not in in_file
    ]
    by_key = {spki_der(u.pubkey): u for u in units}
    file_values = Counter(item for u in units for item in u.identity.items())
    sole = {item: u for u in units for item in u.identity.items() if file_values[item] == 1}
    stray_values = Counter(item for d in strays for item in d["identity_data"].items())
    found = []
    for device in strays:
        preauthorized = [s for s in device.get("auth_sets") or [] if s.get("status") == PREAUTHORIZED]
        if not preauthorized:
            continue
        match = _unit_by_key(preauthorized, by_key) or _one_value_apart(device["identity_data"], sole, stray_values)
        if match:
            found.append(LeftBehind(device["id"], dict(device["identity_data"]), match[0].name, match[1]))
    return found


def _unit_by_key(sets: list[dict], by_key: dict[bytes, Unit]) -> tuple[Unit, str] | None:
    for auth_set in sets:
        der = pem_der(auth_set.get("pubkey"))
        unit = by_key.get(der) if der is not None else None
        if unit:
            return unit, f"its preauthorized key is unit {unit.name}'s"
    return None


def _one_value_apart(
    identity: dict[str, str], sole: dict[tuple[str, str], Unit], stray_values: Counter
) -> tuple[Unit, str] | None:
    for item in identity.items():
        unit = sole.get(item)
        if unit is None or stray_values[item] != 1 or unit.identity.keys() != identity.keys():
            continue
        differ = [a for a in identity if identity[a] != unit.identity[a]]
        if len(differ) == 1:
            attr = differ[0]
            return unit, (
                f"its identity differs from unit {unit.name}'s only in {attr} ({json.dumps(identity[attr])} "
                f"on the server, {json.dumps(unit.identity[attr])} in the file)"
            )
    return None


def _all_strings(identity: Any) -> bool:
    return isinstance(identity, dict) and bool(identity) and all(isinstance(v, str) for v in identity.values())
