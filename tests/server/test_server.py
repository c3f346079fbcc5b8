"""The Mender Server client and preauth logic against the spec-validating test server."""

from __future__ import annotations

import datetime
import json
import socket
import stat
import time

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from support.mender_server import DEVICES, MenderTestServer, make_jwt

from imagetools import keys, preauth
from imagetools.errors import AuthError, DeviceListError, ServerError, UsageError
from imagetools.mender import canonical_identity
from imagetools.preauth import push
from imagetools.preauth import status as unit_status
from imagetools.server import MenderClient, ServerSettings, deviceauth, resolve_token, save_token, useradm
from imagetools.server.credentials import token_cache_path
from imagetools.server.deviceauth import expected_key_for_identity
from imagetools.server.transport import parse_retry_after


def client_for(srv: MenderTestServer, token: str = "test-pat", **kw) -> MenderClient:
    settings = ServerSettings(srv.url, token=token, token_source="test", backoff=0.01, **kw)
    return MenderClient(settings, connections=4)


def new_key():
    return keys.generate(keys.KeySpec("ed25519")).public_key()


def units(n: int, prefix: str = "unit") -> list[preauth.Unit]:
    return [
        preauth.Unit(f"{prefix}{i:03d}", {"mac": f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", "sku": "gw"}, new_key())
        for i in range(n)
    ]


def outcomes(results) -> list[str]:
    return [r.outcome for r in results]


# --- push ----------------------------------------------------------------------------------------


def test_push_batch_preauthorizes_every_unit(mender):
    batch = units(6)
    seen = []
    with client_for(mender) as client:
        results = push.push(client, batch, jobs=3, progress=seen.append)
    assert outcomes(results) == ["preauthorized"] * 6
    assert sorted(r.name for r in seen) == [u.name for u in batch]
    assert mender.requests_to("POST", DEVICES) == [201] * 6
    for unit, result in zip(batch, results):
        device = mender.devices[result.device_id]
        assert device["status"] == "preauthorized"
        assert device["identity_data"] == unit.identity
        assert keys.same_key(keys.load_public(device["auth_sets"][0]["pubkey"].encode(), "srv"), unit.pubkey)


def test_repush_is_idempotent(mender):
    batch = units(4)
    with client_for(mender) as client:
        push.push(client, batch)
        again = push.push(client, batch, jobs=2)
    assert outcomes(again) == ["already"] * 4
    assert len(mender.devices) == 4
    assert push.summarize(again) == {"preauthorized": 0, "already": 4, "conflict": 0, "failed": 0}


def test_conflicting_key_is_reported_and_force_replaces_it(mender):
    unit = units(1)[0]
    device_id = mender.seed_device(unit.identity, keys.public_pem(new_key()).decode(), "accepted")
    with client_for(mender) as client:
        [result] = push.push(client, [unit])
        assert result.outcome == "conflict"
        assert result.device_id == device_id and result.device_status == "accepted"
        assert "different key" in result.detail and "--force" in result.detail
        [forced] = push.push(client, [unit], force=True)
        assert forced.outcome == "preauthorized"
        assert expected_key_for_identity(client, unit.identity) == unit.pubkey
    assert mender.devices[device_id]["status"] == "preauthorized"


def test_server_refusal_fails_one_unit_with_error_and_request_id(mender):
    good = units(2)
    p384 = preauth.Unit("p384", {"mac": "02:ff"}, ec.generate_private_key(ec.SECP384R1()).public_key())
    with client_for(mender) as client:
        results = push.push(client, [good[0], p384, good[1]])
    assert outcomes(results) == ["preauthorized", "failed", "preauthorized"]
    assert "HTTP 400" in results[1].detail and "P-256" in results[1].detail
    assert "request_id" in results[1].detail


def test_429_retry_after_is_honoured(mender):
    mender.fail_next(429, count=1, retry_after=1)
    with client_for(mender) as client:
        start = time.monotonic()
        results = push.push(client, units(1))
        elapsed = time.monotonic() - start
    assert outcomes(results) == ["preauthorized"]
    assert mender.requests_to("POST", DEVICES) == [429, 201]
    assert elapsed >= 1.0  # the backoff alone would have waited 0.01 s


def test_5xx_is_retried_then_succeeds(mender):
    mender.fail_next(503, count=2)
    with client_for(mender) as client:
        assert outcomes(push.push(client, units(1))) == ["preauthorized"]
    assert mender.requests_to("POST", DEVICES) == [503, 503, 201]


def test_5xx_retries_exhausted_fail_cleanly(mender):
    mender.fail_next(500, count=10)
    with client_for(mender, retries=2) as client:
        [result] = push.push(client, units(1))
        assert result.outcome == "failed"
        assert "HTTP 500" in result.detail and "tried 3 times" in result.detail
        with pytest.raises(ServerError) as info:
            deviceauth.get_device(client, "x")
    assert info.value.status == 500 and info.value.request_id
    assert mender.requests_to("POST", DEVICES) == [500, 500, 500]


def test_retry_after_longer_than_allowed_is_an_error(mender):
    mender.fail_next(429, retry_after=3600)
    with client_for(mender) as client, pytest.raises(ServerError, match="retry after 3600 s"):
        deviceauth.get_device(client, "x")


def test_bad_token_is_a_clear_auth_error_without_the_token(mender):
    secret = "wrong-token-abc123"
    with client_for(mender, token=secret) as client, pytest.raises(AuthError) as info:
        push.push(client, units(3))
    message = str(info.value)
    assert "HTTP 401" in message and "credentials from test were refused" in message
    assert secret not in message and secret not in repr(client) and secret not in repr(client.settings)
    assert info.value.exit_code == 4 and info.value.request_id


def test_unreachable_server_is_a_clear_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = ServerSettings(f"http://127.0.0.1:{port}", token="t", retries=2, backoff=0.01)
    with MenderClient(settings) as client, pytest.raises(ServerError) as info:
        push.push(client, units(2))
    assert "cannot reach the Mender Server" in str(info.value) and "tried 3 times" in str(info.value)
    assert info.value.status is None and not isinstance(info.value, AuthError)


def test_timeout_is_retried_then_reported(mender):
    mender.stall_next(0.6, count=2)
    with client_for(mender, timeout=0.2, retries=1) as client, pytest.raises(ServerError) as info:
        deviceauth.get_device(client, "x")
    assert "timed out" in str(info.value) and "tried 2 times" in str(info.value)
    with client_for(mender, timeout=0.2, retries=1) as client:
        assert deviceauth.get_device(client, "x") is None  # the stalls are used up


def test_legacy_v1_push(mender):
    batch = units(3)
    mender.admission.append(
        {
            "id": "x",
            "device_id": "d0",
            "status": "accepted",
            "attributes": {},
            "device_identity": canonical_identity({"mac": "aa"}),
            "key": keys.public_pem(new_key()).decode(),
            "request_time": "2026-11-22T03:00:00Z",
        }
    )
    clash = preauth.Unit("clash", {"mac": "aa"}, new_key())
    with client_for(mender) as client:
        assert outcomes(push.push(client, batch, api="v1")) == ["preauthorized"] * 3
        assert outcomes(push.push(client, batch + [clash], api="v1")) == ["already"] * 3 + ["conflict"]
    sent = [json.loads(s["device_identity"]) for s in mender.admission[1:]]
    assert sorted(map(canonical_identity, sent)) == sorted(canonical_identity(u.identity) for u in batch)
    assert not mender.devices  # nothing went to the v2 API
    with pytest.raises(UsageError):
        push.push(None, batch, api="v1", force=True)


def test_dry_run_sends_nothing(mender):
    results = push.push(None, units(2), dry_run=True, force=True)
    assert outcomes(results) == ["dry-run"] * 2 and "force" in results[0].detail
    assert mender.log == []


# --- status and paging -----------------------------------------------------------------------------


def test_paging_over_more_than_500_devices(mender):
    pem = keys.public_pem(new_key()).decode()
    for i in range(1203):
        mender.seed_device({"sn": f"SN{i:05d}"}, pem)
    with client_for(mender) as client:
        devices = list(deviceauth.iter_devices(client))
        last = preauth.Unit("last", {"sn": "SN01202"}, keys.load_public(pem.encode(), "k"))
        [status] = unit_status.status(client, [last])
    assert len(devices) == 1203 and len({d["id"] for d in devices}) == 1203
    assert mender.requests_to("GET", DEVICES) == [200] * 6  # 3 pages per walk, two walks
    assert status.status == "preauthorized" and status.ok


def test_status_diagnoses_pending_device_with_a_regenerated_key(mender):
    ok_unit, bad_unit, missing = units(3)
    with client_for(mender) as client:
        push.push(client, [ok_unit, bad_unit])
        device_id = deviceauth.find_device(client, bad_unit.identity)["id"]
        rogue = new_key()
        mender.add_auth_set(device_id, keys.public_pem(rogue).decode(), "pending")
        ok, bad, gone = unit_status.status(client, [ok_unit, bad_unit, missing])
    assert ok.status == "preauthorized" and ok.ok
    assert bad.status == "pending" and bad.key_status == "preauthorized" and not bad.ok
    [text] = bad.diagnosis
    assert "not using the injected key" in text and "missing, unreadable or at the wrong path" in text
    assert keys.fingerprint(rogue) in text and bad_unit.fingerprint in text
    assert gone.status == "missing" and not gone.ok


def test_status_explains_identity_differing_in_type_or_format(mender):
    unit = preauth.Unit("u", {"mac": "02:12:61:13:6c:42", "serial": "1234"}, new_key())
    mender.seed_device({"mac": "02-12-61-13-6C-42", "serial": 1234}, keys.public_pem(new_key()).decode(), "pending")
    with client_for(mender) as client:
        [result] = unit_status.status(client, [unit])
    assert result.status == "missing"
    [text] = result.diagnosis
    assert "differs only in value types or formatting" in text
    assert '"02-12-61-13-6C-42"' in text and "serial=1234 (a number)" in text


def test_expected_key_for_identity(mender):
    unit = units(1)[0]
    with client_for(mender) as client:
        with pytest.raises(ServerError, match="no device with identity"):
            expected_key_for_identity(client, unit.identity)
        push.push(client, [unit])
        assert keys.same_key(expected_key_for_identity(client, unit.identity), unit.pubkey)
        mender.devices[next(iter(mender.devices))]["auth_sets"][0]["status"] = "rejected"
        with pytest.raises(ServerError, match="no accepted or preauthorized key"):
            expected_key_for_identity(client, unit.identity)


# --- preauth file ----------------------------------------------------------------------------------


def entry(name: str, identity, key=None) -> dict:
    return {"name": name, "identity_data": identity, "pubkey": keys.public_pem(key or new_key()).decode()}


def test_preauth_file_refuses_non_string_identity_values_and_pkcs1(tmp_path):
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pkcs1 = rsa_pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
    path = tmp_path / "preauth.json"
    path.write_text(
        json.dumps(
            [
                entry("a", {"sn": 1234}),
                {**entry("b", {"sn": "2"}), "pubkey": pkcs1},
                entry("c", {"sn": "3"}),
                entry("c", {"sn": "3"}),
            ]
        )
    )
    with pytest.raises(DeviceListError) as info:
        preauth.load_units(path)
    text = str(info.value)
    assert "'sn' is a number (1234)" in text and "never match" in text and 'write "1234"' in text
    assert "PKCS#1" in text and "same name as entry 3" in text and "same identity as entry 3" in text


def test_preauth_file_round_trip(tmp_path):
    path = tmp_path / "preauth.json"
    key = new_key()
    path.write_text(json.dumps([entry("unit1", {"mac": "aa", "sku": "x"}, key)]))
    [unit] = preauth.load_units(path)
    assert unit.name == "unit1" and unit.identity == {"mac": "aa", "sku": "x"} and unit.pubkey == key


def test_load_identity_forms(tmp_path):
    (tmp_path / "identity.json").write_text(json.dumps({"identity_data": {"mac": "aa"}}))
    assert preauth.load_identity(None, tmp_path / "identity.json") == {"mac": "aa"}
    assert preauth.load_identity('{"sn": "1"}', tmp_path / "none.json") == {"sn": "1"}
    with pytest.raises(UsageError, match="not found .*; pass --identity"):
        preauth.load_identity(None, tmp_path / "none.json")
    with pytest.raises(UsageError, match="a number"):
        preauth.load_identity('{"sn": 1}', tmp_path / "none.json")


# --- credentials -----------------------------------------------------------------------------------


def test_login_caches_the_jwt_0600(mender, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MENDER_TOKEN", raising=False)
    with client_for(mender, token=None) as client:
        token = useradm.login(client, "admin@example.com", "correct horse")
        with pytest.raises(AuthError, match="wrong username or password") as info:
            useradm.login(client, "admin@example.com", "nope")
    assert "nope" not in str(info.value)
    path = save_token(mender.url, token)
    assert path == token_cache_path(mender.url + "/") and path.parent == tmp_path / "cache" / "imagetools"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert resolve_token(mender.url) == (token, f"cached login ({path})")
    assert mender.login_headers[0].startswith("Basic ")
    with client_for(mender, token=token) as client:
        assert outcomes(push.push(client, units(1))) == ["preauthorized"]


def test_token_sources_and_expired_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("MENDER_TOKEN", raising=False)
    url = "https://mender.example.com"
    with pytest.raises(AuthError, match="no credentials for https://mender.example.com"):
        resolve_token(url)
    save_token(url, make_jwt("me", lifetime=-10))
    with pytest.raises(AuthError, match="expired"):
        resolve_token(url)
    monkeypatch.setenv("MENDER_TOKEN", "pat-from-env")
    assert resolve_token(url) == ("pat-from-env", "MENDER_TOKEN")
    token_file = tmp_path / "pat"
    token_file.write_text("pat-from-file\n")
    assert resolve_token(url, token_file) == ("pat-from-file", f"--token-file {token_file}")


def test_retry_after_forms():
    assert parse_retry_after("7") == 7.0
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    assert 25 < parse_retry_after(later.strftime("%a, %d %b %Y %H:%M:%S GMT")) <= 30
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# --- TLS -------------------------------------------------------------------------------------------


def test_tls_is_verified_by_default(tls_files):
    with MenderTestServer(tls=tls_files) as srv:
        with client_for(srv) as client, pytest.raises(ServerError, match="not trusted.*--ca-cert FILE"):
            deviceauth.get_device(client, "x")
        with client_for(srv, ca_cert=tls_files[0]) as client:
            assert deviceauth.get_device(client, "x") is None
        with client_for(srv, insecure=True) as client:
            assert deviceauth.get_device(client, "x") is None
    assert srv.violations == []


# --- the test server itself follows the specs --------------------------------------------------------


def test_test_server_refuses_pkcs1_and_records_spec_violations(mender):
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pkcs1 = rsa_pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
    auth = {"Authorization": "Bearer test-pat"}
    resp = httpx.post(mender.url + DEVICES, json={"identity_data": {"mac": "aa"}, "pubkey": pkcs1}, headers=auth)
    assert resp.status_code == 400 and "PKCS#1" in resp.json()["error"] and resp.json()["request_id"]
    assert mender.violations == []
    resp = httpx.get(mender.url + DEVICES, params={"per_page": 501}, headers=auth)
    resp2 = httpx.post(mender.url + DEVICES, json={"pubkey": "x"}, headers=auth)
    assert resp.status_code == resp2.status_code == 400
    found = mender.take_violations()
    assert len(found) == 2 and "per_page" in found[0] and "identity_data" in found[1]
