"""Command-line interface: a thin click layer over the library."""

from .base import main

__all__ = ["main"]
