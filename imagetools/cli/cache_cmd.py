"""`imagetools cache list|clear`: the decompressed and downloaded bases kept by basecache."""

from __future__ import annotations

from pathlib import Path

import click

from ..units import human_size
from .base import echo, main, print_envelope, print_table

_DIR = click.option(
    "--base-cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="The cache directory (default $IMAGETOOLS_BASE_CACHE, else $XDG_CACHE_HOME/imagetools/bases).",
)


@main.group("cache")
def cache_group() -> None:
    """The base cache: compressed and remote bases, decompressed once (sparse) and kept, named by
    the SHA-256 of the file they came from; bounded by IMAGETOOLS_BASE_CACHE_MAX bytes on disk.

    Full reference: docs/bases.md
    """


@cache_group.command("list")
@_DIR
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cache_list(base_cache: Path | None, as_json: bool) -> None:
    """The entries, most recently used first.

    Full reference: docs/bases.md
    """
    from ..basecache import cache_root, entries

    found = entries(base_cache)
    root = str(cache_root(base_cache))
    if as_json:
        print_envelope(
            "cache.list",
            True,
            [
                {
                    "sha256": e.sha256,
                    "path": str(e.path),
                    "size": e.size,
                    "allocated": e.allocated,
                    "format": e.format,
                    "source": e.source,
                    "last_used": e.last_used,
                }
                for e in found
            ],
            {"entries": len(found), "allocated": sum(e.allocated for e in found)},
            cache=root,
        )
        return
    echo(
        f"{root}: {len(found)} entr{'y' if len(found) == 1 else 'ies'}, "
        f"{human_size(sum(e.allocated for e in found))} on disk"
    )
    if found:
        print_table(
            ["SHA256", "SIZE", "ON DISK", "FORMAT", "SOURCE"],
            [(e.sha256[:16], human_size(e.size), human_size(e.allocated), e.format, e.source) for e in found],
        )


@cache_group.command("clear")
@_DIR
def cache_clear(base_cache: Path | None) -> None:
    """Remove every entry (the next use of a compressed or remote base makes it again).

    Full reference: docs/bases.md
    """
    from ..basecache import cache_root, clear

    count, freed = clear(base_cache)
    echo(f"{cache_root(base_cache)}: removed {count} file(s), {human_size(freed)} freed")
