"""Remote bases: an image (compressed or not) downloaded over https (http with a warning), checked
against a SHA-256 given by the caller or published beside it as `URL.sha256`.

Everything the server sends is bounded: the checksum file (4 KiB), the image (the cache's size
bound), each wait for data (a read timeout) and the whole download (a deadline). A download cut
off resumes where it stopped, with a Range request; the file is written sparse as it arrives.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .errors import EnvironmentProblem, ImageFormatError, UsageError
from .image.compressed import SparseWriter

ENV_TIMEOUT = "IMAGETOOLS_DOWNLOAD_TIMEOUT"
DEFAULT_DEADLINE = 3600.0  # seconds for a whole download
READ_TIMEOUT = 30.0  # seconds without a byte from the server
SIDECAR_MAX = 4096
MAX_REDIRECTS = 5
_CHUNK = 1 << 20
_SUM_LINE = re.compile(r"([0-9a-fA-F]{64})(?:[ \t]+\*?(\S.*?))?[ \t]*")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def is_url(text: str) -> bool:
    return text[:8].lower() == "https://" or text[:7].lower() == "http://"


def sidecar_sha256(url: str) -> str:
    """The SHA-256 published as URL.sha256 (sha256sum's format: `HEX  NAME` or `HEX` alone)."""
    sidecar = url + ".sha256"
    body = _get_small(sidecar)
    name = os.path.basename(urlsplit(url).path)
    try:
        lines = [line for line in body.decode("ascii").splitlines() if line.strip()]
    except UnicodeDecodeError:
        lines = []
    sums = [m for m in (_SUM_LINE.fullmatch(line.strip()) for line in lines) if m]
    if not lines or len(sums) != len(lines):
        raise UsageError(f"{sidecar} is not a sha256sum file; give --base-sha256 HEX")
    chosen = [m for m in sums if m.group(2) in (None, name)]
    if len(chosen) != 1:
        raise UsageError(f"{sidecar} names no single checksum for {name}; give --base-sha256 HEX")
    return chosen[0].group(1).lower()


def download(
    url: str, partial: Path, sha256: str, *, limit: int, progress: Callable[[int, int], None] | None = None
) -> int:
    """url into `partial` (0600, sparse), resuming what an earlier run left there; its SHA-256
    checked. Returns its size. On a mismatch the partial file is removed."""
    import httpx

    deadline = time.monotonic() + _deadline()
    have, digest = _resume_state(partial)
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        with _client() as client, client.stream("GET", url, headers=headers) as response:
            start, total = _start_of(response, url, have)
            if start == 0 and have:
                digest, have = hashlib.sha256(), 0
                os.ftruncate(fd, 0)
            if total is not None and total > limit:
                raise UsageError(
                    f"{url} is {total} bytes, more than the base cache may hold ({limit}); "
                    "raise IMAGETOOLS_BASE_CACHE_MAX"
                )
            writer = SparseWriter(fd, limit, url)
            writer.pos = have
            for chunk in response.iter_raw(_CHUNK):
                digest.update(chunk)
                writer.write(chunk)
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(
                        f"{url}: the download took longer than {_deadline():.0f} s "
                        f"(set {ENV_TIMEOUT}); run again to resume it"
                    )
                if progress:
                    progress(writer.pos + len(writer.pending), total or 0)
            size = writer.finish()
            os.fsync(fd)
    except httpx.HTTPError as exc:
        raise EnvironmentProblem(f"cannot download {url}: {_reason(exc)}; run again to resume") from None
    finally:
        os.close(fd)
    if total is not None and size != total:
        raise EnvironmentProblem(f"{url}: the server sent {size} of {total} bytes; run again to resume")
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise ImageFormatError(
            f"{url}: SHA-256 of the download is {digest.hexdigest()}, not {sha256}: "
            "the wrong file or a damaged download (removed)"
        )
    return size


def _resume_state(partial: Path) -> tuple[int, hashlib._Hash]:
    """Bytes already there and their hash (holes read as the zeros they stand for)."""
    digest = hashlib.sha256()
    try:
        fd = os.open(partial, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return 0, digest
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or not (st.st_mode & 0o077) == 0:
            raise EnvironmentProblem(f"{partial} is not a private file of this user: remove it")
        pos = 0
        while chunk := os.pread(fd, 4 << 20, pos):
            digest.update(chunk)
            pos += len(chunk)
        return pos, digest
    finally:
        os.close(fd)


def _start_of(response, url: str, have: int) -> tuple[int, int | None]:
    """Where the body starts in the file and the file's whole size (None: not said)."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
        if not match or int(match.group(1)) != have:
            raise EnvironmentProblem(
                f"{url}: the server answered the range request with "
                f"{response.headers.get('content-range')!r}; remove the partial download"
            )
        return have, None if match.group(3) == "*" else int(match.group(3))
    if response.status_code == 200:
        length = response.headers.get("content-length")
        return 0, int(length) if length and length.isdigit() else None
    if 400 <= response.status_code < 500:
        raise UsageError(f"{url}: HTTP {response.status_code}; check the URL")
    raise EnvironmentProblem(f"{url}: HTTP {response.status_code} from the server; try again later")


def _get_small(url: str) -> bytes:
    import httpx

    try:
        with _client() as client, client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as r:
            if r.status_code == 404:
                raise UsageError(f"give --base-sha256 HEX: the server has no {url} (HTTP 404)")
            if r.status_code != 200:
                raise EnvironmentProblem(f"{url}: HTTP {r.status_code}; give --base-sha256 HEX")
            body = b""
            for chunk in r.iter_raw(SIDECAR_MAX):
                body += chunk
                if len(body) > SIDECAR_MAX:
                    raise UsageError(f"{url} is larger than {SIDECAR_MAX} bytes: not a checksum file")
            return body
    except httpx.HTTPError as exc:
        raise EnvironmentProblem(f"cannot fetch {url}: {_reason(exc)}") from None


def _client():
    import httpx

    return httpx.Client(
        timeout=httpx.Timeout(READ_TIMEOUT), follow_redirects=True, max_redirects=MAX_REDIRECTS, trust_env=True
    )


def _deadline() -> float:
    text = os.environ.get(ENV_TIMEOUT, "")
    try:
        value = float(text) if text else DEFAULT_DEADLINE
    except ValueError:
        value = -1.0
    if not 0 < value <= 7 * 86400:
        raise UsageError(f"{ENV_TIMEOUT}={text!r}: give seconds, e.g. 3600")
    return value


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
