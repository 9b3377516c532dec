"""Errors a user can cause, each carrying one line that says what to fix.

The CLI and job entrypoints catch `AuralflowError` and print its message instead of a traceback.
"""


class AuralflowError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class ConfigError(AuralflowError, ValueError):
    """A configuration value is invalid; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message

    def __reduce__(self) -> tuple:
        # Rebuilt from (field, reason) when it crosses a process boundary (Ray tasks, Tune).
        return (type(self), (self.field, self.reason))


class AudioError(AuralflowError):
    """An audio file cannot be read or written; the message names the file."""


class StorageError(AuralflowError):
    """A URL cannot be reached, listed, read or written; the message names the URL."""


class CheckpointError(AuralflowError):
    """A checkpoint is missing, corrupt or does not match its config."""
