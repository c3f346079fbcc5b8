"""Preauthorizations a fixed typo left behind (imagetools.preauth.leftbehind): which devices count
as ours and which do not, each at its bound, the exact reasons and the command to remove them."""

from __future__ import annotations

import shlex

from imagetools import keys
from imagetools.preauth.leftbehind import LeftBehind, find_left_behind, left_behind
from imagetools.preauth.units import Unit
from imagetools.server import MenderClient, ServerSettings


def _unit(name: str, identity: dict[str, str]) -> Unit:
    return Unit(name, identity, keys.generate(keys.KeySpec("ed25519")).public_key())


def _other_pem() -> str:
    return keys.public_pem(keys.generate(keys.KeySpec("ed25519"))).decode()


def _device(device_id: str, identity, *sets: tuple[object, str]) -> dict:
    return {
        "id": device_id,
        "identity_data": identity,
        "auth_sets": [{"id": f"a{i}", "pubkey": pem, "status": st} for i, (pem, st) in enumerate(sets)],
    }


def test_a_device_preauthorized_with_a_units_key_under_another_identity_is_left_behind():
    unit = _unit("u1", {"mac": "m1"})
    devices = [
        _device("d0", {"mac": "m1"}, (unit.pem, "preauthorized")),  # the file has it: not left behind
        _device(
            "d1", {"mac": "m1-typo"}, ("garbage", "preauthorized"), (5, "preauthorized"), (unit.pem, "preauthorized")
        ),
        _device("d2", {"mac": "m1-old"}, (unit.pem, "accepted")),  # booted: not a preauthorization
        _device("d3", {"mac": "m1-pending"}, (unit.pem, "pending")),
    ]
    assert left_behind(devices, [unit]) == [
        LeftBehind("d1", {"mac": "m1-typo"}, "u1", "its preauthorized key is unit u1's")
    ]


def test_identities_no_client_could_send_are_never_left_behind():
    unit = _unit("u1", {"mac": "m1"})
    devices = [
        _device("d1", {"mac": 1}, (unit.pem, "preauthorized")),
        _device("d2", {"mac": "x", "n": None}, (unit.pem, "preauthorized")),
        _device("d3", {}, (unit.pem, "preauthorized")),
        _device("d4", None, (unit.pem, "preauthorized")),
        _device("d5", ["m1"], (unit.pem, "preauthorized")),
        {"id": "d6", "auth_sets": [{"id": "a", "pubkey": unit.pem, "status": "preauthorized"}]},
        {"id": "d7", "identity_data": {"mac": "m7"}},
        {"id": "d8", "identity_data": {"mac": "m8"}, "auth_sets": None},
    ]
    assert left_behind(devices, [unit]) == []


def test_one_value_apart_with_a_value_only_that_unit_and_device_share():
    units = [_unit("u1", {"mac": "m1", "sn": "SN1"}), _unit("u3", {"mac": "m3", "sn": "SN3"})]
    devices = [_device("d33", {"mac": "m33", "sn": "SN3"}, (_other_pem(), "preauthorized"))]
    [found] = left_behind(devices, units)
    assert found == LeftBehind(
        "d33",
        {"mac": "m33", "sn": "SN3"},
        "u3",
        'its identity differs from unit u3\'s only in mac ("m33" on the server, "m3" in the file)',
    )
    assert found.to_dict() == {
        "device_id": "d33",
        "identity": {"mac": "m33", "sn": "SN3"},
        "unit": "u3",
        "reason": found.reason,
        "remove_command": found.remove_command,
    }
    # the same device only pending, or with its shared value spelt in the other attribute, is not
    assert left_behind([_device("d33", {"mac": "m33", "sn": "SN3"}, (_other_pem(), "pending"))], units) == []
    assert left_behind([_device("d", {"mac": "SN3", "sn": "m33"}, (_other_pem(), "preauthorized"))], units) == []


