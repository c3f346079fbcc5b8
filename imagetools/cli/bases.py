"""Compressed and remote bases at the command line: one decorator for the commands that read a
base (it resolves the argument to an uncompressed local file through basecache.resolve), and the
guards of the commands that write an image in place."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import UsageError
from .base import is_tty, warn

T = TypeVar("T")


class _Source(click.ParamType):
    """A local path (a Path, as before) or, for the commands that take one, an http(s) URL kept
    as text (click.Path would fold its '//')."""

    name = "path"

    def __init__(self, remote: bool):
        self.remote = remote

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..remote import is_url

        text = os.fspath(value)
        if is_url(text):
            if not self.remote:
                self.fail("remote bases (http(s)://) are taken by emit --base and flash; download it first", param, ctx)
            return text
        return Path(text)


def base_input(*names: str, remote: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """For a command whose arguments `names` are images it reads: each may be compressed (or,
    with remote, a URL); the command receives the path of the uncompressed image. Adds
    --base-cache DIR (and, with remote, --base-sha256 HEX). Goes right under @main.command."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for param in getattr(command, "__click_params__", []):
            if param.name in names:
                param.type = _Source(remote)

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cache = kwargs.pop("base_cache")
            sha256 = kwargs.pop("base_sha256") if remote else None
            sources = []
            for name in names:
                if kwargs.get(name) is not None:
                    given, kwargs[name] = kwargs[name], Path(local_base(kwargs[name], sha256=sha256, cache_dir=cache))
                    sources += [given] if kwargs[name] != given else []
            _never_an_output(sources, [v for k, v in kwargs.items() if k not in names])
            return command(*args, **kwargs)

        wrapper = click.option(
            "--base-cache",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            metavar="DIR",
            help="Where compressed and remote bases are kept decompressed "
            "(default $IMAGETOOLS_BASE_CACHE, else $XDG_CACHE_HOME/imagetools/bases).",
        )(wrapper)
        if remote:
            wrapper = click.option(
                "--base-sha256",
                metavar="HEX",
                default=None,
                help="SHA-256 of a remote base as served (required unless URL.sha256 is beside it on the server).",
            )(wrapper)
        return wrapper

    return decorate


def _never_an_output(sources: list[Any], others: list[Any]) -> None:
    """A compressed base is read through its cache entry, so the command's own checks (a flash
    target is never the base) see the entry: the compressed original must not be any other
    argument either."""
    originals = {_identity(s): s for s in sources if isinstance(s, Path) and _identity(s)}
    for value in _flat(others):
        known = originals.get(_identity(Path(value)))
        if known is not None:
            raise UsageError(f"{value} is the base {known}: it is only ever read; give another file")


def _flat(values: list[Any]) -> list[str | Path]:
    found: list[str | Path] = []
    for value in values:
        if isinstance(value, (tuple, list)):
            found += _flat(list(value))
        elif isinstance(value, (str, Path)) and value:
            found.append(value)
    return found


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def local_base(
    source: str | os.PathLike, *, sha256: str | None = None, cache_dir: str | os.PathLike | None = None
) -> str:
    """basecache.resolve with a progress line on a terminal and warnings on stderr."""
    from ..basecache import resolve

    bar = _Progress(os.fspath(source)) if is_tty() else None
    try:
        return resolve(source, sha256=sha256, progress=bar, warn=warn, cache_dir=cache_dir)
    finally:
        if bar is not None:
            bar.close()


def refuse_compressed(image: str | os.PathLike, command: str) -> None:
    """Commands that write in place cannot write into a compressed file."""
    from ..basecache import is_compressed

    fmt = is_compressed(image)
    if fmt is not None:
        raise UsageError(
            f"{image} is {fmt.name}-compressed and {command} writes in place: decompress it "
            f"first ({fmt.decompress[0]} -dc {image} | cp --sparse=always /dev/stdin NEW.sdimg)"
        )


def for_writing(image: Path, out: Path | None, force: bool, command: str) -> tuple[Path, Path | None, Callable[[T], T]]:
    """(image to read, where the command writes, publish). A compressed IMAGE needs --out (it is
    read through the base cache); an --out whose name asks for compression (NEW.sdimg.xz) is
    written uncompressed beside it first, and publish(result) compresses it into place."""
    from ..basecache import is_compressed
    from ..image.compressed import by_name

    fmt = is_compressed(image)
    if fmt is not None:
        if out is None:
            raise UsageError(
                f"{image} is {fmt.name}-compressed: {command} cannot change it in place; give "
                "--out NEW.sdimg (or NEW.sdimg.xz, .gz, .zst ... for a compressed result)"
            )
        if out is not None and _identity(out) is not None and _identity(out) == _identity(image):
            raise UsageError(f"--out {out} is the input image; it is only ever read: give another file")
        image = Path(local_base(image))
    wanted = by_name(out) if out is not None else None
    if out is None or wanted is None:
        return image, out, lambda result: result
    if os.path.lexists(out) and not force:
        raise UsageError(f"{out} exists; use --force to overwrite")
    plain = out.with_name(f".{out.name}.uncompressed-{os.getpid()}{_image_suffix(out)}")

    def publish(result: T) -> T:
        from ..image.compressed import compress_to

        try:
            compress_to(plain, out, wanted, exclusive=not force)
        finally:
            plain.unlink(missing_ok=True)
        return dataclasses.replace(result, image=str(out))  # type: ignore[type-var]

    return image, plain, publish


def _image_suffix(out: Path) -> str:
    """The uncompressed name's suffix (mender-artifact accepts only .sdimg/.uefiimg/.img)."""
    from ..image.compressed import strip_suffix

    return Path(strip_suffix(out.name)).suffix or ".img"


class _Progress:
    """One line on stderr, redrawn: phase, percent, MB/s (at most 5 times a second)."""

    def __init__(self, name: str):
        self.name, self.started, self.last, self.drawn = name[-40:], time.monotonic(), 0.0, False

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and done < total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-6) / 1e6
        share = f"{100 * done // total:3d}%" if total else "    "
        sys.stderr.write(f"\r{self.name}: {phase} {share} {rate:7.1f} MB/s ")
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
