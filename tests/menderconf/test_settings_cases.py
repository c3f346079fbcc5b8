"""mender.conf settings given with --set: the tenant token only through -t (which checks it and
records it by SHA-256 alone), never through --set, so it cannot land in emit's state or a
unit.json; a setting the image spells in another case is rewritten where it stands, in the
client's spelling. Through ModifyPlan and the real CLI on real images (read back with debugfs)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from imagetools import files
from imagetools.errors import UsageError
from imagetools.layout import open_layout
from imagetools.menderconf.plan import ModifyPlan
from imagetools.menderconf.settings import dump_conf

pytestmark = pytest.mark.integration

CONF = "/etc/mender/mender.conf"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJtZW5kZXIudGVuYW50Ijoic2V0In0.bm90LWEtc2ln"
URL = "https://prod.mender.example.com"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _conf(img: Path, role: str) -> str:
    start = open_layout(img).require(role).partition.start
    return subprocess.run(
        ["debugfs", "-R", f"cat {CONF}", f"{img}?offset={start}"], capture_output=True, check=True, text=True
    ).stdout


# --- the tenant token goes through -t only -----------------------------------------------------------


@pytest.mark.parametrize("name", ["TenantToken", "tenanttoken", "TENANTTOKEN"])
def test_a_tenant_token_given_with_set_is_refused_in_favour_of_t(name):
    with pytest.raises(UsageError) as exc:
        ModifyPlan.from_options(set=[f'{name}="{TOKEN}"'])
    message = str(exc.value)
    assert TOKEN not in message and "\n" not in message
    assert ("use -t/--tenant-token" in message) if name == "TenantToken" else ("spelled TenantToken" in message)
    with pytest.raises(UsageError, match="use -t/--tenant-token") as exc:
        ModifyPlan(settings=(("TenantToken", TOKEN),))  # a library caller, with a Python value
    assert TOKEN not in str(exc.value)
    assert TOKEN not in json.dumps(ModifyPlan(tenant_token=TOKEN).summary())


def test_emit_and_modify_refuse_set_tenant_token_and_write_nothing(make_image, cli, tmp_path):
    base = make_image("sdimg")
    before = _sha(base)
    devices = tmp_path / "devices.csv"
    devices.write_text("name,mac\nu1,02:00:00:00:06:01\n")
    out = tmp_path / "OUT"
    for args in (
        ["emit", "--base", base, "--devices", devices, "--out-dir", out, "--key-type", "ed25519"],
        ["modify", base],
    ):
        for setting in (f'TenantToken="{TOKEN}"', "UpdatePollIntervalSeconds=60"):
            proc = cli(*args, "--set", setting, "--set", f'TenantToken="{TOKEN}"')
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.count("\n") == 1 and "-t/--tenant-token" in proc.stderr, proc.stderr
            assert TOKEN not in proc.stderr + proc.stdout
    assert not out.exists() and _sha(base) == before
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


# --- another case keeps its place --------------------------------------------------------------------


def test_a_setting_in_another_case_is_rewritten_where_it_stands():
    conf = {
        "ServerURL": "https://old.example.com",
        "updatepollintervalseconds": 5,
        "RootfsPartA": "/dev/mmcblk0p2",
        "security": {"sslengine": "", "AuthPrivateKey": "/k.pem"},
        "Z": 1,
    }
    plan = ModifyPlan(settings=(("UpdatePollIntervalSeconds", 1800), ("Security.SSLEngine", "pkcs11")))
    edited = json.loads(dump_conf(plan.edit(conf, "test")))  # as written into the image
    assert list(edited.items()) == [
        ("ServerURL", "https://old.example.com"),
        ("UpdatePollIntervalSeconds", 1800),
        ("RootfsPartA", "/dev/mmcblk0p2"),
        ("security", {"SSLEngine": "pkcs11", "AuthPrivateKey": "/k.pem"}),
        ("Z", 1),
    ]
    assert list(edited["security"]) == ["SSLEngine", "AuthPrivateKey"]
    assert conf["updatepollintervalseconds"] == 5  # the input is not changed
    moved = ModifyPlan(server_uri=URL).edit({"InventoryPollIntervalSeconds": 1, "serverURL": "x", "Z": 2}, "t")
    assert list(moved.items()) == [("InventoryPollIntervalSeconds", 1), ("ServerURL", URL), ("Z", 2)]


def test_modify_rewrites_a_setting_in_another_case_in_place_on_both_rootfs(make_image, cli):
    img = make_image("sdimg")
    original = {
        "InventoryPollIntervalSeconds": 28800,
        "serverurl": "https://old.example.com",
        "RootfsPartA": "/dev/mmcblk0p2",
        "UPDATEPOLLINTERVALSECONDS": 5,
        "RootfsPartB": "/dev/mmcblk0p3",
    }
    files.install(img, CONF, json.dumps(original, indent=2).encode(), mode=0o600)
    proc = cli("modify", img, "-u", URL, "--set", "UpdatePollIntervalSeconds=1800")
    assert proc.returncode == 0, proc.stderr
    want = {
        "InventoryPollIntervalSeconds": 28800,
        "ServerURL": URL,
        "RootfsPartA": "/dev/mmcblk0p2",
        "UpdatePollIntervalSeconds": 1800,
        "RootfsPartB": "/dev/mmcblk0p3",
    }
    for role in ("rootfs-a", "rootfs-b"):
        text = _conf(img, role)
        assert list(json.loads(text).items()) == list(want.items()), text
        assert text.encode() == dump_conf(want)
