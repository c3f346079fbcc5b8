"""Read-only verification of a personalized image or flashed card, as named checks.

A unit whose key is missing, unreadable, of the wrong mode, not the preauthorized one or not
reachable through /var/lib/mender silently makes a new key and shows up *pending*: every one of
those conditions is a separate named check so the operator sees which one bit. Nothing here opens
the target for writing (the filesystem layer reads; e2fsck runs with -n).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from . import keys
from .deviceview import device_path, is_empty, on_data, resolve_on_rootfs
from .errors import FilesystemError, ImageFormatError, KeyMaterialError, UsageError, VerifyFailed
from .image import DiskImage, ImageSource, read_image
from .image.probe import TABLE_AREA, interrupted_flash
from .image.source import Overlay
from .layout import Layout, PartInfo, Role, detect_layout
from .mender import AUTH_PRIVATE_KEY, DATA_DATASTORE, DATASTORE, KEY_PATH
from .menderconf.read import rootfs_config
from .menderconf.settings import lookup
from .session import ImageSession
from .strict import loads, read_regular

DEFAULT_KEY_PATH = KEY_PATH
CLIENT_KEY_DIR = DATASTORE  # where the client looks; a link to the data partition's mender/

# Check names, in report order (stable: pipelines may look them up).
TABLE = "partition table sane"
DATA = "data partition found"
PRESENT = "key present"
PARSES = "key parses, not encrypted"
ACCEPTABLE = "key type/size acceptable"
MATCHES = "key matches expected"
MODE = "mode 0600"
OWNER = "owner 0:0"
LINK_A = "/var/lib/mender link on rootfs A"
LINK_B = "/var/lib/mender link on rootfs B"
STATIC_KEY = "static key in mender.conf"
FSCK = "e2fsck -fn clean on data"
CHECK_NAMES = (TABLE, DATA, PRESENT, PARSES, ACCEPTABLE, MATCHES, MODE, OWNER, LINK_A, LINK_B, STATIC_KEY, FSCK)
# Stable ids beside the prose names, for pipelines (`--json` "id"): the prose may be reworded,
# an id never changes.
CHECK_IDS = {
    TABLE: "partition-table",
    DATA: "data-partition",
    PRESENT: "key-present",
    PARSES: "key-parses",
    ACCEPTABLE: "key-acceptable",
    MATCHES: "key-matches",
    MODE: "key-mode",
    OWNER: "key-owner",
    LINK_A: "link-rootfs-a",
    LINK_B: "link-rootfs-b",
    STATIC_KEY: "static-key",
    FSCK: "fsck-data",
}


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"  # worth a look, not a reason to fail (an empty rootfs B)
    SKIP = "skip"  # could not be checked (no key, --no-fsck)


@dataclass
class Check:
    name: str
    status: Status
    detail: str

    @property
    def id(self) -> str:
        """The stable id of the check (CHECK_IDS)."""
        return CHECK_IDS[self.name]

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "status": self.status, "detail": self.detail}


@dataclass
class VerifyReport:
    target: str
    checks: list[Check] = field(default_factory=list)
    fingerprint: str | None = None
    key_type: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == Status.FAIL]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "fingerprint": self.fingerprint,
            "key_type": self.key_type,
            "checks": [c.to_dict() for c in self.checks],
        }

    def summary(self) -> dict[str, int]:
        """How many checks ended in each status."""
        return {status.value: sum(c.status == status for c in self.checks) for status in Status}

    def add(self, name: str, status: Status, detail: str) -> None:
        self.checks.append(Check(name, status, detail))

    def replace(self, check: Check) -> None:
        """Put a check run separately (see fsck_check) in place of the one of the same name."""
        self.checks = [check if c.name == check.name else c for c in self.checks]


def data_path(path: str) -> str:
    """The key's path inside the data partition: '/data/mender/x.pem' (mender-artifact's form) or
    the client's '/var/lib/mender/x.pem' both give '/mender/x.pem'."""
    if not posixpath.normpath(path).startswith("/"):
        raise UsageError(f"key path {path!r} must be absolute, e.g. {DEFAULT_KEY_PATH}")
    inner = on_data(path, datastore=True)
    if inner is not None:
        return inner
    raise UsageError(
        f"key path {path!r} is not on the data partition; use a path under /data/ (default {DEFAULT_KEY_PATH})"
    )


