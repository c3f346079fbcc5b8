"""Untrusted input: bounded reads of regular files and strict JSON with explicit policies.

Unit directories, OUT's state, station requests, key files, device lists, preauth files, token
files, mender.conf from an image and the Mender Server's answers come from outside the process and
may be hostile: a symlink to a root-only file, a FIFO that blocks, /dev/zero that never ends, a
JSON document nested deep enough to exhaust the interpreter's stack, a key given twice. Everything
read from them goes through here, so each rule is written once; what differs between readers
(duplicate names, exact numbers, depth) is a `Policy` each names explicitly.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
import re
import stat
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .errors import ImageToolsError, UsageError, from_oserror

MAX_DEPTH = 32  # unit.json and requests nest three levels; 32 is far beyond any of ours
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def open_regular(
    path: str | os.PathLike, what: str, error: type[ImageToolsError] = UsageError, *, follow: bool = True
) -> int:
    """A read-only fd of a regular file, else `error` naming it. Without `follow`, a symlink is
    refused (O_NOFOLLOW): a unit directory must not make us read a file elsewhere on the host.
    Opened non-blocking and checked once open, so a FIFO or a swapped path never blocks."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        if not follow and os.path.islink(path):
            raise error(f"{what} {path} is a symbolic link; give the file itself")
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except OSError as exc:
        raise from_oserror(exc, f"cannot read {what} {path}", error) from None
    try:
        require_regular(os.fstat(fd), path, what, error)
    except BaseException:
        os.close(fd)
        raise
    return fd


def require_regular(
    st: os.stat_result, path: str | os.PathLike, what: str, error: type[ImageToolsError] = UsageError
) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "special")
        raise error(f"{what} {path} is {kind}, not a regular file")


def read_regular(
    path: str | os.PathLike, limit: int, what: str, error: type[ImageToolsError] = UsageError, *, follow: bool = True
) -> bytes:
    """At most `limit` bytes of a regular file, else `error` naming it (see open_regular)."""
    fd = open_regular(path, what, error, follow=follow)
    try:
        size = os.fstat(fd).st_size
        data = b"" if size > limit else _read_at_most(fd, limit + 1)
    except OSError as exc:
        raise from_oserror(exc, f"cannot read {what} {path}", error) from None
    finally:
        os.close(fd)
    if size > limit or len(data) > limit:
        raise error(f"{what} {path} is larger than {size_text(limit)}, the limit for a {what}")
    return data


def _read_at_most(fd: int, n: int) -> bytes:
    """Up to n bytes, in chunks: os.read(fd, n) allocates n bytes however small the file is."""
    chunks: list[bytes] = []
    while n > 0:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


# --- JSON ------------------------------------------------------------------------------------------
class Duplicates(StrEnum):
    """What a policy does with a name given twice in one object (json.loads keeps the last silently)."""

    REFUSE = "refuse"  # an error
    REFUSE_ANY_CASE = "refuse-any-case"  # an error also in another case (Go matches names so)
    KEEP = "keep"  # parsed into a JsonObject listing them, for a reader that
    # reports every problem of an entry at once


class Numbers(StrEnum):
    PLAIN = "plain"  # int and float
    EXACT = "exact"  # JsonNumber: the text as written (never through a double)


@dataclass(frozen=True)
class Policy:
    """How a reader parses JSON. NaN and Infinity are refused by every policy: they are not JSON,
    and a reader that passes them on (Python's json) hands a float no other reader accepts."""

    duplicates: Duplicates = Duplicates.REFUSE
    numbers: Numbers = Numbers.PLAIN
    max_depth: int = MAX_DEPTH  # measured before parsing, so no RecursionError can happen


STRICT = Policy()


@dataclass(frozen=True)
class JsonNumber:
    """A JSON number kept as its text: a file rewritten from it changes none of its numbers (a
    reader going through doubles turns 12345678901234567891 into 12345678901234567000)."""

    text: str

    @property
    def is_integer(self) -> bool:
        return _INTEGER.fullmatch(self.text) is not None

    @property
    def exact(self) -> bool:
        """Whether a reader that goes through doubles (mender-artifact, most JSON readers) reads
        back this number: 0.1 and 1800 survive, 12345678901234567891 and 1e400 do not."""
        from decimal import Decimal  # not at the top: readers of small documents need no Decimal

        if not _NUMBER.fullmatch(self.text):
            return False
        as_float = float(self.text)
        return math.isfinite(as_float) and Decimal(repr(as_float)) == Decimal(self.text)

    def plain(self) -> int | float | str:
        """The number for a JSON report: an int, a float when exact, else its text."""
        if len(self.text) > 40:  # int() of a huge one is slow or refused
            return self.text
        if self.is_integer:
            return int(self.text)
        return float(self.text) if self.exact else self.text


