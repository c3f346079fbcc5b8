"""Device lists from outside are not trusted: special and huge files, header and key case, JSON
numbers as written, repeated JSON keys, reordered identities, and garbage by property."""

from __future__ import annotations

import json
import os
import re

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.limits import finishes_within, run_python

from imagetools import devices, keys
from imagetools.devices import canonical_identity, load_devices, parse_csv, parse_json
from imagetools.errors import DeviceListError


def _problems(parse, text: str, **kw) -> str:
    with pytest.raises(DeviceListError) as err:
        parse(text, **kw)
    return str(err.value)


@pytest.fixture
def key_file(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "k1.pem").write_bytes(keys.private_pem(key, "pkcs8"))
    return keys.fingerprint(key)


# --- the file itself -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["devices.csv", "devices.json"])
def test_fifo_device_list_is_refused_without_blocking(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    error = finishes_within(5, load_devices, fifo)
    assert isinstance(error, DeviceListError), error
    assert str(error) == f"device list {fifo} is a FIFO, not a regular file"


def test_dev_zero_and_directories_are_refused():
    child = run_python("from imagetools.devices import load_devices; load_devices('/dev/zero')")
    assert child.returncode == 1
    assert child.stderr.splitlines()[-1] == (
        "imagetools.errors.DeviceListError: device list /dev/zero is a character device, not a regular file"
    )
    with pytest.raises(DeviceListError, match="is a directory, not a regular file"):
        load_devices("/tmp")


def test_device_list_size_is_capped(tmp_path, monkeypatch):
    huge = tmp_path / "devices.csv"
    with open(huge, "wb") as f:
        f.truncate(devices.MAX_DEVICE_LIST + 1)
    with pytest.raises(DeviceListError, match=rf"device list {huge} is larger than 64 MiB"):
        load_devices(huge)
    monkeypatch.setattr(devices, "MAX_DEVICE_LIST", 20)
    small = tmp_path / "small.csv"
    small.write_text("mac\naaa\nbb\ncc\ndd\nee\n")
    assert small.stat().st_size == 20 and len(load_devices(small)) == 5
    small.write_text("mac\naaa\nbbb\ncc\ndd\nee\n")
    with pytest.raises(DeviceListError, match="larger than"):
        load_devices(small)


def test_missing_device_list_is_named(tmp_path):
    with pytest.raises(DeviceListError, match=rf"device list {tmp_path}/nope.csv not found"):
        load_devices(tmp_path / "nope.csv")


def test_special_key_files_in_the_list_are_reported_per_row(tmp_path):
    os.mkfifo(tmp_path / "fifo.pem")
    (tmp_path / "devices.csv").write_text("mac,key\naa,fifo.pem\nbb,missing.pem\ncc,\n")
    error = finishes_within(5, load_devices, tmp_path / "devices.csv")
    assert isinstance(error, DeviceListError), error
    assert re.findall(r"line (\d+):", str(error)) == ["2", "3"]
    assert "fifo.pem is a FIFO" in str(error) and "missing.pem not found" in str(error)
    (tmp_path / "devices.csv").write_text("mac,key\naa,/dev/zero\nbb,\n")
    child = run_python(
        "import sys; from imagetools.devices import load_devices; load_devices(sys.argv[1])",
        str(tmp_path / "devices.csv"),
    )
    assert "line 2: private key /dev/zero is a character device, not a regular file" in child.stderr


# --- header and key case ---------------------------------------------------------------------------


def test_csv_name_and_key_headers_match_in_any_case(tmp_path, key_file):
    (tmp_path / "devices.csv").write_text("Name,mac,KEY\nunit-1,aa,k1.pem\n")
    [device] = load_devices(tmp_path / "devices.csv")
    assert (device.name, device.identity) == ("unit-1", {"mac": "aa"})
    assert (device.key_path, device.key_fingerprint) == (tmp_path / "k1.pem", key_file)


@pytest.mark.parametrize(
    "header,first,second,meaning",
    [
        ("name,NAME,mac", "name", "NAME", "name"),
        ("mac,Key,kEY", "Key", "kEY", "key"),
        ("mac, name ,Name", "name", "Name", "name"),
    ],
)
def test_ambiguous_csv_header_is_refused(header, first, second, meaning):
    message = _problems(parse_csv, header + "\na,b,c\n")
    assert f"line 1: columns {first!r} and {second!r} both mean {meaning!r}; keep one" in message


def test_non_ascii_lookalikes_are_identity_columns():
    """'\u212a' (Kelvin sign) lowercases to 'k', but 'Key' spelled with it is not the key column."""
    [device] = parse_csv("\u212aey,mac\nx,aa\n")
    assert device.identity == {"\u212aey": "x", "mac": "aa"} and device.key_path is None


def test_json_name_key_and_identity_data_match_in_any_case(tmp_path, key_file):
    text = json.dumps(
        [{"Name": "unit-1", "KEY": "k1.pem", "Identity_Data": {"mac": "aa"}}, {" NAME ": "unit-2", "mac": "bb"}]
    )
    one, two = parse_json(text, base_dir=tmp_path)
    assert (one.name, one.identity, one.key_fingerprint) == ("unit-1", {"mac": "aa"}, key_file)
    assert (two.name, two.identity) == ("unit-2", {"mac": "bb"})


@pytest.mark.parametrize(
    "obj,first,second,meaning",
    [
        ({"name": "a", "NAME": "b", "mac": "x"}, "name", "NAME", "name"),
        ({"Key": "a", "key": "b", "mac": "x"}, "Key", "key", "key"),
        (
            {"identity_data": {"mac": "x"}, "IDENTITY_DATA": {"mac": "y"}},
            "identity_data",
            "IDENTITY_DATA",
            "identity_data",
        ),
    ],
)
def test_ambiguous_json_keys_are_refused(obj, first, second, meaning):
    message = _problems(parse_json, json.dumps([obj]))
    assert f"line 1: keys {first!r} and {second!r} both mean {meaning!r}; keep one" in message


def test_identity_attributes_that_differ_only_in_spaces_are_refused():
    assert "'mac' is given twice" in _problems(parse_json, '[{"mac": "a", " mac": "b"}]')


# --- JSON numbers keep their written form ----------------------------------------------------------


def test_json_numbers_are_strings_as_written():
    text = '[{"a": 1e400, "b": 1.10, "c": -0, "d": 1E5, "e": 12345678901234567890123, "f": 0.1e-7}]'
    [device] = parse_json(text)
    assert device.identity == {
        "a": "1e400",
        "b": "1.10",
        "c": "-0",
        "d": "1E5",
        "e": "12345678901234567890123",
        "f": "0.1e-7",
    }
    assert all(type(v) is str for v in device.identity.values())


def test_huge_json_integer_is_kept_not_converted():
    """Python refuses int() of more than 4300 digits with a ValueError, which once escaped."""
    digits = "9" * 5000
    [device] = parse_json(f'[{{"sn": {digits}}}]')
    assert device.identity == {"sn": digits}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant):
    assert f"line 2: bad JSON: {constant} is not a JSON value" in _problems(
        parse_json, f'[{{"mac": "a"}},\n {{"mac": {constant}}}]'
    )


