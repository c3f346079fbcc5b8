"""`imagetools login` and `imagetools preauth push|status|remove`: the Mender Server side of the job."""

from __future__ import annotations

import os
import shlex
from typing import Any

import click

from .. import preauth as preauth_lib
from ..errors import ServerError, UsageError
from ..mender import ENV_PASSWORD, canonical_identity
from ..preauth.leftbehind import LeftBehind, find_left_behind
from ..preauth.push import OUTCOMES, summarize
from ..preauth.push import push as push_units
from ..preauth.remove import Target, removal_targets, summarize_removals
from ..preauth.remove import remove as remove_targets
from ..preauth.shipped import LedgerKeys, Selection, ledger_beside, read_ledger, retired_targets, select
from ..preauth.status import status as unit_status
from ..server import APIS, MenderClient, preauth_api, save_token
from ..server.useradm import login as login_as
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

    Full reference: docs/commands/login.md
    """
    s = server.settings()
    password = os.environ.get(ENV_PASSWORD)
    if password is None:
        password = click.prompt(f"Password for {username} on {s.url}", hide_input=True, err=True)
    with server.client() as client:
        token = login_as(client, username, password)
    path = save_token(s.url, token)
    echo(f"logged in to {s.url} as {username}; token cached in {path}")


@main.group()
def preauth() -> None:
    """Preauthorize units on the Mender Server, check what it knows about them, take them off.

    Full reference: docs/commands/preauth.md
    """


@preauth.command("push")
@click.argument("preauth_file", metavar="PREAUTH.json|OUT", type=click.Path())
@click.option(
    "--ledger",
    metavar="PATH|URL",
    help="Push only the units whose key passed onto a card by this ledger (an SQLite file such as "
    "OUT/ledger.sqlite, or a line's postgresql:// URL): what is preauthorized is what shipped.",
)
@click.option(
    "--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True, help="Requests in flight at once."
)
@click.option("--force", is_flag=True, help="Replace an existing device's keys (the API's force flag).")
@click.option(
    "--api",
    type=click.Choice(list(APIS)),
    default="v2",
    show_default=True,
    help="v2: deviceauth (Mender 2.x and later); v1: legacy admission API (Mender 1.4–1.7).",
)
@click.option("--dry-run", is_flag=True, help="Check the file and show what would be sent; no server contact.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@server_options()
def push(
    server: ServerAccess,
    preauth_file: str,
    ledger: str | None,
    jobs: int,
    force: bool,
    api: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Preauthorize every unit of PREAUTH.json (as written by `imagetools emit`), or of an emit
    OUT directory (its preauth.json).

    With --ledger, only the units whose key passed onto a card are pushed; the others are left
    out and counted (not flashed yet, retired). Without it, when the file is in an emit OUT whose
    stations wrote OUT/ledger.sqlite, the retired units (their keys went onto cards that failed
    or were interrupted) are left out with a warning: a retired key is never preauthorized.

    Re-running is safe: a unit whose identity and key are already on the server counts as
    "already". A different key under the same identity is a "conflict" (unless --force).
    Afterwards (v2) the server's devices are listed once: a device still preauthorized that the
    file no longer has but that looks like one of its units (an identity whose typo was fixed)
    gets a warning naming the `imagetools preauth remove` command that takes it off.
    Exit 1 when any unit failed or conflicted.

    \b
    Examples:
      imagetools preauth push OUT/preauth.json --jobs 8
      imagetools preauth push OUT --ledger OUT/ledger.sqlite
      imagetools preauth push merged.json --ledger postgresql://line@db.factory/line

    Full reference: docs/commands/preauth.md
    """
    units = preauth_lib.load_target_units(preauth_file)
    chosen, ledger_path = _by_ledger(preauth_file, units, ledger)
    to_push = units if chosen is None else chosen.push
    left: list[LeftBehind] | None = None  # None: not checked (dry run, an API without listings)
    if dry_run:
        results = push_units(None, to_push, force=force, api=api, dry_run=True)
    else:
        with server.client(connections=jobs) as client:
            results = _push_with_progress(client, to_push, force=force, api=api, jobs=jobs)
            left = _left_behind(client, units) if preauth_api(api).lists_devices else None
    for item in left or []:
        warn(
            f"device {item.device_id} {canonical_identity(item.identity)} is still preauthorized but not in "
            f"{os.path.abspath(preauth_file)}; {item.reason}; remove it with: {item.remove_command}"
        )
    summary = {**summarize(results), **(chosen.counts() if chosen else {})}
    failed = [(r.name, f"{r.outcome}: {r.detail}") for r in results if r.outcome in ("failed", "conflict")]
    if as_json:
        left_json = None if left is None else {"count": len(left), "devices": [i.to_dict() for i in left]}
        print_envelope(
            "preauth.push",
            not failed,
            [r.to_dict() for r in results],
            summary,
            dry_run=dry_run,
            left_behind=left_json,
            ledger=ledger_path,
        )
    else:
        print_table(
            ["UNIT", "RESULT", "FINGERPRINT", "DEVICE", "DETAIL"],
            [(r.name, r.outcome, r.fingerprint[:16], r.device_id, r.detail) for r in results],
        )
        if not dry_run:
            echo(
                ", ".join(f"{summary[o]} {o}" for o in OUTCOMES)
                + (f"; {len(left)} left behind on the server (see the warnings)" if left else "")
            )
        if ledger is not None and chosen is not None and len(chosen.push) < len(units):
            echo(
                f"left out {len(units) - len(chosen.push)} of {len(units)} unit(s) by ledger {ledger_path}: "
                f"{len(chosen.not_flashed)} not flashed yet (no card with its key passed), "
                f"{len(chosen.retired)} retired (its key went onto a card that failed or was interrupted)"
            )
    if failed:
        units_failed(failed, len(results), "conflicted or failed")


