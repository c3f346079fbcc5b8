"""OUT's state (emit resume), the edges scripts/mutation found untested: the state file read
strictly and written back as read, and each recorded setting named as an operator knows it, with
the emit options that give it."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from imagetools.emit.state import (
    BaseIdentity,
    EmitState,
    base_identity,
    read_state,
    setting_changes,
    settings_options,
    write_state,
)
from imagetools.errors import EnvironmentProblem
from imagetools.image import ImageSource
from imagetools.unitformat import STATE_FILE

BASE = {"path": "/b.img", "size": 10, "mtime_ns": 5, "table_sha256": "t" * 64, "sha256": "s" * 64}
STATE = {"version": 1, "base": BASE, "settings": {"bmap": True}, "complete": False}


def test_a_state_reads_back_as_written(tmp_path):
    state = EmitState.from_json(STATE)
    assert state == EmitState(BaseIdentity("/b.img", 10, 5, "t" * 64, "s" * 64), {"bmap": True}, False)
    assert state.to_json() == STATE
    write_state(tmp_path, state)
    assert (tmp_path / STATE_FILE).read_text() == json.dumps(STATE, indent=2) + "\n"
    assert read_state(tmp_path) == state
    no_sha = EmitState.from_json({**STATE, "base": {k: v for k, v in BASE.items() if k != "sha256"}})
    assert no_sha.base.sha256 is None


def test_no_state_file_is_no_state(tmp_path):
    assert read_state(tmp_path) is None


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{", "Expecting property name enclosed in double quotes"),
        ("[]", "state is not a JSON object"),
        (json.dumps({**STATE, "base": []}), "state: 'base' is missing or of another type"),
        (json.dumps({**STATE, "base": {**BASE, "size": "10"}}), "base: 'size' is missing or of another type"),
        (json.dumps({**STATE, "base": {**BASE, "path": 1}}), "base: 'path' is missing or of another type"),
        (json.dumps({**STATE, "base": {**BASE, "mtime_ns": None}}), "base: 'mtime_ns' is missing or of another type"),
        (json.dumps({**STATE, "base": {**BASE, "table_sha256": 2}}), "base: 'table_sha256' is missing"),
        (json.dumps({**STATE, "base": {**BASE, "sha256": 3}}), "base: 'sha256' is missing or of another type"),
        (json.dumps({**STATE, "settings": []}), "state: 'settings' is missing or of another type"),
        (json.dumps({**STATE, "complete": 1}), "state: 'complete' is missing or of another type"),
    ],
)
def test_a_state_file_emit_did_not_write_is_unreadable(tmp_path, text, reason):
    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(EnvironmentProblem) as refused:
        read_state(tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / STATE_FILE} is unreadable (")
    assert reason in message
    assert message.endswith(
        "); it records which base image the units were made from: restore it or use a new output directory"
    )


def test_a_directory_in_place_of_the_state_is_unreadable(tmp_path):
    (tmp_path / STATE_FILE).mkdir()
    with pytest.raises(EnvironmentProblem, match="is unreadable"):
        read_state(tmp_path)


KEY = {"type": "rsa", "format": "pem", "bits": 3072}


def test_the_options_of_recorded_settings():
    settings = {"key": KEY, "bmap": True, "discard_private_keys": False}
    assert settings_options(settings) == ["--key-type", "rsa", "--bits", "3072"]
    full = {
        "key": {"type": "ecdsa", "format": "pkcs8", "curve": "p384"},
        "bmap": False,
        "discard_private_keys": True,
        "format": "delta",
        "unit_files": [{"path": "/data/id", "column": "serial", "mode": "0600", "owner": "0:0"}],
        "image_sha256": True,
    }
    assert settings_options(full) == [
        "--key-type", "ecdsa", "--curve", "p384", "--format", "delta", "--no-bmap", "--discard-private-keys",
        "--unit-file", "/data/id=serial:0600:0:0", "--image-sha256",
    ]  # fmt: skip
    assert settings_options({"key": {"type": "ed25519", "format": "pkcs8"}}) == ["--key-type", "ed25519"]
    assert settings_options({}) == ["--key-type", "rsa"]


def test_the_modify_options_of_recorded_settings():
    modify = {
        "server_uri": "https://x", "tenant_token_sha256": "a" * 64, "server_cert_sha256": None,
        "verification_key_sha256": "b" * 64, "artifact_name": "rel-1", "set": [["A", "1"], "B"],
        "unset": ["CD"], "static_key": True, "conf_mode": "0600", "other": 5, "flag": True, "empty": "",
    }  # fmt: skip
    assert settings_options({"key": {"type": "ed25519"}, "modify": modify}) == [
        "--key-type", "ed25519", "-u", "https://x", "-t", "@TOKEN_FILE", "-v", "VERIFY_KEY", "-n", "rel-1",
        "--set", "A=1", "--set", "B", "--unset", "CD", "--static-key", "--mode", "0600",
    ]  # fmt: skip


def test_changed_settings_are_named_as_an_operator_knows_them():
    old = {"key": KEY, "bmap": True, "discard_private_keys": False}
    assert setting_changes(old, {**old, "key": {"type": "ecdsa", "curve": "p256"}}) == [
        ("key type", "rsa3072", "ecdsa p256")
    ]
    assert setting_changes(old, {**old, "key": {**KEY, "format": "pkcs8"}}) == [
        ("key type", "rsa3072", "rsa3072 PKCS#8")
    ]
    assert setting_changes(old, {**old, "bmap": False, "discard_private_keys": True}) == [
        ("bmap", "on", "off"),
        ("private keys", "kept", "discarded"),
    ]
    assert setting_changes(old, {**old, "format": "delta", "image_sha256": True}) == [
        ("format", "image", "delta"),
        ("image sha256", "none", "on"),
    ]
    assert setting_changes(old, {**old, "future": [1]}) == [("future", "none", "[1]")]


def test_changed_modify_settings_show_secrets_by_digest_only():
    old = {"key": KEY, "modify": {"tenant_token_sha256": "a" * 64, "server_uri": "https://a"}}
    new = {"key": KEY, "modify": {"tenant_token_sha256": "b" * 64, "server_uri": "https://b", "static_key": True}}
    assert setting_changes(old, new) == [
        ("tenant token", f"sha256 {'a' * 12}...", f"sha256 {'b' * 12}..."),
        ("server URI", "https://a", "https://b"),
        ("static key", "none", "on"),
    ]


def test_settings_that_differ_only_in_shape_are_shown_whole():
    old, new = {"key": KEY, "unit_files": "odd"}, {"key": KEY, "unit_files": []}
    assert setting_changes(old, new) == [("settings", json.dumps(old, sort_keys=True), json.dumps(new, sort_keys=True))]


def test_settings_a_run_no_longer_has_read_none():
    old = {"key": KEY, "image_sha256": True}
    assert setting_changes(old, {"key": KEY}) == [("image sha256", "on", "none")]


def test_unit_files_and_set_lists_are_shown_joined():
    files = [{"path": "/a", "column": "c", "mode": "0600", "owner": "0:0"}, {"path": "/b", "column": "d"}]
    assert setting_changes({"key": KEY}, {"key": KEY, "unit_files": files}) == [
        ("unit files", "none", "/a=c:0600:0:0, /b=d:None:None")
    ]
    modify = {"set": [["A", "1"], ["B", "2"]]}
    assert setting_changes({"key": KEY}, {"key": KEY, "modify": modify}) == [("--set", "none", "A=1, B=2")]


def test_unknown_settings_are_shown_with_sorted_names():
    assert setting_changes({"key": KEY}, {"key": KEY, "future": {"b": 1, "a": 2}}) == [
        ("future", "none", '{"a": 2, "b": 1}')
    ]


def test_an_ed25519_key_has_no_pkcs8_variant():
    old, new = {"key": {"type": "ed25519", "format": "pem"}}, {"key": {"type": "ed25519", "format": "pkcs8"}}
    assert setting_changes(old, new) == [("settings", json.dumps(old, sort_keys=True), json.dumps(new, sort_keys=True))]


def test_empty_and_list_modify_values_give_no_option():
    assert settings_options({"modify": {"artifact_name": "", "other": [1, 2], "server_uri": None}}) == [
        "--key-type",
        "rsa",
    ]
    assert setting_changes({"key": KEY}, {"key": KEY, "modify": {"other": [1, 2]}}) == [("other", "none", "[1, 2]")]


@pytest.mark.parametrize("size", [1000, 3 << 20])
def test_the_base_is_known_by_its_first_and_last_mib(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "base.img").write_bytes(data)
    link = tmp_path / "link.img"
    link.symlink_to(tmp_path / "base.img")
    with ImageSource(link) as base:
        ident = base_identity(base, None)
    mib = 1 << 20
    st = os.stat(tmp_path / "base.img")
    assert ident == BaseIdentity(
        str(tmp_path / "base.img"), size, st.st_mtime_ns, hashlib.sha256(data[:mib] + data[-mib:]).hexdigest()
    )


def test_the_base_sha256_is_reused_only_while_size_mtime_and_tables_match(tmp_path):
    (tmp_path / "base.img").write_bytes(os.urandom(4096))
    with ImageSource(tmp_path / "base.img") as base:
        fresh = base_identity(base, None)
        same = EmitState(BaseIdentity("/old/path", fresh.size, fresh.mtime_ns, fresh.table_sha256, "s" * 64), {}, True)
        assert base_identity(base, same).sha256 == "s" * 64
        for changed in ({"size": 1}, {"mtime_ns": 1}, {"table_sha256": "t" * 64}):
            other = BaseIdentity(**{**same.base.to_json(), **changed})
            assert base_identity(base, EmitState(other, {}, True)).sha256 is None
