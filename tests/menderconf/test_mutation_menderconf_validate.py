"""menderconf.validate, the edges scripts/mutation found untested: each option value refused at
its exact bound with its exact message (the message is the user's fix), and the PEM files given
to -c and -v judged by their blocks."""

from __future__ import annotations

import datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from support.tls import certificate_valid

from imagetools import keys
from imagetools.errors import KeyMaterialError, UsageError
from imagetools.menderconf import validate as v
from imagetools.menderconf.plan import ModifyPlan
from imagetools.strict import JsonNumber

EXPECTED = " (expected https://host[:port])"


def _message(call, *args) -> str:
    with pytest.raises((UsageError, KeyMaterialError)) as exc:
        call(*args)
    return str(exc.value)


# --- the server URL --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://a",
        "http://a",
        "https://a:1",
        "https://a:65535/mender/",
        "https://[::1]:443",
        "HTTPS://A",
    ],  # the scheme in any case
)
def test_a_server_url_is_returned_as_given(url):
    assert v.check_server_uri(url) == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://a b", "not one line of printable ASCII"),
        ("https://\u00e9.example", "not one line of printable ASCII"),
        ("https://a\x7f", "not one line of printable ASCII"),
        ("https://a\t", "not one line of printable ASCII"),
        ("https://a:65536", "not a URL (bad host or port)"),
        ("https://[::1", "not a URL (bad host or port)"),
        ("ftp://a", "the scheme must be http or https"),
        ("a.example.com", "the scheme must be http or https"),
        ("https://", "no host"),
        ("https://:443", "no host"),
        ("https://a:0", "port 0"),
        ("https://user@a", "credentials, a query or a fragment do not belong in the server URL"),
        ("https://a/?x=1", "credentials, a query or a fragment do not belong in the server URL"),
        ("https://a/#top", "credentials, a query or a fragment do not belong in the server URL"),
    ],
)
def test_a_bad_server_url_is_refused_saying_why(url, problem):
    assert _message(v.check_server_uri, url) == f"-u/--server-uri {url!r}: {problem}{EXPECTED}"


def test_a_long_server_url_is_shown_by_its_first_100_characters():
    url = "ftp://" + "a" * 200
    assert (
        _message(v.check_server_uri, url)
        == f"-u/--server-uri {url[:100]!r}: the scheme must be http or https{EXPECTED}"
    )


# --- the tenant token ------------------------------------------------------------------------------


def test_a_tenant_token_is_stripped_and_refused_when_empty_or_not_one_printable_line_never_shown():
    assert v.check_tenant_token("  eyJ.a.b\n") == "eyJ.a.b"
    assert _message(v.check_tenant_token, " \n\t") == "-t/--tenant-token: the tenant token is empty"
    assert _message(v.check_tenant_token, "", "tenant token file T") == "tenant token file T: the tenant token is empty"
    secret = "eyJ.se cret"
    message = _message(v.check_tenant_token, secret)
    assert message == (
        "-t/--tenant-token: the tenant token has whitespace at character 7 "
        "(a tenant token is one line of printable ASCII)"
    )
    assert _message(v.check_tenant_token, "ab\ncd", "F").startswith(
        "F: the tenant token has a line break at character 3"
    )


# --- the Artifact name -----------------------------------------------------------------------------


def test_an_artifact_name_is_refused_at_its_bounds_with_the_reason():
    assert v.check_artifact_name("release-7 (b)") == "release-7 (b)"
    assert v.check_artifact_name("x" * 4096) == "x" * 4096
    cases = {
        "": "is empty",
        "x" * 4097: "is longer than 4096 characters",
        "a\tb": "is not one line of printable characters",
        "a\nb": "is not one line of printable characters",
        "release ": "has surrounding whitespace, which the client strips",
        " release": "has surrounding whitespace, which the client strips",
        "a=b": "contains '=', at which older clients split artifact_info",
    }
    for name, problem in cases.items():
        assert _message(v.check_artifact_name, name) == f"-n/--artifact-name {name[:100]!r} {problem}"