Expected = keys.PublicKey | keys.PrivateKey | bytes | str | os.PathLike | None


def verify_image(
    target: str | Path | ImageSource,
    *,
    expected: Expected = None,
    expected_fingerprint: str | None = None,
    fsck: bool = True,
    path: str = DEFAULT_KEY_PATH,
    overrides: dict[str, int] | None = None,
    rootfs: list[Check] | None = None,
) -> VerifyReport:
    """Run every check on an image file or block device without writing to it.

    `expected` is the key the server holds, in whatever form the caller has it: a public key file
    (str or PathLike), the PEM bytes of one, or a key object (public, or private: its public half).
    PEM as given by an operator may be a PKCS#1 'RSA PUBLIC KEY': that fails the match check
    (the server would refuse it) instead of aborting. Anything else is a TypeError.
    Unusable input (not an image, bad key path or expected key) raises; everything else is a Check.
    `rootfs`: the rootfs checks (rootfs_checks) of an image whose root filesystems are known to
    be those of the target, e.g. the base of a delta unit, which only changes the data partition.
    `target` given as an ImageSource (a card on the station's descriptor, a unit's overlay) is
    read through and left open; a path is opened once for every check.
    """
    key_rel = data_path(path)
    want_fp, want_problem, want_key = _expected(expected, expected_fingerprint)
    with contextlib.ExitStack() as stack:
        src = target if isinstance(target, ImageSource) else stack.enter_context(ImageSource(target))
        report = VerifyReport(src.path)
        image = _read_table(src)
        layout = detect_layout(image, overrides, src)
        _check_table(report, image, layout)
        data = layout.data
        session = stack.enter_context(ImageSession(src, layout))  # each filesystem opened once
        data_fs = _check_data(report, session, data)
        _check_key(report, data_fs, key_rel, path, want_fp, want_problem, want_key)
        report.checks += rootfs if rootfs is not None else _rootfs_checks(session, key_rel)
        _check_fsck(report, session, data, fsck)
    report.checks.sort(key=lambda c: CHECK_NAMES.index(c.name))
    return report


def _read_table(src: ImageSource) -> DiskImage:
    """The partition table; a card without one that reads as an interrupted flash (its table
    area zeroed, the rest written) fails verification with the way to redo it."""
    try:
        return read_image(src)
    except ImageFormatError:
        if not interrupted_flash(src):
            raise
    raise VerifyFailed(
        f"{src.path}: no partition table, and its first {TABLE_AREA // 1024} KiB are zeros: "
        f"this looks like an interrupted flash; flash it again "
        f"(imagetools flash BASE {src.path} --unit UNIT --again)"
    )


def _check_key(
    report: VerifyReport,
    data_fs,
    key_rel: str,
    shown: str,
    want_fp: str | None,
    want_problem: str | None,
    want_key: keys.PublicKey | None = None,
) -> None:
    key = entry = None
    if data_fs is None:
        _skip(report, (PRESENT,), "no data partition")
    else:
        entry = _check_present(report, data_fs, key_rel, shown)
    if entry is not None:
        key = _check_parses(report, data_fs, key_rel, want_key)
        _check_mode_owner(report, entry)
    else:
        _skip(report, (PARSES,), "no key")
    if key is not None:
        report.fingerprint, report.key_type = keys.fingerprint(key), keys.describe(key)
        _check_acceptable(report, key)
        _check_matches(report, key, want_fp, want_problem)
    else:
        _skip(report, (ACCEPTABLE, MATCHES), "no usable key")
    if entry is None:
        _skip(report, (MODE, OWNER), "no key")


def rootfs_checks(target: str | ImageSource, layout: Layout, key_rel: str) -> list[Check]:
    """The checks of the root filesystems' configuration: the /var/lib/mender links and the
    static-key setting (which also reads /data/mender/mender.conf; injecting a key leaves it)."""
    with ImageSession(target, layout) as session:
        return _rootfs_checks(session, key_rel)


def _rootfs_checks(session: ImageSession, key_rel: str) -> list[Check]:
    return _link_checks(session) + [static_key_check(session, key_rel)]


def link_checks(target: str | ImageSource, layout: Layout) -> list[Check]:
    """On rootfs A and B, /var/lib/mender must resolve to the data partition's mender/ (an empty
    rootfs B only warns: meta-mender leaves it empty until the first update)."""
    with ImageSession(target, layout) as session:
        return _link_checks(session)