def test_name_and_key_must_be_json_strings_not_numbers():
    message = _problems(parse_json, '[{"name": 42, "mac": "a"},\n {"key": 1.5, "mac": "b"}]')
    assert "line 1: 'name' must be a string" in message and "line 2: 'key' must be a string" in message


def test_deep_nesting_is_a_device_list_error():
    assert "nested too deeply" in _problems(parse_json, "[" + "[" * 100_000 + "]" * 100_001)


# --- repeated JSON keys ----------------------------------------------------------------------------


def test_repeated_json_keys_are_refused_with_the_line():
    text = (
        "[\n"
        '  {"mac": "aa", "sn": "1"},\n'
        '  {"mac": "bb",\n'
        '   "mac": "cc"},\n'
        '  {"identity_data": {"sn": "2", "sn": "3"}},\n'
        '  {"name": "u4", "name": "u5", "mac": "dd"}\n'
        "]\n"
    )
    message = _problems(parse_json, text)
    assert re.findall(r"line (\d+):", message) == ["3", "5", "6"]
    assert "line 3: key 'mac' appears twice in the object" in message
    assert "line 5: key 'sn' appears twice" in message and "line 6: key 'name' appears twice" in message


def test_compact_json_rows_on_one_line_keep_their_own_names_and_keys(tmp_path, key_file):
    """Rows were once told apart by line number, so on one line the last name and key won."""
    text = json.dumps(
        [{"name": "u1", "key": "k1.pem", "mac": "aa"}, {"name": "u2", "mac": "bb"}, {"mac": "c:c"}, {"mac": "c/c"}]
    )
    found = parse_json(text, base_dir=tmp_path)
    assert [(d.name, d.identity["mac"], d.key_fingerprint) for d in found][:2] == [
        ("u1", "aa", key_file),
        ("u2", "bb", None),
    ]
    assert len({d.name for d in found}) == 4 and all(d.line == 1 for d in found)


