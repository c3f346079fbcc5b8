"""Hostile names and labels from images reach the terminal escaped, JSON stays strict UTF-8 with
the exact names recoverable, and a closed output pipe ends imagetools quietly.

The hostile names are put into a real image the way an attacker would: an ext4 filesystem made
with `mkfs.ext4 -d` from a host directory (which can hold any name but "/" and NUL) written over
the data partition; a GPT partition name set with sfdisk and an ext4 label with tune2fs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from support.tools import ROOT, run_tool

from imagetools import files
from imagetools.cli import main
from imagetools.cli.base import EXIT_PIPE
from imagetools.cli.text import escape, for_json
from imagetools.layout import open_layout

pytestmark = pytest.mark.integration

EXE = shutil.which("imagetools") or str(ROOT / ".venv" / "bin" / "imagetools")

# raw name in the image -> how human output shows it
HOSTILE = {
    b"esc\x1b[31mred": r"esc\x1b[31mred",
    b"cr\rret": r"cr\rret",
    b"bs\x08x": r"bs\x08x",
    "rlo\u202etxt.exe".encode(): r"rlo\u202etxt.exe",
    "c1\x9bx".encode(): r"c1\u009bx",  # C1 CSI: not to be confused with the byte 0x9b
    b"bad\xff\xfe": r"bad\xff\xfe",  # not UTF-8
    b"nl\nline": r"nl\nline",
    b"back\\slash": r"back\\slash",
    b"plain": "plain",
}
LINK_TARGET = b"tgt\x1b]0;pwned\x07"  # a dangling link with an OSC sequence
BAD_LINK_TARGET = b"\xfftarget"
UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def printable(text: str) -> bool:
    return all(unicodedata.category(c) not in UNSAFE_CATEGORIES for c in text)


def hostile_data(img: Path, tmp_path: Path) -> None:
    """Replace the image's data partition by an ext4 filesystem holding the HOSTILE names."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for raw in HOSTILE:
        with open(os.fsencode(tree) + b"/" + raw, "wb") as fh:
            fh.write(b"content of " + raw)
    os.symlink(LINK_TARGET, os.fsencode(tree) + b"/link")
    os.symlink(BAD_LINK_TARGET, os.fsencode(tree) + b"/badlink")
    data = next(p for p in open_layout(img).parts if p.role == "data").partition
    fs = tmp_path / "data.ext4"
    run_tool("mkfs.ext4", "-q", "-F", "-L", "data", "-d", str(tree), str(fs), f"{data.size // 1024}k")
    with open(img, "r+b") as out:
        out.seek(data.start)
        out.write(fs.read_bytes())


@pytest.fixture
def img(make_image, tmp_path) -> Path:
    image = make_image("sdimg")
    hostile_data(image, tmp_path)
    return image


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def real(*args: str | bytes | Path, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """The console script, bytes in and out: what a terminal or a pipeline really gets."""
    argv = [EXE, *(a if isinstance(a, bytes) else str(a) for a in args)]
    return subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE)


# -- human output -------------------------------------------------------------------------------
def test_ls_shows_escapes_and_no_control_characters(img, run):
    result = run("ls", f"{img}:/data/")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines) == sorted([*HOSTILE.values(), "link", "badlink", "lost+found"])
    assert all(printable(line) for line in lines)


def test_ls_plain_output_is_strict_utf8_through_a_pipe(img):
    result = real("ls", f"{img}:/data/")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode("utf-8")  # strict: the raw 0xff byte is shown as \xff
    assert r"bad\xff\xfe" in text.splitlines() and printable(text.replace("\n", ""))


def test_ls_long_escapes_names_and_link_targets(img, run):
    result = run("ls", "-l", f"{img}:/data/")
    assert result.exit_code == 0, result.stderr
    rows = result.stdout.splitlines()
    names = [row.split(None, 4)[4] for row in rows[1:]]
    assert r"link -> tgt\x1b]0;pwned\x07" in names
    assert r"badlink -> \xfftarget" in names
    assert set(HOSTILE.values()) <= set(names)
    assert len(rows) == 1 + len(HOSTILE) + 3 and all(printable(r) for r in rows)


