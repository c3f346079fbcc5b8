"""`imagetools login` and `imagetools preauth push|status` run as the real console script
against the spec-validating test server."""

from __future__ import annotations

import json
import socket
import stat

import pytest
from support.inputs import macs, new_pem, write_preauth
from support.mender_server import ADMISSION, DEVICES

from imagetools import keys


def test_push_then_repush(cli, env, mender, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0, 1, 2))
    first = cli("preauth", "push", "preauth.json", "--jobs", "2", "--json", env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["summary"] == {"preauthorized": 3, "already": 0, "conflict": 0, "failed": 0}
    assert [r["name"] for r in report["items"]] == ["unit0", "unit1", "unit2"]
    again = cli("preauth", "push", "preauth.json", env=env)
    assert again.returncode == 0, again.stderr
    assert "0 preauthorized, 3 already, 0 conflict, 0 failed" in again.stdout
    assert mender.requests_to("POST", DEVICES) == [201] * 3 + [409] * 3


def test_conflict_exits_1_and_force_resolves_it(cli, env, mender, tmp_path):
    [entry] = write_preauth(tmp_path / "preauth.json", macs(0))
    device_id = mender.seed_device(entry["identity_data"], new_pem(), "accepted")
    result = cli("preauth", "push", "preauth.json", env=env)
    assert result.returncode == 1
    assert "conflict" in result.stdout and device_id in result.stdout and "accepted" in result.stdout
    forced = cli("preauth", "push", "preauth.json", "--force", env=env)
    assert forced.returncode == 0, forced.stderr + forced.stdout
    assert mender.devices[device_id]["status"] == "preauthorized"


def test_bad_token_exits_4_without_showing_it(cli, env, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0, 1, 2))
    secret = "wrong-token-0123456789"
    result = cli("preauth", "push", "preauth.json", env={**env, "MENDER_TOKEN": secret})
    assert result.returncode == 4
    assert result.stderr.startswith("imagetools: error:") and result.stderr.count("\n") == 1
    assert "HTTP 401" in result.stderr and "MENDER_TOKEN" in result.stderr
    assert secret not in result.stderr + result.stdout


def test_unreachable_server_exits_4(cli, env, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = cli("preauth", "push", "preauth.json", "--server", url, "--retries", "1", env=env)
    assert result.returncode == 4
    assert "cannot reach the Mender Server" in result.stderr and "Traceback" not in result.stderr


def test_persistent_5xx_fails_units_cleanly(cli, env, mender, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0, 1))
    mender.fail_next(503, count=6)
    result = cli("preauth", "push", "preauth.json", "--retries", "2", "--jobs", "1", "--json", env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["failed"] == 2
    assert all("HTTP 503" in r["detail"] and "tried 3 times" in r["detail"] for r in report["items"])


def test_non_string_identity_is_refused_before_any_request(cli, env, mender, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0, serial=1234))
    result = cli("preauth", "push", "preauth.json", env=env)
    assert result.returncode == 2
    assert "'serial' is a number (1234)" in result.stderr and "never match" in result.stderr
    assert mender.log == []


def test_dry_run_needs_no_server(cli, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0, 1))
    result = cli(
        "preauth", "push", "preauth.json", "--dry-run", "--json", env={"MENDER_SERVER_URL": "", "MENDER_TOKEN": ""}
    )
    assert result.returncode == 0, result.stderr
    assert [r["outcome"] for r in json.loads(result.stdout)["items"]] == ["dry-run", "dry-run"]


def test_login_caches_token_and_push_uses_it(cli, env, mender, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0))
    no_token = {**env, "MENDER_TOKEN": ""}
    wrong = cli("login", "--username", "admin@example.com", env={**no_token, "MENDER_PASSWORD": "guess"})
    assert wrong.returncode == 4 and "wrong username or password" in wrong.stderr
    missing = cli("preauth", "push", "preauth.json", env=no_token)
    assert missing.returncode == 4 and "imagetools login" in missing.stderr
    ok = cli("login", "-u", "admin@example.com", env={**no_token, "MENDER_PASSWORD": "correct horse"})
    assert ok.returncode == 0, ok.stderr
    [cached] = (tmp_path / "cache" / "imagetools").iterdir()
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    token = cached.read_text().strip()
    assert token in mender.tokens and token not in ok.stdout + ok.stderr
    pushed = cli("preauth", "push", "preauth.json", env=no_token)
    assert pushed.returncode == 0, pushed.stderr


