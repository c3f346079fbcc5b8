"""The real Mender client authenticates with the key it finds on a card flashed by `imagetools
flash`: the key is read from the FLASHED TARGET's data partition (where the client finds it,
/var/lib/mender/mender-agent.pem -> /data/mender), /etc/mender from the target's rootfs A, and
the auth request the client sends to a local HTTPS stand-in must carry the unit's public key and
be signed with it."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from support.mender_client import IDENTITY, AuthServer, run_client, unshare_works
from support.tls import self_signed

from imagetools import keys
from imagetools.layout import open_layout

pytestmark = pytest.mark.integration


@pytest.fixture
def namespaces():
    why = unshare_works()
    if why:
        pytest.skip(f"cannot run the Mender client in a private mount namespace here: {why}")


def _server_cert(d: Path) -> tuple[Path, Path]:
    return self_signed(d)


def _read(img: Path, role: str, path: str) -> bytes:
    """A file as it is on the flashed target (debugfs at the partition's offset, read-only)."""
    start = open_layout(img).require(role).partition.start
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{img}?offset={start}"], capture_output=True, check=True
    ).stdout


def test_the_real_client_authenticates_with_the_key_on_a_flashed_card(make_image, cli, tmp_path, namespaces):
    crt, server_key = _server_cert(tmp_path)
    base = make_image("sdimg", name="base.sdimg")
    with AuthServer(crt, server_key) as server:
        run = cli("modify", base, "-u", server.url, "-c", crt)
        assert run.returncode == 0, run.stderr
        (tmp_path / "devices.csv").write_text("name,mac\nunit1,02:00:00:00:00:42\n")
        run = cli(
            "emit",
            "--base",
            base,
            "--devices",
            tmp_path / "devices.csv",
            "--out-dir",
            tmp_path / "OUT",
            "--format",
            "delta",
            "--key-type",
            "rsa",
            "--bits",
            "2048",
        )
        assert run.returncode == 0, run.stderr
        unit = tmp_path / "OUT" / "unit1"
        card = tmp_path / "card.img"
        card.write_bytes(b"")
        run = cli("flash", base, card, "--unit", unit)
        assert run.returncode == 0, run.stderr + run.stdout

        pem = _read(card, "data", "/mender/mender-agent.pem")  # the key the client finds on the card
        public = keys.read_public_file(unit / "public.key")
        assert keys.same_key(keys.load_private(pem, "card key"), public)
        etc = {Path(p).name: _read(card, "rootfs-a", p) for p in ("/etc/mender/mender.conf", "/etc/mender/server.crt")}
        log, _ = run_client(tmp_path / "client", etc, key=pem)

    assert len(server.requests) == 1, log
    request = server.requests[0]
    assert json.loads(request["id_data"]) == dict([IDENTITY.split("=", 1)])
    assert keys.same_key(keys.load_public(request["pubkey"].encode(), "sent pubkey"), public)
    body, signature = server.signed[0]
    assert signature, "the auth request carries no X-MEN-Signature"
    public.verify(base64.b64decode(signature), body, padding.PKCS1v15(), hashes.SHA256())  # raises if not
