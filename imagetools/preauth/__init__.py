"""Preauthorize units on the Mender Server and report the server's view of them.

The preauth file format and identities (no server client, no httpx: emit and merge write and
read these files) are imported here; the server operations are modules of their own:

- `units`: the preauth file (Unit, Entry, load_units, render, render_csv);
- `identity`: identities as the client sends them, the JSON policy of these files;
- `push`: preauthorize every unit through an API version (server.api.PreauthApi);
- `status`: the server's view of every unit, with diagnoses of "pending";
- `remove`: take our auth sets (or devices) off the server;
- `leftbehind`: preauthorizations a fixed typo left on the server;
- `shipped`: what the station ledger says of the keys (push what shipped, remove what is retired);
- `runs`: several requests in flight, and what aborts a run.
"""

from __future__ import annotations

from .identity import identity_problems, load_identity
from .units import Entry, Unit, load_target_units, load_units, parse_units, render, render_csv, spreadsheet_safe

__all__ = [
    "Entry",
    "Unit",
    "identity_problems",
    "load_identity",
    "load_target_units",
    "load_units",
    "parse_units",
    "render",
    "render_csv",
    "spreadsheet_safe",
]
