"""A scrape storm against a real daemon while it ingests.

2,000 guests; 40 clients scrape /metrics as fast as they can (half with gzip, all
keep-alive) while a 60,000-line log is appended. Ingestion must go on (a sentinel
record after the log is applied), /healthz must answer within a second throughout,
and the daemon's memory must return once the storm is over (it kept 230 MB more
before). The figures for 10,000 guests are in bench/bench_scrape_storm.py.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

import pytest

from monitord.commands.simulate import mixed_log
from tests import waiting
from tests.adversarial.probes import rss_mib, start_line
from tests.daemonproc import MonitordProcess, wait_until

GUESTS = 2_000
CLIENTS = 40


class Storm:
    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.scrapes = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]

    def _client(self, i: int) -> None:
        headers = {"Accept-Encoding": "gzip"} if i % 2 else {}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop.is_set():
            try:
                conn.request("GET", "/metrics", headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.failures.append(str(resp.status))
                self.scrapes += 1
            except (OSError, http.client.HTTPException) as err:
                self.failures.append(repr(err))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()

    def __enter__(self) -> Storm:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def healthz_latency(port: int) -> float:
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        assert resp.read() == b"ok\n"
    finally:
        conn.close()
    return time.monotonic() - t0


@pytest.mark.slow
def test_ingestion_health_and_memory_under_a_scrape_storm(tmp_path: Path) -> None:
    """Under 40 looping scrapers, ingestion goes on, /healthz answers within 1 s, and RSS
    returns to within 1.2x of what it was before the storm."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(start_line(i) for i in range(GUESTS)))
    config = tmp_path / "monitord.toml"
    config.write_text("[http]\nmax_connections = 128\nmax_connections_per_client = 128\n")
    config.chmod(0o600)
    daemon = MonitordProcess(
        tmp_path / "state", ["--config", str(config), "--audit-log", str(log),
                             "--log-level", "warning"],
    )  # fmt: skip
    fixed = b"".join(mixed_log(3, 60_000)) + start_line(999_999, serial=999_999)
    with daemon:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        wait_until(lambda: daemon.metric("monitord_guests_tracked") == GUESTS, timeout=60)
        daemon.get("/metrics")  # the per-guest label cache is steady-state memory
        time.sleep(2.0)
        before = rss_mib(pid)
        latencies = []
        with Storm(daemon.port) as storm:
            time.sleep(1.0)
            with log.open("ab") as out:
                out.write(fixed)
            sentinel = "00000000-0000-4000-8000-000000999999"
            deadline = time.monotonic() + 120
            seen = False
            while time.monotonic() < deadline and not seen:
                latencies.append(healthz_latency(daemon.port))
                conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
                conn.request("GET", f"/api/v1/guests/{sentinel}")
                resp = conn.getresponse()
                resp.read()
                conn.close()
                seen = resp.status == 200
                time.sleep(0.1)
            for _ in range(10):
                latencies.append(healthz_latency(daemon.port))
                time.sleep(0.1)
            peak = rss_mib(pid)
        assert seen, "ingestion stopped under the storm"
        assert storm.scrapes > 50 and not storm.failures, storm.failures[:5]
        assert max(latencies) < 1.0, sorted(latencies)[-5:]

        def returned() -> bool:
            return rss_mib(pid) <= 1.2 * before

        waiting.wait_until(returned, timeout=20, what=f"RSS back within 1.2x of {before:.0f} "
                           f"MiB (peak {peak:.0f} MiB)")  # fmt: skip
        print(
            f"RSS before {before:.0f} MiB, peak {peak:.0f}, after {rss_mib(pid):.0f}; "
            f"{storm.scrapes} scrapes; /healthz max {max(latencies):.3f} s"
        )
        assert daemon.stop() == 0
