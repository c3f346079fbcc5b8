"""The click group, error-to-exit-code mapping and output helpers shared by all commands.

Exit codes (documented in the README):
  0 success; 1 a verification check failed (or a unit failed/conflicted);
  2 bad input or usage; 3 environment problem or missing tool; 4 server error.
"""

from __future__ import annotations

import errno
import importlib
import json
import sys
from typing import Any, Iterable, Sequence

import click

from ..errors import ImageToolsError

EXIT_FAILED, EXIT_INPUT, EXIT_ENV = 1, 2, 3  # the rest come from the exception classes


# Command name -> module defining it. Modules load only when their command runs, so a quick
# command (verify on a flashing station) does not pay for importing httpx, emit, etc.
_COMMAND_MODULES = {
    "inspect": "inspect_cmd",
    "ls": "files", "cat": "files", "cp": "files", "install": "files", "rm": "files",
    "keygen": "keys_cmd", "inject": "keys_cmd", "verify": "keys_cmd",
    "emit": "emit_cmd",
    "login": "server_cmd", "preauth": "server_cmd",
}


class _Group(click.Group):
    """Loads command modules lazily; turns library errors into one line on stderr and a
    documented exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMAND_MODULES))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in _COMMAND_MODULES:
            importlib.import_module(f"{__package__}.{_COMMAND_MODULES[name]}")
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ImageToolsError as exc:
            _fail(ctx, str(exc), exc.exit_code)
        except OSError as exc:
            code = EXIT_ENV if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS) else EXIT_INPUT
            _fail(ctx, _describe_oserror(exc), code)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)


def _describe_oserror(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    hint = " (free some space and run again)" if exc.errno == errno.ENOSPC else ""
    return f"{exc.strerror or exc}{where}{hint}"


def _fail(ctx: click.Context, message: str, code: int) -> None:
    if (ctx.obj or {}).get("debug"):
        raise
    click.echo(f"imagetools: error: {message}", err=True)
    ctx.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="IMAGETOOLS_DEBUG", help="Show tracebacks on errors.")
@click.version_option(package_name="imagetools")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Personalize Mender disk images: inspect, edit files in place, inject and verify device keys,
    emit per-device images, preauthorize devices on the Mender Server.

    Exit codes: 0 ok, 1 check failed, 2 bad input, 3 environment/tool missing, 4 server error.
    """
    ctx.ensure_object(dict)["debug"] = debug


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A plain aligned table; cells are str()-ed, None shows as '-'."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join("{:<%d}" % w for w in widths)
    click.echo(line.format(*headers).rstrip())
    for row in cells:
        click.echo(line.format(*row).rstrip())


def warn(message: str) -> None:
    click.echo(f"imagetools: warning: {message}", err=True)


def is_tty() -> bool:
    return sys.stderr.isatty()
