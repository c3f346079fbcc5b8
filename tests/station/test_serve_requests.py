"""`flash --serve` and a request's "again": only a JSON true or false is an answer. Anything else
(a string, a number, null, a list) is refused in both request forms, that request alone: the
station answers it, writes nothing for it, and goes on serving."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.units import emit_units

from imagetools.errors import UsageError
from imagetools.station.ledger import open_ledger
from imagetools.station.protocol import parse_request

AGAIN = '"again" must be true or false'
_json = st.recursive(
    st.none() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def _forms(again) -> list[dict]:
    return [
        {"cards": [{"target": "/dev/sdx", "unit": "OUT/u1"}], "again": again},
        {"targets": ["/dev/sdx"], "unit": "OUT/u1", "again": again},
        {"targets": ["/dev/sdx"], "key": "k.pem", "again": again},
    ]


@settings(max_examples=150, deadline=None)
@given(again=_json)
def test_a_non_boolean_again_is_refused_in_every_request_form(again):
    for request in _forms(again):
        with pytest.raises(UsageError, match=AGAIN):
            parse_request(json.dumps(request).encode())


@pytest.mark.parametrize("again", [True, False])
def test_a_boolean_again_is_taken_as_given(again):
    for request in _forms(again):
        assert parse_request(json.dumps(request).encode()).again is again
    assert parse_request(b'{"cards": [{"target": "/dev/sdx", "unit": "OUT/u1"}]}').again is False


@pytest.mark.integration
def test_serve_refuses_a_non_boolean_again_answers_and_stays_up(make_image, tmp_path, cli):
    base, out = emit_units(make_image, tmp_path, 1)
    first, second = tmp_path / "first.img", tmp_path / "second.img"
    unit = str(out / "u000")
    requests = [
        {"cards": [{"target": str(first), "unit": unit}]},
        {"cards": [{"target": str(second), "unit": unit}], "again": 1},
        {"targets": [str(second)], "unit": unit, "again": "true"},
        {"cards": [{"target": str(second), "unit": unit}], "again": None},
        {"cards": [{"target": str(second), "unit": unit}], "again": [True]},
        {"cards": [{"target": str(second), "unit": unit}], "again": False},
        {"cards": [{"target": str(second), "unit": unit}], "again": True},
    ]
    proc = cli("flash", base, "--serve", input="".join(json.dumps(r) + "\n" for r in requests))
    replies = [r for r in map(json.loads, proc.stdout.splitlines()) if "progress" not in r]
    assert [r["request"] for r in replies] == [1, 2, 3, 4, 5, 6, 7], proc.stderr
    assert [r["ok"] for r in replies] == [True, False, False, False, False, False, True]
    assert all(AGAIN in r["error"] for r in replies[1:5])
    assert "already flashed" in replies[5]["error"] and "--again" in replies[5]["error"]
    assert replies[6]["items"][0]["unit"] == "u000" and replies[6]["items"][0]["ok"] is True
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "5 of 7 request(s) failed, e.g. request 2" in proc.stderr
    with open_ledger(out / "ledger.sqlite") as ledger:  # the refused requests reached no card
        assert [(r["target"], r["state"]) for r in ledger.records()] == [
            (str(first), "passed"),
            (str(second), "refused"),
            (str(second), "passed"),
        ]
