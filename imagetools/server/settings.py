"""Where the Mender Server is and how to talk to it, checked before any connection is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import UsageError
from ..mender import ENV_SERVER_URL, ENV_TOKEN

MAX_PAGES = 10_000  # 5 million devices at 500 per page
TOKEN_ENV, URL_ENV = ENV_TOKEN, ENV_SERVER_URL


@dataclass
class ServerSettings:
    """Where the server is and how to talk to it; ``token`` never appears in repr()."""

    url: str
    token: str | None = field(default=None, repr=False)
    token_source: str = ""  # e.g. "MENDER_TOKEN", shown in auth errors instead of the token
    ca_cert: str | None = None
    insecure: bool = False
    timeout: float = 30.0  # total per attempt: connect, headers and the whole body
    retries: int = 4  # extra attempts after the first
    backoff: float = 0.5  # first wait in seconds; doubles on every retry
    max_wait: float = 120.0  # longest single wait we accept, Retry-After included
    max_pages: int = MAX_PAGES  # a device list walk longer than this is refused

    def __post_init__(self) -> None:
        self.url = normalize_url(self.url)


def normalize_url(url: str | None) -> str:
    """'https://host/' → 'https://host'; refuse anything that is not a plain http(s) URL
    (credentials, query or fragment in it would end up in messages and requests)."""
    if not url:
        raise UsageError(
            f"no Mender Server URL: pass --server URL, set {URL_ENV} or set url in the [server] "
            f"table of the config file"
        )
    url = url.strip().rstrip("/")
    if not _plain_http_url(url):
        raise UsageError(f"not a server URL: {one_line(url, 100)!r} (expected https://host[:port])")
    return url


def _plain_http_url(url: str) -> bool:
    if not url.isprintable() or " " in url:
        return False
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # e.g. 'http://[::1', a port out of range
        return False
    return (
        port_ok
        and parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not parts.query
        and not parts.fragment
        and "@" not in parts.netloc
    )


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one printable line: whitespace runs collapsed, control characters (escape
    sequences, bidi overrides) escaped, cut at ``limit`` characters."""
    text = " ".join(text[: limit * 4].split())
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
