"""Real peers for tests: Debian's auditd in a private config dir, and record injection.

Only one auditd can be registered with the kernel, so every user of `Auditd`
holds an exclusive lock on /run/lock/monitord-tests-auditd.lock for its life
(tests in parallel sessions wait instead of colliding).
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tests.conftest import need_root, need_tool

LOCK_PATH = Path("/run/lock/monitord-tests-auditd.lock")
SYSTEM_PYTHON = "/usr/bin/python3"  # python3-audit is installed for Debian's python only

AUDIT_TYPES = {"VIRT_CONTROL": 2500, "VIRT_RESOURCE": 2501, "VIRT_MACHINE_ID": 2502}

_INJECT = r"""
import sys, audit
fd = audit.audit_open()
for line in sys.stdin:
    kind, _, msg = line.rstrip("\n").partition(" ")
    ok = audit.audit_log_user_message(fd, int(kind), msg, None, None, None, 1)
    if ok <= 0:
        sys.exit("audit_log_user_message failed: %d" % ok)
"""


def auditd_pid() -> int:
    """Return the pid of the auditd the kernel talks to (0 for none)."""
    out = subprocess.run(
        [need_tool("auditctl"), "-s"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"^pid (\d+)", out, re.M)
    return int(m.group(1)) if m else 0


@contextmanager
def auditd_lock() -> Iterator[None]:
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Auditd:
    """A real auditd writing to `self.log` under `root`, with plugins from `self.plugins`."""

    def __init__(self, root: Path, extra_conf: dict[str, str] | None = None) -> None:
        self.root = root
        self.conf_dir = root / "conf"
        self.plugins = self.conf_dir / "plugins.d"
        self.log = root / "log" / "audit.log"
        self.extra_conf = extra_conf or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def write_config(self) -> None:
        self.plugins.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        settings = {
            "log_file": str(self.log),
            "plugin_dir": str(self.plugins),
            "log_format": "ENRICHED",
            "flush": "INCREMENTAL_ASYNC",
            "freq": "1",
            "max_log_file_action": "ROTATE",
            "num_logs": "10",
            "space_left": "2",
            "admin_space_left": "1",
            "space_left_action": "IGNORE",
            "admin_space_left_action": "IGNORE",
            "disk_full_action": "IGNORE",
            "disk_error_action": "IGNORE",
            **self.extra_conf,
        }
        lines = []
        seen = set()
        for line in Path("/etc/audit/auditd.conf").read_text().splitlines():
            key = line.split("=", 1)[0].strip()
            if key in settings:
                lines.append(f"{key} = {settings[key]}")
                seen.add(key)
            else:
                lines.append(line)
        lines += [f"{k} = {v}" for k, v in settings.items() if k not in seen]
        conf = self.conf_dir / "auditd.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o640)

    def start(self) -> None:
        need_root()
        binary = need_tool("auditd")
        if auditd_pid() != 0:
            raise RuntimeError(
                f"another auditd (pid {auditd_pid()}) is registered with the kernel; stop it first"
            )
        self.write_config()
        self._stderr = open(self.root / "auditd.stderr", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary, "-n", "-c", str(self.conf_dir)], stderr=self._stderr, stdout=self._stderr
        )
        deadline = time.monotonic() + 10
        while auditd_pid() != self.proc.pid:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "auditd did not start: " + (self.root / "auditd.stderr").read_text()[-2000:]
                )
            time.sleep(0.02)

    def inject(self, records: list[tuple[str, str]]) -> None:
        """Send (type name, message) user records through the kernel, as libvirt does."""
        need_tool("python3")
        if not Path(SYSTEM_PYTHON).exists():
            raise RuntimeError("Debian's /usr/bin/python3 with python3-audit is needed")
        payload = "".join(f"{AUDIT_TYPES[kind]} {msg}\n" for kind, msg in records)
        subprocess.run([SYSTEM_PYTHON, "-c", _INJECT], input=payload.encode(), check=True)

    def rotate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        # auditd leaves the kernel's audit enabled: reset it so records are not queued for nobody.
        subprocess.run(["auditctl", "-e", "0"], capture_output=True, check=False)


@contextmanager
def running_auditd(root: Path, extra_conf: dict[str, str] | None = None) -> Iterator[Auditd]:
    """Start a private auditd (under the shared lock), stop it by pid on every exit path."""
    need_root()
    with auditd_lock():
        daemon = Auditd(root, extra_conf)
        try:
            daemon.start()
            yield daemon
        finally:
            daemon.stop()


def lines_of_type(path: Path, type_name: str) -> list[str]:
    if not path.exists():
        return []
    # Not splitlines(): it also splits at 0x1D, the enrichment separator.
    return [ln for ln in path.read_text(errors="replace").split("\n") if f"type={type_name}" in ln]


def env_for_subprocess() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return env
