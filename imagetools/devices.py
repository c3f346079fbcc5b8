"""The device list: one row per unit to emit, validated completely before any image is written.

A factory operator fixes a device list once, so every bad row is reported in one error, each with
its line number. Identity values are always strings: the Mender client sends strings, and the
server matches identities by value *and* type. Nothing in the list is trusted: it is read only if it
is a regular file of sensible size, and anything ambiguous (a column or key spelled twice, a JSON
key written twice) is refused rather than resolved silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from . import keys, strict
from .errors import DeviceListError, ImageToolsError
from .mender import canonical_identity, loose_identity
from .strict import Duplicates, JsonNumber, JsonObject, Numbers, Policy, read_regular

RESERVED_COLUMNS = ("name", "key")
# JSON objects may also hold the identity in an `identity_data` object (preauth.json's form).
JSON_KEYS = (*RESERVED_COLUMNS, "identity_data")
# Far more than a batch (about 1.5 million CSV rows); parsing a list this size takes a few GB.
MAX_DEVICE_LIST = 64 * 1024 * 1024
# Files emit writes next to the unit directories; a unit may not be named like them.
RESERVED_NAMES = frozenset({"preauth.json", "preauth.csv", "report.json"})
MAX_NAME = 64
# A key given twice is kept and reported with its line; numbers (identity values) stay as written:
# 1.10 stays "1.10" and 1e400 does not become "inf".
DEVICE_JSON = Policy(duplicates=Duplicates.KEEP, numbers=Numbers.EXACT)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# (line, message) for every bad row; line 0 for the list as a whole. Sorted by line at the end.
Problems = list[tuple[int, str]]


class Row(NamedTuple):
    """One row of the device list as read, before the cross-row checks."""

    line: int
    name: str  # "" when the row has none (derived later)
    key: str  # "" when the row lists no key file
    identity: dict[str, str]
    broken: bool = False  # the row has problems of its own: checked further, never emitted


@dataclass(frozen=True)
class Device:
    """One unit: output name, identity_data (string values), optional existing private key."""

    name: str
    identity: dict[str, str]
    line: int
    key_path: Path | None = None
    key_fingerprint: str | None = field(default=None, compare=False)


def load_devices(path: str | Path, *, allow_similar: bool = False) -> list[Device]:
    """Parse and validate a device list: `.json` as JSON, anything else as CSV. Identities that
    differ only in case or separators are refused unless `allow_similar` (see _similar)."""
    path = Path(path).absolute()  # messages name the list by its full path
    raw = read_regular(path, MAX_DEVICE_LIST, "device list", DeviceListError)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DeviceListError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    base_dir = path.resolve().parent
    if path.suffix.lower() == ".json":
        return parse_json(text, str(path), base_dir, allow_similar=allow_similar)
    return parse_csv(text, str(path), base_dir, allow_similar=allow_similar)


def parse_csv(
    text: str, source: str = "devices.csv", base_dir: Path | None = None, *, allow_similar: bool = False
) -> list[Device]:
    """CSV with a header row: identity columns, plus optional `name` and `key` columns."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    problems: Problems = []
    rows: list[tuple[int, dict[str, str]]] = []
    header: list[str] | None = None
    line = 1
    try:
        for record in reader:
            start, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = _check_header(record, start, problems)
                if header is None:
                    break
                continue
            if len(record) != len(header):
                problems.append((start, f"{len(record)} fields, the header has {len(header)}"))
                continue
            rows.append((start, dict(zip(header, (cell.strip() for cell in record)))))
    except csv.Error as exc:
        problems.append((reader.line_num, f"bad CSV: {exc}"))
    if header is None and not problems:
        problems.append((1, "empty file; expected a header row such as 'mac' or 'name,mac,key'"))
    entries = [_split_row(values, start, problems) for start, values in rows]
    return _finish(entries, problems, source, base_dir, allow_similar)


