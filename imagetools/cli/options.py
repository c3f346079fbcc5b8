"""Click options shared by several commands: partition overrides, the Mender configuration."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

_LAYOUT_FLAGS = (("data", "data"), ("boot", "boot"), ("rootfs-a", "rootfs A"), ("rootfs-b", "rootfs B"))


def layout_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --data-partition/--boot-partition/--rootfs-a-partition/--rootfs-b-partition N.

    The command receives them as one `overrides` keyword: {"data": 4, ...} (only those given),
    ready for `open_layout(path, overrides)`.
    """
    params = {role: role.replace("-", "_") + "_partition" for role, _ in _LAYOUT_FLAGS}

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        overrides = {role: kwargs.pop(param) for role, param in params.items()}
        kwargs["overrides"] = {role: n for role, n in overrides.items() if n is not None}
        return command(*args, **kwargs)

    for role, title in reversed(_LAYOUT_FLAGS):
        wrapper = click.option(
            f"--{role}-partition",
            params[role],
            type=click.IntRange(min=1),
            metavar="N",
            help=f"Use partition N as the {title} partition instead of detecting it.",
        )(wrapper)
    return wrapper


_MODIFY_NAMES = (
    "server_uri",
    "tenant_token",
    "server_cert",
    "verification_key",
    "artifact_name",
    "settings",
    "unset",
    "static_key",
    "conf_mode",
)
_PATH = click.Path(dir_okay=False, path_type=Path)


def modify_options(per_unit: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """mender-artifact modify's options, spelled as it spells them, for `modify` and `emit`.

    The command receives one `modify` keyword: a validated config.ModifyPlan, or None when no
    option was given (per_unit: emit applies it to every unit)."""
    each = "Per unit: " if per_unit else ""
    options = [
        click.option(
            "-u", "--server-uri", metavar="URL", help=f"{each}ServerURL in mender.conf (http(s)://host[:port])."
        ),
        click.option(
            "-t",
            "--tenant-token",
            metavar="TOKEN|@FILE",
            help=f"{each}TenantToken in mender.conf; @FILE reads it from a file (keeps it off the command line).",
        ),
        click.option(
            "-c",
            "--server-cert",
            type=_PATH,
            metavar="FILE",
            help=f"{each}PEM certificate(s) to /etc/mender/server.crt, and ServerCertificate set to it.",
        ),
        click.option(
            "-v",
            "--verification-key",
            type=_PATH,
            metavar="FILE",
            help=f"{each}Public key to /etc/mender/artifact-verify-key.pem, and ArtifactVerifyKey set to it.",
        ),
        click.option(
            "-n",
            "--artifact-name",
            "--name",
            "artifact_name",
            metavar="NAME",
            help=f"{each}artifact_name in /etc/mender/artifact_info.",
        ),
        click.option(
            "--set",
            "settings",
            multiple=True,
            metavar="KEY=JSON",
            help=f"{each}any other mender.conf setting, e.g. UpdatePollIntervalSeconds=1800 or "
            "'Security.SSLEngine=\"pkcs11\"' (repeatable).",
        ),
        click.option("--unset", multiple=True, metavar="KEY", help=f"{each}remove a mender.conf setting (repeatable)."),
        click.option(
            "--static-key",
            is_flag=True,
            help=f"{each}Security.AuthPrivateKey = /var/lib/mender/mender-agent.pem: a missing or bad "
            "key then fails on the device instead of being silently replaced.",
        ),
        click.option(
            "--mode",
            "conf_mode",
            metavar="MODE",
            help=f"{each}mode of /etc/mender/mender.conf, octal (0600: the tenant token readable by "
            "root only); default: kept, 0600 for a new file.",
        ),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from ..menderconf.plan import ModifyPlan

            given = {name: kwargs.pop(name) for name in _MODIFY_NAMES}
            given["set"] = given.pop("settings")
            chosen = any(value not in (None, (), False) for value in given.values())
            kwargs["modify"] = ModifyPlan.from_options(**given) if chosen else None
            return command(*args, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate
