"""What OUT remembers between runs: each published unit's unit.json (UnitRecord) and OUT's state
file, which records the base image and the settings so that a changed base or changed key
settings are noticed (refused unless force). Each file is read and written through one type; a
file that is not what emit writes (malformed, a field missing or of another type) counts as
unreadable."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import EnvironmentProblem
from ..image import ImageSource
from ..unitformat import STATE_FILE, Fields
from ..units import MiB
from .outdir import write_text

STATE_VERSION = 1


@dataclass
class BaseIdentity:
    """The base image: size, mtime and partition tables are cheap to get; sha256 (a full read) is
    taken from the state file while those match, else filled in when first needed."""

    path: str
    size: int
    mtime_ns: int
    table_sha256: str
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EmitState:
    """OUT/.imagetools-emit.json: the base and settings of the last run, and whether it finished
    with every unit published."""

    base: BaseIdentity
    settings: dict[str, Any]
    complete: bool

    @classmethod
    def from_json(cls, data: Any) -> EmitState:
        f = Fields(data, "state")
        base = Fields(f.get("base", dict), "base")
        return cls(
            BaseIdentity(
                base.get("path", str),
                base.get("size", int),
                base.get("mtime_ns", int),
                base.get("table_sha256", str),
                base.get("sha256", str, optional=True),
            ),
            f.get("settings", dict),
            f.get("complete", bool),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "base": self.base.to_json(),
            "settings": self.settings,
            "complete": self.complete,
        }


def read_state(out: Path) -> EmitState | None:
    try:
        return EmitState.from_json(json.loads((out / STATE_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(
            f"{out / STATE_FILE} is unreadable ({exc}); it records which base image "
            f"the units were made from: restore it or use a new output directory"
        ) from None


def write_state(out: Path, state: EmitState) -> None:
    write_text(out / STATE_FILE, json.dumps(state.to_json(), indent=2) + "\n")


def base_identity(base: ImageSource, state: EmitState | None) -> BaseIdentity:
    """Cheap identity (size, mtime, partition tables) of the base, already open; the content hash
    is reused from the state when those still match, computed otherwise."""
    st = os.fstat(base.fd)
    ident = BaseIdentity(str(Path(base.path).resolve()), base.size, st.st_mtime_ns, _table_sha256(base))
    old = state.base if state is not None else None
    if old is not None and (old.size, old.mtime_ns, old.table_sha256) == (
        ident.size,
        ident.mtime_ns,
        ident.table_sha256,
    ):
        ident.sha256 = old.sha256
    return ident


def _table_sha256(base: ImageSource) -> str:
    """First and last MiB: MBR/EBR, primary and backup GPT."""
    head = base.read(0, min(MiB, base.size), "the partition table")
    tail_at = max(0, base.size - MiB)
    return hashlib.sha256(head + base.read(tail_at, base.size - tail_at, "the backup table")).hexdigest()


# --- recorded settings as an operator knows them ---------------------------------------------------
_Described = dict[str, tuple[str, list[str]]]  # setting -> (its value as text, the emit options giving it)


def setting_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(setting, recorded value, this run's value) for each setting two runs differ in (named as
    an operator knows them; the tenant token, certificate and verification key by SHA-256 only)."""
    a, b = ({name: text for name, (text, _) in _described(s).items()} for s in (old, new))
    changes = [
        (name, a.get(name, "none"), b.get(name, "none"))
        for name in dict.fromkeys([*a, *b])
        if a.get(name) != b.get(name)
    ]
    return changes or [("settings", json.dumps(old, sort_keys=True), json.dumps(new, sort_keys=True))]


def settings_options(settings: dict[str, Any]) -> list[str]:
    """The emit options that give these recorded settings (placeholders for files and the token,
    which are recorded by SHA-256 only), e.g. ['--format', 'delta', '--key-type', 'ed25519']."""
    return [option for _, options in _described(settings).values() for option in options]


def _described(settings: dict[str, Any]) -> _Described:
    """Each recorded setting (EmitOptions.settings()) by name; a state file of another version
    may hold anything, so odd shapes are shown as they are, never refused here."""
    key = settings["key"] if isinstance(settings.get("key"), dict) else {}
    unit_format = str(settings.get("format", "image"))
    out: _Described = {
        "key type": _key_type(key),
        "format": (unit_format, [] if unit_format == "image" else ["--format", unit_format]),
        "bmap": ("on", []) if settings.get("bmap", True) else ("off", ["--no-bmap"]),
        "private keys": ("discarded", ["--discard-private-keys"])
        if settings.get("discard_private_keys")
        else ("kept", []),
    }
    files = settings["unit_files"] if isinstance(settings.get("unit_files"), list) else []
    specs = [
        f"{f.get('path')}={f.get('column')}:{f.get('mode')}:{f.get('owner')}" for f in files if isinstance(f, dict)
    ]
    if specs:
        out["unit files"] = (", ".join(specs), [o for spec in specs for o in ("--unit-file", spec)])
    if settings.get("image_sha256") is True:
        out["image sha256"] = ("on", ["--image-sha256"])
    modify = settings["modify"] if isinstance(settings.get("modify"), dict) else {}
    out.update(_modify_described(modify))
    for name in settings.keys() - {
        "key",
        "format",
        "bmap",
        "discard_private_keys",
        "unit_files",
        "modify",
        "image_sha256",
    }:
        out[name] = (json.dumps(settings[name], sort_keys=True), [])
    return out


def _key_type(key: dict[str, Any]) -> tuple[str, list[str]]:
    """'rsa3072', 'ecdsa p256' or 'ed25519' (PKCS#8 added when asked for), with its options."""
    kind = str(key.get("type", "rsa"))
    size = {"rsa": ("bits", ""), "ecdsa": ("curve", " ")}.get(kind)
    text, options = kind, ["--key-type", kind]
    if size is not None and key.get(size[0]) is not None:
        text += f"{size[1]}{key[size[0]]}"
        options += [f"--{size[0]}", str(key[size[0]])]
    if key.get("format") == "pkcs8" and kind != "ed25519":
        text += " PKCS#8"
    return text, options


_MODIFY = {  # summary field -> (setting, option, placeholder for what is recorded by SHA-256 only)
    "server_uri": ("server URI", "-u", None),
    "tenant_token_sha256": ("tenant token", "-t", "@TOKEN_FILE"),
    "server_cert_sha256": ("server certificate", "-c", "SERVER_CERT"),
    "verification_key_sha256": ("verification key", "-v", "VERIFY_KEY"),
    "artifact_name": ("Artifact name", "-n", None),
    "static_key": ("static key", "--static-key", None),
    "conf_mode": ("mender.conf mode", "--mode", None),
}


def _modify_described(modify: dict[str, Any]) -> _Described:
    """The per-unit configuration (config.ModifyPlan.summary()), each option given on its own."""
    out: _Described = {}
    for field, value in modify.items():
        if value in (None, False, [], ""):
            continue
        if field in ("set", "unset") and isinstance(value, list):
            shown = ["=".join(map(str, v)) if isinstance(v, list) else str(v) for v in value]
            out[f"--{field}"] = (", ".join(shown), [o for s in shown for o in (f"--{field}", s)])
            continue
        name, option, placeholder = _MODIFY.get(field, (field, None, None))
        if placeholder is not None and option is not None:  # the table gives both or neither
            out[name] = (f"sha256 {str(value)[:12]}...", [option, placeholder])
        elif value is True:
            out[name] = ("on", [option] if option else [])
        else:
            out[name] = (str(value), [option, str(value)] if option else [])
    return out
