"""What is preauthorized is what shipped: `preauth push --ledger`, push leaving retired units out,
`preauth remove --retired` and `ledger report --server`, run as the real console script against
the spec-validating test server, over a real emitted OUT and a real SQLite ledger written through
the ledger API as stations and flash write it (passed, failed, killed while writing)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.mender_server import DEVICES, MenderTestServer
from support.postgres import PostgresServer, unavailable
from support.units import emit_units

from imagetools import keys
from imagetools.preauth import Unit
from imagetools.preauth.shipped import LedgerKeys, select
from imagetools.published import load_unit
from imagetools.station.ledger import Ledger, open_ledger

pytestmark = pytest.mark.integration

PASSED = ["u000", "u001"]  # allocated by a station / flashed by hand, both passed
RETIRED = ["u002", "u003"]  # failed; the station writing it was killed (interrupted)
NOT_FLASHED = ["u004", "u005"]  # free; being written now
ALL = PASSED + RETIRED + NOT_FLASHED
SECRET = "Sup3r-S3cret"
_KEYS = [keys.load_public(keys.public_pem(keys.generate(keys.KeySpec("ed25519"))), "key") for _ in range(8)]

# Opens the ledger, begins an attempt for one unit as flash does, says so, and waits to be killed.
_KILLED_WRITER = """
import sys, time
from imagetools.station.ledger import open_ledger
led = open_ledger(sys.argv[1], station="st2")
led.begin(unit=sys.argv[2], fingerprint=sys.argv[3], base_sha256=sys.argv[4], target="/dev/sdz",
          serial="SN-KILLED", pinned=False)