def _link_checks(session: ImageSession) -> list[Check]:
    out = []
    for role, name in ((Role.ROOTFS_A, LINK_A), (Role.ROOTFS_B, LINK_B)):
        status, detail = _link_status(session, session.layout.find(role), role)
        out.append(Check(name, status, detail))
    return out


def static_key_check(session: ImageSession, key_rel: str) -> Check:
    """Security.AuthPrivateKey as each rootfs's client reads it (/var/lib/mender/mender.conf, then
    /etc/mender/mender.conf over it). Unset, a missing or unreadable key is silently replaced and
    the unit shows up pending (warn); set elsewhere, the client uses another key (fail)."""
    want = device_path(key_rel)
    shown = want.replace(DATA_DATASTORE + "/", CLIENT_KEY_DIR + "/", 1)
    statuses, details = [], []
    for part in session.layout.rootfs:
        status, detail = _static_key_on(session, part, want, shown)
        if status is not None:
            statuses.append(status)
            details.append(f"rootfs {part.role[-1].upper()}: {detail}")
    if not statuses:
        return Check(STATIC_KEY, Status.SKIP, "no root filesystem with a Mender configuration")
    worst = next(s for s in (Status.FAIL, Status.WARN, Status.PASS) if s in statuses)
    hint = (
        (
            "; a missing or unreadable key is then silently replaced and the unit shows up pending "
            "(imagetools modify --static-key sets it)"
        )
        if worst == Status.WARN
        else ""
    )
    return Check(STATIC_KEY, worst, "; ".join(details) + hint)


def _static_key_on(session: ImageSession, part: PartInfo, want: str, shown: str) -> tuple[Status | None, str]:
    """(status, detail) for one rootfs; status None for a rootfs with nothing to check (empty B)."""
    try:
        rootfs = rootfs_config(session, part, settings_only=True)
    except FilesystemError as exc:
        return Status.FAIL, str(exc)
    if rootfs.state != "ok":
        return None, rootfs.state
    if rootfs.errors:
        return Status.FAIL, rootfs.errors[0]
    value = lookup(rootfs.settings, AUTH_PRIVATE_KEY)
    if value is None or value == "":
        return Status.WARN, f"{AUTH_PRIVATE_KEY} not set"
    if not isinstance(value, str) or not value.startswith("/"):
        return Status.FAIL, f"{AUTH_PRIVATE_KEY} is {value!r}, not an absolute path"
    if rootfs.auth_key_target != want:
        return Status.FAIL, f"{AUTH_PRIVATE_KEY} is {value}, not {shown}: the client would use another key"
    return Status.PASS, f"{AUTH_PRIVATE_KEY} = {value} (a bad key fails on the device)"


_KEY_CLASSES = tuple(cls for union in (keys.PublicKey, keys.PrivateKey) for cls in typing.get_args(union))


def _expected(expected: Expected, fingerprint: str | None) -> tuple[str | None, str | None, keys.PublicKey | None]:
    """(expected fingerprint, problem with the expected key, the expected key when usable: the
    key in the image must sign what it verifies). Garbage raises KeyMaterialError; a value of
    another type TypeError (a path given as something else would otherwise fail much later)."""
    problem = None
    if isinstance(expected, (str, os.PathLike)):
        expected = keys.read_key_bytes(Path(expected).absolute(), "expected public key")
    elif expected is not None and not isinstance(expected, (bytes, bytearray, *_KEY_CLASSES)):
        raise TypeError(
            f"expected must be a public key file path, PEM bytes or a key object, not {type(expected).__name__}"
        )
    if isinstance(expected, keys.PRIVATE_TYPES):
        expected = expected.public_key()
    if isinstance(expected, (bytes, bytearray)):
        pem = bytes(expected)
        try:
            expected = keys.load_public(pem, "expected public key")
        except KeyMaterialError as exc:
            if b"BEGIN RSA PUBLIC KEY" not in pem:
                raise
            problem = str(exc)
            # PKCS#1 (an RSA key): loaded for its fingerprint only
            expected = typing.cast(keys.PublicKey, serialization.load_pem_public_key(pem))
    want = keys.fingerprint(expected) if expected is not None else None
    if fingerprint is not None:
        given = keys.normalize_fingerprint(fingerprint)
        if want is not None and want != given:
            raise KeyMaterialError("the expected public key and the expected fingerprint disagree")
        want = given
    return want, problem, expected if problem is None else None


