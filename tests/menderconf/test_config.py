"""modify and config on real images, checked with the real tools: debugfs reads what was written,
mender-artifact modify is the reference for mender.conf, e2fsck judges the filesystems, and the
real Mender client (Debian's mender-client) reads the modified configuration and authenticates.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from support.debugfs import debugfs_stat
from support.mender_client import AuthServer, run_client, unshare_works
from support.tls import self_signed
from support.tools import run_tool

from imagetools import files, keys, verify
from imagetools.errors import KeyMaterialError, UsageError
from imagetools.layout import open_layout
from imagetools.menderconf.modify import modify
from imagetools.menderconf.plan import ModifyPlan
from imagetools.menderconf.read import read as read_config
from imagetools.menderconf.settings import dump_conf
from imagetools.verify import verify_image

pytestmark = pytest.mark.integration

CONF = "/etc/mender/mender.conf"
URL = "https://prod.mender.example.com"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJtZW5kZXIudGVuYW50IjoiNjQ1In0.c2lnbmF0dXJl"
# What a meta-mender image carries besides ServerURL: nested objects, numbers, lists.
RICH_CONF = {
    "ServerURL": "https://old.example.com",
    "InventoryPollIntervalSeconds": 28800,
    "RetryPollIntervalSeconds": 300,
    "RootfsPartA": "/dev/mmcblk0p2",
    "RootfsPartB": "/dev/mmcblk0p3",
    "Security": {"SSLEngine": ""},
    "DBus": {"Enabled": True},
    "ArtifactVerifyKeys": [],
}


# --- helpers -------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def offset(img: Path, role: str) -> int:
    return open_layout(img).require(role).partition.start


def debugfs_cat(img: Path, role: str, path: str) -> bytes:
    """The file as the real debugfs reads it at the partition's offset."""
    proc = subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{img}?offset={offset(img, role)}"], capture_output=True, check=True
    )
    return proc.stdout


def conf_of(img: Path, role: str) -> dict:
    return json.loads(debugfs_cat(img, role, CONF))


def fsck_clean(img: Path, *roles: str) -> None:
    for role in roles:
        clean, output = open_layout(img).require(role).fsck(img)
        assert clean, output


@pytest.fixture(scope="module")
def trust(tmp_path_factory) -> dict[str, Path]:
    """A self-signed server certificate for 127.0.0.1 (+ its key), a verification key pair."""
    d = tmp_path_factory.mktemp("trust")
    self_signed(d)
    signing = ec.generate_private_key(ec.SECP256R1())
    (d / "signing.key").write_bytes(keys.private_pem(signing, "pkcs8"))
    (d / "verify.pub").write_bytes(keys.public_pem(signing))
    (d / "token").write_text(TOKEN + "\n")
    return {
        "crt": d / "server.crt",
        "server_key": d / "server.key",
        "signing_key": d / "signing.key",
        "pub": d / "verify.pub",
        "token": d / "token",
    }


def modify_args(trust: dict[str, Path], url: str = URL) -> list[str]:
    return ["-u", url, "-t", f"@{trust['token']}", "-n", "release-7", "-c", str(trust["crt"]), "-v", str(trust["pub"])]


def assert_modified(img: Path, trust: dict[str, Path], roles=("rootfs-a", "rootfs-b")) -> None:
    for role in roles:
        conf = conf_of(img, role)
        assert conf["ServerURL"] == URL and conf["TenantToken"] == TOKEN
        assert conf["ServerCertificate"] == "/etc/mender/server.crt"
        assert conf["ArtifactVerifyKey"] == "/etc/mender/artifact-verify-key.pem"
        assert debugfs_cat(img, role, "/etc/mender/artifact_info") == b"artifact_name=release-7\n"
        assert debugfs_cat(img, role, "/etc/mender/server.crt") == trust["crt"].read_bytes()
        assert debugfs_cat(img, role, "/etc/mender/artifact-verify-key.pem") == trust["pub"].read_bytes()
    fsck_clean(img, *roles)


