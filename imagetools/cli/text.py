"""Making text from images safe to print: names, labels and messages that quote them.

An image is untrusted input: a file name, filesystem label or GPT partition name may hold ESC
sequences, \\r, \\b, newlines, bidi overrides (U+202E) or bytes that are not UTF-8 (decoded with
surrogateescape, so they arrive as U+DC80..U+DCFF). Printed raw, they rewrite the terminal, hide
or reorder text, or split one record into two lines.

Policy: every human-readable output (tables, the `ls` listing, the `imagetools: warning/error`
lines) is escaped **always**, not only on a terminal: a listing saved to a file or a log is read
on a terminal later, and a name with a newline would break line-oriented readers either way.
Scripts that need the exact names use --json (see `for_json`). `cat` and `cp IMAGE:... -` write
file content, not names, and stay byte-exact.

Escapes (the characters Python's repr() also escapes, i.e. all that are not str.isprintable():
controls Cc, format/bidi characters Cf, U+2028/U+2029, surrogates, other separators):
  tab, line feed, carriage return        \\t \\n \\r
  other U+0000..U+007F (C0, DEL)         \\x1b
  U+DC80..U+DCFF (an undecodable byte)   \\xff        the original byte
  other code points up to U+FFFF         \\u202e      C1 too (\\u0085), never mistaken for a byte
  beyond U+FFFF                          \\U000e0001
  a backslash                            \\\\          in names only; see `escape`
Each escape stands for exactly one character, so escaped names are unambiguous and reversible.
"""

from __future__ import annotations

import base64
from typing import Any

_BACKSLASH = "\\"
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(text: str, *, backslash: bool = True) -> str:
    """`text` with every non-printable character shown as an escape (see the module docstring).

    backslash=True (names, table cells) also doubles backslashes, which makes the result
    injective. Messages pass backslash=False: many quote values with repr(), whose backslashes
    must not double; what matters there is that no control character gets through and the
    message stays one line."""
    if text.isprintable() and (not backslash or _BACKSLASH not in text):
        return text
    return "".join(_escape_char(c, backslash) for c in text)


def _escape_char(c: str, backslash: bool) -> str:
    if c == _BACKSLASH:
        return c + c if backslash else c
    if c.isprintable():
        return c
    if c in _SHORT:
        return _SHORT[c]
    cp = ord(c)
    if cp < 0x80:
        return f"\\x{cp:02x}"
    if 0xDC80 <= cp <= 0xDCFF:
        return f"\\x{cp - 0xDC00:02x}"
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"


def for_json(data: Any) -> Any:
    """`data` with every string made valid Unicode, for a JSON document that is valid UTF-8.

    A string that is valid Unicode is kept exactly (JSON escapes its control characters). A
    string holding lone surrogates (a name that is not UTF-8 in the image) is replaced by its
    escaped form, as `ls` prints it; when it is a dict value under KEY, KEY_b64 is added with the
    exact bytes in base64. So: KEY_b64 present -> it is the exact name; absent -> KEY is."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            key = _valid(key) if isinstance(key, str) else key
            out[key] = for_json(value)
            raw = _raw_bytes(value) if isinstance(value, str) else None
            if raw is not None:
                out[f"{key}_b64"] = base64.b64encode(raw).decode("ascii")
        return out
    if isinstance(data, (list, tuple)):
        return [for_json(item) for item in data]
    return _valid(data) if isinstance(data, str) else data


def _valid(text: str) -> str:
    return escape(text) if _has_surrogates(text) else text


def _has_surrogates(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _raw_bytes(text: str) -> bytes | None:
    """The bytes behind a surrogateescape-decoded string that was not UTF-8; None if the string
    is valid Unicode (nothing to add) or holds surrogates no byte decodes to."""
    if not _has_surrogates(text):
        return None
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None
