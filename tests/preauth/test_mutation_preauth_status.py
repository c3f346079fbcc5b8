"""The server's view of units (imagetools.preauth.status) in process against the spec-validating
test server: every status and diagnosis with its exact text, and `preauthorized` for the ledger."""

from __future__ import annotations

from support.mender_server import MenderTestServer

from imagetools import keys
from imagetools.preauth import status as status_module
from imagetools.preauth.status import REGENERATED, UnitStatus, preauthorized, status
from imagetools.preauth.units import Unit
from imagetools.server import MenderClient, ServerSettings


def _unit(number: int, **identity: str) -> Unit:
    key = keys.generate(keys.KeySpec("ed25519")).public_key()
    return Unit(f"u{number}", identity or {"mac": f"02:00:00:00:00:{number:02x}"}, key)


def _other_pem() -> str:
    return keys.public_pem(keys.generate(keys.KeySpec("ed25519"))).decode()


def _fp(pem: str) -> str:
    return keys.fingerprint(keys.load_public(pem.encode(), "k"))


def _status(server: MenderTestServer, units: list[Unit]) -> list[UnitStatus]:
    with MenderClient(ServerSettings(server.url, token="test-pat", retries=0)) as client:
        return status(client, units)


def test_a_unit_the_server_does_not_have_is_missing(mender):
    unit = _unit(1)
    mender.seed_device({"mac": "02:00:00:00:00:99"}, _other_pem())
    [result] = _status(mender, [unit])
    assert result == UnitStatus(unit.name, unit.identity, unit.fingerprint, "missing")
    assert (result.device_id, result.key_status, result.diagnosis, result.ok) == (None, None, [], False)
    assert result.to_dict() == {
        "name": unit.name,
        "identity": unit.identity,
        "fingerprint": unit.fingerprint,
        "status": "missing",
        "device_id": None,
        "key_status": None,
        "diagnosis": [],
        "ok": False,
    }


def test_our_key_preauthorized_or_accepted_is_ok(mender):
    first, second = _unit(1), _unit(2)
    one = mender.seed_device(first.identity, first.pem, "preauthorized")
    two = mender.seed_device(second.identity, second.pem, "accepted")
    got = _status(mender, [first, second])
    assert [(r.name, r.status, r.device_id, r.key_status, r.diagnosis, r.ok) for r in got] == [
        ("u1", "preauthorized", one, "preauthorized", [], True),
        ("u2", "accepted", two, "accepted", [], True),
    ]
    assert got[0].to_dict()["ok"] is True


def test_a_device_that_made_a_key_of_its_own_is_diagnosed_with_both_keys(mender):
    unit = _unit(1)
    device_id = mender.seed_device(unit.identity, unit.pem, "preauthorized")
    theirs, also = _other_pem(), _other_pem()
    mender.add_auth_set(device_id, theirs, "pending")
    mender.add_auth_set(device_id, also, "pending")
    [result] = _status(mender, [unit])
    assert (result.status, result.key_status, result.ok) == ("pending", "preauthorized", False)
    assert result.diagnosis == [
        f"the device connected with a different key (pending): {REGENERATED}; "
        f"device key {_fp(theirs)}, {_fp(also)}, preauthorized key {unit.fingerprint}; "
        "check the image with imagetools verify"
    ]
    assert REGENERATED.startswith("the device is not using the injected key — the Mender client generated")


def test_a_device_without_our_key_names_the_keys_it_has(mender):
    unit = _unit(1)
    theirs, pending = _other_pem(), _other_pem()
    device_id = mender.seed_device(unit.identity, theirs, "accepted")
    mender.add_auth_set(device_id, pending, "pending")
    [result] = _status(mender, [unit])
    assert (result.status, result.device_id, result.key_status, result.ok) == ("accepted", device_id, None, False)
    assert result.diagnosis[1] == (
        f"the server has no auth set with the preauthorized key {unit.fingerprint} "
        f"(it has: {_fp(theirs)[:16]}… (accepted), {_fp(pending)[:16]}… (pending)); "
        "push again with --force to replace it"
    )
    assert result.diagnosis[0].startswith(f"the device connected with a different key (pending): {REGENERATED}")


def test_a_device_with_no_auth_set_has_none(mender):
    unit = _unit(1)
    device_id = mender.seed_device(unit.identity, _other_pem(), "accepted")
    mender.devices[device_id]["auth_sets"] = []
    mender.devices[device_id]["status"] = "noauth"
    [result] = _status(mender, [unit])
    assert (result.status, result.key_status) == ("noauth", None)
    assert result.diagnosis == [
        f"the server has no auth set with the preauthorized key {unit.fingerprint} (it has: none); "
        "push again with --force to replace it"
    ]


def test_a_device_without_a_status_is_unknown(mender):
    unit = _unit(1)
    device_id = mender.seed_device(unit.identity, unit.pem, "preauthorized")
    mender.devices[device_id]["status"] = None
    [result] = _status(mender, [unit])
    mender.take_violations()  # the spec wants a status; the client reads a null one as unknown
    assert (result.status, result.key_status, result.diagnosis, result.ok) == (
        "unknown",
        "preauthorized",
        [],
        False,
    )