# --- every option on both rootfs -----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["sdimg", "uefiimg"])
def test_modify_lands_on_both_rootfs(make_image, cli, trust, layout):
    img = make_image(layout)
    result = cli("modify", img, *modify_args(trust))
    assert result.returncode == 0, result.stderr
    [warning] = result.stderr.splitlines()  # the token lands in a 0644 file: said once, never shown
    assert "warning" in warning and "--mode" in warning and TOKEN not in result.stderr
    assert_modified(img, trust)
    # mender-artifact reads the same (it reads rootfs paths from A)
    read = run_tool("mender-artifact", "cat", f"{img}:{CONF}")
    assert json.loads(read.stdout)["TenantToken"] == TOKEN
    assert debugfs_stat(img, offset(img, "rootfs-b"), CONF)["mode"] == 0o644  # make-image's mode, kept


@pytest.mark.parametrize("layout", ["gptimg", "noboot"])
def test_modify_and_read_on_other_layouts(make_image, layout):
    img = make_image(layout)
    result = modify(img, ModifyPlan(server_uri=URL, artifact_name="release-7"))
    assert [c.role for c in result.rootfs] == ["rootfs-a", "rootfs-b"] and result.warnings == []
    report = read_config(img)
    assert [r.settings["ServerURL"] for r in report.rootfs] == [URL, URL]
    assert [r.artifact_name for r in report.rootfs] == ["release-7"] * 2 and report.differences == []
    fsck_clean(img, "rootfs-a", "rootfs-b")


def test_extended_layout_where_mender_artifact_fails(make_image, cli, trust, tmp_path):
    img = make_image("extended")
    theirs = run_tool("mender-artifact", "modify", "-u", URL, str(make_image("extended")), check=False)
    assert theirs.returncode != 0  # 6 partitions: it cannot even read the table
    result = cli("modify", img, *modify_args(trust))
    assert result.returncode == 0, result.stderr
    assert_modified(img, trust)
    fsck_clean(img, "data")


def test_empty_rootfs_b_is_skipped_with_a_warning(make_image, cli, trust):
    img = make_image("sdimg", empty_rootfs_b=True)
    b_before = run_tool("debugfs", "-R", "ls -l /", f"{img}?offset={offset(img, 'rootfs-b')}").stdout
    result = cli("modify", img, *modify_args(trust))
    assert result.returncode == 0, result.stderr
    assert "skipped rootfs B" in result.stderr and "is empty" in result.stderr
    assert_modified(img, trust, roles=("rootfs-a",))
    assert run_tool("debugfs", "-R", "ls -l /", f"{img}?offset={offset(img, 'rootfs-b')}").stdout == b_before
    before = sha256(img)
    asked = cli("modify", img, "--rootfs", "b", "-u", URL)
    assert asked.returncode == 2 and "rootfs B" in asked.stderr and "is empty" in asked.stderr
    assert sha256(img) == before


def test_rootfs_option_picks_one(make_image, cli):
    img = make_image("sdimg")
    assert cli("modify", img, "--rootfs", "b", "-n", "only-b").returncode == 0
    assert debugfs_cat(img, "rootfs-b", "/etc/mender/artifact_info") == b"artifact_name=only-b\n"
    assert debugfs_cat(img, "rootfs-a", "/etc/mender/artifact_info") == b""  # debugfs: not found


# --- the same mender.conf as mender-artifact modify ----------------------------------------------


@pytest.mark.parametrize("layout", ["sdimg", "uefiimg"])
def test_mender_conf_equals_mender_artifact_modify(make_image, cli, trust, tmp_path, layout):
    img = make_image(layout)
    files.install(img, CONF, json.dumps(RICH_CONF, indent=2).encode(), mode=0o600)
    reference = tmp_path / f"reference{img.suffix}"
    shutil.copyfile(img, reference)
    # 3.9's -t takes the token itself (its help says "path"); -c and -v copy files only
    run_tool(
        "mender-artifact",
        "modify",
        "-u",
        URL,
        "-t",
        TOKEN,
        "-n",
        "release-7",
        "-c",
        str(trust["crt"]),
        "-v",
        str(trust["pub"]),
        str(reference),
    )
    assert cli("modify", img, *modify_args(trust)).returncode == 0
    for role in ("rootfs-a", "rootfs-b"):
        theirs, ours = conf_of(reference, role), conf_of(img, role)
        assert ours == {
            **theirs,
            "ServerCertificate": "/etc/mender/server.crt",
            "ArtifactVerifyKey": "/etc/mender/artifact-verify-key.pem",
        }
        assert list(ours)[: len(RICH_CONF)] == list(RICH_CONF)  # our order is the file's
        for path in ("/etc/mender/server.crt", "/etc/mender/artifact-verify-key.pem"):
            assert debugfs_cat(img, role, path) == debugfs_cat(reference, role, path)
        assert debugfs_cat(reference, role, "/etc/mender/artifact_info") == b"artifact_name=release-7"
        assert debugfs_stat(img, offset(img, role), CONF)["mode"] == 0o600


