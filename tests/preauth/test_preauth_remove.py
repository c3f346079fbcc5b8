"""`imagetools preauth remove`, and push's warning about preauthorizations left behind, run as the
real console script against the spec-validating test server (its DELETE endpoints included)."""

from __future__ import annotations

import json
import shlex
from types import SimpleNamespace

from support.inputs import macs, new_pem, write_preauth
from support.mender_server import DEVICES, MenderTestServer, Reply

from imagetools import keys, preauth
from imagetools.mender import DEVICE_V2
from imagetools.preauth import leftbehind, remove
from imagetools.server import MenderClient, ServerSettings


def device_of(mender: MenderTestServer, identity: dict) -> dict | None:
    return next((d for d in mender.devices.values() if d["identity_data"] == identity), None)


def deletes(mender: MenderTestServer) -> list[int]:
    return [status for method, _path, status in mender.log if method == "DELETE"]


def outcomes(result) -> list[str]:
    return [r["outcome"] for r in json.loads(result.stdout)["items"]]


# --- remove ------------------------------------------------------------------------------------------


def test_remove_takes_our_auth_sets_and_a_rerun_finds_nothing(cli, env, mender, tmp_path):
    entries = write_preauth(tmp_path / "preauth.json", macs(1, 2))
    assert cli("preauth", "push", "preauth.json", env=env).returncode == 0
    second = device_of(mender, entries[1]["identity_data"])
    mender.add_auth_set(second["id"], new_pem(), "pending")  # the device booted with another key
    removed = cli("preauth", "remove", "preauth.json", "--json", env=env)
    assert removed.returncode == 0, removed.stderr
    assert outcomes(removed) == ["removed", "removed"]
    assert json.loads(removed.stdout)["summary"] == {"removed": 2, "not-found": 0, "refused": 0, "failed": 0}
    assert device_of(mender, entries[0]["identity_data"]) is None  # its only set: the device goes too
    assert [s["status"] for s in mender.devices[second["id"]]["auth_sets"]] == ["pending"]  # not ours: kept
    again = cli("preauth", "remove", "preauth.json", env=env)
    assert again.returncode == 0, again.stderr
    assert "0 removed, 2 not-found, 0 refused, 0 failed" in again.stdout
    assert deletes(mender) == [204, 204]


