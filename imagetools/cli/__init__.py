"""Command-line interface: a thin click layer over the library."""

from .base import main
from . import files  # noqa: F401
from . import keys_cmd  # noqa: F401
from . import server_cmd  # noqa: F401
from . import inspect_cmd  # noqa: F401
from . import emit_cmd  # noqa: F401

__all__ = ["main"]
