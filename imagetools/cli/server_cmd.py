"""`imagetools login` and `imagetools preauth push|status|remove`: the Mender Server side of the job."""

from __future__ import annotations

import os
from typing import Any

import click

from .. import preauth as preauth_lib
from ..errors import ServerError
from ..mender import ENV_PASSWORD, canonical_identity
from ..server import MenderClient, save_token
from .base import echo, main, print_envelope, print_table, units_failed, warn
from .progress import ProgressLine
from .server_options import ServerAccess, server_options


@main.command()
@click.option("--username", "-u", required=True, metavar="EMAIL", help="Mender user name (e-mail).")
@server_options(require_token=False)
def login(server: ServerAccess, username: str) -> None:
    """Log in with user name and password and cache the session token (mode 0600).

    The password is prompted for, or read from MENDER_PASSWORD; it is never stored. The token goes
    to $XDG_CACHE_HOME/imagetools (default ~/.cache/imagetools) and is used by later commands
    unless MENDER_TOKEN or --token-file is given.
    """
    s = server.settings()
    password = os.environ.get(ENV_PASSWORD)
    if password is None:
        password = click.prompt(f"Password for {username} on {s.url}", hide_input=True, err=True)
    with server.client() as client:
        token = client.login(username, password)
    path = save_token(s.url, token)
    echo(f"logged in to {s.url} as {username}; token cached in {path}")


@main.group()
def preauth() -> None:
    """Preauthorize units on the Mender Server, check what it knows about them, take them off."""


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
def push(server: ServerAccess, preauth_file: str, jobs: int, force: bool, api: str,
         dry_run: bool, as_json: bool) -> None:
    """Preauthorize every unit of PREAUTH.json (as written by `imagetools emit`).

    Re-running is safe: a unit whose identity and key are already on the server counts as
    "already". A different key under the same identity is a "conflict" (unless --force).
    Afterwards (v2) the server's devices are listed once: a device still preauthorized that the
    file no longer has but that looks like one of its units (an identity whose typo was fixed)
    gets a warning naming the `imagetools preauth remove` command that takes it off.
    Exit 1 when any unit failed or conflicted.
    """
    units = preauth_lib.load_units(preauth_file)
    left: list[preauth_lib.LeftBehind] | None = None       # None: not checked (dry run, v1, no listing)
    if dry_run:
        results = preauth_lib.push(None, units, force=force, api=api, dry_run=True)
    else:
        with server.client(connections=jobs) as client:
            results = _push_with_progress(client, units, force=force, api=api, jobs=jobs)
            left = _left_behind(client, units) if api == "v2" else None
    for item in left or []:
        warn(f"device {item.device_id} {canonical_identity(item.identity)} is still preauthorized but not in "
             f"{os.path.abspath(preauth_file)}; {item.reason}; remove it with: {item.remove_command}")
    summary = preauth_lib.summarize(results)
    failed = [(r.name, f"{r.outcome}: {r.detail}") for r in results if r.outcome in ("failed", "conflict")]
    if as_json:
        left_json = None if left is None else {"count": len(left), "devices": [i.to_dict() for i in left]}
        print_envelope("preauth.push", not failed, [r.to_dict() for r in results], summary, dry_run=dry_run,
                       left_behind=left_json)
    else:
        print_table(["UNIT", "RESULT", "FINGERPRINT", "DEVICE", "DETAIL"],
                    [(r.name, r.outcome, r.fingerprint[:16], r.device_id, r.detail) for r in results])
        if not dry_run:
            echo(", ".join(f"{n} {o}" for o, n in summary.items())
                 + (f"; {len(left)} left behind on the server (see the warnings)" if left else ""))
    if failed:
        units_failed(failed, len(results), "conflicted or failed")


def _push_with_progress(client: MenderClient, units: list[preauth_lib.Unit], **kwargs: Any) -> list:
    """The progress line draws only on a terminal (and not with -q); see progress.py."""
    with ProgressLine("preauthorizing", len(units)) as line:
        return preauth_lib.push(client, units, progress=line.advance, **kwargs)