def test_remove_an_out_directory_and_identities_given_on_their_own(cli, env, mender, tmp_path):
    write_preauth(tmp_path / "OUT" / "preauth.json", macs(1))
    assert cli("preauth", "push", "OUT/preauth.json", env=env).returncode == 0
    lone = mender.seed_device(macs(7)[0], new_pem(), "preauthorized")
    booted = mender.seed_device(macs(8)[0], new_pem(), "pending")
    result = cli(
        "preauth",
        "remove",
        "OUT",
        "--identity",
        json.dumps(macs(7)[0]),
        "--identity",
        json.dumps(macs(8)[0]),
        "--json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert outcomes(result) == ["removed", "removed", "not-found"]
    assert lone not in mender.devices and booted in mender.devices
    assert "only preauthorized ones are ours" in json.loads(result.stdout)["items"][2]["detail"]
    (tmp_path / "empty").mkdir()
    missing = cli("preauth", "remove", "empty", env=env)
    assert missing.returncode == 2 and "has no preauth.json" in missing.stderr
    nothing = cli("preauth", "remove", env=env)
    assert nothing.returncode == 2 and "nothing to remove" in nothing.stderr
    typed = cli("preauth", "remove", "--identity", '{"serial": 1234}', env=env)
    assert typed.returncode == 2 and "is a number" in typed.stderr


def test_a_device_accepted_with_an_unknown_key_is_refused_unless_forced(cli, env, mender, tmp_path):
    [entry] = write_preauth(tmp_path / "preauth.json", macs(1))
    device_id = mender.seed_device(entry["identity_data"], new_pem(), "accepted")  # someone else's key
    mender.add_auth_set(device_id, entry["pubkey"], "preauthorized")
    refused = cli("preauth", "remove", "preauth.json", env=env)
    assert refused.returncode == 1
    assert "refused" in refused.stdout and "accepted with a key we do not know" in refused.stdout
    assert refused.stderr.count("\n") == 1 and "1 of 1 unit(s) refused or failed" in refused.stderr
    alone = cli("preauth", "remove", "--identity", json.dumps(entry["identity_data"]), "--json", env=env)
    assert alone.returncode == 1 and outcomes(alone) == ["refused"]
    assert deletes(mender) == []
    forced = cli("preauth", "remove", "preauth.json", "--force", "--json", env=env)
    assert forced.returncode == 0, forced.stderr
    assert outcomes(forced) == ["removed"]
    assert [s["status"] for s in mender.devices[device_id]["auth_sets"]] == ["accepted"]


def test_our_key_is_ours_whatever_its_status(cli, env, mender, tmp_path):
    [entry] = write_preauth(tmp_path / "preauth.json", macs(1))
    device_id = mender.seed_device(entry["identity_data"], entry["pubkey"], "accepted")  # the unit booted
    mender.add_auth_set(device_id, new_pem(), "preauthorized")  # not our key
    result = cli("preauth", "remove", "preauth.json", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert outcomes(result) == ["removed"]
    assert [s["status"] for s in mender.devices[device_id]["auth_sets"]] == ["preauthorized"]


def test_decommission_removes_the_whole_device(cli, env, mender, tmp_path):
    entries = write_preauth(tmp_path / "preauth.json", macs(1, 2))
    ours = mender.seed_device(entries[0]["identity_data"], entries[0]["pubkey"], "preauthorized")
    mender.add_auth_set(ours, new_pem(), "pending")
    in_use = mender.seed_device(entries[1]["identity_data"], new_pem(), "accepted")  # our set and a stranger's
    mender.add_auth_set(in_use, entries[1]["pubkey"], "preauthorized")
    result = cli("preauth", "remove", "preauth.json", "--decommission", "--json", env=env)
    assert result.returncode == 1
    assert outcomes(result) == ["removed", "refused"]
    assert "--force decommissions it anyway" in json.loads(result.stdout)["items"][1]["detail"]
    assert ours not in mender.devices and in_use in mender.devices
    assert mender.requests_to("DELETE", f"{DEVICES}/{ours}") == [204]
    forced = cli("preauth", "remove", "preauth.json", "--decommission", "--force", "--json", env=env)
    assert forced.returncode == 0 and outcomes(forced) == ["not-found", "removed"]
    assert not mender.devices


def test_decommission_leaves_devices_that_hold_nothing_of_ours(cli, env, mender, tmp_path):
    """Issue 18 item 8: --decommission deleted devices holding only other keys' auth sets."""
    entries = write_preauth(tmp_path / "preauth.json", macs(1, 2, 3, 4))
    pending = mender.seed_device(entries[0]["identity_data"], new_pem(), "pending")
    preauthorized = mender.seed_device(entries[1]["identity_data"], new_pem(), "preauthorized")
    in_use = mender.seed_device(entries[2]["identity_data"], new_pem(), "accepted")
    ours = mender.seed_device(entries[3]["identity_data"], entries[3]["pubkey"], "preauthorized")
    mender.add_auth_set(ours, new_pem(), "pending")  # ours plus another key: decommissioned
    before = {d: [dict(s) for s in mender.devices[d]["auth_sets"]] for d in (pending, preauthorized, in_use)}
    plain = cli("preauth", "remove", "preauth.json", "--dry-run", "--json", env=env)
    assert plain.returncode == 0, plain.stderr
    assert outcomes(plain) == ["not-found", "not-found", "not-found", "would-remove"]
    for flags in (["--decommission"], ["--decommission", "--force"]):
        result = cli("preauth", "remove", "preauth.json", *flags, "--json", env=env)
        assert result.returncode == 0, result.stderr
        assert outcomes(result) == ["not-found"] * 3 + (["removed"] if flags == ["--decommission"] else ["not-found"])
        items, plain_items = json.loads(result.stdout)["items"], json.loads(plain.stdout)["items"]
        for item, plain_item in zip(items[:3], plain_items[:3]):  # the same answer as without --decommission
            assert item["detail"] == plain_item["detail"] and "holds no auth set of ours" in item["detail"]
            assert item["auth_sets"] == [] and item["device_id"] == plain_item["device_id"]
        assert "accepted with a key we do not know: in use, left alone" in items[2]["detail"]
    assert {d: mender.devices[d]["auth_sets"] for d in before} == before  # untouched
    assert ours not in mender.devices
    assert deletes(mender) == [204] and mender.requests_to("DELETE", f"{DEVICES}/{ours}") == [204]
    # an identity given on its own: only a preauthorized set is ours, so the pending-only device stays too
    alone = cli(
        "preauth", "remove", "--identity", json.dumps(entries[0]["identity_data"]), "--decommission", "--json", env=env
    )
    assert alone.returncode == 0 and outcomes(alone) == ["not-found"], alone.stderr
    assert "only preauthorized ones are ours" in json.loads(alone.stdout)["items"][0]["detail"]
    assert pending in mender.devices and deletes(mender) == [204]


def test_a_device_without_auth_sets_holds_nothing_of_ours(cli, env, mender, tmp_path):
    [entry] = write_preauth(tmp_path / "preauth.json", macs(1))
    bare = mender.seed_device(entry["identity_data"], entry["pubkey"])
    del mender.devices[bare]["auth_sets"]  # optional in the spec's Device
    for flags in ([], ["--decommission"], ["--decommission", "--force"]):
        result = cli("preauth", "remove", "preauth.json", *flags, "--json", env=env)
        assert result.returncode == 0 and outcomes(result) == ["not-found"], result.stderr
        assert json.loads(result.stdout)["items"][0]["detail"] == f"device {bare} holds no auth set of ours (none)"
        alone = cli("preauth", "remove", "--identity", json.dumps(entry["identity_data"]), *flags, "--json", env=env)
        assert alone.returncode == 0 and outcomes(alone) == ["not-found"], alone.stderr
    assert bare in mender.devices and deletes(mender) == []


def test_an_auth_set_whose_pubkey_is_not_a_key_is_not_ours(cli, env, mender, tmp_path):
    entries = write_preauth(tmp_path / "preauth.json", macs(1, 2, 3))
    garbage = [
        "not a key",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        keys.private_pem(keys.generate(keys.KeySpec("ed25519"))).decode(),
    ]
    devices = []
    for entry, pem in zip(entries, garbage):
        devices.append(mender.seed_device(entry["identity_data"], entry["pubkey"]))
        mender.devices[devices[-1]]["auth_sets"][0]["pubkey"] = pem  # a string, as the spec allows
    for flags in ([], ["--decommission"]):
        result = cli("preauth", "remove", "preauth.json", *flags, "--json", env=env)
        assert result.returncode == 0 and outcomes(result) == ["not-found"] * 3, result.stderr
        assert "Traceback" not in result.stderr
        assert all("unreadable key" in item["detail"] for item in json.loads(result.stdout)["items"])
        # on its own a preauthorized set is ours, but not one without a key we can read
        alone = cli(
            "preauth",
            "remove",
            *(a for e in entries for a in ("--identity", json.dumps(e["identity_data"]))),
            *flags,
            "--json",
            env=env,
        )
        assert alone.returncode == 0 and outcomes(alone) == ["not-found"] * 3, alone.stderr
    assert all(d in mender.devices for d in devices) and deletes(mender) == []


def test_an_auth_set_of_ours_without_an_id_fails_that_identity_only(cli, env, mender, tmp_path):
    entries = write_preauth(tmp_path / "preauth.json", macs(1, 2))
    no_id = mender.seed_device(entries[0]["identity_data"], entries[0]["pubkey"])
    mender.add_auth_set(no_id, new_pem(), "pending")
    del mender.devices[no_id]["auth_sets"][0]["id"]  # optional in the spec's AuthSet
    fine = mender.seed_device(entries[1]["identity_data"], entries[1]["pubkey"])
    result = cli("preauth", "remove", "preauth.json", "--json", env=env)
    assert result.returncode == 1 and outcomes(result) == ["failed", "removed"]
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "1 of 2 unit(s) refused or failed, e.g. unit0: failed: " in result.stderr
    assert "lists an auth set of ours without an id" in result.stderr
    assert fine not in mender.devices and len(mender.devices[no_id]["auth_sets"]) == 2
    assert deletes(mender) == [204]
    # decommissioning needs only the device's id: the device holds a set of ours, so it goes
    decommissioned = cli("preauth", "remove", "preauth.json", "--decommission", "--json", env=env)
    assert decommissioned.returncode == 0 and outcomes(decommissioned) == ["removed", "not-found"]
    assert not mender.devices


class _RemovedMeanwhile(MenderTestServer):
    """Someone else removes the auth sets in ``meanwhile`` just before our DELETE reaches them."""

    meanwhile: frozenset[str] = frozenset()

    def _delete(self, parts: list[str]) -> Reply:
        device = self.devices.get(parts[0])
        if device and len(parts) == 3 and parts[2] in self.meanwhile:
            device["auth_sets"] = [s for s in device["auth_sets"] if s["id"] != parts[2]]
        return super()._delete(parts)


def test_two_auth_sets_of_ours_one_gone_meanwhile_both_count_as_removed(cli, tmp_path):
    first = write_preauth(tmp_path / "a.json", macs(1))
    second = write_preauth(tmp_path / "b.json", macs(1))  # re-emitted with another key
    with _RemovedMeanwhile() as srv:
        device_id = srv.seed_device(first[0]["identity_data"], first[0]["pubkey"])
        srv.add_auth_set(device_id, second[0]["pubkey"], "preauthorized")
        gone, kept = (s["id"] for s in srv.devices[device_id]["auth_sets"])
        srv.meanwhile = frozenset({gone})
        env = {"MENDER_SERVER_URL": srv.url, "MENDER_TOKEN": "test-pat"}
        result = cli("preauth", "remove", "a.json", "b.json", "--json", env=env)
        assert result.returncode == 0, result.stderr
        [item] = json.loads(result.stdout)["items"]
        assert item["outcome"] == "removed" and item["auth_sets"] == [gone, kept]
        assert f"auth set {gone} already gone (HTTP 404)" in item["detail"]
        assert json.loads(result.stdout)["summary"]["removed"] == 1
        assert deletes(srv) == [404, 204] and not srv.devices
        assert srv.violations == []


def test_a_listing_breaking_the_api_stops_before_any_removal(cli, env, mender, tmp_path):
    """auth_sets not a list, or a pubkey that is not text: the client refuses the listing (exit 4)."""
    entries = write_preauth(tmp_path / "preauth.json", macs(1, 2))
    broken = mender.seed_device(entries[0]["identity_data"], entries[0]["pubkey"])
    mender.seed_device(entries[1]["identity_data"], entries[1]["pubkey"])
    for damage, message in (
        (lambda d: d.update(auth_sets={"id": "x"}), "auth_sets is an object, not a list"),
        (lambda d: d["auth_sets"][0].update(pubkey=12345), "pubkey is a number, not PEM text"),
    ):
        saved = json.loads(json.dumps(mender.devices[broken]))
        damage(mender.devices[broken])
        for flags in ([], ["--decommission", "--force"]):
            result = cli("preauth", "remove", "preauth.json", *flags, env=env)
            assert result.returncode == 4 and result.stderr.count("\n") == 1, result.stderr
            assert message in result.stderr and "Traceback" not in result.stderr
        assert mender.take_violations() and deletes(mender) == [] and len(mender.devices) == 2
        mender.devices[broken] = saved


class _Recorder:
    """A transport whose listing nothing has checked (the client checks every device): the
    planner must not trip over it. Each DELETE is recorded and answered 204."""

    def __init__(self, devices: list[dict]):
        self.devices, self.calls = devices, []

    def paged(self, path, params, what, problem):
        return iter(self.devices)

    def request(self, method, path, *, what, **kwargs):
        self.calls.append((method, path))
        return SimpleNamespace(status_code=204)


def test_remove_plans_hostile_listings_without_a_traceback():
    key = keys.generate(keys.KeySpec("ed25519")).public_key()
    pem = keys.public_pem(key).decode()
    listings = {
        "no-sets": {"id": "d1"},
        "sets-null": {"id": "d2", "auth_sets": None},
        "sets-text": {"id": "d3", "auth_sets": "oops"},
        "sets-of-numbers": {"id": "d4", "auth_sets": [1, 2]},
        "number-key": {"id": "d5", "auth_sets": [{"id": "a", "pubkey": 5, "status": "preauthorized"}]},
        "object-key": {"id": "d6", "auth_sets": [{"id": "a", "pubkey": {"pem": pem}, "status": "preauthorized"}]},
        "no-key": {"id": "d7", "auth_sets": [{"id": "a", "status": "preauthorized"}]},
        "unicode-key": {"id": "d8", "auth_sets": [{"id": "a", "pubkey": "\ud800", "status": "preauthorized"}]},
        "number-id": {"id": "d9", "auth_sets": [{"id": 7, "pubkey": pem, "status": "preauthorized"}]},
        "no-device-id": {"auth_sets": [{"id": "a", "pubkey": pem, "status": "preauthorized"}]},
    }
    expected = {
        "no-sets": "not-found",
        "sets-null": "not-found",
        "sets-text": "failed",
        "sets-of-numbers": "failed",
        "number-key": "not-found",
        "object-key": "not-found",
        "no-key": "not-found",
        "unicode-key": "not-found",
        "number-id": "failed",
        "no-device-id": "failed",
    }
    devices = [{**device, "identity_data": {"name": name}} for name, device in listings.items()]
    for decommission in (False, True):
        for with_key in (True, False):
            client = _Recorder(devices)
            targets = [remove.Target({"name": name}, (key,) if with_key else (), name) for name in listings]
            results = remove.remove(client, targets, decommission=decommission, force=True)
            got = {r.name: r.outcome for r in results}
            want = dict(expected)
            if decommission:
                want["number-id"] = "removed"  # decommissioning needs the device's id only
            assert got == want, (decommission, with_key)
            assert all(r.detail and "\n" not in r.detail for r in results)
            assert client.calls == ([("DELETE", DEVICE_V2.format(device_id="d9"))] if decommission else [])


def test_dry_run_removes_nothing(cli, env, mender, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(1, 2))
    assert cli("preauth", "push", "preauth.json", env=env).returncode == 0
    result = cli("preauth", "remove", "preauth.json", "--dry-run", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert outcomes(result) == ["would-remove"] * 2 and report["dry_run"] is True
    assert report["summary"]["would-remove"] == 2 and all(r["auth_sets"] for r in report["items"])
    assert deletes(mender) == [] and len(mender.devices) == 2


def test_a_refused_removal_fails_that_identity_only(cli, env, mender, tmp_path):
    write_preauth(tmp_path / "preauth.json", macs(1, 2))
    assert cli("preauth", "push", "preauth.json", env=env).returncode == 0
    mender.fail_next(500, prefix=DEVICES + "/")
    result = cli("preauth", "remove", "preauth.json", "--retries", "0", "--jobs", "1", "--json", env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert outcomes(result) == ["failed", "removed"]
    assert "HTTP 500" in report["items"][0]["detail"] and "request_id" in report["items"][0]["detail"]


class _Misbehaving(MenderTestServer):
    """Answers every DELETE with ``answer`` instead of what the API says."""

    answer = Reply(200, {"ok": True})

    def _delete(self, parts: list[str]) -> Reply:
        return self.answer


def test_an_answer_the_api_does_not_give_exits_4(cli, tmp_path):
    [entry] = write_preauth(tmp_path / "preauth.json", macs(1))
    with _Misbehaving() as srv:
        srv.seed_device(entry["identity_data"], entry["pubkey"])
        result = cli(
            "preauth", "remove", "preauth.json", env={"MENDER_SERVER_URL": srv.url, "MENDER_TOKEN": "test-pat"}
        )
        assert result.returncode == 4 and result.stderr.count("\n") == 1
        assert "unexpected answer" in result.stderr and "204" in result.stderr
        assert any("200 is not in the spec" in v for v in srv.take_violations())


def test_a_404_on_delete_means_gone_meanwhile():
    key = keys.generate(keys.KeySpec("ed25519")).public_key()
    with _Misbehaving() as srv:
        srv.answer = Reply(404, {"error": "authentication set not found"})
        srv.seed_device({"mac": "aa"}, keys.public_pem(key).decode())
        with MenderClient(ServerSettings(srv.url, token="test-pat")) as client:
            [result] = remove.remove(client, [remove.Target({"mac": "aa"}, (key,), "u1")])
        assert result.outcome == "not-found" and "already gone" in result.detail
        assert srv.violations == []


def test_identities_from_several_files_keep_every_key():
    first, second = (keys.generate(keys.KeySpec("ed25519")).public_key() for _ in range(2))
    units = [preauth.Unit("a", {"mac": "aa"}, first), preauth.Unit("a2", {"mac": "aa"}, second)]
    [target] = remove.removal_targets(units, [{"mac": "aa"}])
    assert target.name == "a" and len(target.keys) == 2


# --- push: preauthorizations left behind -------------------------------------------------------------


def test_push_names_the_identity_a_typo_fix_left_behind(cli, env, mender, tmp_path):
    identities = [{"mac": "02:00:00:00:00:01", "sn": "SN1"}, {"mac": "02:00:00:00:00:03", "sn": "SN3"}]
    entries = write_preauth(tmp_path / "preauth.json", identities)
    assert cli("preauth", "push", "preauth.json", env=env).returncode == 0
    mender.seed_device({"mac": "02:00:00:00:00:09", "sn": "SN9"}, new_pem())  # an earlier batch: not ours
    identities[1] = {"mac": "02:00:00:00:00:33", "sn": "SN3"}  # the typo fixed, re-emitted
    write_preauth(tmp_path / "preauth.json", identities, [entries[0]["pubkey"], new_pem()])
    pushed = cli("preauth", "push", "preauth.json", "--json", env=env)
    assert pushed.returncode == 0, pushed.stderr
    left = json.loads(pushed.stdout)["left_behind"]
    assert left["count"] == 1 and left["devices"][0]["unit"] == "unit1"
    [warning] = pushed.stderr.splitlines()
    assert warning.startswith("imagetools: warning: device ") and "only in mac" in warning
    command = warning.split("remove it with: ")[1]
    assert command == left["devices"][0]["remove_command"]
    removed = cli(*shlex.split(command)[1:], env=env)
    assert removed.returncode == 0 and "1 removed" in removed.stdout, removed.stderr
    clean = cli("preauth", "push", "preauth.json", "--json", env=env)
    assert json.loads(clean.stdout)["left_behind"] == {"count": 0, "devices": []} and clean.stderr == ""
    dry = cli("preauth", "push", "preauth.json", "--dry-run", "--json", env=env)
    assert json.loads(dry.stdout)["left_behind"] is None


def _device(identity: dict, pem: str, status: str = "preauthorized") -> dict:
    return {
        "id": "d" + str(abs(hash(json.dumps(identity))))[:10],
        "identity_data": identity,
        "status": status,
        "auth_sets": [{"id": "a1", "pubkey": pem, "status": status}],
    }


def test_left_behind_is_ours_only_by_key_or_a_shared_unique_value():
    key = keys.generate(keys.KeySpec("ed25519")).public_key()
    pem = keys.public_pem(key).decode()
    units = [preauth.Unit("u1", {"mac": "02:00:00:00:00:33"}, key)]
    # the MAC alone: earlier units one character apart are not flagged, the same key is
    assert leftbehind.left_behind([_device({"mac": "02:00:00:00:00:03"}, new_pem())], units) == []
    [found] = leftbehind.left_behind([_device({"mac": "02:00:00:00:00:03"}, pem)], units)
    assert found.unit == "u1" and "key" in found.reason
    # a value every unit shares (a SKU) is no evidence; a value only one unit and one device have is
    batch = [
        preauth.Unit(
            f"u{i}", {"mac": f"m{i}", "sku": "gw", "sn": f"SN{i}"}, keys.generate(keys.KeySpec("ed25519")).public_key()
        )
        for i in range(3)
    ]
    others = [_device({"mac": f"old{i}", "sku": "gw", "sn": f"OLD{i}"}, new_pem()) for i in range(3)]
    assert leftbehind.left_behind(others, batch) == []
    typo = _device({"mac": "m1-typo", "sku": "gw", "sn": "SN1"}, new_pem())
    [found] = leftbehind.left_behind(others + [typo], batch)
    assert found.unit == "u1" and "only in mac" in found.reason
    # accepted (in use), two values apart, or values that are not strings: not ours to point at
    assert (
        leftbehind.left_behind([_device({"mac": "m1-typo", "sku": "gw", "sn": "SN1"}, new_pem(), "accepted")], batch)
        == []
    )
    assert leftbehind.left_behind([_device({"mac": "m1-typo", "sku": "x", "sn": "SN1"}, new_pem())], batch) == []
    assert leftbehind.left_behind([_device({"mac": 1, "sku": "gw", "sn": "SN1"}, new_pem())], batch) == []
