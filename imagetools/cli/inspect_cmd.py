"""`imagetools inspect IMAGE`: the partition table and the Mender role of each partition."""

from __future__ import annotations

from typing import Any

import click

from ..layout import OVERRIDE_REASON, PartInfo, open_layout
from ..mender import GPT_TYPE_NAMES, MBR_TYPE_NAMES
from ..units import human_size
from .base import echo, main, print_envelope, print_table, warn
from .bases import base_input
from .options import layout_options


@main.command()
@base_input("image")
@click.argument("image", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@layout_options
def inspect(image: str, as_json: bool, overrides: dict[str, int]) -> None:
    """Show IMAGE's partition table and which partition is boot, rootfs A/B, swap, data.

    Offsets and sizes are in bytes. Reads only the partition table and each partition's
    superblock; never writes.

    Full reference: docs/commands/inspect.md
    """
    layout = open_layout(image, overrides)
    for message in layout.warnings:
        warn(message)
    if as_json:
        doc = layout.to_dict()
        items = [
            {**part, "reason": _reason(part["role"], part["number"], part["reason"])} for part in doc.pop("partitions")
        ]
        summary = {
            "partitions": len(items),
            "roles": {p.role: p.number for p in layout.parts if p.role not in (None, "extra")},
        }
        print_envelope("inspect", True, items, summary, **doc)
        return
    img = layout.image
    echo(f"{img.path}: {img.table.upper()}, {img.sector_size}-byte sectors, {human_size(img.size)} ({img.size} bytes)")
    rows = [_row(p) for p in layout.parts]
    rows += [
        [
            c.number,
            c.start,
            human_size(c.size),
            _type_name(c.type),
            None,
            None,
            None,
            "container of the logical partitions",
        ]
        for c in img.extended
    ]
    rows.sort(key=lambda r: int(r[0]))
    print_table(["#", "START", "SIZE", "TYPE", "FS", "LABEL", "ROLE", "REASON"], rows)


def _row(p: PartInfo) -> list[Any]:
    part = p.partition
    kind = _type_name(part.type)
    if part.name:
        kind += f" '{part.name}'"
    elif part.logical:
        kind += ", logical"
    return [
        p.number,
        part.start,
        human_size(part.size),
        kind,
        p.fs.type,
        p.fs.label or None,
        p.role,
        _reason(p.role, p.number, p.reason),
    ]


def _reason(role: str | None, number: int, reason: str) -> str:
    """The library's neutral "chosen by the caller" as the flag that chose it."""
    if role and reason == OVERRIDE_REASON.format(role=role, number=number):
        return f"set by --{role}-partition {number}"
    return reason


def _type_name(ptype: str) -> str:
    if ptype in MBR_TYPE_NAMES:
        return f"{ptype} {MBR_TYPE_NAMES[ptype]}"
    return GPT_TYPE_NAMES.get(ptype, ptype)
