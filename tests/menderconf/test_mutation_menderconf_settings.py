"""menderconf.settings, the edges scripts/mutation found untested: the exact messages of a refused
mender.conf, artifact_info's lines, the client's merge and case-blind names, the dump's layout,
and the bounds of a Go int on a 32-bit device, each at its edge."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagetools.errors import FilesystemError
from imagetools.menderconf import settings as s
from imagetools.strict import JsonError, JsonNumber

N = JsonNumber


# --- parsing ---------------------------------------------------------------------------------------


def test_json_is_parsed_strictly_with_exact_numbers_names_once_in_any_case_and_32_levels():
    assert s.parse_json('{"a": 12345678901234567891, "b": 0.10}') == {"a": N("12345678901234567891"), "b": N("0.10")}
    assert s.parse_json("[" * 32 + "]" * 32) is not None
    with pytest.raises(JsonError, match=r"^nested too deeply \(more than 32 levels\)$"):
        s.parse_json("[" * 33 + "]" * 33)
    with pytest.raises(JsonError, match="names are matched without regard to case"):
        s.parse_json('{"Server": 1, "server": 2}')


def test_conf_type_names_whole_numbers_integer_and_others_as_json_does():
    assert s.conf_type(N("1800")) == "integer"
    assert s.conf_type(N("-3")) == "integer"
    assert s.conf_type(N("1.5")) == "number"
    assert s.conf_type(N("1e3")) == "number"
    assert s.conf_type("x") == "string"
    assert s.conf_type(None) == "null"
    assert s.conf_type([]) == "list"


def test_parse_conf_returns_the_object_and_says_exactly_why_a_file_is_refused():
    assert s.parse_conf(b'{"ServerURL": "https://a", "N": 1}', "W") == {"ServerURL": "https://a", "N": N("1")}
    assert s.parse_conf('{"D": "caf\u00e9"}'.encode(), "W") == {"D": "caf\u00e9"}
    cases = {
        b'{"a": 1}\xff': "W is malformed: not UTF-8 text (byte 8)",
        b"{": "W is malformed: not JSON (Expecting property name enclosed in double quotes at line 1 "
        "column 2); the client would not start with it",
        b"[1]": "W is malformed: list, not a JSON object",
        b"7": "W is malformed: integer, not a JSON object",
        b"null": "W is malformed: null, not a JSON object",
    }
    for data, message in cases.items():
        with pytest.raises(FilesystemError) as exc:
            s.parse_conf(data, "W")
        assert str(exc.value) == message


def test_parse_fields_reads_name_value_lines_as_the_client_does():
    data = b"# a comment\n\n  artifact_name = release 7  \nother=x=y\n"
    assert s.parse_fields(data, "artifact_name", "F") is None  # the key keeps its inner spaces
    assert s.parse_fields(b"  artifact_name=release 7  \n", "artifact_name", "F") == "release 7"
    assert s.parse_fields(b"other=x=y\nartifact_name=a\n", "other", "F") == "x=y"
    assert s.parse_fields(b"artifact_name=\n", "artifact_name", "F") == ""
    assert s.parse_fields(b"  # artifact_name=old\nartifact_name=new", "artifact_name", "F") == "new"
    assert s.parse_fields(b"device_type=\xffpi\n", "device_type", "F") == "\ufffdpi"
    assert s.parse_fields(b"", "artifact_name", "F") is None


def test_parse_fields_refuses_a_line_without_equals_by_its_number_and_a_name_given_twice():
    with pytest.raises(FilesystemError) as exc:
        s.parse_fields(b"# c\n\nartifact_name=a\njunk\n", "artifact_name", "F")
    assert str(exc.value) == "F: line 4 is not NAME=VALUE: the client refuses the file"
    with pytest.raises(FilesystemError) as exc:
        s.parse_fields(b"artifact_name=a\nx=1\nartifact_name=a\n", "artifact_name", "F")
    assert str(exc.value) == "F: artifact_name is given twice: the client refuses the file"
    assert s.parse_fields(b"x=1\nx=2\nartifact_name=a\n", "artifact_name", "F") == "a"  # others may repeat


# --- the dump --------------------------------------------------------------------------------------


def test_dump_conf_writes_the_clients_layout_with_numbers_as_written_and_ascii_only():
    conf = {
        "ServerURL": "https://\u00e9.example.com",
        "N": N("1.50"),
        "Big": N("12345678901234567891"),
        "Security": {"SSLEngine": "", "Deep": {"On": True}},
        "Keys": ["/a", ["/b"], {"k": None}],
        "Empty": {},
        "None": [],
    }
    want = (
        b"{\n"
        b'    "ServerURL": "https://\\u00e9.example.com",\n'
        b'    "N": 1.50,\n'
        b'    "Big": 12345678901234567891,\n'
        b'    "Security": {\n'
        b'        "SSLEngine": "",\n'
        b'        "Deep": {\n'
        b'            "On": true\n'
        b"        }\n"
        b"    },\n"
        b'    "Keys": [\n'
        b'        "/a",\n'
        b"        [\n"
        b'            "/b"\n'
        b"        ],\n"
        b"        {\n"
        b'            "k": null\n'
        b"        }\n"
        b"    ],\n"
        b'    "Empty": {},\n'
        b'    "None": []\n'
        b"}\n"
    )
    assert s.dump_conf(conf) == want
    assert s.dump_conf({}) == b"{}\n"


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=8),
    st.integers(-(10**20), 10**20).map(lambda i: N(str(i))),
)
_values = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text("abcXYZ", min_size=1, max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text("abcdEF_", min_size=1, max_size=4), _values, max_size=4))
def test_a_dumped_conf_parses_back_to_the_same_settings(conf):
    assert s.parse_conf(s.dump_conf(conf), "W") == conf


def test_plain_gives_python_numbers_inside_objects_and_lists():
    value = {"a": [N("1"), {"b": N("0.5")}], "c": "x", "d": N("12345678901234567891123456789012345678901")}
    assert s.plain(value) == {"a": [1, {"b": 0.5}], "c": "x", "d": "12345678901234567891123456789012345678901"}
    assert isinstance(s.plain({"a": [N("1")]})["a"][0], int)


# --- names as the client matches them -------------------------------------------------------------


def test_find_key_prefers_the_same_spelling_then_any_case():
    obj = {"serverurl": 1, "ServerURL": 2, "X": 3}
    assert s.find_key(obj, "ServerURL") == "ServerURL"
    assert s.find_key(obj, "SERVERURL") == "serverurl"
    assert s.find_key({"stra\u00dfe": 1}, "STRASSE") == "stra\u00dfe"  # casefold, not lower
    assert s.find_key(obj, "Other") is None


def test_lookup_follows_dotted_names_in_any_case_and_stops_at_what_is_no_object():
    conf = {"security": {"authprivatekey": "/k"}, "ServerURL": "u", "List": [1], "Null": None}
    assert s.lookup(conf, "Security.AuthPrivateKey") == "/k"
    assert s.lookup(conf, "SERVERURL") == "u"
    assert s.lookup(conf, "Security") == {"authprivatekey": "/k"}
    assert s.lookup(conf, "ServerURL.Host") is None
    assert s.lookup(conf, "List.0") is None
    assert s.lookup(conf, "Null.X") is None
    assert s.lookup(conf, "Missing.X") is None


def test_merge_loads_the_second_file_over_the_first_as_go_does():
    base = {"ServerURL": "a", "Security": {"SSLEngine": "e", "AuthPrivateKey": "/k"}, "List": [1, 2], "N": 1}
    over = {"serverurl": "b", "security": {"sslengine": "f"}, "List": [3], "N": None, "New": None, "Z": 2}
    merged = s.merge(base, over)
    assert merged == {
        "Security": {"AuthPrivateKey": "/k", "sslengine": "f"},
        "N": 1,
        "serverurl": "b",
        "List": [3],
        "New": None,
        "Z": 2,
    }
    assert list(merged) == ["Security", "N", "serverurl", "List", "New", "Z"]
    assert base["Security"] == {"SSLEngine": "e", "AuthPrivateKey": "/k"}  # not changed
    assert s.merge({"A": {"x": 1}}, {"a": 5}) == {"a": 5}  # an object replaced by another type
    assert s.merge({"A": 5}, {"a": {"x": 1}}) == {"a": {"x": 1}}


def test_flatten_opens_objects_and_keeps_lists_and_empty_objects_whole():
    conf = {"A": {"B": {"C": 1}, "D": []}, "E": {}, "F": "x"}
    assert s.flatten(conf) == {"A.B.C": 1, "A.D": [], "E": {}, "F": "x"}
    assert s.flatten({"B": 1}, "A.") == {"A.B": 1}


def test_put_creates_objects_and_writes_the_leaf_where_it_stands_in_the_clients_spelling():
    conf = {"A": 1, "security": {"sslengine": "", "K": 2}, "Z": 3}
    s.put(conf, "Security.SSLEngine", "pkcs11", "W")
    assert list(conf.items()) == [("A", 1), ("security", {"SSLEngine": "pkcs11", "K": 2}), ("Z", 3)]
    assert list(conf["security"]) == ["SSLEngine", "K"]  # the objects on the way keep their spelling
    s.put(conf, "Connectivity.DisableKeepAlive", True, "W")
    assert list(conf)[-1] == "Connectivity" and conf["Connectivity"] == {"DisableKeepAlive": True}
    nulled = {"DBus": None, "Y": 1}
    s.put(nulled, "DBus.Enabled", False, "W")
    assert list(nulled.items()) == [("DBus", {"Enabled": False}), ("Y", 1)]
    spelled = {"dbus": None, "Y": 1}  # null in another case: replaced where it stands, in our spelling
    s.put(spelled, "DBus.Enabled", False, "W")
    assert list(spelled.items()) == [("DBus", {"Enabled": False}), ("Y", 1)]
    same = {"A": 1, "B": 2}
    s.put(same, "A", 5, "W")
    assert list(same.items()) == [("A", 5), ("B", 2)]


def test_put_refuses_to_set_inside_a_value_that_is_no_object_naming_the_path():
    conf = {"A": {"B": [1]}}
    with pytest.raises(FilesystemError) as exc:
        s.put(conf, "A.B.C.D", 1, "W")
    assert str(exc.value) == (
        "W: A.B is list, not an object, so A.B.C.D cannot be set: replace it with --set or --unset it"
    )
    with pytest.raises(FilesystemError) as exc:
        s.put({"A": N("7")}, "A.B", 1, "W")
    assert str(exc.value).startswith("W: A is integer, not an object, so A.B cannot be set")
    assert conf == {"A": {"B": [1]}}


def test_delete_removes_a_setting_in_any_case_and_ignores_what_is_absent():
    conf = {"security": {"sslengine": "", "K": 1}, "L": [1], "S": "x"}
    s.delete(conf, "Security.SSLEngine")
    assert conf == {"security": {"K": 1}, "L": [1], "S": "x"}
    s.delete(conf, "S")
    s.delete(conf, "L.X")
    s.delete(conf, "Missing.X")
    s.delete(conf, "Security.Missing")
    assert conf == {"security": {"K": 1}, "L": [1]}
    s.delete(conf, "SECURITY")
    assert conf == {"L": [1]}


def test_known_gives_the_clients_spelling():
    assert s.known("serverurl") == "ServerURL"
    assert s.known("security.authprivatekey") == "Security.AuthPrivateKey"
    assert s.known("ServerURLs") is None


# --- the types the client loads --------------------------------------------------------------------


def test_a_go_int_on_a_32_bit_device_holds_up_to_2_31_minus_1_either_way():
    name = "UpdatePollIntervalSeconds"
    assert list(s.type_problems(name, N("2147483647"))) == []
    assert list(s.type_problems(name, N("-2147483647"))) == []
    assert list(s.type_problems(name, N("2147483648"))) == [
        f"{name} is 2147483648, more than a 32-bit device's Go int holds (2147483647)"
    ]
    assert list(s.type_problems(name, N("-2147483648"))) == [
        f"{name} is -2147483648, more than a 32-bit device's Go int holds (2147483647)"
    ]
    huge = "9" * 60
    assert list(s.type_problems(name, N(huge))) == [
        f"{name} is {'9' * 40}, more than a 32-bit device's Go int holds (2147483647)"
    ]


def test_type_problems_names_the_wrong_type_also_inside_objects_in_any_case():
    assert list(s.type_problems("ServerURL", N("1"))) == [
        "ServerURL is integer, but the Mender client reads it as string"
    ]
    assert list(s.type_problems("UpdatePollIntervalSeconds", N("1.5"))) == [
        "UpdatePollIntervalSeconds is number, but the Mender client reads it as integer"
    ]
    assert list(s.type_problems("ServerURL", None)) == []
    assert list(s.type_problems("NotASetting", N("1"))) == []
    value = {"authprivatekey": N("3"), "sslengine": "x", "Other": 1}
    assert list(s.type_problems("Security", value)) == [
        "Security.AuthPrivateKey is integer, but the Mender client reads it as string"
    ]
    assert list(s.type_problems("DBus", {"Enabled": "yes"})) == [
        "DBus.Enabled is string, but the Mender client reads it as boolean"
    ]
    assert list(s.type_problems("Security", [1])) == ["Security is list, but the Mender client reads it as object"]


def test_conf_problems_lists_every_wrong_type_and_servers_beside_server_url():
    conf = {"serverurl": N("1"), "DBus": {"Enabled": "no"}, "Unknown": 5, "RetryPollCount": N("3")}
    assert s.conf_problems(conf) == [
        "ServerURL is integer, but the Mender client reads it as string",
        "DBus.Enabled is string, but the Mender client reads it as boolean",
    ]
    both = (
        "both Servers and ServerURL are set, and the client refuses to start with both "
        "(--unset Servers, or --unset ServerURL)"
    )
    assert s.conf_problems({"ServerURL": "https://a", "servers": []}) == [both]
    assert s.conf_problems({"ServerURL": "", "Servers": []}) == []  # an empty URL is no URL
    assert s.conf_problems({"ServerURL": "https://a", "Servers": None}) == []
    assert s.conf_problems({"Servers": [{"ServerURL": "https://a"}]}) == []