def test_keeps_every_setting_exactly_mode_and_owner(make_image):
    img = make_image("sdimg")
    text = (
        b'{"ServerURL": "https://a.example.com", "Big": 12345678901234567891, "F": 1.10,\n'
        b' "Security": {"SSLEngine": "x"}}'
    )
    files.install(img, CONF, text, mode=0o640, uid=0, gid=42)
    plan = ModifyPlan(server_uri=URL, static_key=True)
    result = modify(img, plan)
    assert [c.written for c in result.rootfs] == [[CONF], [CONF]]
    raw = debugfs_cat(img, "rootfs-a", CONF)
    assert b'"Big": 12345678901234567891' in raw and b'"F": 1.10' in raw  # numbers as written
    assert json.loads(raw)["Security"] == {"SSLEngine": "x", "AuthPrivateKey": "/var/lib/mender/mender-agent.pem"}
    stat = debugfs_stat(img, offset(img, "rootfs-b"), CONF)
    assert (stat["mode"], stat["gid"]) == (0o640, 42)
    again = modify(img, plan)  # nothing left to do: nothing written
    assert [c.written for c in again.rootfs] == [[], []]
    fsck_clean(img, "rootfs-a", "rootfs-b")


def test_set_and_unset(make_image):
    img = make_image("sdimg")
    files.install(img, CONF, json.dumps(RICH_CONF).encode())
    plan = ModifyPlan.from_options(
        set=["UpdatePollIntervalSeconds=1800", 'Security.SSLEngine="pkcs11"'], unset=["RootfsPartB", "DBus"]
    )
    modify(img, plan)
    conf = conf_of(img, "rootfs-b")
    assert conf["UpdatePollIntervalSeconds"] == 1800 and conf["Security"] == {"SSLEngine": "pkcs11"}
    assert "RootfsPartB" not in conf and "DBus" not in conf and conf["RootfsPartA"] == "/dev/mmcblk0p2"


# --- bad input: refused, nothing changed ---------------------------------------------------------

MALFORMED = {
    "not JSON": b'{"ServerURL": "https://x.example.com",',
    "empty": b"",
    "duplicate key": b'{"ServerURL": "a", "ServerURL": "b"}',
    "duplicate in another case": b'{"ServerURL": "a", "serverurl": "b"}',
    "a list": b'["ServerURL"]',
    "NaN": b'{"RetryPollCount": NaN}',
    "not UTF-8": b'{"ServerURL": "\xff"}',
    "wrong type": b'{"UpdatePollIntervalSeconds": "1800"}',
    "too large": b'{"X": "' + b"a" * (1 << 20) + b'"}',
}