def test_status_reports_and_diagnoses(cli, env, mender, tmp_path):
    entries = write_preauth(tmp_path / "preauth.json", macs(0, 1))
    assert cli("preauth", "push", "preauth.json", env=env).returncode == 0
    fine = cli("preauth", "status", "preauth.json", env=env)
    assert fine.returncode == 0, fine.stderr
    rogue = new_pem()
    device_id = next(d["id"] for d in mender.devices.values() if d["identity_data"] == entries[1]["identity_data"])
    mender.add_auth_set(device_id, rogue, "pending")
    result = cli("preauth", "status", "preauth.json", "--json", env=env)
    assert result.returncode == 1
    units = json.loads(result.stdout)["items"]
    assert [u["status"] for u in units] == ["preauthorized", "pending"]
    assert keys.fingerprint(keys.load_public(rogue.encode(), "k")) in units[1]["diagnosis"][0]
    human = cli("preauth", "status", "preauth.json", env=env)
    assert (
        "unit1: the device connected with a different key (pending): the device is not using the "
        "injected key" in human.stdout
    )


def test_legacy_v1_push(cli, env, mender, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(0, 1))
    result = cli("preauth", "push", "preauth.json", "--api", "v1", env=env)
    assert result.returncode == 0, result.stderr
    assert mender.requests_to("POST", ADMISSION) == [201, 201] and not mender.devices
    assert cli("preauth", "push", "preauth.json", "--api", "v1", "--force", env=env).returncode == 2


@pytest.fixture
def unit_image(make_image, cli, tmp_path):
    """An emitted-style unit: image with an injected Ed25519 key and identity.json beside it."""
    unit_dir = tmp_path / "out" / "unit7"
    unit_dir.mkdir(parents=True)
    image = make_image("sdimg", empty_rootfs_b=True)
    image = image.rename(unit_dir / "unit7.sdimg")
    private = keys.generate(keys.KeySpec("ed25519"))
    key_file = tmp_path / "unit7.key"
    keys.write_secret(key_file, keys.private_pem(private, "pkcs8"))
    injected = cli("inject", "--key", key_file, image)
    assert injected.returncode == 0, injected.stderr
    identity = {"mac": "02:00:00:00:00:07"}
    (unit_dir / "identity.json").write_text(json.dumps(identity))
    return image, identity, keys.public_pem(private).decode()


@pytest.mark.integration
def test_verify_against_the_server(cli, env, mender, unit_image):
    image, identity, pem = unit_image
    missing = cli("verify", image, "--no-fsck", "--server", mender.url, env=env)
    assert missing.returncode == 4 and "no device with identity" in missing.stderr
    device_id = mender.seed_device(identity, pem, "preauthorized")
    ok = cli("verify", image, "--no-fsck", "--server", mender.url, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    mender.devices[device_id]["auth_sets"][0]["pubkey"] = new_pem()
    bad = cli("verify", image, "--no-fsck", "--server", mender.url, "--json", env=env)
    assert bad.returncode == 1
    assert [c["name"] for c in json.loads(bad.stdout)["items"] if c["status"] == "fail"] == ["key matches expected"]
    other = json.dumps({"mac": "02:00:00:00:00:08"})
    mender.seed_device(json.loads(other), pem, "accepted")
    explicit = cli("verify", image, "--no-fsck", "--server", mender.url, "--identity", other, env=env)
    assert explicit.returncode == 0, explicit.stdout + explicit.stderr
    both = cli("verify", image, "--server", mender.url, "--fingerprint", "00" * 32, env=env)
    assert both.returncode == 2 and "only one of" in both.stderr


@pytest.mark.integration
def test_emit_output_pushes_and_verifies_against_the_server(cli, env, mender, make_image, tmp_path):
    """The whole offline-then-online flow: emit, later push its preauth.json, check, verify."""
    base = make_image("sdimg", empty_rootfs_b=True)
    (tmp_path / "devices.csv").write_text("name,mac\nunitA,02:00:00:00:0a:01\nunitB,02:00:00:00:0a:02\n")
    emitted = cli(
        "emit",
        "--base",
        base,
        "--devices",
        "devices.csv",
        "--out-dir",
        "out",
        "--key-type",
        "ed25519",
        "--no-bmap",
        "-j",
        "1",
        env=env,
    )
    assert emitted.returncode == 0, emitted.stderr
    pushed = cli("preauth", "push", "out/preauth.json", "--json", env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["summary"]["preauthorized"] == 2
    assert cli("preauth", "status", "out/preauth.json", env=env).returncode == 0
    verified = cli("verify", "out/unitB/unitB.sdimg", "--no-fsck", "--server", mender.url, env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
