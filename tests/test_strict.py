"""strict: the one JSON parser for untrusted input, under each reader's policy, and its bounds."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagetools.errors import UsageError
from imagetools.strict import (
    MAX_DEPTH,
    STRICT,
    Duplicates,
    JsonError,
    JsonNumber,
    Numbers,
    Policy,
    json_type,
    loads,
    parse,
    read_regular,
    size_text,
)

KEEP = Policy(duplicates=Duplicates.KEEP)
ANY_CASE = Policy(duplicates=Duplicates.REFUSE_ANY_CASE)
EXACT = Policy(numbers=Numbers.EXACT)

names = st.text(max_size=8)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | names
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4), max_leaves=20
)


@settings(max_examples=200, deadline=None)
@given(documents)
def test_any_json_document_reads_back_as_written(value):
    assert parse(json.dumps(value)) == value
    assert parse(json.dumps(value).encode()) == value


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_a_value_or_a_json_error(text):
    try:
        parse(text, EXACT)
    except JsonError as exc:
        assert str(exc) and "\n" not in str(exc)


@settings(max_examples=100, deadline=None)
@given(st.from_regex(r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?", fullmatch=True))
def test_exact_numbers_keep_their_text(text):
    assert parse(f"[{text}]", EXACT) == [JsonNumber(text)]


@settings(max_examples=100, deadline=None)
@given(names, scalars, scalars)
def test_a_name_given_twice_is_refused_or_kept_as_the_policy_says(name, first, second):
    text = "{" + f"{json.dumps(name)}: {json.dumps(first)}, {json.dumps(name)}: {json.dumps(second)}" + "}"
    with pytest.raises(JsonError, match="appears twice in one object"):
        parse(text, STRICT)
    kept = parse(text, KEEP)
    assert kept == {name: second} and kept.repeated == (name,)


def test_names_in_another_case_are_one_name_for_a_reader_that_ignores_case():
    text = '{"ServerURL": "a", "serverurl": "b"}'
    assert parse(text) == {"ServerURL": "a", "serverurl": "b"}
    with pytest.raises(JsonError, match="'serverurl' appears twice in one object \\(as 'ServerURL' and 'serverurl'"):
        parse(text, ANY_CASE)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_by_every_policy(constant):
    for policy in (STRICT, KEEP, ANY_CASE, EXACT):
        with pytest.raises(JsonError, match=f"{constant} is not a JSON value"):
            parse(f'{{"a": [{constant}]}}', policy)


@given(st.integers(min_value=1, max_value=3 * MAX_DEPTH))
def test_depth_is_bounded_before_parsing(depth):
    text = "[" * depth + "]" * depth
    if depth > MAX_DEPTH:
        with pytest.raises(JsonError, match="nested too deeply"):
            parse(text)
    else:
        parse(text)


def test_a_deep_document_is_refused_without_recursion():
    with pytest.raises(UsageError, match=r"^request: nested too deeply \(more than 32 levels\)$"):
        loads("[" * 200_000 + "]" * 200_000, "request")
    assert loads(' {"x": "[[[[ not nesting"} ', "request") == {"x": "[[[[ not nesting"}


def test_syntax_errors_say_where():
    with pytest.raises(JsonError) as info:
        parse('{"a": 1,\n "b": }')
    assert str(info.value) == "not JSON (Expecting value at line 2 column 7)" and info.value.line == 2


def test_json_type_names_values_for_messages():
    assert [json_type(v) for v in (None, True, 1, 1.5, JsonNumber("2"), "x", [], {})] == [
        "null",
        "boolean",
        "number",
        "number",
        "number",
        "string",
        "list",
        "object",
    ]
    assert json_type({}, article=True) == "an object" and json_type(None, article=True) == "null"


def test_exactness_of_numbers_for_double_readers():
    assert JsonNumber("0.1").exact and JsonNumber("1800").exact
    assert not JsonNumber("12345678901234567891").exact and not JsonNumber("1e400").exact
    assert JsonNumber("1800").plain() == 1800
    assert JsonNumber("12345678901234567891.5").plain() == "12345678901234567891.5"


def test_size_text_is_exact_for_limits():
    assert [size_text(n) for n in (300, 64 << 10, 16 << 20, 3 << 19)] == ["300 bytes", "64 KiB", "16 MiB", "1.5 MiB"]


def test_bounded_read_refuses_what_is_not_a_small_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="is a FIFO, not a regular file"):
        read_regular(fifo, 10, "token file")
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(UsageError, match="larger than 10 bytes"):
        read_regular(tmp_path / "big", 10, "token file")
    assert read_regular(tmp_path / "big", 11, "token file") == b"x" * 11