print("writing", flush=True)
time.sleep(60)
"""


@pytest.fixture
def out(make_image, tmp_path) -> Path:
    """An emitted OUT of six units and its ledger: two passed, two retired, two not flashed."""
    _base, out = emit_units(make_image, tmp_path, len(ALL))
    units = {name: load_unit(out / name) for name in ALL}
    ledger = out / "ledger.sqlite"

    def begin(led: Ledger, name: str) -> int:
        u = units[name]
        return led.begin(
            unit=name,
            fingerprint=u.fingerprint,
            base_sha256=u.base_sha256,
            target=f"/dev/{name}",
            serial=f"SN-{name}",
            pinned=True,
            identity=dict(u.identity or {}),
        )

    with open_ledger(ledger, station="st1") as led:
        led.register(Ledger.units_of(out))
        taken = led.allocate(
            slot="st1/1",
            target="/dev/sdq",
            serial="SN-A",
            base_sha256=units["u000"].base_sha256,
            pinned=True,
            token=str(uuid.uuid4()),
        )
        assert taken is not None and taken.unit == "u000"
        led.end(taken.attempt, "passed", bytes_written=4096)
        led.end(begin(led, "u001"), "passed", bytes_written=4096)
        led.end(begin(led, "u002"), "failed", error="read-back: range 3 differs")
        u = units["u003"]
        writer = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WRITER, str(ledger), "u003", u.fingerprint, u.base_sha256],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        begin(led, "u005")  # left in 'writing' by this (live) process
    with open_ledger(ledger) as led:  # the next open on this host reaps the killed writer
        states = {r["name"]: r["state"] for r in led.report()}
    assert states == {
        "u000": "passed",
        "u001": "passed",
        "u002": "failed",
        "u003": "interrupted",
        "u004": "free",
        "u005": "writing",
    }
    return out


def entries(out: Path) -> dict[str, dict]:
    return {e["name"]: e for e in json.loads((out / "preauth.json").read_text())}


def on_server(mender: MenderTestServer) -> set[str]:
    """The MACs the server holds a device for."""
    return {d["identity_data"]["mac"] for d in mender.devices.values()}


def macs(out: Path, names: list[str]) -> set[str]:
    return {entries(out)[n]["identity_data"]["mac"] for n in names}


def push_everything(cli, env, out: Path, tmp_path: Path) -> None:
    """Preauthorize every unit, as a push made before any card was flashed (no ledger beside)."""
    early = tmp_path / "early"
    early.mkdir()
    shutil.copy(out / "preauth.json", early / "preauth.json")
    done = cli("preauth", "push", early / "preauth.json", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"] == {"preauthorized": 6, "already": 0, "conflict": 0, "failed": 0}


# --- push ----------------------------------------------------------------------------------------------


def test_push_with_the_ledger_preauthorizes_exactly_what_shipped(cli, env, mender, out):
    done = cli("preauth", "push", out / "preauth.json", "--ledger", out / "ledger.sqlite", "--json", env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [i["name"] for i in doc["items"]] == PASSED
    assert doc["summary"] == {
        "preauthorized": 2,
        "already": 0,
        "conflict": 0,
        "failed": 0,
        "not-flashed": 2,
        "retired": 2,
    }
    assert doc["ledger"] == str(out / "ledger.sqlite")
    assert on_server(mender) == macs(out, PASSED)
    pushed_keys = {
        keys.fingerprint(keys.load_public(s["pubkey"].encode(), "server key"))
        for d in mender.devices.values()
        for s in d["auth_sets"]
    }
    assert pushed_keys == {load_unit(out / n).fingerprint for n in PASSED}
    again = cli("preauth", "push", out, "--ledger", out / "ledger.sqlite", env=env)  # OUT as the input
    assert again.returncode == 0, again.stderr
    assert "0 preauthorized, 2 already, 0 conflict, 0 failed" in again.stdout
    assert (
        f"left out 4 of 6 unit(s) by ledger {out / 'ledger.sqlite'}: 2 not flashed yet (no card with its key "
        "passed), 2 retired"
    ) in again.stdout
    assert mender.requests_to("POST", DEVICES) == [201, 201, 409, 409]


def test_push_without_the_ledger_leaves_retired_units_out_with_a_warning(cli, env, mender, out, tmp_path):
    done = cli("preauth", "push", out / "preauth.json", "--json", env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [i["name"] for i in doc["items"]] == PASSED + NOT_FLASHED
    assert doc["summary"]["retired"] == 2 and doc["summary"]["not-flashed"] == 0
    assert on_server(mender) == macs(out, PASSED + NOT_FLASHED)
    [warning] = done.stderr.splitlines()
    assert warning.startswith("imagetools: warning: left out 2 retired unit(s) of 6, e.g. u002")
    assert f"imagetools preauth remove --retired {out / 'preauth.json'}" in warning
    dry = cli("preauth", "push", out, "--dry-run", "--json", env=env)
    assert [i["name"] for i in json.loads(dry.stdout)["items"]] == PASSED + NOT_FLASHED


def test_a_preauth_file_with_no_ledger_beside_it_is_pushed_whole(cli, env, mender, out, tmp_path):
    push_everything(cli, env, out, tmp_path)
    assert on_server(mender) == macs(out, ALL)


def test_a_ledger_that_cannot_be_read_is_an_error_before_any_request(cli, env, mender, out, tmp_path):
    missing = tmp_path / "none.sqlite"
    done = cli("preauth", "push", out, "--ledger", missing, env=env)
    assert done.returncode == 2 and "does not exist" in done.stderr and done.stderr.count("\n") == 1
    assert not missing.exists()
    (out / "ledger.sqlite").unlink()
    (out / "ledger.sqlite").symlink_to(tmp_path / "elsewhere.sqlite")
    beside = cli("preauth", "push", out, env=env)
    assert beside.returncode == 2 and "ledger.sqlite" in beside.stderr and "Traceback" not in beside.stderr
    assert mender.log == []


# --- remove --retired -----------------------------------------------------------------------------------


def test_remove_retired_takes_exactly_the_retired_keys_off(cli, env, mender, out, tmp_path):
    push_everything(cli, env, out, tmp_path)
    dry = cli("preauth", "remove", "--retired", "--ledger", out / "ledger.sqlite", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    assert [(i["name"], i["outcome"]) for i in json.loads(dry.stdout)["items"]] == [
        ("u002", "would-remove"),
        ("u003", "would-remove"),
    ]
    assert on_server(mender) == macs(out, ALL)
    done = cli("preauth", "remove", "--retired", "--ledger", out / "ledger.sqlite", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"] == {"removed": 2, "not-found": 0, "refused": 0, "failed": 0}
    assert on_server(mender) == macs(out, PASSED + NOT_FLASHED)
    again = cli("preauth", "remove", "--retired", out, env=env)  # the ledger beside OUT
    assert again.returncode == 0, again.stderr
    assert "0 removed, 2 not-found, 0 refused, 0 failed" in again.stdout


def test_remove_retired_keeps_the_safety_rules(cli, env, mender, out):
    u002, u003 = (entries(out)[n] for n in RETIRED)
    stranger = mender.seed_device(u002["identity_data"], u002["pubkey"], "preauthorized")
    mender.add_auth_set(stranger, keys.public_pem(keys.generate(keys.KeySpec("ed25519"))).decode(), "accepted")
    theirs = mender.seed_device(
        u003["identity_data"], keys.public_pem(keys.generate(keys.KeySpec("ed25519"))).decode(), "preauthorized"
    )
    done = cli("preauth", "remove", "--retired", out / "preauth.json", "--json", env=env)
    assert done.returncode == 1
    assert [(i["name"], i["outcome"]) for i in json.loads(done.stdout)["items"]] == [
        ("u002", "refused"),
        ("u003", "not-found"),
    ]
    assert len(mender.devices[stranger]["auth_sets"]) == 2 and theirs in mender.devices
    decommission = cli(
        "preauth", "remove", "--retired", "--ledger", out / "ledger.sqlite", "--decommission", "--json", env=env
    )
    assert [i["outcome"] for i in json.loads(decommission.stdout)["items"]] == ["refused", "not-found"]
    assert set(mender.devices) == {stranger, theirs}


def test_remove_retired_refuses_what_it_cannot_decide(cli, env, mender, out, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(out / "preauth.json", loose / "preauth.json")
    for args, message in [
        (("--retired",), "--retired needs the ledger"),
        (("--retired", loose / "preauth.json"), "is not in an emit OUT with a ledger"),
        (("--retired", out, "--identity", '{"mac":"02:00:00:00:00:02"}'), "give --identity without --retired"),
        ((out, "--ledger", out / "ledger.sqlite"), "--ledger is used with --retired"),
    ]:
        done = cli("preauth", "remove", *args, env=env)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    assert mender.log == []
    with open_ledger(tmp_path / "clean.sqlite"):
        pass
    nothing = cli("preauth", "remove", "--retired", "--ledger", tmp_path / "clean.sqlite", env=env)
    assert nothing.returncode == 0 and "no retired unit in ledger" in nothing.stdout
    assert mender.log == []


# --- ledger report --server -----------------------------------------------------------------------------


def test_report_says_which_units_the_server_has_preauthorized(cli, env, mender, out):
    assert cli("preauth", "push", out, "--ledger", out / "ledger.sqlite", env=env).returncode == 0
    u004 = entries(out)["u004"]
    mender.seed_device(u004["identity_data"], u004["pubkey"], "pending")  # our key, not preauthorized
    with open_ledger(out / "ledger.sqlite", station="bench") as led:  # flashed with --key: no identity
        key = keys.generate(keys.KeySpec("ed25519"))
        led.end(
            led.begin(
                unit="private",
                fingerprint=keys.fingerprint(key),
                base_sha256=load_unit(out / "u000").base_sha256,
                target="/dev/sdk",
                serial=None,
                pinned=False,
            ),
            "passed",
        )
    server = ("--server", mender.url)
    listed = len(mender.requests_to("GET", DEVICES))  # push's own listing (left behind)
    done = cli("ledger", "report", "--units", out, *server, "--json", env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    marks = {i["name"]: i["preauthorized"] for i in doc["items"]}
    assert marks == {
        "u000": True,
        "u001": True,
        "u002": False,
        "u003": False,
        "u004": False,
        "u005": False,
        "private": None,
    }
    assert doc["summary"]["preauthorized"] == 2 and doc["server"] == mender.url
    assert len(mender.requests_to("GET", DEVICES)) == listed + 1  # one page: one request
    rows = list(csv.DictReader(io.StringIO(cli("ledger", "report", "--units", out, *server, "--csv", env=env).stdout)))
    assert [(r["name"], r["preauthorized"]) for r in rows][:2] == [("private", "unknown"), ("u000", "true")]
    table = cli("ledger", "report", "--units", out, *server, env=env).stdout.splitlines()
    assert table[0].split()[-1] == "PREAUTHORIZED" and table[2].split()[-1] == "true"
    assert table[-1].endswith(f"; 2 preauthorized on {mender.url}")
    offline = json.loads(cli("ledger", "report", "--units", out, "--json", env=env).stdout)
    assert "preauthorized" not in offline["items"][0] and "server" not in offline
    assert len(mender.requests_to("GET", DEVICES)) == listed + 3


def test_report_with_an_unreachable_server_exits_4(cli, env, out):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    done = cli("ledger", "report", "--units", out, "--server", url, "--retries", "0", env=env)
    assert done.returncode == 4 and "cannot reach the Mender Server" in done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr


# --- a line's ledger on PostgreSQL ----------------------------------------------------------------------


def test_push_and_remove_by_a_postgresql_ledger(cli, env, mender, out):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    units = {name: load_unit(out / name) for name in ("u000", "u001", "u002")}
    with PostgresServer() as pg:
        url = pg.create_schema("line").replace("postgres@", f"postgres:{SECRET}@")
        with open_ledger(url, station="pg1") as led:
            led.register(Ledger.units_of(out))
            for name, state in (("u000", "passed"), ("u001", "interrupted"), ("u002", "passed")):
                u = units[name]
                led.end(
                    led.begin(
                        unit=name,
                        fingerprint=u.fingerprint,
                        base_sha256=u.base_sha256,
                        target=f"/dev/{name}",
                        serial=None,
                        pinned=True,
                    ),
                    state,
                )
        done = cli("preauth", "push", out, "--ledger", url, "--json", env=env)
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert [i["name"] for i in doc["items"]] == ["u000", "u002"]
        assert doc["summary"]["not-flashed"] == 3 and doc["summary"]["retired"] == 1
        assert doc["ledger"].startswith("postgresql://postgres:***@") and SECRET not in done.stdout + done.stderr
        assert on_server(mender) == macs(out, ["u000", "u002"])
        u001 = entries(out)["u001"]
        mender.seed_device(u001["identity_data"], u001["pubkey"])  # preauthorized before it was flashed
        removed = cli("preauth", "remove", "--retired", "--ledger", url, "--json", env=env)
        assert removed.returncode == 0, removed.stderr
        assert [(i["name"], i["outcome"]) for i in json.loads(removed.stdout)["items"]] == [("u001", "removed")]
        assert on_server(mender) == macs(out, ["u000", "u002"])


# --- the ledger alone -----------------------------------------------------------------------------------


def test_remove_retired_by_the_ledger_alone_matches_keys_by_fingerprint(cli, env, mender, tmp_path):
    """Units flashed by hand (never registered): two re-keyed units of one identity both retired,
    one flashed with --key (no identity), one passed with the same identity."""
    identity = {"mac": "02:00:00:00:09:01"}
    pairs = [keys.generate(keys.KeySpec("ed25519")) for _ in range(4)]
    pems = [keys.public_pem(k).decode() for k in pairs]
    with open_ledger(tmp_path / "hand.sqlite", station="bench") as led:
        for n, (state, who) in enumerate(
            [("failed", identity), ("interrupted", identity), ("failed", None), ("passed", identity)]
        ):
            led.end(
                led.begin(
                    unit=f"h{n}",
                    fingerprint=keys.fingerprint(pairs[n]),
                    base_sha256="0" * 64,
                    target=f"/dev/sd{n}",
                    serial=None,
                    pinned=False,
                    identity=who,
                ),
                state,
            )
    device = mender.seed_device(identity, pems[0], "rejected")
    for pem, status in ((pems[1], "pending"), (pems[3], "preauthorized")):
        mender.add_auth_set(device, pem, status)
    done = cli("preauth", "remove", "--retired", "--ledger", tmp_path / "hand.sqlite", "--json", env=env)
    assert done.returncode == 0, done.stderr
    [item] = json.loads(done.stdout)["items"]
    assert (item["name"], item["outcome"], len(item["auth_sets"])) == ("h0", "removed", 2)
    assert [s["pubkey"] for s in mender.devices[device]["auth_sets"]] == [pems[3]]  # the passed key stays
    assert "1 retired unit(s) of ledger" in done.stderr and "e.g. h2" in done.stderr


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["passed", "retired", "free", "absent"]), min_size=1, max_size=len(_KEYS)))
def test_select_partitions_the_units_by_the_ledger(states):
    units = [Unit(f"p{i}", {"mac": f"02:00:00:00:0a:{i:02x}"}, key) for i, key in enumerate(_KEYS[: len(states)])]
    by = {
        state: frozenset(u.fingerprint for u, s in zip(units, states, strict=True) if s == state)
        for state in ("passed", "retired")
    }
    ledger = LedgerKeys("test.sqlite", by["passed"], by["retired"], ())
    shipped = select(units, ledger, shipped_only=True)
    assert {u.fingerprint for u in shipped.push} == by["passed"]
    assert {u.fingerprint for u in shipped.retired} == by["retired"]
    assert sorted(u.name for u in shipped.push + shipped.not_flashed + shipped.retired) == sorted(u.name for u in units)
    ahead = select(units, ledger, shipped_only=False)
    assert [u.name for u in ahead.push] == [u.name for u, s in zip(units, states, strict=True) if s != "retired"]
    assert ahead.retired == shipped.retired and ahead.not_flashed == []
