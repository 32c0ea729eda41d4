"""Webhook outages longer than the retry window: down, failing, garbled and slow receivers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from monitord.alerts import AlertEngine, DeliveryError, WebhookSink
from monitord.alerts.counters import AlertCounters
from monitord.alerts.model import Alert
from monitord.config import WebhookConfig
from tests.alerts.test_alerts import BASE, IDENT, fast, record, wait_for
from tests.daemonproc import free_port

TIMEOUT = 0.3  # the webhook's HTTP timeout in these tests: a "slow" receiver exceeds it


class FlakyReceiver:
    """A webhook receiver on a fixed loopback port that can be down, answer 500, answer
    bytes that are not HTTP, or answer too late; it records what it accepted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.mode = "ok"  # ok | error | garbage | slow (| down: no listener)
        self.tries = 0
        self._accepted: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.up()

    def accepted(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._accepted)

    def set(self, mode: str) -> None:
        """Switch behaviour; "down" closes the listening socket, anything else reopens it."""
        with self._lock:
            self.mode = mode
            self.tries = 0
        if mode == "down":
            self.down()
        elif self._server is None:
            self.up()

    def attempts(self) -> int:
        with self._lock:
            return self.tries

    def up(self) -> None:
        rcv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with rcv._lock:
                    rcv.tries += 1
                    mode = rcv.mode
                if mode == "garbage":
                    self.wfile.write(b"\x00\xffTHIS IS NOT HTTP\r\n\r\n")
                    self.close_connection = True
                    return
                if mode == "slow":
                    time.sleep(TIMEOUT * 2)  # the client has given up by now
                    status = 200
                elif mode == "error":
                    status = 500
                else:
                    status = 200
                    with rcv._lock:
                        rcv._accepted.extend(body["alerts"])
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def down(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None


@pytest.fixture
def flaky() -> Iterator[FlakyReceiver]:
    rcv = FlakyReceiver()
    try:
        yield rcv
    finally:
        rcv.down()


def uuid(i: int) -> str:
    return f"00000000-0000-0000-0000-{i:012d}"


def test_garbled_answer_is_a_retryable_delivery_error(flaky: FlakyReceiver) -> None:
    """An answer that is not HTTP is a delivery error worth retrying, not a crashed sink."""
    flaky.set("garbage")
    sink = WebhookSink(WebhookConfig(url=flaky.url, timeout=5.0), BASE)
    with pytest.raises(DeliveryError, match="bad HTTP answer") as info:
        sink.deliver([Alert.from_record(record(), IDENT)])
    assert info.value.retry


def test_every_alert_arrives_after_an_outage_longer_than_retry_max(flaky: FlakyReceiver) -> None:
    """Failures raised while the webhook is down, then answering 500, then garbage, then
    too slowly, each phase many times longer than retry_max, all arrive once it recovers:
    every firing alert, and the resolutions of those that resolved meanwhile."""
    counters = AlertCounters()
    hook = WebhookConfig(url=flaky.url, timeout=TIMEOUT)
    cfg = fast(webhook=(hook,), retry_initial=0.01, retry_max=0.05, drain_timeout=2.0)
    engine = AlertEngine(cfg, IDENT, counters=counters)
    engine.start()
    try:
        for n, mode in enumerate(("down", "error", "garbage", "slow")):
            flaky.set(mode)
            for i in range(n * 5, n * 5 + 5):
                engine.observe(record(serial=i, uuid=uuid(i)), live=True)
            # Long past retry_max: failed attempts after the backoff window keep coming.
            failed = counters.get("webhook", "failed")
            if mode != "down":
                wait_for(lambda: flaky.attempts() >= 4, what=f"retries while {mode}")
            wait_for(
                lambda failed=failed: counters.get("webhook", "failed") > failed,
                what=f"failed attempts past retry_max while the receiver is {mode}",
            )
        for i in range(5):  # resolved during the outage
            engine.observe(record(res="success", serial=100 + i, uuid=uuid(i)), live=True)
        flaky.set("ok")
        wait_for(lambda: len(flaky.accepted()) == 25, timeout=20, what="every alert delivered")
    finally:
        engine.close(2.0)
    got = flaky.accepted()
    firing = sorted(a["labels"]["uuid"] for a in got if a["status"] == "firing")
    resolved = sorted(a["labels"]["uuid"] for a in got if a["status"] == "resolved")
    assert firing == [uuid(i) for i in range(20)]
    assert resolved == [uuid(i) for i in range(5)]
    assert counters.get("webhook", "sent") == 25
    assert counters.get("webhook", "dropped") == 0
    assert engine.to_json()["pending"] == []


def test_resolution_older_than_the_retention_is_dropped(flaky: FlakyReceiver) -> None:
    """An alert that resolved longer than resolved_retention ago while the webhook was down
    is no longer delivered (counted dropped); one still firing is."""
    now = [1000.0]
    counters = AlertCounters()
    hook = WebhookConfig(url=flaky.url, timeout=TIMEOUT)
    cfg = fast(webhook=(hook,), retry_initial=0.01, retry_max=0.05, resolved_retention=60.0)
    engine = AlertEngine(cfg, IDENT, counters=counters, clock=lambda: now[0])
    flaky.set("down")
    engine.start()
    try:
        engine.observe(record(serial=1, uuid=uuid(1)), live=True)
        engine.observe(record(res="success", serial=2, uuid=uuid(1)), live=True)
        engine.observe(record(serial=3, uuid=uuid(3)), live=True)
        engine.tick(1030.0)  # within the retention: all three still due
        assert len(engine.to_json()["resolved"]) == 1
        engine.tick(1061.0)  # the resolution is older than the retention
        assert engine.to_json()["resolved"] == []
        wait_for(lambda: counters.get("webhook", "dropped") == 2, what="firing+resolved")
        flaky.set("ok")
        wait_for(lambda: len(flaky.accepted()) == 1, what="the alert that still fires")
    finally:
        engine.close(2.0)
    assert [a["labels"]["uuid"] for a in flaky.accepted()] == [uuid(3)]
    assert counters.get("webhook", "sent") == 1


def test_undelivered_webhook_alerts_survive_a_restart(flaky: FlakyReceiver) -> None:
    """Alerts a webhook had not accepted at shutdown go into the checkpoint and are delivered
    by the next run; firing alerts it had accepted are not sent again."""
    cfg = fast(webhook=(WebhookConfig(url=flaky.url, timeout=TIMEOUT),))
    first = AlertEngine(cfg, IDENT)
    first.start()
    first.observe(record(serial=1, uuid=uuid(1)), live=True)
    wait_for(lambda: len(flaky.accepted()) == 1, what="the first alert delivered")
    flaky.set("down")
    first.observe(record(serial=2, uuid=uuid(2)), live=True)
    first.observe(record(serial=3, uuid=uuid(3)), live=True)
    first.close(0.3)
    # The first run's process ends here: its worker cannot deliver after the checkpoint.
    assert first.workers[0].join(time.monotonic() + 10)
    doc = json.loads(json.dumps(first.to_json()))  # the checkpoint is plain JSON
    assert [a["serial"] for a in doc["pending"][0]["alerts"]] == [2, 3]

    flaky.set("ok")
    second = AlertEngine(cfg, IDENT)
    second.restore(doc)
    assert len(second.firing()) == 3
    second.start()
    try:
        wait_for(lambda: len(flaky.accepted()) == 3, what="the two undelivered alerts")
        second.tick(time.time())
    finally:
        second.close(2.0)
    assert [a["labels"]["uuid"] for a in flaky.accepted()] == [uuid(1), uuid(2), uuid(3)]
