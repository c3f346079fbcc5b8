"""The legacy admission API v1 (Mender 1.4–1.7; gone from current servers): preauthorize and list
admission sets. It has no force flag, and `device_identity` is a JSON *string*."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from ..keys import PublicKey
from ..mender import ADMISSION_V1, MAX_PER_PAGE, canonical_identity
from ..strict import JsonError, parse
from .api import Created, PreauthApi, Taken
from .shapes import admission_problem, matches
from .transport import MenderClient, server_error


def admission_preauthorize(client: MenderClient, identity: Mapping[str, str], pubkey_pem: str) -> int:
    """Returns 201 or 409; other answers raise."""
    body = {"device_identity": canonical_identity(identity), "key": pubkey_pem}
    what = f"preauthorize (admission v1) {body['device_identity']}"
    reply = client.request("POST", ADMISSION_V1, json=body, what=what)
    if reply.status_code in (201, 409):
        return reply.status_code
    raise server_error(reply, what)


def iter_admission_sets(client: MenderClient, per_page: int = MAX_PER_PAGE) -> Iterator[dict]:
    yield from client.paged(ADMISSION_V1, {"per_page": per_page}, "list admission sets", admission_problem)


def _identity_text(text: object) -> str | None:
    """An admission set's device_identity (JSON in a string) in canonical form; None if unreadable."""
    try:
        return canonical_identity(parse(text)) if isinstance(text, str) else None
    except (JsonError, TypeError):
        return None


def _preauthorize_unit(
    client: MenderClient, identity: Mapping[str, str], pem: str, key: PublicKey, force: bool
) -> Created | Taken:
    """One unit through v1: on 409 the admission sets of this identity are found in the list."""
    if admission_preauthorize(client, identity, pem) == 201:
        return Created(None, "admission v1")
    wanted = canonical_identity(identity)
    sets = [s for s in iter_admission_sets(client) if _identity_text(s.get("device_identity")) == wanted]
    device_id = sets[0].get("device_id") if sets else None
    status = next((s.get("status") for s in sets if matches(s.get("key"), key)), None)
    return Taken(
        device_id, status or (sets[0].get("status") if sets else None), [(s.get("key"), s.get("status")) for s in sets]
    )


API = PreauthApi(
    "v1",
    "admission v1",
    "Mender 1.4–1.7",
    "legacy admission API",
    force=False,
    lists_devices=False,
    preauthorize=_preauthorize_unit,
)
