"""useradm: log in with user name and password for a JWT (cached by credentials.save_token)."""

from __future__ import annotations

import httpx

from ..errors import AuthError
from ..mender import LOGIN, token_problem
from .transport import BadResponse, MenderClient, server_error


def login(client: MenderClient, username: str, password: str) -> str:
    """POST auth/login with Basic auth; returns the JWT (not cached here: see save_token)."""
    try:
        reply = client.request("POST", LOGIN, what="login", auth=httpx.BasicAuth(username, password))
    except AuthError as exc:
        raise AuthError(
            f"login to {client.url} as {username!r} refused: wrong username or password "
            f"(HTTP {exc.status}" + (f", request_id {exc.request_id})" if exc.request_id else ")"),
            exc.status,
            exc.request_id,
        ) from None
    if reply.status_code != 200:
        raise server_error(reply, "login")
    token = reply.content.decode("ascii", "replace").strip().strip('"')
    if token.count(".") != 2 or token_problem(token):
        raise BadResponse(
            f"login: {client.url} did not answer with a JWT (is this a Mender Server?)",
            reply.status_code,
            reply.request_id,
        )
    return token
