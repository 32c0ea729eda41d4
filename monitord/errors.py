"""Errors a user can cause, each with a message that says what to do.

The CLI turns a `UserError` into a one-line message on stderr and exit code 2;
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad flag, bad config or unreadable input named by the user: exit 2."""

    exit_code = 2


class InputError(UserError):
    """A file named on the command line cannot be read."""


class ConfigError(UserError):
    """The configuration is invalid: names the key and, where known, the line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = path or ""
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.line = line


class RuntimeFailure(Exception):
    """The daemon cannot go on (exit 1): e.g. the listen address is taken."""

    exit_code = 1