def _left_behind(client: MenderClient, units: list[preauth_lib.Unit]) -> list[preauth_lib.LeftBehind] | None:
    """The push is done whatever the listing says: a failure to list is a warning (None), not an error."""
    try:
        return preauth_lib.find_left_behind(client, units)
    except ServerError as exc:
        warn(f"could not check the server for preauthorizations left behind: {exc}")
        return None


@preauth.command("status")
@click.argument("preauth_file", metavar="PREAUTH.json", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@server_options()
def status(server: ServerAccess, preauth_file: str, as_json: bool) -> None:
    """Show the server's view of every unit: preauthorized, accepted, pending, rejected, missing.

    Diagnoses the classic "device shows pending after preauthorizing": a device that connected
    with a key other than the injected one, or an identity that differs in type or formatting.
    Exit 1 unless every unit is preauthorized or accepted with its own key.
    """
    units = preauth_lib.load_units(preauth_file)
    with server.client() as client:
        results = preauth_lib.status(client, units)
    if as_json:
        summary = {state: sum(r.status == state for r in results) for state in dict.fromkeys(r.status for r in results)}
        print_envelope("preauth.status", all(r.ok for r in results), [r.to_dict() for r in results],
                       {"units": len(results), **summary})
    else:
        print_table(["UNIT", "STATUS", "OUR KEY", "DEVICE", "FINGERPRINT"],
                    [(r.name, r.status, r.key_status, r.device_id, r.fingerprint[:16]) for r in results])
        for r in results:
            for line in r.diagnosis:
                echo(f"{r.name}: {line}")
    failed = [(r.name, "; ".join(r.diagnosis) or r.status) for r in results if not r.ok]
    if failed:
        units_failed(failed, len(results), "are not preauthorized or accepted with their own key")


@preauth.command("remove")
@click.argument("sources", nargs=-1, metavar="[PREAUTH.json|OUT]...", type=click.Path())
@click.option("--identity", "identities", multiple=True, metavar="JSON|FILE",
              help="An identity to remove, as JSON (e.g. '{\"mac\":\"02:00:00:00:00:01\"}') or a JSON file "
                   "such as a unit's identity.json (repeatable).")
@click.option("--decommission", is_flag=True, help="Decommission the whole device instead of removing our auth sets "
              "(only a device that holds an auth set of ours).")
@click.option("--force", is_flag=True, help="Also act on devices accepted with a key we do not know.")
@click.option("--dry-run", is_flag=True, help="List the server's devices and show what would be removed; "
                                              "remove nothing.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Requests in flight at once.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@server_options()
def remove(server: ServerAccess, sources: tuple[str, ...], identities: tuple[str, ...], decommission: bool,
           force: bool, dry_run: bool, jobs: int, as_json: bool) -> None:
    """Take our preauthorizations off the server: for units of PREAUTH.json files or emit OUT
    directories (their preauth.json), and identities given with --identity.

    Ours are the auth sets holding the unit's key from the file; for an identity given on its own,
    the auth sets still preauthorized. A device accepted with a key we do not know is in use and
    is refused (unless --force). Results: removed, not-found (nothing of ours there: fine),
    refused, failed. Exit 1 when any was refused or failed.
    """
    units = [unit for source in sources for unit in preauth_lib.load_target_units(source)]
    given = [preauth_lib.load_identity(arg) for arg in identities]
    targets = preauth_lib.removal_targets(units, given)
    with server.client(connections=jobs) as client, ProgressLine("removing", len(targets)) as line:
        results = preauth_lib.remove(client, targets, decommission=decommission, force=force,
                                     dry_run=dry_run, jobs=jobs, progress=line.advance)
    summary = preauth_lib.summarize_removals(results, dry_run)
    failed = [(r.name or canonical_identity(r.identity), f"{r.outcome}: {r.detail}")
              for r in results if r.outcome in ("refused", "failed")]
    if as_json:
        print_envelope("preauth.remove", not failed, [r.to_dict() for r in results], summary, dry_run=dry_run,
                       decommission=decommission)
    else:
        print_table(["UNIT", "IDENTITY", "RESULT", "DEVICE", "DETAIL"],
                    [(r.name, canonical_identity(r.identity), r.outcome, r.device_id, r.detail) for r in results])
        echo(", ".join(f"{n} {o}" for o, n in summary.items()))
    if failed:
        units_failed(failed, len(results), "refused or failed")
