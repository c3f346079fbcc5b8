"""The Mender client's configuration in both root filesystems: read it as the client will, change it.

`modify` is mender-artifact's `modify` for disk images, done in place at each rootfs's byte
offset: the server URL, tenant token, server certificate, Artifact verification key, Artifact
name and any other mender.conf setting, on rootfs A and B at once. Everything is validated
before the first byte is written (the options once, in `ModifyPlan`; each rootfs's files before
any rootfs is written), so bad input leaves the image as it was. mender.conf is rewritten as a
whole with every setting it had, its numbers exactly as written, its mode and owner.

`read` shows what the client will use: /var/lib/mender/mender.conf (through the datastore link,
usually on the data partition) with /etc/mender/mender.conf over it, as the client merges them
(Go's encoding/json: names matched without regard to case, objects merged field by field,
anything else replaced, null ignored). Nothing read from an image is trusted: files are capped
at 1 MiB, parsed strictly, and links are followed only as the device would follow them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import posixpath
import re
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlsplit

from . import mender as m
from .atomic import replace_when_done
from .errors import FilesystemError, KeyMaterialError, UsageError
from .fs import EXT_TYPES, Entry, Filesystem, NotFoundError, lock
from .fs.base import check_writable
from .layout import Layout, PartInfo, open_layout
from .sparse import copy_sparse
from .strict import read_regular
from .verify import resolve_on_rootfs

MAX_FILE = 1 << 20          # any file read from an image: mender.conf is a few hundred bytes
MAX_CERT_FILE = 1 << 20     # a certificate chain given to -c
MAX_TOKEN_FILE = 64 << 10   # a tenant token file given as -t @FILE
MAX_NAME = 4096             # an Artifact name (one line)
MAX_DEPTH = 32              # nesting of mender.conf objects and lists
INT_LIMIT = 2**31 - 1       # Go ints on 32-bit ARM devices
CONF_MODE, FILE_MODE = 0o600, 0o644  # new files: mender.conf may hold the tenant token
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_OPTION_FOR = {m.SERVER_URL: "-u/--server-uri", m.TENANT_TOKEN: "-t/--tenant-token",
               m.SERVER_CERTIFICATE: "-c/--server-cert", m.ARTIFACT_VERIFY_KEY: "-v/--verification-key",
               m.AUTH_PRIVATE_KEY: "--static-key"}
_MISSING = object()


# --- JSON exactly as written ---------------------------------------------------------------------
@dataclass(frozen=True)
class JsonNumber:
    """A JSON number kept as its text: rewriting mender.conf changes none of them (a reader that
    goes through doubles, like mender-artifact, turns 12345678901234567891 into 12345678901234567000)."""

    text: str

    def plain(self) -> int | float | str:
        """The number for a JSON report: an int, a float when exact, else its text."""
        if len(self.text) > 40:  # no setting is that long; int() of a huge one is slow or refused
            return self.text
        if _INTEGER.fullmatch(self.text):
            return int(self.text)
        return float(self.text) if exact(self) else self.text


class _Malformed(ValueError):
    """Text that is not the strict JSON the Mender client reads."""


def parse_json(text: str) -> Any:
    """Strict JSON: NaN/Infinity, and a name given twice in an object (also in another case: the
    client matches names without regard to case, so which one wins is unclear) are refused;
    numbers stay exact (JsonNumber). Raises ValueError saying what is wrong."""
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_int=JsonNumber,
                           parse_float=JsonNumber, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise _Malformed(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise _Malformed("nested too deeply") from None
    if _deeper_than(value, MAX_DEPTH):
        raise _Malformed(f"nested more than {MAX_DEPTH} levels deep")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, str] = {}
    for name, _ in pairs:
        if name.casefold() in seen:
            other = seen[name.casefold()]
            also = "" if other == name else f" (as {other!r} and {name!r}: the client ignores case)"
            raise _Malformed(f"{name!r} appears twice in one object{also}")
        seen[name.casefold()] = name
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise _Malformed(f"{name} is not a JSON value")


def _deeper_than(value: Any, limit: int) -> bool:
    if limit < 0:
        return True
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(_deeper_than(child, limit - 1) for child in children)


def exact(number: JsonNumber) -> bool:
    """Whether a reader that goes through doubles (mender-artifact, most JSON readers) reads back
    this number: 0.1 and 1800 survive, 12345678901234567891 and 1e400 do not."""
    from decimal import Decimal  # not at the top: verify reads mender.conf and needs no Decimal

    if not _JSON_NUMBER.fullmatch(number.text):
        return False
    as_float = float(number.text)
    return math.isfinite(as_float) and Decimal(repr(as_float)) == Decimal(number.text)


def dump_conf(settings: dict[str, Any]) -> bytes:
    """mender.conf as the client writes it (4-space indent), names in their order, ASCII only."""
    return (_dump(settings, 0) + "\n").encode("ascii")


def _dump(value: Any, level: int) -> str:
    pad, end = "    " * (level + 1), "    " * level
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {_dump(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{end}}}"
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join(pad + _dump(v, level + 1) for v in value) + f"\n{end}]"
    if isinstance(value, JsonNumber):
        return value.text
    return json.dumps(value)  # str, bool, None, {} and []


def plain(value: Any) -> Any:
    """A parsed value with plain Python numbers, for to_dict()."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.plain() if isinstance(value, JsonNumber) else value


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, JsonNumber):
        return "integer" if _INTEGER.fullmatch(value.text) else "number"
    return {dict: "object", list: "list", str: "string", type(None): "null"}[type(value)]


