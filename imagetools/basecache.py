"""Bases as pipelines deliver them: compressed (gz, bz2, xz, lzma, zst, lz4) or remote (http(s)://),
turned into an uncompressed, sparse local file once and kept in a cache.

`resolve(source)` is the one entry point: an uncompressed local image comes back as it is; a
compressed one or a URL comes back as the path of its cache entry, `<sha256>.img`, named by the
SHA-256 of the compressed (or downloaded) file and made from it only after that checksum was
checked. Entries are 0600 in a 0700 directory, published by an atomic rename under a per-entry
lock (two processes at once leave one good entry and decompress once), and never from a corrupt
or truncated input. The cache is bounded (IMAGETOOLS_BASE_CACHE_MAX bytes on disk, least
recently used entries go first) and `imagetools cache clear` empties it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import strict
from .atomic import write_atomic
from .errors import EnvironmentProblem, ImageFormatError, UsageError
from .image import compressed
from .image.compressed import Format

ENV_DIR = "IMAGETOOLS_BASE_CACHE"
ENV_MAX = "IMAGETOOLS_BASE_CACHE_MAX"
DEFAULT_MAX = 64 << 30  # bytes on disk for all entries together
LOCK_WAIT = 3600.0  # seconds another process may hold an entry's lock
META_MAX = 64 << 10
BMAP_MAX = 64 << 20
ENTRY_VERSION = 1
_HEX = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 4 << 20

Progress = Callable[[str, int, int], None]  # (phase, done, total): "hashing", "decompressing", "downloading"
Warn = Callable[[str], None]


@dataclass(frozen=True)
class Entry:
    sha256: str
    path: Path
    size: int  # of the uncompressed image
    allocated: int  # bytes it takes on disk
    format: str  # compression of the source ("none" for a download that was not compressed)
    source: str
    last_used: float


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """--base-cache DIR, else $IMAGETOOLS_BASE_CACHE, else $XDG_CACHE_HOME/imagetools/bases."""
    chosen = override or os.environ.get(ENV_DIR)
    if chosen:
        return Path(chosen).absolute()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).absolute() / "imagetools" / "bases"


def max_bytes() -> int:
    text = os.environ.get(ENV_MAX, "")
    if not text:
        return DEFAULT_MAX
    match = re.fullmatch(r"(\d{1,15})([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise UsageError(f"{ENV_MAX}={text!r}: give a size in bytes, e.g. 68719476736 or 64G")
    return int(match.group(1)) << (10 * " KMGT".index(match.group(2).upper() or " "))


def resolve(
    source: str | os.PathLike,
    *,
    sha256: str | None = None,
    progress: Progress | None = None,
    warn: Warn | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """The path of an uncompressed local file holding the image `source` names: `source` itself
    when it is one, else its cache entry (made on first use). `sha256` is the expected SHA-256
    of the file as given (compressed or downloaded); required for a URL unless the server has
    `URL.sha256` beside it."""
    from . import remote

    text = os.fspath(source)
    expected = _checked_hex(sha256) if sha256 else None
    if remote.is_url(text):
        return str(_from_url(text, expected, progress, warn or (lambda _m: None), cache_root(cache_dir)))
    fmt = compressed.detect_file(text)
    if fmt is None:
        if expected is not None:
            _check_plain(text, expected, progress)
        return text
    return str(_from_compressed(Path(text), fmt, expected, progress, cache_root(cache_dir)))


def is_compressed(path: str | os.PathLike) -> Format | None:
    """The compression of a local image (None: uncompressed, a device, or not a file)."""
    return compressed.detect_file(path)


def entries(cache_dir: str | os.PathLike | None = None) -> list[Entry]:
    """The cache's good entries, most recently used first."""
    root = cache_root(cache_dir)
    found = []
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    for name in names:
        if name.endswith(".img") and _HEX.fullmatch(name[:-4]):
            entry = _entry(root, name[:-4])
            if entry is not None:
                found.append(entry)
    return sorted(found, key=lambda e: e.last_used, reverse=True)


def clear(cache_dir: str | os.PathLike | None = None) -> tuple[int, int]:
    """Remove every entry, partial file, lock and index of the cache; (files removed, bytes freed).
    Entries in use by a running command stay readable to it until it closes them."""
    root = cache_root(cache_dir)
    if not root.is_dir():
        return 0, 0
    count = freed = 0
    for path in [*root.iterdir(), *(root / "ids").glob("*")]:
        if path.is_file() and not path.is_symlink():
            freed += path.stat().st_blocks * 512
            path.unlink(missing_ok=True)
            count += 1
    with contextlib.suppress(OSError):
        (root / "ids").rmdir()
    return count, freed


# --- local compressed files ------------------------------------------------------------------


