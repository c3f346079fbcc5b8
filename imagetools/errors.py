"""One exception hierarchy for the whole toolkit.

The library raises these; only the CLI maps them to exit codes and prints them.
Every message is one line a factory operator can act on.
"""

import errno


class ImageToolsError(Exception):
    """Base of every error imagetools raises on purpose."""

    exit_code = 2


class UsageError(ImageToolsError):
    """The command line or an argument is wrong."""

    exit_code = 2


class ImageFormatError(ImageToolsError):
    """The image or its partition table is unusable (truncated, garbage, inconsistent)."""

    exit_code = 2


class LayoutError(ImageToolsError):
    """The partitions cannot be mapped to Mender roles (e.g. no data partition)."""

    exit_code = 2


class FilesystemError(ImageToolsError):
    """A filesystem operation inside the image failed (not found, full, wrong type)."""

    exit_code = 2


class KeyMaterialError(ImageToolsError):
    """A key file is unreadable, encrypted, of an unsupported type or mismatched."""

    exit_code = 2


class DeviceListError(ImageToolsError):
    """The device list (CSV/JSON) is malformed; the message lists every bad row."""

    exit_code = 2


class VerifyFailed(ImageToolsError):
    """At least one verification check failed."""

    exit_code = 1


class ToolMissingError(ImageToolsError):
    """An external program we rely on is not installed or failed unexpectedly."""

    exit_code = 3


class EnvironmentProblem(ImageToolsError):
    """The host cannot do what was asked (disk full, permissions, existing output)."""

    exit_code = 3


class LedgerUnavailable(EnvironmentProblem):
    """The line's shared ledger cannot be reached now (database restarted, network down). The
    next call connects again; a retry of allocate (same token) or end (same state) is safe."""


class ServerError(ImageToolsError):
    """The Mender Server refused a request or could not be reached."""

    exit_code = 4

    def __init__(self, message: str, status: int | None = None, request_id: str | None = None):
        super().__init__(message)
        self.status = status
        self.request_id = request_id


class AuthError(ServerError):
    """The server rejected our credentials (401/403) or none were given."""


# Errors of the host, not of the input: the same input works with access, space or a writable disk.
ENVIRONMENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def from_oserror(exc: OSError, what: str, default: type[ImageToolsError]) -> ImageToolsError:
    """One line for an OSError while doing `what` ("cannot open image X"): EnvironmentProblem
    (exit 3) for permissions, read-only or full disks, `default` for everything else."""
    hint = " (free some space and run again)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    cls = EnvironmentProblem if exc.errno in ENVIRONMENT_ERRNOS else default
    return cls(f"{what}: {exc.strerror or exc}{hint}")


class SettingsMismatch(UsageError):
    """An emit OUT holds units made from another base or with other settings: the command line
    does not fit the directory (bad input, exit 2), not a problem of the host."""