def _skip(report: VerifyReport, names: tuple[str, ...], why: str) -> None:
    for name in names:
        report.add(name, Status.SKIP, why)


def _check_table(report: VerifyReport, image, layout: Layout) -> None:
    """read_image already refuses truncated or overlapping tables (unusable input); what it
    tolerates with a warning (damaged primary GPT, hybrid MBR) is reported here, and so is a
    filesystem larger than its partition."""
    summary = f"{image.table.upper()}, {len(image.partitions)} partitions"
    warnings = image.warnings + layout.oversized
    if warnings:
        report.add(TABLE, Status.WARN, f"{summary}; " + "; ".join(warnings))
    else:
        report.add(TABLE, Status.PASS, summary)


def _check_data(report: VerifyReport, session: ImageSession, data: PartInfo | None):
    if data is None:
        report.add(
            DATA,
            Status.FAIL,
            f"no data partition (choose one with --data-partition N); partitions seen: {session.layout.summary()}",
        )
        return None
    where = f"partition {data.describe()}"
    try:
        fs = session.filesystem(data)
    except FilesystemError as exc:
        report.add(DATA, Status.FAIL, f"{where}: cannot read it: {exc}")
        return None
    report.add(DATA, Status.PASS, f"{where} ({data.reason})")
    return fs


def _check_present(report: VerifyReport, fs, key_rel: str, shown: str):
    try:
        if not fs.exists(key_rel):
            report.add(PRESENT, Status.FAIL, f"no file at {shown}: the client would generate a new key")
            return None
        entry = fs.stat(key_rel)
    except FilesystemError as exc:
        report.add(PRESENT, Status.FAIL, f"{shown}: {exc}")
        return None
    if entry.type != "file":
        what = f"a symlink to {entry.target}" if entry.type == "symlink" else f"a {entry.type}"
        report.add(PRESENT, Status.FAIL, f"{shown} is {what}, not a regular file")
        return None
    if entry.size == 0:
        report.add(PRESENT, Status.FAIL, f"{shown} is empty")
        return None
    report.add(PRESENT, Status.PASS, f"{shown} ({entry.size} bytes)")
    return entry


def read_key_in_image(fs, key_rel: str) -> bytes:
    """The key file's bytes, refused unread when it is far larger than any key (hostile image)."""
    size = fs.stat(key_rel).size
    if size > keys.MAX_KEY_FILE:
        raise KeyMaterialError(f"key in image: {size} bytes, more than any key file ({keys.MAX_KEY_FILE} at most)")
    return fs.read(key_rel)


def _check_parses(report: VerifyReport, fs, key_rel: str, want_key: keys.PublicKey | None = None):
    try:  # the pair is proven by a signature, checked with the expected key when it is the same
        key = keys.load_private(read_key_in_image(fs, key_rel), "key in image", expected=want_key)
    except (KeyMaterialError, FilesystemError) as exc:
        report.add(PARSES, Status.FAIL, str(exc))
        return None
    report.add(PARSES, Status.PASS, f"{keys.describe(key)}, unencrypted")
    return key


def _check_acceptable(report: VerifyReport, key) -> None:
    try:
        keys.check_acceptable(key, "key in image")
    except KeyMaterialError as exc:
        report.add(ACCEPTABLE, Status.FAIL, str(exc))
        return
    report.add(ACCEPTABLE, Status.PASS, keys.describe(key))


def _check_matches(report: VerifyReport, key, want: str | None, problem: str | None) -> None:
    have = keys.fingerprint(key)
    if problem:
        same = "matches it" if have == want else "does not match it either"
        report.add(MATCHES, Status.FAIL, f"{problem} (the key in the image {same})")
    elif want is None:
        report.add(MATCHES, Status.SKIP, f"no expected key given; image key SHA256 {have}")
    elif have == want:
        report.add(MATCHES, Status.PASS, f"SHA256 {have}")
    else:
        report.add(MATCHES, Status.FAIL, f"image key SHA256 {have}, expected {want}")


def _check_mode_owner(report: VerifyReport, entry) -> None:
    if entry.mode == 0o600:
        report.add(MODE, Status.PASS, "0600")
    else:
        hint = " (mender-artifact -m 600 is decimal; use -m 0600)" if entry.mode == 0o130 else ""
        report.add(MODE, Status.FAIL, f"{entry.mode:04o}, expected 0600{hint}")
    if (entry.uid, entry.gid) == (0, 0):
        report.add(OWNER, Status.PASS, "0:0")
    else:
        report.add(OWNER, Status.FAIL, f"{entry.uid}:{entry.gid}, expected 0:0 (root)")


