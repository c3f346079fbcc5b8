"""The one way into debugfs and e2fsck: devices, commands, runs and what they print.

A debugfs command file is a command language, not a list of arguments: a line starting with `!`
runs a shell command, `lcd`/`dump`/`rdump` write host files, an argument ends at a space unless
quoted, a `"` or line break inside a name ends it, and a line longer than debugfs' 8 KiB buffer
goes on as a new command. So commands are only built here, from a fixed set of verbs, with every
path argument checked and quoted, and the device is always an absolute path (a name starting with
`-` would be read as options such as `-R`). Paths read from an image get the same checks as typed
ones; an entry they refuse is reported with the partition it is in, never silently skipped.

debugfs exits 0 even when every command failed; its errors only appear on stderr. We run a batch
fed on standard input (-f -), treat every stderr line except the version banner as an error, and
parse stdout section by section (each command is echoed as 'debugfs: CMD' before its output).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import FilesystemError, ToolMissingError
from ..tools import find_tool
from .base import Entry, type_from_mode, unsafe_reason

if TYPE_CHECKING:
    import subprocess

DEBUGFS_TIMEOUT = 600
E2FSCK_TIMEOUT = 1800
# The verbs we use, and the literal tokens (options, field names) they take besides paths.
_VERBS = frozenset({"stat", "ls", "cat", "write", "mkdir", "sif", "rm", "rmdir", "ln", "unlink"})
_TOKENS = frozenset({"-p", "mode", "uid", "gid"})
_BANNER = re.compile(r"^debugfs \d[\w.\-]* \(.*\)$")
_NO_SPACE = ("Could not allocate block", "No free space", "Could not allocate inode", "No free inodes", "No space left")
_STAT_HEAD = re.compile(r"Inode:\s+(\d+)\s+Type:\s+(.+?)\s+Mode:\s+(\d+)")
_STAT_OWNER = re.compile(r"User:\s+(\d+)\s+Group:\s+(\d+).*?Size:\s+(\d+)")
_FAST_LINK = re.compile(r'Fast link dest: "(.*)"', re.S)
_TYPE_BITS = {"regular": 0o100000, "directory": 0o040000, "symlink": 0o120000}


class UnsafeName(FilesystemError):
    """A path that debugfs' command language cannot carry safely (or that ext4 cannot hold)."""

    def __init__(self, path: str, why: str, where: str):
        super().__init__(
            f"cannot address {path!r} in {where}: {why}; nothing was changed "
            "(rename it with a tool that works on the mounted filesystem)"
        )
        self.path = path
        self.where = where


def check_path(path: str, where: str) -> str:
    why = unsafe_reason(path)
    if why:
        raise UnsafeName(path, why, where)
    return path


@dataclass(frozen=True)
class Device:
    """A filesystem at a byte offset of an image file or block device, as libext2fs is told.

    `path` is absolute, so it can never be read as an option, and free of '?', which libext2fs
    would read as the start of io options (such a name is reached through a symlink alias)."""

    path: str
    offset: int
    where: str  # how messages name the partition, e.g. "partition 4 (data, ext4)"

    @property
    def spec(self) -> str:
        return f"{self.path}?offset={self.offset}"


def device(image_path: str | os.PathLike, offset: int, where: str, alias_dir: Callable[[], str]) -> Device:
    """The Device for a partition; a path holding '?' is aliased by a symlink in alias_dir()."""
    path = os.path.abspath(os.fspath(image_path))
    if "?" in path:
        alias = os.path.join(alias_dir(), "image")
        if not os.path.islink(alias):
            os.symlink(path, alias)
        path = alias
    if offset < 0:
        raise FilesystemError(f"negative offset {offset} for {where}")
    return Device(path, offset, where)


@dataclass(frozen=True)
class Inode:
    """An inode addressed by number (`<12>`): for entries read from the image, no name needed."""

    number: int


@dataclass(frozen=True)
class Command:
    """One debugfs command line, built only by command()."""

    line: str


def command(verb: str, *args: str | int | Inode, where: str) -> Command:
    """A checked, quoted debugfs command: paths must be absolute and addressable (UnsafeName
    names the entry and `where`), other strings must be one of the known literal tokens."""
    if verb not in _VERBS:
        raise ValueError(f"debugfs verb {verb!r} is not one we use")
    parts = [verb]
    for arg in args:
        if isinstance(arg, Inode):
            parts.append(f"<{int(arg.number)}>")
        elif isinstance(arg, int):
            parts.append(str(arg))
        elif arg in _TOKENS:
            parts.append(arg)
        elif arg.startswith("/"):
            parts.append('"' + check_path(arg, where) + '"')
        else:
            raise UnsafeName(arg, "only absolute paths go into debugfs commands", where)
    return Command(" ".join(parts))


