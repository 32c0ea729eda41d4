"""sd_notify: tell systemd the daemon is ready, what it is doing, and that it is alive.

Everything here is a no-op when the daemon is not started by systemd with
`Type=notify` (no `NOTIFY_SOCKET`), so the daemon calls it unconditionally.
The watchdog ping is the caller's decision: the main loop pings every
`ping_interval` itself, so a stuck stage makes systemd restart us.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

try:
    from systemd import daemon as _sd_daemon
except ImportError:  # systemd-python missing: run without notifications
    _sd_daemon = None


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd expects pings within (seconds), or None if it is off.

    From `WATCHDOG_USEC`; when `WATCHDOG_PID` is set it must be this process
    (systemd-python 235 has no `watchdog_enabled()`).
    """
    env = os.environ if env is None else env
    usec_text = env.get("WATCHDOG_USEC", "")
    pid_text = env.get("WATCHDOG_PID", "")
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    if pid_text:
        try:
            if int(pid_text) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000


class Notifier:
    """Send READY/STATUS/RELOADING/STOPPING/WATCHDOG to systemd, or nothing outside it."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        self.socket = env.get("NOTIFY_SOCKET") or None
        self.enabled = self.socket is not None and _sd_daemon is not None
        if self.socket is not None and _sd_daemon is None:
            log.warning("NOTIFY_SOCKET is set but systemd-python is missing: not notifying systemd")
        timeout = watchdog_interval(env, pid)
        # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
        self.ping_interval = timeout / 2 if timeout is not None and self.enabled else None
        self._failed = False

    def _send(self, message: str) -> bool:
        if not self.enabled or _sd_daemon is None:
            return False
        try:
            # systemd-python 235 raises (FileNotFoundError, ConnectionRefusedError) when
            # the socket is gone; older ones return False.
            sent = bool(_sd_daemon.notify(message))
        except OSError as err:
            sent = False
            if not self._failed:
                log.warning("cannot notify systemd through %s: %s", self.socket, err)
        else:
            if not sent and not self._failed:
                log.warning("cannot notify systemd through %s", self.socket)
        self._failed = self._failed or not sent
        return sent

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is complete: the source is open and the state restored."""
        return self._send("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        """Set the one-liner `systemctl status` shows."""
        return self._send(f"STATUS={_one_line(text)}")

    def reloading(self) -> bool:
        """A reload starts; call `ready()` when it is done."""
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match this to the reload.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown starts (checkpoint flush and alert drain follow)."""
        return self._send("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def watchdog(self) -> bool:
        """Ping the watchdog now."""
        return self._send("WATCHDOG=1")


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the notify datagram.
    return " ".join(text.split())
