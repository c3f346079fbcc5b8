"""Every Mender convention, once: where the client looks, how identities compare, what the
partitions and servers are called. No imports beyond the standard library, so the CLI can use
it without paying for the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

# --- the device's filesystem (meta-mender, mender-convert) ------------------------------------
DATA_MOUNT = "/data"  # where the data partition is mounted
BOOT_MOUNTS = ("/uboot", "/boot/efi", "/boot/grub")  # where the boot/EFI partition is mounted
DATASTORE = "/var/lib/mender"  # the client's datastore: a link to /data/mender
DATA_DATASTORE = DATA_MOUNT + "/mender"  # where that link must lead
KEY_PATH = DATA_DATASTORE + "/mender-agent.pem"  # the device key, as mender-artifact addresses it
CLIENT_KEY_PATH = DATASTORE + "/mender-agent.pem"  # the same key as the client opens it

# --- the client's configuration (both rootfs; the fallback file through the datastore link) ---
CONF_PATH = "/etc/mender/mender.conf"  # the main file: its settings win
FALLBACK_CONF_PATH = DATASTORE + "/mender.conf"  # read first, then CONF_PATH over it
ARTIFACT_INFO_PATH = "/etc/mender/artifact_info"  # `artifact_name=NAME`
ARTIFACT_NAME_FIELD = "artifact_name"
DEVICE_TYPE_PATH = DATASTORE + "/device_type"  # `device_type=TYPE`, on the data partition
DEVICE_TYPE_FIELD = "device_type"
SERVER_CERT_PATH = "/etc/mender/server.crt"  # mender-artifact modify -c puts it here
VERIFY_KEY_PATH = "/etc/mender/artifact-verify-key.pem"  # and -v here
# Settings in mender.conf. The client (Go's encoding/json in 3.x) matches names without regard
# to case; an object in a later file is merged field by field, anything else replaced.
SERVER_URL = "ServerURL"
SERVERS = "Servers"  # a list of {"ServerURL"}; the client refuses it beside ServerURL
TENANT_TOKEN = "TenantToken"
SERVER_CERTIFICATE = "ServerCertificate"
ARTIFACT_VERIFY_KEY = "ArtifactVerifyKey"
AUTH_PRIVATE_KEY = "Security.AuthPrivateKey"  # set: a missing or bad key is fatal, not replaced
# What the client reads, with the JSON type it expects (clients 3.x to 5.x); a value of another
# type makes the client fail to parse the whole file. "integer" fields are Go ints: 32 bits on
# 32-bit ARM devices.
CONF_TYPES = {
    "ArtifactVerifyKey": "string",
    "ArtifactVerifyKeys": "list",
    "BootUtilitiesGetNextActivePart": "string",
    "BootUtilitiesSetActivePart": "string",
    "Connectivity": "object",
    "Connectivity.DisableKeepAlive": "boolean",
    "Connectivity.IdleConnTimeoutSeconds": "integer",
    "DaemonLogLevel": "string",
    "DBus": "object",
    "DBus.Enabled": "boolean",
    "DeviceTypeFile": "string",
    "HttpsClient": "object",
    "HttpsClient.Certificate": "string",
    "HttpsClient.Key": "string",
    "HttpsClient.SSLEngine": "string",
    "InventoryPollIntervalSeconds": "integer",
    "ModuleTimeoutSeconds": "integer",
    "RetryPollCount": "integer",
    "RetryPollIntervalSeconds": "integer",
    "RootfsPartA": "string",
    "RootfsPartB": "string",
    "Security": "object",
    "Security.AuthPrivateKey": "string",
    "Security.SSLEngine": "string",
    "ServerCertificate": "string",
    "Servers": "list",
    "ServerURL": "string",
    "SkipVerify": "boolean",
    "StateScriptRetryIntervalSeconds": "integer",
    "StateScriptRetryTimeoutSeconds": "integer",
    "StateScriptTimeoutSeconds": "integer",
    "TenantToken": "string",
    "UpdateControlMapBootExpirationTimeSeconds": "integer",
    "UpdateControlMapExpirationTimeSeconds": "integer",
    "UpdateLogPath": "string",
    "UpdatePollIntervalSeconds": "integer",
}

# --- partitions -------------------------------------------------------------------------------
ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
SWAP_GUID = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
LINUX_GUIDS = {
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "44479540-f297-41b2-9af7-d131d5f0458a": "Linux root (x86)",
    "b921b045-1df0-41c3-af44-4c6f280d3fae": "Linux root (ARM64)",
    "69dad710-2ce4-4e3c-b16c-21a1d49abed3": "Linux root (ARM)",
    "4d21b016-b534-45c2-a9fb-5c16e091fd2d": "Linux /var",
    "933ac7e1-2eb4-4f13-b844-0e14e2aef915": "Linux /home",
    "3b8f8425-20e0-4f3b-907f-1a25a76f98e8": "Linux /srv",
}
FAT_GUIDS = {ESP_GUID: "EFI System", "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Basic data"}
GPT_TYPE_NAMES = {**FAT_GUIDS, **LINUX_GUIDS, SWAP_GUID: "Linux swap"}
MBR_TYPE_NAMES = {
    "0x01": "FAT12",
    "0x04": "FAT16 <32M",
    "0x05": "Extended",
    "0x06": "FAT16",
    "0x0b": "FAT32",
    "0x0c": "FAT32 LBA",
    "0x0e": "FAT16 LBA",
    "0x0f": "Extended LBA",
    "0x82": "Linux swap",
    "0x83": "Linux",
    "0x85": "Linux extended",
    "0x8e": "Linux LVM",
    "0xee": "GPT",
    "0xef": "EFI",
}
MBR_FAT_TYPES = frozenset({"0x01", "0x04", "0x06", "0x0b", "0x0c", "0x0e", "0xef"})
MBR_LINUX_TYPES = frozenset({"0x83"})
MBR_SWAP_TYPE = "0x82"

# --- ways to write into an image --------------------------------------------------------------
NATIVE = "native"  # in place, at the partition's offset (debugfs, pyfatfs)
MENDER_ARTIFACT = "mender-artifact"  # the reference tool, for cross-checks
BACKENDS = (NATIVE, MENDER_ARTIFACT)

# --- the Mender Server ------------------------------------------------------------------------
ENV_SERVER_URL = "MENDER_SERVER_URL"
ENV_TOKEN = "MENDER_TOKEN"
ENV_PASSWORD = "MENDER_PASSWORD"
DEVICES_V2 = "/api/management/v2/devauth/devices"
DEVICE_V2 = DEVICES_V2 + "/{device_id}"  # GET a device; DELETE decommissions it
AUTH_SET_V2 = DEVICES_V2 + "/{device_id}/auth/{auth_id}"  # DELETE removes one auth set
PREAUTHORIZED, ACCEPTED = "preauthorized", "accepted"  # auth set (and device) statuses
ADMISSION_V1 = "/api/management/v1/admission/devices"
LOGIN = "/api/management/v1/useradm/auth/login"
MAX_PER_PAGE = 500


def canonical_identity(identity: Mapping[str, Any]) -> str:
    """The form in which the server compares identities: keys sorted, compact JSON."""
    return json.dumps(identity, sort_keys=True, separators=(",", ":"))


def loose_identity(identity: Mapping[str, Any]) -> str:
    """An identity with value types, case and the separators `:`, `-`, `.` and whitespace erased:
    two identities with the same loose form are one device typed twice (02:00:..:03 and
    02-00-..-03), for the server two different identities."""
    norm = {
        k.strip().lower(): re.sub(r"[\s:.\-]", "", (v if isinstance(v, str) else json.dumps(v)).lower())
        for k, v in identity.items()
    }
    return json.dumps(norm, sort_keys=True)


# --- tokens (tenant tokens, session tokens: JWTs or personal access tokens) --------------------
def token_problem(token: str) -> str | None:
    """What keeps TOKEN from being one line of printable ASCII without spaces (where it may go:
    an Authorization header, a mender.conf value), or None."""
    for position, char in enumerate(token, 1):
        if not "!" <= char <= "~":
            kind = (
                "a line break"
                if char in "\r\n"
                else "whitespace"
                if char.isspace()
                else "a control character"
                if char.isascii()
                else "a non-ASCII character"
            )
            return f"{kind} at character {position}"
    return None
