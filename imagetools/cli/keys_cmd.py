"""keygen, inject, verify: the device-key commands.

The library modules behind inject/verify are imported inside the commands so `keygen` and
`--help` stay fast and independent of the image/filesystem layers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from .. import keys
from ..errors import UsageError, VerifyFailed
from ..mender import BACKENDS, KEY_PATH, NATIVE
from .base import echo, is_tty, main, print_envelope, print_table, status_style, warn
from .bases import base_input, for_writing
from .options import layout_options
from .server_options import server_key_options


@main.command()
@click.option(
    "--type", "key_type", type=click.Choice(keys.KEY_TYPES), default="rsa", show_default=True, help="Key algorithm."
)
@click.option(
    "--bits",
    type=int,
    default=None,
    help=f"RSA size, {keys.MIN_RSA_BITS} to {keys.MAX_RSA_BITS} (default {keys.DEFAULT_RSA_BITS}).",
)
@click.option("--curve", type=click.Choice(list(keys.CURVES)), default=None, help="ECDSA curve (default p256).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(keys.FORMATS),
    default=None,
    help="Private key format: pkcs1 = traditional (RSA PKCS#1, EC SEC1; default), pkcs8. Ed25519 is always pkcs8.",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("keys-client-generated"),
    show_default=True,
)
@click.option(
    "--prefix",
    envvar="PREFIX_KEY",
    default="",
    show_envvar=True,
    help="File name prefix: {PREFIX}private.key, {PREFIX}public.key.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Make N pairs in parallel, numbered {PREFIX}{n}-private.key.",
)
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Worker processes (default: all cores).")
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
@click.option("--json", "as_json", is_flag=True, help="List the files made, with SHA-256 fingerprints.")
def keygen(
    key_type: str,
    bits: int | None,
    curve: str | None,
    fmt: str | None,
    out_dir: Path,
    prefix: str,
    count: int,
    jobs: int | None,
    force: bool,
    as_json: bool,
) -> None:
    """Generate device key pairs, like Mender's keygen-client.

    The private key (0600 from its first byte) is what inject puts into the image; the public key
    is SPKI 'BEGIN PUBLIC KEY', the only form the Mender Server accepts for preauthorization.

    \b
    Examples:
      imagetools keygen                               # RSA-3072, keys-client-generated/private.key
      PREFIX_KEY=unit42- imagetools keygen --type ed25519
      imagetools keygen --count 100 --prefix unit- --json

    Full reference: docs/commands/keygen.md
    """
    spec = _spec(key_type, bits, curve, fmt)
    pairs = keys.pair_paths(out_dir, prefix, count)
    if count > 1 and is_tty() and not as_json:
        with click.progressbar(length=count, label="generating keys", file=sys.stderr) as bar:
            made = keys.generate_files(spec, pairs, force=force, jobs=jobs, progress=lambda _: bar.update(1))
    else:
        made = keys.generate_files(spec, pairs, force=force, jobs=jobs)
    if as_json:
        print_envelope(
            "keygen",
            True,
            [
                {
                    "private": str(k.private),
                    "public": str(k.public),
                    "type": k.key_type,
                    "format": k.format,
                    "fingerprint": k.fingerprint,
                }
                for k in made
            ],
            {"count": len(made)},
            out_dir=str(out_dir.absolute()),
        )
        return
    print_table(
        ["PRIVATE (0600)", "PUBLIC", "TYPE", "SHA256 FINGERPRINT"],
        [(k.private, k.public, f"{k.key_type} {k.format.upper()}", k.fingerprint) for k in made],
    )


def _spec(key_type: str, bits: int | None, curve: str | None, fmt: str | None) -> keys.KeySpec:
    """Refuse options that do not apply to the chosen type rather than silently ignoring them."""
    if bits is not None and key_type != "rsa":
        raise UsageError(f"--bits applies to RSA keys, not {key_type}")
    if curve is not None and key_type != "ecdsa":
        raise UsageError(f"--curve applies to ECDSA keys, not {key_type}")
    if fmt == "pkcs1" and key_type == "ed25519":
        raise UsageError("Ed25519 keys have no PKCS#1/traditional form; use --format pkcs8")
    return keys.KeySpec(
        type=key_type,
        bits=keys.DEFAULT_RSA_BITS if bits is None else bits,
        curve=curve or "p256",
        format=fmt or ("pkcs8" if key_type == "ed25519" else "pkcs1"),
    )


@main.command()
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file (PEM: PKCS#1, SEC1 or PKCS#8, unencrypted).",
)
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a new image (sparse/reflink copy) and leave IMAGE untouched.",
)
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--path", "key_path", default=KEY_PATH, show_default=True, help="Where the key goes (under /data/).")
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=NATIVE,
    show_default=True,
    help="native writes at the partition's offset; mender-artifact uses `mender-artifact install`.",
)
@layout_options
@click.option("--json", "as_json", is_flag=True, help="Report as JSON.")
def inject(
    key_file: Path,
    image: Path,
    out: Path | None,
    force: bool,
    key_path: str,
    backend: str,
    overrides: dict[str, int],
    as_json: bool,
) -> None:
    """Put a device's private key into IMAGE's data partition (mode 0600, owner 0:0).

    The key is validated first; an existing key is replaced; the image is edited in place unless
    --out is given.

    \b
    Examples:
      imagetools inject --key keys-client-generated/private.key base.sdimg --out unit42.sdimg
      imagetools inject --key unit42-private.key unit42.sdimg

    Full reference: docs/commands/inject.md
    """
    from ..inject import inject_key

    key_file = key_file.absolute()  # messages name files by their full path
    key_pem = keys.read_key_bytes(key_file, "private key")
    image, out, publish = for_writing(image, out, force, "inject")
    result = publish(
        inject_key(
            image,
            key_pem,
            out=out,
            force=force,
            path=key_path,
            backend=backend,
            overrides=overrides or None,
            key_source=str(key_file),
        )
    )
    for message in result.warnings:
        warn(message)
    if as_json:
        print_envelope(
            "inject",
            True,
            [],
            {"warnings": len(result.warnings)},
            image=result.image,
            path=key_path,
            fingerprint=result.fingerprint,
            key_type=result.key_type,
            warnings=result.warnings,
        )
        return
    echo(f"injected {result.key_type} key into {result.image}:{key_path} (mode 0600, owner 0:0)")
    echo(f"fingerprint SHA256 {result.fingerprint}")


@main.command()
@base_input("target", "base")
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--pubkey",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The public key the server expects (SPKI PEM); compared as DER.",
)
@click.option(
    "--fingerprint",
    "expected_fp",
    default=None,
    metavar="SHA256",
    help="The expected SHA-256 fingerprint of the public key (hex, colons allowed).",
)
@click.option("--no-fsck", is_flag=True, help="Skip e2fsck -fn on the data partition.")
@click.option("--path", "key_path", default=KEY_PATH, show_default=True, help="Where the key should be.")
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="An emit report.json to name the unit whose key the image holds on a "
    "mismatch (default: report.json beside the image or two levels up).",
)
@click.option(
    "--base",
    "base",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read the card back against this base: every mapped range of it (and, with "
    "--unit, the unit's blocks) must hold what a flash writes.",
)
@click.option(
    "--unit",
    "unit_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With --base: the unit the card should hold (its public key is then the expected one).",
)
@click.option(
    "--trust",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --unit: the pinned batch public key its signature must verify against.",
)
@layout_options
@server_key_options
@click.option("--json", "as_json", is_flag=True, help="Report the checks and the fingerprint as JSON.")
def verify(
    target: Path,
    pubkey: Path | None,
    expected_fp: str | None,
    no_fsck: bool,
    key_path: str,
    report_file: Path | None,
    base: Path | None,
    unit_dir: Path | None,
    trust: Path | None,
    overrides: dict[str, int],
    server_key: Callable[[Path], keys.PublicKey] | None,
    as_json: bool,
) -> None:
    """Check, read-only, that TARGET (an image file or a block device) will be accepted.

    Exit 0 if every check passed (warnings allowed), 1 if a check failed, 2 if TARGET or an
    argument is unusable.

    \b
    Examples:
      imagetools verify unit42.sdimg --pubkey keys-client-generated/unit42-public.key
      imagetools verify /dev/sdb --fingerprint 3f9a…  --no-fsck
      imagetools verify unit42.sdimg --json
      imagetools verify out/unit42/unit42.sdimg --server https://mender.example.com
      imagetools verify /dev/sdb --base base.sdimg --unit OUT/unit42   # QA: read the card back

    Full reference: docs/commands/verify.md
    """
    from ..verify import explain_mismatch, report_beside, verify_image

    checked = _read_card_back(target, base, unit_dir, trust)
    if unit_dir is not None and pubkey is None and expected_fp is None:
        pubkey = unit_dir / "public.key"
    expected, fingerprint = expected_key(pubkey, expected_fp, server_key, target)
    report = verify_image(
        target,
        expected=expected,
        expected_fingerprint=fingerprint,
        fsck=not no_fsck,
        path=key_path,
        overrides=overrides or None,
    )
    report_file = report_file or report_beside(target)
    if report_file is not None:
        explain_mismatch(report, report_file)
    if as_json:
        data = report.to_dict()
        print_envelope(
            "verify",
            report.ok,
            data.pop("checks"),
            report.summary(),
            target=data["target"],
            fingerprint=report.fingerprint,
            key_type=report.key_type,
            read_back=checked,
        )
    else:
        print_table(
            ["CHECK", "STATUS", "DETAIL"],
            [(c.name, c.status.upper(), c.detail) for c in report.checks],
            styles={1: status_style},
        )
        if report.fingerprint:
            echo()
            echo(f"key {report.key_type}, fingerprint SHA256 {report.fingerprint}")
        click.echo("verify: " + status_style("OK" if report.ok else "FAILED"))
    if not report.ok:
        names = ", ".join(c.name for c in report.failed)
        raise VerifyFailed(f"{target}: {len(report.failed)} check(s) failed: {names}")


def _read_card_back(target: Path, base: Path | None, unit_dir: Path | None, trust: Path | None) -> int | None:
    """verify --base: the card read back (bypassing the page cache) against what a flash writes;
    VerifyFailed (exit 1) names the first range that differs. None without --base."""
    if base is None:
        if unit_dir is not None or trust is not None:
            raise UsageError("--unit and --trust go with --base BASE (the card is read back against it)")
        return None
    from ..station.readback import check_card

    checked = check_card(target, base, unit_dir, trust)
    echo(f"read back {checked / 2**20:.1f} MiB of {target}: every byte as written", err=True)
    return checked


def expected_key(
    pubkey: Path | None,
    fingerprint: str | None,
    server_key: Callable[[Path], keys.PublicKey] | None = None,
    target: Path | None = None,
) -> tuple[bytes | None, str | None]:
    """Where the expected key comes from: (public key PEM bytes, fingerprint). `server_key` (from
    server_key_options) fetches the key the Mender Server holds for TARGET's unit."""
    if sum(source is not None for source in (pubkey, fingerprint, server_key)) > 1:
        raise UsageError("give only one of --pubkey, --fingerprint and --server")
    if server_key is not None:
        assert target is not None  # server_key fetches the key of TARGET's unit
        return keys.public_pem(server_key(target)), None
    if fingerprint is not None:
        return None, keys.normalize_fingerprint(fingerprint)
    if pubkey is not None:
        return keys.read_key_bytes(pubkey.absolute(), "public key"), None
    return None, None
