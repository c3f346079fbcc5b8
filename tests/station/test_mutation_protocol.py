"""`flash --serve` requests, the edges scripts/mutation found untested: each bound at its edge, both
request forms, and the exact message of each refusal."""

from __future__ import annotations

import json

import pytest

from imagetools.errors import UsageError
from imagetools.station.protocol import MAX_CARDS, MAX_REQUEST, Card, Request, parse_request


def _parse(request) -> Request:
    return parse_request(json.dumps(request).encode())


def _refused(request) -> str:
    with pytest.raises(UsageError) as refused:
        parse_request(request if isinstance(request, bytes) else json.dumps(request).encode())
    return str(refused.value)


def test_both_forms_give_their_cards():
    cards = [{"target": "/dev/sda", "unit": "OUT/u1"}, {"target": "/dev/sdb", "key": "k.pem"}]
    assert _parse({"cards": cards, "again": True}) == Request(
        (Card("/dev/sda", "OUT/u1"), Card("/dev/sdb", None, "k.pem")), True
    )
    assert _parse({"targets": ["/dev/sda"], "unit": "OUT/u1"}) == Request((Card("/dev/sda", "OUT/u1", None),), False)
    assert _parse({"targets": ["/dev/sda"], "key": "k.pem"}) == Request((Card("/dev/sda", None, "k.pem"),), False)


def test_a_request_at_its_size_bound_is_read_one_byte_more_is_refused():
    request = json.dumps({"targets": ["/dev/sda"], "unit": "OUT/u1"}).encode()
    exact = request[:-1] + b" " * (MAX_REQUEST - len(request)) + b"}"
    assert len(exact) == MAX_REQUEST
    assert parse_request(exact).cards == (Card("/dev/sda", "OUT/u1"),)
    assert _refused(exact + b" ") == f"request over {MAX_REQUEST} bytes"


def test_a_request_nests_at_most_four_levels():
    assert _refused({"cards": [{"target": "/dev/sda", "unit": [[]]}]}) == (
        "request: nested too deeply (more than 4 levels)"
    )
    assert "exactly one of" in _refused({"cards": [{"target": "/dev/sda", "unit": []}]})


def test_a_request_that_is_no_object_is_refused():
    assert _refused([]) == 'a request is a JSON object: {"cards": [{"target": ..., "unit": ...}]}'


def test_cards_between_one_and_the_bound():
    card = {"target": "/dev/sda", "unit": "OUT/u1"}
    assert len(_parse({"cards": [card] * MAX_CARDS}).cards) == MAX_CARDS
    message = f'"cards" must be a list of 1 to {MAX_CARDS} cards'
    assert _refused({"cards": [card] * (MAX_CARDS + 1)}) == message
    assert _refused({"cards": []}) == message
    assert _refused({"cards": card}) == message


def test_unknown_fields_are_named_with_the_allowed_ones():
    assert _refused({"cards": [{"target": "/dev/sda", "unit": "u"}], "b": 1, "a": 2}) == (
        "unknown request field 'a' (allowed: again, cards)"
    )
    assert _refused({"targets": ["/dev/sda"], "unit": "u", "cards": []}) != ""
    assert _refused({"targets": ["/dev/sda"], "unit": "u", "z": 1}) == (
        "unknown request field 'z' (allowed: again, key, targets, unit)"
    )
    assert _refused({"cards": [{"target": "/dev/sda", "unit": "u", "slot": 1}]}) == (
        "unknown request field 'slot' (allowed: key, target, unit)"
    )


def test_the_one_card_form_takes_exactly_one_target():
    none = 'give "cards" (or "targets" with one target and its "unit" or "key")'
    assert _refused({"unit": "u"}) == none
    assert _refused({"targets": [], "unit": "u"}) == none
    assert _refused({"targets": "/dev/sda", "unit": "u"}) == none
    assert _refused({"targets": ["/dev/sda", "/dev/sdb"], "unit": "u"}) == (
        'one unit goes onto one card: give each target its own unit in "cards"'
    )


def test_each_card_names_a_path_and_exactly_one_unit_or_key():
    assert _refused({"cards": ["/dev/sda"]}) == (
        'each card is an object {"target": ..., "unit": ...} or {"target": ..., "key": ...}'
    )
    one = 'give each card exactly one of "unit" (a unit directory) and "key" (a key file)'
    assert _refused({"cards": [{"target": "/dev/sda"}]}) == one
    assert _refused({"cards": [{"target": "/dev/sda", "unit": "u", "key": "k"}]}) == one
    assert _refused({"cards": [{"target": "/dev/sda", "unit": ""}]}) == one
    assert _refused({"cards": [{"target": "/dev/sda", "key": "k\0"}]}) == one
    assert _refused({"cards": [{"target": "/dev/sda", "unit": 1}]}) == one


@pytest.mark.parametrize("target", ["", "a\0b", "x" * 4097, 7, None])
def test_a_target_that_is_no_path_is_refused(target):
    assert _refused({"cards": [{"target": target, "unit": "u"}]}) == '"target" must be a path'


def test_paths_up_to_4096_characters_are_taken():
    long = "x" * 4096
    assert _parse({"cards": [{"target": long, "key": long}]}).cards == (Card(long, None, long),)
    assert _parse({"cards": [{"target": "t", "unit": "x"}]}).cards == (Card("t", "x"),)


def test_a_non_boolean_again_is_refused_in_one_line():
    assert _refused({"cards": [{"target": "/dev/sda", "unit": "u"}], "again": 1}) == '"again" must be true or false'
