"""Messages an operator acts on: a card pulled mid-flash, a resumed batch with other settings, a
tenant token in a mender.conf others may read. Real images, the real command line."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from support.inputs import devices_csv

from imagetools.image.probe import TABLE_AREA

pytestmark = pytest.mark.integration

TOKEN = "tenant-token-aGVsbG8tc2VjcmV0"


def _error_line(result) -> str:
    """The one line a failed command prints on stderr."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("imagetools: error: "), result.stderr
    return lines[0].removeprefix("imagetools: error: ")


def _zero(path: Path, offset: int, length: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(length))


# --- a card whose flash was interrupted ----------------------------------------------------------
@pytest.mark.parametrize("layout", ["sdimg", "uefiimg"])
def test_a_card_with_its_table_area_zeroed_reads_as_an_interrupted_flash(make_image, cli, layout):
    card = make_image(layout)
    _zero(card, 0, TABLE_AREA)  # what flash leaves when pulled before it wrote the tables back
    if layout == "uefiimg":
        _zero(card, card.stat().st_size - TABLE_AREA, TABLE_AREA)
    result = cli("verify", card)
    assert result.returncode == 1 and result.stdout == ""
    assert _error_line(result) == (
        f"{card}: no partition table, and its first 64 KiB are zeros: this looks like an interrupted "
        f"flash; flash it again (imagetools flash BASE {card} --unit UNIT --again)"
    )


