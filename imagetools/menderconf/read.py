"""What the Mender client on each rootfs will use, read-only (image files and block devices).

/var/lib/mender/mender.conf (through the datastore link, usually on the data partition) with
/etc/mender/mender.conf over it, as the client merges them; artifact_info, device_type, and the
server certificate and verification key files. Nothing read from an image is trusted: files are
capped, parsed strictly, and links are followed only as the device would follow them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import mender as m
from ..deviceview import MAX_FILE, DeviceView, FileState, device_path, is_empty, on_data
from ..errors import FilesystemError
from ..fs import Filesystem, NotFoundError
from ..layout import Layout, PartInfo, Role
from ..session import ImageSession
from .settings import MAX_CERT_FILE, conf_problems, find_key, flatten, lookup, merge, parse_conf, parse_fields, plain

_MISSING = object()


@dataclass
class RootfsConfig:
    """What the client on one rootfs will use."""

    role: str
    partition: int
    state: str  # "ok", "empty", "no filesystem"
    settings: dict[str, Any] = field(default_factory=dict)  # effective: fallback, then main over it
    artifact_name: str | None = None
    files: list[FileState] = field(default_factory=list)  # each file read, in the client's order
    errors: list[str] = field(default_factory=list)  # why the client would not load mender.conf
    warnings: list[str] = field(default_factory=list)  # what else would surprise on the device
    auth_key_target: str | None = None  # where Security.AuthPrivateKey leads, links followed

    @property
    def server_cert(self) -> str | None:
        """The certificate file the client uses (ServerCertificate), None when not set."""
        return lookup(self.settings, m.SERVER_CERTIFICATE) or None

    @property
    def verification_key(self) -> str | None:
        return lookup(self.settings, m.ARTIFACT_VERIFY_KEY) or None

    def file(self, path: str) -> FileState | None:
        return next((f for f in self.files if f.path == path), None)

    def to_dict(self, show_secrets: bool = False) -> dict[str, Any]:
        settings = plain(self.settings)
        token = find_key(settings, m.TENANT_TOKEN)
        value = settings.get(token) if token else None
        if token and not show_secrets:
            del settings[token]
        return {
            "role": self.role,
            "partition": self.partition,
            "state": self.state,
            "settings": settings,
            "tenant_token": {"set": bool(value), "length": len(value) if isinstance(value, str) else None},
            "artifact_name": self.artifact_name,
            "server_certificate": self.server_cert,
            "verification_key": self.verification_key,
            "auth_key_target": self.auth_key_target,
            "files": [asdict(f) for f in self.files],
            "errors": self.errors,
            "warnings": self.warnings,
        }


@dataclass
class ConfigReport:
    image: str
    rootfs: list[RootfsConfig]
    device_type: str | None = None
    differences: list[str] = field(default_factory=list)  # settings and files in which A and B differ
    warnings: list[str] = field(default_factory=list)

    def to_dict(self, show_secrets: bool = False) -> dict[str, Any]:
        """The `config --json` document; the tenant token only with show_secrets."""
        return {
            "image": self.image,
            "rootfs": [r.to_dict(show_secrets) for r in self.rootfs],
            "device_type": self.device_type,
            "differences": self.differences,
            "warnings": self.warnings,
        }


def read_rootfs(image: str | Path, layout: Layout, part: PartInfo, *, settings_only: bool = False) -> RootfsConfig:
    """One rootfs's configuration, read-only (the data partition is opened for what lies behind
    /data); settings_only reads just the two mender.conf (what verify needs)."""
    with ImageSession(image, layout) as session:
        return rootfs_config(session, part, settings_only=settings_only)


def read(image: str | Path, overrides: dict[str, int] | None = None) -> ConfigReport:
    """The Mender configuration of each rootfs as its client will see it, read-only (image files
    and block devices)."""
    with ImageSession(image, overrides=overrides) as session:
        layout = session.layout
        report = ConfigReport(session.path, [], warnings=list(layout.warnings))
        report.device_type = _device_type(session.data(), report.warnings)
        for role in (Role.ROOTFS_A, Role.ROOTFS_B):
            part = layout.require(role) if role == Role.ROOTFS_A else layout.find(role)
            if part is not None:
                report.rootfs.append(rootfs_config(session, part))
    report.differences = differences(*report.rootfs) if len(report.rootfs) == 2 else []
    return report


def rootfs_config(session: ImageSession, part: PartInfo, *, settings_only: bool = False) -> RootfsConfig:
    """read_rootfs through an open session (its filesystems are opened once, shared)."""
    config = RootfsConfig(part.role, part.number, "ok")
    if not part.caps.owner_mode:
        config.state = "no filesystem"
        return config
    device = session.device(part)
    if is_empty(device.rootfs):
        config.state = "empty"
        return config
    for path in (m.FALLBACK_CONF_PATH, m.CONF_PATH):
        config.settings = merge(config.settings, _read_conf(device, path, config))
    config.errors += conf_problems(config.settings)
    key = lookup(config.settings, m.AUTH_PRIVATE_KEY)
    if isinstance(key, str) and key.startswith("/"):
        config.auth_key_target = device.resolve(key)
    if not settings_only:
        config.artifact_name = _read_field(device, m.ARTIFACT_INFO_PATH, m.ARTIFACT_NAME_FIELD, config)
        _read_trust_files(device, config)
    return config


def fallback(device: DeviceView) -> dict[str, Any]:
    """/var/lib/mender/mender.conf (usually on the data partition): read first by the client."""
    data, state = device.read(m.FALLBACK_CONF_PATH)
    if state.problem:
        raise FilesystemError(state.problem)
    return {} if data is None else parse_conf(data, state.where)


def _device_type(data: Filesystem | None, warnings: list[str]) -> str | None:
    if data is None:
        return None
    inner = on_data(m.DEVICE_TYPE_PATH, datastore=True)
    assert inner is not None  # the file is in the datastore, which is on the data partition
    where = f"{m.DEVICE_TYPE_PATH} ({device_path(inner)} on the data partition)"
    try:
        entry = data.stat(inner)
        if entry.type != "file" or entry.size > MAX_FILE:
            raise FilesystemError(f"{where} is not a small regular file")
        return parse_fields(data.read(inner), m.DEVICE_TYPE_FIELD, where)
    except NotFoundError:
        return None
    except FilesystemError as exc:
        warnings.append(str(exc))
        return None


def _read_conf(device: DeviceView, path: str, config: RootfsConfig) -> dict[str, Any]:
    content, state = device.read(path)
    config.files.append(state)
    if state.problem:
        config.errors.append(state.problem)
    if content is None:
        return {}
    try:
        return parse_conf(content, state.where)
    except FilesystemError as exc:
        config.errors.append(str(exc))
        return {}


def _read_field(device: DeviceView, path: str, name: str, config: RootfsConfig) -> str | None:
    content, state = device.read(path)
    config.files.append(state)
    try:
        return None if content is None else parse_fields(content, name, state.where)
    except FilesystemError as exc:
        config.warnings.append(str(exc))
        return None


def _read_trust_files(device: DeviceView, config: RootfsConfig) -> None:
    """The server certificate and verification key: where mender-artifact puts them, and where
    mender.conf points (the client uses only the latter)."""
    for setting, default in ((m.SERVER_CERTIFICATE, m.SERVER_CERT_PATH), (m.ARTIFACT_VERIFY_KEY, m.VERIFY_KEY_PATH)):
        used = lookup(config.settings, setting)
        for path in dict.fromkeys([default] + ([used] if isinstance(used, str) and used else [])):
            state = device.read(path, MAX_CERT_FILE)[1] if path.startswith("/") else None
            if state is None:
                config.warnings.append(f"{setting} is {path!r}, not an absolute path")
                continue
            config.files.append(state)
            if path == used and not state.present:
                config.warnings.append(f"{setting} is {path}, which is not in the image")
            elif path != used and state.present:
                config.warnings.append(
                    f"{path} is present but {setting} does not point to it: the client does not use it"
                )


def differences(a: RootfsConfig, b: RootfsConfig) -> list[str]:
    """Settings, Artifact names and file contents in which rootfs A and B differ (both must hold
    a configuration: an empty B is filled by the first update)."""
    if a.state != "ok" or b.state != "ok":
        return []
    fa, fb = flatten(a.settings), flatten(b.settings)
    out = [k for k in dict.fromkeys(list(fa) + list(fb)) if fa.get(k, _MISSING) != fb.get(k, _MISSING)]
    if a.artifact_name != b.artifact_name:
        out.append(m.ARTIFACT_NAME_FIELD)
    files_b = {f.path: f.sha256 for f in b.files}
    for f in a.files:
        if f.path not in (m.CONF_PATH, m.FALLBACK_CONF_PATH, m.ARTIFACT_INFO_PATH) and f.sha256 != files_b.get(f.path):
            out.append(f.path)
    return out