def _from_compressed(path: Path, fmt: Format, expected: str | None, progress: Progress | None, root: Path) -> Path:
    fd = strict.open_regular(path, "base image", ImageFormatError)
    try:
        st = os.fstat(fd)
        _prepare(root)
        ident = _ident(path, st)
        digest = _known(root, ident) or _hash_fd(fd, st.st_size, progress)
        if expected is not None and digest != expected:
            raise ImageFormatError(
                f"{path}: SHA-256 is {digest}, not {expected} as given: the wrong file or a damaged copy"
            )
        entry = _entry(root, digest)
        if entry is None:
            with _locked(root, digest):
                entry = _entry(root, digest) or _publish(
                    root,
                    digest,
                    fmt.name,
                    str(path),
                    lambda out: compressed.decompress_into(
                        fd, fmt, out, what=str(path), progress=_phase(progress, "decompressing")
                    ),
                )
        _remember(root, ident, digest)
        _sync_bmap(path, entry.path)
        _touch(entry)
        return entry.path
    finally:
        os.close(fd)


def _hash_fd(fd: int, size: int, progress: Progress | None) -> str:
    h, pos = hashlib.sha256(), 0
    while chunk := os.pread(fd, _HASH_CHUNK, pos):
        h.update(chunk)
        pos += len(chunk)
        if progress:
            progress("hashing", pos, size)
    return h.hexdigest()


def _check_plain(path: str, expected: str, progress: Progress | None) -> None:
    fd = strict.open_regular(path, "base image", ImageFormatError)
    try:
        digest = _hash_fd(fd, os.fstat(fd).st_size, progress)
    finally:
        os.close(fd)
    if digest != expected:
        raise ImageFormatError(
            f"{path}: SHA-256 is {digest}, not {expected} as given: the wrong file or a damaged copy"
        )


def _sync_bmap(source: Path, entry: Path) -> None:
    """The bmap beside the source, found as bmaptool finds it (`image.sdimg.bmap` beside
    `image.sdimg.xz`), goes beside the entry, where a flash looks for it; none there: none here."""
    target = Path(f"{entry}.bmap")
    found = _bmap_beside(source)
    if found is None:
        target.unlink(missing_ok=True)
        return
    blob = strict.read_regular(found, BMAP_MAX, "bmap", ImageFormatError)
    try:
        if target.read_bytes() == blob:
            return
    except OSError:
        pass
    write_atomic(target, blob, mode=0o600, durable=False)


def _bmap_beside(source: Path) -> Path | None:
    """bmaptool's search: IMAGE.bmap, then with one extension stripped at a time."""
    name = str(source)
    while True:
        candidate = Path(name + ".bmap")
        if candidate.is_file():
            return candidate
        name, ext = os.path.splitext(name)
        if not ext:
            return None


# --- remote files ----------------------------------------------------------------------------


def _from_url(url: str, expected: str | None, progress: Progress | None, warn: Warn, root: Path) -> Path:
    from . import remote

    if url.startswith("http://"):
        warn(
            f"{url}: plain http, the download is not protected in transit (its SHA-256 still is checked; use https://)"
        )
    if expected is None:
        expected = remote.sidecar_sha256(url)
    _prepare(root)
    entry = _entry(root, expected)
    if entry is None:
        with _locked(root, expected):
            entry = _entry(root, expected) or _download(url, expected, progress, root)
    _touch(entry)
    return entry.path


def _download(url: str, digest: str, progress: Progress | None, root: Path) -> Entry:
    """The file downloaded (resuming a partial download) and checked, then decompressed into the
    entry; an uncompressed download becomes the entry itself."""
    from . import remote

    partial = root / f".{digest}.download"
    remote.download(url, partial, digest, limit=max_bytes(), progress=_phase(progress, "downloading"))
    fd = strict.open_regular(partial, "download", ImageFormatError)
    try:
        fmt = compressed.detect(os.pread(fd, 16, 0))
        if fmt is None:
            return _publish_file(root, digest, partial, url)
        entry = _publish(
            root,
            digest,
            fmt.name,
            url,
            lambda out: compressed.decompress_into(fd, fmt, out, what=url, progress=_phase(progress, "decompressing")),
        )
    finally:
        os.close(fd)
    partial.unlink(missing_ok=True)
    return entry


# --- entries ---------------------------------------------------------------------------------


