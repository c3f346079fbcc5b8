"""What the Mender API promises its answers look like, checked before anything uses them, and
the public keys servers list, read without trusting them.

Comparisons, messages, tables and DELETE paths rely on these types; an answer of another shape
is a BadResponse (see transport.checked). Keys are compared as SPKI DER: the server re-serializes
the PEM it was given.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from ..errors import KeyMaterialError
from ..keys import PublicKey, fingerprint, load_public, parse_pem, same_key, spki_der
from .settings import one_line
from .transport import NOT_JSON, Reply, bad_response, checked, kind

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # device and auth set ids: UUIDs, hex ObjectIds
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")  # statuses: pending, accepted, ...


def device_problem(item: Any) -> str | None:
    """Why ``item`` is not a Device as deviceauth v2 sends it (None if it is one). Optional
    fields may be missing or null."""
    if not isinstance(item, dict):
        return f"a device is {kind(item)}, not an object"
    device_id = item.get("id")
    if not isinstance(device_id, str) or not _ID.fullmatch(device_id):
        return f"device id {show(device_id)} is not an id"
    found = (
        _identity_problem(item.get("identity_data"))
        or _word_problem(item.get("status"), "status")
        or _auth_sets_problem(item.get("auth_sets"))
    )
    return f"device {device_id}: {found}" if found else None


def _identity_problem(identity: Any) -> str | None:
    """Identity data must be an object of printable names to scalars or flat lists of them."""
    if identity is None:
        return None
    if not isinstance(identity, dict):
        return f"identity_data is {kind(identity)}, not an object"
    for attr, value in identity.items():
        if not attr.isprintable():
            return f"identity attribute {show(attr)} has control characters in its name"
        if not (_scalar(value) or isinstance(value, list) and all(_scalar(v) for v in value)):
            return f"identity attribute {show(attr)} holds nested values"
    return None


def _auth_sets_problem(sets: Any) -> str | None:
    if sets is None:
        return None
    if not isinstance(sets, list):
        return f"auth_sets is {kind(sets)}, not a list"
    return next(filter(None, map(_auth_set_problem, sets)), None)


def _auth_set_problem(item: Any) -> str | None:
    """Why ``item`` is not an AuthSet: the id (optional in the spec) is used in DELETE paths."""
    if not isinstance(item, dict):
        return f"an auth set is {kind(item)}, not an object"
    auth_id = item.get("id")
    if auth_id is not None and not (isinstance(auth_id, str) and _ID.fullmatch(auth_id)):
        return f"auth set id {show(auth_id)} is not an id"
    pubkey = item.get("pubkey")
    if not isinstance(pubkey, str) or not pubkey.isascii():
        return f"an auth set's pubkey is {kind(pubkey)}, not PEM text"
    return _word_problem(item.get("status"), "auth set status")


def admission_problem(item: Any) -> str | None:
    """Why ``item`` is not a legacy admission auth set (None if it is one)."""
    if not isinstance(item, dict):
        return f"an admission set is {kind(item)}, not an object"
    if not isinstance(item.get("device_identity"), str):
        return f"an admission set's device_identity is {kind(item.get('device_identity'))}, not a string"
    if not isinstance(item.get("key"), str) or not item["key"].isascii():
        return f"an admission set's key is {kind(item.get('key'))}, not PEM text"
    device_id = item.get("device_id")
    if device_id is not None and not (isinstance(device_id, str) and _ID.fullmatch(device_id)):
        return f"admission device_id {show(device_id)} is not an id"
    return _word_problem(item.get("status"), "admission status")


def _word_problem(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str) and _WORD.fullmatch(value):
        return None
    return f"{what} {show(value)} is not a status"


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def location_id(reply: Reply, what: str) -> str:
    """The new device's id: the last path segment of Location (a URL we never follow)."""
    location = reply.headers.get("Location", "").strip()
    try:
        device_id = urlsplit(location).path.rpartition("/")[2]
    except ValueError:
        device_id = ""
    if not _ID.fullmatch(device_id):
        raise bad_response(
            reply,
            what,
            f"Location {reply.quote(location, 80)!r} does not name a device"
            if location
            else "201 without a Location header",
        )
    return device_id


def conflicting_device(reply: Reply, what: str) -> dict | None:
    """A 409's body: the Device holding the identity, or None for an Error (older servers)."""
    body = reply.data
    if isinstance(body, dict) and "id" not in body and isinstance(body.get("error"), str):
        return None
    return checked(reply, what, body, device_problem)


def show(value: Any) -> str:
    """A scalar JSON value from the server for a message; containers only by their type."""
    if isinstance(value, (list, dict)) or value is NOT_JSON:
        return kind(value)
    return one_line(json.dumps(value), 60)


# --- keys the server lists ------------------------------------------------------------------------


def matches(pem: Any, key: PublicKey) -> bool:
    """Whether a server-listed PEM is ``key`` (compared as DER); False for anything unreadable."""
    if not isinstance(pem, str) or not pem:
        return False
    try:
        return same_key(load_public(pem.encode(), "server key"), key)
    except KeyMaterialError:
        return False


def short_fingerprint(pem: str | None, full: bool = False) -> str:
    try:
        fp = fingerprint(load_public((pem or "").encode(), "server key"))
    except KeyMaterialError:
        return "unreadable key"
    return fp if full else fp[:16] + "…"


def key_der(pem: Any) -> bytes | None:
    """The SPKI DER of a server-listed PEM public key; None if it is not one we can load."""
    text = pem if isinstance(pem, str) else None
    if not text or not text.isascii():
        return None
    try:
        return spki_der(load_public(text.encode(), "server key"))
    except KeyMaterialError:
        return None


def pem_der(pem: Any) -> bytes | None:
    """The DER of a PEM public key without loading it (cheap for long device lists); None if it is
    not one clean PUBLIC KEY block."""
    try:
        blocks = parse_pem(pem.encode(), "server key").blocks if isinstance(pem, str) else ()
    except KeyMaterialError:
        return None
    return blocks[0].der if len(blocks) == 1 and blocks[0].label == "PUBLIC KEY" else None
