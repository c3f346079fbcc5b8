"""The ledger's rules, the edges scripts/mutation found untested: a row exported as the flash JSON
names it (whatever the database holds), the report's row per unit, and the exact refusal of a unit
that may not be flashed now."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import time

import pytest

from imagetools.errors import UsageError
from imagetools.station.ledger import open_ledger
from imagetools.station.ledger_rules import (
    MAX_TEXT,
    deciding_attempt,
    derive_unit_state,
    export,
    refuse_taken,
    report_rows,
)

FP = hashlib.sha256(b"u1").hexdigest()
BASE = hashlib.sha256(b"base").hexdigest()
ROW = {
    "id": 7, "unit": "u1", "fingerprint": FP, "identity": '{"mac": "02:00"}', "base_sha256": BASE,
    "target": "/dev/sdx", "serial": "SN1", "station": "st1", "host": "h1", "slot": "slot-1", "pinned": 1,
    "started": "2026-01-01T00:00:00.000Z", "ended": "2026-01-01T00:01:00.000Z", "state": "passed",
    "error": None, "bytes_written": 4096, "zeroing": "journal", "checks": '[{"name": "fsck"}]',
    "times": '{"write": 1.5}',
}  # fmt: skip


def _attempt(**changes) -> dict:
    return export({**ROW, **changes})


def test_a_row_is_exported_with_every_field():
    assert export(ROW) == {
        "attempt": 7, "unit": "u1", "fingerprint": FP, "identity": {"mac": "02:00"}, "base_sha256": BASE,
        "target": "/dev/sdx", "serial": "SN1", "station": "st1", "host": "h1", "slot": "slot-1", "pinned": True,
        "started": "2026-01-01T00:00:00.000Z", "ended": "2026-01-01T00:01:00.000Z",
        "time": "2026-01-01T00:00:00.000Z", "state": "passed", "ok": True, "error": None, "bytes_written": 4096,
        "zeroing": "journal", "checks": [{"name": "fsck"}], "times": {"write": 1.5},
    }  # fmt: skip


def test_an_edited_row_comes_back_checked():
    edited = _attempt(id="7", pinned=0, state="failed", bytes_written=True, identity="[1]", checks="{",
                      times=None, error=b"bad\xffbytes\nsecond line", unit="  u1 \t x ", target=7)  # fmt: skip
    assert edited["attempt"] is None and edited["pinned"] is False and edited["ok"] is False
    assert edited["bytes_written"] is None and edited["identity"] is None and edited["checks"] is None
    assert edited["times"] is None
    assert edited["error"] == "bad\ufffdbytes second line"
    assert edited["unit"] == "u1 x" and edited["target"] == "7"
    assert _attempt(error="x" * (MAX_TEXT + 5))["error"] == "x" * MAX_TEXT
    assert _attempt(pinned=True)["pinned"] is True


def test_key_material_never_leaves_the_ledger_in_an_export():
    key = "-----BEGIN PRIVATE KEY-----\nMIIabc+/=\n-----END PRIVATE KEY-----"
    assert _attempt(error=f"before {key} after")["error"] == "before [key material removed] after"
    assert _attempt(error="cut: -----BEGIN EC PRIVATE KEY-----\nMIIabc")["error"] == "cut: [key material removed]"
    assert _attempt(error="tail:MIIabc\n-----END RSA PRIVATE KEY----- rest")["error"] == (
        "tail:[key material removed] rest"
    )


@pytest.mark.parametrize(
    "states, unit_state",
    [((), "free"), (("refused",), "free"), (("writing",), "free"), (("failed",), "retired"),
     (("interrupted", "refused"), "retired"), (("failed", "passed"), "passed"), (("passed",), "passed")],
)  # fmt: skip
def test_a_unit_state_from_its_attempts(states, unit_state):
    assert derive_unit_state(iter(states)) == unit_state


def test_the_deciding_attempt():
    passed1, passed2 = _attempt(id=1), _attempt(id=2)
    failed, interrupted = _attempt(id=3, state="failed"), _attempt(id=4, state="interrupted")
    writing, refused = _attempt(id=5, state="writing"), _attempt(id=6, state="refused")
    assert deciding_attempt([passed1, failed, passed2, writing]) == ("passed", passed2)
    assert deciding_attempt([refused, interrupted, failed, writing]) == ("interrupted", interrupted)
    assert deciding_attempt([refused, writing, _attempt(id=8, state="writing")]) == ("writing", writing)
    assert deciding_attempt([refused]) == ("free", None)
    assert deciding_attempt([]) == ("free", None)


def _unit(name: str, fingerprint: str | None, identity: str | None = '{"mac": "02:00"}') -> dict:
    return {"name": name, "fingerprint": fingerprint, "identity": identity}


def test_report_rows_per_unit_with_the_attempt_deciding_it():
    other = hashlib.sha256(b"u2").hexdigest()
    attempts = [
        _attempt(id=1, state="refused", error="no"),
        _attempt(id=2, state="failed", error="write error", target="/dev/sdy"),
        _attempt(id=3, unit="u2", fingerprint=other, identity=None, state="passed"),
        _attempt(id=4, unit="u2", fingerprint=other, identity='{"mac": "02:02"}', state="passed"),
        _attempt(id=5, unit="u9", fingerprint=other, identity=None, state="passed"),
    ]
    rows = report_rows([_unit("u1", FP), _unit("u0", hashlib.sha256(b"u0").hexdigest(), None)], attempts)
    assert [r["name"] for r in rows] == ["u0", "u1", "u9"]
    assert rows[0] == {
        "name": "u0", "identity": None, "fingerprint": hashlib.sha256(b"u0").hexdigest(), "state": "free",
        "unit_state": "free", "serial": None, "station": None, "slot": None, "target": None, "started": None,
        "ended": None, "bytes_written": None, "error": None, "attempt": None, "attempts": 0,
    }  # fmt: skip
    assert rows[1] == {
        "name": "u1", "identity": {"mac": "02:00"}, "fingerprint": FP, "state": "failed", "unit_state": "retired",
        "serial": "SN1", "station": "st1", "slot": "slot-1", "target": "/dev/sdy", "started": ROW["started"],
        "ended": ROW["ended"], "bytes_written": 4096, "error": "write error", "attempt": 2, "attempts": 1,
    }  # fmt: skip
    assert (rows[2]["fingerprint"], rows[2]["identity"], rows[2]["attempt"], rows[2]["attempts"]) == (
        other, {"mac": "02:02"}, 5, 3,
    )  # fmt: skip


def test_report_rows_without_fingerprints_are_one_row_sorted_by_name():
    attempts = [_attempt(id=1, unit="b", fingerprint=None, state="failed"), _attempt(id=2, unit="a", fingerprint="")]
    rows = report_rows([], attempts)
    assert [(r["name"], r["fingerprint"], r["attempts"]) for r in rows] == [("a", None, 2)]
    registered = report_rows([_unit("z", None)], attempts)
    assert [(r["name"], r["fingerprint"], r["state"]) for r in registered] == [("z", "", "passed")]
    assert report_rows([_unit("b", "f2"), _unit("a", "f3"), _unit("a", "f1")], []) == sorted(
        report_rows([_unit("a", "f1"), _unit("a", "f3"), _unit("b", "f2")], []),
        key=lambda r: (r["name"], r["fingerprint"]),
    )
    assert [r["fingerprint"] for r in report_rows([_unit("a", "f3"), _unit("a", "f1")], [])] == ["f1", "f3"]


def _refusal(attempts, again=False) -> str:
    with pytest.raises(UsageError) as refused:
        refuse_taken("u1", FP, attempts, again)
    return str(refused.value)


def test_a_retired_unit_is_refused_naming_its_first_retiring_attempt():
    attempts = [_attempt(id=1, state="refused"), _attempt(id=2, state="interrupted", error=None),
                _attempt(id=3, state="failed", error="x")]  # fmt: skip
    assert _refusal(attempts, again=True) == (
        f"unit u1 (key {FP[:16]}...) is retired: attempt 2 onto /dev/sdx at {ROW['started']} ended interrupted "
        "(no error text); its key must never ship on another card, even with --again; flash another unit, "
        "and `imagetools preauth remove` can take this key off the server"
    )
    assert "ended failed (bad card); its key" in _refusal([_attempt(id=4, state="failed", error="bad card")])


def test_a_passed_unit_is_refused_without_again_naming_its_last_pass():
    attempts = [_attempt(id=1), _attempt(id=2, target="/dev/sdz", station="st2")]
    assert _refusal(attempts) == (
        f"unit u1 (key {FP[:16]}...) was already flashed to /dev/sdz at {ROW['started']} (attempt 2, station st2); "
        "--again to flash it once more"
    )
    refuse_taken("u1", FP, attempts, True)


def test_a_unit_being_written_is_refused_naming_the_writer():
    attempts = [_attempt(id=1, state="refused"), _attempt(id=2, state="writing", ended=None)]
    assert _refusal(attempts, again=True) == (
        f"unit u1 (key {FP[:16]}...) is being written by station st1 on host h1 since {ROW['started']} "
        "(attempt 2); flash another unit or wait for it"
    )
    refuse_taken("u1", FP, [_attempt(id=1, state="refused")], False)
    refuse_taken("u1", FP, [], False)


def test_the_ledger_stores_one_clean_line_per_text(tmp_path):
    key = "-----BEGIN PRIVATE KEY-----\nMIIabc\n-----END PRIVATE KEY-----"
    with open_ledger(tmp_path / "ledger.db", station="st1") as ledger:
        attempt = ledger.begin(unit="u1", fingerprint=FP, base_sha256=BASE, target="/dev/sdx\nnext", serial=None,
                               pinned=False, identity={"mac": key})  # fmt: skip
        ledger.end(attempt, "failed", error=f"write\n{key}", zeroing=" journal ", bytes_written=5,
                   checks=[{"detail": key, key: (1, None)}], times={"write": 2})  # fmt: skip
        record = ledger.record(attempt)
    assert record["target"] == "/dev/sdx next" and record["error"] == "write [key material removed]"
    assert record["zeroing"] == "journal" and record["bytes_written"] == 5 and record["times"] == {"write": 2}
    assert record["identity"] == {"mac": "[key material removed]"}
    assert record["checks"] == [{"detail": "[key material removed]", "[key material removed]": [1, None]}]
    assert json.loads(json.dumps(record)) == record
    assert record["started"].endswith("Z") and len(record["started"]) == len("2026-01-01T00:00:00.000Z")


def test_report_rows_without_a_name_or_fingerprint_sort_first():
    rows = report_rows([_unit("A", "f2"), _unit(None, "f1")], [])
    assert [r["name"] for r in rows] == [None, "A"]
    rows = report_rows([_unit("a", "A")], [_attempt(id=1, unit="a", fingerprint=None)])
    assert [r["fingerprint"] for r in rows] == [None, "A"]


def test_identities_are_stored_with_sorted_names(tmp_path):
    with open_ledger(tmp_path / "ledger.db", station="st1") as ledger:
        attempt = ledger.begin(unit="u1", fingerprint=FP, base_sha256=BASE, target="/dev/sdx", serial=None,
                               pinned=False, identity={"b": "1", "a": "2"})  # fmt: skip
        assert list(ledger.record(attempt)["identity"]) == ["a", "b"]


def test_a_digest_that_is_not_lowercase_hex_is_quoted_in_the_refusal(tmp_path):
    with open_ledger(tmp_path / "ledger.db", station="st1") as ledger, pytest.raises(UsageError) as refused:
        ledger.begin(unit="u1", fingerprint=FP.upper(), base_sha256=BASE, target="/dev/sdx", serial=None, pinned=False)
    assert str(refused.value) == f"fingerprint {FP.upper()!r} is not a SHA-256 digest in lowercase hex (64 digits)"


def _start(pid: int) -> int:
    """Field 22 of /proc/PID/stat, read after the last ')' (the name may hold anything)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return int(fh.read().rpartition(b")")[2].split()[19])


