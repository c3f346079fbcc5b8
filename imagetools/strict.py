"""Untrusted input: bounded reads of regular files and strict JSON with explicit limits.

Unit directories, OUT's state, station requests and key files come from outside the process and
may be hostile: a symlink to a root-only file, a FIFO that blocks, /dev/zero that never ends, a
JSON document nested deep enough to exhaust the interpreter's stack. Everything read from them
goes through here, so each rule is written once.
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any

from .errors import ImageToolsError, UsageError, from_oserror

MAX_DEPTH = 32          # unit.json and requests nest three levels; 32 is far beyond any of ours
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}


def open_regular(path: str | os.PathLike, what: str, error: type[ImageToolsError] = UsageError, *,
                 follow: bool = True) -> int:
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


def require_regular(st: os.stat_result, path: str | os.PathLike, what: str,
                    error: type[ImageToolsError] = UsageError) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "special")
        raise error(f"{what} {path} is {kind}, not a regular file")


def read_regular(path: str | os.PathLike, limit: int, what: str, error: type[ImageToolsError] = UsageError,
                 *, follow: bool = True) -> bytes:
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


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def loads(blob: bytes | str, what: str, error: type[ImageToolsError] = UsageError, *,
          max_depth: int = MAX_DEPTH) -> Any:
    """JSON that is exactly what it says: no key given twice, no NaN or Infinity, at most
    max_depth levels of nesting (measured before parsing, so no RecursionError can happen)."""
    raw = blob.encode() if isinstance(blob, str) else blob
    if nesting(raw) > max_depth:
        raise error(f"{what}: JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw, object_pairs_hook=_unique, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise error(f"{what}: not valid JSON ({exc})") from None


def nesting(raw: bytes) -> int:
    """How deep arrays and objects nest in raw JSON text (strings skipped)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        depth += 1 if m.group() in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [k for k, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"the key {next(k for k in names if names.count(k) > 1)!r} is given twice")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {str: "string", dict: "object", list: "array"}.get(type(value), "number")


def size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} bytes"
