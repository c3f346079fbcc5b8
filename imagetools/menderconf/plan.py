"""What modify changes, validated when made: one ModifyPlan applies to any number of images
(emit applies the same plan to every unit)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import mender as m
from ..errors import UsageError
from .settings import delete, known, plain, put, type_problems
from .validate import (
    MAX_CERT_FILE,
    MAX_TOKEN_FILE,
    check_artifact_name,
    check_server_cert,
    check_server_uri,
    check_setting_name,
    check_tenant_token,
    check_verification_key,
    from_plain,
    parse_mode,
    parse_setting,
    read_file,
)

_OPTION_FOR = {
    m.SERVER_URL: "-u/--server-uri",
    m.TENANT_TOKEN: "-t/--tenant-token",
    m.SERVER_CERTIFICATE: "-c/--server-cert",
    m.ARTIFACT_VERIFY_KEY: "-v/--verification-key",
    m.AUTH_PRIVATE_KEY: "--static-key",
}


@dataclass(frozen=True)
class ModifyPlan:
    """What to change, validated when made: apply it to any number of images with modify()."""

    server_uri: str | None = None
    tenant_token: str | None = field(default=None, repr=False)
    server_cert: bytes | None = field(default=None, repr=False)
    verification_key: bytes | None = field(default=None, repr=False)
    artifact_name: str | None = None
    settings: tuple[tuple[str, Any], ...] = ()  # (dotted name, parsed JSON value)
    unset: tuple[str, ...] = ()
    static_key: bool = False
    conf_mode: int | None = None  # mender.conf's mode; None: kept (new files CONF_MODE)
    warnings: tuple[str, ...] = field(default=(), init=False, compare=False)  # e.g. an expired certificate

    def __post_init__(self) -> None:
        if self.server_uri is not None:
            check_server_uri(self.server_uri)
        if self.tenant_token is not None:
            object.__setattr__(self, "tenant_token", check_tenant_token(self.tenant_token))
        if self.artifact_name is not None:
            check_artifact_name(self.artifact_name)
        mode = self.conf_mode
        if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777):
            raise UsageError(f"--mode {self.conf_mode!r}: not a permission mode (0o000-0o777)")
        found = []
        if self.server_cert is not None:
            found += check_server_cert(self.server_cert, "-c/--server-cert")
        if self.verification_key is not None:
            check_verification_key(self.verification_key, "-v/--verification-key")
        object.__setattr__(
            self,
            "settings",
            tuple((check_setting_name(name, "--set"), from_plain(value, name)) for name, value in self.settings),
        )
        object.__setattr__(self, "unset", tuple(check_setting_name(name, "--unset") for name in self.unset))
        found += self._check_settings()
        object.__setattr__(self, "warnings", tuple(found))
        if self.empty:
            raise UsageError(
                "nothing to change: give at least one of -u, -t, -c, -v, -n, --set, --unset, --static-key, --mode"
            )

    @classmethod
    def from_options(
        cls,
        *,
        server_uri: str | None = None,
        tenant_token: str | None = None,
        server_cert: str | Path | None = None,
        verification_key: str | Path | None = None,
        artifact_name: str | None = None,
        set: Iterable[str] = (),  # noqa: A002
        unset: Iterable[str] = (),
        static_key: bool = False,
        conf_mode: str | None = None,
    ) -> ModifyPlan:
        """From command-line values: `tenant_token` TOKEN or @FILE, files for -c and -v, KEY=JSON,
        `conf_mode` octal."""
        if tenant_token is not None and tenant_token.startswith("@"):
            data = read_file(tenant_token[1:], MAX_TOKEN_FILE, "tenant token file")
            tenant_token = check_tenant_token(data.decode("ascii", "replace"), f"tenant token file {tenant_token[1:]}")
        return cls(
            server_uri=server_uri,
            tenant_token=tenant_token,
            server_cert=None if server_cert is None else read_file(server_cert, MAX_CERT_FILE, "server certificate"),
            verification_key=None
            if verification_key is None
            else read_file(verification_key, MAX_CERT_FILE, "verification key"),
            artifact_name=artifact_name,
            settings=tuple(parse_setting(s) for s in set),
            unset=tuple(unset),
            static_key=static_key,
            conf_mode=None if conf_mode is None else parse_mode(conf_mode),
        )

    @property
    def empty(self) -> bool:
        return not (self.changes_conf or self.artifact_name is not None)

    @property
    def changes_conf(self) -> bool:
        return bool(self.owned() or self.settings or self.unset) or self.conf_mode is not None

    def owned(self) -> list[tuple[str, str]]:
        """The settings the named options set, with their values."""
        values = [
            (m.SERVER_URL, self.server_uri),
            (m.TENANT_TOKEN, self.tenant_token),
            (m.SERVER_CERTIFICATE, self.server_cert and m.SERVER_CERT_PATH),
            (m.ARTIFACT_VERIFY_KEY, self.verification_key and m.VERIFY_KEY_PATH),
            (m.AUTH_PRIVATE_KEY, self.static_key and m.CLIENT_KEY_PATH),
        ]
        return [(name, value) for name, value in values if value]

    def _check_settings(self) -> list[str]:
        """Conflicts between --set, --unset and the named options, and values the client would
        refuse; warnings for names no client reads (a typo is silently ignored on the device)."""
        owned = [name for name, _ in self.owned()]
        names = [name for name, _ in self.settings] + list(self.unset)
        for i, name in enumerate(names):
            option = "--set" if i < len(self.settings) else "--unset"
            if any(_overlap(name, other) for other in names[:i]):
                raise UsageError(f"{option} {name}: {name} is given more than once in --set/--unset")
            if name in (m.SERVER_URL, m.TENANT_TOKEN) and option == "--set":
                raise UsageError(f"--set {name}: use {_OPTION_FOR[name]}, which checks the value")
            clash = next((o for o in owned if _overlap(name, o)), None)
            if clash:
                raise UsageError(f"{option} {name} conflicts with {_OPTION_FOR[clash]}, which sets {clash}")
        for name, value in self.settings:
            problem = next(type_problems(name, value), None)
            if problem:
                raise UsageError(f"--set {name}: {problem}")
        return [
            f"--set {name}: not a setting the Mender client reads (it would be ignored): check the spelling"
            for name, _ in self.settings
            if known(name) is None
        ]

    def summary(self) -> dict[str, Any]:
        """What the plan does, without secrets: the tenant token and the files by their SHA-256
        only (emit records this in OUT's state and unit.json, which must never hold the token)."""

        def digest(data: str | bytes | None) -> str | None:
            if data is None:
                return None
            return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()

        summary = {
            "server_uri": self.server_uri,
            "tenant_token_sha256": digest(self.tenant_token),
            "server_cert_sha256": digest(self.server_cert),
            "verification_key_sha256": digest(self.verification_key),
            "artifact_name": self.artifact_name,
            "set": [[name, json.dumps(plain(value), sort_keys=True)] for name, value in self.settings],
            "unset": list(self.unset),
            "static_key": self.static_key,
        }
        if self.conf_mode is not None:  # recorded only when given: older runs had none
            summary["conf_mode"] = f"{self.conf_mode:04o}"
        return summary

    def edit(self, conf: dict[str, Any], where: str) -> dict[str, Any]:
        """`conf` (a parsed mender.conf, not changed) with this plan's changes."""
        out = copy.deepcopy(conf)
        for name in self.unset:
            delete(out, name)
        for name, value in self.settings + tuple(self.owned()):
            put(out, name, copy.deepcopy(value), where)
        return out


def _overlap(a: str, b: str) -> bool:
    """Whether two dotted names touch the same setting (one is the other or inside it)."""
    a, b = a.casefold(), b.casefold()
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")
