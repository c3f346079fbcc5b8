"""The preauth file (imagetools.preauth.units), the edges scripts/mutation found untested: every
refusal with its exact message, duplicates across entries, and the JSON and CSV renderings."""

from __future__ import annotations

import csv
import io
import json

import pytest

from imagetools import keys
from imagetools.errors import DeviceListError, UsageError
from imagetools.preauth import units
from imagetools.preauth.units import Entry, Unit, load_target_units, load_units, parse_units, render, render_csv


def _key():
    return keys.generate(keys.KeySpec("ed25519")).public_key()


def _pem(key) -> str:
    return keys.public_pem(key).decode()


def _refused(entries, source="src") -> str:
    with pytest.raises(DeviceListError) as refused:
        parse_units(entries, source)
    return str(refused.value)


def test_a_unit_keeps_its_key_and_shows_it_as_spki_pem():
    key = _key()
    [unit] = parse_units([{"name": "u1", "identity_data": {"mac": "aa"}, "pubkey": _pem(key)}], "src")
    assert unit == Unit("u1", {"mac": "aa"}, unit.pubkey)
    assert unit.pem == _pem(key) and unit.pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert unit.fingerprint == keys.fingerprint(key) and len(unit.fingerprint) == 64
    assert "pubkey" not in repr(unit) and "u1" in repr(unit)


def test_load_units_reads_a_file_and_names_its_full_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = _key()
    (tmp_path / "p.json").write_text(json.dumps([{"name": "u1", "identity_data": {"mac": "aa"}, "pubkey": _pem(key)}]))
    [unit] = load_units("p.json")
    assert (unit.name, unit.identity, unit.fingerprint) == ("u1", {"mac": "aa"}, keys.fingerprint(key))
    (tmp_path / "p.json").write_text("[")
    with pytest.raises(DeviceListError) as not_json:
        load_units("p.json")
    assert str(not_json.value).startswith(f"{tmp_path / 'p.json'}: not JSON (")
    (tmp_path / "p.json").write_text('{"name": "u1"}')
    with pytest.raises(DeviceListError) as not_list:
        load_units("p.json")
    assert str(not_list.value) == (
        f"{tmp_path / 'p.json'}: expected a JSON list of {{name, identity_data, pubkey}} objects"
    )
    (tmp_path / "p.json").write_text("[]")
    with pytest.raises(DeviceListError) as empty:
        load_units("p.json")
    assert str(empty.value) == f"{tmp_path / 'p.json'}: no units"


def test_load_units_refuses_what_is_no_readable_text(tmp_path):
    with pytest.raises(UsageError) as missing:
        load_units(tmp_path / "absent.json")
    assert str(missing.value) == f"preauth file {tmp_path / 'absent.json'} not found"
    (tmp_path / "bin.json").write_bytes(b"[\xff]")
    with pytest.raises(UsageError) as binary:
        load_units(tmp_path / "bin.json")
    assert str(binary.value) == f"preauth file {tmp_path / 'bin.json'} is not UTF-8 text (byte 1)"


