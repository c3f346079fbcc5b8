"""What an API version offers preauthorization, so callers ask the version instead of checking
its name: each version is one module (deviceauth: v2, admission: v1) holding one PreauthApi."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..keys import PublicKey
    from .transport import MenderClient


@dataclass(frozen=True)
class Created:
    """Preauthorized now (201)."""

    device_id: str | None
    detail: str = ""


@dataclass(frozen=True)
class Taken:
    """The identity was there already (409): the device and its (pubkey PEM, status) sets."""

    device_id: str | None
    device_status: str | None
    sets: list[tuple[str | None, str | None]] = field(default_factory=list)


@dataclass(frozen=True)
class PreauthApi:
    """One API version as preauth push uses it."""

    name: str  # --api value: "v2"
    title: str  # what a dry run says it would POST to: "deviceauth v2"
    servers: str  # which Mender Servers have it: "Mender 2.x and later"
    long_name: str  # for messages: "legacy admission API"
    force: bool  # has the force flag (replace an identity's keys)
    lists_devices: bool  # its devices can be listed (status, remove, left-behind checks)
    preauthorize: Callable[[MenderClient, Mapping[str, str], str, PublicKey, bool], Created | Taken]
