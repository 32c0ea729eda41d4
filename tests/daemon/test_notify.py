"""sd_notify through a real datagram socket standing in for systemd's."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitord.notify import Notifier, watchdog_interval


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    """A bound SOCK_DGRAM unix socket, named in NOTIFY_SOCKET (a path or an @abstract name)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
    else:
        name = f"monitord-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    sock.settimeout(5)
    yield sock
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_reach_the_socket(notify_socket: socket.socket) -> None:
    """READY, STATUS, RELOADING, STOPPING and WATCHDOG arrive as systemd reads them."""
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready("reading /var/log/audit/audit.log\n3 guests")
    assert receive(notify_socket) == "READY=1\nSTATUS=reading /var/log/audit/audit.log 3 guests"
    assert notifier.status("1235 records/s,\n3 guests")
    assert receive(notify_socket) == "STATUS=1235 records/s, 3 guests"
    assert notifier.reloading()
    first, second = receive(notify_socket).split("\n")
    assert first == "RELOADING=1"
    monotonic_usec = int(second.removeprefix("MONOTONIC_USEC="))
    assert abs(monotonic_usec / 1e6 - time.monotonic()) < 5
    assert notifier.ready()
    assert receive(notify_socket) == "READY=1"
    assert notifier.watchdog()
    assert receive(notify_socket) == "WATCHDOG=1"
    assert notifier.stopping("flushing checkpoint")
    assert receive(notify_socket) == "STOPPING=1\nSTATUS=flushing checkpoint"


def test_without_systemd_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no NOTIFY_SOCKET nothing is sent and no watchdog is due, even with WATCHDOG_USEC."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ping_interval is None
    assert not any(
        [notifier.ready("x"), notifier.status("x"), notifier.watchdog(), notifier.stopping()]
    )


def test_vanished_socket_is_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A NOTIFY_SOCKET path that does not exist makes sends fail quietly, warned about once."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    notifier = Notifier()
    with caplog.at_level(logging.WARNING, logger="monitord.notify"):
        results = [notifier.ready(), notifier.status("x"), notifier.watchdog()]
    assert results == [False, False, False]
    warnings = [r for r in caplog.records if r.name == "monitord.notify"]
    assert len(warnings) == 1
    assert "gone.sock" in warnings[0].getMessage()


def test_watchdog_interval_from_environment() -> None:
    """WATCHDOG_USEC gives the timeout; a WATCHDOG_PID for another process turns it off."""
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "x"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "5"}, pid=7) == 5e-6


def test_watchdog_pings_at_half_the_timeout(notify_socket: socket.socket) -> None:
    """The daemon pings every half of WATCHDOG_USEC (ping_interval); a ping is WATCHDOG=1."""
    env = dict(os.environ, WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid()))
    notifier = Notifier(env=env)
    assert notifier.ping_interval == 1.0
    assert notifier.watchdog()
    assert receive(notify_socket) == "WATCHDOG=1"
