"""Running debugfs on `IMAGE?offset=BYTES` and understanding what it says.

debugfs exits 0 even when every command failed; its errors only appear on stderr. We run a batch
from a command file (-f), treat every stderr line except the version banner as an error, and parse
stdout section by section (each command is echoed as 'debugfs: CMD' before its output).
"""

from __future__ import annotations

import posixpath
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FilesystemError, ToolMissingError
from ..tools import find_tool
from .base import Entry, normalize, type_from_mode

_BANNER = re.compile(r"^debugfs \d[\w.\-]* \(.*\)$")
_NO_SPACE = ("Could not allocate block", "No free space", "Could not allocate inode",
             "No free inodes", "No space left")
_STAT_HEAD = re.compile(r"Inode:\s+(\d+)\s+Type:\s+(.+?)\s+Mode:\s+(\d+)")
_STAT_OWNER = re.compile(r"User:\s+(\d+)\s+Group:\s+(\d+).*?Size:\s+(\d+)")
_FAST_LINK = re.compile(r'Fast link dest: "(.*)"', re.S)
_TYPE_BITS = {"regular": 0o100000, "directory": 0o040000, "symlink": 0o120000}


@dataclass
class Result:
    stdout: bytes
    errors: list[str] = field(default_factory=list)

    @property
    def no_space(self) -> bool:
        return any(marker in line for line in self.errors for marker in _NO_SPACE)

    def sections(self, commands: list[str]) -> list[str]:
        """stdout split per command, in order (text after each 'debugfs: CMD' echo)."""
        text = self.stdout.decode("utf-8", "surrogateescape")
        out: list[str] = []
        pos = 0
        heads = [f"debugfs: {cmd}\n" for cmd in commands]
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


def debugfs_binary() -> str:
    return find_tool("debugfs", "e2fsprogs")


def quote(path: str) -> str:
    """A path as one debugfs argument (normalize() already refused '"' and newlines)."""
    return '"' + path + '"'


def run(device: str, commands: list[str], *, write: bool = False) -> Result:
    """Run commands in one debugfs process; read-only unless write (then -w)."""
    args = [debugfs_binary()]
    if write:
        args.append("-w")
    with tempfile.TemporaryDirectory(prefix="imagetools-debugfs-") as tmp:
        cmdfile = Path(tmp) / "commands"
        cmdfile.write_text("".join(c + "\n" for c in commands), encoding="utf-8", errors="surrogateescape")
        args += ["-f", str(cmdfile), device]
        proc = _exec(args)
    return Result(proc.stdout, _errors(proc.stderr))


def run_request(device: str, command: str) -> Result:
    """One read-only command with -R (stdout carries raw bytes, no echo): for `cat`."""
    proc = _exec([debugfs_binary(), "-R", command, device])
    return Result(proc.stdout, _errors(proc.stderr))


def _exec(args: list[str]) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL, timeout=600)
    except OSError as exc:
        raise ToolMissingError(f"cannot run debugfs: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise FilesystemError("debugfs did not finish within 10 minutes") from exc
    if proc.returncode != 0:
        raise FilesystemError(f"debugfs failed (exit {proc.returncode}): {_first(_errors(proc.stderr))}")
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
    norm = normalize(path)
    return Entry(path=norm, name=posixpath.basename(norm) or "/",
                 type=type_from_mode(_TYPE_BITS.get(kind, 0) | perm), mode=perm,
                 uid=int(owner.group(1)), gid=int(owner.group(2)), size=int(owner.group(3)),
                 target=target)


def parse_ls(section: str) -> list[tuple[int, int, str]]:
    """(inode, mode, name) from `ls -p` lines '/ino/mode/uid/gid/name/size/'."""
    rows = []
    for line in section.split("\n"):  # not splitlines(): \x0c or \x85 may be part of a name
        if not line.startswith("/") or not line.endswith("/"):
            continue
        parts = line[1:-1].split("/")
        if len(parts) < 6:
            continue
        name = "/".join(parts[4:-1])
        if name in (".", "..") or not parts[0].isdigit():
            continue
        rows.append((int(parts[0]), int(parts[1], 8), name))
    return rows