def parse_json(
    text: str, source: str = "devices.json", base_dir: Path | None = None, *, allow_similar: bool = False
) -> list[Device]:
    """A JSON list of objects: either {"name"?, "key"?, "identity_data": {...}} or flat
    {"name"?, "key"?, attr: value, ...}; `name`, `key` and `identity_data` in any ASCII case.
    Numbers become strings as written (1.10 stays "1.10"); other value types are refused."""
    problems: Problems = []
    entries = [_json_entry(item, start, problems) for start, item in _json_items(text, problems)]
    return _finish(entries, problems, source, base_dir, allow_similar)


def derive_name(identity: dict[str, str]) -> str:
    """A filesystem-safe name from the identity values (in column order)."""
    raw = "_".join(identity.values())
    name = re.sub(r"[^A-Za-z0-9._]+", "-", raw).strip(".-_")
    name = re.sub(r"-{2,}", "-", name)
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 9].rstrip(".-_") + "-" + identity_digest(identity)[:8]
    return name or "unit-" + identity_digest(identity)[:8]


def identity_digest(identity: dict[str, str]) -> str:
    """Order-independent digest of an identity (the server sorts identity keys too)."""
    return hashlib.sha256(canonical_identity(identity).encode()).hexdigest()


def check_name(name: str) -> str | None:
    """Why `name` cannot be a unit directory name, or None if it can."""
    if not _SAFE_NAME.fullmatch(name):
        return "use letters, digits, '.', '_' and '-', starting with a letter or digit"
    if len(name) > MAX_NAME:
        return f"longer than {MAX_NAME} characters"
    if name.lower() in RESERVED_NAMES:
        return "reserved for a batch file in the output directory"
    return None


def _check_header(record: list[str], line: int, problems: Problems) -> list[str] | None:
    """The header with `name` and `key` lowercased (they match in any ASCII case, like 'Name')."""
    spelled = [cell.strip() for cell in record]
    header = [_meta_key(col, RESERVED_COLUMNS) or col for col in spelled]
    before = len(problems)
    for i, col in enumerate(header):
        first = header.index(col)
        if not col:
            problems.append((line, f"column {i + 1} of the header has no name"))
        elif first != i and spelled[first] != spelled[i]:
            problems.append((line, f"columns {spelled[first]!r} and {spelled[i]!r} both mean {col!r}; keep one"))
        elif first != i:
            problems.append((line, f"column {col!r} appears twice in the header"))
    if not [c for c in header if c not in RESERVED_COLUMNS]:
        problems.append((line, f"no identity column in the header (only {', '.join(spelled)})"))
    return None if len(problems) > before else header


def _meta_key(key: str, names: tuple[str, ...]) -> str | None:
    """Which of `names` `key` spells in any ASCII case ('Name', 'KEY'), or None."""
    lowered = key.lower()
    return lowered if key.isascii() and lowered in names else None


def _split_row(values: dict[str, str], line: int, problems: Problems) -> Row:
    """A row with an empty identity value is broken, but its name and key are still checked, so
    one run reports all of the row's problems."""
    identity = {k: v for k, v in values.items() if k not in RESERVED_COLUMNS}
    empty = [k for k, v in identity.items() if not v]
    if empty:
        problems.append((line, f"empty identity value for {', '.join(map(repr, empty))}"))
    return Row(line, values.get("name", ""), values.get("key", ""), identity, broken=bool(empty))


class _RowProblem(Exception):
    """Why one JSON device object is unusable (reported with its line)."""


def _json_items(text: str, problems: Problems):
    """Top-level list elements with the line each starts on (json has no positions otherwise)."""
    try:
        strict.check_depth(text, DEVICE_JSON)
    except strict.JsonError as exc:
        problems.append((0, f"bad JSON: {exc}"))
        return
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        problems.append((_line_of(text, pos), "expected a JSON list of device objects"))
        return
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while pos < len(text):
        try:
            item, end = strict.decode_at(text, pos, DEVICE_JSON)
        except strict.JsonError as exc:
            problems.append((exc.line or _line_of(text, pos), f"bad JSON: {exc.reason}"))
            return
        yield _line_of(text, pos), item
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if _skip_ws(text, pos + 1) < len(text):
                problems.append((_line_of(text, pos + 1), "unexpected text after the list"))
            return
        if pos >= len(text):
            break
        problems.append((_line_of(text, pos), "expected ',' or ']' in the device list"))
        return
    problems.append((_line_of(text, pos), "the device list is not closed with ']'"))