def test_error_quoting_a_name_from_the_image_is_escaped_and_one_line(img, run):
    result = run("cat", f"{img}:/data/link")  # the dangling target comes from the image
    assert result.exit_code == 2
    assert result.stderr.startswith("imagetools: error: ") and result.stderr.count("\n") == 1
    assert r"tgt\x1b]0;pwned\x07" in result.stderr and printable(result.stderr.rstrip("\n"))


def test_error_quoting_a_hostile_argument_is_escaped(img):
    result = real("ls", os.fsencode(f"{img}:/data/nope") + "\x1b[2J\u202e".encode() + b"\xff")
    assert result.returncode == 2
    err = result.stderr.decode("utf-8")
    assert err.count("\n") == 1 and printable(err.rstrip("\n"))
    assert r"nope\x1b[2J\u202e\xff" in err


def test_warning_quoting_a_hostile_name_is_escaped(make_image, run):
    image = make_image("sdimg")
    name = "/etc/w\x1b[31m\u202e\udcff"
    files.install(image, name, b"x", partition=2)  # on rootfs A only
    result = run("rm", f"{image}:{name}")
    assert result.exit_code == 0, result.stderr
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("imagetools: warning: /etc/w\\x1b[31m\\u202e\\xff on partition 3")
    assert printable(warning)


def test_inspect_escapes_gpt_names_and_labels(make_image, run):
    image = make_image("uefiimg")
    run_tool("sfdisk", "--part-label", str(image), "3", "b\x1b[2J\u202eX\r")
    rootfs_b = open_layout(image).parts[2].partition.start
    run_tool("tune2fs", "-L", "\x1b[31mB\u202e", f"{image}?offset={rootfs_b}")
    result = run("inspect", str(image))
    assert result.exit_code == 0, result.stderr
    row = result.stdout.splitlines()[4]
    assert r"'b\x1b[2J\u202eX\r'" in row and r"\x1b[31mB\u202e" in row
    assert all(printable(line) for line in result.stdout.splitlines())
    part = json.loads(run("inspect", "--json", str(image)).stdout)["items"][2]
    assert (part["name"], part["label"]) == ("b\x1b[2J\u202eX\r", "\x1b[31mB\u202e")  # exact


def test_cat_stays_byte_exact(img):
    result = real("cat", f"{img}:/data/".encode() + b"bad\xff\xfe")
    assert result.returncode == 0 and result.stdout == b"content of bad\xff\xfe"


# -- JSON ---------------------------------------------------------------------------------------
def strings(data):
    if isinstance(data, dict):
        for key, value in data.items():
            yield key
            yield from strings(value)
    elif isinstance(data, list):
        for item in data:
            yield from strings(item)
    elif isinstance(data, str):
        yield data


def exact(entry: dict, key: str) -> bytes | None:
    """The documented scheme: KEY_b64 when present, else KEY."""
    if f"{key}_b64" in entry:
        return base64.b64decode(entry[f"{key}_b64"], validate=True)
    return None if entry[key] is None else entry[key].encode("utf-8")


@pytest.mark.parametrize("long", [False, True], ids=["ls", "ls-l"])
def test_ls_json_is_strict_utf8_and_names_are_recoverable(img, long):
    result = real("ls", "--json", *(["-l"] if long else []), f"{img}:/data/")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout.decode("utf-8"))  # strict
    assert not any(re.search("[\ud800-\udfff]", s) for s in strings(doc))
    entries = {exact(e, "name"): e for e in doc["items"]}
    assert set(HOSTILE) <= set(entries)
    for raw, shown in HOSTILE.items():
        entry = entries[raw]
        assert exact(entry, "path") == b"/" + raw
        # valid UTF-8 is carried exactly, and only the rest gets a _b64 (shown as ls shows it)
        assert ("name_b64" in entry) == (raw == b"bad\xff\xfe")
        assert entry["name"] == (shown if "name_b64" in entry else raw.decode())
    assert exact(entries[b"link"], "target") == LINK_TARGET
    assert exact(entries[b"badlink"], "target") == BAD_LINK_TARGET


