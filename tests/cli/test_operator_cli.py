"""The operator's day (issue 14): one-line usage errors, the JSON envelope, -q/-v, the config file,
colour and progress on a terminal only (through a pseudo-terminal), verify naming whose key it
found, near-duplicate identities, verify_image's expected forms."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
from pathlib import Path

import pytest
from support.mender_server import MenderTestServer
from support.tools import ROOT

from imagetools import keys, verify
from imagetools.cli.progress import Rate
from imagetools.devices import parse_csv, parse_json
from imagetools.errors import DeviceListError

EXE = shutil.which("imagetools") or str(ROOT / ".venv" / "bin" / "imagetools")


def run_in_pty(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run the CLI with stdin, stdout and stderr on a pseudo-terminal; (exit code, what it showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [EXE, *args], stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env={**os.environ, **env}, close_fds=True
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def one_line_usage_error(result, command: str) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("imagetools: error: ")
    assert result.stderr.rstrip().endswith(f"(see {command} --help)")
    return result.stderr


@pytest.mark.parametrize(
    "args, command, words",
    [
        (["--bogus"], "imagetools", "no such option '--bogus'"),
        (["emit", "--devices", "x.csv"], "imagetools emit", "missing option '--base'"),
        (["verify"], "imagetools verify", "missing argument 'TARGET'"),
        (["keygen", "--type", "dsa"], "imagetools keygen", "invalid value for '--type'"),
        (["preauth", "push", "--nope", "p.json"], "imagetools preauth push", "no such option '--nope'"),
        (["-q", "-v", "inspect", "x"], "imagetools", "give -q or -v, not both"),
    ],
)
def test_usage_errors_are_one_line_exit_2(cli, args, command, words):
    assert words in one_line_usage_error(cli(*args), command)


@pytest.fixture
def unit(cli, make_image, tmp_path) -> dict:
    """OUT/unit0007/unit0007.sdimg holding unit0007's key, an OUT/report.json naming it, and
    another unit's public key."""
    out = tmp_path / "OUT" / "unit0007"
    out.mkdir(parents=True)
    image = make_image("sdimg", name="base.sdimg")
    for name in ("unit0007", "unit0008"):
        made = cli("keygen", "--type", "ed25519", "--prefix", f"{name}-", "--json")
        assert made.returncode == 0, made.stderr
    keydir = tmp_path / "keys-client-generated"
    assert (
        cli("inject", "--key", keydir / "unit0007-private.key", image, "--out", out / "unit0007.sdimg").returncode == 0
    )
    fp = keys.fingerprint(keys.read_private_file(keydir / "unit0007-private.key"))
    (tmp_path / "OUT" / "report.json").write_text(json.dumps({"units": [{"name": "unit0007", "fingerprint": fp}]}))
    return {
        "image": out / "unit0007.sdimg",
        "fp": fp,
        "ours": keydir / "unit0007-public.key",
        "other": keydir / "unit0008-public.key",
    }


def test_verify_envelope_has_stable_check_ids(cli, unit):
    result = cli("verify", unit["image"], "--pubkey", unit["ours"], "--no-fsck", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["schema"], doc["ok"], doc["fingerprint"], doc["key_type"]) == (
        "imagetools.verify/1",
        True,
        unit["fp"],
        "Ed25519",
    )
    assert doc["target"] == str(unit["image"])
    assert [c["id"] for c in doc["items"]] == [verify.CHECK_IDS[name] for name in verify.CHECK_NAMES]
    assert next(c for c in doc["items"] if c["id"] == "key-mode")["name"] == "mode 0600"
    assert doc["summary"] == {"pass": 10, "fail": 0, "warn": 1, "skip": 1}


def test_verify_mismatch_names_whose_key_it_found(cli, unit, tmp_path):
    result = cli("verify", unit["image"], "--pubkey", unit["other"], "--no-fsck")
    assert result.returncode == 1
    assert f"the key in the image is unit0007's (per {tmp_path / 'OUT' / 'report.json'})" in result.stdout
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"units": [{"name": "spare", "fingerprint": unit["fp"]}]}))
    given = cli("verify", unit["image"], "--pubkey", unit["other"], "--no-fsck", "--report", elsewhere, "--json")
    check = next(c for c in json.loads(given.stdout)["items"] if c["id"] == "key-matches")
    assert check["status"] == "fail" and "the key in the image is spare's" in check["detail"]


