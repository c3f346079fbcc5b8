"""The user's configuration file: defaults for the server connection, like mender-cli's profile.

`~/.config/imagetools/config.toml` (`$XDG_CONFIG_HOME/imagetools/config.toml`), or the file named by
`IMAGETOOLS_CONFIG`:

    [server]
    url = "https://mender.example.com"
    token_file = "~/.config/imagetools/token"   # relative paths: relative to this file
    ca_cert = "private-ca.pem"
    retries = 6

Flags and environment variables always win over it; it only fills what neither gave. A missing
default file is no configuration; a file named by IMAGETOOLS_CONFIG must exist. A malformed file
is one error naming it (exit 2): a typo in a key must not silently fall back to a default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..strict import read_regular

ENV_CONFIG = "IMAGETOOLS_CONFIG"
MAX_CONFIG_BYTES = 64 * 1024  # a few lines; anything larger is not a config file
_TYPES: dict[str, type] = {"url": str, "token_file": str, "ca_cert": str, "retries": int}


@dataclass(frozen=True)
class Profile:
    """The [server] table; None for what the file does not set. Paths are absolute."""

    url: str | None = None
    token_file: str | None = None
    ca_cert: str | None = None
    retries: int | None = None
    source: str | None = None  # the file it came from, for messages


def config_path(env: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """(path, named explicitly): IMAGETOOLS_CONFIG, else the XDG default."""
    env = os.environ if env is None else env
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser().absolute(), True
    base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return (base / "imagetools" / "config.toml").absolute(), False


def load_profile(env: dict[str, str] | None = None) -> Profile:
    """The configuration file's server defaults (an empty Profile when there is no file)."""
    path, explicit = config_path(env)
    if not explicit and not path.exists():
        return Profile()
    if not path.exists():  # only a file named by IMAGETOOLS_CONFIG gets here missing
        raise UsageError(f"config file {path} (from {ENV_CONFIG}) not found")
    raw = read_regular(path, MAX_CONFIG_BYTES, "config file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError is a ValueError
        raise UsageError(f"config file {path}: {exc}") from None
    return _profile(data, path)


def _profile(data: dict[str, Any], path: Path) -> Profile:
    unknown = sorted(set(data) - {"server"})
    server = data.get("server", {})
    if unknown or not isinstance(server, dict):
        raise UsageError(
            f"config file {path}: only a [server] table is known"
            + (f" (found {', '.join(unknown)})" if unknown else "")
        )
    problems = [f"unknown key server.{key} (known: {', '.join(_TYPES)})" for key in server if key not in _TYPES]
    problems += [
        f"server.{key} must be {'an integer' if kind is int else 'a string'}"
        for key, kind in _TYPES.items()
        if key in server and (type(server[key]) is not kind)
    ]
    if isinstance(server.get("retries"), int) and server["retries"] < 0:
        problems.append("server.retries must be 0 or more")
    if problems:
        raise UsageError(f"config file {path}: " + "; ".join(problems))
    paths = {
        key: str((path.parent / Path(server[key]).expanduser()).absolute())
        for key in ("token_file", "ca_cert")
        if key in server
    }
    return Profile(url=server.get("url"), retries=server.get("retries"), source=str(path), **paths)
