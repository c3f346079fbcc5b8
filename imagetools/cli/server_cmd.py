"""`imagetools login` and `imagetools preauth push|status`: the Mender Server side of the job."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Callable

import click

from .. import preauth as preauth_lib
from ..errors import UsageError
from ..keys import PublicKey
from ..preauth import load_identity
from ..server import URL_ENV, MenderClient, ServerSettings, expected_key_for_identity, resolve_token, save_token
from .base import EXIT_FAILED, is_tty, main, print_json, print_table, warn

PASSWORD_ENV = "MENDER_PASSWORD"


def server_options(require_token: bool = True, optional: bool = False) -> Callable:
    """The connection options every server command shares.

    The command gets `settings`: a callable returning ServerSettings with the token resolved
    (require_token=False: no token and no --token-file, for `login`). With optional=True, --server
    has no environment default and `settings` is None when --server is absent: the command stays
    offline.
    """
    def decorate(func: Callable) -> Callable:
        token_option = click.option(
            "--token-file", type=click.Path(dir_okay=False), metavar="FILE",
            help="File holding a Personal Access Token (default: env MENDER_TOKEN, then the "
                 "token cached by `imagetools login`).") if require_token else (lambda f: f)

        @click.option("--server", "server_url", envvar=None if optional else URL_ENV, metavar="URL",
                      help="Mender Server URL, e.g. https://hosted.mender.io"
                           + (" (nothing is fetched without it)." if optional else f" (env {URL_ENV})."))
        @token_option
        @click.option("--ca-cert", type=click.Path(dir_okay=False), metavar="FILE",
                      help="Trust this CA certificate (PEM) for the server's TLS certificate.")
        @click.option("--insecure", is_flag=True, help="Do not verify the server's TLS certificate (test setups only).")
        @click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
                      metavar="SECONDS", help="Timeout of each HTTP request.")
        @click.option("--retries", type=click.IntRange(min=0), default=4, show_default=True,
                      envvar="IMAGETOOLS_RETRIES",
                      help="Retries on connection errors, 5xx and 429 (env IMAGETOOLS_RETRIES).")
        @click.option("--backoff", type=click.FloatRange(min=0), default=0.5, show_default=True,
                      envvar="IMAGETOOLS_BACKOFF", metavar="SECONDS",
                      help="First retry wait, doubled on each retry; Retry-After wins when longer "
                           "(env IMAGETOOLS_BACKOFF).")
        @functools.wraps(func)
        def wrapper(server_url: str | None, ca_cert: str | None, insecure: bool,
                    timeout: float, retries: int, backoff: float, **kwargs: Any) -> Any:
            token_file = kwargs.pop("token_file", None)

            def settings() -> ServerSettings:
                s = ServerSettings(server_url or "", ca_cert=ca_cert, insecure=insecure, timeout=timeout,
                                   retries=retries, backoff=backoff)
                if require_token:
                    s.token, s.token_source = resolve_token(s.url, token_file)
                _warn_about_transport(s)
                return s
            return func(settings=settings if server_url or not optional else None, **kwargs)
        return wrapper
    return decorate


def server_key_options(func: Callable) -> Callable:
    """`--server URL [--identity JSON|FILE]` plus the connection options, for `verify`.

    The command gets `server_key`: None when --server is absent (offline), else a function
    image-path → PublicKey preauthorized (or accepted) on the server for the unit's identity,
    taken from --identity or the identity.json written beside the image.
    """
    @click.option("--identity", "identity_arg", metavar="JSON|FILE",
                  help="The unit's identity for --server, as JSON or a JSON file "
                       "(default: identity.json beside the image).")
    @server_options(optional=True)
    @functools.wraps(func)
    def wrapper(settings: Callable[..., ServerSettings] | None, identity_arg: str | None, **kwargs: Any) -> Any:
        if settings is None:
            if identity_arg is not None:
                raise UsageError("--identity is only used with --server")
            return func(server_key=None, **kwargs)

        def server_key(image: str | os.PathLike) -> PublicKey:
            identity = load_identity(identity_arg, Path(image).parent / "identity.json")
            with MenderClient(settings()) as client:
                return expected_key_for_identity(client, identity)
        return func(server_key=server_key, **kwargs)
    return wrapper


def _warn_about_transport(s: ServerSettings) -> None:
    parts = urlsplit(s.url)
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        warn(f"{s.url} is plain HTTP: credentials and keys travel unencrypted")
    if s.insecure:
        warn("TLS certificate verification is off (--insecure)")


@main.command()
@click.option("--username", "-u", required=True, metavar="EMAIL", help="Mender user name (e-mail).")
@server_options(require_token=False)
def login(settings: Callable[..., ServerSettings], username: str) -> None:
    """Log in with user name and password and cache the session token (mode 0600).

    The password is prompted for, or read from MENDER_PASSWORD; it is never stored. The token goes
    to $XDG_CACHE_HOME/imagetools (default ~/.cache/imagetools) and is used by later commands
    unless MENDER_TOKEN or --token-file is given.
    """
    s = settings()
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        password = click.prompt(f"Password for {username} on {s.url}", hide_input=True, err=True)
    with MenderClient(s) as client:
        token = client.login(username, password)
    path = save_token(s.url, token)
    click.echo(f"logged in to {s.url} as {username}; token cached in {path}")


@main.group()
def preauth() -> None:
    """Preauthorize units on the Mender Server and check what it knows about them."""


@preauth.command("push")
@click.argument("preauth_file", metavar="PREAUTH.json", type=click.Path(dir_okay=False))
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Requests in flight at once.")
@click.option("--force", is_flag=True, help="Replace an existing device's keys (the API's force flag).")
@click.option("--api", type=click.Choice(["v2", "v1"]), default="v2", show_default=True,
              help="v2: deviceauth (Mender 2.x and later); v1: legacy admission API (Mender 1.4–1.7).")
@click.option("--dry-run", is_flag=True, help="Check the file and show what would be sent; no server contact.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@server_options()
def push(settings: Callable[..., ServerSettings], preauth_file: str, jobs: int, force: bool, api: str,
         dry_run: bool, as_json: bool) -> None:
    """Preauthorize every unit of PREAUTH.json (as written by `imagetools emit`).

    Re-running is safe: a unit whose identity and key are already on the server counts as
    "already". A different key under the same identity is a "conflict" (unless --force).
    Exit 1 when any unit failed or conflicted.
    """
    units = preauth_lib.load_units(preauth_file)
    if dry_run:
        results = preauth_lib.push(None, units, force=force, api=api, dry_run=True)
    else:
        with MenderClient(settings(), connections=jobs) as client:
            results = _push_with_progress(client, units, force=force, api=api, jobs=jobs)
    summary = preauth_lib.summarize(results)
    if as_json:
        print_json({"results": [r.to_dict() for r in results], "summary": summary, "dry_run": dry_run})
    else:
        print_table(["UNIT", "RESULT", "FINGERPRINT", "DEVICE", "DETAIL"],
                    [(r.name, r.outcome, r.fingerprint[:16], r.device_id, r.detail) for r in results])
        if not dry_run:
            click.echo(", ".join(f"{n} {o}" for o, n in summary.items()))
    if summary["failed"] or summary["conflict"]:
        click.get_current_context().exit(EXIT_FAILED)


def _push_with_progress(client: MenderClient, units: list[preauth_lib.Unit], **kwargs: Any) -> list:
    if not is_tty():
        return preauth_lib.push(client, units, **kwargs)
    with click.progressbar(length=len(units), label="preauthorizing", file=click.get_text_stream("stderr"),
                           show_eta=True, show_pos=True) as bar:
        return preauth_lib.push(client, units, progress=lambda _r: bar.update(1), **kwargs)


@preauth.command("status")
@click.argument("preauth_file", metavar="PREAUTH.json", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@server_options()
def status(settings: Callable[..., ServerSettings], preauth_file: str, as_json: bool) -> None:
    """Show the server's view of every unit: preauthorized, accepted, pending, rejected, missing.

    Diagnoses the classic "device shows pending after preauthorizing": a device that connected
    with a key other than the injected one, or an identity that differs in type or formatting.
    Exit 1 unless every unit is preauthorized or accepted with its own key.
    """
    units = preauth_lib.load_units(preauth_file)
    with MenderClient(settings()) as client:
        results = preauth_lib.status(client, units)
    if as_json:
        print_json({"units": [r.to_dict() for r in results], "ok": all(r.ok for r in results)})
    else:
        print_table(["UNIT", "STATUS", "OUR KEY", "DEVICE", "FINGERPRINT"],
                    [(r.name, r.status, r.key_status, r.device_id, r.fingerprint[:16]) for r in results])
        for r in results:
            for line in r.diagnosis:
                click.echo(f"{r.name}: {line}")
    if not all(r.ok for r in results):
        click.get_current_context().exit(EXIT_FAILED)