def _json_entry(item: object, line: int, problems: Problems) -> Row | None:
    """The row, broken when it has problems of its own (all of them reported); None when its
    shape is unusable (not an object, keys spelled twice)."""
    if not isinstance(item, JsonObject):
        problems.append((line, f"expected an object, got {strict.json_type(item, article=True)}"))
        return None
    try:
        meta, attrs, found = _json_fields(item)
    except _RowProblem as exc:
        problems.append((line, f"{exc}"))
        return None
    identity, bad = _json_identity(attrs)
    found += bad
    problems.extend((line, message) for message in found)
    return Row(line, meta["name"], meta["key"], identity, broken=bool(found))


def _json_fields(item: JsonObject) -> tuple[dict[str, str], dict[str, object], list[str]]:
    """`name` and `key` (stripped strings, "" when absent), the identity attributes (the
    `identity_data` object, or else every other key of the flat object) and the problems with
    `name` and `key`. Raises _RowProblem when the object's keys make no sense."""
    _refuse_repeated(item)
    found: dict[str, str] = {}
    for key in item:
        canon = _meta_key(key.strip(), JSON_KEYS)
        if canon in found:
            raise _RowProblem(f"keys {found[canon]!r} and {key!r} both mean {canon!r}; keep one")
        if canon is not None:
            found[canon] = key
    meta: dict[str, str] = {}
    bad: list[str] = []
    for col in RESERVED_COLUMNS:
        value = item[found[col]] if col in found else ""
        if not isinstance(value, str):
            bad.append(f"{col!r} must be a string")
            value = ""
        meta[col] = value.strip()
    rest = {key: value for key, value in item.items() if key not in found.values()}
    if "identity_data" not in found:
        return meta, rest, bad
    attrs = item[found["identity_data"]]
    if not isinstance(attrs, JsonObject) or rest:
        extra = ", ".join(map(repr, rest))
        raise _RowProblem(
            "'identity_data' must be an object"
            + (f" and the only other keys 'name'/'key' (also got {extra})" if extra else "")
        )
    _refuse_repeated(attrs)
    return meta, attrs, bad


def _json_identity(attrs: dict[str, object]) -> tuple[dict[str, str], list[str]]:
    """Identity values as strings (numbers as written), and the problems of every attribute;
    attribute names are stripped, so two keys that differ only in spaces would be one attribute
    and are refused."""
    identity: dict[str, str] = {}
    bad: list[str] = []
    for key, value in attrs.items():
        if isinstance(value, JsonNumber):
            value = value.text
        if not isinstance(value, str):
            bad.append(f"identity value for {key!r} must be a string or number")
            continue
        name, text = key.strip(), value.strip()
        if not name or not text:
            bad.append(f"empty identity {'value for ' + repr(key) if name else 'attribute name'}")
        elif name in identity:
            bad.append(f"identity attribute {name!r} is given twice (the keys differ only in spaces)")
        else:
            identity[name] = text
    if not attrs:
        bad.append("empty identity (no attributes)")
    return identity, bad


def _refuse_repeated(obj: JsonObject) -> None:
    if obj.repeated:
        raise _RowProblem(f"key {obj.repeated[0]!r} appears twice in the object; JSON would keep only the last")


def _finish(
    entries: Sequence[Row | None], problems: Problems, source: str, base_dir: Path | None, allow_similar: bool = False
) -> list[Device]:
    """Cross-row checks (duplicates, names, keys), then either the devices or one error. Rows are
    told apart by their index in `good`, not by line: a compact JSON list has them all on line 1.
    Broken rows take part in the name and key checks (all of a row's problems in one run), not in
    the identity checks (their identity is incomplete)."""
    good = [row for row in entries if row is not None]
    _check_identities([row for row in good if not row.broken], problems, allow_similar)
    names = _assign_names(good, problems)
    key_info = _check_keys(good, problems, base_dir)
    if not entries and not problems:
        problems.append((0, "no devices listed"))
    if problems:
        problems.sort(key=lambda problem: problem[0])  # stable: a row's problems keep their order
        text = [f"line {line}: {message}" if line else message for line, message in problems]
        shown = text[:50] + ([f"... and {len(text) - 50} more"] if len(text) > 50 else [])
        raise DeviceListError(f"{source}: {len(problems)} problem(s): " + "; ".join(shown))
    return [
        Device(
            name=names[i],
            identity=row.identity,
            line=row.line,
            key_path=key_info.get(i, (None, None))[0],
            key_fingerprint=key_info.get(i, (None, None))[1],
        )
        for i, row in enumerate(good)
    ]


