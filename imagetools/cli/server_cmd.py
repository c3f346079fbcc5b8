"""`imagetools login` and `imagetools preauth push|status`: the Mender Server side of the job."""

from __future__ import annotations

import os
from typing import Any, Callable

import click

from .. import preauth as preauth_lib
from ..mender import ENV_PASSWORD
from ..server import MenderClient, ServerSettings, save_token
from .base import echo, is_tty, main, print_json, print_table, units_failed
from .server_options import server_options


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
    password = os.environ.get(ENV_PASSWORD)
    if password is None:
        password = click.prompt(f"Password for {username} on {s.url}", hide_input=True, err=True)
    with MenderClient(s) as client:
        token = client.login(username, password)
    path = save_token(s.url, token)
    echo(f"logged in to {s.url} as {username}; token cached in {path}")


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
            echo(", ".join(f"{n} {o}" for o, n in summary.items()))
    failed = [(r.name, f"{r.outcome}: {r.detail}") for r in results if r.outcome in ("failed", "conflict")]
    if failed:
        units_failed(failed, len(results), "conflicted or failed")


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
                echo(f"{r.name}: {line}")
    failed = [(r.name, "; ".join(r.diagnosis) or r.status) for r in results if not r.ok]
    if failed:
        units_failed(failed, len(results), "are not preauthorized or accepted with their own key")

