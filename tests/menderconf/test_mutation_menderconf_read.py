"""menderconf.read, the edges scripts/mutation found untested, on real images (made by
scripts/make-image, files put in with imagetools.files, partitions removed with sfdisk): the
client's two files merged in its order, what each rootfs reports (files, errors, warnings), the
states of a rootfs B, and the differences between A and B."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support.images import build_image

from imagetools import files
from imagetools.errors import FilesystemError, LayoutError
from imagetools.layout import open_layout
from imagetools.menderconf import read as r
from imagetools.session import ImageSession

pytestmark = pytest.mark.integration

CONF = "/etc/mender/mender.conf"
FALLBACK = "/data/mender/mender.conf"
DEVICE_TYPE = "/data/mender/device_type"
INFO = "/etc/mender/artifact_info"
CRT = "/etc/mender/server.crt"
PEM = "/etc/mender/artifact-verify-key.pem"
URL = "https://prod.mender.example.com"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJtZW5kZXIudGVuYW50IjoiNjQ1In0.c2lnbmF0dXJl"
ALL_FILES = ["/var/lib/mender/mender.conf", CONF, INFO, CRT, PEM]


def _copy(image_cache: Path, directory: Path, name: str, **opts) -> Path:
    src = build_image(image_cache, "sdimg", opts)
    dst = directory / f"{name}.sdimg"
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def made(image_cache, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("menderconf-read")


@pytest.fixture(scope="module")
def rich(image_cache, made) -> Path:
    """Fallback and main mender.conf, device_type, Artifact names that differ between A and B."""
    img = _copy(image_cache, made, "rich")
    files.install(img, DEVICE_TYPE, b"# written by the build\n  device_type=pi4 \n")
    fallback = b'{"UpdatePollIntervalSeconds": 60, "ServerURL": "https://fallback.example.com",'
    fallback += b' "Security": {"AuthPrivateKey": "/var/lib/mender/mender-agent.pem"}}'
    files.install(img, FALLBACK, fallback)
    files.install(img, CONF, f'{{"serverurl": "{URL}", "TenantToken": "{TOKEN}", "Only": null}}'.encode())
    files.install(img, INFO, b"artifact_name=r7\n", partition=2)
    files.install(img, INFO, b"artifact_name=r6\n", partition=3)
    return img


def _part(img: Path, role: str):
    return open_layout(img).require(role)


# --- the merge, and what one rootfs reports --------------------------------------------------------


def test_main_file_is_loaded_over_the_fallback_and_the_static_key_link_followed(rich):
    report = r.read(rich)
    assert report.image == str(rich) and report.device_type == "pi4" and report.warnings == []
    a, b = report.rootfs
    assert (a.role, a.partition, a.state, b.role, b.partition, b.state) == ("rootfs-a", 2, "ok", "rootfs-b", 3, "ok")
    assert list(a.settings.items()) == [
        ("UpdatePollIntervalSeconds", a.settings["UpdatePollIntervalSeconds"]),
        ("Security", {"AuthPrivateKey": "/var/lib/mender/mender-agent.pem"}),
        ("serverurl", URL),
        ("TenantToken", TOKEN),
        ("Only", None),
    ]
    assert a.settings["UpdatePollIntervalSeconds"].text == "60"
    assert a.auth_key_target == "/data/mender/mender-agent.pem"
    assert (a.artifact_name, b.artifact_name) == ("r7", "r6")
    assert [f.path for f in a.files] == ALL_FILES
    assert [f.present for f in a.files] == [True, True, True, False, False]
    assert a.file(CONF).where == "/etc/mender/mender.conf on partition 2 (rootfs-a, ext4)"
    assert a.file("/nowhere") is None
    assert a.errors == [] and a.warnings == [] and a.server_cert is None and a.verification_key is None
    assert report.differences == ["artifact_name"]


def test_the_report_shows_the_tenant_token_only_when_asked(rich):
    report = r.read(rich)
    shown = report.to_dict()
    assert set(shown) == {"image", "rootfs", "device_type", "differences", "warnings"}
    assert (shown["image"], shown["device_type"], shown["differences"], shown["warnings"]) == (
        str(rich),
        "pi4",
        ["artifact_name"],
        [],
    )
    a = shown["rootfs"][0]
    assert a["settings"] == {
        "UpdatePollIntervalSeconds": 60,
        "Security": {"AuthPrivateKey": "/var/lib/mender/mender-agent.pem"},
        "serverurl": URL,
        "Only": None,
    }
    assert a["tenant_token"] == {"set": True, "length": len(TOKEN)}
    assert (a["role"], a["partition"], a["state"], a["artifact_name"]) == ("rootfs-a", 2, "ok", "r7")
    assert (a["server_certificate"], a["verification_key"], a["auth_key_target"]) == (
        None,
        None,
        "/data/mender/mender-agent.pem",
    )
    assert [f["path"] for f in a["files"]] == ALL_FILES and a["errors"] == [] and a["warnings"] == []
    assert a["files"][1]["mode"] == "0644" and a["files"][1]["owner"] == "0:0"
    assert TOKEN not in str(shown)
    secret = report.to_dict(show_secrets=True)["rootfs"][1]
    assert secret["settings"]["TenantToken"] == TOKEN and secret["tenant_token"] == {"set": True, "length": len(TOKEN)}
    assert TOKEN in str(report.rootfs[0].to_dict(True))
    assert "TenantToken" in report.rootfs[0].settings  # the report's own settings keep it


def test_a_token_that_is_no_string_or_empty_is_reported_as_such(image_cache, made):
    img = _copy(image_cache, made, "token-types")
    files.install(img, CONF, b'{"tenanttoken": 5}', partition=2)
    files.install(img, CONF, b'{"TenantToken": ""}', partition=3)
    a, b = r.read(img).rootfs
    assert a.to_dict()["tenant_token"] == {"set": True, "length": None} and "tenanttoken" not in a.to_dict()["settings"]
    assert a.errors == ["TenantToken is integer, but the Mender client reads it as string"]
    assert b.to_dict()["tenant_token"] == {"set": False, "length": 0} and b.to_dict()["settings"] == {}


def test_read_rootfs_with_settings_only_reads_just_the_two_mender_conf(rich):
    layout = open_layout(rich)
    part = layout.require("rootfs-b")
    quick = r.read_rootfs(rich, layout, part, settings_only=True)
    assert [f.path for f in quick.files] == ALL_FILES[:2] and quick.artifact_name is None
    assert quick.auth_key_target == "/data/mender/mender-agent.pem" and quick.settings["TenantToken"] == TOKEN
    full = r.read_rootfs(rich, layout, part)
    assert [f.path for f in full.files] == ALL_FILES and full.artifact_name == "r6"


def test_overrides_are_used_to_find_the_partitions(rich):
    report = r.read(rich, overrides={"data": 3})  # rootfs B's partition taken as data: no B
    assert [c.role for c in report.rootfs] == ["rootfs-a"] and report.device_type is None
    assert report.rootfs[0].settings == {"serverurl": URL, "TenantToken": TOKEN, "Only": None}


def test_the_fallback_file_alone_is_read_through_the_datastore_link(rich, image_cache, made):
    with ImageSession(rich) as session:
        fallback = r.fallback(session.device(_part(rich, "rootfs-a")))
    assert list(fallback) == ["UpdatePollIntervalSeconds", "ServerURL", "Security"]
    plain = _copy(image_cache, made, "plain")
    with ImageSession(plain) as session:
        assert r.fallback(session.device(_part(plain, "rootfs-a"))) == {}
    files.install(plain, FALLBACK, b"[1]")
    with ImageSession(plain) as session, pytest.raises(FilesystemError) as exc:
        r.fallback(session.device(_part(plain, "rootfs-a")))
    assert str(exc.value) == (
        "/data/mender/mender.conf on the data partition (as /var/lib/mender/mender.conf) is malformed: "
        "list, not a JSON object"
    )
    files.remove(plain, FALLBACK)
    files.make_dir(plain, FALLBACK)
    with ImageSession(plain) as session, pytest.raises(FilesystemError) as exc:
        r.fallback(session.device(_part(plain, "rootfs-a")))
    assert str(exc.value) == (
        "/data/mender/mender.conf on the data partition (as /var/lib/mender/mender.conf) is a dir, not a regular file"
    )


# --- what the client would not load, and what would surprise on the device -----------------------


def test_a_file_the_client_refuses_is_an_error_of_that_rootfs(image_cache, made):
    img = _copy(image_cache, made, "errors")
    files.make_dir(img, FALLBACK)
    files.install(img, CONF, b'{"ServerURL": 1, "Servers": []}', partition=2)
    files.install(img, CONF, b'{"a": ', partition=3)
    a, b = r.read(img).rootfs
    where = "/data/mender/mender.conf on the data partition (as /var/lib/mender/mender.conf)"
    assert a.errors == [
        f"{where} is a dir, not a regular file",
        "ServerURL is integer, but the Mender client reads it as string",
        "both Servers and ServerURL are set, and the client refuses to start with both "
        "(--unset Servers, or --unset ServerURL)",
    ]
    assert b.errors == [
        f"{where} is a dir, not a regular file",
        "/etc/mender/mender.conf on partition 3 (rootfs-b, ext4) is malformed: not JSON (Expecting value at "
        "line 1 column 7); the client would not start with it",
    ]
    assert b.settings == {} and a.settings == {"ServerURL": a.settings["ServerURL"], "Servers": []}
    assert a.warnings == [] and b.warnings == []


def test_a_bad_artifact_info_or_device_type_is_a_warning(image_cache, made):
    img = _copy(image_cache, made, "fields")
    files.install(img, INFO, b"artifact_name=a\nartifact_name=b\n", partition=2)
    files.install(img, INFO, b"junk\n", partition=3)
    files.install(img, DEVICE_TYPE, b"device_type=a\ndevice_type=a\n")
    report = r.read(img)
    a, b = report.rootfs
    assert a.artifact_name is None and a.warnings == [
        "/etc/mender/artifact_info on partition 2 (rootfs-a, ext4): artifact_name is given twice: "
        "the client refuses the file"
    ]
    assert b.warnings == [
        "/etc/mender/artifact_info on partition 3 (rootfs-b, ext4): line 1 is not NAME=VALUE: "
        "the client refuses the file"
    ]
    assert a.errors == [] and report.device_type is None
    assert report.warnings == [
        "/var/lib/mender/device_type (/data/mender/device_type on the data partition): device_type is given twice: "
        "the client refuses the file"
    ]


def test_device_type_is_read_up_to_1_mib_and_must_be_a_regular_file(image_cache, made):
    img = _copy(image_cache, made, "device-type")
    line = b"device_type=pi4\n"
    files.install(img, DEVICE_TYPE, line + b"#" * ((1 << 20) - len(line) - 1) + b"\n")
    assert r.read(img).device_type == "pi4"
    files.install(img, DEVICE_TYPE, line + b"#" * ((1 << 20) - len(line)) + b"\n")
    report = r.read(img)
    refused = "/var/lib/mender/device_type (/data/mender/device_type on the data partition) is not a small regular file"
    assert report.device_type is None and report.warnings == [refused]
    files.remove(img, DEVICE_TYPE)
    assert r.read(img).device_type is None and r.read(img).warnings == []
    files.make_dir(img, DEVICE_TYPE)
    report = r.read(img)
    assert report.device_type is None and report.warnings == [refused]


def test_certificate_and_key_files_are_checked_where_the_client_looks(image_cache, made):
    img = _copy(image_cache, made, "trust")
    conf = b'{"ServerCertificate": "/etc/mender/custom.crt", "ArtifactVerifyKey": "keys/v.pem"}'
    files.install(img, CONF, conf, partition=2)
    files.install(img, CRT, b"default", partition=2)
    files.install(img, CONF, f'{{"ServerCertificate": "{CRT}", "ArtifactVerifyKey": ""}}'.encode(), partition=3)
    files.install(img, CRT, b"x" * ((1 << 20) + 1), partition=3)
    files.install(img, PEM, b"key", partition=3)
    a, b = r.read(img).rootfs
    assert a.server_cert == "/etc/mender/custom.crt" and a.verification_key == "keys/v.pem"
    assert a.warnings == [
        "/etc/mender/server.crt is present but ServerCertificate does not point to it: the client does not use it",
        "ServerCertificate is /etc/mender/custom.crt, which is not in the image",
        "ArtifactVerifyKey is 'keys/v.pem', not an absolute path",
    ]
    assert [f.path for f in a.files] == [*ALL_FILES[:4], "/etc/mender/custom.crt", PEM]
    assert b.server_cert == CRT and b.verification_key is None
    assert [f.path for f in b.files] == ALL_FILES
    assert b.file(CRT).problem == (
        "/etc/mender/server.crt on partition 3 (rootfs-b, ext4) is 1048577 bytes, more than the 1048576 read"
    )
    assert b.warnings == [
        "/etc/mender/artifact-verify-key.pem is present but ArtifactVerifyKey does not point to it: "
        "the client does not use it"
    ]
    assert b.errors == []


def test_a_static_key_that_is_no_absolute_path_leads_nowhere(image_cache, made):
    img = _copy(image_cache, made, "static-key")
    files.install(img, CONF, b'{"Security": {"AuthPrivateKey": "agent.pem"}}', partition=2)
    files.install(img, CONF, b'{"Security": {"AuthPrivateKey": "/etc/mender/agent.pem"}}', partition=3)
    a, b = r.read(img).rootfs
    assert a.auth_key_target is None and b.auth_key_target == "/etc/mender/agent.pem"


# --- rootfs B's states, and the differences --------------------------------------------------------


def test_an_empty_or_unformatted_or_missing_rootfs_b_has_no_differences(image_cache, made):
    empty = _copy(image_cache, made, "empty-b", empty_rootfs_b=True)
    files.install(empty, INFO, b"artifact_name=r7\n", partition=2)
    report = r.read(empty)
    assert [(c.role, c.state) for c in report.rootfs] == [("rootfs-a", "ok"), ("rootfs-b", "empty")]
    assert report.rootfs[1].files == [] and report.rootfs[1].settings == {} and report.differences == []

    zeroed = _copy(image_cache, made, "zeroed-b")
    start = _part(zeroed, "rootfs-b").partition.start
    with open(zeroed, "r+b") as f:
        f.seek(start)
        f.write(bytes(64 << 10))
    files.install(zeroed, INFO, b"artifact_name=r7\n", partition=2)
    report = r.read(zeroed)
    assert [(c.role, c.state) for c in report.rootfs] == [("rootfs-a", "ok"), ("rootfs-b", "no filesystem")]
    assert report.rootfs[1].files == [] and report.differences == []

    missing = _copy(image_cache, made, "missing-b")
    subprocess.run(["sfdisk", "--delete", str(missing), "3"], check=True, capture_output=True)
    files.install(missing, INFO, b"artifact_name=r7\n")
    report = r.read(missing)
    assert [c.role for c in report.rootfs] == ["rootfs-a"] and report.differences == []
    assert report.rootfs[0].artifact_name == "r7"


def test_differences_name_each_setting_name_and_file_that_differs(image_cache, made):
    img = _copy(image_cache, made, "differ")
    files.install(img, CONF, b'{"A": {"B": 1, "C": 2}, "Same": 1, "Null": null, "L": [1]}', partition=2)
    files.install(img, CONF, b'{"A": {"B": 1, "C": 3}, "Same": 1, "L": [1], "New": 0, "NullB": null}', partition=3)
    files.install(img, CRT, b"cert A", partition=2)
    files.install(img, CRT, b"cert B", partition=3)
    files.install(img, PEM, b"same key")
    files.install(img, INFO, b"artifact_name=r7\n", partition=2)
    files.install(img, INFO, b"# other\nartifact_name=r7\n", partition=3)
    assert r.read(img).differences == ["A.C", "Null", "New", "NullB", CRT]
    files.install(img, CRT, b"cert A", partition=3)
    assert r.read(img).differences == ["A.C", "Null", "New", "NullB"]
    files.install(img, CONF, b'{"ServerURL": "x"}')  # the same everywhere; mender.conf differs no more
    assert r.read(img).differences == []


def test_the_layouts_warnings_are_reported_and_without_a_data_partition_there_is_no_device_type(image_cache, made):
    img = _copy(image_cache, made, "no-data")
    subprocess.run(["sfdisk", "--delete", str(img), "4"], check=True, capture_output=True)
    report = r.read(img)
    assert report.warnings == [
        "no data partition found (choose one with --data-partition N); partitions seen: 1 vfat 'BOOT' as boot, "
        "2 ext4 'primary' as rootfs-a, 3 ext4 'secondary' as rootfs-b"
    ]
    assert report.device_type is None and [c.state for c in report.rootfs] == ["ok", "ok"]
    assert report.rootfs[0].settings == {"ServerURL": "https://mender.example.com"}


def test_a_fallback_file_of_rootfs_b_is_compared_by_its_settings_not_its_bytes(image_cache, made):
    img = _copy(image_cache, made, "own-datastore")
    files.install(img, FALLBACK, b'{"RetryPollCount": 3}')
    offset = _part(img, "rootfs-b").partition.start
    for command in ("rm /var/lib/mender", "mkdir /var/lib/mender"):
        subprocess.run(["debugfs", "-w", "-R", command, f"{img}?offset={offset}"], check=True, capture_output=True)
    files.install(img, "/var/lib/mender/mender.conf", b'{ "RetryPollCount": 3 }\n', partition=3)
    a, b = r.read(img).rootfs
    assert a.file(ALL_FILES[0]).sha256 != b.file(ALL_FILES[0]).sha256
    assert a.settings == b.settings and r.differences(a, b) == []


def test_read_rootfs_uses_the_layout_it_is_given(rich):
    layout = open_layout(rich, {"data": 3})  # no data partition of the client's: no fallback file
    config = r.read_rootfs(rich, layout, layout.require("rootfs-a"), settings_only=True)
    assert config.settings == {"serverurl": URL, "TenantToken": TOKEN, "Only": None}
    assert config.auth_key_target is None


def test_an_image_without_rootfs_a_is_refused(image_cache, made):
    img = _copy(image_cache, made, "no-a")
    for number in ("2", "3"):
        subprocess.run(["sfdisk", "--delete", str(img), number], check=True, capture_output=True)
    with pytest.raises(LayoutError, match="no rootfs-a partition found"):
        r.read(img)
