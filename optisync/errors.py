"""The one exception tree of optisync, each class owning its documented exit code.

The exit codes are a public API (docs/exit-codes.md): cron jobs and scripts branch on them.
They are mapped to the process exit status in exactly one place, ``cli.OptisyncGroup``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 3
    INVALID_INPUT = 4
    REFUSED = 5
    UNAVAILABLE = 6
    PARTIAL = 7
    LOCKED = 75
    INTERRUPTED = 130


class OptisyncError(Exception):
    """Root of every error optisync reports to its user; unexpected subclasses exit 1."""

    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(OptisyncError):
    """Bad flags or arguments that Click itself could not catch."""

    exit_code = ExitCode.USAGE


class ConfigError(OptisyncError):
    """The configuration is missing or invalid; ``problems`` holds every located problem."""

    exit_code = ExitCode.CONFIG

    def __init__(
        self, message: str, *, hint: str | None = None, problems: list[str] | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems or []


class InvalidInputError(OptisyncError):
    """Some input records were invalid; each is kept as an ``invalid`` dead letter."""

    exit_code = ExitCode.INVALID_INPUT


class RefusedError(OptisyncError):
    """Optimove refused the credentials or the request permanently."""

    exit_code = ExitCode.REFUSED


class AuthError(RefusedError):
    """Optimove answered 401/403: the API key is missing, wrong, revoked or lacks rights."""


class UnavailableError(OptisyncError):
    """Optimove stayed unavailable (5xx, 429, timeouts, dropped connections) after all retries."""

    exit_code = ExitCode.UNAVAILABLE


class PartialFailure(OptisyncError):  # noqa: N818 - a result signal, not a fault
    """The run finished, but some messages were dead-lettered."""

    exit_code = ExitCode.PARTIAL


class LockedError(OptisyncError):
    """Another optisync run holds the lock for this work (cron overlap)."""

    exit_code = ExitCode.LOCKED


class StorageError(OptisyncError):
    """A folder optisync must write (dead letters, output, state) is unwritable or full.

    Nothing that was not safely stored is acknowledged, so this is an unavailability of a
    local resource: the run can be repeated once the disk is fixed.
    """

    exit_code = ExitCode.UNAVAILABLE


class Interrupted(OptisyncError):  # noqa: N818 - mirrors KeyboardInterrupt
    """SIGINT or SIGTERM arrived; in-flight work was finished or dead-lettered."""

    exit_code = ExitCode.INTERRUPTED


class DeadlineMissed(OptisyncError):  # noqa: N818 - a result signal, not a fault
    """export-batch would finish after Optimove's daily data readiness time (action: fail)."""

    exit_code = ExitCode.UNAVAILABLE
