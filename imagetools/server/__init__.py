"""Mender Server management API client: transport, credentials, deviceauth v2, legacy admission v1.

Why a client of our own rather than a curl loop: the server has no bulk preauthorize endpoint,
rate-limits with 429, answers 409 even when the same identity and key are re-posted, and a
factory run must survive a flaky link. Nothing the server sends is trusted: each answer is read
whole within the request's deadline and size cap, and its shape and types are checked against
what the API promises before anything uses it; anything else is a BadResponse (a ServerError,
exit 4) quoting the server's request_id.

- `settings`: where the server is (ServerSettings, the URL checked);
- `credentials`: the token's sources and the cached login;
- `transport`: MenderClient (requests, retries, deadlines, size caps, page walks), Reply, errors;
- `shapes`: what the API's answers must look like; server-listed keys read safely;
- `deviceauth` (v2), `admission` (v1), `useradm` (login): the endpoints, one module per API;
- `api`: what an API version offers preauthorization (PreauthApi), registered here in APIS.
"""

from __future__ import annotations

from ..errors import UsageError
from . import admission, deviceauth
from .api import PreauthApi
from .credentials import resolve_token, save_token
from .settings import ServerSettings
from .transport import BadResponse, MenderClient, Retry

APIS = {api.name: api for api in (deviceauth.API, admission.API)}

__all__ = [
    "APIS",
    "BadResponse",
    "MenderClient",
    "PreauthApi",
    "Retry",
    "ServerSettings",
    "preauth_api",
    "resolve_token",
    "save_token",
]


def preauth_api(name: str) -> PreauthApi:
    """The API version called `name` ('v2', 'v1')."""
    try:
        return APIS[name]
    except KeyError:
        known = " or ".join(f"{api.name} ({api.servers})" for api in APIS.values())
        raise UsageError(f"unknown API {name!r}; use {known}") from None
