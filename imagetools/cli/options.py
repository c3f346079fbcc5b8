"""Click options shared by commands that work on an image's partitions."""

from __future__ import annotations

import functools
from typing import Any, Callable

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
        wrapper = click.option(f"--{role}-partition", params[role], type=click.IntRange(min=1),
                               metavar="N", help=f"Use partition N as the {title} partition "
                               "instead of detecting it.")(wrapper)
    return wrapper
