"""ls, cat, cp, install, rm on files inside images (IMAGE:/path), in place."""

from __future__ import annotations

import os
import posixpath
import stat as stat_mod
import sys

import click

from .. import files
from ..atomic import write_atomic
from ..errors import UsageError
from ..fs import Entry, NotFoundError
from ..fs.base import check_mode
from ..mender import BACKENDS, NATIVE
from ..paths import parse_image_path, require_image_path
from .base import main, print_envelope, print_table, warn
from .bases import local_base, refuse_compressed
from .options import layout_options
from .text import escape

_TYPE_BITS = {"file": stat_mod.S_IFREG, "dir": stat_mod.S_IFDIR, "symlink": stat_mod.S_IFLNK, "other": 0}

backend_option = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=NATIVE,
    show_default=True,
    help="native edits partitions in place; mender-artifact runs the reference tool (slow, exactly 4 partitions).",
)
partition_option = click.option(
    "--partition",
    type=click.IntRange(min=1),
    metavar="N",
    help="Address partition N directly; the path is then inside that partition.",
)
rootfs_option = click.option(
    "--rootfs",
    type=click.Choice(["a", "b"]),
    default="a",
    show_default=True,
    help="Which root filesystem to read rootfs paths from.",
)


def parse_mode(text: str) -> int:
    """Octal like chmod/install: '600' and '0600' are both 0600 (mender-artifact reads 600 as decimal)."""
    try:
        return check_mode(int(text, 8))
    except ValueError:
        raise UsageError(f"mode must be octal digits like 600 or 0640, not {text!r}") from None


def parse_id(text: str, what: str) -> int:
    if not text.isdigit():
        raise UsageError(f"{what} must be numeric (e.g. 0), not {text!r}: names depend on the image's /etc/passwd")
    return int(text)


def _report(change: files.Change) -> None:
    for message in change.warnings:
        warn(message)


def _long_row(e: Entry) -> list[str]:
    name = f"{e.name} -> {e.target}" if e.type == "symlink" else e.name
    return [stat_mod.filemode(_TYPE_BITS[e.type] | e.mode), str(e.uid), str(e.gid), str(e.size), name]


