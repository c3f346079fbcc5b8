"""The docs: the site builds with `mkdocs build --strict` (a broken link or anchor, a page missing
from the nav, any warning fails it), the README stays short and its links resolve, and every
command's --help stands on its own and names its page under docs/."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from imagetools.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 200
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
PAGE_REF = re.compile(r"docs/[\w./-]+\.md")


def test_mkdocs_strict_build_has_no_warning(tmp_path: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0 and not warnings, output
    assert (tmp_path / "site" / "index.html").is_file()


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the detail to a page under docs/"
    )


def _slug(heading: str) -> str:
    """The anchor mkdocs' toc extension makes of a heading (its default slugify)."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text).strip("-")


def _anchors(markdown: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", markdown.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)}


def test_slug_matches_mkdocs() -> None:
    assert _slug("Units as deltas (`emit --format delta`)") == "units-as-deltas-emit-format-delta"
    assert _slug("Quiet, verbose, colour, shell completion") == "quiet-verbose-colour-shell-completion"


def test_readme_relative_links_resolve() -> None:
    broken = []
    for target in LINK.findall(README.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / path) if path else README
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {path or 'README.md'}")
    assert not broken, "README.md links that do not resolve:\n" + "\n".join(broken)


def _names() -> list[str]:
    """The top-level commands, without importing their modules (a broken one fails its own test)."""
    return main.list_commands(click.Context(main))


def _load(group: click.Group, ctx: click.Context, name: str) -> click.Command:
    try:
        command = group.get_command(ctx, name)
    except ModuleNotFoundError as exc:
        pytest.skip(f"the module of `{name}` is not there yet: {exc}")
    assert command is not None, f"`{ctx.command_path} {name}` is listed but not defined"
    return command


def _helps(name: str) -> dict[str, str]:
    """`imagetools NAME --help` and, for a group, each subcommand's, by command line."""
    root = click.Context(main, info_name="imagetools")
    command = _load(main, root, name)
    ctx = click.Context(command, info_name=name, parent=root)
    helps = {ctx.command_path: command.get_help(ctx)}
    if isinstance(command, click.Group):
        for sub in command.list_commands(ctx):
            subcommand = _load(command, ctx, sub)
            subctx = click.Context(subcommand, info_name=sub, parent=ctx)
            helps[subctx.command_path] = subcommand.get_help(subctx)
    return helps


def test_every_command_is_listed() -> None:
    assert {"inspect", "verify", "emit", "flash", "preauth", "modify", "materialize"} <= set(_names())


@pytest.mark.parametrize("name", _names())
def test_help_stands_on_its_own(name: str) -> None:
    for command, text in _helps(name).items():
        assert "readme" not in text.lower(), f"`{command} --help` sends the reader to the README: say it in the help"
        pages = PAGE_REF.findall(text)
        assert pages, f"`{command} --help` names no page: end its docstring with 'Full reference: docs/....md'"
        missing = [page for page in pages if not (ROOT / page).is_file()]
        assert not missing, f"`{command} --help` names pages that do not exist: {', '.join(missing)}"


def test_library_api_page_imports_resolve() -> None:
    """docs/api.md stays true while modules move: every name its snippets import exists."""
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = []
    for module_name, names in re.findall(r"^from (imagetools[\w.]*) import (.+)$", text, flags=re.M):
        module = importlib.import_module(module_name)
        for name in (n.strip() for n in names.split(",")):
            if not hasattr(module, name) and importlib.util.find_spec(f"{module_name}.{name}") is None:
                missing.append(f"{module_name}.{name}")
    assert not missing, "docs/api.md imports names that do not exist: " + ", ".join(missing)
