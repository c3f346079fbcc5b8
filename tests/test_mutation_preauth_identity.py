"""A unit's identity for preauth, the edges scripts/mutation found untested: inline JSON, a file,
the default beside an image, and every problem named with the exact message."""

from __future__ import annotations

import pytest

from imagetools.errors import UsageError
from imagetools.preauth.identity import PREAUTH_JSON, identity_problems, load_identity, read_text
from imagetools.strict import parse


def _refused(arg, default=None) -> str:
    with pytest.raises(UsageError) as refused:
        load_identity(arg, default)
    return str(refused.value)


def test_inline_json_and_files_and_preauth_entries(tmp_path):
    assert load_identity('  {"mac": "02:00"}') == {"mac": "02:00"}
    file = tmp_path / "id.json"
    file.write_text('{"identity_data": {"mac": "02:01"}, "pubkey": "x"}')
    assert load_identity(str(file)) == {"mac": "02:01"}
    assert load_identity(None, file) == {"mac": "02:01"}
    file.write_text('{"identity_data": "not an object", "mac": "02:02"}')  # not an entry: an identity
    assert load_identity(str(file)) == {"identity_data": "not an object", "mac": "02:02"}


def test_no_identity_at_all_is_refused():
    assert _refused(None) == "no identity given: pass --identity JSON"


def test_a_missing_default_says_where_it_was_looked_for(tmp_path):
    missing = tmp_path / "identity.json"
    assert _refused(None, missing) == (
        f"identity file {missing} not found (the unit's identity.json is looked for beside the image); "
        "pass --identity JSON|FILE"
    )
    assert _refused(str(missing)) == f"identity file {missing} not found"


def test_a_relative_file_is_named_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "id.json").write_text('{"mac": 1}')
    assert _refused("id.json").startswith(f"{tmp_path / 'id.json'}: identity attribute 'mac' is a number")


def test_json_errors_name_the_source(tmp_path):
    assert (
        _refused("{") == "--identity: not JSON (Expecting property name enclosed in double quotes at line 1 column 2)"
    )
    file = tmp_path / "id.json"
    file.write_text("[")
    assert _refused(str(file)).startswith(f"{file}: not JSON (")


def test_every_problem_of_an_identity_is_named_at_once():
    message = _refused('{"mac": 12.50, "mac": "x", "on": true, "list": ["a"], "ok": "y", "none": null}')
    assert message.startswith("--identity: ")
    never = "the Mender client sends every identity value as a string, so it would never match"
    assert message == (
        "--identity: identity attribute 'mac' appears more than once; "
        f"identity attribute 'on' is a boolean (true); {never}: write \"true\"; "
        f"identity attribute 'list' is a list ([\"a\"]); {never}; "
        f"identity attribute 'none' is null (null); {never}"
    )


def test_a_number_is_quoted_as_written():
    assert list(identity_problems(parse('{"n": 12.50}', PREAUTH_JSON))) == [
        "identity attribute 'n' is a number (12.50); the Mender client sends every identity value as a string, "
        'so it would never match: write "12.50"'
    ]


@pytest.mark.parametrize("identity", [{}, [], "x", None])
def test_an_identity_that_is_no_object_or_empty_is_refused(identity):
    assert list(identity_problems(identity)) == [
        "'identity_data' must be a non-empty object of attribute names to strings"
    ]


def test_lone_surrogates_in_names_or_values_are_refused():
    expected = "identity attribute {!r} is not valid Unicode text (a lone surrogate escape)"
    assert list(identity_problems({"a\ud800": "x"})) == [expected.format("a\ud800")]
    assert list(identity_problems({"a": "x\udc00"})) == [expected.format("a")]
    assert list(identity_problems({"a": "é"})) == []


def test_read_text_bounds_and_decodes(tmp_path):
    file = tmp_path / "t.txt"
    file.write_bytes(b"ab\xffc")
    with pytest.raises(UsageError) as not_text:
        read_text(file, "token file", 10)
    assert str(not_text.value) == f"token file {file} is not UTF-8 text (byte 2)"
    file.write_bytes(b"abc")
    assert read_text(file, "token file", 3) == "abc"
    with pytest.raises(UsageError) as too_big:
        read_text(file, "token file", 2, " (hint)")
    assert str(too_big.value) == f"token file {file} is larger than 2 bytes, the limit for a token file (hint)"


def test_a_number_inside_a_list_is_shown_as_the_file_wrote_it():
    from imagetools.preauth.identity import identity_problems
    from imagetools.strict import JsonNumber

    [problem] = list(identity_problems({"mac": [JsonNumber("1"), "x"]}))
    assert '[1, "x"]' in problem and "JsonNumber" not in problem


def test_a_nested_object_is_shown_as_the_file_wrote_it():
    message = _refused('{"mac": {"a": 1.50, "b": [2], "c": "x"}, "ok": "y"}')
    assert message == (
        "--identity: identity attribute 'mac' is an object "
        '({"a": 1.50, "b": [2], "c": "x"}); the Mender client sends every identity value as a string, '
        "so it would never match"
    )


def test_read_text_adds_no_hint_unless_given(tmp_path):
    missing = tmp_path / "absent.txt"
    with pytest.raises(UsageError) as refused:
        read_text(missing, "token file", 10)
    assert str(refused.value) == f"token file {missing} not found"
