"""Device list parsing and validation (no subprocess)."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagetools import keys
from imagetools.devices import check_name, derive_name, load_devices, parse_csv, parse_json
from imagetools.errors import DeviceListError


def test_csv_identity_values_are_strings_and_names_derived():
    devices = parse_csv("mac,sn\n02:00:00:00:00:01,0042\n\n02:00:00:00:00:02,43\n")
    assert [d.identity for d in devices] == [
        {"mac": "02:00:00:00:00:01", "sn": "0042"},
        {"mac": "02:00:00:00:00:02", "sn": "43"},
    ]
    assert [d.line for d in devices] == [2, 4]
    assert devices[0].name == "02-00-00-00-00-01_0042"
    assert all(check_name(d.name) is None for d in devices)


def test_csv_name_and_key_columns(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "k1.pem").write_bytes(keys.private_pem(key, "pkcs8"))
    (tmp_path / "devices.csv").write_text("name,mac,key\nunit-1,aa,k1.pem\n,bb,\n")
    first, second = load_devices(tmp_path / "devices.csv")
    assert (first.name, first.identity, first.key_path) == ("unit-1", {"mac": "aa"}, tmp_path / "k1.pem")
    assert first.key_fingerprint == keys.fingerprint(key)
    assert (second.name, second.key_path) == ("bb", None)


def test_every_bad_row_is_reported_with_its_line(tmp_path):
    weak = rsa.generate_private_key(65537, 1024)
    (tmp_path / "weak.pem").write_bytes(keys.private_pem(weak))
    locked = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"secret")
    )
    (tmp_path / "locked.pem").write_bytes(locked)
    (tmp_path / "garbage.pem").write_text("not a key\n")
    text = (
        "name,mac,key\n"
        "a,m1,\n"  # 2 ok
        "x,,\n"  # 3 empty identity
        "b,m1,\n"  # 4 duplicate identity
        "a,m5,\n"  # 5 duplicate name
        "../x,m6,\n"  # 6 unsafe name
        ",m7,missing.pem\n"  # 7 missing key
        ",m8,garbage.pem\n"  # 8 garbage key
        ",m9,locked.pem\n"  # 9 encrypted key
        ",m10,weak.pem\n"  # 10 RSA 1024
        ",m11\n"  # 11 wrong field count
        "report.json,m12,\n"
    )  # 12 reserved name
    (tmp_path / "devices.csv").write_text(text)
    with pytest.raises(DeviceListError) as err:
        load_devices(tmp_path / "devices.csv")
    message = str(err.value)
    lines = [int(n) for n in re.findall(r"line (\d+):", message)]
    assert lines == sorted(lines) and set(lines) == set(range(3, 13)), message
    for fragment in (
        "empty identity value",
        "duplicate identity",
        "duplicate name 'a'",
        "not usable",
        "not found",
        "not a PEM private key",
        "encrypted",
        "at least 2048",
        "2 fields, the header has 3",
        "reserved",
    ):
        assert fragment in message, fragment


def test_same_key_for_two_units_is_refused(tmp_path):
    (tmp_path / "k.pem").write_bytes(keys.private_pem(ed25519.Ed25519PrivateKey.generate(), "pkcs8"))
    with pytest.raises(DeviceListError, match=r"line 3: key k.pem is the same key as on line 2"):
        parse_csv("mac,key\na,k.pem\nb,k.pem\n", base_dir=tmp_path)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty file"),
        ("name,key\nx,\n", "no identity column"),
        ("mac,,sn\n1,2,3\n", "column 2 of the header has no name"),
        ("mac,mac\n1,2\n", "appears twice"),
        ('mac\n"a"b\n', "bad CSV"),
        ("mac\n", "no devices listed"),
    ],
)
def test_bad_csv_structure(text, problem):
    with pytest.raises(DeviceListError, match=problem):
        parse_csv(text)


def test_json_forms_and_line_numbers():
    text = '[\n  {"mac": "aa", "sn": 42},\n  {"name": "two", "identity_data": {"mac": "bb"}}\n]\n'
    one, two = parse_json(text)
    assert one.identity == {"mac": "aa", "sn": "42"} and one.line == 2
    assert (two.name, two.identity, two.line) == ("two", {"mac": "bb"}, 3)
    bad = '[\n {"mac": true},\n {"mac": "x", "identity_data": {"a": "b"}},\n 3,\n {}\n]'
    with pytest.raises(DeviceListError) as err:
        parse_json(bad)
    assert re.findall(r"line (\d+):", str(err.value)) == ["2", "3", "4", "5"]
    with pytest.raises(DeviceListError, match="line 1: expected a JSON list"):
        parse_json('{"mac": "a"}')
    with pytest.raises(DeviceListError, match="line 2: bad JSON"):
        parse_json('[{"mac": "a"},\n {"mac": }]')


def test_colliding_derived_names_do_not_depend_on_row_order():
    rows = ["a:b", "a/b", "c"]
    forward = {d.identity["mac"]: d.name for d in parse_csv("mac\n" + "\n".join(rows) + "\n")}
    backward = {d.identity["mac"]: d.name for d in parse_csv("mac\n" + "\n".join(reversed(rows)) + "\n")}
    assert forward == backward
    assert forward["c"] == "c" and forward["a:b"] != forward["a/b"]
    assert all(name.startswith("a-b-") for mac, name in forward.items() if mac != "c")


def test_derived_name_of_unsafe_identity():
    assert derive_name({"mac": "../../etc"}) == "etc"
    assert check_name(derive_name({"x": "///"})) is None
    assert len(derive_name({"x": "y" * 300})) <= 64


_attr = (
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
    .map(str.strip)
    .filter(lambda s: s and s not in ("name", "key"))
)
_value = (
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_attr, min_size=1, max_size=3, unique=True).flatmap(
        lambda cols: st.tuples(
            st.just(cols),
            st.lists(st.lists(_value, min_size=len(cols), max_size=len(cols)), min_size=1, max_size=8, unique_by=tuple),
        )
    )
)
def test_csv_round_trip(data):
    cols, rows = data
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols)
    writer.writerows(rows)
    devices = parse_csv(buf.getvalue())
    assert [d.identity for d in devices] == [dict(zip(cols, row)) for row in rows]
    names = [d.name for d in devices]
    assert len({n.lower() for n in names}) == len(names)
    assert all(check_name(n) is None for n in names)
    as_json = json.dumps([dict(zip(cols, row)) for row in rows], indent=1)
    assert [d.identity for d in parse_json(as_json)] == [d.identity for d in devices]


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_garbage_only_ever_raises_device_list_error(text):
    for parse in (parse_csv, parse_json):
        try:
            devices = parse(text)
        except DeviceListError:
            continue
        assert devices and all(
            d.identity and all(isinstance(v, str) and v for v in d.identity.values()) for d in devices
        )
