"""Server connection options shared by `login`, `preauth` and `verify --server`.

Kept apart from server_cmd so `verify` (run per unit on flashing stations) loads httpx and the
API client only when --server is actually given.

Network messages are printed here, not in the library: each retry is one line on stderr (which
attempt failed, why, how long until the next), so an unreachable server says so at the first
failure instead of after minutes of silence; `-v` adds each request's method and URL; `-q`
drops the retry lines. The config file (profile.py) fills the URL, token file, CA and retries
that neither a flag nor the environment gave.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from ..errors import UsageError
from ..mender import ENV_SERVER_URL
from ..mender import ENV_TOKEN as TOKEN_ENV
from .base import echo, quiet, warn
from .base import verbose as global_verbose

if TYPE_CHECKING:
    from ..keys import PublicKey
    from ..server import MenderClient, Retry, ServerSettings

URL_ENV = ENV_SERVER_URL
# Where a value came from when neither the flag nor its environment variable gave it.
_DEFAULTED = (click.core.ParameterSource.DEFAULT, None)


@dataclass
class ServerAccess:
    """What a server command gets from server_options: ``settings()`` resolves the URL and the
    token on first use (so --dry-run needs neither), ``client()`` opens a MenderClient that
    reports retries (and with --verbose every request) on stderr."""

    make_settings: Callable[[], ServerSettings]
    verbose: bool = False
    _settings: ServerSettings | None = field(default=None, repr=False)

    def settings(self) -> ServerSettings:
        if self._settings is None:
            self._settings = self.make_settings()
        return self._settings

    def client(self, connections: int = 4) -> MenderClient:
        from ..server import MenderClient

        return MenderClient(
            self.settings(),
            connections=connections,
            on_retry=None if quiet() else show_retry,
            on_request=show_request if self.verbose else None,
        )


def show_retry(retry: Retry) -> None:
    echo(
        f"imagetools: {retry.what}: attempt {retry.attempt} of {retry.attempts} failed: {retry.reason}; "
        f"retrying in {retry.wait:.2f} s",
        err=True,
    )


def show_request(method: str, url: str) -> None:
    echo(f"imagetools: {method} {url}", err=True)


# The connection options after --server and --token-file, as decorators (applied in order).
_CONNECTION_OPTIONS = [
    click.option(
        "--ca-cert",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="Trust this CA certificate (PEM) for the server's TLS certificate.",
    ),
    click.option("--insecure", is_flag=True, help="Do not verify the server's TLS certificate (test setups only)."),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=30.0,
        show_default=True,
        metavar="SECONDS",
        help="Time allowed for each HTTP request, connect to the end of the answer (each retry gets its own).",
    ),
    click.option(
        "--retries",
        type=click.IntRange(min=0),
        default=4,
        show_default=True,
        envvar="IMAGETOOLS_RETRIES",
        help="Retries on connection errors, 5xx and 429 (env IMAGETOOLS_RETRIES).",
    ),
    click.option(
        "--backoff",
        type=click.FloatRange(min=0),
        default=0.5,
        show_default=True,
        envvar="IMAGETOOLS_BACKOFF",
        metavar="SECONDS",
        help="First retry wait, doubled on each retry; Retry-After wins when longer (env IMAGETOOLS_BACKOFF).",
    ),
    click.option(
        "--verbose",
        "-v",
        is_flag=True,
        help="Show each request's method and URL on stderr (as `imagetools -v`; retries are shown unless -q).",
    ),
]


def _with_connection_options(func: Callable) -> Callable:
    for option in reversed(_CONNECTION_OPTIONS):
        func = option(func)
    return func


def server_options(require_token: bool = True, optional: bool = False) -> Callable:
    """The connection options every server command shares.

    The command gets `server`: a ServerAccess whose settings have the token resolved
    (require_token=False: no token and no --token-file, for `login`). With optional=True, --server
    has no environment default and `server` is None when --server is absent: the command stays
    offline.
    """

    def decorate(func: Callable) -> Callable:
        token_option = (
            click.option(
                "--token-file",
                type=click.Path(dir_okay=False),
                metavar="FILE",
                help="File holding a Personal Access Token (default: env MENDER_TOKEN, then the "
                "token cached by `imagetools login`).",
            )
            if require_token
            else (lambda f: f)
        )

        @click.option(
            "--server",
            "server_url",
            envvar=None if optional else URL_ENV,
            metavar="URL",
            help="Mender Server URL, e.g. https://hosted.mender.io"
            + (" (nothing is fetched without it)." if optional else f" (env {URL_ENV})."),
        )
        @token_option
        @_with_connection_options
        @functools.wraps(func)
        def wrapper(
            server_url: str | None,
            ca_cert: str | None,
            insecure: bool,
            timeout: float,
            retries: int,
            backoff: float,
            verbose: bool,
            **kwargs: Any,
        ) -> Any:
            token_file = kwargs.pop("token_file", None)
            verbose = verbose or global_verbose()
            if optional and not server_url and verbose and not global_verbose():
                raise UsageError("--verbose is only used with --server")
            retries_given = click.get_current_context().get_parameter_source("retries") not in _DEFAULTED

            def settings() -> ServerSettings:
                from ..server import ServerSettings, resolve_token
                from .profile import load_profile

                profile = load_profile()
                url = server_url or ("" if optional else profile.url) or ""
                s = ServerSettings(
                    url,
                    ca_cert=ca_cert or profile.ca_cert,
                    insecure=insecure,
                    timeout=timeout,
                    retries=retries if retries_given or profile.retries is None else profile.retries,
                    backoff=backoff,
                )
                if require_token:
                    from_profile = None if os.environ.get(TOKEN_ENV, "").strip() else profile.token_file
                    s.token, s.token_source = resolve_token(s.url, token_file or from_profile)
                _warn_about_transport(s)
                return s

            access = ServerAccess(settings, verbose) if server_url or not optional else None
            return func(server=access, **kwargs)

        return wrapper

    return decorate


def server_key_options(func: Callable) -> Callable:
    """`--server URL [--identity JSON|FILE]` plus the connection options, for `verify`.

    The command gets `server_key`: None when --server is absent (offline), else a function
    image-path → PublicKey preauthorized (or accepted) on the server for the unit's identity,
    taken from --identity or the identity.json written beside the image.
    """

    @click.option(
        "--identity",
        "identity_arg",
        metavar="JSON|FILE",
        help="The unit's identity for --server, as JSON or a JSON file (default: identity.json beside the image).",
    )
    @server_options(optional=True)
    @functools.wraps(func)
    def wrapper(server: ServerAccess | None, identity_arg: str | None, **kwargs: Any) -> Any:
        if server is None:
            if identity_arg is not None:
                raise UsageError("--identity is only used with --server")
            return func(server_key=None, **kwargs)

        def server_key(image: str | os.PathLike) -> PublicKey:
            from ..preauth import load_identity
            from ..server.deviceauth import expected_key_for_identity

            identity = load_identity(identity_arg, Path(image).parent / "identity.json")
            with server.client() as client:
                return expected_key_for_identity(client, identity)

        return func(server_key=server_key, **kwargs)

    return wrapper


def _warn_about_transport(s: ServerSettings) -> None:
    parts = urlsplit(s.url)
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        warn(f"{s.url} is plain HTTP: credentials and keys travel unencrypted")
    if s.insecure:
        warn("TLS certificate verification is off (--insecure)")
