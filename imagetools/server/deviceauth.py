"""Mender deviceauth v2 (Mender 2.x and later): preauthorize, list, get and remove devices and
auth sets. The v2 API has no identity filter and no bulk endpoint: a device is found by walking
the list, and units are preauthorized one POST each."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..errors import KeyMaterialError, ServerError
from ..keys import PublicKey, load_public
from ..mender import ACCEPTED, AUTH_SET_V2, DEVICE_V2, DEVICES_V2, MAX_PER_PAGE, PREAUTHORIZED, canonical_identity
from .api import Created, PreauthApi, Taken
from .settings import one_line
from .shapes import conflicting_device, device_problem, location_id
from .transport import MenderClient, bad_response, checked, server_error


@dataclass
class PreauthAnswer:
    """What the server said to one preauthorization: 201 created (with the id from Location) or
    409 with the conflicting device (None when an older server sends an Error instead)."""

    status: int
    device_id: str | None = None
    device: dict | None = None


def preauthorize(
    client: MenderClient, identity: Mapping[str, str], pubkey_pem: str, *, force: bool = False
) -> PreauthAnswer:
    """POST one preauthorization: 201 or 409; any other answer raises."""
    body: dict[str, Any] = {"identity_data": dict(identity), "pubkey": pubkey_pem}
    if force:
        body["force"] = True
    what = f"preauthorize {canonical_identity(identity)}"
    reply = client.request("POST", DEVICES_V2, json=body, what=what)
    if reply.status_code == 201:
        return PreauthAnswer(201, device_id=location_id(reply, what))
    if reply.status_code == 409:
        return PreauthAnswer(409, device=conflicting_device(reply, what))
    raise server_error(reply, what)


def get_device(client: MenderClient, device_id: str) -> dict | None:
    what = f"get device {one_line(device_id, 80)}"
    reply = client.request("GET", DEVICE_V2.format(device_id=quote(device_id, safe="")), what=what)
    if reply.status_code == 404:
        return None
    if reply.status_code != 200:
        raise server_error(reply, what)
    return checked(reply, what, reply.data, device_problem)


def iter_devices(client: MenderClient, per_page: int = MAX_PER_PAGE) -> Iterator[dict]:
    """Every device, following the Link header's 'next' page; each one checked (device_problem)."""
    yield from client.paged(DEVICES_V2, {"per_page": min(per_page, MAX_PER_PAGE)}, "list devices", device_problem)


def find_device(client: MenderClient, identity: Mapping[str, Any]) -> dict | None:
    """The device whose identity equals ``identity`` exactly."""
    wanted = canonical_identity(identity)
    for device in iter_devices(client):
        if canonical_identity(device.get("identity_data") or {}) == wanted:
            return device
    return None


def remove_auth_set(client: MenderClient, device_id: str, auth_id: str) -> bool:
    """Remove one auth set: True when removed (204), False when the server has no such auth set
    or device (404). Removing the only auth set of a preauthorized device removes the device
    too, and removing an accepted one rejects the device (the API's rules)."""
    path = AUTH_SET_V2.format(device_id=quote(device_id, safe=""), auth_id=quote(auth_id, safe=""))
    return _delete(client, path, f"remove auth set {one_line(auth_id, 80)} of device {one_line(device_id, 80)}")


def decommission(client: MenderClient, device_id: str) -> bool:
    """Decommission a device with all its auth sets: True when done (204), False on 404."""
    path = DEVICE_V2.format(device_id=quote(device_id, safe=""))
    return _delete(client, path, f"decommission device {one_line(device_id, 80)}")


def _delete(client: MenderClient, path: str, what: str) -> bool:
    reply = client.request("DELETE", path, what=what)
    if reply.status_code in (204, 404):
        return reply.status_code == 204
    if reply.status_code < 300:
        raise bad_response(reply, what, "the API answers a removal with 204 No Content")
    raise server_error(reply, what)


def expected_key_for_identity(client: MenderClient, identity: Mapping[str, Any]) -> PublicKey:
    """The key the server will accept for this identity: the accepted auth set's key, else the
    preauthorized one. Raises ServerError when the server has neither."""
    device = find_device(client, identity)
    if device is None:
        raise ServerError(
            f"no device with identity {canonical_identity(identity)} on {client.url}; "
            f"preauthorize it first (imagetools preauth push)"
        )
    sets = device.get("auth_sets") or []
    for wanted in (ACCEPTED, PREAUTHORIZED):
        for auth_set in sets:
            if auth_set.get("status") == wanted and auth_set.get("pubkey"):
                try:
                    return load_public(auth_set["pubkey"].encode(), f"key of device {device['id']} on the server")
                except KeyMaterialError as exc:
                    raise ServerError(str(exc)) from None
    raise ServerError(
        f"device {device['id']} with identity {canonical_identity(identity)} has no "
        f"accepted or preauthorized key on {client.url} (device status: {device.get('status')})"
    )


def _preauthorize_unit(
    client: MenderClient, identity: Mapping[str, str], pem: str, key: PublicKey, force: bool
) -> Created | Taken:
    """One unit through v2: on 409 the device is read again (its full auth sets), or found by
    walking the list when the answer did not name it."""
    answer = preauthorize(client, identity, pem, force=force)
    if answer.status == 201:
        return Created(answer.device_id, "forced" if force else "")
    device = answer.device or {}
    if device.get("id"):
        device = get_device(client, device["id"]) or device
    if not device.get("auth_sets"):
        device = find_device(client, identity) or device
    return Taken(
        device.get("id"),
        device.get("status"),
        [(s.get("pubkey"), s.get("status")) for s in device.get("auth_sets") or []],
    )


API = PreauthApi(
    "v2",
    "deviceauth v2",
    "Mender 2.x and later",
    "deviceauth API",
    force=True,
    lists_devices=True,
    preauthorize=_preauthorize_unit,
)
