"""sd_notify from the real daemon: READY, STATUS, WATCHDOG while progressing, STOPPING."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from monitord.audit.record import AuditRecord
from monitord.config import AlertsConfig, Config, HttpConfig, SourceConfig, StateConfig
from monitord.daemon import Daemon
from monitord.notify import Notifier
from monitord.sources.base import Health, Position
from monitord.state.store import Store
from tests.daemonproc import MonitordProcess, free_port


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.1)
    yield sock
    sock.close()


def messages(sock: socket.socket, until: float) -> list[str]:
    """Read datagrams until the monotonic deadline."""
    out: list[str] = []
    while time.monotonic() < until:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


def test_ready_status_watchdog_stopping(tmp_path: Path, notify_socket: socket.socket) -> None:
    """A running daemon says READY, STATUS, pings WATCHDOG at half the timeout, STOPPING."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    d = MonitordProcess(tmp_path / "state", ["--audit-log", str(log)], env=env)
    d.start()
    try:
        got = messages(notify_socket, time.monotonic() + 3.0)
        assert d.stop() == 0
        got += messages(notify_socket, time.monotonic() + 0.5)
    finally:
        d.kill()
    assert any("READY=1" in m for m in got), got
    assert any(m.startswith("STATUS=") and "records/s" in m for m in got), got
    assert sum("WATCHDOG=1" in m for m in got) >= 4, got
    assert any("STOPPING=1" in m for m in got), got


class StuckSource:
    """A source whose poll blocks until released: a stage that stopped making progress."""

    name = "file"

    def __init__(self) -> None:
        self.stuck = threading.Event()
        self.release = threading.Event()

    def open(self, position: Position | None) -> None:
        pass

    def poll(self, timeout: float, wake_fds: Sequence[int] = ()) -> list[AuditRecord]:
        if self.stuck.is_set():
            self.release.wait(30)
        else:
            time.sleep(min(timeout, 0.05))
        return []

    def position(self) -> Position | None:
        return None

    @property
    def caught_up(self) -> bool:
        return True

    @property
    def finished(self) -> bool:
        return False

    def take_switch(self) -> bool:
        return False

    def health(self) -> Health:
        return Health(True)

    def close(self) -> None:
        pass


def test_stalled_pipeline_stops_watchdog(
    tmp_path: Path, notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a stage is stuck the loop sends no WATCHDOG=1, so systemd would restart it."""
    config = Config(
        source=SourceConfig(path=str(tmp_path / "audit.log")),
        state=StateConfig(dir=str(tmp_path / "state")),
        http=HttpConfig(listen=f"127.0.0.1:{free_port()}"),
        alerts=AlertsConfig(journal=False),
    )
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    # systemd-python's notify() reads NOTIFY_SOCKET from the process environment itself.
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    notifier = Notifier(env=env, pid=os.getpid())
    source = StuckSource()
    daemon = Daemon(config, notifier=notifier, source_factory=lambda _config: source)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        healthy = messages(notify_socket, time.monotonic() + 1.2)
        assert sum("WATCHDOG=1" in m for m in healthy) >= 3, healthy
        source.stuck.set()
        messages(notify_socket, time.monotonic() + 0.3)  # a ping already in flight may arrive
        stalled = messages(notify_socket, time.monotonic() + 1.5)
        assert not any("WATCHDOG=1" in m for m in stalled), stalled
        ok, reason = daemon.health()
        assert ok  # not yet past STALL_AFTER; the watchdog is the fast signal
    finally:
        daemon.flags.stop = True
        source.release.set()
        runner.join(timeout=20)
    assert not runner.is_alive()
    store, saved = Store.open(str(tmp_path / "state"))  # the shutdown commit landed
    store.close()
    assert saved.origin == "store" and saved.saved_at is not None
