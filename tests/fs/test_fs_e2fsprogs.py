"""Parsing debugfs output (no subprocess): stat, ls -p, per-command sections, error lines."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from imagetools.fs.e2fsprogs import Command, Listing, Result, _errors, parse_ls, parse_stat

STAT = """Inode: 14   Type: {kind}    Mode:  {mode:04o}   Flags: 0x80000
Generation: 0    Version: 0x00000000:00000000
User: {uid:5d}   Group: {gid:5d}   Project:     0   Size: {size}
File ACL: 0
Links: 1   Blockcount: 8
{extra}"""

names = st.text(
    st.characters(blacklist_characters='/"\n\r\0', blacklist_categories=("Cs",)), min_size=1, max_size=20
).filter(lambda n: n not in (".", ".."))


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["regular", "directory", "symlink"]),
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, 2**32 - 2),
    gid=st.integers(0, 2**32 - 2),
    size=st.integers(0, 2**40),
    target=names,
)
def test_parse_stat(kind, mode, uid, gid, size, target):
    extra = f'Fast link dest: "{target}"\n' if kind == "symlink" else "EXTENTS:\n(0):1164\n"
    entry = parse_stat("/a/b", STAT.format(kind=kind, mode=mode, uid=uid, gid=gid, size=size, extra=extra))
    assert (entry.path, entry.name, entry.mode, entry.uid, entry.gid, entry.size) == ("/a/b", "b", mode, uid, gid, size)
    assert entry.type == {"regular": "file", "directory": "dir", "symlink": "symlink"}[kind]
    assert entry.target == (target if kind == "symlink" else None)


def test_parse_stat_of_a_missing_path():
    assert parse_stat("/x", "") is None


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 2**32), st.sampled_from([0o100644, 0o40755, 0o120777]), names),
        max_size=10,
        unique_by=lambda row: row[2],
    )
)
def test_parse_ls(rows):
    text = "/2/040755/0/0/.//\n/2/040755/0/0/..//\n" + "".join(
        f"/{ino}/{mode:06o}/0/0/{name}/{ino % 1000}/\n" for ino, mode, name in rows
    )
    assert parse_ls(text) == Listing([(ino, mode, name) for ino, mode, name in rows], garbled=False)


def test_sections_follow_the_echoed_commands():
    commands = [Command('stat "/a"'), Command('stat "/b"'), Command('stat "/c"')]
    out = b'debugfs: stat "/a"\nInode: 1\ndebugfs: stat "/b"\ndebugfs: stat "/c"\nInode: 3\n'
    assert Result(out).sections(commands) == ["Inode: 1\n", "", "Inode: 3\n"]


def test_errors_skip_only_the_banner():
    stderr = b"debugfs 1.47.0 (5-Feb-2023)\nwrite: Could not allocate block in ext2 filesystem \n\n"
    result = Result(b"", _errors(stderr))
    assert result.errors == ["write: Could not allocate block in ext2 filesystem"]
    assert result.no_space
    assert _errors(b"debugfs 1.46.5 (30-Dec-2021)\n") == []