def _link_status(session: ImageSession, part: PartInfo | None, role: Role) -> tuple[Status, str]:
    label = "rootfs " + role[-1].upper()
    if part is None:
        return (Status.WARN if role == Role.ROOTFS_B else Status.FAIL), f"no {label} partition found"
    if not part.caps.owner_mode:
        if role == Role.ROOTFS_B and part.fs.type == "empty":
            return Status.WARN, f"{label} has no filesystem yet (filled by the first update)"
        return Status.WARN, f"{label} (partition {part.partition.number}) is {part.fs.type}: link not checked"
    want = DATA_DATASTORE
    try:
        fs = session.filesystem(part)
        if role == Role.ROOTFS_B and is_empty(fs):
            return Status.WARN, f"{label} is empty (filled by the first update); not checked"
        resolved, chain = resolve_on_rootfs(fs, CLIENT_KEY_DIR)
    except FilesystemError as exc:
        return Status.FAIL, f"{exc}: the client would not find the key ({CLIENT_KEY_DIR} must link to {want})"
    if resolved == want:
        return Status.PASS, ", ".join(chain) + " (the data partition's mender/)"
    if not chain:
        return Status.FAIL, (
            f"{CLIENT_KEY_DIR} is a directory on {label}, not a link to {want}: the client would not find the key"
        )
    return Status.FAIL, ", ".join(chain) + f" resolves to {resolved}, not {want}: the client would not find the key"


def _check_fsck(report: VerifyReport, session: ImageSession, data: PartInfo | None, run: bool) -> None:
    if not run:
        report.add(FSCK, Status.SKIP, "skipped (--no-fsck)")
    elif data is None:
        report.add(FSCK, Status.SKIP, "no data partition")
    else:
        report.checks.append(fsck_check(session.path, data, session.overlay))


def fsck_check(target: str | Path, data: PartInfo, overlay: Overlay | None = None) -> Check:
    """The e2fsck check alone (of a unit's delta over `overlay`'s base). e2fsck fsyncs the image
    even with -n, so emit runs it while little of a new image is still unwritten, before the
    other checks."""
    try:
        clean, output = data.fsck(target, overlay)
    except FilesystemError as exc:
        return Check(FSCK, Status.FAIL, str(exc))
    if clean:
        return Check(FSCK, Status.PASS, "clean")
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return Check(FSCK, Status.FAIL, "errors found: " + "; ".join(lines[:4])[:300])


MAX_REPORT_BYTES = 256 * 1024 * 1024  # report.json of a very large batch; anything larger is not one


def report_beside(image: str | Path) -> Path | None:
    """The emit report.json for an image: beside it, or in the emit OUT two levels up
    (OUT/unit/unit.sdimg → OUT/report.json); None when there is none."""
    image = Path(image).absolute()
    for candidate in (image.parent / "report.json", image.parent.parent / "report.json"):
        if candidate.is_file():
            return candidate
    return None


def key_owner(fingerprint: str, report_file: str | Path) -> str | None:
    """The unit of an emit report.json whose key has this fingerprint, or None: a mismatch
    is half explained once the operator knows whose key the image holds (two images swapped)."""
    path = Path(report_file).absolute()
    data = loads(read_regular(path, MAX_REPORT_BYTES, "emit report"), f"emit report {path}")
    units = data.get("units") if isinstance(data, dict) else None
    for unit in units if isinstance(units, list) else []:
        if isinstance(unit, dict) and unit.get("fingerprint") == fingerprint and isinstance(unit.get("name"), str):
            return unit["name"]
    return None


def explain_mismatch(report: VerifyReport, report_file: str | Path) -> None:
    """On a failed key match, name the unit whose key the image holds (from an emit report.json)."""
    check = next((c for c in report.checks if c.name == MATCHES), None)
    if check is None or check.status != Status.FAIL or report.fingerprint is None:
        return
    owner = key_owner(report.fingerprint, report_file)
    where = Path(report_file).absolute()
    check.detail += (
        f"; the key in the image is {owner}'s (per {where})"
        if owner
        else f"; no unit in {where} has the key in the image"
    )