# --- settings by dotted name, as the client matches them -----------------------------------------
def find_key(obj: dict[str, Any], name: str) -> str | None:
    """The name under which `obj` holds `name` (the same spelling first, then any case)."""
    if name in obj:
        return name
    return next((k for k in obj if k.casefold() == name.casefold()), None)


def lookup(settings: dict[str, Any], dotted: str) -> Any:
    """The value at 'Security.AuthPrivateKey', or None when it is absent (or null)."""
    value: Any = settings
    for name in dotted.split("."):
        key = find_key(value, name) if isinstance(value, dict) else None
        if key is None:
            return None
        value = value[key]
    return value


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` loaded onto `base` as the client loads its second file onto the first."""
    out = dict(base)
    for name, value in over.items():
        key = find_key(out, name)
        if value is None and key is not None:
            continue  # Go leaves a field as it was for null
        if key is not None and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = merge(out[key], value)
            continue
        if key is not None:
            del out[key]
        out[name] = value
    return out


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'Security.AuthPrivateKey': ..., 'ServerURL': ...}: objects opened, lists kept whole."""
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


def _put(obj: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """Set a dotted setting, creating the objects on the way (an existing name keeps its place)."""
    names = dotted.split(".")
    for i, name in enumerate(names[:-1]):
        key = find_key(obj, name)
        if key is None or obj[key] is None:
            key = _rename(obj, key, name, {})
        elif not isinstance(obj[key], dict):
            raise FilesystemError(f"{where}: {'.'.join(names[:i + 1])} is {json_type(obj[key])}, not an "
                                  f"object, so {dotted} cannot be set: replace it with --set or --unset it")
        obj = obj[key]
    _rename(obj, find_key(obj, names[-1]), names[-1], value)


def _rename(obj: dict[str, Any], old: str | None, new: str, value: Any) -> str:
    """Set obj[new] = value in place of obj[old] (same position, our spelling)."""
    if old is None or old == new:
        obj[new] = value
        return new
    items = [((new, value) if k == old else (k, v)) for k, v in obj.items()]
    obj.clear()
    obj.update(items)
    return new


def _delete(obj: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        key = find_key(obj, name)
        if key is None or not isinstance(obj[key], dict):
            return
        obj = obj[key]
    key = find_key(obj, leaf)
    if key is not None:
        del obj[key]


def _known(dotted: str) -> str | None:
    """The client's spelling of a setting, if it is one the client reads."""
    return next((k for k in m.CONF_TYPES if k.casefold() == dotted.casefold()), None)


def type_problems(dotted: str, value: Any) -> Iterator[str]:
    """Why the client could not load `value` as `dotted` (it would refuse the whole file)."""
    want = m.CONF_TYPES.get(dotted)
    if want is None or value is None:
        return
    got = json_type(value)
    if want == "integer" and got == "integer" and (len(value.text) > 11 or abs(int(value.text)) > INT_LIMIT):
        yield f"{dotted} is {value.text[:40]}, more than a 32-bit device's Go int holds ({INT_LIMIT})"
    elif got != want:
        yield f"{dotted} is {got}, but the Mender client reads it as {want}"
    if isinstance(value, dict):
        for name, child in value.items():
            known = _known(f"{dotted}.{name}")
            if known is not None:
                yield from type_problems(known, child)


# --- option values -------------------------------------------------------------------------------
def check_server_uri(url: str) -> str:
    """http(s)://host[:port][/path] as given (the client drops a trailing '/' itself)."""
    shown = repr(url[:100])
    problem = _url_problem(url)
    if problem:
        raise UsageError(f"-u/--server-uri {shown}: {problem} (expected https://host[:port])")
    return url


def _url_problem(url: str) -> str | None:
    if not url.isascii() or not url.isprintable() or " " in url:
        return "not one line of printable ASCII"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a URL (bad host or port)"
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if not parts.hostname or port == 0:
        return "no host" if not parts.hostname else "port 0"
    if "@" in parts.netloc or parts.query or parts.fragment:
        return "credentials, a query or a fragment do not belong in the server URL"
    return None


def check_tenant_token(token: str, source: str = "-t/--tenant-token") -> str:
    """One line of printable ASCII without spaces (a JWT), surrounding whitespace dropped. The
    message names `source`, never the token."""
    token = token.strip()
    if not token:
        raise UsageError(f"{source}: the tenant token is empty")
    for position, char in enumerate(token, 1):
        if not "!" <= char <= "~":
            kind = ("a line break" if char in "\r\n" else "whitespace" if char.isspace()
                    else "a control character" if char.isascii() else "a non-ASCII character")
            raise UsageError(f"{source}: the tenant token has {kind} at character {position} "
                             "(a tenant token is one line of printable ASCII)")
    return token


def check_artifact_name(name: str) -> str:
    """What artifact_info can carry and every client reads back the same: one line, no control
    characters, no '=' (older clients split the line at every '='), no surrounding whitespace
    (the client strips it)."""
    problem = ("is empty" if not name else f"is longer than {MAX_NAME} characters" if len(name) > MAX_NAME
               else "is not one line of printable characters" if not name.isprintable()
               else "has surrounding whitespace, which the client strips" if name != name.strip()
               else "contains '=', at which older clients split artifact_info" if "=" in name else None)
    if problem:
        raise UsageError(f"-n/--artifact-name {name[:100]!r} {problem}")
    return name


def parse_mode(text: str) -> int:
    """--mode: an octal permission mode (e.g. 0600), the permission bits only."""
    if not 1 <= len(text) <= 4 or any(c not in "01234567" for c in text) or int(text, 8) > 0o777:
        raise UsageError(f"--mode {text[:20]!r}: not an octal permission mode of mender.conf "
                         "(0000-0777, e.g. 0600: readable by root only)")
    return int(text, 8)


def check_setting_name(dotted: str, option: str) -> str:
    """'Name' or 'Object.Name': names as Go fields are spelled, at most 4 levels."""
    names = dotted.split(".")
    if len(names) > 4 or not all(_NAME.fullmatch(n) for n in names):
        raise UsageError(f"{option} {dotted[:100]!r}: not a setting name (letters, digits and '_', "
                         "starting with a letter; '.' between the names of nested objects)")
    known = _known(dotted)
    if known is not None and known != dotted:
        raise UsageError(f"{option} {dotted}: the Mender client's setting is spelled {known}")
    return dotted


def parse_setting(text: str) -> tuple[str, Any]:
    """--set KEY=JSON: a sane name and a strict JSON value whose numbers are exact."""
    name, sep, raw = text.partition("=")
    if not sep:
        raise UsageError(f"--set {text[:100]!r}: expected KEY=JSON, e.g. --set UpdatePollIntervalSeconds=1800")
    name = check_setting_name(name, "--set")
    try:
        return name, parse_json(raw)
    except ValueError as exc:
        hint = f" (a string needs JSON quotes: --set '{name}=\"...\"')" if raw[:1] not in '{["-0123456789tfn' else ""
        raise UsageError(f"--set {name}: {exc}{hint}") from None


def from_plain(value: Any, name: str) -> Any:
    """A --set value (parsed JSON, or Python values from a library caller) in the form mender.conf
    is written from: numbers as JsonNumber, each one exact for readers that go through doubles."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value) or len({k.casefold() for k in value}) != len(value):
            raise UsageError(f"--set {name}: object names must be strings, each given once (in any case)")
        return {k: from_plain(v, name) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [from_plain(v, name) for v in value]
    if not isinstance(value, (JsonNumber, int, float)):
        raise UsageError(f"--set {name}: a {type(value).__name__} is not a JSON value")
    number = value if isinstance(value, JsonNumber) else JsonNumber(repr(value))
    if not exact(number):
        raise UsageError(f"--set {name}: the number {number.text[:40]} changes when read as a double "
                         "(as mender-artifact and most JSON readers read numbers)")
    return number


def check_server_cert(pem: bytes, source: str) -> list[str]:
    """A PEM chain of X.509 certificates only (text between blocks is fine: both Go and OpenSSL
    skip it). Returns warnings (expired or not yet valid certificates)."""
    from cryptography import x509

    from . import keys

    if len(pem) > MAX_CERT_FILE:
        raise KeyMaterialError(f"{source}: {len(pem)} bytes, more than a certificate chain holds (1 MiB)")
    blocks = keys.parse_pem(pem, source).blocks
    if not blocks:
        raise KeyMaterialError(f"{source}: not a PEM certificate (no 'BEGIN CERTIFICATE' block)")
    warnings = []
    for number, block in enumerate(blocks, 1):
        if "PRIVATE KEY" in block.label:
            raise KeyMaterialError(f"{source}: block {number} is a private key; the server certificate "
                                   "is readable by everyone on the device: never put a key in it")
        if block.label != "CERTIFICATE" or block.headers:
            raise KeyMaterialError(f"{source}: block {number} is {block.label[:40]!r}, not a plain "
                                   "'CERTIFICATE' block")
        try:
            cert = x509.load_der_x509_certificate(block.der)
        except ValueError:
            raise KeyMaterialError(f"{source}: block {number} is not a valid X.509 certificate") from None
        warnings += _validity(cert, f"{source}: certificate {number}")
    return warnings


def _validity(cert: Any, what: str) -> list[str]:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    if cert.not_valid_after_utc < now:
        return [f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d}"]
    if cert.not_valid_before_utc > now:
        return [f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"]
    return []


def check_verification_key(pem: bytes, source: str) -> str:
    """A public key the client can verify Artifact signatures with (SPKI PEM); a private key is
    refused: the signing key must never go into an image. Returns its description."""
    from . import keys

    if len(pem) > keys.MAX_KEY_FILE:
        raise KeyMaterialError(f"{source}: {len(pem)} bytes, more than a key file holds")
    labels = [block.label for block in keys.parse_pem(pem, source).blocks]
    if any("PRIVATE KEY" in label for label in labels):
        raise KeyMaterialError(f"{source}: holds a private key; -v takes the public key that verifies "
                               "Artifact signatures (openssl pkey -in KEY -pubout), and the signing key "
                               "must never go into an image")
    if labels == ["RSA PUBLIC KEY"]:
        raise KeyMaterialError(f"{source}: PKCS#1 'RSA PUBLIC KEY'; the client reads SPKI 'PUBLIC KEY' "
                               "(convert with: openssl rsa -RSAPublicKey_in -pubout)")
    key = keys.load_public(pem, source)
    keys.check_acceptable(key, source)
    return keys.describe(key)


def read_file(path: str | Path, limit: int, what: str) -> bytes:
    """A host file given as an option: a regular file of at most `limit` bytes (exit 2 else)."""
    return read_regular(path, limit, what, UsageError)


# --- the plan --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModifyPlan:
    """What to change, validated when made: apply it to any number of images with modify()."""

    server_uri: str | None = None
    tenant_token: str | None = field(default=None, repr=False)
    server_cert: bytes | None = field(default=None, repr=False)
    verification_key: bytes | None = field(default=None, repr=False)
    artifact_name: str | None = None
    settings: tuple[tuple[str, Any], ...] = ()   # (dotted name, parsed JSON value)
    unset: tuple[str, ...] = ()
    static_key: bool = False
    conf_mode: int | None = None                 # mender.conf's mode; None: kept (new files CONF_MODE)
    warnings: tuple[str, ...] = field(default=(), init=False, compare=False)  # e.g. an expired certificate

    def __post_init__(self) -> None:
        if self.server_uri is not None:
            check_server_uri(self.server_uri)
        if self.tenant_token is not None:
            object.__setattr__(self, "tenant_token", check_tenant_token(self.tenant_token))
        if self.artifact_name is not None:
            check_artifact_name(self.artifact_name)
        if self.conf_mode is not None and not (isinstance(self.conf_mode, int) and 0 <= self.conf_mode <= 0o777):
            raise UsageError(f"--mode {self.conf_mode!r}: not a permission mode (0o000-0o777)")
        found = []
        if self.server_cert is not None:
            found += check_server_cert(self.server_cert, "-c/--server-cert")
        if self.verification_key is not None:
            check_verification_key(self.verification_key, "-v/--verification-key")
        object.__setattr__(self, "settings", tuple((check_setting_name(name, "--set"), from_plain(value, name))
                                                   for name, value in self.settings))
        object.__setattr__(self, "unset", tuple(check_setting_name(name, "--unset") for name in self.unset))
        found += self._check_settings()
        object.__setattr__(self, "warnings", tuple(found))
        if self.empty:
            raise UsageError("nothing to change: give at least one of -u, -t, -c, -v, -n, --set, "
                             "--unset, --static-key, --mode")

    @classmethod
    def from_options(cls, *, server_uri: str | None = None, tenant_token: str | None = None,
                     server_cert: str | Path | None = None, verification_key: str | Path | None = None,
                     artifact_name: str | None = None, set: Iterable[str] = (),  # noqa: A002
                     unset: Iterable[str] = (), static_key: bool = False,
                     conf_mode: str | None = None) -> ModifyPlan:
        """From command-line values: `tenant_token` TOKEN or @FILE, files for -c and -v, KEY=JSON,
        `conf_mode` octal."""
        if tenant_token is not None and tenant_token.startswith("@"):
            data = read_file(tenant_token[1:], MAX_TOKEN_FILE, "tenant token file")
            tenant_token = check_tenant_token(data.decode("ascii", "replace"), f"tenant token file {tenant_token[1:]}")
        return cls(server_uri=server_uri, tenant_token=tenant_token,
                   server_cert=None if server_cert is None else read_file(server_cert, MAX_CERT_FILE, "server certificate"),
                   verification_key=None if verification_key is None else read_file(
                       verification_key, MAX_CERT_FILE, "verification key"),
                   artifact_name=artifact_name, settings=tuple(parse_setting(s) for s in set),
                   unset=tuple(unset), static_key=static_key,
                   conf_mode=None if conf_mode is None else parse_mode(conf_mode))

    @property
    def empty(self) -> bool:
        return not (self.changes_conf or self.artifact_name is not None)

    @property
    def changes_conf(self) -> bool:
        return bool(self.owned() or self.settings or self.unset) or self.conf_mode is not None

    def owned(self) -> list[tuple[str, str]]:
        """The settings the named options set, with their values."""
        values = [(m.SERVER_URL, self.server_uri), (m.TENANT_TOKEN, self.tenant_token),
                  (m.SERVER_CERTIFICATE, self.server_cert and m.SERVER_CERT_PATH),
                  (m.ARTIFACT_VERIFY_KEY, self.verification_key and m.VERIFY_KEY_PATH),
                  (m.AUTH_PRIVATE_KEY, self.static_key and m.CLIENT_KEY_PATH)]
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
        return [f"--set {name}: not a setting the Mender client reads (it would be ignored): check "
                "the spelling" for name, _ in self.settings if _known(name) is None]

    def summary(self) -> dict[str, Any]:
        """What the plan does, without secrets: the tenant token and the files by their SHA-256
        only (emit records this in OUT's state and unit.json, which must never hold the token)."""
        def digest(data: str | bytes | None) -> str | None:
            if data is None:
                return None
            return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()

        summary = {"server_uri": self.server_uri, "tenant_token_sha256": digest(self.tenant_token),
                   "server_cert_sha256": digest(self.server_cert),
                   "verification_key_sha256": digest(self.verification_key),
                   "artifact_name": self.artifact_name,
                   "set": [[name, json.dumps(plain(value), sort_keys=True)] for name, value in self.settings],
                   "unset": list(self.unset), "static_key": self.static_key}
        if self.conf_mode is not None:  # recorded only when given: older runs had none
            summary["conf_mode"] = f"{self.conf_mode:04o}"
        return summary

    def edit(self, conf: dict[str, Any], where: str) -> dict[str, Any]:
        """`conf` (a parsed mender.conf, not changed) with this plan's changes."""
        out = copy.deepcopy(conf)
        for name in self.unset:
            _delete(out, name)
        for name, value in self.settings + tuple(self.owned()):
            _put(out, name, copy.deepcopy(value), where)
        return out


def _overlap(a: str, b: str) -> bool:
    """Whether two dotted names touch the same setting (one is the other or inside it)."""
    a, b = a.casefold(), b.casefold()
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


# --- files as the device sees them -----------------------------------------------------------------
class _Device:
    """One rootfs with the data partition at /data: paths resolve as on the running device, where
    /var/lib/mender is a link to /data/mender."""

    def __init__(self, rootfs: Filesystem, data: Filesystem | None, where: str):
        self.rootfs, self.data, self.where = rootfs, data, where
        self._dirs: dict[str, str | FilesystemError] = {}  # directory -> where it resolves (or why not)

    def locate(self, path: str) -> tuple[Filesystem | None, str, str]:
        """(filesystem or None when unreachable, path inside it, how messages name it)."""
        directory = posixpath.dirname(path)
        if directory not in self._dirs:
            try:
                self._dirs[directory] = resolve_on_rootfs(self.rootfs, directory)[0]
            except FilesystemError as exc:
                self._dirs[directory] = exc
        parent = self._dirs[directory]
        if isinstance(parent, FilesystemError):
            return None, path, f"{path} on {self.where} ({parent})"
        full = posixpath.join(parent, posixpath.basename(path))
        if full.startswith(m.DATA_MOUNT + "/"):
            where = f"{full} on the data partition" + ("" if full == path else f" (as {path})")
            return self.data, full[len(m.DATA_MOUNT):], where
        return self.rootfs, full, f"{full} on {self.where}" + ("" if full == path else f" (as {path})")

    def resolve(self, path: str) -> str | None:
        """Where `path` leads on the device ('/data/...' on the data partition); None if nowhere."""
        fs, inner, _ = self.locate(path)
        if fs is None:
            return None
        return m.DATA_MOUNT + inner if fs is self.data else inner

    def read(self, path: str, limit: int = MAX_FILE, depth: int = 0) -> tuple[bytes | None, FileState]:
        """A regular file's content and state; None when absent. A link on the rootfs is followed
        (by its target's path, as the device would); anything else that is not a file is a problem."""
        fs, inner, where = self.locate(path)
        state = FileState(path, False, where)
        if fs is None:
            return None, state
        try:
            entry = fs.stat(inner)
        except NotFoundError:
            return None, state
        except FilesystemError as exc:
            return None, replace(state, problem=str(exc))
        if entry.type == "symlink" and fs is self.rootfs and depth < 8 and entry.target:
            target = posixpath.normpath(posixpath.join(posixpath.dirname(inner), entry.target))
            content, state = self.read(target, limit, depth + 1)
            return content, replace(state, path=path, where=f"{state.where} (through the link {inner})")
        state = replace(state, present=True, size=entry.size, mode=f"{entry.mode:04o}",
                        owner=f"{entry.uid}:{entry.gid}")
        if entry.type != "file":
            return None, replace(state, problem=f"{where} is a {entry.type}, not a regular file")
        if entry.size > limit:
            return None, replace(state, problem=f"{where} is {entry.size} bytes, more than the {limit} read")
        data = fs.read(inner)
        return data, replace(state, sha256=hashlib.sha256(data).hexdigest())


@dataclass
class FileState:
    """One file the client reads, as found in the image."""

    path: str                 # the device path looked up
    present: bool
    where: str                # where it was found, e.g. '/data/mender/mender.conf on the data partition'
    size: int | None = None
    mode: str | None = None   # '0600'
    owner: str | None = None  # '0:0'
    sha256: str | None = None
    problem: str | None = None


def parse_conf(data: bytes, where: str) -> dict[str, Any]:
    """A mender.conf's settings, or FilesystemError: the client would not start with this file."""
    try:
        value = parse_json(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise FilesystemError(f"{where} is malformed: not UTF-8 text (byte {exc.start})") from None
    except ValueError as exc:
        raise FilesystemError(f"{where} is malformed: {exc}; the client would not start with it") from None
    if not isinstance(value, dict):
        raise FilesystemError(f"{where} is malformed: {json_type(value)}, not a JSON object")
    return value


def parse_fields(data: bytes, name: str, where: str) -> str | None:
    """The value of `name=` in artifact_info or device_type, read as the client reads it
    (lines of NAME=VALUE, '#' comments, surrounding whitespace dropped, the name at most once)."""
    found = None
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise FilesystemError(f"{where}: line {number} is not NAME=VALUE: the client refuses the file")
        if key == name:
            if found is not None:
                raise FilesystemError(f"{where}: {name} is given twice: the client refuses the file")
            found = value.strip()
    return found


def _conf_problems(settings: dict[str, Any]) -> list[str]:
    """Why the client would not load these settings (wrong types, Servers beside ServerURL)."""
    problems = []
    for name, value in settings.items():
        known = _known(name)
        if known is not None:
            problems += type_problems(known, value)
    if lookup(settings, m.SERVER_URL) and lookup(settings, m.SERVERS) is not None:
        problems.append(f"both {m.SERVERS} and {m.SERVER_URL} are set, and the client refuses to "
                        f"start with both (--unset {m.SERVERS}, or --unset {m.SERVER_URL})")
    return problems


def _fallback(device: _Device) -> dict[str, Any]:
    """/var/lib/mender/mender.conf (usually on the data partition): read first by the client."""
    data, state = device.read(m.FALLBACK_CONF_PATH)
    if state.problem:
        raise FilesystemError(state.problem)
    return {} if data is None else parse_conf(data, state.where)


# --- modify ----------------------------------------------------------------------------------------
@dataclass
class RootfsChange:
    role: str
    partition: int
    written: list[str] = field(default_factory=list)    # device paths replaced or created
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


def modify(image: str | Path, plan: ModifyPlan, *, out: str | Path | None = None, force: bool = False,
           rootfs: str | None = None, overrides: dict[str, int] | None = None) -> ModifyResult:
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


def _modify(image: Path, plan: ModifyPlan, rootfs: str | None,
            overrides: dict[str, int] | None) -> ModifyResult:
    """Every file of every target rootfs is planned (read, parsed, checked) before any is written."""
    check_writable(str(image))
    result = ModifyResult(str(image), warnings=list(plan.warnings))
    with lock.exclusive(image), ExitStack() as stack:
        layout = open_layout(image, overrides)
        data = _open_data(layout, image, stack)
        planned = [(part, fs, _planned(plan, part, _Device(fs, data, part.where), result))
                   for part, fs in _targets(layout, image, rootfs, stack, result)]
        for part, fs, writes in planned:
            result.rootfs.append(_write_all(fs, part, writes))
    return result


def preview(image: str | Path, plan: ModifyPlan, *, key_injected: bool = False) -> list[str]:
    """The warnings modify(image, plan) would give, or its refusal (raised), with nothing written:
    emit checks its base once, so a malformed mender.conf stops the run before any unit, and the
    same warning is not repeated per unit. key_injected: a key is written before the plan is
    applied (emit), so --static-key needs none in `image`."""
    image = Path(image)
    result = ModifyResult(str(image), warnings=list(plan.warnings))
    with ExitStack() as stack:
        layout = open_layout(image)
        data = _open_data(layout, image, stack)
        for part, fs in _targets(layout, image, None, stack, result, writable=False):
            _planned(plan, part, _Device(fs, data, part.where), result, key_injected=key_injected)
    return result.warnings


def _open_data(layout: Layout, image: Path, stack: ExitStack) -> Filesystem | None:
    """The data partition, read-only (the fallback mender.conf and the key live there)."""
    data = layout.data
    if data is None or data.fs.type not in EXT_TYPES:
        return None
    return stack.enter_context(data.open(image))


def _targets(layout: Layout, image: Path, rootfs: str | None, stack: ExitStack,
             result: ModifyResult, writable: bool = True) -> list[tuple[PartInfo, Filesystem]]:
    """The root filesystems to change, opened for writing; an unformatted or empty B is skipped
    with a warning unless it was asked for."""
    targets = []
    for letter in ("a", "b") if rootfs is None else (rootfs,):
        asked = rootfs is not None or letter == "a"
        part = layout.require(f"rootfs-{letter}") if asked else layout.find("rootfs-b")
        if part is None:
            result.warnings.append("no rootfs B partition found: only rootfs A was modified")
            continue
        state = "has no filesystem" if part.fs.type not in EXT_TYPES else None
        fs = None if state else stack.enter_context(part.open(image, writable=writable))
        if fs is not None and not [e for e in fs.list("/") if e.name not in (".", "..", "lost+found")]:
            state = "is empty"
        if state is None:
            targets.append((part, fs))
        elif asked:
            raise FilesystemError(f"rootfs {letter.upper()} ({part.where}) {state}: there is no "
                                  "Mender configuration to modify")
        else:
            result.warnings.append(f"skipped rootfs B ({part.where}): it {state} (the first update "
                                   "fills it)")
    return targets


def _planned(plan: ModifyPlan, part: PartInfo, device: _Device, result: ModifyResult, *,
             key_injected: bool = False) -> list[_Write]:
    """The files to write on one rootfs, checked: what the client will read must load."""
    fs, writes = device.rootfs, []
    if plan.changes_conf:
        entry = _existing(fs, m.CONF_PATH, part)
        where = f"{m.CONF_PATH} on {part.where}"
        conf = parse_conf(fs.read(m.CONF_PATH), where) if entry else {}
        new = plan.edit(conf, where)
        problems = _conf_problems(merge(_fallback(device), new))
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
        note = (f"no device key at {m.KEY_PATH} yet: with --static-key a unit without one does not "
                "authenticate (inject one per unit: imagetools inject or emit)")
        result.warnings += [] if note in result.warnings else [note]
    return writes


def _warn_token_readable(conf: dict[str, Any], mode: int, result: ModifyResult) -> None:
    """A tenant token in a mender.conf that group or others may read: said once (never the token)."""
    readers = " and ".join(who for who, bit in (("its group", 0o040), ("everyone", 0o004)) if mode & bit)
    if not readers or not lookup(conf, m.TENANT_TOKEN):
        return
    note = (f"{m.CONF_PATH} holds the tenant token and is mode {mode:04o}, readable by {readers} on the "
            "device: give --mode 0600 to keep it to its owner")
    result.warnings += [] if note in result.warnings else [note]


def _existing(fs: Filesystem, path: str, part: PartInfo) -> Entry | None:
    """The entry of a file about to be replaced (None if absent). Links are refused: a file is
    replaced as a whole, never written through a link into another partition."""
    try:
        entry = fs.stat(path)
    except NotFoundError:
        return None
    except FilesystemError as exc:  # a link on the way (SymlinkInPath), a name debugfs refuses
        raise FilesystemError(f"{path} on {part.where}: {exc}; modify does not write through links: "
                              "replace the link with the file itself") from None
    if entry.type != "file":
        what = f"a symbolic link to {entry.target}" if entry.type == "symlink" else f"a {entry.type}"
        raise FilesystemError(f"{path} on {part.where} is {what}, not a regular file; modify "
                              "replaces files as a whole and does not write through links")
    if path == m.CONF_PATH and entry.size > MAX_FILE:
        raise FilesystemError(f"{path} on {part.where} is {entry.size} bytes: not a mender.conf "
                              f"(at most {MAX_FILE} are read)")
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
    return ((entry.type, entry.size, entry.mode, entry.uid, entry.gid) == ("file", len(w.data), w.mode, w.uid, w.gid)
            and fs.read(w.path) == w.data)


# --- read ------------------------------------------------------------------------------------------
@dataclass
class RootfsConfig:
    """What the client on one rootfs will use."""

    role: str
    partition: int
    state: str                                   # "ok", "empty", "no filesystem"
    settings: dict[str, Any] = field(default_factory=dict)   # effective: fallback, then main over it
    artifact_name: str | None = None
    files: list[FileState] = field(default_factory=list)     # each file read, in the client's order
    errors: list[str] = field(default_factory=list)    # why the client would not load mender.conf
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
        return {"role": self.role, "partition": self.partition, "state": self.state,
                "settings": settings,
                "tenant_token": {"set": bool(value), "length": len(value) if isinstance(value, str) else None},
                "artifact_name": self.artifact_name, "server_certificate": self.server_cert,
                "verification_key": self.verification_key,
                "auth_key_target": self.auth_key_target, "files": [asdict(f) for f in self.files],
                "errors": self.errors, "warnings": self.warnings}


@dataclass
class ConfigReport:
    image: str
    rootfs: list[RootfsConfig]
    device_type: str | None = None
    differences: list[str] = field(default_factory=list)  # settings and files in which A and B differ
    warnings: list[str] = field(default_factory=list)

    def to_dict(self, show_secrets: bool = False) -> dict[str, Any]:
        """The `config --json` document; the tenant token only with show_secrets."""
        return {"image": self.image, "rootfs": [r.to_dict(show_secrets) for r in self.rootfs],
                "device_type": self.device_type, "differences": self.differences,
                "warnings": self.warnings}


def read_rootfs(image: str | Path, layout: Layout, part: PartInfo, *,
                settings_only: bool = False) -> RootfsConfig:
    """One rootfs's configuration, read-only (the data partition is opened for what lies behind
    /data); settings_only reads just the two mender.conf (what verify needs)."""
    with ExitStack() as stack:
        return _read_rootfs(str(image), part, _open_data(layout, Path(image), stack), settings_only)


def read(image: str | Path, overrides: dict[str, int] | None = None) -> ConfigReport:
    """The Mender configuration of each rootfs as its client will see it, read-only (image files
    and block devices)."""
    image = str(image)
    layout = open_layout(image, overrides)
    with ExitStack() as stack:
        data = _open_data(layout, Path(image), stack)
        report = ConfigReport(image, [], warnings=list(layout.warnings))
        report.device_type = _device_type(data, report.warnings)
        for role in ("rootfs-a", "rootfs-b"):
            part = layout.require(role) if role == "rootfs-a" else layout.find(role)
            if part is not None:
                report.rootfs.append(_read_rootfs(image, part, data, False))
    report.differences = differences(*report.rootfs) if len(report.rootfs) == 2 else []
    return report


def _device_type(data: Filesystem | None, warnings: list[str]) -> str | None:
    if data is None:
        return None
    inner = m.DEVICE_TYPE_PATH.replace(m.DATASTORE, m.DATA_DATASTORE[len(m.DATA_MOUNT):], 1)
    where = f"{m.DEVICE_TYPE_PATH} ({m.DATA_MOUNT}{inner} on the data partition)"
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


def _read_rootfs(image: str, part: PartInfo, data: Filesystem | None, settings_only: bool) -> RootfsConfig:
    config = RootfsConfig(part.role, part.number, "ok")
    if part.fs.type not in EXT_TYPES:
        config.state = "no filesystem"
        return config
    with part.open(image) as fs:
        if not [e for e in fs.list("/") if e.name not in (".", "..", "lost+found")]:
            config.state = "empty"
            return config
        device = _Device(fs, data, part.where)
        for path in (m.FALLBACK_CONF_PATH, m.CONF_PATH):
            config.settings = merge(config.settings, _read_conf(device, path, config))
        config.errors += _conf_problems(config.settings)
        key = lookup(config.settings, m.AUTH_PRIVATE_KEY)
        if isinstance(key, str) and key.startswith("/"):
            config.auth_key_target = device.resolve(key)
        if settings_only:
            return config
        config.artifact_name = _read_field(device, m.ARTIFACT_INFO_PATH, m.ARTIFACT_NAME_FIELD, config)
        _read_trust_files(device, config)
    return config


def _read_conf(device: _Device, path: str, config: RootfsConfig) -> dict[str, Any]:
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


def _read_field(device: _Device, path: str, name: str, config: RootfsConfig) -> str | None:
    content, state = device.read(path)
    config.files.append(state)
    try:
        return None if content is None else parse_fields(content, name, state.where)
    except FilesystemError as exc:
        config.warnings.append(str(exc))
        return None


def _read_trust_files(device: _Device, config: RootfsConfig) -> None:
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
                config.warnings.append(f"{path} is present but {setting} does not point to it: the "
                                       "client does not use it")


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
