"""Sizes as people read them, the same in every message and table."""

from __future__ import annotations

MiB = 1 << 20


def human_size(n: float) -> str:
    """'512 B', '16.0 MiB', '1.3 GiB': binary units, one decimal."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{int(n)} B" if unit == "B" else f"{value:.1f} {unit}"