@pytest.mark.parametrize("content", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_mender_conf_is_refused(make_image, cli, content):
    img = make_image("sdimg")
    files.install(img, CONF, content, partition=3)  # rootfs B only: A must not be written either
    before = sha256(img)
    result = cli("modify", img, "-u", URL)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("imagetools: error: ") and result.stderr.count("\n") == 1
    assert "partition 3" in result.stderr and "Traceback" not in result.stderr
    assert sha256(img) == before


def test_servers_beside_server_url_is_refused(make_image, cli):
    img = make_image("sdimg")
    files.install(img, CONF, b'{"Servers": [{"ServerURL": "https://a.example.com"}]}')
    before = sha256(img)
    result = cli("modify", img, "-u", URL)
    assert result.returncode == 2 and "--unset Servers" in result.stderr
    assert sha256(img) == before
    assert cli("modify", img, "-u", URL, "--unset", "Servers").returncode == 0


def test_links_are_not_written_through(make_image, cli):
    img = make_image("sdimg")
    files.remove(img, CONF)
    run_tool(
        "debugfs", "-w", "-R", f"symlink {CONF} /data/mender/mender.conf", f"{img}?offset={offset(img, 'rootfs-a')}"
    )
    before = sha256(img)
    result = cli("modify", img, "-u", URL)
    assert result.returncode == 2 and "symbolic link" in result.stderr
    assert sha256(img) == before


def bad_files(trust: dict[str, Path], tmp: Path) -> dict[str, list[str]]:
    (tmp / "garbage.crt").write_text("not a certificate\n")
    (tmp / "key-in-chain.crt").write_bytes(trust["crt"].read_bytes() + trust["server_key"].read_bytes())
    (tmp / "spaced.token").write_text("eyJ abc\n")
    return {
        "non-PEM certificate": ["-c", str(tmp / "garbage.crt")],
        "private key in the certificate file": ["-c", str(tmp / "key-in-chain.crt")],
        "public key as certificate": ["-c", str(trust["pub"])],
        "private key as verification key": ["-v", str(trust["signing_key"])],
        "certificate as verification key": ["-v", str(trust["crt"])],
        "missing file": ["-c", str(tmp / "nope.crt")],
        "FIFO token": ["-t", "@/dev/stdin"],
        "ftp URL": ["-u", "ftp://mender.example.com"],
        "URL with credentials": ["-u", "https://user:pw@mender.example.com"],
        "URL without host": ["-u", "https://"],
        "token with a space": ["-t", "abc def"],
        "token file with a space": ["-t", f"@{tmp / 'spaced.token'}"],
        "name with a newline": ["-n", "release\n7"],
        "name with '='": ["-n", "a=b"],
        "empty name": ["-n", ""],
        "set: not JSON": ["--set", "UpdatePollIntervalSeconds=18oo"],
        "set: bare string": ["--set", "DaemonLogLevel=debug"],
        "set: duplicate keys": ["--set", 'Security={"SSLEngine": "a", "SSLEngine": "b"}'],
        "set: inexact number": ["--set", "RetryPollCount=12345678901234567891"],
        "set: too big for a Go int": ["--set", "RetryPollCount=4294967296"],
        "set: wrong type": ["--set", 'SkipVerify="yes"'],
        "set: bad name": ["--set", "Security..SSLEngine=1"],
        "set: wrong case": ["--set", "serverurl=1"],
        "set: ServerURL": ["--set", 'ServerURL="https://x.example.com"'],
        "set and unset": ["--set", "RetryPollCount=3", "--unset", "RetryPollCount"],
        "unset what -u sets": ["-u", URL, "--unset", "ServerURL"],
        "nothing to do": [],
    }


def test_bad_options_are_refused_with_nothing_changed(make_image, cli, trust, tmp_path):
    img = make_image("sdimg")
    before = sha256(img)
    for case, args in bad_files(trust, tmp_path).items():
        result = cli("modify", img, *args, input="")
        assert result.returncode == 2, (case, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("imagetools: error: "), (case, result.stderr)
        assert TOKEN not in result.stderr and "abc def" not in result.stderr, case
    assert sha256(img) == before


def test_library_plan_takes_python_values():
    plan = ModifyPlan(
        settings=(
            ("UpdatePollIntervalSeconds", 1800),
            ("Security", {"SSLEngine": "x"}),
            ("RetryPollIntervalSeconds", 30),
        ),
        unset=("RootfsPartB",),
    )
    assert dump_conf(plan.edit({"RootfsPartB": "/dev/sda3"}, "test")) == (
        b'{\n    "UpdatePollIntervalSeconds": 1800,\n    "Security": {\n        "SSLEngine": "x"\n    },\n'
        b'    "RetryPollIntervalSeconds": 30\n}\n'
    )
    for bad in (float("nan"), 2**60 + 1, object(), {"a": 1, "A": 2}):
        with pytest.raises(UsageError):
            ModifyPlan(settings=(("Extra", bad),))
    with pytest.raises(UsageError, match="Go int"):
        ModifyPlan(settings=(("RetryPollCount", 2**40),))


def test_library_errors_are_typed():
    with pytest.raises(UsageError):
        ModifyPlan(server_uri="mender.example.com")
    with pytest.raises(KeyMaterialError):
        ModifyPlan(server_cert=b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert TOKEN not in repr(ModifyPlan(tenant_token=TOKEN))


# --- --out ----------------------------------------------------------------------------------------


def test_out_leaves_the_base_untouched_and_stays_sparse(make_image, cli, trust, tmp_path):
    base = make_image("sdimg")
    before = sha256(base)
    out = tmp_path / "prod.sdimg"
    result = cli("modify", base, "--out", out, *modify_args(trust))
    assert result.returncode == 0, result.stderr
    assert sha256(base) == before
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert os.stat(out).st_blocks * 512 <= os.stat(base).st_blocks * 512 + (1 << 20)
    assert_modified(out, trust)
    again = cli("modify", base, "--out", out, "-n", "x")
    assert again.returncode == 3 and "--force" in again.stderr
    assert not list(tmp_path.glob(".prod.partial-*"))


def test_out_is_not_created_when_refused(make_image, cli, tmp_path):
    base = make_image("sdimg")
    files.install(base, CONF, b"{", partition=2)
    result = cli("modify", base, "--out", tmp_path / "x.sdimg", "-u", URL)
    assert result.returncode == 2
    assert not (tmp_path / "x.sdimg").exists() and not list(tmp_path.glob(".x.partial-*"))


# --- verify: the static key check ----------------------------------------------------------------


def test_verify_static_key(make_image, tmp_path):
    img = make_image("sdimg")
    key = keys.generate(keys.KeySpec(type="ecdsa"))
    from imagetools.inject import inject_key

    inject_key(img, keys.private_pem(key))
    report = verify_image(img, fsck=False)
    assert report.ok and report.check(verify.STATIC_KEY).status == "warn"
    assert [c.name for c in report.checks] == list(verify.CHECK_NAMES)

    modify(img, ModifyPlan(static_key=True))
    check = verify_image(img, fsck=False).check(verify.STATIC_KEY)
    assert check.status == "pass", check

    # the fallback file sets it elsewhere, /etc/mender/mender.conf (read last) wins: pass
    files.install(img, "/data/mender/mender.conf", b'{"Security": {"AuthPrivateKey": "/etc/other.pem"}}')
    assert verify_image(img, fsck=False).check(verify.STATIC_KEY).status == "pass"
    # /etc points elsewhere on B only: fail, naming B
    modify(img, ModifyPlan.from_options(set=['Security.AuthPrivateKey="/etc/other.pem"']), rootfs="b")
    check = verify_image(img, fsck=False).check(verify.STATIC_KEY)
    assert check.status == "fail" and "rootfs B" in check.detail and "/etc/other.pem" in check.detail
    # only the fallback sets it (through /var/lib/mender -> /data/mender): the client reads it
    modify(img, ModifyPlan(unset=("Security",)))
    files.install(img, "/data/mender/mender.conf", b'{"Security": {"AuthPrivateKey": "/data/mender/mender-agent.pem"}}')
    assert verify_image(img, fsck=False).check(verify.STATIC_KEY).status == "pass"
    files.install(img, CONF, b"{", partition=2)
    check = verify_image(img, fsck=False).check(verify.STATIC_KEY)
    assert check.status == "fail" and "malformed" in check.detail


# --- config ---------------------------------------------------------------------------------------


def test_config_shows_both_rootfs_and_their_differences(make_image, cli, trust):
    img = make_image("sdimg")
    files.install(img, "/data/mender/device_type", b"device_type=raspberrypi4\n")
    files.install(
        img,
        "/data/mender/mender.conf",
        b'{"UpdatePollIntervalSeconds": 60, "ServerURL": "https://fallback.example.com"}',
    )
    assert cli("modify", img, *modify_args(trust)).returncode == 0
    assert cli("modify", img, "--rootfs", "b", "-n", "release-6").returncode == 0
    human = cli("config", img)
    assert human.returncode == 0, human.stderr
    assert TOKEN not in human.stdout and f"set ({len(TOKEN)} chars)" in human.stdout
    line = next(ln for ln in human.stdout.splitlines() if ln.startswith("artifact_name"))
    assert "release-7" in line and "release-6" in line and "DIFFERS" in line
    assert "raspberrypi4" in human.stdout and "UpdatePollIntervalSeconds" in human.stdout

    doc = json.loads(cli("config", img, "--json").stdout)
    assert TOKEN not in json.dumps(doc) and doc["differences"] == ["artifact_name"]
    a = doc["items"][0]
    assert a["settings"]["ServerURL"] == URL  # /etc/mender/mender.conf over the fallback
    assert a["settings"]["UpdatePollIntervalSeconds"] == 60 and a["tenant_token"] == {"set": True, "length": len(TOKEN)}
    assert doc["device_type"] == "raspberrypi4" and a["errors"] == [] and a["warnings"] == []
    secret = json.loads(cli("config", img, "--json", "--show-secrets").stdout)
    assert secret["items"][1]["settings"]["TenantToken"] == TOKEN


def test_config_reports_what_the_client_would_not_load(make_image):
    img = make_image("sdimg", empty_rootfs_b=True)
    files.install(img, CONF, b'{"ServerURL": 1}', partition=2)
    files.install(img, "/etc/mender/server.crt", b"cert", partition=2)
    report = read_config(img)
    a, b = report.rootfs
    assert b.state == "empty" and report.differences == []
    assert any("ServerURL is integer" in e for e in a.errors)
    assert any("ServerCertificate does not point to it" in w for w in a.warnings)


# --- the real Mender client ------------------------------------------------------------------------


def extract(img: Path, role: str, *paths: str) -> dict[str, bytes]:
    return {Path(p).name: debugfs_cat(img, role, p) for p in paths}


@pytest.fixture
def namespaces():
    why = unshare_works()
    if why:
        pytest.skip(f"cannot run the Mender client in a private mount namespace here: {why}")


def test_mender_client_sends_the_tenant_token(make_image, cli, trust, tmp_path, namespaces):
    """The Debian client, started on the mender.conf and server.crt taken out of the modified
    image, trusts our server through ServerCertificate and sends the tenant token."""
    img = make_image("sdimg")
    with AuthServer(trust["crt"], trust["server_key"]) as server:
        result = cli("modify", img, *modify_args(trust, url=server.url))
        assert result.returncode == 0, result.stderr
        for role in ("rootfs-a", "rootfs-b"):
            etc = extract(img, role, CONF, "/etc/mender/server.crt", "/etc/mender/artifact_info")
            log, _ = run_client(tmp_path / role, etc)
            assert len(server.requests) == 1, log
            request = server.requests.pop()
            assert request["tenant_token"] == TOKEN
            assert json.loads(request["id_data"]) == {"mac": "02:00:00:00:00:42"}
            assert request["pubkey"].startswith("-----BEGIN PUBLIC KEY-----")


def test_mender_client_uses_the_static_key(make_image, cli, trust, tmp_path, namespaces):
    """With --static-key the client signs with the injected key, and without one it refuses to
    make a new one (a unit that would show up pending fails loudly instead)."""
    img = make_image("sdimg")
    key = keys.generate(keys.KeySpec(type="ecdsa"))
    (tmp_path / "unit.key").write_bytes(keys.private_pem(key))
    assert cli("inject", "--key", tmp_path / "unit.key", img).returncode == 0
    with AuthServer() as server:
        assert cli("modify", img, "-u", server.url, "-t", TOKEN, "--static-key").returncode == 0
        etc = extract(img, "rootfs-a", CONF)
        pem = debugfs_cat(img, "data", "/mender/mender-agent.pem")
        log, _ = run_client(tmp_path / "with-key", etc, key=pem)
        assert len(server.requests) == 1, log
        sent = keys.load_public(server.requests[0]["pubkey"].encode(), "sent")
        assert keys.same_key(sent, key)

        log, datastore = run_client(tmp_path / "without-key", etc)
        assert len(server.requests) == 1, log  # no second request
        assert "refusing to regenerate" in log
        assert not (datastore / "mender-agent.pem").exists()
