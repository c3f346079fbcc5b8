"""mender.conf as the Mender client reads it: settings by dotted name, merged and typed as in Go.

The client is Go's encoding/json: names are matched without regard to case, its second file is
loaded over the first (objects merged field by field, anything else replaced, null ignored), and
a value of the wrong type makes it refuse the whole file. Numbers are kept exactly as written
(strict.JsonNumber), so rewriting mender.conf changes none of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .. import mender as m
from ..errors import FilesystemError
from ..strict import Duplicates, JsonError, JsonNumber, Numbers, Policy, json_type, parse

INT_LIMIT = 2**31 - 1  # Go ints on 32-bit ARM devices
MAX_CERT_FILE = 1 << 20  # a certificate chain (given to -c, or read from an image)
# Strict JSON as the client needs it: a name given twice (also in another case: which one the
# client takes is unclear) is refused; numbers stay exact.
CONF_JSON = Policy(duplicates=Duplicates.REFUSE_ANY_CASE, numbers=Numbers.EXACT, max_depth=32)


def parse_json(text: str) -> Any:
    """Strict JSON under CONF_JSON; ValueError (strict.JsonError) saying what is wrong."""
    return parse(text, CONF_JSON)


def conf_type(value: Any) -> str:
    """The type name the client's configuration uses: 'integer' for whole numbers."""
    if isinstance(value, JsonNumber) and value.is_integer:
        return "integer"
    return json_type(value)


def parse_conf(data: bytes, where: str) -> dict[str, Any]:
    """A mender.conf's settings, or FilesystemError: the client would not start with this file."""
    try:
        value = parse_json(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise FilesystemError(f"{where} is malformed: not UTF-8 text (byte {exc.start})") from None
    except JsonError as exc:
        raise FilesystemError(f"{where} is malformed: {exc}; the client would not start with it") from None
    if not isinstance(value, dict):
        raise FilesystemError(f"{where} is malformed: {conf_type(value)}, not a JSON object")
    return value


def parse_fields(data: bytes, name: str, where: str) -> str | None:
    """The value of `name=` in artifact_info or device_type, read as the client reads it
    (lines of NAME=VALUE, '#' comments, surrounding whitespace dropped, the name at most once)."""
    found = None
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise FilesystemError(f"{where}: line {number} is not NAME=VALUE: the client refuses the file")
        if key == name:
            if found is not None:
                raise FilesystemError(f"{where}: {name} is given twice: the client refuses the file")
            found = value.strip()
    return found


def dump_conf(settings: dict[str, Any]) -> bytes:
    """mender.conf as the client writes it (4-space indent), names in their order, ASCII only."""
    return (_dump(settings, 0) + "\n").encode("ascii")


def _dump(value: Any, level: int) -> str:
    pad, end = "    " * (level + 1), "    " * level
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {_dump(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{end}}}"
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join(pad + _dump(v, level + 1) for v in value) + f"\n{end}]"
    if isinstance(value, JsonNumber):
        return value.text
    return json.dumps(value)  # str, bool, None, {} and []


def plain(value: Any) -> Any:
    """A parsed value with plain Python numbers, for to_dict()."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.plain() if isinstance(value, JsonNumber) else value


# --- settings by dotted name, as the client matches them -----------------------------------------
def find_key(obj: dict[str, Any], name: str) -> str | None:
    """The name under which `obj` holds `name` (the same spelling first, then any case)."""
    if name in obj:
        return name
    return next((k for k in obj if k.casefold() == name.casefold()), None)


def lookup(settings: dict[str, Any], dotted: str) -> Any:
    """The value at 'Security.AuthPrivateKey', or None when it is absent (or null)."""
    value: Any = settings
    for name in dotted.split("."):
        key = find_key(value, name) if isinstance(value, dict) else None
        if key is None:
            return None
        value = value[key]
    return value


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` loaded onto `base` as the client loads its second file onto the first."""
    out = dict(base)
    for name, value in over.items():
        key = find_key(out, name)
        if value is None and key is not None:
            continue  # Go leaves a field as it was for null
        if key is not None and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = merge(out[key], value)
            continue
        if key is not None:
            del out[key]
        out[name] = value
    return out


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'Security.AuthPrivateKey': ..., 'ServerURL': ...}: objects opened, lists kept whole."""
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


def put(obj: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """Set a dotted setting, creating the objects on the way (an existing name keeps its place)."""
    names = dotted.split(".")
    for i, name in enumerate(names[:-1]):
        key = find_key(obj, name)
        if key is None or obj[key] is None:
            key = _rename(obj, key, name, {})
        elif not isinstance(obj[key], dict):
            raise FilesystemError(
                f"{where}: {'.'.join(names[: i + 1])} is {conf_type(obj[key])}, not an "
                f"object, so {dotted} cannot be set: replace it with --set or --unset it"
            )
        obj = obj[key]
    _rename(obj, find_key(obj, names[-1]), names[-1], value)


def _rename(obj: dict[str, Any], old: str | None, new: str, value: Any) -> str:
    """Set obj[new] = value in place of obj[old] (same position, our spelling)."""
    if old is None or old == new:
        obj[new] = value
        return new
    items = [((new, value) if k == old else (k, v)) for k, v in obj.items()]
    obj.clear()
    obj.update(items)
    return new


def delete(obj: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        key = find_key(obj, name)
        if key is None or not isinstance(obj[key], dict):
            return
        obj = obj[key]
    key = find_key(obj, leaf)
    if key is not None:
        del obj[key]


def known(dotted: str) -> str | None:
    """The client's spelling of a setting, if it is one the client reads."""
    return next((k for k in m.CONF_TYPES if k.casefold() == dotted.casefold()), None)


def type_problems(dotted: str, value: Any) -> Iterator[str]:
    """Why the client could not load `value` as `dotted` (it would refuse the whole file)."""
    want = m.CONF_TYPES.get(dotted)
    if want is None or value is None:
        return
    got = conf_type(value)
    if want == "integer" and got == "integer" and (len(value.text) > 11 or abs(int(value.text)) > INT_LIMIT):
        yield f"{dotted} is {value.text[:40]}, more than a 32-bit device's Go int holds ({INT_LIMIT})"
    elif got != want:
        yield f"{dotted} is {got}, but the Mender client reads it as {want}"
    if isinstance(value, dict):
        for name, child in value.items():
            spelled = known(f"{dotted}.{name}")
            if spelled is not None:
                yield from type_problems(spelled, child)


def conf_problems(settings: dict[str, Any]) -> list[str]:
    """Why the client would not load these settings (wrong types, Servers beside ServerURL)."""
    problems: list[str] = []
    for name, value in settings.items():
        spelled = known(name)
        if spelled is not None:
            problems += type_problems(spelled, value)
    if lookup(settings, m.SERVER_URL) and lookup(settings, m.SERVERS) is not None:
        problems.append(
            f"both {m.SERVERS} and {m.SERVER_URL} are set, and the client refuses to "
            f"start with both (--unset {m.SERVERS}, or --unset {m.SERVER_URL})"
        )
    return problems