def test_a_value_two_units_share_is_no_evidence():
    units = [_unit("u1", {"mac": "m1", "sku": "gw"}), _unit("u2", {"mac": "m2", "sku": "gw"})]
    devices = [_device("d", {"mac": "m9", "sku": "gw"}, (_other_pem(), "preauthorized"))]
    assert left_behind(devices, units) == []
    # with one unit, the SKU is its own: the device is one value apart
    [found] = left_behind(devices, units[:1])
    assert (found.unit, found.device_id) == ("u1", "d")


def test_a_value_two_devices_share_is_no_evidence():
    units = [_unit("u1", {"mac": "m1", "sn": "SN1"})]
    devices = [
        _device("d1", {"mac": "m8", "sn": "SN1"}, (_other_pem(), "preauthorized")),
        _device("d2", {"mac": "m9", "sn": "SN1"}, (_other_pem(), "pending")),
    ]
    assert left_behind(devices, units) == []
    assert [f.device_id for f in left_behind(devices[:1], units)] == ["d1"]


def test_other_attribute_names_or_two_values_apart_are_not_ours():
    units = [_unit("u1", {"mac": "m1", "sn": "SN1", "rev": "r1"})]
    more = _device("d1", {"mac": "m1x", "sn": "SN1", "rev": "r1", "x": "y"}, (_other_pem(), "preauthorized"))
    fewer = _device("d2", {"mac": "m1y", "sn": "SN1"}, (_other_pem(), "preauthorized"))
    two = _device("d3", {"mac": "m1z", "sn": "SN1", "rev": "r2"}, (_other_pem(), "preauthorized"))
    assert left_behind([more], units) == []
    assert left_behind([fewer], units) == []
    assert left_behind([two], units) == []
    one = _device("d4", {"mac": "m1w", "sn": "SN1", "rev": "r1"}, (_other_pem(), "preauthorized"))
    [found] = left_behind([one], units)
    assert found.reason == 'its identity differs from unit u1\'s only in mac ("m1w" on the server, "m1" in the file)'


def test_the_found_devices_keep_the_listing_order_and_the_key_beats_the_values():
    a, b = _unit("ua", {"mac": "ma", "sn": "SNa"}), _unit("ub", {"mac": "mb", "sn": "SNb"})
    devices = [
        _device("d2", {"mac": "mb2", "sn": "SNb"}, (_other_pem(), "preauthorized")),
        _device("d1", {"mac": "mX", "sn": "SNa"}, (b.pem, "preauthorized")),
    ]
    assert [(f.device_id, f.unit, f.reason.split(" ")[1]) for f in left_behind(devices, [a, b])] == [
        ("d2", "ub", "identity"),
        ("d1", "ub", "preauthorized"),
    ]


def test_the_remove_command_is_ready_to_paste():
    found = LeftBehind("d1", {"sn": "it's 1", "mac": "m 1"}, "u1", "r")
    assert found.remove_command == "imagetools preauth remove --identity " + shlex.quote('{"mac":"m 1","sn":"it\'s 1"}')
    assert shlex.split(found.remove_command)[-1] == '{"mac":"m 1","sn":"it\'s 1"}'


def test_find_left_behind_walks_the_servers_list(mender):
    unit = _unit("u1", {"mac": "m1", "sn": "SN1"})
    mender.seed_device({"mac": "m1", "sn": "SN1"}, unit.pem)
    stray = mender.seed_device({"mac": "m1-typo", "sn": "SN1"}, _other_pem())
    mender.seed_device({"mac": "m2", "sn": "SN2"}, _other_pem())
    with MenderClient(ServerSettings(mender.url, token="test-pat", retries=0)) as client:
        [found] = find_left_behind(client, [unit])
    assert (found.device_id, found.identity, found.unit) == (stray, {"mac": "m1-typo", "sn": "SN1"}, "u1")


def test_a_stray_without_a_preauthorization_does_not_end_the_search():
    unit = _unit("u1", {"mac": "m1"})
    devices = [
        _device("d1", {"mac": "m1-booted"}, (unit.pem, "accepted")),
        _device("d2", {"mac": "m1-typo"}, (unit.pem, "preauthorized")),
    ]
    assert [f.device_id for f in left_behind(devices, [unit])] == ["d2"]
