"""Slowloris against a real daemon: others keep being answered.

Attackers on loopback open connections and send their request heads one byte every
0.3 s, reconnecting whenever dropped: many connections from one address, and one
each from 40 other addresses (together more than max_connections). Meanwhile a
client on 127.0.0.1 asks /healthz five times a second and /metrics once a second:
every answer must come, each within a second (it timed out for as long as the
attack lasted before). Bounded: 8 s of attack, loopback only.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.daemonproc import MonitordProcess

ATTACK_SECONDS = 8.0


class Slowloris:
    """Connections from `sources` that trickle a request head and reconnect when closed."""

    def __init__(self, address: tuple[str, int], sources: list[str]) -> None:
        self.address = address
        self.sources = sources
        self.stop = threading.Event()
        self.connects = 0
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self, source: str) -> socket.socket | None:
        try:
            s = socket.create_connection(self.address, timeout=2, source_address=(source, 0))
        except OSError:
            return None
        s.setblocking(False)
        self.connects += 1
        return s

    def _run(self) -> None:
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-a: b\r\n" * 10_000
        socks: list[tuple[str, socket.socket | None, int]] = [
            (src, self._connect(src), 0) for src in self.sources
        ]
        while not self.stop.wait(0.3):
            for n, (src, s, sent) in enumerate(socks):
                if s is not None:
                    try:
                        if s.recv(4096) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        pass
                    except OSError:
                        s.close()
                        s, self.dropped = None, self.dropped + 1
                if s is not None:
                    try:
                        s.send(head[sent : sent + 1])
                        sent += 1
                    except OSError:
                        s.close()
                        s, self.dropped = None, self.dropped + 1
                if s is None:
                    s, sent = self._connect(src), 0
                socks[n] = (src, s, sent)
        for _, s, _ in socks:
            if s is not None:
                s.close()


def timed_get(port: int, path: str) -> float:
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200 and body, (path, resp.status)
    finally:
        conn.close()
    return time.monotonic() - t0


@pytest.mark.slow
def test_slowloris_does_not_take_the_listener_down(tmp_path: Path) -> None:
    """During a slowloris attack from one address and from 40 others, /healthz and
    /metrics answer another client every time, each within a second."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    config = tmp_path / "monitord.toml"
    config.write_text(
        '[http]\nmax_connections = 32\nmax_connections_per_client = 8\nheader_timeout = "5s"\n'
    )
    config.chmod(0o600)
    daemon = MonitordProcess(tmp_path / "state", ["--config", str(config), "--audit-log", str(log)])
    with daemon:
        one = Slowloris(("127.0.0.1", daemon.port), ["127.0.0.2"] * 30)
        many = Slowloris(("127.0.0.1", daemon.port), [f"127.0.3.{i}" for i in range(1, 41)])
        one.thread.start()
        many.thread.start()
        latencies: list[tuple[str, float]] = []
        try:
            time.sleep(1.0)  # the attack is in place
            end = time.monotonic() + ATTACK_SECONDS
            tick = 0
            while time.monotonic() < end:
                path = "/metrics" if tick % 5 == 0 else "/healthz"
                latencies.append((path, timed_get(daemon.port, path)))
                tick += 1
                time.sleep(0.2)
        finally:
            one.stop.set()
            many.stop.set()
            one.thread.join()
            many.thread.join()
        slowest = max(latencies, key=lambda x: x[1])
        assert slowest[1] < 1.0, slowest
        assert len(latencies) >= 20
        # The attack really was on: connections were refused or closed and reopened.
        assert one.dropped > 0 and many.dropped > 0, (one.dropped, many.dropped)
        assert timed_get(daemon.port, "/healthz") < 1.0
        assert daemon.stop() == 0
