"""`imagetools ledger report` and `register` on a real emit OUT, with SQLite and PostgreSQL
ledgers; the units of an OUT read through their signatures."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import pytest
from support.postgres import PostgresServer, free_port, unavailable

from imagetools import keys
from imagetools.devices import load_devices
from imagetools.emit import EmitOptions, emit
from imagetools.errors import UsageError
from imagetools.published import load_unit
from imagetools.station.ledger import Ledger, open_ledger

pytestmark = pytest.mark.integration

DELTA = EmitOptions(key_spec=keys.KeySpec(type="ed25519"), jobs=1, format="delta")
SECRET = "Sup3r-S3cret"


@pytest.fixture
def out(make_image, tmp_path) -> Path:
    """An OUT of three signed delta units over a small base."""
    devices = tmp_path / "devices.csv"
    devices.write_text("name,mac\n" + "".join(f"u{i},02:00:00:00:01:{i:02x}\n" for i in range(1, 4)))
    out = tmp_path / "OUT"
    assert emit(make_image("sdimg"), load_devices(devices), out, DELTA).ok
    return out


def test_units_of_reads_every_unit_and_skips_what_is_not_one(out):
    (out / "notes").mkdir()
    (out / "stray.txt").write_text("x")
    (out / "u9").symlink_to(out / "u1")
    open_ledger(out / "ledger.sqlite").close()
    units = Ledger.units_of(out)
    assert [u.name for u in units] == ["u1", "u2", "u3"]
    u1 = load_unit(out / "u1")
    assert (units[0].fingerprint, units[0].base_sha256) == (u1.fingerprint, u1.base_sha256)
    assert units[0].identity == {"mac": "02:00:00:00:01:01"}
    assert Ledger.units_of(out, out / "batch.pub") == units


def test_a_unit_that_fails_its_signature_is_an_error_naming_it(out):
    identity = out / "u2" / "identity.json"
    identity.write_text(identity.read_text().replace("02:00", "02:99"))
    with pytest.raises(UsageError, match=r"OUT/u2.*(signature|differs|changed)"):
        Ledger.units_of(out)
    with pytest.raises(UsageError, match="is not a directory of units"):
        Ledger.units_of(out / "batch.pub")


def test_register_then_report_as_json_csv_and_a_table(out, cli):
    first = cli("ledger", "register", "--units", out)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("registered 3 new unit(s) of 3 in ")
    again = cli("ledger", "register", "--units", out, "--json")
    assert json.loads(again.stdout)["summary"] == {"units": 3, "new": 0}
    with open_ledger(out / "ledger.sqlite", station="bench") as led:
        a = led.allocate(
            slot="bench/1",
            target="/dev/sdq",
            serial="SN9",
            base_sha256=load_unit(out / "u1").base_sha256,
            pinned=True,
            token=str(uuid.uuid4()),
        )
        led.end(a.attempt, "passed", bytes_written=4096)
    report = cli("ledger", "report", "--units", out, "--json")
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert doc["schema"] == "imagetools.ledger-report/1" and doc["ok"] is True
    assert [(i["name"], i["state"]) for i in doc["items"]] == [("u1", "passed"), ("u2", "free"), ("u3", "free")]
    first = doc["items"][0]
    assert (first["serial"], first["station"], first["slot"]) == ("SN9", "bench", "bench/1")
    assert first["attempt"] == a.attempt and first["bytes_written"] == 4096
    assert doc["summary"]["passed"] == 1 and doc["summary"]["free"] == 2 and doc["summary"]["units"] == 3
    rows = list(csv.DictReader(io.StringIO(cli("ledger", "report", "--ledger", out / "ledger.sqlite", "--csv").stdout)))
    assert [(r["name"], r["state"], r["bytes_written"]) for r in rows] == [
        ("u1", "passed", "4096"),
        ("u2", "free", ""),
        ("u3", "free", ""),
    ]
    assert json.loads(rows[0]["identity"]) == {"mac": "02:00:00:00:01:01"} and rows[0]["fingerprint"] == a.fingerprint
    table = cli("ledger", "report", "--units", out).stdout.splitlines()
    assert table[0].split() == ["UNIT", "STATE", "SERIAL", "STATION", "SLOT", "ENDED", "BYTES", "KEY", "IDENTITY"]
    assert table[1].split()[:5] == ["u1", "passed", "SN9", "bench", "bench/1"]
    assert table[-1].startswith("3 unit(s) in ledger ") and "1 passed, 2 free" in table[-1]


def test_report_refuses_what_it_cannot_read_in_one_line(out, cli, tmp_path):
    for args, message, code in [
        ((), "give --ledger PATH|URL or --units OUT", 2),
        (("--ledger", tmp_path / "none.sqlite"), "does not exist", 2),
        (("--units", out, "--json", "--csv"), "give --json or --csv, not both", 2),
        (("--ledger", f"postgresql://line:{SECRET}@127.0.0.1:{free_port()}/line"), "cannot reach ledger", 3),
    ]:
        done = cli("ledger", "report", *args)
        assert done.returncode == code and message in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and SECRET not in done.stderr and done.stdout == ""
    assert not (tmp_path / "none.sqlite").exists()


def test_register_and_report_on_postgresql(out, cli):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with PostgresServer() as pg:
        url = pg.create_database("line").replace("postgres@", f"postgres:{SECRET}@")
        assert cli("ledger", "register", "--units", out, "--ledger", url).returncode == 0
        done = cli("ledger", "report", "--ledger", url, "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert [i["state"] for i in doc["items"]] == ["free"] * 3 and SECRET not in done.stdout
        assert doc["ledger"].startswith("postgresql://postgres:***@")
