"""The one JSON shape of every report, built here so that the library (flash --serve replies, a
station service, a build pipeline calling imagetools) and the CLI's --json give the same
documents; the CLI only prints them. No imports: it sits below everything."""

from __future__ import annotations

from typing import Any

VERSION = 1


def envelope(command: str, ok: bool, items: list[Any], summary: dict[str, Any], **facts: Any) -> dict[str, Any]:
    """schema (versioned: a consumer can refuse a shape it does not know), ok (the command's exit
    status is 0), summary (counts or key facts), the command's own facts, items (one per
    partition, check, unit, key, card ...), in that order."""
    reserved = {"schema", "ok", "summary", "items"} & facts.keys()
    if reserved:
        raise TypeError(f"envelope facts may not be named {sorted(reserved)}")
    return {"schema": f"imagetools.{command}/{VERSION}", "ok": ok, "summary": summary, **facts, "items": items}
