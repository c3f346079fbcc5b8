"""The click group, error-to-exit-code mapping and output helpers shared by all commands.

Exit codes (documented in the README):
  0 success; 1 a verification check failed (or a unit failed/conflicted);
  2 bad input or usage; 3 environment problem or missing tool; 4 server error;
  141 the reader of our output went away (`imagetools ls IMG:/etc | head -1`).

A closed output pipe is not an error worth a message: the reader stopped on purpose. We exit
quietly with 141 (128 + SIGPIPE), what the shell reports for cat, grep or ls killed by SIGPIPE
in the same spot, so `set -o pipefail` scripts see imagetools like any other tool; not 0,
because the output was cut short (a `verify --json` whose reader vanished has not reported).
Standard output and error are then pointed at /dev/null, so the interpreter's final flush does
not print "Exception ignored ... BrokenPipeError".

Human output goes through `echo`, `warn`, `print_table` (names and messages escaped by
text.escape); --json through `print_envelope` (one shape for every command) and `print_json`
(always valid UTF-8, see there).

Usage errors (unknown option, missing argument, a bad value) are one line like every other error,
`imagetools: error: ... (see imagetools COMMAND --help)`, exit 2, instead of click's three lines.
Global `-q` silences warnings, retry lines and progress; `-v` adds detail (each request's URL).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

import click

from ..envelope import envelope
from ..errors import ImageToolsError, UsageError, VerifyFailed, from_oserror
from .text import escape, for_json

EXIT_PIPE = 128 + 13  # 128 + SIGPIPE, as the shell reports a tool killed by a closed pipe


# Command name -> module defining it. Modules load only when their command runs, so a quick
# command (verify on a flashing station) does not pay for importing httpx, emit, etc.
_COMMAND_MODULES = {
    "inspect": "inspect_cmd",
    "ls": "files_cmd",
    "cat": "files_cmd",
    "cp": "files_cmd",
    "install": "files_cmd",
    "rm": "files_cmd",
    "keygen": "keys_cmd",
    "inject": "keys_cmd",
    "verify": "keys_cmd",
    "emit": "emit_cmd",
    "modify": "config_cmd",
    "config": "config_cmd",
    "login": "server_cmd",
    "preauth": ("server_cmd", "station_cmd"),  # station_cmd adds `preauth merge`
    "flash": "station_cmd",
    "materialize": "station_cmd",
    "station": "line_cmd",
    "ledger": "ledger_cmd",
    "doctor": "doctor_cmd",
    "cache": "cache_cmd",
}


class _Group(click.Group):
    """Loads command modules lazily; turns library errors into one line on stderr and a
    documented exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMAND_MODULES))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in _COMMAND_MODULES:
            modules = _COMMAND_MODULES[name]
            for module in (modules,) if isinstance(modules, str) else modules:
                importlib.import_module(f"{__package__}.{module}")
        return super().get_command(ctx, name)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Flush before exiting, so output still buffered when the reader went away raises here
        (and exits quietly) instead of at interpreter shutdown."""
        try:
            try:
                return super().main(*args, **kwargs)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
        except BrokenPipeError:
            _output_closed()

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        """Usage errors in the global options (`imagetools --bogus`) are one line too."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # bare `imagetools`: click shows the help
        except click.UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `imagetools preauth`: click shows the group's help
        except click.UsageError as exc:  # a subcommand's arguments, parsed inside invoke
            _usage_error(exc)
        except BrokenPipeError:  # before OSError: not "imagetools: error: Broken pipe"
            _output_closed()
        except ImageToolsError as exc:
            _fail(ctx, str(exc), exc.exit_code)
        except OSError as exc:  # one we did not expect: named as well as we can
            where = f" ({exc.filename})" if exc.filename else ""
            error = from_oserror(exc, "operating system error" + where, UsageError)
            _fail(ctx, str(error), error.exit_code)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    if (ctx.obj or {}).get("debug"):
        raise
    echo(f"imagetools: error: {message}", err=True)
    ctx.exit(code)


def _usage_error(exc: click.UsageError) -> NoReturn:
    """click's message as one line, with the command whose --help explains the options."""
    message = exc.format_message().rstrip(".").replace(". Did you mean", "; did you mean")
    message = message[:1].lower() + message[1:] if message[:2] != message[:2].upper() else message
    where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
    echo(f"imagetools: error: {message}{where}", err=True)
    sys.exit(exc.exit_code)


