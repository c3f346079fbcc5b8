"""menderconf.plan, the edges scripts/mutation found untested: what a ModifyPlan refuses when made
(with the exact message), what it records without secrets, and what it changes in a mender.conf."""

from __future__ import annotations

import datetime
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from support.tls import certificate_valid

from imagetools import keys
from imagetools.errors import KeyMaterialError, UsageError
from imagetools.menderconf.plan import ModifyPlan
from imagetools.strict import JsonNumber

N = JsonNumber
URL = "https://prod.mender.example.com"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJtZW5kZXIudGVuYW50IjoiNjQ1In0.c2lnbmF0dXJl"
NOTHING = "nothing to change: give at least one of -u, -t, -c, -v, -n, --set, --unset, --static-key, --mode"


def _refused(**options) -> str:
    with pytest.raises((UsageError, KeyMaterialError)) as exc:
        ModifyPlan(**options)
    return str(exc.value)


def _cert(after: datetime.datetime) -> bytes:
    return certificate_valid(after - datetime.timedelta(days=30), after)


@pytest.fixture(scope="module")
def pems() -> dict[str, bytes]:
    signing = ec.generate_private_key(ec.SECP256R1())
    return {
        "cert": _cert(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)),
        "expired": _cert(datetime.datetime(2021, 3, 4, tzinfo=datetime.UTC)),
        "public": keys.public_pem(signing),
        "private": keys.private_pem(signing, "pkcs8"),
    }


# --- what a plan refuses when made -----------------------------------------------------------------


def test_a_plan_with_nothing_to_change_is_refused_and_each_option_alone_is_enough(pems):
    assert _refused() == NOTHING
    assert _refused(static_key=False, settings=(), unset=()) == NOTHING
    with pytest.raises(UsageError) as exc:  # the CLI's `modify IMAGE` with no option: nothing asked
        ModifyPlan.from_options()
    assert str(exc.value) == NOTHING
    alone = [
        {"server_uri": URL},
        {"tenant_token": TOKEN},
        {"server_cert": pems["cert"]},
        {"verification_key": pems["public"]},
        {"artifact_name": "r7"},
        {"settings": (("UpdatePollIntervalSeconds", 5),)},
        {"unset": ("Servers",)},
        {"static_key": True},
        {"conf_mode": 0},
    ]
    for options in alone:
        plan = ModifyPlan(**options)
        assert not plan.empty
        assert plan.changes_conf == ("artifact_name" not in options), options


def test_each_option_value_is_checked_when_the_plan_is_made(pems):
    assert _refused(server_uri="ftp://a").startswith("-u/--server-uri 'ftp://a': the scheme must be http or https")
    assert _refused(tenant_token=" ").startswith("-t/--tenant-token: the tenant token is empty")
    assert _refused(artifact_name="a=b").startswith("-n/--artifact-name 'a=b' contains '='")
    assert _refused(server_cert=pems["private"]).startswith("-c/--server-cert: block 1 is a private key")
    assert _refused(verification_key=pems["private"]).startswith("-v/--verification-key: holds a private key")
    assert _refused(settings=(("a-b", 1),)).startswith("--set 'a-b': not a setting name")
    assert _refused(unset=("a-b",)).startswith("--unset 'a-b': not a setting name")
    assert _refused(settings=(("A", b"x"),)) == "--set A: a bytes is not a JSON value"
    assert ModifyPlan(tenant_token=f"  {TOKEN}\n").tenant_token == TOKEN


@pytest.mark.parametrize("mode", [0, 0o600, 0o777])
def test_a_mode_from_0_to_0777_is_taken(mode):
    assert ModifyPlan(conf_mode=mode).conf_mode == mode


@pytest.mark.parametrize("mode", [-1, 0o1000, "0600", 1.0, True, False])
def test_a_mode_outside_0_to_0777_or_no_int_is_refused(mode):
    assert _refused(conf_mode=mode) == f"--mode {mode!r}: not a permission mode (0o000-0o777)"


def test_settings_are_kept_as_exact_json_and_unknown_names_warned_after_the_certificates(pems):
    plan = ModifyPlan(
        server_cert=pems["expired"],
        settings=(("UpdatePollIntervalSeconds", 1800), ("Custom", {"a": [0.5]}), ("Other", None)),
        unset=("RootfsPartB",),
    )
    assert plan.settings == (("UpdatePollIntervalSeconds", N("1800")), ("Custom", {"a": [N("0.5")]}), ("Other", None))
    assert plan.unset == ("RootfsPartB",)
    listed = ModifyPlan(settings=[("Custom", 1)], unset=["RootfsPartB", "RootfsPartA"])  # a library caller's lists
    assert listed.settings == (("Custom", N("1")),) and listed.unset == ("RootfsPartB", "RootfsPartA")
    assert hash(listed) == hash(ModifyPlan(settings=(("Custom", 1),), unset=("RootfsPartB", "RootfsPartA")))
    assert plan.warnings == (
        "-c/--server-cert: certificate 1 expired on 2021-03-04",
        "--set Custom: not a setting the Mender client reads (it would be ignored): check the spelling",
        "--set Other: not a setting the Mender client reads (it would be ignored): check the spelling",
    )
    assert ModifyPlan(settings=(("UpdatePollIntervalSeconds", 5),)).warnings == ()


