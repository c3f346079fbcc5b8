"""Join the preauth files of a batch's shards (`emit --shard K/N` on several hosts) into one.

Each input is checked as `preauth push` checks it; across the inputs, a name, an identity or a
public key (compared as SPKI DER) seen twice is refused, naming both places, before anything is
written: two units sharing any of them would be one device on the server.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .atomic import write_atomic
from .errors import DeviceListError
from .mender import canonical_identity
from .preauth import Entry, Unit, load_units, render


def merge(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, force: bool = False) -> list[Unit]:
    """Write the union of the inputs' units to out (exclusive unless force); returns them."""
    units: list[Unit] = []
    first: dict[tuple[str, str], str] = {}
    problems: list[str] = []
    for number, path in enumerate(inputs, 1):
        for unit in load_units(path):
            where = f"{path} (input {number}, {unit.name})"
            for label, value in (
                ("name", unit.name),
                ("identity", canonical_identity(unit.identity)),
                ("public key", unit.fingerprint),
            ):
                earlier = first.setdefault((label, value), where)
                if earlier != where:
                    problems.append(f"{where}: same {label} as {earlier}")
            units.append(unit)
    if problems:
        raise DeviceListError(f"{len(problems)} duplicate(s): " + "; ".join(problems[:20]))
    entries = [Entry(u.name, u.identity, u.pem, u.fingerprint) for u in units]
    write_atomic(Path(out), render(entries).encode(), exclusive=not force)
    return units
