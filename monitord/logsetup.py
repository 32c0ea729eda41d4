"""Where the daemon's log goes (journal or stderr), at what level, and how often.

Under systemd the journal gets structured records (priority, logger, code
location) instead of lines parsed back from stderr. Warnings that can repeat
once per record or per re-check (a malformed line, an unreadable file) are
rate limited, so a bad log cannot flood the journal.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from monitord.config import LoggingConfig

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "monitord"
STDERR_FORMAT = "%(asctime)s monitord[%(process)d] %(levelname)s %(name)s: %(message)s"
# Distinct message kinds tracked by a limiter before idle ones are forgotten.
_MAX_KEYS = 1024

Target = Literal["journal", "stderr"]


def stderr_is_journal(env: Mapping[str, str], stderr: TextIO) -> bool:
    """True if stderr is the journal stream systemd connected (JOURNAL_STREAM=dev:inode)."""
    device, sep, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def choose_target(
    config: LoggingConfig,
    env: Mapping[str, str] | None = None,
    stderr: TextIO | None = None,
    journal_socket: str = JOURNAL_SOCKET,
    plugin: bool = False,
) -> Target:
    """Pick journal or stderr for `target = "auto"` (an explicit target is kept).

    The journal when stderr is systemd's journal stream, or when systemd
    started us (INVOCATION_ID) and stderr was not redirected elsewhere
    (JOURNAL_STREAM absent: e.g. StandardError=null); also for an auditd
    plugin (`plugin`), which auditd starts with an empty environment and
    stderr going nowhere useful. Never a journal whose socket is missing:
    journal.send() would drop the records silently.
    """
    if config.target != "auto":
        return config.target
    env = os.environ if env is None else env
    stderr = sys.stderr if stderr is None else stderr
    if not Path(journal_socket).exists():
        return "stderr"
    if stderr_is_journal(env, stderr):
        return "journal"
    if env.get("INVOCATION_ID") and "JOURNAL_STREAM" not in env:
        return "journal"
    return "journal" if plugin else "stderr"


@dataclass(slots=True)
class _Window:
    start: float
    count: int = 0
    suppressed: int = 0


class RateLimiter:
    """At most `burst` events per key per `interval` seconds; counts the rest."""

    def __init__(
        self, burst: int, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._windows: dict[object, _Window] = {}

    def admit(self, key: object) -> tuple[bool, int]:
        """(let it through?, how many were suppressed before it, reported once)."""
        if self.burst <= 0:
            return True, 0
        now = self._clock()
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= _MAX_KEYS:
                self._forget_idle(now)
            window = self._windows[key] = _Window(start=now)
        elif now - window.start >= self.interval:
            window.start, window.count = now, 0
        if window.count < self.burst:
            window.count += 1
            suppressed, window.suppressed = window.suppressed, 0
            return True, suppressed
        window.suppressed += 1
        return False, 0

    def _forget_idle(self, now: float) -> None:
        for key, window in list(self._windows.items()):
            if now - window.start >= self.interval and not window.suppressed:
                del self._windows[key]
        if len(self._windows) >= _MAX_KEYS:  # all busy: a message kind per record is a bug
            self._windows.clear()


def _suppressed_note(count: int) -> str:
    return f" (suppressed {count} similar)"


class RateLimitFilter(logging.Filter):
    """A handler filter: warnings and worse with the same logger and format string are limited.

    "Similar" means the same logger, level and unformatted message, so
    `log.warning("cannot read %s: %s", path, err)` is one kind whatever the path.
    """

    def __init__(
        self, burst: int, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.limiter = RateLimiter(burst, interval, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        admitted, suppressed = self.limiter.admit(key)
        if admitted and suppressed:
            record.msg = record.getMessage() + _suppressed_note(suppressed)
            record.args = None
        return admitted


class RateLimitedLogger:
    """A logger wrapper whose messages are limited per format string, at any level.

    For messages the global filter does not cover (e.g. an info line per
    reopen), or a tighter limit than the global one.
    """

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 10,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.limiter = RateLimiter(burst, interval, clock)

    def log(self, level: int, msg: str, *args: Any) -> bool:
        """Log unless limited; returns whether it was logged."""
        if not self.logger.isEnabledFor(level):
            return False
        admitted, suppressed = self.limiter.admit((level, msg))
        if admitted:
            text = msg % args if args else msg
            self.logger.log(
                level, "%s", text + (_suppressed_note(suppressed) if suppressed else "")
            )
        return admitted

    def warning(self, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: Any) -> bool:
        return self.log(logging.ERROR, msg, *args)


# The name the daemon was first written against.
RateLimitedLog = RateLimitedLogger


def _journal_handler() -> logging.Handler:
    from systemd.journal import JournalHandler

    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
    return handler


def setup_logging(
    config: LoggingConfig,
    *,
    env: Mapping[str, str] | None = None,
    stderr: TextIO | None = None,
    journal_socket: str = JOURNAL_SOCKET,
    plugin: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> Target:
    """Send the root logger's records to the journal or stderr; return which.

    Calling it again (on reload) replaces the handler it installed before,
    so the level and rate limits follow the new config.
    """
    stream = sys.stderr if stderr is None else stderr
    target = choose_target(config, env, stream, journal_socket, plugin)
    handler: logging.Handler
    if target == "journal":
        try:
            handler = _journal_handler()
        except ImportError:  # systemd-python missing: stderr is better than nothing
            target = "stderr"
    if target == "stderr":
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    handler.addFilter(RateLimitFilter(config.rate_limit_burst, config.rate_limit_interval, clock))
    handler.set_name("monitord")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "monitord"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    return target