# --- --mode ----------------------------------------------------------------------------------------


def test_mode_is_one_to_four_octal_digits_up_to_0777():
    assert [v.parse_mode(t) for t in ("0", "7", "600", "0600", "0777", "0000", "0644")] == [
        0,
        7,
        0o600,
        0o600,
        0o777,
        0,
        0o644,
    ]
    for text in ("", "00600", "1000", "0800", "8", "9", "-1", "+600", " 600", "x", "X", "0o600"):
        assert _message(v.parse_mode, text) == (
            f"--mode {text!r}: not an octal permission mode of mender.conf "
            "(0000-0777, e.g. 0600: readable by root only)"
        )
    long = "0" * 30
    assert _message(v.parse_mode, long).startswith(f"--mode {long[:20]!r}: not an octal")


# --- --set and --unset names and values ------------------------------------------------------------


NOT_A_NAME = (
    "not a setting name (letters, digits and '_', starting with a letter; '.' between the names of nested objects)"
)


def test_setting_names_are_go_field_names_at_most_four_levels_deep_in_the_clients_spelling():
    for name in ("A", "a.b.c.d", "X1_y", "Z" * 64, "Security.AuthPrivateKey", "Custom"):
        assert v.check_setting_name(name, "--set") == name
    for name in ("a.b.c.d.e", "_a", "Z" * 65, "a..b", ".a", "a.", "1a", "a-b", "", "a b", "\u00e9"):
        assert _message(v.check_setting_name, name, "--unset") == f"--unset {name!r}: {NOT_A_NAME}"
    assert _message(v.check_setting_name, "z" * 200, "--set") == f"--set {'z' * 100!r}: {NOT_A_NAME}"
    assert _message(v.check_setting_name, "security.sslengine", "--unset") == (
        "--unset security.sslengine: the Mender client's setting is spelled Security.SSLEngine"
    )


def test_a_setting_is_key_equals_strict_json():
    assert v.parse_setting("UpdatePollIntervalSeconds=1800") == ("UpdatePollIntervalSeconds", JsonNumber("1800"))
    assert v.parse_setting('A={"b": [1, "x=y"]}') == ("A", {"b": [JsonNumber("1"), "x=y"]})
    assert v.parse_setting("A=null") == ("A", None)
    assert _message(v.parse_setting, "A") == "--set 'A': expected KEY=JSON, e.g. --set UpdatePollIntervalSeconds=1800"
    assert _message(v.parse_setting, "x" * 150) == (
        f"--set {'x' * 100!r}: expected KEY=JSON, e.g. --set UpdatePollIntervalSeconds=1800"
    )
    assert _message(v.parse_setting, "a-b=1") == f"--set 'a-b': {NOT_A_NAME}"
    assert _message(v.parse_setting, 'A={"x": 1, "X": 2}').startswith("--set A: 'X' appears twice in one object")


@pytest.mark.parametrize("raw", ["https://a", "Xyz", "pkcs11", "", "@", "'x'"])
def test_a_value_that_cannot_start_json_gets_the_quoting_hint(raw):
    message = _message(v.parse_setting, f"A={raw}")
    hint = " (a string needs JSON quotes: --set 'A=\"...\"')"
    assert message.startswith("--set A: not JSON (")
    assert message.endswith(hint) == (raw != "")


@pytest.mark.parametrize("raw", ["{", "[", '"x', "-", "0x", "tru", "fals", "nul"])
def test_a_value_that_starts_like_json_gets_no_hint(raw):
    message = _message(v.parse_setting, f"A={raw}")
    assert message.startswith("--set A: not JSON (") and "JSON quotes" not in message
    assert message.endswith(")")


def test_a_value_that_is_no_json_is_refused_with_the_parsers_reason_alone():
    assert _message(v.parse_setting, "A={") == (
        "--set A: not JSON (Expecting property name enclosed in double quotes at line 1 column 2)"
    )


