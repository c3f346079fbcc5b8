"""What the station ledger says of a batch's keys (imagetools.preauth.shipped), over a real SQLite
ledger written through the ledger API: which keys shipped and which are retired, the push
selection, and the removal targets of retired units with or without their preauth files."""

from __future__ import annotations

import os

import pytest
from support.postgres import server_or_skip

from imagetools import keys
from imagetools.errors import UsageError
from imagetools.preauth.shipped import LedgerKeys, Selection, ledger_beside, read_ledger, retired_targets, select
from imagetools.preauth.units import Unit
from imagetools.station.ledger import UnitEntry, open_ledger

BASE = "b" * 64


def _unit(number: int) -> Unit:
    return Unit(f"u{number}", {"mac": f"m{number}"}, keys.generate(keys.KeySpec("ed25519")).public_key())


def _ledger(path, units: list[Unit], states: dict[str, str]) -> None:
    """Register `units` and end one attempt per unit named in `states` as that state."""
    with open_ledger(path, station="st1") as led:
        led.register(UnitEntry(u.name, u.fingerprint, dict(u.identity), BASE) for u in units)
        for unit in units:
            if unit.name in states:
                attempt = led.begin(
                    unit=unit.name,
                    fingerprint=unit.fingerprint,
                    base_sha256=BASE,
                    target=f"/dev/{unit.name}",
                    serial=None,
                    pinned=True,
                    identity=dict(unit.identity),
                )
                led.end(attempt, states[unit.name])


def test_a_ledger_that_does_not_exist_is_refused(tmp_path):
    missing = tmp_path / "ledger.sqlite"
    with pytest.raises(UsageError) as refused:
        read_ledger(missing)
    assert str(refused.value) == (
        f"ledger {missing} does not exist; name the ledger the stations write "
        "(OUT/ledger.sqlite, or the line's postgresql:// URL)"
    )
    assert not os.path.lexists(missing)


def test_read_ledger_takes_passed_and_retired_keys_by_fingerprint(tmp_path):
    units = [_unit(i) for i in range(5)]
    ledger = tmp_path / "ledger.sqlite"
    _ledger(ledger, units, {"u0": "passed", "u1": "failed", "u2": "interrupted"})
    keys_ = read_ledger(ledger)
    assert keys_.where == str(ledger)
    assert keys_.passed == frozenset({units[0].fingerprint})
    assert keys_.retired == frozenset({units[1].fingerprint, units[2].fingerprint})
    assert [(r["name"], r["unit_state"]) for r in keys_.rows] == [
        ("u0", "passed"),
        ("u1", "retired"),
        ("u2", "retired"),
        ("u3", "free"),
        ("u4", "free"),
    ]


def test_a_postgresql_ledger_is_read_by_its_url():
    """A URL names no file: it is read, not refused as a ledger that does not exist."""
    units = [_unit(i) for i in range(2)]
    with server_or_skip() as pg:
        where = pg.create_schema("shipped")
        _ledger(where, units, {"u0": "passed", "u1": "failed"})
        keys_ = read_ledger(where)
    assert (keys_.passed, keys_.retired) == (frozenset({units[0].fingerprint}), frozenset({units[1].fingerprint}))
    assert keys_.where.startswith("postgresql://") and "shipped" in keys_.where


def test_a_ledger_beside_the_preauth_file_or_in_the_out_directory(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "preauth.json").write_text("[]")
    assert ledger_beside(out) is None
    assert ledger_beside(out / "preauth.json") is None
    (out / "ledger.sqlite").symlink_to(tmp_path / "nowhere")  # there, if dangling: read_ledger says so
    assert ledger_beside(out) == out / "ledger.sqlite"
    assert ledger_beside(out / "preauth.json") == out / "ledger.sqlite"
    monkeypatch.chdir(tmp_path)
    assert ledger_beside("out") == out / "ledger.sqlite"


def _keys(passed: list[Unit], retired: list[Unit], rows: tuple = ()) -> LedgerKeys:
    return LedgerKeys("L", frozenset(u.fingerprint for u in passed), frozenset(u.fingerprint for u in retired), rows)


def test_select_pushes_what_shipped_or_all_but_the_retired():
    units = [_unit(i) for i in range(4)]
    ledger = _keys([units[0]], [units[1]])
    shipped = select(units, ledger, shipped_only=True)
    assert (shipped.push, shipped.not_flashed, shipped.retired) == ([units[0]], units[2:], [units[1]])
    assert shipped.counts() == {"not-flashed": 2, "retired": 1}
    ahead = select(units, ledger, shipped_only=False)
    assert ahead == Selection([units[0], units[2], units[3]], [], [units[1]])
    assert ahead.counts() == {"not-flashed": 0, "retired": 1}


def test_retired_targets_of_preauth_files_hold_their_keys(tmp_path):
    units = [_unit(i) for i in range(3)]
    targets, unknown = retired_targets(_keys([units[0]], [units[1], units[2]]), units)
    assert [(t.identity, t.keys, t.name) for t in targets] == [
        (units[1].identity, (units[1].pubkey,), "u1"),
        (units[2].identity, (units[2].pubkey,), "u2"),
    ]
    assert unknown == []
    assert retired_targets(_keys([], [units[0]]), []) == ([], [])


def _row(name, fingerprint, identity, unit_state="retired") -> dict:
    return {"name": name, "fingerprint": fingerprint, "identity": identity, "unit_state": unit_state}


def test_retired_targets_of_the_ledger_alone_go_by_identity_and_fingerprint():
    fa, fb, fc, fd = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    rows = (
        _row("u1", fa, {"mac": "m1"}),
        _row("u2", fb, {"mac": "m2"}, "passed"),
        _row("u3", None, {"mac": "m3"}),
        _row("u4", fc, {"mac": "m1"}),  # re-emitted under the same identity
        _row(None, fd, {"mac": "m5"}),
    )
    targets, unknown = retired_targets(LedgerKeys("L", frozenset(), frozenset(), rows))
    assert [(t.identity, t.name, t.fingerprints, t.keys) for t in targets] == [
        ({"mac": "m1"}, "u1", (fa, fc), ()),
        ({"mac": "m5"}, None, (fd,), ()),
    ]
    assert targets[0].identity is not rows[0]["identity"]
    assert unknown == []


def test_retired_units_that_cannot_be_looked_up_are_named():
    rows = (
        _row("u1", "a" * 64, None),
        _row("u2", "b" * 64, {}),
        _row("u3", "c" * 64, {"serial": 12}),
        _row(None, "d" * 64, {"mac": 1}),
        _row("u5", "e" * 64, {"mac": "m5"}),
        _row("u6", "f" * 64, None, "passed"),
    )
    targets, unknown = retired_targets(LedgerKeys("L", frozenset(), frozenset(), rows))
    assert [t.name for t in targets] == ["u5"]
    assert unknown == ["u1", "u2", "u3", "d" * 16]


def test_retired_targets_from_a_real_ledger(tmp_path):
    units = [_unit(i) for i in range(3)]
    ledger = tmp_path / "ledger.sqlite"
    _ledger(ledger, units, {"u0": "passed", "u1": "failed"})
    targets, unknown = retired_targets(read_ledger(ledger))
    assert [(t.identity, t.name, t.fingerprints) for t in targets] == [({"mac": "m1"}, "u1", (units[1].fingerprint,))]
    assert unknown == []
