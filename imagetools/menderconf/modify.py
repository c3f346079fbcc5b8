"""mender-artifact's `modify` for disk images, done in place at each rootfs's byte offset.

The server URL, tenant token, server certificate, Artifact verification key, Artifact name and
any other mender.conf setting, on rootfs A and B at once. Everything is validated before the first
byte is written (the options once, in ModifyPlan; each rootfs's files before any rootfs is
written), so bad input leaves the image as it was. mender.conf is rewritten as a whole with every
setting it had, its numbers exactly as written, its mode and owner.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import mender as m
from ..atomic import replace_when_done
from ..deviceview import MAX_FILE, DeviceView, is_empty
from ..errors import FilesystemError, UsageError
from ..fs import Entry, Filesystem, NotFoundError, lock
from ..fs.base import check_writable
from ..image import ImageSource
from ..layout import PartInfo, Role
from ..session import ImageSession
from ..sparse import copy_sparse
from .plan import ModifyPlan
from .read import fallback
from .settings import conf_problems, dump_conf, lookup, merge, parse_conf

CONF_MODE, FILE_MODE = 0o600, 0o644  # new files: mender.conf may hold the tenant token


@dataclass
class RootfsChange:
    role: str
    partition: int
    written: list[str] = field(default_factory=list)  # device paths replaced or created
    unchanged: list[str] = field(default_factory=list)  # already exactly as planned


@dataclass
class ModifyResult:
    image: str
    rootfs: list[RootfsChange] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Write:
    path: str
    data: bytes = field(repr=False)
    mode: int
    uid: int
    gid: int


def modify(
    image: str | Path,
    plan: ModifyPlan,
    *,
    out: str | Path | None = None,
    force: bool = False,
    rootfs: str | None = None,
    overrides: dict[str, int] | None = None,
) -> ModifyResult:
    """Apply `plan` to rootfs A and B of `image` (only `rootfs` 'a' or 'b' if given), in place;
    with `out`, to a sparse/reflink copy published as `out` only once complete (an existing
    `out` is replaced only with force). An unformatted or empty rootfs B is skipped with a warning."""
    if rootfs not in (None, "a", "b"):
        raise UsageError(f"rootfs must be 'a' or 'b', not {rootfs!r}")
    if out is None:
        return _modify(Path(image), plan, rootfs, overrides)
    out = Path(out)
    if out.exists() and out.samefile(image):
        raise UsageError(f"--out {out} is the input image; omit --out to edit in place")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: directory {out.parent} does not exist")
    with replace_when_done(out, mode=0o600, exclusive=not force) as tmp:  # units will hold keys
        copy_sparse(image, tmp)
        result = _modify(tmp, plan, rootfs, overrides)
    return replace(result, image=str(out))


def _modify(image: Path, plan: ModifyPlan, rootfs: str | None, overrides: dict[str, int] | None) -> ModifyResult:
    """Every file of every target rootfs is planned (read, parsed, checked) before any is written."""
    check_writable(str(image))
    result = ModifyResult(str(image), warnings=list(plan.warnings))
    with lock.exclusive(image), ImageSession(image, overrides=overrides) as session, ExitStack() as stack:
        data = session.data()
        planned = [
            (part, fs, _planned(plan, part, DeviceView(fs, data, part.where), result))
            for part, fs in _targets(session, rootfs, stack, result)
        ]
        for part, fs, writes in planned:
            result.rootfs.append(_write_all(fs, part, writes))
    return result


def preview(image: str | Path | ImageSource, plan: ModifyPlan, *, key_injected: bool = False) -> list[str]:
    """The warnings modify(image, plan) would give, or its refusal (raised), with nothing written:
    emit checks its base once, so a malformed mender.conf stops the run before any unit, and the
    same warning is not repeated per unit. key_injected: a key is written before the plan is
    applied (emit), so --static-key needs none in `image`. An open ImageSource (emit's base) is
    read through, not opened again."""
    with ImageSession(image) as session, ExitStack() as stack:
        result = ModifyResult(session.path, warnings=list(plan.warnings))
        data = session.data()
        for part, fs in _targets(session, None, stack, result, writable=False):
            _planned(plan, part, DeviceView(fs, data, part.where), result, key_injected=key_injected)
    return result.warnings


def _targets(
    session: ImageSession, rootfs: str | None, stack: ExitStack, result: ModifyResult, writable: bool = True
) -> list[tuple[PartInfo, Filesystem]]:
    """The root filesystems to change, opened for writing (read on the session's descriptor);
    an unformatted or empty B is skipped with a warning unless it was asked for."""
    layout, targets = session.layout, []
    for letter in ("a", "b") if rootfs is None else (rootfs,):
        asked = rootfs is not None or letter == "a"
        role = Role.ROOTFS_A if letter == "a" else Role.ROOTFS_B
        part = layout.require(role) if asked else layout.find(role)
        if part is None:
            result.warnings.append("no rootfs B partition found: only rootfs A was modified")
            continue
        state = "has no filesystem" if not part.caps.owner_mode else None
        fs = None if state else stack.enter_context(part.open(session.path, writable=writable, source=session.source))
        if fs is not None and is_empty(fs):
            state = "is empty"
        if state is None:
            assert fs is not None  # opened: it has a filesystem
            targets.append((part, fs))
        elif asked:
            raise FilesystemError(
                f"rootfs {letter.upper()} ({part.where}) {state}: there is no Mender configuration to modify"
            )
        else:
            result.warnings.append(f"skipped rootfs B ({part.where}): it {state} (the first update fills it)")
    return targets


def _planned(
    plan: ModifyPlan, part: PartInfo, device: DeviceView, result: ModifyResult, *, key_injected: bool = False
) -> list[_Write]:
    """The files to write on one rootfs, checked: what the client will read must load."""
    fs, writes = device.rootfs, []
    if plan.changes_conf:
        entry = _existing(fs, m.CONF_PATH, part)
        where = f"{m.CONF_PATH} on {part.where}"
        conf = parse_conf(fs.read(m.CONF_PATH), where) if entry else {}
        new = plan.edit(conf, where)
        problems = conf_problems(merge(fallback(device), new))
        if problems:
            raise FilesystemError(f"{where}: after this change {problems[0]}; nothing was changed")
        write = _write(m.CONF_PATH, dump_conf(new), entry, CONF_MODE)
        if plan.conf_mode is not None:
            write = replace(write, mode=plan.conf_mode)
        _warn_token_readable(new, write.mode, result)
        writes.append(write)
    if plan.artifact_name is not None:
        line = f"{m.ARTIFACT_NAME_FIELD}={plan.artifact_name}\n".encode()
        writes.append(_write(m.ARTIFACT_INFO_PATH, line, _existing(fs, m.ARTIFACT_INFO_PATH, part)))
    for path, content in ((m.SERVER_CERT_PATH, plan.server_cert), (m.VERIFY_KEY_PATH, plan.verification_key)):
        if content is not None:
            writes.append(_write(path, content, _existing(fs, path, part)))
    if plan.static_key and not key_injected and device.read(m.CLIENT_KEY_PATH)[0] is None:
        note = (
            f"no device key at {m.KEY_PATH} yet: with --static-key a unit without one does not "
            "authenticate (inject one per unit: imagetools inject or emit)"
        )
        result.warnings += [] if note in result.warnings else [note]
    return writes


def _warn_token_readable(conf: dict[str, Any], mode: int, result: ModifyResult) -> None:
    """A tenant token in a mender.conf that group or others may read: said once (never the token)."""
    readers = " and ".join(who for who, bit in (("its group", 0o040), ("everyone", 0o004)) if mode & bit)
    if not readers or not lookup(conf, m.TENANT_TOKEN):
        return
    note = (
        f"{m.CONF_PATH} holds the tenant token and is mode {mode:04o}, readable by {readers} on the "
        "device: give --mode 0600 to keep it to its owner"
    )
    result.warnings += [] if note in result.warnings else [note]


def _existing(fs: Filesystem, path: str, part: PartInfo) -> Entry | None:
    """The entry of a file about to be replaced (None if absent). Links are refused: a file is
    replaced as a whole, never written through a link into another partition."""
    try:
        entry = fs.stat(path)
    except NotFoundError:
        return None
    except FilesystemError as exc:  # a link on the way (SymlinkInPath), a name debugfs refuses
        raise FilesystemError(
            f"{path} on {part.where}: {exc}; modify does not write through links: replace the link with the file itself"
        ) from None
    if entry.type != "file":
        what = f"a symbolic link to {entry.target}" if entry.type == "symlink" else f"a {entry.type}"
        raise FilesystemError(
            f"{path} on {part.where} is {what}, not a regular file; modify "
            "replaces files as a whole and does not write through links"
        )
    if path == m.CONF_PATH and entry.size > MAX_FILE:
        raise FilesystemError(
            f"{path} on {part.where} is {entry.size} bytes: not a mender.conf (at most {MAX_FILE} are read)"
        )
    return entry


def _write(path: str, data: bytes, entry: Entry | None, default_mode: int = FILE_MODE) -> _Write:
    """A replacement that keeps the file's mode and owner (new files: root's, `default_mode`)."""
    if entry is None:
        return _Write(path, data, default_mode, 0, 0)
    return _Write(path, data, entry.mode, entry.uid, entry.gid)


def _write_all(fs: Filesystem, part: PartInfo, writes: list[_Write]) -> RootfsChange:
    change = RootfsChange(part.role, part.number)
    for w in writes:
        if _same(fs, w):
            change.unchanged.append(w.path)
            continue
        fs.write(w.path, w.data, mode=w.mode, uid=w.uid, gid=w.gid, parents=True)
        change.written.append(w.path)
    return change


def _same(fs: Filesystem, w: _Write) -> bool:
    """Already exactly so: nothing to write (a re-run changes no block)."""
    try:
        entry = fs.stat(w.path)
    except NotFoundError:
        return False
    return (entry.type, entry.size, entry.mode, entry.uid, entry.gid) == (
        "file",
        len(w.data),
        w.mode,
        w.uid,
        w.gid,
    ) and fs.read(w.path) == w.data
