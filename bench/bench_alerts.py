"""Alert benchmarks: observe() cost with and without dead sinks, latency to a real
Alertmanager, a 10,000-failure storm (requests made, alerts delivered, time to drain) to
an Alertmanager pair and a webhook, and a webhook outage longer than retry_max (time from
its recovery until every alert arrived).

Run: .venv/bin/python bench/bench_alerts.py  (needs prometheus-alertmanager)
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitord.alerts import AlertEngine, Identity  # noqa: E402
from monitord.alerts.counters import AlertCounters  # noqa: E402
from monitord.alerts.model import Alert  # noqa: E402
from monitord.audit.record import AuditRecord  # noqa: E402
from monitord.config import AlertmanagerConfig, AlertsConfig, WebhookConfig  # noqa: E402
from tests.alertmanager import Alertmanager  # noqa: E402
from tests.alerts.test_alerts import dead_url, record, wait_for  # noqa: E402
from tests.daemonproc import free_port  # noqa: E402

IDENTITY = Identity("hv01", "http://127.0.0.1:9781", (("cluster", "bench"),))
STORM = 10_000


def failures(n: int, prefix: str = "0000") -> list[AuditRecord]:
    return [record(serial=i, uuid=f"{prefix}0000-0000-0000-0000-{i:012d}") for i in range(n)]


def successes(n: int) -> list[AuditRecord]:
    return [
        record(res="success", serial=i, uuid=f"10000000-0000-0000-0000-{i % 500:012d}")
        for i in range(n)
    ]


def observe_rate(engine: AlertEngine, records: Sequence[AuditRecord]) -> float:
    """Return records per second through observe()."""
    start = time.perf_counter()
    for rec in records:
        engine.observe(rec, True)
    return len(records) / (time.perf_counter() - start)


class CountingReceiver:
    """A webhook receiver counting requests and alerts."""

    def __init__(self, port: int = 0) -> None:
        self.requests = 0
        self.alerts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests += 1
                outer.alerts += len(body["alerts"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def bench_observe() -> list[str]:
    """observe() rate with no sink, 3 dead sinks, and 3 live receivers."""
    config = AlertsConfig(journal=False, retry_initial=0.05, retry_max=1.0)
    dead = replace(
        config,
        alertmanager=(AlertmanagerConfig(url=dead_url()), AlertmanagerConfig(url=dead_url())),
        webhook=(WebhookConfig(url=dead_url()),),
    )
    receivers = [CountingReceiver() for _ in range(3)]
    live = replace(config, webhook=tuple(WebhookConfig(url=r.url) for r in receivers))
    rows = []
    ok = successes(200_000)
    storm = failures(STORM)
    try:
        for label, cfg in (("no sink", config), ("3 dead sinks", dead), ("3 live sinks", live)):
            best_ok = best_storm = 0.0
            for _ in range(3):
                engine = AlertEngine(cfg, IDENTITY)
                engine.start()
                best_ok = max(best_ok, observe_rate(engine, ok))
                best_storm = max(best_storm, observe_rate(engine, storm))
                engine.close(0.0)
            rows.append(f"| {label} | {best_ok:,.0f} | {best_storm:,.0f} |")
    finally:
        for r in receivers:
            r.stop()
    return rows


def bench_latency(am: Alertmanager, n: int = 100) -> tuple[float, float]:
    """Return p50, p99 seconds from observe() to the alert being listed by Alertmanager."""
    cfg = AlertsConfig(journal=False, alertmanager=(AlertmanagerConfig(url=am.url),))
    engine = AlertEngine(cfg, IDENTITY)
    engine.start()
    samples = []
    for i in range(n):
        uuid = f"20000000-0000-0000-0000-{i:012d}"
        rec = record(serial=i, uuid=uuid, at=time.time())
        query = urllib.parse.urlencode({"filter": f'uuid="{uuid}"'})
        url = f"{am.url}/api/v2/alerts?{query}"

        def listed(url: str = url) -> bool:
            with urllib.request.urlopen(url, timeout=5) as r:
                return bool(json.load(r))

        t0 = time.perf_counter()
        engine.observe(rec, True)
        wait_for(listed, timeout=10, what="alert listed")
        samples.append(time.perf_counter() - t0)
    engine.close(2.0)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def bench_storm(pair: tuple[Alertmanager, Alertmanager]) -> list[str]:
    """10,000 distinct failures at once to an Alertmanager pair and a webhook."""
    hook = CountingReceiver()
    counters = AlertCounters()
    members = tuple(AlertmanagerConfig(url=am.url) for am in pair)
    cfg = AlertsConfig(journal=False, alertmanager=members, webhook=(WebhookConfig(url=hook.url),))
    engine = AlertEngine(cfg, IDENTITY, counters=counters)
    am_requests = [0]
    for worker in engine.workers:  # count the POSTs the Alertmanager sink makes
        if worker.name == "alertmanager":
            sink: Any = worker.sink
            original = sink.deliver

            def counted(alerts: Sequence[Alert], original: Any = original) -> int:
                am_requests[0] += 1
                refused: int = original(alerts)
                return refused

            sink.deliver = counted
    records = failures(STORM, prefix="3000")
    engine.start()
    t0 = time.perf_counter()
    for rec in records:
        engine.observe(rec, True)
    t_observe = time.perf_counter() - t0

    def drained() -> bool:
        a = Counter(counters.snapshot())
        return a.get("alertmanager", "sent") + a.get("alertmanager", "dropped") >= STORM and (
            a.get("webhook", "sent") + a.get("webhook", "dropped") >= STORM
        )

    wait_for(drained, timeout=120, what="storm drained")
    t_drain = time.perf_counter() - t0
    engine.close(2.0)
    listed = []
    for am in pair:
        with urllib.request.urlopen(f"{am.url}/api/v2/alerts", timeout=30) as r:
            listed.append(sum(1 for a in json.load(r) if a["labels"]["uuid"].startswith("3000")))
    hook.stop()
    a = Counter(engine.counters.snapshot())
    return [
        f"| observe() of {STORM:,} failures | {t_observe * 1000:.0f} ms |",
        f"| time until both sinks drained | {t_drain * 1000:.0f} ms |",
        f"| Alertmanager pair: fan-out batches / alerts listed by each | {am_requests[0]} / "
        f"{listed[0]:,}, {listed[1]:,} |",
        f"| webhook: HTTP requests / alerts received | {hook.requests} / {hook.alerts:,} |",
        f"| dropped / failed | {a[('alertmanager', 'dropped')] + a[('webhook', 'dropped')]}"
        f" / {a[('alertmanager', 'failed')] + a[('webhook', 'failed')]} |",
    ]


def bench_outage(down_for: float = 3.0) -> list[str]:
    """10,000 failures while a webhook is down for longer than retry_max (0.5 s): time from
    its return until every alert arrived, requests made."""
    port = free_port()
    counters = AlertCounters()
    hook_url = f"http://127.0.0.1:{port}/hook"
    cfg = AlertsConfig(
        journal=False,
        webhook=(WebhookConfig(url=hook_url, timeout=2.0),),
        retry_initial=0.05,
        retry_max=0.5,
    )
    engine = AlertEngine(cfg, IDENTITY, counters=counters)
    engine.start()
    for rec in failures(STORM, prefix="4000"):
        engine.observe(rec, True)
    time.sleep(down_for)  # the outage: several retry_max windows with connection refused
    failed = counters.get("webhook", "failed")
    hook = CountingReceiver(port)
    t0 = time.perf_counter()
    wait_for(lambda: hook.alerts >= STORM, timeout=120, what="every alert after the outage")
    t_recover = time.perf_counter() - t0
    engine.close(2.0)
    hook.stop()
    a = Counter(counters.snapshot())
    return [
        f"| outage | {down_for:.0f} s (retry_max 0.5 s) |",
        f"| failed attempts counted during the outage (alerts x attempts) | {failed:,} |",
        f"| after recovery: time until all {STORM:,} delivered | {t_recover * 1000:.0f} ms |",
        f"| after recovery: HTTP requests / alerts received | {hook.requests} / {hook.alerts:,} |",
        f"| sent / dropped | {a[('webhook', 'sent')]:,} / {a[('webhook', 'dropped')]} |",
    ]


def main() -> None:
    import logging
    import shutil

    logging.getLogger("monitord.alerts").setLevel(logging.ERROR)  # dead sinks are expected

    binary = shutil.which("prometheus-alertmanager")
    print("## observe() throughput (records/s, ingestion thread)\n")
    print("| sinks | successes, nothing firing | 10,000 new failures |")
    print("|---|---|---|")
    for row in bench_observe():
        print(row)
    print("\n## Webhook outage longer than retry_max, then recovery\n")
    print("| measure | value |")
    print("|---|---|")
    for row in bench_outage():
        print(row)
    if binary is None:
        print("\nprometheus-alertmanager not installed: latency and storm skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        am = Alertmanager(Path(tmp) / "am", binary)
        second = Alertmanager(Path(tmp) / "am2", binary)
        try:
            p50, p99 = bench_latency(am)
            print("\n## Latency: observe() -> listed by Alertmanager (GET /api/v2/alerts)\n")
            print(f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms (100 alerts, one at a time)")
            print("\n## Storm: 10,000 distinct failures in one burst (batch_size 500)\n")
            print("| measure | value |")
            print("|---|---|")
            for row in bench_storm((am, second)):
                print(row)
        finally:
            am.stop()
            second.stop()


if __name__ == "__main__":
    main()
