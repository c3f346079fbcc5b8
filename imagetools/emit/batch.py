"""The batch files beside the units, removed when a run starts work and written at its end:
preauth.json and preauth.csv (in imagetools.preauth's format) and report.json."""

from __future__ import annotations

import json
from pathlib import Path

from .model import EmitResult, Status, UnitResult
from .outdir import write_text
from .plan import other_units

BATCH_FILES = ("report.json", "preauth.json", "preauth.csv")


def write_preauth_files(out: Path, units: list[UnitResult]) -> None:
    """preauth.json/.csv list every unit published in OUT, by this run or an earlier one with
    another device list (pushing them must not leave a batch pending)."""
    from .. import preauth  # it loads the server client: only the parent pays for that, at the end

    listed = [(u.name, u.identity, u.fingerprint) for u in units if u.status != Status.FAILED]
    others = other_units(out, {u.name for u in units})
    listed += [(unit_dir.name, r.identity, r.fingerprint) for unit_dir, r in others]
    entries = [
        preauth.Entry(name, identity, (out / name / "public.key").read_text(), fingerprint)
        for name, identity, fingerprint in listed
    ]
    write_text(out / "preauth.json", preauth.render(entries))
    write_text(out / "preauth.csv", preauth.render_csv(entries))


def write_report(out: Path, result: EmitResult) -> None:
    """report.json: this run's units."""
    write_text(out / "report.json", json.dumps(result.to_dict(), indent=2) + "\n")
