"""modify and config: the Mender configuration in both root filesystems.

modify takes mender-artifact modify's options, spelled the same, so a factory script ports by
changing the program name; config shows what the client on each rootfs will use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..mender import ARTIFACT_INFO_PATH, CONF_PATH, FALLBACK_CONF_PATH, TENANT_TOKEN
from .base import echo, main, print_envelope, print_table, warn
from .bases import base_input, for_writing
from .options import layout_options, modify_options

_FILE = click.Path(dir_okay=False, path_type=Path)
_SOURCES = (FALLBACK_CONF_PATH, CONF_PATH, ARTIFACT_INFO_PATH)  # the files config lists per rootfs


@main.command("modify")
@click.argument("image", type=_FILE)
@modify_options()
@click.option(
    "--rootfs", type=click.Choice(["a", "b"]), default=None, help="Change only this rootfs (default: A and B)."
)
@click.option(
    "--out", type=_FILE, default=None, help="Write a new image (sparse/reflink copy) and leave IMAGE untouched."
)
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@layout_options
@click.option("--json", "as_json", is_flag=True, help="Report as JSON.")
def modify_cmd(
    image: Path,
    modify: Any,
    rootfs: str | None,
    out: Path | None,
    force: bool,
    overrides: dict[str, int],
    as_json: bool,
) -> None:
    """Change the Mender configuration of IMAGE on rootfs A and B, in place (or into --out).

    Everything is checked before anything is written: the option values, the certificate (a PEM
    chain), the verification key (a public key), and each rootfs's mender.conf (a malformed one
    is refused, never overwritten). mender.conf keeps its other settings, its mode and owner.

    \b
    Examples:
      imagetools modify golden.sdimg -u https://mender.example.com -t @tenant.token -n release-7
      imagetools modify golden.sdimg --out prod.sdimg -c server.crt -v artifact-verify.pub
      imagetools modify golden.sdimg --set UpdatePollIntervalSeconds=1800 --static-key

    Full reference: docs/commands/modify.md
    """
    from ..menderconf.modify import modify as modify_image
    from ..menderconf.plan import ModifyPlan

    plan = modify or ModifyPlan.from_options()  # nothing asked: ModifyPlan says so
    image, out, publish = for_writing(image, out, force, "modify")
    result = publish(modify_image(image, plan, out=out, force=force, rootfs=rootfs, overrides=overrides or None))
    for message in result.warnings:
        warn(message)
    if as_json:
        doc = result.to_dict()
        items = doc.pop("rootfs")
        print_envelope(
            "modify",
            True,
            items,
            {
                "rootfs": len(items),
                "written": sum(len(r["written"]) for r in items),
                "unchanged": sum(len(r["unchanged"]) for r in items),
            },
            **doc,
        )
        return
    for change in result.rootfs:
        label = f"rootfs {change.role[-1].upper()} (partition {change.partition})"
        written = ", ".join(change.written) or "nothing (already so)"
        echo(f"{result.image}: {label}: wrote {written}")


@main.command("config")
@base_input("image")
@click.argument("image", type=_FILE)
@layout_options
@click.option("--json", "as_json", is_flag=True, help="Report as JSON.")
@click.option("--show-secrets", is_flag=True, help="Include the tenant token in --json output.")
def config_cmd(image: Path, overrides: dict[str, int], as_json: bool, show_secrets: bool) -> None:
    """Show the Mender configuration the client on each rootfs will use, read-only.

    /var/lib/mender/mender.conf with /etc/mender/mender.conf over it (the client's order),
    artifact_info, device_type from the data partition, and the server certificate and
    verification key files. Settings in which rootfs A and B differ are marked; the tenant token
    is shown as its length only (in --json with --show-secrets).

    Full reference: docs/commands/config.md
    """
    from ..menderconf.read import read

    report = read(image, overrides or None)
    for message in report.warnings:
        warn(message)
    if as_json:
        doc = report.to_dict(show_secrets)
        items = doc.pop("rootfs")
        print_envelope(
            "config",
            True,
            items,
            {"rootfs": len(items), "differences": len(doc["differences"]), "warnings": len(doc["warnings"])},
            **doc,
        )
        return
    _print_report(report)


def _print_report(report: Any) -> None:
    headers = ["SETTING"] + [f"ROOTFS {r.role[-1].upper()} ({r.partition})" for r in report.rootfs] + [""]
    rows = [[name] + values + ["DIFFERS" if name in report.differences else ""] for name, values in _rows(report)]
    echo(f"{report.image}: Mender configuration")
    print_table(headers, rows)
    for rootfs in report.rootfs:
        label = f"rootfs {rootfs.role[-1].upper()}"
        for f in (f for f in rootfs.files if f.path in _SOURCES):
            detail = f"{f.size} bytes, mode {f.mode}, owner {f.owner}" if f.present else "absent"
            echo(f"{label}: {f.where}: {detail}")
        for problem in rootfs.errors + rootfs.warnings:
            warn(f"{label}: {problem}")
    if report.differences:
        echo("rootfs A and B differ in: " + ", ".join(report.differences))


def _rows(report: Any) -> list[tuple[str, list[str | None]]]:  # None: not set
    from ..menderconf.settings import flatten

    flat = [flatten(r.settings) if r.state == "ok" else {} for r in report.rootfs]
    names = list(dict.fromkeys(n for f in flat for n in f))
    rows = [(name, [_shown(name, f.get(name), r.state) for f, r in zip(flat, report.rootfs)]) for name in names]
    rows.append(("artifact_name", [r.artifact_name if r.state == "ok" else f"({r.state})" for r in report.rootfs]))
    for title, attr in (("server certificate", "server_cert"), ("verification key", "verification_key")):
        rows.append((title, [_trust(r, getattr(r, attr)) for r in report.rootfs]))
    rows.append(("device_type (data partition)", [report.device_type for _ in report.rootfs]))
    return rows


def _shown(name: str, value: Any, state: str) -> str | None:
    if state != "ok":
        return f"({state})"
    if value is None:
        return None
    if name.casefold() == TENANT_TOKEN.casefold() and isinstance(value, str):
        return f"set ({len(value)} chars)"
    from ..menderconf.settings import plain
    from ..strict import JsonNumber

    if isinstance(value, str):
        return value
    return value.text if isinstance(value, JsonNumber) else json.dumps(plain(value))


def _trust(rootfs: Any, used: str | None) -> str | None:
    if rootfs.state != "ok":
        return f"({rootfs.state})"
    if used is None:
        return "not set"
    state = rootfs.file(used)
    return f"{used} ({'present' if state and state.present else 'MISSING'})"