def test_a_name_given_twice_or_inside_another_is_refused_naming_its_option():
    assert _refused(settings=(("A", 1), ("a", 2))) == "--set a: a is given more than once in --set/--unset"
    assert _refused(settings=(("A", 1),), unset=("a.B",)) == "--unset a.B: a.B is given more than once in --set/--unset"
    assert _refused(settings=(("A.B", 1), ("A", {}))) == "--set A: A is given more than once in --set/--unset"
    assert _refused(unset=("X", "Y", "x")) == "--unset x: x is given more than once in --set/--unset"
    plan = ModifyPlan(settings=(("Sec", 1), ("SecX", 2)), unset=("Se", "SecX2", "Sec_"))
    assert [name for name, _ in plan.settings] + list(plan.unset) == ["Sec", "SecX", "Se", "SecX2", "Sec_"]


def test_the_server_url_and_tenant_token_go_through_their_options_only():
    assert _refused(settings=(("ServerURL", URL),)) == "--set ServerURL: use -u/--server-uri, which checks the value"
    assert (
        _refused(settings=(("TenantToken", TOKEN),))
        == "--set TenantToken: use -t/--tenant-token, which checks the value"
    )
    assert TOKEN not in _refused(settings=(("TenantToken", TOKEN),))
    assert ModifyPlan(unset=("ServerURL", "TenantToken")).unset == ("ServerURL", "TenantToken")


def test_a_setting_that_a_named_option_sets_is_refused_naming_that_option(pems):
    cases = [
        (
            {"server_uri": URL, "unset": ("ServerURL",)},
            "--unset ServerURL conflicts with -u/--server-uri, which sets ServerURL",
        ),
        (
            {"tenant_token": TOKEN, "unset": ("TenantToken",)},
            "--unset TenantToken conflicts with -t/--tenant-token, which sets TenantToken",
        ),
        (
            {"server_cert": pems["cert"], "settings": (("ServerCertificate", "/x"),)},
            "--set ServerCertificate conflicts with -c/--server-cert, which sets ServerCertificate",
        ),
        (
            {"verification_key": pems["public"], "unset": ("ArtifactVerifyKey",)},
            "--unset ArtifactVerifyKey conflicts with -v/--verification-key, which sets ArtifactVerifyKey",
        ),
        (
            {"static_key": True, "settings": (("Security", {}),)},
            "--set Security conflicts with --static-key, which sets Security.AuthPrivateKey",
        ),
    ]
    for options, message in cases:
        assert _refused(**options) == message
    assert ModifyPlan(static_key=True, settings=(("Security.SSLEngine", "e"),)).static_key


def test_a_value_the_client_would_refuse_is_refused_with_its_problem():
    assert _refused(settings=(("UpdatePollIntervalSeconds", "5"),)) == (
        "--set UpdatePollIntervalSeconds: UpdatePollIntervalSeconds is string, "
        "but the Mender client reads it as integer"
    )
    assert _refused(settings=(("RetryPollCount", 2**31),)) == (
        "--set RetryPollCount: RetryPollCount is 2147483648, more than a 32-bit device's Go int holds (2147483647)"
    )
    assert _refused(settings=(("DBus", {"Enabled": 1}),)) == (
        "--set DBus: DBus.Enabled is integer, but the Mender client reads it as boolean"
    )


# --- from the command line -------------------------------------------------------------------------


def test_from_options_reads_files_parses_set_and_mode(tmp_path, pems):
    (tmp_path / "token").write_text(f"\n {TOKEN} \n")
    (tmp_path / "crt").write_bytes(pems["cert"])
    (tmp_path / "pub").write_bytes(pems["public"])
    plan = ModifyPlan.from_options(
        server_uri=URL,
        tenant_token=f"@{tmp_path / 'token'}",
        server_cert=tmp_path / "crt",
        verification_key=str(tmp_path / "pub"),
        artifact_name="r7",
        set=["UpdatePollIntervalSeconds=1800", 'Custom={"a": 1}'],
        unset=["Servers"],
        static_key=True,
        conf_mode="0640",
    )
    assert plan == ModifyPlan(
        server_uri=URL,
        tenant_token=TOKEN,
        server_cert=pems["cert"],
        verification_key=pems["public"],
        artifact_name="r7",
        settings=(("UpdatePollIntervalSeconds", N("1800")), ("Custom", {"a": N("1")})),
        unset=("Servers",),
        static_key=True,
        conf_mode=0o640,
    )
    assert ModifyPlan.from_options(tenant_token=TOKEN).tenant_token == TOKEN
    assert ModifyPlan.from_options(conf_mode="0").conf_mode == 0


