"""The committed device lists (fixtures/devices) through load_devices: the three forms of one
list give the same units, and each bad list gives one problem, on its line."""

from __future__ import annotations

import re

import pytest
from support.fixture_files import FIXTURES

from imagetools.devices import load_devices
from imagetools.errors import DeviceListError

DEVICES = FIXTURES / "devices"
UNITS = [
    ("unit0001", {"mac": "02:00:00:00:00:01", "sn": "SN0001"}, 2),
    ("unit0002", {"mac": "02:00:00:00:00:02", "sn": "SN0002"}, 3),
    ("unit0003", {"mac": "02:00:00:00:00:03", "sn": "SN0003"}, 4),
]
BAD = {
    "duplicate-identity.csv": (3, "duplicate identity"),
    "duplicate-name.csv": (3, "duplicate name 'unit0001'"),
    "empty-value.csv": (3, "empty identity value for 'mac'"),
    "field-count.csv": (3, "2 fields, the header has 3"),
    "unsafe-name.csv": (2, "name '../unit0001' is not usable"),
    "no-identity-column.csv": (1, "no identity column"),
    "not-a-list.json": (1, "expected a JSON list"),
    "boolean-value.json": (3, "identity value for 'mac' must be a string or number"),
    "repeated-key.json": (2, "key 'mac' appears twice"),
    "identity-data-and-flat.json": (2, "'identity_data' must be an object"),
}


@pytest.mark.parametrize("name", ["devices.csv", "devices.json", "devices-identity-data.json"])
def test_every_form_gives_the_same_units(name):
    devices = load_devices(DEVICES / name)
    assert [(d.name, d.identity, d.line) for d in devices] == UNITS
    assert all(d.key_path is None for d in devices)


def test_every_bad_list_is_tested():
    assert sorted(p.name for p in (DEVICES / "bad").iterdir()) == sorted(BAD)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_list_names_its_one_problem(name):
    line, problem = BAD[name]
    with pytest.raises(DeviceListError) as err:
        load_devices(DEVICES / "bad" / name)
    message = str(err.value)
    assert re.findall(r"line (\d+): ", message) == [str(line)], message
    assert f"line {line}: {problem}" in message