# -- a closed output pipe ----------------------------------------------------------------------
def closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader is already gone: every write gets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return real(*args, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ("ls", "{img}:/data/"),
        ("ls", "-l", "{img}:/etc"),
        ("inspect", "{img}"),
        ("inspect", "--json", "{img}"),
        ("verify", "--json", "--no-fsck", "{img}"),
        ("cat", "{img}:/data/big"),
    ],
    ids=["ls", "ls-l", "inspect", "inspect-json", "verify-json", "cat"],
)
def test_closed_pipe_exits_quietly(img, args):
    files.install(img, "/data/big", os.urandom(1 << 20), mode=0o644)
    result = closed_pipe(*(a.format(img=img) for a in args))
    assert result.stderr == b""  # no "Broken pipe", no traceback, no "Exception ignored"
    assert result.returncode == EXIT_PIPE


@pytest.mark.parametrize(
    "command,codes",
    [
        ("ls {img}:/etc | head -1", "0|141"),  # small outputs may be written before head exits
        ("inspect --json {img} | head -c1", "0|141"),
        ("cat {img}:/data/big | head -c1", "141"),  # 1 MiB cannot fit in the pipe: EPIPE for sure
    ],
)
def test_pipe_into_head(img, command, codes):
    files.install(img, "/data/big", os.urandom(1 << 20), mode=0o644)
    shell = f"'{EXE}' {command.format(img=img)}; echo \"rc=${{PIPESTATUS[0]}}\" >&2"
    result = subprocess.run(["bash", "-c", shell], capture_output=True)
    err = result.stderr.decode()
    assert re.fullmatch(rf"rc=({codes})\n", err), err
    assert len(result.stdout.splitlines()) == 1


# -- the escaping itself ------------------------------------------------------------------------
_TOKEN = re.compile(r"\\(?:(\\)|([tnr])|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")
_SHORT = {"t": "\t", "n": "\n", "r": "\r"}


def unescape(text: str) -> str:
    """The inverse of escape(), as the module docstring specifies it."""

    def one(m: re.Match) -> str:
        if m[1]:
            return "\\"
        if m[2]:
            return _SHORT[m[2]]
        if m[3]:
            byte = int(m[3], 16)
            return chr(byte) if byte < 0x80 else chr(0xDC00 + byte)
        return chr(int(m[4] or m[5], 16))

    return _TOKEN.sub(one, text)


HOSTILE_CHARS = "\x1b\r\n\t\x08\x7f\x85\x9b\\\u202e\u2066\u200b\u2028\u2029\ufeff\udc80\udcff\ud800\U000e0001\xa0"
any_text = st.text(st.one_of(st.characters(exclude_categories=()), st.sampled_from(HOSTILE_CHARS)))


@settings(max_examples=500, deadline=None)
@given(any_text)
def test_escape_is_safe_and_reversible(text):
    shown = escape(text)
    assert printable(shown) and shown.isprintable()
    shown.encode("utf-8")  # strict
    assert _TOKEN.sub("", shown).count("\\") == 0  # every backslash starts one escape
    assert unescape(shown) == text
    message = escape(text, backslash=False)
    assert message.isprintable() and "\n" not in message
    message.encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_for_json_is_strict_utf8_and_keeps_the_bytes(text):
    doc = for_json({"name": text, "list": [text]})
    out = json.dumps(doc, indent=2)
    parsed = json.loads(out.encode("utf-8").decode("utf-8"))
    assert not any(re.search("[\ud800-\udfff]", s) for s in strings(parsed))
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates no byte decodes to: only the escaped form
        assert parsed["name"] == escape(text) and "name_b64" not in parsed
        return
    assert exact(parsed, "name") == raw
    assert parsed["name"] == (escape(text) if "name_b64" in parsed else text)