def test_a_tenant_token_file_is_named_in_its_refusal_never_the_token(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"eyJ\xe9abc\n")
    with pytest.raises(UsageError) as exc:
        ModifyPlan.from_options(tenant_token=f"@{path}")
    assert str(exc.value) == (
        f"tenant token file {path}: the tenant token has a non-ASCII character at character 4 "
        "(a tenant token is one line of printable ASCII)"
    )
    with pytest.raises(UsageError, match=f"^tenant token file {path}: the tenant token is empty$"):
        path.write_bytes(b"\n")
        ModifyPlan.from_options(tenant_token=f"@{path}")
    with pytest.raises(UsageError, match="^cannot open tenant token file|tenant token file .*missing"):
        ModifyPlan.from_options(tenant_token=f"@{tmp_path / 'missing'}")


def test_option_files_are_read_up_to_their_limits(tmp_path, pems):
    path = tmp_path / "pub"
    pem = pems["public"]
    path.write_bytes(pem + b"\n" * ((64 << 10) + 1 - len(pem)))  # read (1 MiB), then too big for a key
    with pytest.raises(KeyMaterialError, match="^-v/--verification-key: 65537 bytes, more than a key file holds$"):
        ModifyPlan.from_options(verification_key=path)
    path.write_bytes(b"\n" * ((1 << 20) + 1))
    with pytest.raises(
        UsageError, match=r"^verification key .* is larger than 1 MiB, the limit for a verification key$"
    ):
        ModifyPlan.from_options(verification_key=path)
    path.write_bytes(b"\n" * ((1 << 20) + 1))
    with pytest.raises(
        UsageError, match=r"^server certificate .* is larger than 1 MiB, the limit for a server certificate$"
    ):
        ModifyPlan.from_options(server_cert=path)
    path.write_bytes(pems["cert"] + b"\n" * ((1 << 20) - len(pems["cert"])))
    assert ModifyPlan.from_options(server_cert=path).server_cert == path.read_bytes()
    with pytest.raises(UsageError, match=r"^--set 'A': expected KEY=JSON"):
        ModifyPlan.from_options(set=["A"])
    with pytest.raises(UsageError, match=r"^--mode '8': not an octal"):
        ModifyPlan.from_options(conf_mode="8")


# --- what it records and changes -------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_summary_holds_digests_of_secrets_and_the_mode_only_when_given(pems):
    plan = ModifyPlan(
        server_uri=URL,
        tenant_token=TOKEN,
        server_cert=pems["cert"],
        verification_key=pems["public"],
        artifact_name="r7",
        settings=(("Custom", {"b": 0.5, "a": [1]}), ("UpdatePollIntervalSeconds", 60)),
        unset=("Servers",),
        static_key=True,
    )
    assert plan.summary() == {
        "server_uri": URL,
        "tenant_token_sha256": _sha(TOKEN.encode()),
        "server_cert_sha256": _sha(pems["cert"]),
        "verification_key_sha256": _sha(pems["public"]),
        "artifact_name": "r7",
        "set": [["Custom", '{"a": [1], "b": 0.5}'], ["UpdatePollIntervalSeconds", "60"]],
        "unset": ["Servers"],
        "static_key": True,
    }
    assert TOKEN not in json.dumps(plan.summary())
    assert ModifyPlan(conf_mode=0o40).summary() == {
        "server_uri": None,
        "tenant_token_sha256": None,
        "server_cert_sha256": None,
        "verification_key_sha256": None,
        "artifact_name": None,
        "set": [],
        "unset": [],
        "static_key": False,
        "conf_mode": "0040",
    }


def test_owned_lists_what_the_named_options_set_in_order(pems):
    everything = ModifyPlan(
        server_uri=URL, tenant_token=TOKEN, server_cert=pems["cert"], verification_key=pems["public"], static_key=True
    )
    assert everything.owned() == [
        ("ServerURL", URL),
        ("TenantToken", TOKEN),
        ("ServerCertificate", "/etc/mender/server.crt"),
        ("ArtifactVerifyKey", "/etc/mender/artifact-verify-key.pem"),
        ("Security.AuthPrivateKey", "/var/lib/mender/mender-agent.pem"),
    ]
    assert ModifyPlan(artifact_name="r7").owned() == []


def test_edit_unsets_then_sets_then_applies_the_named_options_without_changing_its_input(pems):
    conf = {"ServerURL": "https://old", "Servers": [{"ServerURL": "x"}], "security": {"sslengine": "e"}, "Z": 1}
    plan = ModifyPlan(
        server_uri=URL,
        static_key=True,
        settings=(("Security.SSLEngine", "pkcs11"), ("Custom", {"a": [1]})),
        unset=("Servers", "Z"),
    )
    before = json.dumps(conf)
    edited = plan.edit(conf, "W")
    assert json.dumps(conf) == before
    assert edited == {
        "ServerURL": URL,
        "security": {"SSLEngine": "pkcs11", "AuthPrivateKey": "/var/lib/mender/mender-agent.pem"},
        "Custom": {"a": [N("1")]},
    }
    edited["Custom"]["a"].append(2)  # the plan's own value is copied, not shared
    assert plan.edit({}, "W")["Custom"] == {"a": [N("1")]}
    assert plan.settings[1] == ("Custom", {"a": [N("1")]})
    with pytest.raises(Exception, match="^W: Security is string, not an object"):
        ModifyPlan(static_key=True).edit({"Security": "x"}, "W")
