"""strict, the edges scripts/mutation found untested: each test kills mutants that survived the
rest of the suite (the exact messages, the default of each keyword, the bounds at their edge)."""

from __future__ import annotations

import os

import pytest

from imagetools.errors import KeyMaterialError, UsageError
from imagetools.strict import (
    STRICT,
    Duplicates,
    JsonError,
    JsonNumber,
    Policy,
    decode_at,
    json_type,
    loads,
    nesting,
    open_regular,
    parse,
    read_regular,
    require_regular,
    size_text,
)

PAGEMAP = "/proc/self/pagemap"  # a regular file of size 0 whose reads never end, in 8-byte entries


@pytest.fixture
def files(tmp_path):
    real = tmp_path / "real.json"
    real.write_text('{"a": 1}')
    (tmp_path / "link.json").symlink_to(real)
    return tmp_path


def test_symlinks_are_followed_unless_refused(files):
    link = files / "link.json"
    assert read_regular(link, 100, "unit") == b'{"a": 1}'
    os.close(open_regular(link, "unit"))
    with pytest.raises(KeyMaterialError) as refused:
        read_regular(link, 100, "unit", KeyMaterialError, follow=False)
    assert str(refused.value) == f"unit {link} is a symbolic link; give the file itself"
    with pytest.raises(UsageError, match="is a symbolic link; give the file itself"):
        open_regular(link, "unit", follow=False)


def test_a_regular_file_is_read_without_following(files):
    assert read_regular(files / "real.json", 100, "unit", follow=False) == b'{"a": 1}'
    os.close(open_regular(files / "real.json", "unit", follow=False))


def test_missing_unreadable_and_irregular_paths_name_what_and_the_path(files):
    missing, below_a_file = files / "none.json", files / "real.json" / "x"
    with pytest.raises(KeyMaterialError) as gone:
        open_regular(missing, "key file", KeyMaterialError)
    assert str(gone.value) == f"key file {missing} not found"
    with pytest.raises(KeyMaterialError) as unreadable:
        open_regular(below_a_file, "key file", KeyMaterialError)
    assert str(unreadable.value) == f"cannot read key file {below_a_file}: Not a directory"
    with pytest.raises(KeyMaterialError) as directory:
        read_regular(files, 100, "key file", KeyMaterialError)
    assert str(directory.value) == f"key file {files} is a directory, not a regular file"


def test_a_file_type_without_a_name_is_special():
    with pytest.raises(UsageError) as refused:
        require_regular(os.stat_result((0,) * 10), "p", "unit")
    assert str(refused.value) == "unit p is special, not a regular file"


def test_a_file_larger_than_its_size_says_is_read_only_to_the_limit():
    with pytest.raises(KeyMaterialError) as refused:
        read_regular(PAGEMAP, 1023, "key file", KeyMaterialError)
    assert str(refused.value) == f"key file {PAGEMAP} is larger than 1023 bytes, the limit for a key file"
    with pytest.raises(KeyMaterialError) as failed:  # reads of pagemap must be a multiple of 8 bytes
        read_regular(PAGEMAP, 1022, "key file", KeyMaterialError)
    assert str(failed.value) == f"cannot read key file {PAGEMAP}: Invalid argument"


def test_size_text_at_each_unit():
    assert [size_text(n) for n in (1023, 1024, 1 << 20, 3 << 19)] == ["1023 bytes", "1 KiB", "1 MiB", "1.5 MiB"]


def test_bytes_that_are_not_utf8_name_the_byte():
    with pytest.raises(JsonError) as refused:
        parse(b'"\xff"')
    assert str(refused.value) == "not UTF-8 text (byte 1)"


def test_a_lone_surrogate_in_a_string_is_measured_and_parsed():
    assert parse('"\ud800"') == "\ud800"


def test_the_same_name_twice_in_one_case_says_so_plainly():
    with pytest.raises(JsonError) as refused:
        parse('{"a": 1, "a": 2}', Policy(duplicates=Duplicates.REFUSE_ANY_CASE))
    assert refused.value.reason == "'a' appears twice in one object"
    assert parse('{"a": 1, "B": 2}', Policy(duplicates=Duplicates.REFUSE_ANY_CASE)) == {"a": 1, "B": 2}


def test_kept_duplicates_name_only_the_repeated_names():
    parsed = parse('{"a": 1, "b": 2, "a": 3}', Policy(duplicates=Duplicates.KEEP))
    assert parsed.repeated == ("a",)


def test_decode_at_reads_one_value_and_says_where_it_ends():
    assert decode_at("[1] [2]", 0, STRICT) == ([1], 3)
    assert decode_at("[1] [2]", 4, STRICT) == ([2], 7)


def test_decode_at_without_a_depth_check_still_refuses_deep_nesting():
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(JsonError) as refused:
        decode_at(deep, 0, Policy(max_depth=7))
    assert str(refused.value) == "nested too deeply (more than 7 levels)"


def test_loads_applies_its_depth():
    with pytest.raises(UsageError) as refused:
        loads("[[[1]]]", "request", max_depth=2)
    assert str(refused.value) == "request: nested too deeply (more than 2 levels)"
    assert loads("[[1]]", "request", max_depth=2) == [[1]]


def test_nesting_after_a_closed_array():
    assert nesting(b"[][[[]]]") == 3


def test_json_type_of_a_value_json_has_no_name_for():
    assert json_type({1}) == "set"
    assert json_type({1}, article=True) == "set"


def test_plain_numbers_at_the_length_bound():
    assert JsonNumber("1" * 40).plain() == int("1" * 40)
    assert JsonNumber("1" * 41).plain() == "1" * 41
    assert JsonNumber("0.5").plain() == 0.5
    assert JsonNumber("0.1e-400").plain() == "0.1e-400"


def test_a_file_of_several_chunks_is_read_whole(tmp_path):
    blob = os.urandom(3 << 19)  # 1.5 MiB: two reads
    (tmp_path / "big").write_bytes(blob)
    assert read_regular(tmp_path / "big", 2 << 20, "unit file") == blob