def test_verify_server_without_identity_json_says_where_it_looked(cli, unit):
    with MenderTestServer() as srv:
        result = cli("verify", unit["image"], "--server", srv.url, env={"MENDER_TOKEN": "test-pat"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert str(unit["image"].parent / "identity.json") in result.stderr


def test_colour_on_a_terminal_only(unit, tmp_path, cli):
    args = ("verify", str(unit["image"]), "--pubkey", str(unit["other"]), "--no-fsck")
    code, shown = run_in_pty(*args, env={}, cwd=tmp_path)
    assert code == 1 and "\x1b[31m\x1b[1mFAIL" in shown and "\x1b[32mPASS" in shown
    code, plain = run_in_pty(*args, env={"NO_COLOR": "1"}, cwd=tmp_path)
    assert code == 1 and "FAIL" in plain and "\x1b[" not in plain
    piped = cli(*args)
    assert "FAIL" in piped.stdout and "\x1b[" not in piped.stdout


def test_verify_image_takes_a_path_pem_bytes_or_a_key_object(unit):
    public = keys.load_public(unit["ours"].read_bytes(), "test key")
    for expected in (str(unit["ours"]), unit["ours"], unit["ours"].read_bytes(), public):
        report = verify.verify_image(unit["image"], expected=expected, fsck=False)
        assert report.check(verify.MATCHES).status == "pass", expected
    with pytest.raises(TypeError, match="not int"):
        verify.verify_image(unit["image"], expected=42, fsck=False)


def test_quiet_silences_warnings(cli, make_image):
    image = make_image("sdimg")
    loud = cli("inspect", image, "--data-partition", "2", "--rootfs-a-partition", "4")
    quiet = cli("-q", "inspect", image, "--data-partition", "2", "--rootfs-a-partition", "4")
    assert loud.returncode == quiet.returncode == 0
    assert quiet.stderr == "" and quiet.stdout == loud.stdout
    assert "set by --data-partition 2" in quiet.stdout


# --- device lists ------------------------------------------------------------------------------


def test_near_duplicate_identities_are_refused_unless_allowed():
    text = "name,mac\nu1,02:00:00:00:00:03\nu2,02-00-00-00-00-03\nu3,02:00:00:00:00:0A\nu4,02:00:00:00:00:0a\n"
    with pytest.raises(DeviceListError) as err:
        parse_csv(text)
    message = str(err.value)
    assert "2 problem(s)" in message and "line 3: identity" in message and "line 5: identity" in message
    assert "--allow-similar" in message
    assert [d.name for d in parse_csv(text, allow_similar=True)] == ["u1", "u2", "u3", "u4"]


def test_a_row_reports_all_its_problems(tmp_path):
    with pytest.raises(DeviceListError) as err:
        parse_csv("name,mac,sn,key\nbad name!,,SN1,missing.key\n", base_dir=tmp_path)
    message = str(err.value)
    assert "empty identity value for 'mac'" in message and "name 'bad name!' is not usable" in message
    assert "missing.key" in message and "3 problem(s)" in message
    with pytest.raises(DeviceListError) as err:
        parse_json('[{"name": 5, "mac": true, "sn": ""}]')
    assert "3 problem(s)" in str(err.value)


def test_device_list_errors_name_the_full_path(cli, make_image, tmp_path):
    (tmp_path / "devices.csv").write_text("mac\n\n")
    result = cli("emit", "--base", make_image("sdimg"), "--devices", "devices.csv", "--out-dir", "OUT")
    assert result.returncode == 2 and str(tmp_path / "devices.csv") in result.stderr


# --- config file, progress ----------------------------------------------------------------------


def preauth_file(path: Path, n: int) -> None:
    pem = [keys.public_pem(keys.generate(keys.KeySpec("ed25519"))).decode() for _ in range(n)]
    path.write_text(
        json.dumps(
            [{"name": f"u{i}", "identity_data": {"mac": f"02:00:00:00:01:{i:02x}"}, "pubkey": pem[i]} for i in range(n)]
        )
    )


def test_config_file_fills_what_flags_and_env_do_not(cli, tmp_path):
    preauth_file(tmp_path / "preauth.json", 2)
    (tmp_path / "token").write_text("test-pat\n")
    with MenderTestServer() as srv:
        (tmp_path / "config.toml").write_text(f'[server]\nurl = "{srv.url}"\ntoken_file = "token"\nretries = 0\n')
        env = {"IMAGETOOLS_CONFIG": str(tmp_path / "config.toml"), "MENDER_SERVER_URL": "", "MENDER_TOKEN": ""}
        pushed = cli("preauth", "push", "preauth.json", "--json", env=env)
        assert pushed.returncode == 0, pushed.stderr
        assert json.loads(pushed.stdout)["summary"]["preauthorized"] == 2
        wrong = cli("preauth", "status", "preauth.json", env={**env, "MENDER_TOKEN": "wrong"})
        assert wrong.returncode == 4 and "MENDER_TOKEN" in wrong.stderr  # the environment wins
    (tmp_path / "config.toml").write_text('[server]\nurl = "x"\nretires = 3\n')
    bad = cli("preauth", "status", "preauth.json", env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert f"config file {tmp_path / 'config.toml'}: unknown key server.retires" in bad.stderr


def test_progress_on_a_terminal_only(cli, tmp_path):
    preauth_file(tmp_path / "preauth.json", 3)
    with MenderTestServer() as srv:
        env = {"MENDER_SERVER_URL": srv.url, "MENDER_TOKEN": "test-pat"}
        code, shown = run_in_pty("preauth", "push", "preauth.json", env=env, cwd=tmp_path)
        assert code == 0, shown
        assert "preauthorizing 0/3 |" in shown and "preauthorizing 3/3" in shown and "units/min" in shown
        code, quiet = run_in_pty("-q", "preauth", "remove", "preauth.json", env=env, cwd=tmp_path)
        assert code == 0 and "removing" not in quiet and "3 removed" in quiet
        piped = cli("preauth", "push", "preauth.json", env=env)
        assert piped.returncode == 0 and piped.stderr == ""


def test_rate_is_a_moving_window():
    now = [0.0]
    rate = Rate(window=2, clock=lambda: now[0])
    assert rate.per_second() is None and rate.eta(5) is None
    for t in (10.0, 11.0, 12.0):  # a slow first unit, then one per second
        now[0] = t
        rate.add()
    assert rate.per_second() == 1.0 and rate.eta(4) == 4.0