@pytest.mark.parametrize("content", ["random", "zeros", "short"])
def test_other_files_without_a_table_are_still_not_images(tmp_path, cli, content):
    path = tmp_path / "card"
    data = {
        "random": os.urandom(1 << 20),
        "zeros": bytes(8 << 20),
        "short": bytes(TABLE_AREA // 2) + os.urandom(TABLE_AREA // 2),
    }[content]
    path.write_bytes(data)
    result = cli("verify", path)
    assert result.returncode == 2
    assert "no partition table found" in _error_line(result) and "interrupted" not in result.stderr


# --- a resumed batch with other settings ---------------------------------------------------------
def _suggested(message: str, base: Path, devices: Path, **placeholders: str) -> list[str]:
    """The emit command the refusal suggests, its placeholders filled in."""
    start = message.index("(imagetools emit ") + 1
    args = shlex.split(message[start : message.index("), or add --force")])
    fill = {"BASE": str(base), "DEVICES": str(devices), **placeholders}
    return [fill.get(arg, arg) for arg in args[1:]]


def _emit(cli, base: Path, devices: Path, out: Path, *options: object):
    """`imagetools emit` of BASE's DEVICES into OUT with ed25519 keys (fast) and OPTIONS."""
    return cli("emit", "--base", base, "--devices", devices, "--out-dir", out, "--key-type", "ed25519", *options)


def test_a_resumed_delta_batch_names_the_settings_and_keeps_its_format(make_image, cli, tmp_path):
    base, devices, out = make_image("sdimg"), devices_csv(tmp_path / "d.csv", 2), tmp_path / "OUT"
    made = _emit(cli, base, devices, out, "--format", "delta", "--no-bmap")
    assert made.returncode == 0, made.stderr
    typo_fix = cli("emit", "--base", base, "--devices", devices, "--out-dir", out)  # defaults: rsa, image
    assert typo_fix.returncode == 2
    message = _error_line(typo_fix)
    assert (
        "it was emitted with key type ed25519 and format delta and bmap off, this run asks for key "
        "type rsa3072 and format image and bmap on"
    ) in message
    command = _suggested(message, base, devices)
    assert command[command.index("--format") + 1] == "delta" and "--no-bmap" in command
    assert command[command.index("--key-type") + 1] == "ed25519"
    resumed = cli(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 skipped" in resumed.stdout


def test_a_resumed_configured_batch_names_the_option_never_the_token(make_image, cli, tmp_path):
    base, devices, out = make_image("sdimg"), devices_csv(tmp_path / "d.csv", 2), tmp_path / "OUT"
    token = tmp_path / "tenant.token"
    token.write_text(TOKEN + "\n")
    made = _emit(cli, base, devices, out, "-n", "release-7", "-t", f"@{token}", "--mode", "0600")
    assert made.returncode == 0, made.stderr
    other = _emit(cli, base, devices, out, "-n", "release-8", "-t", f"@{token}")
    assert other.returncode == 2 and TOKEN not in other.stderr
    message = _error_line(other)
    assert (
        "it was emitted with Artifact name release-7 and mender.conf mode 0600, this run asks for "
        "Artifact name release-8 and mender.conf mode none"
    ) in message
    command = _suggested(message, base, devices, **{"@TOKEN_FILE": f"@{token}"})
    assert command[command.index("-n") + 1] == "release-7" and command[command.index("--mode") + 1] == "0600"
    resumed = cli(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 skipped" in resumed.stdout


# --- a tenant token in a mender.conf others may read ---------------------------------------------
def _conf_modes(cli, image: Path) -> list[str]:
    """The mode of /etc/mender/mender.conf on rootfs A and B, as `imagetools ls` shows it."""
    modes = []
    for rootfs in ("a", "b"):
        listed = cli("ls", "--json", "--rootfs", rootfs, f"{image}:/etc/mender/mender.conf")
        assert listed.returncode == 0, listed.stderr
        modes.append(json.loads(listed.stdout)["items"][0]["mode"])
    return modes


def test_modify_warns_when_the_token_is_readable_by_others_and_mode_restricts_it(make_image, cli):
    image = make_image("sdimg")
    assert _conf_modes(cli, image) == ["0644", "0644"]  # as the base was built
    warned = cli("modify", image, "-t", TOKEN)
    assert warned.returncode == 0, warned.stderr
    assert warned.stderr.splitlines() == [
        (
            "imagetools: warning: /etc/mender/mender.conf holds the tenant token and is mode 0644, readable by "
            "its group and everyone on the device: give --mode 0600 to keep it to its owner"
        )
    ]
    as_json = cli("modify", image, "-t", TOKEN, "--json")
    assert as_json.returncode == 0 and "readable by" in as_json.stdout
    assert all(TOKEN not in out for out in (warned.stdout, warned.stderr, as_json.stdout, as_json.stderr))
    restricted = cli("modify", image, "-t", TOKEN, "--mode", "0600")
    assert restricted.returncode == 0 and restricted.stderr == ""
    assert _conf_modes(cli, image) == ["0600", "0600"]
    assert "already so" in cli("modify", image, "-t", TOKEN, "--mode", "600").stdout


@pytest.mark.parametrize("mode", ["0999", "4600", "0o600", "rw", ""])
def test_mode_must_be_octal_permission_bits(make_image, cli, mode):
    image = make_image("sdimg")
    result = cli("modify", image, "-t", TOKEN, "--mode", mode)
    assert result.returncode == 2 and "--mode" in _error_line(result)
    assert _conf_modes(cli, image) == ["0644", "0644"]


def test_emit_warns_once_and_takes_mode_per_unit(make_image, cli, tmp_path):
    base, devices = make_image("sdimg"), devices_csv(tmp_path / "d.csv", 2)
    warned = _emit(cli, base, devices, tmp_path / "A", "-t", TOKEN)
    assert warned.returncode == 0, warned.stderr
    assert warned.stderr.count("holds the tenant token and is mode 0644") == 1
    assert TOKEN not in warned.stdout + warned.stderr
    quiet = _emit(cli, base, devices, tmp_path / "B", "-t", TOKEN, "--mode", "0600")
    assert quiet.returncode == 0 and "tenant token" not in quiet.stderr
    assert _conf_modes(cli, tmp_path / "B" / "u1" / "u1.sdimg") == ["0600", "0600"]