# --- the identity is canonical ---------------------------------------------------------------------


def test_same_identity_in_another_attribute_order_is_a_duplicate():
    text = '[\n {"mac": "a", "sn": "1"},\n {"sn": "1", "mac": "a"}\n]'
    message = _problems(parse_json, text)
    assert 'line 3: duplicate identity {"mac":"a","sn":"1"} (first on line 2)' in message
    nested = '[\n {"identity_data": {"mac": "a", "sn": "1"}},\n {"sn": "1", "mac": "a"}\n]'
    assert "line 3: duplicate identity" in _problems(parse_json, nested)
    assert canonical_identity({"sn": "1", "mac": "a"}) == canonical_identity({"mac": "a", "sn": "1"})


def test_csv_and_json_give_the_same_identity_for_reordered_columns():
    from_csv = parse_csv("sn,mac\n1,a\n")[0].identity
    from_json = parse_json('[{"mac": "a", "sn": 1}]')[0].identity
    assert canonical_identity(from_csv) == canonical_identity(from_json)


# --- every bad row is still reported ---------------------------------------------------------------


def test_every_bad_json_row_is_reported():
    text = (
        "[\n"
        '  {"mac": "a", "mac": "b"},\n'  # 2 repeated key
        '  {"name": "x", "NAME": "y", "m": "1"},\n'  # 3 ambiguous
        '  {"name": 7, "m": "2"},\n'  # 4 number as name
        '  {"m": "3", "sn": 4},\n'  # 5 ok
        '  {"sn": 4, "m": "3"},\n'  # 6 reordered duplicate of 5
        '  {"m": true},\n'  # 7 boolean
        '  {"Identity_Data": [1]}\n'  # 8 not an object
        "]\n"
    )
    lines = [int(n) for n in re.findall(r"line (\d+):", _problems(parse_json, text))]
    assert lines == [2, 3, 4, 6, 7, 8]


# --- garbage, by property --------------------------------------------------------------------------


def _only_device_list_errors(parse, text: str) -> None:
    try:
        found = parse(text)
    except DeviceListError:
        return
    assert found and all(d.identity and all(type(v) is str and v for v in d.identity.values()) for d in found)


_json_tokens = st.sampled_from(
    [
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        '"name"',
        '"NAME"',
        '"key"',
        '"Key"',
        '"mac"',
        '"identity_data"',
        '"Identity_Data"',
        '"a"',
        '""',
        "1e400",
        "1.10",
        "-0",
        "9" * 4400,
        "NaN",
        "Infinity",
        "true",
        "null",
        "\n",
        " ",
        '"\\u0000"',
        '"\\ud800"',
    ]
)
_csv_tokens = st.sampled_from(
    [
        "name",
        "NAME",
        "Name",
        "key",
        "KEY",
        "mac",
        "sn",
        ",",
        '"',
        '""',
        "\n",
        "\r\n",
        "\r",
        " ",
        "a",
        "0042",
        "\x00",
        "\ufeff",
    ]
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_json_tokens, max_size=40).map("".join))
def test_json_like_text_only_ever_raises_device_list_error(text):
    _only_device_list_errors(parse_json, text)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_csv_tokens, max_size=40).map("".join))
def test_csv_like_text_only_ever_raises_device_list_error(text):
    _only_device_list_errors(parse_csv, text)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["name", "Name", "key", "KEY", "identity_data", "mac", "sn", " mac", ""])
            | st.text(max_size=4),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_json_values)
def test_any_json_value_only_ever_raises_device_list_error(value):
    _only_device_list_errors(parse_json, json.dumps(value))
    _only_device_list_errors(parse_json, json.dumps([value]))


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
        min_size=1,
        max_size=4,
        unique_by=json.dumps,
    )
)
def test_numbers_become_exactly_their_json_text(numbers):
    text = json.dumps([{"n": n, "i": str(i)} for i, n in enumerate(numbers)])
    assert [d.identity["n"] for d in parse_json(text)] == [json.dumps(n) for n in numbers]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["devices.csv", "devices.json"]))
def test_any_file_only_ever_raises_device_list_error(tmp_path_factory, data, name):
    path = tmp_path_factory.mktemp("list") / name
    path.write_bytes(data)
    _only_device_list_errors(lambda _: load_devices(path), "")