@dataclass
class Result:
    stdout: bytes
    errors: list[str] = field(default_factory=list)

    @property
    def no_space(self) -> bool:
        return any(marker in line for line in self.errors for marker in _NO_SPACE)

    def sections(self, commands: list[Command]) -> list[str]:
        """stdout split per command, in order (text after each 'debugfs: CMD' echo)."""
        text = self.stdout.decode("utf-8", "surrogateescape")
        out: list[str] = []
        pos = 0
        heads = [f"debugfs: {cmd.line}\n" for cmd in commands]
        for i, head in enumerate(heads):
            start = text.find(head, pos)
            if start < 0:
                out.append("")
                continue
            start += len(head)
            end = text.find(heads[i + 1], start) if i + 1 < len(heads) else len(text)
            end = len(text) if end < 0 else end
            out.append(text[start:end])
            pos = end
        return out


def run(dev: Device, commands: list[Command], *, write: bool = False) -> Result:
    """Run commands in one debugfs process, fed on its standard input; read-only unless write
    (then -w)."""
    args = [find_tool("debugfs", "e2fsprogs")] + (["-w"] if write else [])
    script = "".join(c.line + "\n" for c in commands).encode("utf-8", "surrogateescape")
    proc = _exec(args + ["-f", "-", dev.spec], "debugfs", DEBUGFS_TIMEOUT, stdin=script)
    return Result(proc.stdout, _errors(proc.stderr))


def request(dev: Device, cmd: Command) -> Result:
    """One read-only command with -R (stdout carries raw bytes, no echo): for `cat`."""
    proc = _exec([find_tool("debugfs", "e2fsprogs"), "-R", cmd.line, dev.spec], "debugfs", DEBUGFS_TIMEOUT)
    return Result(proc.stdout, _errors(proc.stderr))


def e2fsck(dev: Device) -> tuple[bool, str]:
    """e2fsck -fn in place, changing nothing: (clean, its output)."""
    args = [find_tool("e2fsck", "e2fsprogs"), "-fn", dev.spec]
    proc = _exec(args, "e2fsck", E2FSCK_TIMEOUT, check=False)
    return proc.returncode == 0, (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()


VERSION_TIMEOUT = 5
TOOLS = ("debugfs", "e2fsck")  # what this builder runs (doctor lists them from here)
DEBUGFS, E2FSCK = TOOLS


def version(tool: str) -> str:
    """What `debugfs -V` or `e2fsck -V` prints (the version banner, on stderr): for doctor, so
    that these tools, too, run only through this builder."""
    if tool not in TOOLS:
        raise ValueError(f"not an e2fsprogs tool this builder runs: {tool!r}")
    proc = _exec([find_tool(tool, "e2fsprogs"), "-V"], tool, VERSION_TIMEOUT, check=False)
    return (proc.stdout[:4096] + b"\n" + proc.stderr[:4096]).decode("utf-8", "replace")


def _exec(
    args: list[str], tool: str, timeout: int, check: bool = True, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    import subprocess  # here, not at the top: reads go through the ext4 package and run no tool

    feed: dict[str, Any] = {"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout, **feed)
    except OSError as exc:
        raise ToolMissingError(f"cannot run {tool}: {exc.strerror or exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise FilesystemError(f"{tool} did not finish within {timeout} s") from exc
    if check and proc.returncode != 0:
        raise FilesystemError(f"{tool} failed (exit {proc.returncode}): {_first(_errors(proc.stderr))}")
    return proc


def _errors(stderr: bytes) -> list[str]:
    lines = stderr.decode("utf-8", "replace").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not _BANNER.match(ln.strip())]


def _first(errors: list[str]) -> str:
    return errors[0] if errors else "no message"


def parse_stat(path: str, section: str) -> Entry | None:
    """An Entry from `stat` output, or None when the section has none (path not found)."""
    head = _STAT_HEAD.search(section)
    owner = _STAT_OWNER.search(section)
    if not head or not owner:
        return None
    kind = head.group(2).strip()
    perm = int(head.group(3), 8) & 0o7777
    target = None
    link = _FAST_LINK.search(section)
    if kind == "symlink" and link:
        target = link.group(1).split('"\n')[0]
    return Entry(
        path=path,
        name=posixpath.basename(path) or "/",
        type=type_from_mode(_TYPE_BITS.get(kind, 0) | perm),
        mode=perm,
        uid=int(owner.group(1)),
        gid=int(owner.group(2)),
        size=int(owner.group(3)),
        target=target,
        inode=int(head.group(1)),
    )


@dataclass
class Listing:
    """`ls -p` rows (inode, mode, name); garbled when a line could not be parsed, which only a
    name holding a line break causes: such a directory's names cannot be trusted."""

    rows: list[tuple[int, int, str]]
    garbled: bool


def parse_ls(section: str) -> Listing:
    """(inode, mode, name) from `ls -p` lines '/ino/mode/uid/gid/name/size/'."""
    rows = []
    garbled = False
    for line in section.split("\n"):  # not splitlines(): \x0c or \x85 may be part of a name
        if not line:
            continue
        parts = line[1:-1].split("/") if line.startswith("/") and line.endswith("/") else []
        if (
            len(parts) < 6
            or not all(p.isdigit() for p in parts[:4])
            or not set(parts[1]) <= set("01234567")
            or not (parts[-1].isdigit() or not parts[-1])
        ):
            garbled = True
            continue
        name = "/".join(parts[4:-1])
        if name not in (".", ".."):
            rows.append((int(parts[0]), int(parts[1], 8), name))
    return Listing(rows, garbled)