def _writing_as(path, pid: int, start: int) -> list[int]:
    """A 'writing' attempt of this host handed to process `pid` (started at `start`), then reaped."""
    with open_ledger(path, station="st1") as ledger:
        attempt = ledger.begin(unit="u1", fingerprint=FP, base_sha256=BASE, target="/dev/sdx", serial=None,
                               pinned=False, again=True)  # fmt: skip
        assert ledger.reap() == []  # our own process runs
        with sqlite3.connect(path) as db:
            db.execute("UPDATE attempts SET pid = ?, pid_start = ? WHERE id = ?", (pid, start, attempt))
        db.close()
        return ledger.reap()


def test_a_running_process_keeps_its_attempt_whatever_its_name(tmp_path):
    assert _writing_as(tmp_path / "a.db", 1, _start(1)) == []  # init, pid 1
    assert _writing_as(tmp_path / "b.db", 1, _start(1) + 1) == [1]  # a reused pid: another start time
    odd = tmp_path / "x) Z 1 2 3"
    odd.symlink_to(shutil.which("sleep"))
    proc = subprocess.Popen([str(odd), "30"])
    try:
        assert _writing_as(tmp_path / "c.db", proc.pid, _start(proc.pid)) == []
    finally:
        proc.kill()
        proc.wait()


def test_a_zombie_has_ended(tmp_path):
    proc = subprocess.Popen(["true"])
    try:
        for _ in range(500):
            with open(f"/proc/{proc.pid}/stat", "rb") as fh:
                if fh.read().rpartition(b")")[2].split()[0] == b"Z":
                    break
            time.sleep(0.01)
        assert _writing_as(tmp_path / "ledger.db", proc.pid, _start(proc.pid)) == [1]
    finally:
        proc.wait()
