"""menderconf.modify, the edges scripts/mutation found untested, on real images (scripts/make-image;
what was written is read back with the real debugfs): which rootfs is changed or skipped, what is
refused before anything is written, each file's mode and owner, a re-run that writes nothing, the
warnings said once, --out, and preview."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from support.debugfs import debugfs_stat
from support.tools import run_tool

from imagetools import files, keys
from imagetools.errors import FilesystemError, LayoutError, UsageError
from imagetools.layout import open_layout
from imagetools.menderconf.modify import modify, preview
from imagetools.menderconf.plan import ModifyPlan

pytestmark = pytest.mark.integration

CONF = "/etc/mender/mender.conf"
FALLBACK = "/data/mender/mender.conf"
INFO = "/etc/mender/artifact_info"
CRT = "/etc/mender/server.crt"
PEM = "/etc/mender/artifact-verify-key.pem"
URL = "https://prod.mender.example.com"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJtZW5kZXIudGVuYW50IjoiNjQ1In0.c2lnbmF0dXJl"
NO_KEY = (
    "no device key at /data/mender/mender-agent.pem yet: with --static-key a unit without one does not "
    "authenticate (inject one per unit: imagetools inject or emit)"
)


def _readable(mode: str, readers: str) -> str:
    return (
        f"/etc/mender/mender.conf holds the tenant token and is mode {mode}, readable by {readers} on the device: "
        "give --mode 0600 to keep it to its owner"
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _offset(img: Path, role: str) -> int:
    return open_layout(img).require(role).partition.start


def _cat(img: Path, role: str, path: str) -> bytes:
    return run_tool("debugfs", "-R", f"cat {path}", f"{img}?offset={_offset(img, role)}").stdout.encode()


def _stat(img: Path, role: str, path: str) -> tuple[int, int, int]:
    found = debugfs_stat(img, _offset(img, role), path)
    return found["mode"] & 0o7777, found["uid"], found["gid"]


def _zero_rootfs_b(img: Path) -> None:
    with open(img, "r+b") as f:
        f.seek(_offset(img, "rootfs-b"))
        f.write(bytes(64 << 10))


@pytest.fixture(scope="module")
def pems(tmp_path_factory) -> dict[str, bytes]:
    from support.tls import self_signed

    crt, _ = self_signed(tmp_path_factory.mktemp("modify-trust"))
    signing = keys.generate(keys.KeySpec(type="ecdsa"))
    return {"crt": crt.read_bytes(), "pub": keys.public_pem(signing)}


# --- what is changed, with which mode and owner ----------------------------------------------------


def test_every_file_lands_on_both_rootfs_new_ones_root_owned_and_a_rerun_writes_nothing(make_image, pems):
    img = make_image("sdimg")
    files.install(img, CONF, b'{"ServerURL": "https://old", "N": 1.50}', mode=0o640, uid=7, gid=9)
    files.install(img, INFO, b"artifact_name=old\n", mode=0o604, uid=3, gid=4, partition=3)
    plan = ModifyPlan(
        server_uri=URL, server_cert=pems["crt"], verification_key=pems["pub"], artifact_name="r7", static_key=True
    )
    result = modify(img, plan)
    everything = [CONF, INFO, CRT, PEM]
    assert [(c.role, c.partition, c.written, c.unchanged) for c in result.rootfs] == [
        ("rootfs-a", 2, everything, []),
        ("rootfs-b", 3, everything, []),
    ]
    assert result.image == str(img) and result.warnings == [NO_KEY]
    assert result.to_dict()["rootfs"][1] == {"role": "rootfs-b", "partition": 3, "written": everything, "unchanged": []}
    for role in ("rootfs-a", "rootfs-b"):
        conf = json.loads(_cat(img, role, CONF))
        assert conf == {
            "ServerURL": URL,
            "N": 1.5,
            "ServerCertificate": CRT,
            "ArtifactVerifyKey": PEM,
            "Security": {"AuthPrivateKey": "/var/lib/mender/mender-agent.pem"},
        }
        assert b'"N": 1.50' in _cat(img, role, CONF)
        assert _cat(img, role, INFO) == b"artifact_name=r7\n"
        assert _cat(img, role, CRT) == pems["crt"] and _cat(img, role, PEM) == pems["pub"]
        assert _stat(img, role, CONF) == (0o640, 7, 9)
        assert _stat(img, role, CRT) == (0o644, 0, 0) and _stat(img, role, PEM) == (0o644, 0, 0)
    assert _stat(img, "rootfs-a", INFO) == (0o644, 0, 0)
    assert _stat(img, "rootfs-b", INFO) == (0o604, 3, 4)
    before = _sha(img)
    again = modify(img, plan)
    assert [(c.written, c.unchanged) for c in again.rootfs] == [([], everything), ([], everything)]
    assert _sha(img) == before


def test_a_replaced_certificate_and_key_keep_their_mode_and_owner(make_image, pems):
    img = make_image("sdimg")
    files.install(img, CRT, b"old", mode=0o600, uid=5, gid=6, partition=2)
    files.install(img, PEM, b"old", mode=0o640, uid=7, gid=8, partition=3)
    modify(img, ModifyPlan(server_cert=pems["crt"], verification_key=pems["pub"]))
    assert _stat(img, "rootfs-a", CRT) == (0o600, 5, 6) and _stat(img, "rootfs-b", CRT) == (0o644, 0, 0)
    assert _stat(img, "rootfs-a", PEM) == (0o644, 0, 0) and _stat(img, "rootfs-b", PEM) == (0o640, 7, 8)
    assert _cat(img, "rootfs-a", CRT) == pems["crt"] and _cat(img, "rootfs-b", PEM) == pems["pub"]


def test_a_certificate_path_that_is_a_directory_is_refused_naming_the_rootfs(make_image, pems):
    img = make_image("sdimg")
    files.make_dir(img, CRT, partition=3)
    before = _sha(img)
    with pytest.raises(FilesystemError) as exc:
        modify(img, ModifyPlan(server_cert=pems["crt"]))
    assert str(exc.value) == (
        "/etc/mender/server.crt on partition 3 (rootfs-b, ext4) is a dir, not a regular file; modify "
        "replaces files as a whole and does not write through links"
    )
    assert _sha(img) == before


def test_a_new_mender_conf_is_0600_and_mode_replaces_the_files_own(make_image):
    img = make_image("sdimg")
    files.remove(img, CONF)
    modify(img, ModifyPlan(server_uri=URL))
    assert _stat(img, "rootfs-a", CONF) == (0o600, 0, 0) and _stat(img, "rootfs-b", CONF) == (0o600, 0, 0)
    result = modify(img, ModifyPlan(conf_mode=0o640))
    assert [c.written for c in result.rootfs] == [[CONF], [CONF]]
    assert _stat(img, "rootfs-a", CONF) == (0o640, 0, 0)
    assert json.loads(_cat(img, "rootfs-b", CONF)) == {"ServerURL": URL}


def test_missing_directories_are_created_and_the_plans_warnings_returned(make_image):
    img = make_image("sdimg")
    offset = _offset(img, "rootfs-b")
    for command in ("rm /etc/mender/mender.conf", "rmdir /etc/mender"):
        run_tool("debugfs", "-w", "-R", command, f"{img}?offset={offset}")
    result = modify(img, ModifyPlan(server_uri=URL, settings=(("Custom", 1),)))
    assert result.warnings == [
        "--set Custom: not a setting the Mender client reads (it would be ignored): check the spelling"
    ]
    assert json.loads(_cat(img, "rootfs-b", CONF)) == {"ServerURL": URL, "Custom": 1}
    assert _stat(img, "rootfs-b", CONF) == (0o600, 0, 0)


def test_overrides_choose_the_partitions(make_image):
    img = make_image("sdimg")
    result = modify(img, ModifyPlan(artifact_name="r7"), overrides={"data": 3})  # B taken as data: no B
    assert [c.role for c in result.rootfs] == ["rootfs-a"]
    assert result.warnings == ["no rootfs B partition found: only rootfs A was modified"]


def test_a_change_in_mode_or_owner_alone_is_written(make_image):
    img = make_image("sdimg")
    modify(img, ModifyPlan(server_uri=URL))
    files.install(img, CONF, _cat(img, "rootfs-a", CONF), mode=0o644, uid=5, gid=0, partition=2)
    files.install(img, CONF, _cat(img, "rootfs-a", CONF), mode=0o644, uid=0, gid=5, partition=3)
    result = modify(img, ModifyPlan(server_uri=URL, conf_mode=0o644))
    assert [(c.written, c.unchanged) for c in result.rootfs] == [([], [CONF]), ([], [CONF])]
    result = modify(img, ModifyPlan(server_uri=URL, conf_mode=0o600))
    assert [(c.written, c.unchanged) for c in result.rootfs] == [([CONF], []), ([CONF], [])]
    assert _stat(img, "rootfs-a", CONF) == (0o600, 5, 0) and _stat(img, "rootfs-b", CONF) == (0o600, 0, 5)


def test_a_tenant_token_in_a_file_others_may_read_is_warned_once_never_shown(make_image):
    img = make_image("sdimg")
    cases = [(0o644, "its group and everyone"), (0o640, "its group"), (0o604, "everyone")]
    for mode, readers in cases:
        result = modify(img, ModifyPlan(tenant_token=TOKEN, conf_mode=mode))
        assert result.warnings == [_readable(f"{mode:04o}", readers)]
        assert TOKEN not in " ".join(result.warnings)
    assert modify(img, ModifyPlan(tenant_token=TOKEN, conf_mode=0o600)).warnings == []
    assert modify(img, ModifyPlan(tenant_token=TOKEN, conf_mode=0o611)).warnings == []  # executable is not readable
    assert modify(img, ModifyPlan(tenant_token=TOKEN, conf_mode=0o655)).warnings == [
        _readable("0655", "its group and everyone")
    ]
    assert modify(img, ModifyPlan(conf_mode=0o644, unset=("TenantToken",))).warnings == []
    files.install(img, CONF, b'{"tenanttoken": "x"}', mode=0o640)
    assert modify(img, ModifyPlan(server_uri=URL)).warnings == [_readable("0640", "its group")]


def test_static_key_warns_once_without_a_key_and_not_with_one(make_image):
    img = make_image("sdimg")
    assert modify(img, ModifyPlan(static_key=True)).warnings == [NO_KEY]
    assert preview(img, ModifyPlan(static_key=True)) == [NO_KEY]
    assert preview(img, ModifyPlan(static_key=True), key_injected=True) == []
    files.install(img, "/data/mender/mender-agent.pem", keys.private_pem(keys.generate(keys.KeySpec(type="ecdsa"))))
    assert modify(img, ModifyPlan(static_key=True)).warnings == []


# --- what is refused, before anything is written ---------------------------------------------------


def test_a_change_the_client_would_refuse_after_the_merge_changes_nothing(make_image):
    img = make_image("sdimg")
    files.install(img, FALLBACK, b'{"Servers": [{"ServerURL": "https://a"}]}')
    files.install(img, CONF, b"{}", partition=2)
    before = _sha(img)
    with pytest.raises(FilesystemError) as exc:
        modify(img, ModifyPlan(server_uri=URL))
    assert str(exc.value) == (
        "/etc/mender/mender.conf on partition 2 (rootfs-a, ext4): after this change both Servers and ServerURL are "
        "set, and the client refuses to start with both (--unset Servers, or --unset ServerURL); nothing was changed"
    )
    assert _sha(img) == before
    files.install(img, FALLBACK, b"[]")
    with pytest.raises(FilesystemError, match=r"^/data/mender/mender.conf on the data partition .* is malformed"):
        preview(img, ModifyPlan(server_uri=URL))
    assert modify(img, ModifyPlan(artifact_name="r7")).rootfs[0].written == [INFO]  # mender.conf not read


def test_a_fallback_file_on_a_rootfs_is_named_by_that_rootfs(make_image):
    img = make_image("sdimg")
    offset = _offset(img, "rootfs-b")
    for command in ("rm /var/lib/mender", "mkdir /var/lib/mender"):
        run_tool("debugfs", "-w", "-R", command, f"{img}?offset={offset}")
    files.install(img, "/var/lib/mender/mender.conf", b"7", partition=3)
    before = _sha(img)
    message = "/var/lib/mender/mender.conf on partition 3 (rootfs-b, ext4) is malformed: integer, not a JSON object"
    for call in (modify, preview):
        with pytest.raises(FilesystemError) as exc:
            call(img, ModifyPlan(server_uri=URL))
        assert str(exc.value) == message
    assert _sha(img) == before


def test_a_setting_inside_a_value_that_is_no_object_is_refused_naming_the_file(make_image):
    img = make_image("sdimg")
    files.install(img, CONF, b'{"Security": "x"}', partition=3)
    before = _sha(img)
    with pytest.raises(FilesystemError) as exc:
        modify(img, ModifyPlan(static_key=True))
    assert str(exc.value) == (
        "/etc/mender/mender.conf on partition 3 (rootfs-b, ext4): Security is string, not an object, so "
        "Security.AuthPrivateKey cannot be set: replace it with --set or --unset it"
    )
    assert _sha(img) == before


def test_a_bad_rootfs_b_is_refused_before_rootfs_a_is_written(make_image):
    img = make_image("sdimg")
    files.install(img, CONF, b'{"A": ', partition=3)
    before = _sha(img)
    with pytest.raises(FilesystemError) as exc:
        modify(img, ModifyPlan(server_uri=URL))
    assert str(exc.value) == (
        "/etc/mender/mender.conf on partition 3 (rootfs-b, ext4) is malformed: not JSON (Expecting value at line 1 "
        "column 7); the client would not start with it"
    )
    assert _sha(img) == before
    assert [c.role for c in modify(img, ModifyPlan(server_uri=URL), rootfs="a").rootfs] == ["rootfs-a"]


def test_links_directories_and_oversized_files_are_not_replaced(make_image):
    img = make_image("sdimg")
    offset = _offset(img, "rootfs-a")
    files.remove(img, CONF, partition=2)
    run_tool("debugfs", "-w", "-R", f"symlink {CONF} /data/mender/mender.conf", f"{img}?offset={offset}")
    with pytest.raises(FilesystemError) as exc:
        modify(img, ModifyPlan(server_uri=URL))
    assert str(exc.value) == (
        "/etc/mender/mender.conf on partition 2 (rootfs-a, ext4) is a symbolic link to /data/mender/mender.conf, "
        "not a regular file; modify replaces files as a whole and does not write through links"
    )
    files.make_dir(img, INFO, partition=3)
    with pytest.raises(FilesystemError) as exc:
        modify(img, ModifyPlan(artifact_name="r7"))
    assert str(exc.value) == (
        "/etc/mender/artifact_info on partition 3 (rootfs-b, ext4) is a dir, not a regular file; modify "
        "replaces files as a whole and does not write through links"
    )


def test_a_file_on_the_way_through_a_link_is_refused_naming_it(make_image):
    img = make_image("sdimg")
    offset = _offset(img, "rootfs-b")
    run_tool("debugfs", "-w", "-R", "rm /etc/mender/mender.conf", f"{img}?offset={offset}")
    run_tool("debugfs", "-w", "-R", "rmdir /etc/mender", f"{img}?offset={offset}")
    run_tool("debugfs", "-w", "-R", "symlink /etc/mender /data/mender", f"{img}?offset={offset}")
    before = _sha(img)
    with pytest.raises(FilesystemError) as exc:
        modify(img, ModifyPlan(server_uri=URL))
    message = str(exc.value)
    assert message.startswith("/etc/mender/mender.conf on partition 3 (rootfs-b, ext4): ")
    assert message.endswith("; modify does not write through links: replace the link with the file itself")
    assert _sha(img) == before


def test_a_mender_conf_larger_than_1_mib_is_refused(make_image):
    img = make_image("sdimg")
    files.install(img, CONF, b"{}" + b" " * ((1 << 20) - 2), partition=2)
    assert [c.written for c in modify(img, ModifyPlan(server_uri=URL)).rootfs] == [[CONF], [CONF]]
    files.install(img, CONF, b"{}" + b" " * ((1 << 20) - 1), partition=2)
    before = _sha(img)
    with pytest.raises(FilesystemError) as exc:
        modify(img, ModifyPlan(server_uri=URL))
    assert str(exc.value) == (
        "/etc/mender/mender.conf on partition 2 (rootfs-a, ext4) is 1048577 bytes: not a mender.conf "
        "(at most 1048576 are read)"
    )
    assert _sha(img) == before
    assert modify(img, ModifyPlan(artifact_name="r7")).rootfs[0].written == [INFO]  # only mender.conf is bounded


def test_a_read_only_image_is_refused(make_image):
    img = make_image("sdimg")
    img.chmod(0o444)
    with pytest.raises(Exception, match="is read-only"):
        modify(img, ModifyPlan(server_uri=URL))


# --- which rootfs ----------------------------------------------------------------------------------


def test_rootfs_picks_one_and_anything_else_is_refused(make_image):
    img = make_image("sdimg")
    with pytest.raises(UsageError) as exc:
        modify(img, ModifyPlan(server_uri=URL), rootfs="c")
    assert str(exc.value) == "rootfs must be 'a' or 'b', not 'c'"
    result = modify(img, ModifyPlan(artifact_name="b7"), rootfs="b")
    assert [c.role for c in result.rootfs] == ["rootfs-b"] and result.warnings == []
    assert _cat(img, "rootfs-b", INFO) == b"artifact_name=b7\n"
    assert b"b7" not in _cat(img, "rootfs-a", INFO)


def test_an_empty_or_unformatted_or_missing_rootfs_b_is_skipped_unless_asked_for(make_image):
    empty = make_image("sdimg", empty_rootfs_b=True)
    result = modify(empty, ModifyPlan(artifact_name="r7"))
    assert [c.role for c in result.rootfs] == ["rootfs-a"]
    assert result.warnings == [
        "skipped rootfs B (partition 3 (rootfs-b, ext4)): it is empty (the first update fills it)"
    ]
    assert preview(empty, ModifyPlan(artifact_name="r7")) == result.warnings
    with pytest.raises(FilesystemError) as exc:
        modify(empty, ModifyPlan(artifact_name="r7"), rootfs="b")
    assert str(exc.value) == (
        "rootfs B (partition 3 (rootfs-b, ext4)) is empty: there is no Mender configuration to modify"
    )

    zeroed = make_image("sdimg")
    _zero_rootfs_b(zeroed)
    assert modify(zeroed, ModifyPlan(artifact_name="r7")).warnings == [
        "skipped rootfs B (partition 3 (rootfs-b, empty)): it has no filesystem (the first update fills it)"
    ]
    with pytest.raises(FilesystemError) as exc:
        modify(zeroed, ModifyPlan(artifact_name="r7"), rootfs="b")
    assert str(exc.value) == (
        "rootfs B (partition 3 (rootfs-b, empty)) has no filesystem: there is no Mender configuration to modify"
    )

    missing = make_image("sdimg")
    subprocess.run(["sfdisk", "--delete", str(missing), "3"], check=True, capture_output=True)
    result = modify(missing, ModifyPlan(artifact_name="r7", static_key=True))
    assert [c.role for c in result.rootfs] == ["rootfs-a"]
    assert result.warnings == ["no rootfs B partition found: only rootfs A was modified", NO_KEY]
    with pytest.raises(LayoutError, match="no rootfs-b partition found"):
        modify(missing, ModifyPlan(artifact_name="r7"), rootfs="b")


def test_an_empty_rootfs_a_is_refused(make_image):
    img = make_image("sdimg")
    offset = _offset(img, "rootfs-a")
    for path in ("/etc/mender/mender.conf", "/etc/os-release", "/etc/hostname"):
        run_tool("debugfs", "-w", "-R", f"rm {path}", f"{img}?offset={offset}")
    for path in ("/etc/mender", "/etc", "/data", "/boot/efi", "/boot", "/uboot", "/usr/bin", "/usr"):
        run_tool("debugfs", "-w", "-R", f"rmdir {path}", f"{img}?offset={offset}")
    run_tool("debugfs", "-w", "-R", "rm /var/lib/mender", f"{img}?offset={offset}")
    for path in ("/var/lib", "/var"):
        run_tool("debugfs", "-w", "-R", f"rmdir {path}", f"{img}?offset={offset}")
    with pytest.raises(FilesystemError) as exc:
        modify(img, ModifyPlan(artifact_name="r7"))
    assert str(exc.value) == (
        "rootfs A (partition 2 (rootfs-a, ext4)) is empty: there is no Mender configuration to modify"
    )


# --- --out and preview -----------------------------------------------------------------------------


def test_out_is_a_private_copy_published_only_when_complete(make_image, tmp_path):
    img = make_image("sdimg")
    img.chmod(0o644)  # the copy is 0600 whatever the input's mode
    before = _sha(img)
    out = tmp_path / "unit.sdimg"
    result = modify(img, ModifyPlan(artifact_name="r7"), out=out)
    assert result.image == str(out) and [c.written for c in result.rootfs] == [[INFO], [INFO]]
    assert _sha(img) == before and _cat(out, "rootfs-a", INFO) == b"artifact_name=r7\n"
    assert os.stat(out).st_mode & 0o777 == 0o600
    with pytest.raises(Exception, match="exists"):
        modify(img, ModifyPlan(artifact_name="r8"), out=out)
    assert _cat(out, "rootfs-a", INFO) == b"artifact_name=r7\n"
    modify(img, ModifyPlan(artifact_name="r8"), out=out, force=True)
    assert _cat(out, "rootfs-b", INFO) == b"artifact_name=r8\n"
    only_b = tmp_path / "b.sdimg"
    assert [c.role for c in modify(img, ModifyPlan(artifact_name="r9"), out=only_b, rootfs="b").rootfs] == ["rootfs-b"]
    assert b"r9" not in _cat(only_b, "rootfs-a", INFO)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    overridden = modify(img, ModifyPlan(artifact_name="r9"), out=tmp_path / "o.sdimg", overrides={"data": 3})
    assert [c.role for c in overridden.rootfs] == ["rootfs-a"]


def test_out_must_not_be_the_input_and_must_be_in_a_directory(make_image, tmp_path):
    img = make_image("sdimg")
    with pytest.raises(UsageError) as exc:
        modify(img, ModifyPlan(artifact_name="r7"), out=img)
    assert str(exc.value) == f"--out {img} is the input image; omit --out to edit in place"
    link = tmp_path / "same.sdimg"
    link.symlink_to(img)
    with pytest.raises(UsageError, match="is the input image"):
        modify(img, ModifyPlan(artifact_name="r7"), out=link, force=True)
    nowhere = tmp_path / "no" / "unit.sdimg"
    with pytest.raises(UsageError) as exc:
        modify(img, ModifyPlan(artifact_name="r7"), out=nowhere)
    assert str(exc.value) == f"--out {nowhere}: directory {nowhere.parent} does not exist"


def test_preview_writes_nothing_and_gives_the_plans_warnings(make_image):
    img = make_image("sdimg")
    files.install(img, "/data/mender/device_type", b"device_type=x\n")
    before = _sha(img)
    plan = ModifyPlan(tenant_token=TOKEN, settings=(("Custom", 1),), static_key=True, conf_mode=0o640)
    assert preview(img, plan) == [
        "--set Custom: not a setting the Mender client reads (it would be ignored): check the spelling",
        _readable("0640", "its group"),
        NO_KEY,
    ]
    assert _sha(img) == before
    img.chmod(0o444)
    assert preview(img, ModifyPlan(artifact_name="r7")) == []


def test_preview_opens_nothing_for_writing(make_image):
    img = make_image("sdimg")
    if subprocess.run(["chattr", "+i", str(img)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not allowed here: no file that even root cannot open for writing")
    try:
        assert preview(img, ModifyPlan(artifact_name="r7")) == []
        with pytest.raises(Exception, match="is read-only"):
            modify(img, ModifyPlan(artifact_name="r7"))
    finally:
        subprocess.run(["chattr", "-i", str(img)], check=True)


def test_preview_and_modify_read_the_rootfs_on_the_open_image(make_image, monkeypatch, tmp_path):
    """The root filesystems are read through the image already open (emit's base, modify's
    session): opened by path again, the count below goes up."""
    import builtins

    from imagetools.image import ImageSource

    image = make_image("sdimg")
    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) == os.path.realpath(image):
            opened.append("open")
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and os.path.realpath(path) == os.path.realpath(image):
            opened.append("os.open")
        return real_os_open(path, *args, **kwargs)

    plan = ModifyPlan(server_uri="https://mender.example.com")
    with ImageSource(image) as src:
        monkeypatch.setattr(builtins, "open", spy_open)
        monkeypatch.setattr(os, "open", spy_os_open)
        assert preview(src, plan) == []
        monkeypatch.undo()
    assert opened == []