def test_our_key_rejected_is_diagnosed(mender):
    unit = _unit(1)
    mender.seed_device(unit.identity, unit.pem, "rejected")
    [result] = _status(mender, [unit])
    assert (result.status, result.key_status, result.ok) == ("rejected", "rejected", False)
    assert result.diagnosis == ["the preauthorized key was rejected on the server"]


def test_the_first_auth_set_of_ours_gives_the_key_status(mender):
    unit = _unit(1)
    device_id = mender.seed_device(unit.identity, unit.pem, "accepted")
    mender.add_auth_set(device_id, unit.pem, "rejected")
    [result] = _status(mender, [unit])
    assert (result.key_status, result.diagnosis, result.ok) == ("accepted", [], True)


def test_a_device_typed_another_way_is_a_near_miss(mender):
    unit = _unit(1, mac="02:00:00:00:00:01", sn="SN1")
    ours = mender.seed_device(unit.identity, unit.pem, "preauthorized")
    near = mender.seed_device({" MAC": "02-00-00-00-00-01", "sn": "SN1"}, _other_pem(), "pending")
    typed = mender.seed_device({"mac": "02:00:00:00:00:01", "sn": "sn1"}, _other_pem(), "pending")
    mender.seed_device({"mac": "02:00:00:00:00:02", "sn": "SN1"}, _other_pem(), "pending")  # another device
    [result] = _status(mender, [unit])
    assert (result.device_id, result.status, result.ok) == (ours, "preauthorized", False)
    tail = (
        "the server matches identities exactly, so the preauthorization does not apply to it — "
        "make identity_data match what the device sends"
    )
    assert result.diagnosis == [
        f"device {near} (pending) has an identity that differs only in value types or formatting: "
        f'{" MAC"}="02-00-00-00-00-01" vs ours mac="02:00:00:00:00:01"; {tail}',
        f"device {typed} (pending) has an identity that differs only in value types or formatting: "
        f'sn="sn1" vs ours sn="SN1"; {tail}',
    ]


def test_a_near_miss_names_a_value_of_another_type(mender):
    unit = _unit(1, n="12")
    other = mender.seed_device({"n": 12}, _other_pem(), "pending")
    [result] = _status(mender, [unit])
    assert result.status == "missing"
    assert result.diagnosis == [
        f"device {other} (pending) has an identity that differs only in value types or formatting: "
        'n=12 (a number) vs ours n="12"; the server matches identities exactly, so the preauthorization '
        "does not apply to it — make identity_data match what the device sends"
    ]


def test_preauthorized_asks_the_server_for_each_identity_and_key(mender):
    first, second, third = _unit(1), _unit(2), _unit(3)
    one = mender.seed_device(first.identity, _other_pem(), "pending")
    mender.add_auth_set(one, first.pem, "preauthorized")
    mender.seed_device(second.identity, second.pem, "accepted")
    mender.seed_device(third.identity, third.pem, "pending")
    wanted = [
        (first.identity, first.fingerprint),
        (second.identity, second.fingerprint),
        (third.identity, third.fingerprint),
        (first.identity, second.fingerprint),
        ({"mac": "absent"}, first.fingerprint),
        (None, first.fingerprint),
        ({}, first.fingerprint),
        (first.identity, None),
        (first.identity, ""),
    ]
    with MenderClient(ServerSettings(mender.url, token="test-pat", retries=0)) as client:
        assert preauthorized(client, wanted) == [True, True, False, False, False, None, None, None, None]
        assert preauthorized(client, []) == []


def test_a_listed_key_that_is_no_key_has_no_fingerprint():
    assert status_module._fingerprint("not a key") is None
    pem = _other_pem()
    assert status_module._fingerprint(pem) == _fp(pem)


def test_our_key_pending_is_not_a_different_key(mender):
    unit = _unit(1)
    device_id = mender.seed_device(unit.identity, unit.pem, "pending")
    [result] = _status(mender, [unit])
    assert result == UnitStatus(unit.name, unit.identity, unit.fingerprint, "pending", device_id, "pending", [])
    assert result.ok is False


def test_a_near_miss_names_every_attribute_that_differs(mender):
    unit = _unit(1, mac="02:00:00:00:00:01", sn="SN1")
    mender.seed_device(unit.identity, unit.pem, "preauthorized")
    near = mender.seed_device({"MAC": "02-00-00-00-00-01", "sn": "sn1"}, _other_pem(), "pending")
    [result] = _status(mender, [unit])
    assert result.diagnosis == [
        f"device {near} (pending) has an identity that differs only in value types or formatting: "
        'MAC="02-00-00-00-00-01" vs ours mac="02:00:00:00:00:01"; sn="sn1" vs ours sn="SN1"; '
        "the server matches identities exactly, so the preauthorization does not apply to it — "
        "make identity_data match what the device sends"
    ]
