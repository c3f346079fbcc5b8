"""`flash --serve`: one JSON request per line on stdin, one JSON reply per request (and progress
lines while a card is written). Requests come from another program: each is bounded, parsed
strictly, and a bad one is refused without ending the station."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

from .. import strict
from ..errors import UsageError

MAX_REQUEST = 64 << 10  # one request line
MAX_CARDS = 16


@dataclass(frozen=True)
class Card:
    """One target and the one unit (or key file) that goes onto it."""

    target: str
    unit: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Request:
    """The cards of one request (a multi-slot writer sends several, each with its own unit)."""

    cards: tuple[Card, ...]
    again: bool = False


def parse_request(line: bytes) -> Request:
    """{"cards": [{"target": T, "unit": U} or {"target": T, "key": K}, ...], "again": bool}, or the
    one-card form {"targets": [T], "unit": U} / {"targets": [T], "key": K}. Anything else is a
    UsageError: one unit for several targets, a key given twice, over MAX_REQUEST bytes."""
    if len(line) > MAX_REQUEST:
        raise UsageError(f"request over {MAX_REQUEST} bytes")
    data = strict.loads(line, "request", max_depth=4)
    if not isinstance(data, dict):
        raise UsageError('a request is a JSON object: {"cards": [{"target": ..., "unit": ...}]}')
    again = data.get("again", False)
    if not isinstance(again, bool):
        raise UsageError('"again" must be true or false')
    if "cards" in data:
        _only(data, {"cards", "again"})
        cards = data["cards"]
        if not (isinstance(cards, list) and 0 < len(cards) <= MAX_CARDS):
            raise UsageError(f'"cards" must be a list of 1 to {MAX_CARDS} cards')
        return Request(tuple(_card(c) for c in cards), again)
    _only(data, {"targets", "unit", "key", "again"})
    targets = data.get("targets")
    if not (isinstance(targets, list) and targets):
        raise UsageError('give "cards" (or "targets" with one target and its "unit" or "key")')
    if len(targets) > 1:
        raise UsageError('one unit goes onto one card: give each target its own unit in "cards"')
    return Request((_card({"target": targets[0], **{k: data[k] for k in ("unit", "key") if k in data}}),), again)


def _card(item: Any) -> Card:
    if not isinstance(item, dict):
        raise UsageError('each card is an object {"target": ..., "unit": ...} or {"target": ..., "key": ...}')
    _only(item, {"target", "unit", "key"})
    target, unit, key = item.get("target"), item.get("unit"), item.get("key")
    if not _is_path(target):
        raise UsageError('"target" must be a path')
    if (unit is None) == (key is None) or not _is_path(unit if key is None else key):
        raise UsageError('give each card exactly one of "unit" (a unit directory) and "key" (a key file)')
    return Card(target, unit, key)


def _only(data: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise UsageError(f"unknown request field {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _is_path(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= 4096 and "\0" not in value