def _by_ledger(source: str, units: list[preauth_lib.Unit], ledger: str | None) -> tuple[Selection | None, str | None]:
    """With --ledger: the units that shipped. Without: all but the retired ones when the source's
    OUT has a ledger (a warning names them), else None: the ledger is not consulted."""
    where = ledger or ledger_beside(source)
    if where is None:
        return None, None
    keys = read_ledger(where)
    chosen = select(units, keys, shipped_only=ledger is not None)
    if ledger is None and chosen.retired:
        warn(
            f"left out {len(chosen.retired)} retired unit(s) of {len(units)}, e.g. {chosen.retired[0].name}: "
            f"their keys went onto cards that failed or were interrupted (ledger {keys.where}) and are never "
            f"preauthorized; `imagetools preauth remove --retired {shlex.quote(source)}` takes them off the server"
        )
    return chosen, keys.where


def _push_with_progress(client: MenderClient, units: list[preauth_lib.Unit], **kwargs: Any) -> list:
    """The progress line draws only on a terminal (and not with -q); see progress.py."""
    with ProgressLine("preauthorizing", len(units)) as line:
        return push_units(client, units, progress=line.advance, **kwargs)


def _left_behind(client: MenderClient, units: list[preauth_lib.Unit]) -> list[LeftBehind] | None:
    """The push is done whatever the listing says: a failure to list is a warning (None), not an error."""
    try:
        return find_left_behind(client, units)
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

    Full reference: docs/commands/preauth.md
    """
    units = preauth_lib.load_units(preauth_file)
    with server.client() as client:
        results = unit_status(client, units)
    if as_json:
        summary = {state: sum(r.status == state for r in results) for state in dict.fromkeys(r.status for r in results)}
        print_envelope(
            "preauth.status",
            all(r.ok for r in results),
            [r.to_dict() for r in results],
            {"units": len(results), **summary},
        )
    else:
        print_table(
            ["UNIT", "STATUS", "OUR KEY", "DEVICE", "FINGERPRINT"],
            [(r.name, r.status, r.key_status, r.device_id, r.fingerprint[:16]) for r in results],
        )
        for r in results:
            for line in r.diagnosis:
                echo(f"{r.name}: {line}")
    failed = [(r.name, "; ".join(r.diagnosis) or r.status) for r in results if not r.ok]
    if failed:
        units_failed(failed, len(results), "are not preauthorized or accepted with their own key")


@preauth.command("remove")
@click.argument("sources", nargs=-1, metavar="[PREAUTH.json|OUT]...", type=click.Path())
@click.option(
    "--identity",
    "identities",
    multiple=True,
    metavar="JSON|FILE",
    help='An identity to remove, as JSON (e.g. \'{"mac":"02:00:00:00:00:01"}\') or a JSON file '
    "such as a unit's identity.json (repeatable).",
)
@click.option(
    "--decommission",
    is_flag=True,
    help="Decommission the whole device instead of removing our auth sets "
    "(only a device that holds an auth set of ours).",
)
@click.option("--force", is_flag=True, help="Also act on devices accepted with a key we do not know.")
@click.option(
    "--retired",
    is_flag=True,
    help="Only the retired units (their keys went onto cards that failed or were interrupted), by the "
    "ledger: those of the sources given, or without sources every retired unit of --ledger.",
)
@click.option(
    "--ledger",
    metavar="PATH|URL",
    help="The ledger for --retired: an SQLite file or a postgresql:// URL (default: the "
    "OUT/ledger.sqlite of each source).",
)
@click.option(
    "--dry-run", is_flag=True, help="List the server's devices and show what would be removed; remove nothing."
)
@click.option(
    "--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True, help="Requests in flight at once."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@server_options()
def remove(
    server: ServerAccess,
    sources: tuple[str, ...],
    identities: tuple[str, ...],
    decommission: bool,
    force: bool,
    retired: bool,
    ledger: str | None,
    dry_run: bool,
    jobs: int,
    as_json: bool,
) -> None:
    """Take our preauthorizations off the server: for units of PREAUTH.json files or emit OUT
    directories (their preauth.json), and identities given with --identity.

    Ours are the auth sets holding the unit's key from the file; for an identity given on its own,
    the auth sets still preauthorized. A device accepted with a key we do not know is in use and
    is refused (unless --force). Results: removed, not-found (nothing of ours there: fine),
    refused, failed. Exit 1 when any was refused or failed.

    With --retired, only the units the ledger retired are taken off: their keys went onto
    cards that failed or were interrupted. Without sources, every retired unit of --ledger, by
    the identity and key fingerprint the ledger holds.

    \b
    Examples:
      imagetools preauth remove OUT --dry-run
      imagetools preauth remove --retired OUT
      imagetools preauth remove --retired --ledger postgresql://line@db.factory/line

    Full reference: docs/commands/preauth.md
    """
    if retired:
        if identities:
            raise UsageError("--retired takes the units from the ledger; give --identity without --retired")
        targets, where = _retired(sources, ledger)
        if not targets:
            _nothing_retired(where, dry_run, decommission, as_json)
            return
    elif ledger is not None:
        raise UsageError("--ledger is used with --retired (remove the units the ledger retired)")
    else:
        units = [unit for source in sources for unit in preauth_lib.load_target_units(source)]
        given = [preauth_lib.load_identity(arg) for arg in identities]
        targets = removal_targets(units, given)
    with server.client(connections=jobs) as client, ProgressLine("removing", len(targets)) as line:
        results = remove_targets(
            client, targets, decommission=decommission, force=force, dry_run=dry_run, jobs=jobs, progress=line.advance
        )
    summary = summarize_removals(results, dry_run)
    failed = [
        (r.name or canonical_identity(r.identity), f"{r.outcome}: {r.detail}")
        for r in results
        if r.outcome in ("refused", "failed")
    ]
    if as_json:
        print_envelope(
            "preauth.remove",
            not failed,
            [r.to_dict() for r in results],
            summary,
            dry_run=dry_run,
            decommission=decommission,
        )
    else:
        print_table(
            ["UNIT", "IDENTITY", "RESULT", "DEVICE", "DETAIL"],
            [(r.name, canonical_identity(r.identity), r.outcome, r.device_id, r.detail) for r in results],
        )
        echo(", ".join(f"{n} {o}" for o, n in summary.items()))
    if failed:
        units_failed(failed, len(results), "refused or failed")


def _retired(sources: tuple[str, ...], ledger: str | None) -> tuple[list[Target], str]:
    """The removal targets of --retired, and the ledger(s) that retired them (for messages)."""
    if not sources:
        if ledger is None:
            raise UsageError(
                "--retired needs the ledger: --ledger PATH|URL, or an emit OUT whose stations wrote OUT/ledger.sqlite"
            )
        keys = read_ledger(ledger)
        targets, unknown = retired_targets(keys)
        if unknown:
            warn(
                f"{len(unknown)} retired unit(s) of ledger {keys.where} have no usable identity there (flashed "
                f"with --key?), e.g. {unknown[0]}; give their preauth file or OUT to remove them"
            )
        return targets, keys.where
    read: dict[str, LedgerKeys] = {}
    units = []
    for source in sources:
        where = ledger or ledger_beside(source)
        if where is None:
            raise UsageError(
                f"{source} is not in an emit OUT with a ledger (OUT/ledger.sqlite); name the "
                "ledger with --ledger PATH|URL"
            )
        if str(where) not in read:
            read[str(where)] = read_ledger(where)
        units += [u for u in preauth_lib.load_target_units(source) if u.fingerprint in read[str(where)].retired]
    return removal_targets(units, []), ", ".join(k.where for k in read.values())


def _nothing_retired(where: str, dry_run: bool, decommission: bool, as_json: bool) -> None:
    if as_json:
        print_envelope(
            "preauth.remove", True, [], summarize_removals([], dry_run), dry_run=dry_run, decommission=decommission
        )
    else:
        echo(f"no retired unit in ledger {where}: nothing to remove")