def test_a_preauth_file_over_256_mib_is_refused_unread(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(256 * 1024 * 1024 + 1)  # sparse: refused by its size
    with pytest.raises(UsageError) as refused:
        load_units(big)
    assert str(refused.value) == f"preauth file {big} is larger than 256 MiB, the limit for a preauth file"
    assert units.MAX_PREAUTH_BYTES == 256 * 1024 * 1024


def test_load_target_units_takes_a_file_or_an_out_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(UsageError) as not_out:
        load_target_units("out")
    assert str(not_out.value) == f"{tmp_path / 'out'} has no preauth.json: not an emit OUT directory"
    entry = {"name": "u1", "identity_data": {"mac": "aa"}, "pubkey": _pem(_key())}
    (tmp_path / "out" / "preauth.json").write_text(json.dumps([entry]))
    assert [u.name for u in load_target_units("out")] == ["u1"]
    assert [u.name for u in load_target_units("out/preauth.json")] == ["u1"]
    (tmp_path / "out" / "preauth.json").write_text("{}")
    with pytest.raises(DeviceListError) as named:
        load_target_units("out")
    assert str(named.value).startswith(f"{tmp_path / 'out' / 'preauth.json'}: expected a JSON list")


def test_every_problem_of_every_entry_is_named_at_once():
    good = _pem(_key())
    message = _refused(
        [
            "not an object",
            {"name": "", "identity_data": {"mac": "aa"}, "pubkey": good},
            {"name": "bad\nname", "identity_data": {}, "pubkey": 5},
            {"name": 7, "identity_data": {"mac": "bb"}, "pubkey": "é"},
            {"name": "u5", "identity_data": {"mac": "cc"}, "pubkey": "not pem"},
            {"name": "u6", "identity_data": {"mac": "dd"}},
        ]
    )
    assert message == (
        "src: entry 1: not an object; "
        "entry 2: 'name' must be a non-empty string of printable characters; "
        "entry 3: 'identity_data' must be a non-empty object of attribute names to strings; "
        "entry 3: 'name' must be a non-empty string of printable characters; "
        "entry 3: 'pubkey' must be a PEM string; "
        "entry 4: 'name' must be a non-empty string of printable characters; "
        "entry 4: 'pubkey' must be a PEM string; "
        "entry 5 (u5): pubkey: not a PEM public key (expected 'BEGIN PUBLIC KEY'); "
        "entry 6 (u6): 'pubkey' must be a PEM string"
    )


def test_a_key_given_twice_in_an_entry_is_named():
    from imagetools.preauth.identity import PREAUTH_JSON
    from imagetools.strict import parse

    pem = json.dumps(_pem(_key()))
    entries = parse(
        f'[{{"name": "u1", "name": "u1", "identity_data": {{"mac": "aa"}}, "pubkey": {pem}}}]', PREAUTH_JSON
    )
    assert _refused(entries) == "src: entry 1 (u1): key 'name' appears more than once"


def test_names_identities_and_keys_must_each_be_unique():
    first, second, third = _key(), _key(), _key()
    entries = [
        {"name": "u1", "identity_data": {"mac": "aa", "sn": "1"}, "pubkey": _pem(first)},
        {"name": "u1", "identity_data": {"sn": "1", "mac": "aa"}, "pubkey": _pem(first)},
        {"name": "u3", "identity_data": {"mac": "cc"}, "pubkey": _pem(second)},
        {"name": "u4", "identity_data": {"mac": "dd"}, "pubkey": _pem(third)},
    ]
    assert _refused(entries) == (
        "src: entry 2 (u1): same name as entry 1 (u1); "
        "entry 2 (u1): same identity as entry 1 (u1); "
        f"entry 2 (u1): same public key as entry 1 (u1) (fingerprint {keys.fingerprint(first)[:16]}…)"
    )


def test_distinct_units_are_kept_in_order():
    pems = [_pem(_key()) for _ in range(3)]
    entries = [{"name": f"u{i}", "identity_data": {"mac": f"m{i}"}, "pubkey": pems[i]} for i in range(3)]
    assert [(u.name, u.identity, u.pem) for u in parse_units(entries, "src")] == [
        (f"u{i}", {"mac": f"m{i}"}, pems[i]) for i in range(3)
    ]


def test_the_preauth_file_is_json_indented_by_two_with_a_final_newline():
    entries = [Entry("u1", {"mac": "aa"}, "PEM1", "fp1"), Entry("u2", {"mac": "bb"}, "PEM2", None)]
    text = render(entries)
    assert (
        text
        == json.dumps(
            [
                {"name": "u1", "identity_data": {"mac": "aa"}, "pubkey": "PEM1"},
                {"name": "u2", "identity_data": {"mac": "bb"}, "pubkey": "PEM2"},
            ],
            indent=2,
        )
        + "\n"
    )
    assert text.startswith('[\n  {\n    "name": "u1"')


def test_the_csv_has_every_attribute_in_order_and_empty_cells_for_missing_ones():
    entries = [
        Entry("u1", {"mac": "aa", "sn": "1"}, "PEM1", "fp1"),
        Entry("u2", {"sku": "gw", "mac": "bb"}, "PEM2", None),
    ]
    text = render_csv(entries)
    assert text == "name,mac,sn,sku,fingerprint,pubkey\nu1,aa,1,,fp1,PEM1\nu2,bb,,gw,,PEM2\n"
    assert list(csv.reader(io.StringIO(text)))[2] == ["u2", "bb", "", "gw", "", "PEM2"]


def test_a_carriage_return_inside_a_value_reads_back_as_one_cell():
    """csv quotes a cell holding its line terminator ("\n") but not a lone "\r": unquoted, a
    reader splits the row there."""
    entries = [
        Entry("u1", {"sn": "a\rb", "mac": "aa"}, "PEM1", "fp1"),
        Entry("u2", {"sn": "2", "mac": "bb"}, "P2", "f2"),
    ]
    text = render_csv(entries)
    assert list(csv.reader(io.StringIO(text, newline=""))) == [
        ["name", "sn", "mac", "fingerprint", "pubkey"],
        ["u1", "a\rb", "aa", "fp1", "PEM1"],
        ["u2", "2", "bb", "f2", "P2"],
    ]
    # the quoted row ends in "\n" like the others (csv's default terminator is "\r\n"); rows
    # without a "\r" stay unquoted
    assert text == 'name,sn,mac,fingerprint,pubkey\n"u1","a\rb","aa","fp1","PEM1"\nu2,2,bb,f2,P2\n'


def test_cells_that_could_start_a_formula_are_quoted_in_the_csv():
    entries = [Entry("=cmd", {"@a": "+1", "b": "-2"}, "\tPEM", "@fp")]
    assert list(csv.reader(io.StringIO(render_csv(entries)))) == [
        ["name", "'@a", "b", "fingerprint", "pubkey"],
        ["'=cmd", "'+1", "'-2", "'@fp", "'\tPEM"],
    ]


@pytest.mark.parametrize("cell", ["=1", "+1", "-1", "@1", "\t1", "\r1"])
def test_each_formula_start_gets_a_leading_quote(cell):
    assert units.spreadsheet_safe(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["", "a=1", " =1", "'1", "1-", "\n1"])
def test_other_cells_are_left_alone(cell):
    assert units.spreadsheet_safe(cell) == cell


def test_a_preauth_file_keeps_repeated_keys_and_numbers_as_written(tmp_path):
    pem = json.dumps(_pem(_key()))
    path = tmp_path / "p.json"
    path.write_text(f'[{{"name": "u1", "name": "u1", "identity_data": {{"n": 12.50}}, "pubkey": {pem}}}]')
    with pytest.raises(DeviceListError) as refused:
        load_units(path)
    assert str(refused.value) == (
        f"{path}: entry 1 (u1): key 'name' appears more than once; "
        "entry 1 (u1): identity attribute 'n' is a number (12.50); the Mender client sends every identity value "
        'as a string, so it would never match: write "12.50"'
    )
