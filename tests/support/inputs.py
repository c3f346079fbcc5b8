"""The input files of the commands, as operators and emit write them: device lists, preauth files,
public keys, a used card's random bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from imagetools import keys


def mac(number: int) -> str:
    """A locally administered MAC address, distinct for each number below 2**24."""
    return f"02:00:00:{number >> 16 & 255:02x}:{number >> 8 & 255:02x}:{number & 255:02x}"


def devices_csv(path: Path, count: int, start: int = 1, serials: bool = False) -> Path:
    """A device list of units u{start}..: a name and a MAC each, and with `serials` an sn column."""
    header, rows = "name,mac", [f"u{i},{mac(i)}" for i in range(start, start + count)]
    if serials:
        header, rows = header + ",sn", [f"{row},SN{i:04d}" for i, row in zip(range(start, start + count), rows)]
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows))
    return path


def random_file(path: Path, size: int) -> Path:
    """`size` random bytes, written a MiB at a time: a used card or a stranger's image."""
    with open(path, "wb") as f:
        for pos in range(0, size, 1 << 20):
            f.write(os.urandom(min(1 << 20, size - pos)))
    return path


def new_pem() -> str:
    """A fresh Ed25519 public key in PEM."""
    return keys.public_pem(keys.generate(keys.KeySpec("ed25519"))).decode()


def macs(*numbers: int, **extra: object) -> list[dict]:
    """Identities by MAC (02:00:00:00:00:NN), each with the `extra` attributes."""
    return [{"mac": mac(n), **extra} for n in numbers]


def write_preauth(path: Path, identities: list[dict], pems: list[str] | None = None) -> list[dict]:
    """A preauth.json as `imagetools emit` writes it, unit{i} per identity, a new key unless given."""
    pems = pems or [new_pem() for _ in identities]
    entries = [
        {"name": f"unit{i}", "identity_data": identity, "pubkey": pem}
        for i, (identity, pem) in enumerate(zip(identities, pems))
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=2))
    return entries
