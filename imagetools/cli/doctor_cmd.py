"""`imagetools doctor`: the system tools each command needs, their versions, what is missing."""

from __future__ import annotations

import platform
from importlib import metadata

import click

from ..errors import ToolMissingError
from .base import echo, main, print_envelope, print_table


@main.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_command(as_json: bool) -> None:
    """List the system tools imagetools runs (e2fsprogs, e2tools, mtools, dosfstools, bmaptool,
    mender-artifact, the decompressors) with their versions and the commands that need them, and
    the Debian packages that install the missing ones.

    Exit 0 when every tool a default command needs is there (optional ones may be missing), 3
    otherwise.

    Full reference: docs/bases.md
    """
    from ..doctor import check, missing_packages

    findings = check()
    missing = missing_packages(findings)
    required = missing_packages(findings, required_only=True)
    version = metadata.version("imagetools")
    if as_json:
        print_envelope(
            "doctor",
            not required,
            [f.to_dict() for f in findings],
            {
                "tools": len(findings),
                "present": sum(f.present for f in findings),
                "missing": len(findings) - sum(f.present for f in findings),
            },
            imagetools=version,
            python=platform.python_version(),
            missing_packages=missing,
        )
    else:
        echo(f"imagetools {version}, Python {platform.python_version()}")
        print_table(
            ["TOOL", "PACKAGE", "VERSION", "NEEDED BY"],
            [
                (f.command, f.package, (f.version or "installed") if f.present else "MISSING", f.needed_by)
                for f in findings
            ],
        )
        if missing:
            echo()
            echo("missing: install with: apt-get install " + " ".join(missing))
    if required:
        raise ToolMissingError("required tools are missing: install with: apt-get install " + " ".join(required))