def _check_identities(rows: list[Row], problems: Problems, allow_similar: bool) -> None:
    """Identities must be unique, and (unless allow_similar) not the same up to case and
    separators: `02:00:00:00:00:03` and `02-00-00-00-00-03` are one device typed twice, and
    two units for it would leave one of them pending forever."""
    by_identity: dict[str, int] = {}
    by_loose: dict[str, tuple[int, str]] = {}
    for row in rows:
        canon = canonical_identity(row.identity)
        if canon in by_identity:
            problems.append((row.line, f"duplicate identity {canon} (first on line {by_identity[canon]})"))
            continue
        by_identity[canon] = row.line
        loose = loose_identity(row.identity)
        if loose in by_loose and not allow_similar:
            first_line, first = by_loose[loose]
            problems.append(
                (
                    row.line,
                    f"identity {canon} differs from {first} (line {first_line}) only in case or "
                    f"separators (':', '-', '.', space); fix the typo, or pass --allow-similar "
                    f"if both are real devices",
                )
            )
        by_loose.setdefault(loose, (row.line, canon))


def _assign_names(good: list[Row], problems: Problems) -> dict[int, str]:
    """Explicit names must be safe and unique; derived names that collide get an identity digest
    suffix, so a unit's name does not depend on the order of the rows. Returns index -> name."""
    names: dict[int, str] = {}
    taken: dict[str, int] = {}
    for i, row in enumerate(good):
        line, name = row.line, row.name
        if not name:
            continue
        why = check_name(name)
        if why:
            problems.append((line, f"name {name!r} is not usable: {why}"))
        elif name.lower() in taken:
            problems.append((line, f"duplicate name {name!r} (first on line {taken[name.lower()]})"))
        else:
            taken[name.lower()] = line
            names[i] = name
    # a broken row's identity is incomplete: a name derived from it would only add noise
    derived = {i: derive_name(row.identity) for i, row in enumerate(good) if not row.name and not row.broken}
    counts: dict[str, int] = {}
    for cand in derived.values():
        counts[cand.lower()] = counts.get(cand.lower(), 0) + 1
    for i, cand in derived.items():
        line, identity = good[i].line, good[i].identity
        if counts[cand.lower()] > 1 or cand.lower() in taken or cand.lower() in RESERVED_NAMES:
            cand = cand[: MAX_NAME - 9] + "-" + identity_digest(identity)[:8]
        if cand.lower() in taken:
            problems.append(
                (line, f"derived name {cand!r} is taken (first on line {taken[cand.lower()]}); give this row a 'name'")
            )
            continue
        taken[cand.lower()] = line
        names[i] = cand
    return names


def _check_keys(good: list[Row], problems: Problems, base_dir: Path | None) -> dict[int, tuple[Path, str]]:
    """index -> (path, fingerprint) of each listed key; every key must be usable and unshared."""
    found: dict[int, tuple[Path, str]] = {}
    by_fp: dict[str, int] = {}
    for i, row in enumerate(good):
        line, key = row.line, row.key
        if not key:
            continue
        path = Path(key)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            private = keys.read_private_file(path)
            keys.check_acceptable(private, str(path))
        except ImageToolsError as exc:
            problems.append((line, f"{exc}"))
            continue
        fp = keys.fingerprint(private)
        if fp in by_fp:
            problems.append((line, f"key {key} is the same key as on line {by_fp[fp]}"))
            continue
        by_fp[fp] = line
        found[i] = (path, fp)
    return found


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1
