"""Reading the preauth side's JSON: identities as the Mender client sends them (every value a
string), and the JSON policy of preauth files, identity files and --identity."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..strict import Duplicates, JsonError, JsonNumber, JsonObject, Numbers, Policy, json_type, parse, read_regular

MAX_IDENTITY_BYTES = 1024 * 1024
# Numbers exactly as written (a refusal quotes them as the file has them); a key given twice is
# kept and reported with the entry it belongs to, with every other problem of that entry.
PREAUTH_JSON = Policy(duplicates=Duplicates.KEEP, numbers=Numbers.EXACT)


def load_identity(arg: str | None, default: Path | None = None) -> dict[str, str]:
    """A unit's identity from inline JSON, a JSON file, or `default` (identity.json beside an image).

    The file may hold the identity object itself or a preauth entry with 'identity_data'.
    """
    if arg is None and default is None:
        raise UsageError("no identity given: pass --identity JSON")
    if arg is not None and arg.lstrip().startswith("{"):
        text, source = arg, "--identity"
    else:
        given = Path(arg) if arg is not None else default
        assert given is not None  # refused above when neither is there
        path = given.absolute()
        hint = (
            ""
            if arg is not None
            else (" (the unit's identity.json is looked for beside the image); pass --identity JSON|FILE")
        )
        text, source = read_text(path, "identity file", MAX_IDENTITY_BYTES, hint), str(path)
    try:
        data = parse(text, PREAUTH_JSON)
    except JsonError as exc:
        raise UsageError(f"{source}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("identity_data"), dict):
        data = data["identity_data"]
    problems = list(identity_problems(data))
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems))
    return dict(data)


def identity_problems(identity: Any) -> Iterable[str]:
    """Why an identity would never match what a Mender client sends (all values are strings)."""
    if not isinstance(identity, dict) or not identity:
        yield "'identity_data' must be a non-empty object of attribute names to strings"
        return
    for attr in repeated(identity):
        yield f"identity attribute {attr!r} appears more than once"
    for attr, value in identity.items():
        if not isinstance(value, str):
            fix = f": write {json.dumps(_literal(value))}" if isinstance(value, (JsonNumber, bool)) else ""
            yield (
                f"identity attribute {attr!r} is {json_type(value, article=True)} ({_literal(value)}); the "
                f"Mender client sends every identity value as a string, so it would never match{fix}"
            )
        elif not _is_unicode(attr) or not _is_unicode(value):
            yield f"identity attribute {attr!r} is not valid Unicode text (a lone surrogate escape)"


def repeated(obj: Any) -> tuple[str, ...]:
    """The keys an object parsed under PREAUTH_JSON had more than once."""
    return obj.repeated if isinstance(obj, JsonObject) else ()


def read_text(path: str | Path, what: str, limit: int, hint: str = "") -> str:
    """A UTF-8 text file: a regular file of at most ``limit`` bytes (see strict.read_regular);
    `hint` is added to the message when it cannot be read."""
    try:
        data = read_regular(path, limit, what)
    except UsageError as exc:
        raise UsageError(f"{exc}{hint}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


def _literal(value: Any) -> str:
    """A JSON value for a message, numbers as the file wrote them (inside lists and objects too)."""
    if isinstance(value, JsonNumber):
        return value.text
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
