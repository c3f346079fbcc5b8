"""Remote bases against a local HTTP(S) server (tests/support/http_files.py), never the internet:
the checksum required (given or URL.sha256), downloaded once into the cache, resumed with Range,
bounded in size and time, plain http warned about."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from support.http_files import FileServer
from support.tls import self_signed

from imagetools import basecache, keys, remote
from imagetools.errors import EnvironmentProblem, ImageFormatError, UsageError

pytestmark = pytest.mark.integration


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def served(make_image, tmp_path, monkeypatch):
    """A base compressed with zstd, served over https with a sha256sum file beside it."""
    site = tmp_path / "site"
    site.mkdir()
    base = make_image("sdimg", name="base.sdimg")
    with open(base, "rb") as fin, open(site / "base.sdimg.zst", "wb") as fout:
        subprocess.run(["zstd", "-T0", "-q", "-c"], stdin=fin, stdout=fout, check=True)
    (site / "base.sdimg.zst.sha256").write_text(f"{sha(site / 'base.sdimg.zst')}  base.sdimg.zst\n")
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv(basecache.ENV_DIR, str(tmp_path / "cache"))
    with FileServer(site, tls=(cert, key)) as server:
        yield server, base, site


def test_flash_takes_an_https_base_checked_by_the_sha256_beside_it(served, cli, tmp_path):
    server, base, site = served
    key = tmp_path / "unit7" / "private.key"
    key.parent.mkdir()
    keys.write_secret(key, keys.private_pem(keys.generate(keys.KeySpec(type="ed25519")), "pkcs8"))
    url = f"{server.url}/base.sdimg.zst"
    proc = cli("flash", url, tmp_path / "card.img", "--key", key, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["items"][0]["state"] == "passed"
    entry = tmp_path / "cache" / f"{sha(site / 'base.sdimg.zst')}.img"
    assert entry.read_bytes() == base.read_bytes()
    assert [p for p, _ in server.requests] == ["/base.sdimg.zst.sha256", "/base.sdimg.zst"]
    assert cli("flash", url, tmp_path / "card2.img", "--key", key, "--again").returncode == 0
    assert [p for p, _ in server.requests].count("/base.sdimg.zst") == 1  # downloaded once


def test_emit_takes_a_remote_base_with_base_sha256(served, cli, tmp_path):
    server, base, site = served
    (site / "base.sdimg.zst.sha256").unlink()
    (tmp_path / "d.csv").write_text("name,mac\nu1,02:00:00:00:07:01\n")
    args = [
        "emit",
        "--base",
        f"{server.url}/base.sdimg.zst",
        "--devices",
        tmp_path / "d.csv",
        "--out-dir",
        tmp_path / "OUT",
        "--format",
        "delta",
        "--key-type",
        "ed25519",
    ]
    missing = cli(*args)
    assert missing.returncode == 2 and "--base-sha256" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1
    wrong = cli(*args, "--base-sha256", "0" * 64)
    assert wrong.returncode == 2 and "SHA-256" in wrong.stderr
    assert not list((tmp_path / "cache").glob("*.img")) and not list((tmp_path / "cache").glob(".*.download"))
    proc = cli(*args, "--base-sha256", sha(site / "base.sdimg.zst"))
    assert proc.returncode == 0, proc.stderr


def test_a_download_cut_off_resumes_with_a_range_request(make_image, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    image = make_image("sdimg", name="plain.sdimg")
    (site / "plain.sdimg").write_bytes(image.read_bytes())
    digest, size = sha(image), image.stat().st_size
    partial = tmp_path / "partial"
    with FileServer(site) as server:
        server.cut_after = size // 3
        with pytest.raises(EnvironmentProblem, match="resume"):
            remote.download(f"{server.url}/plain.sdimg", partial, digest, limit=1 << 30)
        kept = partial.stat().st_size
        assert 0 < kept < size and kept % 4096 == 0
        server.cut_after = None
        assert remote.download(f"{server.url}/plain.sdimg", partial, digest, limit=1 << 30) == size
        assert server.requests[-1][1] == f"bytes={kept}-"
    assert partial.read_bytes() == image.read_bytes()
    assert partial.stat().st_blocks * 512 <= image.stat().st_blocks * 512 + 8 * 4096  # written sparse
    assert partial.stat().st_mode & 0o777 == 0o600


def test_plain_http_is_warned_about_and_bounds_hold(make_image, tmp_path, monkeypatch, cli):
    site = tmp_path / "site"
    site.mkdir()
    image = make_image("sdimg", name="plain.sdimg")
    (site / "plain.sdimg").write_bytes(image.read_bytes())
    warnings: list[str] = []
    cache = tmp_path / "cache"
    with FileServer(site) as server:
        url = f"{server.url}/plain.sdimg"
        monkeypatch.setenv(basecache.ENV_MAX, "1M")
        with pytest.raises(UsageError, match="more than the base cache may hold"):
            basecache.resolve(url, sha256=sha(image), warn=warnings.append, cache_dir=cache)
        assert warnings and "plain http" in warnings[0]
        monkeypatch.delenv(basecache.ENV_MAX)
        monkeypatch.setenv(remote.ENV_TIMEOUT, "0.5")
        server.delay = 0.2
        with pytest.raises(EnvironmentProblem, match="took longer than"):
            basecache.resolve(url, sha256=sha(image), cache_dir=cache)
        monkeypatch.delenv(remote.ENV_TIMEOUT)
        server.delay = 0.0
        path = basecache.resolve(url, sha256=sha(image), cache_dir=cache)  # resumes, then publishes
        assert Path(path).read_bytes() == image.read_bytes() and Path(path).parent == cache
        assert any(r and r.startswith("bytes=") for _, r in server.requests)
        inspect = cli("inspect", url)
        assert inspect.returncode == 2 and "emit --base and flash" in inspect.stderr


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "not a sha256sum file"),
        ("zz  base.sdimg.zst\n", "not a sha256sum file"),
        (f"{'a' * 64}  other.img\n", "no single checksum"),
        (f"{'a' * 64}  a\n{'b' * 64}  b\n", "no single"),
    ],
)
def test_a_bad_checksum_file_is_refused(tmp_path, text, problem):
    site = tmp_path / "site"
    site.mkdir()
    (site / "base.sdimg.zst").write_bytes(b"x")
    (site / "base.sdimg.zst.sha256").write_text(text)
    with FileServer(site) as server, pytest.raises(UsageError, match=problem):
        remote.sidecar_sha256(f"{server.url}/base.sdimg.zst")


def test_a_download_whose_checksum_differs_is_removed(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "f").write_bytes(b"abc" * 1000)
    with FileServer(site) as server, pytest.raises(ImageFormatError, match="SHA-256"):
        remote.download(f"{server.url}/f", tmp_path / "p", "0" * 64, limit=1 << 20)
    assert not (tmp_path / "p").exists()