@main.command("ls")
@click.option("-l", "long", is_flag=True, help="Long listing: mode, owner, group, size.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@partition_option
@rootfs_option
@layout_options
@click.argument("target", metavar="IMAGE:/PATH")
def ls_cmd(
    long: bool, as_json: bool, partition: int | None, rootfs: str, overrides: dict[str, int], target: str
) -> None:
    """List a directory (or show a file) inside an image.

    IMAGE:/data/... is in the data partition, IMAGE:/uboot/..., /boot/efi/... and /boot/grub/...
    in the boot partition, any other path in the root filesystem (--rootfs b reads rootfs B);
    --partition N addresses a partition directly. Links are followed as the device follows them.

    Full reference: docs/commands/files.md
    """
    where = require_image_path(target)
    follow = not (long or as_json) or target.endswith("/")  # like ls: `ls -l link` shows the link
    listing = files.list_path(
        local_base(where.image), where.path, follow=follow, partition=partition, rootfs=rootfs, overrides=overrides
    )
    if as_json:
        print_envelope(
            "ls",
            True,
            [e.to_dict() for e in listing.entries],
            {"entries": len(listing.entries)},
            path=where.path,
            where=listing.where,
            type=listing.entry.type,
        )
    elif long:
        print_table(["MODE", "UID", "GID", "SIZE", "NAME"], [_long_row(e) for e in listing.entries])
    else:
        for entry in listing.entries:
            click.echo(escape(entry.name))


@main.command("cat")
@backend_option
@partition_option
@rootfs_option
@layout_options
@click.argument("target", metavar="IMAGE:/PATH")
def cat_cmd(backend: str, partition: int | None, rootfs: str, overrides: dict[str, int], target: str) -> None:
    """Write a file from inside an image to stdout.

    IMAGE:/data/... is in the data partition, IMAGE:/uboot/..., /boot/efi/... and /boot/grub/...
    in the boot partition, any other path in the root filesystem (--rootfs b reads rootfs B);
    --partition N addresses a partition directly. Links are followed as the device follows them.

    Full reference: docs/commands/files.md
    """
    where = require_image_path(target)
    result = files.read_path(
        local_base(where.image), where.path, backend=backend, partition=partition, rootfs=rootfs, overrides=overrides
    )
    _write_stdout(result.data)


@main.command("cp")
@backend_option
@click.option("-p", "parents", is_flag=True, help="Create missing parent directories in the image.")
@partition_option
@rootfs_option
@layout_options
@click.argument("source", metavar="SRC")
@click.argument("dest", metavar="DST")
def cp_cmd(
    backend: str, parents: bool, partition: int | None, rootfs: str, overrides: dict[str, int], source: str, dest: str
) -> None:
    """Copy a file into or out of an image: exactly one of SRC and DST is IMAGE:/PATH.

    Into the image the file keeps the host file's permission bits (owner 0:0; 0600 from stdin
    '-'); out of the image the host file gets the image file's permission bits.

    IMAGE:/data/... is in the data partition, IMAGE:/uboot/..., /boot/efi/... and /boot/grub/...
    in the boot partition, any other path in the root filesystem (written to rootfs A and B);
    --partition N addresses a partition directly.

    Full reference: docs/commands/files.md
    """
    src, dst = parse_image_path(source), parse_image_path(dest)
    if (src is None) == (dst is None):
        raise UsageError("cp needs exactly one IMAGE:/PATH side and one host path")
    if dst is not None:
        require_image_path(dest)
        refuse_compressed(dst.image, "cp")
        data, mode = _read_host(source)
        target = dst.path
        if dest.endswith("/") or _is_image_dir(dst.image, target, partition, overrides):
            if source == "-":
                raise UsageError("cp from stdin needs a file name in the image, not a directory")
            target = posixpath.join(target, os.path.basename(source))
        _report(
            files.install(
                dst.image,
                target,
                data,
                mode=mode,
                parents=parents,
                backend=backend,
                partition=partition,
                overrides=overrides,
            )
        )
        return
    assert src is not None  # exactly one side is in the image (checked above)
    require_image_path(source)
    result = files.read_path(
        local_base(src.image), src.path, backend=backend, partition=partition, rootfs=rootfs, overrides=overrides
    )
    mode = result.entry.mode & 0o777 if result.entry else 0o600
    _write_host(dest, os.path.basename(src.path), result.data, mode)


def _is_image_dir(image: str, path: str, partition: int | None, overrides: dict[str, int]) -> bool:
    try:
        entry = files.list_path(image, path, partition=partition, overrides=overrides).entry
    except NotFoundError:
        return False
    return entry.type == "dir"


def _read_host(source: str) -> tuple[bytes, int]:
    if source == "-":
        return sys.stdin.buffer.read(), 0o600
    with open(source, "rb") as fh:
        return fh.read(), stat_mod.S_IMODE(os.fstat(fh.fileno()).st_mode)


def _write_stdout(data: bytes) -> None:
    """All of `data`, byte-exact. BufferedWriter.write returns a short count instead of raising
    when the reader of a pipe goes away mid-write; writing the rest raises BrokenPipeError, so
    `cat IMAGE:big | head -c1` ends like any other closed pipe, not as a silent success."""
    out, view = sys.stdout.buffer, memoryview(data)
    while view:
        view = view[out.write(view) :]
    out.flush()


def _write_host(dest: str, name: str, data: bytes, mode: int) -> None:
    """A regular file gets the image file's mode from its first byte and appears complete or not
    at all; something else that exists (a FIFO, /dev/null) is written to, never replaced."""
    if dest == "-":
        _write_stdout(data)
        return
    if os.path.isdir(dest):
        dest = os.path.join(dest, name)
    if os.path.exists(dest) and not os.path.isfile(dest):
        with open(dest, "wb") as fh:
            fh.write(data)
        return
    write_atomic(dest, data, mode=mode)


@main.command("install")
@click.option(
    "-m", "--mode", "mode_text", metavar="MODE", help="Octal mode, like install(1): 600 = 0600. Default 0755."
)
@click.option("-o", "--owner", "owner", default="0", show_default=True, metavar="UID", help="Numeric owner.")
@click.option("-g", "--group", "group", default="0", show_default=True, metavar="GID", help="Numeric group.")
@click.option("-p", "parents", is_flag=True, help="Create missing parent directories (0755, root).")
@click.option("-d", "directory", is_flag=True, help="Create the directory IMAGE:/DIR (with parents).")
@backend_option
@partition_option
@layout_options
@click.argument("args", nargs=-1, required=True, metavar="[HOSTFILE] IMAGE:/PATH")
def install_cmd(
    mode_text: str | None,
    owner: str,
    group: str,
    parents: bool,
    directory: bool,
    backend: str,
    partition: int | None,
    overrides: dict[str, int],
    args: tuple[str, ...],
) -> None:
    """Install HOSTFILE ('-' = stdin) at IMAGE:/PATH with a mode and owner, replacing any file
    there; or with -d create a directory. Root filesystem paths are written to rootfs A and B.

    \b
      imagetools install -m 600 key.pem disk.sdimg:/data/mender/mender-agent.pem
      imagetools install -d -m 700 disk.sdimg:/data/mender

    Full reference: docs/commands/files.md
    """
    mode = parse_mode(mode_text) if mode_text is not None else 0o755
    uid, gid = parse_id(owner, "owner"), parse_id(group, "group")
    if directory:
        if len(args) != 1:
            raise UsageError("install -d takes exactly one IMAGE:/DIR")
        where = require_image_path(args[0])
        refuse_compressed(where.image, "install")
        _report(
            files.make_dir(
                where.image,
                where.path,
                mode=mode,
                uid=uid,
                gid=gid,
                backend=backend,
                partition=partition,
                overrides=overrides,
            )
        )
        return
    if len(args) != 2:
        raise UsageError("install takes HOSTFILE IMAGE:/PATH (or -d IMAGE:/DIR)")
    where = require_image_path(args[1])
    refuse_compressed(where.image, "install")
    data = sys.stdin.buffer.read() if args[0] == "-" else _read_host(args[0])[0]
    _report(
        files.install(
            where.image,
            where.path,
            data,
            mode=mode,
            uid=uid,
            gid=gid,
            parents=parents,
            backend=backend,
            partition=partition,
            overrides=overrides,
        )
    )


@main.command("rm")
@click.option("-r", "recursive", is_flag=True, help="Remove directories and their contents.")
@backend_option
@partition_option
@layout_options
@click.argument("target", metavar="IMAGE:/PATH")
def rm_cmd(recursive: bool, backend: str, partition: int | None, overrides: dict[str, int], target: str) -> None:
    """Remove a file, symlink or (with -r) directory inside an image; rootfs paths from A and B.

    IMAGE:/data/... is in the data partition, IMAGE:/uboot/..., /boot/efi/... and /boot/grub/...
    in the boot partition, any other path in the root filesystem (removed from rootfs A and B);
    rm removes a link, not its target.

    Full reference: docs/commands/files.md
    """
    where = require_image_path(target)
    refuse_compressed(where.image, "rm")
    _report(
        files.remove(
            where.image, where.path, recursive=recursive, backend=backend, partition=partition, overrides=overrides
        )
    )