def _prepare(root: Path) -> None:
    """The cache directory, 0700 and ours (a directory others can write to could swap entries)."""
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / "ids").mkdir(exist_ok=True, mode=0o700)
        st = os.lstat(root)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot create the base cache {root}: {exc.strerror} (set {ENV_DIR} or --base-cache to another directory)"
        ) from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise EnvironmentProblem(
            f"base cache {root} is not a directory of this user: set {ENV_DIR} or --base-cache to another directory"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(root, 0o700)


def _publish(root: Path, digest: str, fmt: str, source: str, fill: Callable[[int], int]) -> Entry:
    """A new entry: `fill` writes the image into a private temporary file; it is synced, checked
    against the bound, and renamed into place with its record. Nothing stays on any error."""
    tmp = root / f".{digest}.partial-{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            size = fill(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        return _publish_file(root, digest, tmp, source, fmt, size)
    finally:
        tmp.unlink(missing_ok=True)


def _publish_file(
    root: Path, digest: str, path: Path, source: str, fmt: str = "none", size: int | None = None
) -> Entry:
    st = os.stat(path)
    allocated, limit = st.st_blocks * 512, max_bytes()
    if allocated > limit:
        raise EnvironmentProblem(
            f"{source} takes {allocated} bytes decompressed, more than the base cache "
            f"may hold ({limit}): raise {ENV_MAX}"
        )
    _evict(root, limit - allocated)
    os.chmod(path, 0o600)
    meta = {
        "version": ENTRY_VERSION,
        "sha256": digest,
        "format": fmt,
        "size": st.st_size if size is None else size,
        "source": source[:4096],
    }
    write_atomic(root / f"{digest}.json", json.dumps(meta).encode(), mode=0o600)
    os.replace(path, root / f"{digest}.img")
    _fsync_dir(root)
    entry = _entry(root, digest)
    if entry is None:
        raise EnvironmentProblem(f"base cache {root}: the entry {digest}.img vanished as it was made")
    return entry


def _entry(root: Path, digest: str) -> Entry | None:
    """The entry if it is whole: its record names it, its size is the recorded one, it is a
    private regular file of ours. A bad entry is removed (the next use makes it again)."""
    image, record = root / f"{digest}.img", root / f"{digest}.json"
    try:
        st = os.lstat(image)
        meta = strict.loads(strict.read_regular(record, META_MAX, "base cache record", follow=False), str(record))
    except (OSError, UsageError):
        return None
    good = (
        isinstance(meta, dict)
        and meta.get("version") == ENTRY_VERSION
        and meta.get("sha256") == digest
        and meta.get("size") == st.st_size
        and stat.S_ISREG(st.st_mode)
        and st.st_uid == os.geteuid()
        and stat.S_IMODE(st.st_mode) == 0o600
        and isinstance(meta.get("format"), str)
        and isinstance(meta.get("source"), str)
    )
    if not good:
        for path in (image, record, Path(f"{image}.bmap")):
            path.unlink(missing_ok=True)
        return None
    return Entry(
        digest, image, st.st_size, st.st_blocks * 512, meta["format"], meta["source"], os.stat(record).st_mtime
    )


def _touch(entry: Entry) -> None:
    with contextlib.suppress(OSError):
        os.utime(entry.path.with_suffix(".json"))


def _evict(root: Path, room: int) -> None:
    """Least recently used entries go until the others fit in `room` bytes."""
    present = entries(root)
    total = sum(e.allocated for e in present)
    for old in reversed(present):
        if total <= room:
            break
        for path in (old.path, old.path.with_suffix(".json"), Path(f"{old.path}.bmap")):
            path.unlink(missing_ok=True)
        total -= old.allocated


@contextlib.contextmanager
def _locked(root: Path, digest: str) -> Iterator[None]:
    """One process makes an entry; the others wait (bounded) and then find it made."""
    fd = os.open(root / f".{digest}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(
                        f"base cache {root}: another process has been making entry "
                        f"{digest[:16]}... for {LOCK_WAIT:.0f} s; try again later"
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


# --- the index from file identity to SHA-256 ------------------------------------------------


def _ident(path: Path, st: os.stat_result) -> str:
    """A file's identity: the same name, inode, size and change times mean the same bytes, so a
    station does not hash its compressed base again on every start."""
    text = f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()


def _known(root: Path, ident: str) -> str | None:
    try:
        text = strict.read_regular(root / "ids" / ident, 128, "base cache index", follow=False).decode()
    except (UsageError, UnicodeDecodeError):
        return None
    return text if _HEX.fullmatch(text) else None


def _remember(root: Path, ident: str, digest: str) -> None:
    with contextlib.suppress(OSError):
        write_atomic(root / "ids" / ident, digest.encode(), mode=0o600, durable=False)


def _checked_hex(text: str) -> str:
    value = text.strip().lower()
    if not _HEX.fullmatch(value):
        raise UsageError(f"--base-sha256 {text[:80]!r}: expected 64 hexadecimal digits")
    return value


def _phase(progress: Progress | None, phase: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(phase, done, total)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
