"""Exceptions that carry the exit code and a one-line message for the CLI edge."""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUSY = 75
EXIT_INTERRUPTED = 130


class MemstackError(Exception):
    """A failure the user can act on: the message is one line and names what went wrong."""

    exit_code = EXIT_FAILED


class InputError(MemstackError):
    """Bad input data; names the input and the position (line or byte offset)."""

    def __init__(self, source: str, where: str, message: str):
        self.source = source
        self.where = where
        self.detail = message
        super().__init__(f"{source}: {where}: {message}")


class StoreError(MemstackError):
    """The store is missing, corrupt or was built with other settings."""


class StoreBusy(MemstackError):
    """Another writer holds the store; retry later (exit 75, EX_TEMPFAIL)."""

    exit_code = EXIT_BUSY


class ConfigError(MemstackError):
    """A bad option value discovered after parsing (exit 2)."""

    exit_code = EXIT_USAGE