@pytest.mark.parametrize("first", list('{["-0123456789tfn'))
def test_every_character_that_starts_json_is_spared_the_hint(first):
    assert "JSON quotes" not in _message(v.parse_setting, f"A={first}@")


def test_python_values_become_exact_json_numbers_and_others_are_refused():
    n = JsonNumber
    assert v.from_plain(None, "N") is None
    assert v.from_plain(True, "N") is True
    assert v.from_plain("x", "N") == "x"
    assert v.from_plain(1800, "N") == n("1800")
    assert v.from_plain(0.1, "N") == n("0.1")
    assert v.from_plain(10**30, "N") == n("1000000000000000000000000000000")
    assert v.from_plain(n("7"), "N") == n("7")
    assert v.from_plain({"a": [1, (2.5,)], "b": {"c": None}}, "N") == {"a": [n("1"), [n("2.5")]], "b": {"c": None}}
    refused = {
        2**53 + 1: "--set N: the number 9007199254740993 changes when read as a double "
        "(as mender-artifact and most JSON readers read numbers)",
        float("inf"): "--set N: the number inf changes when read as a double "
        "(as mender-artifact and most JSON readers read numbers)",
        b"x": "--set N: a bytes is not a JSON value",
    }
    for value, message in refused.items():
        assert _message(v.from_plain, value, "N") == message
    assert _message(v.from_plain, n("1" * 60), "N").startswith(f"--set N: the number {'1' * 40} changes")
    names = "--set N: object names must be strings, each given once (in any case)"
    assert _message(v.from_plain, {"a": 1, "A": 2}, "N") == names
    assert _message(v.from_plain, {1: 2}, "N") == names
    assert _message(v.from_plain, {"a": {"b": 1, "B": 1}}, "N") == names
    assert _message(v.from_plain, [{1}], "N") == "--set N: a set is not a JSON value"


# --- the PEM files of -c and -v --------------------------------------------------------------------


def _cert(before: datetime.datetime, after: datetime.datetime) -> bytes:
    return certificate_valid(before, after)


NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def certs() -> dict[str, bytes]:
    return {
        "valid": _cert(NOW - DAY, NOW + DAY),
        "expired": _cert(
            datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), datetime.datetime(2021, 3, 4, tzinfo=datetime.UTC)
        ),
        "early": _cert(
            datetime.datetime(2099, 5, 6, tzinfo=datetime.UTC), datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)
        ),
    }


def test_a_certificate_chain_gives_a_warning_per_certificate_out_of_its_validity(certs):
    assert v.check_server_cert(certs["valid"], "C") == []
    chain = b"text before\n" + certs["valid"] + b"between\n" + certs["expired"] + certs["early"]
    assert v.check_server_cert(chain, "C") == [
        "C: certificate 2 expired on 2021-03-04",
        "C: certificate 3 is not valid before 2099-05-06",
    ]


