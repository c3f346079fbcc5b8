"""Command-line interface: a thin click layer over the library.

Commands live in modules loaded on demand (see base._COMMAND_MODULES).
"""

from .base import main

__all__ = ["main"]
