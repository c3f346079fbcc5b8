"""The committed files under fixtures/ (see fixtures/README.md), read with no external tool."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from .disktables import write_image

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TABLES = FIXTURES / "tables"


def table_names() -> list[str]:
    return sorted(p.name.removesuffix(".chunks.json") for p in TABLES.glob("*.chunks.json"))


def table_image(name: str, path: Path) -> Path:
    """A sparse image of the fixture's full size: its table sectors in place, zeros elsewhere."""
    manifest = json.loads((TABLES / f"{name}.chunks.json").read_text())
    data = gzip.decompress((TABLES / f"{name}.chunks.gz").read_bytes())
    chunks, pos = {}, 0
    for offset, length in manifest["chunks"]:
        chunks[offset] = data[pos : pos + length]
        pos += length
    if pos != len(data):
        raise ValueError(f"{name}: the manifest describes {pos} bytes, the data holds {len(data)}")
    return write_image(path, manifest["size"], chunks)


def sfdisk_table(name: str) -> dict:
    """How the partitioning tool read the table when it was made (sfdisk --json's object)."""
    return json.loads((TABLES / f"{name}.sfdisk.json").read_text())["partitiontable"]