def test_a_certificate_file_is_refused_by_size_and_by_every_block_that_is_no_plain_certificate(certs):
    limit = 1 << 20
    padded = certs["valid"] + b"\n" * (limit - len(certs["valid"]))
    assert v.check_server_cert(padded, "C") == []
    assert _message(v.check_server_cert, padded + b"\n", "C") == (
        f"C: {limit + 1} bytes, more than a certificate chain holds (1 MiB)"
    )
    assert (
        _message(v.check_server_cert, b"just text\n", "C") == "C: not a PEM certificate (no 'BEGIN CERTIFICATE' block)"
    )
    private = keys.private_pem(ec.generate_private_key(ec.SECP256R1()), "sec1")
    assert _message(v.check_server_cert, certs["valid"] + private, "C") == (
        "C: block 2 is a private key; the server certificate is readable by everyone on the device: "
        "never put a key in it"
    )
    public = keys.public_pem(ec.generate_private_key(ec.SECP256R1()))
    assert _message(v.check_server_cert, public, "C") == "C: block 1 is 'PUBLIC KEY', not a plain 'CERTIFICATE' block"
    label = b"X" * 50
    odd = b"-----BEGIN " + label + b"-----\nAAAA\n-----END " + label + b"-----\n"
    assert _message(v.check_server_cert, odd, "C") == f"C: block 1 is {'X' * 40!r}, not a plain 'CERTIFICATE' block"
    body = certs["valid"].decode().splitlines()
    with_headers = "\n".join([body[0], "Proc-Type: 4,ENCRYPTED", "", *body[1:]]) + "\n"
    assert _message(v.check_server_cert, with_headers.encode(), "C") == (
        "C: block 1 is 'CERTIFICATE', not a plain 'CERTIFICATE' block"
    )
    assert _message(v.check_server_cert, b"-----BEGIN CERTIFICATE-----\nAAAA\n", "C") == (
        "C: the 'CERTIFICATE' block on line 1 has no '-----END CERTIFICATE-----' line"
    )
    junk = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    assert _message(v.check_server_cert, certs["valid"] + junk, "C") == "C: block 2 is not a valid X.509 certificate"


def test_a_verification_key_is_a_public_spki_key_the_client_accepts():
    signing = ec.generate_private_key(ec.SECP256R1())
    assert v.check_verification_key(keys.public_pem(signing), "V") == "ECDSA-secp256r1"
    assert _message(v.check_verification_key, keys.private_pem(signing, "pkcs8"), "V") == (
        "V: holds a private key; -v takes the public key that verifies Artifact signatures "
        "(openssl pkey -in KEY -pubout), and the signing key must never go into an image"
    )
    assert _message(
        v.check_verification_key, keys.public_pem(signing) + keys.private_pem(signing, "sec1"), "V"
    ).startswith("V: holds a private key")
    assert _message(v.check_verification_key, b"-----BEGIN PUBLIC KEY-----\nAAAA\n", "V") == (
        "V: the 'PUBLIC KEY' block on line 1 has no '-----END PUBLIC KEY-----' line"
    )
    public = keys.public_pem(signing)
    assert _message(v.check_verification_key, public + public, "V").startswith("V: holds 2 PEM blocks")
    small = rsa.generate_private_key(65537, 1024).public_key()
    pkcs1 = small.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    assert _message(v.check_verification_key, pkcs1, "V") == (
        "V: PKCS#1 'RSA PUBLIC KEY'; the client reads SPKI 'PUBLIC KEY' "
        "(convert with: openssl rsa -RSAPublicKey_in -pubout)"
    )
    spki = small.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert _message(v.check_verification_key, spki, "V") == "V: RSA key of 1024 bits; at least 2048 are required"
    pem = keys.public_pem(signing)
    padded = pem + b"\n" * (keys.MAX_KEY_FILE - len(pem))
    assert v.check_verification_key(padded, "V") == "ECDSA-secp256r1"
    assert (
        _message(v.check_verification_key, padded + b"\n", "V")
        == f"V: {keys.MAX_KEY_FILE + 1} bytes, more than a key file holds"
    )


def test_an_option_file_is_read_up_to_its_limit_and_refused_past_it_as_a_usage_error(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"t" * 10)
    assert v.read_file(path, 10, "tenant token file") == b"t" * 10
    with pytest.raises(UsageError, match="^tenant token file .* is larger than"):
        v.read_file(path, 9, "tenant token file")


def test_a_tenant_token_file_holds_at_most_64_kib(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"t" * (64 << 10))
    assert ModifyPlan.from_options(tenant_token=f"@{path}").tenant_token == "t" * (64 << 10)
    path.write_bytes(b"t" * ((64 << 10) + 1))
    with pytest.raises(UsageError, match=r"is larger than 64 KiB, the limit for a tenant token file$"):
        ModifyPlan.from_options(tenant_token=f"@{path}")