def _output_closed() -> NoReturn:
    """Exit quietly with EXIT_PIPE; what is still buffered goes to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except io.UnsupportedOperation:  # an in-memory stream (tests, embedding): nothing to flush
            pass
    os.close(devnull)
    sys.exit(EXIT_PIPE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="IMAGETOOLS_DEBUG", help="Show tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No warnings, retry lines or progress (errors still show).")
@click.option("-v", "--verbose", is_flag=True, help="More detail, e.g. each server request's method and URL.")
@click.version_option(package_name="imagetools")
@click.pass_context
def main(ctx: click.Context, debug: bool, quiet: bool, verbose: bool) -> None:
    """Personalize Mender disk images: inspect, edit files in place, inject and verify device keys,
    emit per-device images, preauthorize devices on the Mender Server.

    Exit codes: 0 ok, 1 check failed, 2 bad input, 3 environment/tool missing, 4 server error.
    Shell completion: eval "$(_IMAGETOOLS_COMPLETE=bash_source imagetools)" (zsh_source, fish_source).
    """
    if quiet and verbose:
        raise click.UsageError("give -q or -v, not both", ctx)
    ctx.ensure_object(dict).update(debug=debug, quiet=quiet, verbose=verbose)


def _flag(name: str) -> bool:
    """A global option (-q, -v) of the running command; False outside a command (library use)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and (ctx.find_root().obj or {}).get(name))


def quiet() -> bool:
    return _flag("quiet")


def verbose() -> bool:
    return _flag("verbose")


def print_envelope(command: str, ok: bool, items: list[Any], summary: dict[str, Any], **facts: Any) -> None:
    """The library's envelope (imagetools.envelope), printed; `envelope` is re-exported here for
    the commands that build one to print it later."""
    print_json(envelope(command, ok, items, summary, **facts))


def print_json_line(data: Any) -> None:
    """print_json on one line, flushed at once: a reply to a program that waits for it."""
    click.echo(json.dumps(for_json(data), sort_keys=False))
    sys.stdout.flush()


def print_json(data: Any) -> None:
    """Print `data` as JSON that is always valid UTF-8 (in fact ASCII: non-ASCII characters and
    controls are \\u-escaped, so it is also safe on a terminal).

    Strings are exact, including names with control characters. A name that is not valid UTF-8
    in the image cannot be a JSON string; then KEY (e.g. "name", "path", "target") holds its
    escaped form, as `ls` prints it (`bad\\xff`), and KEY_b64 the exact bytes in base64. KEY_b64
    appears only then, so a consumer takes KEY_b64 when present and KEY otherwise. Strings in
    lists (e.g. "warnings") have no sibling: they are escaped only."""
    click.echo(json.dumps(for_json(data), indent=2, sort_keys=False))


def print_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], styles: dict[int, Callable[[str], str]] | None = None
) -> None:
    """A plain aligned table; cells are str()-ed and escaped (they hold names from images),
    None shows as '-'. `styles` colours the cells of some columns (see `status_style`) after
    padding, so escape codes never shift the columns."""
    cells = [[("-" if c is None else escape(str(c))) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    styles = styles or {}

    def line(row: Sequence[str], styled: bool) -> str:
        padded = [cell.ljust(w) for cell, w in zip(row, widths)]
        if styled:
            padded = [styles[i](p) if i in styles else p for i, p in enumerate(padded)]
        return "  ".join(padded).rstrip()

    click.echo(line(headers, False))
    for row in cells:
        click.echo(line(row, True))


_STATUS_COLOURS = {"PASS": "green", "FAIL": "red", "WARN": "yellow", "OK": "green", "FAILED": "red"}


def colour_wanted() -> bool:
    """Colour only for a person: stdout is a terminal and NO_COLOR (no-color.org) is not set."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def status_style(cell: str) -> str:
    """PASS green, FAIL red, WARN yellow (padding kept), when colour_wanted(); else unchanged."""
    colour = _STATUS_COLOURS.get(cell.strip())
    return click.style(cell, fg=colour, bold=(colour == "red") or None) if colour and colour_wanted() else cell


def echo(message: str = "", *, err: bool = False) -> None:
    """click.echo for one human-readable line: names quoted in it cannot reach the terminal raw
    (control characters, newlines included, are escaped; backslashes kept; see text.escape)."""
    click.echo(escape(message, backslash=False), err=err)


def units_failed(failed: list[tuple[str, str]], total: int, what: str, after: str = "") -> NoReturn:
    """How every batch command (emit, preauth push/status) reports units that did not make it:
    one line, exit 1, the first of them with its reason."""
    name, why = failed[0]
    raise VerifyFailed(f"{len(failed)} of {total} unit(s) {what}, e.g. {name}: {why}{after}")


def warn(message: str) -> None:
    """One warning line on stderr; none with -q."""
    if not quiet():
        echo(f"imagetools: warning: {message}", err=True)


def is_tty() -> bool:
    """Whether progress may be drawn: stderr is a terminal and -q was not given."""
    return sys.stderr.isatty() and not quiet()