class JsonObject(dict):
    """An object parsed under Duplicates.KEEP: `repeated` names the keys given more than once."""

    repeated: tuple[str, ...] = ()


class JsonError(ValueError):
    """Why a text is not JSON a policy accepts. str() is the whole message; `reason` is it
    without the position, `line` where the parser found it (None when it does not say)."""

    def __init__(self, reason: str, line: int | None = None, column: int | None = None):
        where = "" if line is None else f" at line {line} column {column}"
        super().__init__(f"not JSON ({reason}{where})" if line is not None else reason)
        self.reason, self.line = reason, line


def parse(text: str | bytes, policy: Policy = STRICT) -> Any:
    """`text` parsed under `policy`; JsonError saying what is wrong."""
    check_depth(text, policy)
    return decode_at(text if isinstance(text, str) else _text(text), 0, policy, whole=True)[0]


def decode_at(text: str, pos: int, policy: Policy, *, whole: bool = False) -> tuple[Any, int]:
    """The JSON value starting at `pos` and where it ends (whole: the text must hold nothing
    else). The caller has checked the depth (check_depth). JsonError on anything else."""
    try:
        if whole:
            return _decoder(policy).decode(text), len(text)
        return _decoder(policy).raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise JsonError(exc.msg, exc.lineno, exc.colno) from None
    except RecursionError:
        raise _too_deep(policy) from None


def check_depth(text: str | bytes, policy: Policy) -> None:
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if nesting(raw) > policy.max_depth:
        raise _too_deep(policy)


def _too_deep(policy: Policy) -> JsonError:
    return JsonError(f"nested too deeply (more than {policy.max_depth} levels)")


def _text(raw: bytes) -> str:
    """Bytes as json.loads reads them (UTF-8, -16 or -32, found from the first bytes)."""
    try:
        return raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError as exc:
        raise JsonError(f"not UTF-8 text (byte {exc.start})") from None


@functools.cache
def _decoder(policy: Policy) -> json.JSONDecoder:
    exact = policy.numbers == Numbers.EXACT
    return json.JSONDecoder(
        object_pairs_hook=_OBJECT_HOOKS[policy.duplicates],
        parse_int=JsonNumber if exact else None,
        parse_float=JsonNumber if exact else None,
        parse_constant=_no_constant,
    )


def nesting(raw: bytes) -> int:
    """How deep arrays and objects nest in raw JSON text (strings skipped)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        depth += 1 if m.group() in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise JsonError(f"{name!r} appears twice in one object")
        seen.add(name)
    return dict(pairs)


def _unique_any_case(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, str] = {}
    for name, _ in pairs:
        other = seen.get(name.casefold())
        if other is not None:
            also = "" if other == name else f" (as {other!r} and {name!r}: names are matched without regard to case)"
            raise JsonError(f"{name!r} appears twice in one object{also}")
        seen[name.casefold()] = name
    return dict(pairs)


def _keeping(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeats: dict[str, None] = {}
        for name, _ in pairs:
            if name in seen:
                repeats[name] = None
            seen.add(name)
        obj.repeated = tuple(repeats)
    return obj


_OBJECT_HOOKS = {Duplicates.REFUSE: _unique, Duplicates.REFUSE_ANY_CASE: _unique_any_case, Duplicates.KEEP: _keeping}
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def _no_constant(name: str) -> Any:
    raise JsonError(f"{name} is not a JSON value")


def loads(
    blob: bytes | str, what: str, error: type[ImageToolsError] = UsageError, *, max_depth: int = MAX_DEPTH
) -> Any:
    """A JSON document under the STRICT policy (at most max_depth levels), else `error` naming `what`."""
    try:
        return parse(blob, Policy(max_depth=max_depth))
    except JsonError as exc:
        raise error(f"{what}: {exc}") from None


_ARTICLES = {
    "null": "null",
    "boolean": "a boolean",
    "string": "a string",
    "object": "an object",
    "list": "a list",
    "number": "a number",
}


def json_type(value: Any, *, article: bool = False) -> str:
    """The JSON name of a parsed value's type, for messages: 'string', or 'a string' with article
    (arrays are 'list', as Mender's configuration names them)."""
    if value is None:
        name = "null"
    elif isinstance(value, bool):
        name = "boolean"
    elif isinstance(value, (JsonNumber, numbers.Number)):
        name = "number"
    elif isinstance(value, (list, tuple)):
        name = "list"
    elif isinstance(value, dict):
        name = "object"
    elif isinstance(value, str):
        name = "string"
    else:
        name = type(value).__name__
    return _ARTICLES.get(name, name) if article else name


def size_text(n: int) -> str:
    """A size limit for messages: '64 KiB', '1.5 MiB', '300 bytes'."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"
