"""Batch emission: one verified, ready-to-flash image per unit, plus the preauthorization files.

Per unit: key → the data partition copied from the base and the key injected (e2fsck on it) →
the rest of the base copied (reflink or sparse) → the other checks → bmap and image SHA-256 in
one pass → written back with its batch → published. (runner.run says why in that order.)
Everything of a unit is built in OUT/.imagetools-tmp/ and published by renaming its directory to
OUT/<name>, so a run killed at any moment leaves no unit that looks complete; the next run removes
the leftovers, skips published units after a cheap re-check and finishes the rest. OUT's state
file records the base image and the settings so a changed base or changed key settings are noticed
(refused unless force). Keys of published units are never regenerated: force re-emits a published
unit with the key it already has (from private.key, or from its image if the private key files
were discarded).

The modules: emitter (emit and dry_run), model (options, results, vocabularies), state (what OUT
remembers: unit.json and the state file), plan (checks and jobs before any work), unit (a unit's
two stages), runner (workers and publishing), outdir (OUT's lock, temporary directory and
renames), batch (preauth and report files). The names below load with their module on first use:
whatever reads what emit wrote (published units on a flashing station: emit.state) imports this
package, and must not pay for the emitter (config, devices, the worker pool: ~30 ms).

Per-unit configuration (EmitOptions.modify, unit_files) is applied after the key and before the
checks, in stage 1; it is checked once against the base first (_check_configuration). dry_run
plans a run and writes nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name and the module it lives in.
_EXPORTS = {
    "emit": ".emitter",
    "dry_run": ".emitter",
    "shard": ".plan",
    "EmitOptions": ".model",
    "EmitResult": ".model",
    "UnitResult": ".model",
    "Status": ".model",
    "UnitFormat": ".model",
    "KeySource": ".model",
    "UnitFile": ".model",
    "DryRun": ".model",
    "PlannedUnit": ".model",
    "Progress": ".model",
    "STATE_FILE": ".state",
    "UNIT_FILE": "..unitformat",
    "LOCK_FILE": ".outdir",
    "TMP_DIR": ".outdir",
    "BATCH_FILES": ".batch",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """A public name, imported from its module the first time it is asked for (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
