"""Alert model, engine and the webhook sink against a real HTTP server on loopback."""

from __future__ import annotations

import base64
import json
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from monitord.alerts import ALERT_NAME, Alert, AlertEngine, DeliveryError, Identity, WebhookSink
from monitord.alerts.counters import AlertCounters
from monitord.alerts.delivery import DeliveryWorker
from monitord.alerts.model import fingerprint
from monitord.audit.parser import parse_line
from monitord.audit.record import AuditRecord
from monitord.config import AlertmanagerConfig, AlertsConfig, WebhookConfig
from tests.conftest import need_tool
from tests.waiting import wait_until as wait_for

UUID = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"
BASE = "http://127.0.0.1:9781"
IDENT = Identity(host="hv01", external_url=BASE)


def record(
    kind: str = "VIRT_CONTROL",
    res: str = "failed",
    serial: int = 42,
    at: float = 1700000000.123,
    uuid: str = UUID,
    vm: str = "web01",
    node: str | None = None,
    **fields: str,
) -> AuditRecord:
    """Return a parsed libvirt record (from `node` when given, as on a central collector);
    `fields` go into the message (`old_disk` -> old-disk)."""
    if kind == "VIRT_CONTROL":
        fields = {"op": "start", "reason": "booted", **fields}
    inner = " ".join(f"{k.replace('_', '-')}={v}" for k, v in fields.items())
    line = (
        ("" if node is None else f"node={node} ")
        + f"type={kind} msg=audit({at:.3f}:{serial}): pid=1 uid=0 auid=4294967295 ses=4294967295 "
        f'msg=\'virt=kvm vm="{vm}" uuid={uuid} {inner} exe="/usr/sbin/libvirtd" '
        f"hostname=? addr=? terminal=? res={res}'"
    )
    rec = parse_line(line)
    assert isinstance(rec, AuditRecord), rec
    return rec


def disk_record(res: str = "failed", **kw: Any) -> AuditRecord:
    return record(
        "VIRT_RESOURCE",
        res,
        resrc="disk",
        reason="attach",
        old_disk='"?"',
        new_disk='"/var/lib/libvirt/images/data.qcow2"',
        **kw,
    )


# A real HTTP receiver


@dataclass
class Receiver:
    """What the webhook server got, and how it answers next."""

    requests: list[tuple[dict[str, str], Any]] = field(default_factory=list)
    status: int = 200
    fail_next: int = 0  # answer 500 this many times first
    gate: threading.Event = field(default_factory=threading.Event)  # cleared: requests hang
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [a for _, body in self.requests for a in body["alerts"]]

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rcv = Receiver()
    rcv.gate.set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            rcv.gate.wait(30)
            with rcv.lock:
                if rcv.fail_next > 0:
                    rcv.fail_next -= 1
                    status = 500
                else:
                    status = rcv.status
                    rcv.requests.append((dict(self.headers), body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rcv.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield rcv
    finally:
        rcv.gate.set()
        server.shutdown()
        server.server_close()
        thread.join()


def fast(**kw: Any) -> AlertsConfig:
    """A config with quick retries and no journal (the journal has its own tests)."""
    base = AlertsConfig(journal=False, retry_initial=0.01, retry_max=0.04, drain_timeout=2.0)
    return replace(base, **kw)


def alertmanagers(*urls: str) -> tuple[AlertmanagerConfig, ...]:
    return tuple(AlertmanagerConfig(url=url) for url in urls)


def dead_url() -> str:
    """Return a loopback URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


# The model


def test_failed_start_is_a_critical_alert_with_contract_labels() -> None:
    """A failed op=start raises VirtOperationFailed, critical, with the contract's labels."""
    alert = Alert.from_record(record(), IDENT)
    assert dict(alert.labels) == {
        "alertname": ALERT_NAME,
        "severity": "critical",
        "host": "hv01",
        "virt": "kvm",
        "domain": "web01",
        "uuid": UUID,
        "record": "VIRT_CONTROL",
        "op": "start",
        "reason": "booted",
    }
    assert alert.generator_url == f"{BASE}/api/v1/guests/{UUID}"
    assert alert.annotations["summary"] == "Guest web01 failed to start"
    description = alert.annotations["description"]
    when = "2023-11-14T22:13:20.123Z on hv01"
    for part in ("web01", UUID, "serial 42", when, "virsh start web01"):
        assert part in description
    assert alert.status == "firing"


def test_failed_disk_attach_names_the_device_and_is_a_warning() -> None:
    """A failed resource change is a warning whose description names the device path."""
    alert = Alert.from_record(disk_record(), IDENT)
    assert alert.labels["severity"] == "warning"
    assert alert.labels["resrc"] == "disk"
    assert "op" not in alert.labels
    assert alert.key == ("", UUID, "VIRT_RESOURCE", "disk")
    assert "/var/lib/libvirt/images/data.qcow2" in alert.annotations["description"]
    assert "disk attach failed" in alert.annotations["summary"]


def test_failed_security_label_keys_on_the_model() -> None:
    """A failed VIRT_MACHINE_ID is keyed and labelled by its security model."""
    rec = record("VIRT_MACHINE_ID", vm_ctx="+64055:+64055", img_ctx="+64055:+64055", model="dac")
    alert = Alert.from_record(rec, IDENT)
    assert alert.key == ("", UUID, "VIRT_MACHINE_ID", "dac")
    assert alert.labels["model"] == "dac"
    assert "security label" in alert.annotations["description"]


def test_undecodable_guest_name_gives_valid_utf8() -> None:
    """A hex name with invalid UTF-8 still yields labels JSON and journald accept."""
    line = (
        "type=VIRT_CONTROL msg=audit(1700000000.000:1): pid=1 uid=0 auid=0 ses=1 "
        f"msg='virt=kvm op=start reason=booted vm=77FF65 uuid={UUID} vm-pid=0 res=failed'"
    )
    rec = parse_line(line)
    assert isinstance(rec, AuditRecord)
    alert = Alert.from_record(rec, IDENT)
    alert.labels["domain"].encode("utf-8")
    json.dumps(alert.to_json()).encode("utf-8")


def test_fingerprint_is_fnv1a_of_sorted_labels() -> None:
    """Fingerprints are FNV-1a 64 of the sorted labels (checked against a real Alertmanager
    in test_alerts_alertmanager.py)."""
    assert fingerprint({}) == "cbf29ce484222325"
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint({"alertname": "A"}) != fingerprint({"alertname": "B"})


def test_alerts_carry_the_host_and_identity_labels() -> None:
    """Every alert has `host` ([identity] host for this host's own records) and the
    [identity] labels; the description names the host."""
    identity = Identity("hv01", "https://hv01.example.org:9781/", (("cluster", "prod-eu"),))
    alert = Alert.from_record(record(), identity)
    assert alert.labels["host"] == "hv01"
    assert alert.labels["cluster"] == "prod-eu"
    assert " on hv01 by /usr/sbin/libvirtd." in alert.annotations["description"]
    assert alert.generator_url == f"https://hv01.example.org:9781/api/v1/guests/{UUID}"


def test_a_records_node_is_its_host_and_selects_the_guest_url() -> None:
    """A record with node= (a central collector) is labelled host=<node>, keyed by it, and its
    generatorURL selects the guest of that node."""
    alert = Alert.from_record(record(node="hvA"), IDENT)
    assert alert.labels["host"] == "hvA"
    assert alert.key == ("hvA", UUID, "VIRT_CONTROL", "start")
    assert alert.generator_url == f"{BASE}/api/v1/guests/{UUID}?node=hvA"
    assert " on hvA " in alert.annotations["description"]


def test_old_checkpoint_keys_without_node_are_this_hosts() -> None:
    """An alert saved before keys had a node restores as one of this host's own."""
    doc = Alert.from_record(record(), IDENT).to_json()
    doc["key"] = doc["key"][1:]
    assert Alert.from_json(doc).key == ("", UUID, "VIRT_CONTROL", "start")


# The engine


def test_success_resolves_and_catch_up_is_quiet(receiver: Receiver) -> None:
    """Catch-up failures raise nothing; a live failure fires; a later success (even one read
    while catching up) resolves it with endsAt at the success's time."""
    engine = AlertEngine(fast(webhook=(WebhookConfig(url=receiver.url),)), IDENT)
    engine.start()
    try:
        engine.observe(record(serial=1), live=False)
        assert engine.firing() == []
        engine.observe(record(serial=2), live=True)
        engine.observe(record(serial=3, res="success", op="stop"), live=True)  # other op
        assert [a.serial for a in engine.firing()] == [2]
        engine.observe(record(serial=4, res="success", at=1700000100.5), live=False)
        assert engine.firing() == []
        wait_for(lambda: len(receiver.alerts()) == 2, what="firing + resolved")
    finally:
        engine.close(2.0)
    firing, resolved = receiver.alerts()
    assert firing["status"] == "firing" and firing["endsAt"] == "0001-01-01T00:00:00Z"
    assert resolved["status"] == "resolved"
    assert resolved["endsAt"] == "2023-11-14T22:15:00.500Z"
    assert resolved["labels"] == firing["labels"]


def test_same_failure_on_two_hosts_is_two_alerts(receiver: Receiver) -> None:
    """The same guest failing the same operation on two hosts (a migration) raises two alerts
    with distinct label sets; a success on one host resolves only that host's alert."""
    engine = AlertEngine(fast(webhook=(WebhookConfig(url=receiver.url),)), IDENT)
    engine.observe(record(serial=1, node="hvA", op="migrate", reason="migrated"), live=True)
    engine.observe(record(serial=2, node="hvB", op="migrate", reason="migrated"), live=True)
    engine.observe(record(serial=3, op="migrate", reason="migrated"), live=True)  # this host
    firing = engine.firing()
    assert sorted(a.labels["host"] for a in firing) == ["hv01", "hvA", "hvB"]
    assert len({fingerprint(a.labels) for a in firing}) == 3
    engine.observe(record(res="success", serial=4, node="hvA", op="migrate"), live=True)
    assert sorted(a.labels["host"] for a in engine.firing()) == ["hv01", "hvB"]
    engine.start()
    try:
        wait_for(lambda: len(receiver.alerts()) == 4, what="3 firing + 1 resolved")
    finally:
        engine.close(2.0)
    resolved = [a for a in receiver.alerts() if a["status"] == "resolved"]
    assert [a["labels"]["host"] for a in resolved] == ["hvA"]


def test_on_catch_up_true_alerts_on_old_records() -> None:
    """With on_catch_up, records read while catching up raise alerts too."""
    engine = AlertEngine(fast(on_catch_up=True), IDENT)
    engine.observe(record(), live=False)
    assert len(engine.firing()) == 1


def test_repeated_failure_is_one_alert_and_extends_resolve_after(receiver: Receiver) -> None:
    """The same guest's same op failing again is deduplicated; resolve_after counts from the
    last failure, then the alert resolves by itself."""
    now = [1000.0]
    cfg = fast(webhook=(WebhookConfig(url=receiver.url),), resolve_after=60.0)
    engine = AlertEngine(cfg, IDENT, clock=lambda: now[0])
    engine.observe(record(serial=1), live=True)
    engine.observe(record(serial=2, uuid="00000000-0000-0000-0000-000000000001"), live=True)
    now[0] = 1030.0
    engine.observe(record(serial=3), live=True)
    assert len(engine.firing()) == 2
    engine.tick(1070.0)  # 70 s after the first failures, 40 s after the repeat of UUID's
    assert {a.key[1] for a in engine.firing()} == {UUID}
    engine.tick(1090.0)
    assert engine.firing() == []
    engine.start()
    try:
        wait_for(lambda: len(receiver.alerts()) == 4, what="2 firing + 2 resolved")
    finally:
        engine.close(2.0)
    statuses = [a["status"] for a in receiver.alerts()]
    assert statuses == ["firing", "firing", "resolved", "resolved"]


def test_next_due_names_the_next_resolve_or_resend() -> None:
    """The engine tells the loop when it next has work: nothing while no alert fires, the
    earliest resolve (or re-send, with Alertmanager) otherwise; never a fixed tick."""
    now = [1000.0]
    engine = AlertEngine(fast(resolve_after=600.0), IDENT, clock=lambda: now[0])
    assert engine.next_due() is None
    engine.observe(record(serial=1), live=True)
    assert engine.next_due() == 1600.0
    now[0] = 1100.0
    engine.observe(record(serial=2, uuid="00000000-0000-0000-0000-000000000001"), live=True)
    assert engine.next_due() == 1600.0  # the first one still resolves first
    engine.tick(1300.0)  # early: nothing to do, the due time stays
    assert engine.next_due() == 1600.0 and len(engine.firing()) == 2
    engine.tick(1600.0)
    assert len(engine.firing()) == 1 and engine.next_due() == 1700.0
    engine.tick(1700.0)
    # Nothing fires; the resolutions are kept (and would be re-sent) for the retention.
    assert engine.firing() == []
    assert engine.next_due() == 1600.0 + engine.config.resolved_retention
    # With Alertmanager the re-send comes first; a reload that adds it moves the due time.
    engine.observe(record(serial=3), live=True)  # at 1100
    assert engine.next_due() == 1700.0
    engine.reconfigure(fast(resolve_after=600.0, alertmanager=alertmanagers("http://127.0.0.1:9/")))
    assert engine.next_due() == 1100.0 + engine.config.resend_interval
    engine.close(0.0)


def test_webhook_payload_has_alertmanager_shape_and_bearer_token(
    receiver: Receiver, tmp_path: Path
) -> None:
    """The webhook gets Alertmanager's webhook body (version 4) with the bearer token."""
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    hook = WebhookConfig(url=receiver.url, bearer_token_file=str(token))
    engine = AlertEngine(fast(webhook=(hook,)), IDENT)
    engine.start()
    try:
        engine.observe(disk_record(), live=True)
        wait_for(lambda: receiver.count() == 1, what="one POST")
    finally:
        engine.close(2.0)
    headers, body = receiver.requests[0]
    assert headers["Authorization"] == "Bearer s3cret"
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == "monitord"
    assert body["groupLabels"] == {"alertname": ALERT_NAME}
    assert body["groupKey"] == '{}:{alertname="VirtOperationFailed"}'
    assert body["externalURL"] == BASE
    assert body["commonLabels"]["resrc"] == "disk"
    assert "summary" in body["commonAnnotations"]
    (alert,) = body["alerts"]
    assert alert["generatorURL"] == f"{BASE}/api/v1/guests/{UUID}"
    assert alert["fingerprint"] == fingerprint(alert["labels"])
    assert alert["startsAt"] == "2023-11-14T22:13:20.123Z"


def test_webhook_basic_auth_reads_password_file(receiver: Receiver, tmp_path: Path) -> None:
    """Basic auth sends the user and the password read from its file."""
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    hook = WebhookConfig(
        url=receiver.url, basic_auth_username="mon", basic_auth_password_file=str(pw)
    )
    engine = AlertEngine(fast(webhook=(hook,)), IDENT)
    engine.start()
    try:
        engine.observe(record(), live=True)
        wait_for(lambda: receiver.count() == 1, what="one POST")
    finally:
        engine.close(2.0)
    expected = "Basic " + base64.b64encode(b"mon:hunter2").decode()
    assert receiver.requests[0][0]["Authorization"] == expected


def test_webhook_500s_are_retried_until_delivered(receiver: Receiver) -> None:
    """HTTP 500 answers are retried with backoff; the alert arrives once and counts as sent."""
    receiver.fail_next = 2
    counters = AlertCounters()
    engine = AlertEngine(fast(webhook=(WebhookConfig(url=receiver.url),)), IDENT, counters=counters)
    engine.start()
    try:
        engine.observe(record(), live=True)
        wait_for(lambda: receiver.count() == 1, what="delivery after two 500s")
    finally:
        engine.close(2.0)
    assert receiver.fail_next == 0
    assert counters.get("webhook", "sent") == 1
    assert counters.get("webhook", "failed") == 0


def test_webhook_down_keeps_retrying_and_counts_failed() -> None:
    """A receiver that is down is retried past retry_max (counted failed at each attempt
    then), never given up while the alert fires; it stays queued at shutdown."""
    counters = AlertCounters()
    engine = AlertEngine(fast(webhook=(WebhookConfig(url=dead_url()),)), IDENT, counters=counters)
    engine.start()
    try:
        engine.observe(record(), live=True)
        wait_for(lambda: counters.get("webhook", "failed") >= 3, what="failed attempts")
    finally:
        engine.close(1.0)
    assert counters.get("webhook", "sent") == 0
    assert counters.get("webhook", "dropped") == 0
    (pending,) = engine.to_json()["pending"]
    assert [a["serial"] for a in pending["alerts"]] == [42]


def test_http_4xx_is_not_retried(receiver: Receiver) -> None:
    """A 400 answer cannot be fixed by retrying: the batch is counted failed at once."""
    receiver.status = 400
    counters = AlertCounters()
    sink = WebhookSink(WebhookConfig(url=receiver.url), BASE)
    worker = DeliveryWorker(sink, counters, retry_initial=5.0, retry_max=10.0)
    worker.put(Alert.from_record(record(), IDENT))
    worker.start()
    wait_for(lambda: counters.get("webhook", "failed") == 1, what="failed without retry")
    worker.close(1.0)
    assert receiver.count() == 1
    assert counters.get("webhook", "dropped") == 1  # given up for good


def test_slow_receiver_never_blocks_observe_and_queue_is_bounded(receiver: Receiver) -> None:
    """While the receiver hangs, observe() keeps returning; the queue stays bounded and
    overflow is counted as dropped; once the receiver answers, the rest is delivered."""
    receiver.gate.clear()  # every request hangs until released
    counters = AlertCounters()
    cfg = fast(webhook=(WebhookConfig(url=receiver.url),), queue_size=100, batch_size=50)
    engine = AlertEngine(cfg, IDENT, counters=counters)
    engine.start()
    try:
        engine.observe(record(serial=0, uuid="00000000-0000-0000-0000-000000000000"), live=True)
        wait_for(lambda: len(engine.workers[0]) == 1 and not engine.workers[0]._queue)
        for i in range(1, 1001):  # the worker is stuck in its first request
            engine.observe(record(serial=i, uuid=f"00000000-0000-0000-0000-{i:012d}"), live=True)
        engine.tick(time.time())
        assert receiver.count() == 0  # nothing answered yet: observe() did not wait for it
        assert engine.queue_lengths()["webhook"] == 101  # 100 queued + 1 in flight
        assert counters.get("webhook", "dropped") == 900
        receiver.gate.set()
        wait_for(lambda: len(receiver.alerts()) == 101, what="the rest delivered")
    finally:
        engine.close(2.0)
    assert receiver.count() == 3  # the first alert, then two batches of 50
    assert counters.get("webhook", "sent") == 101


def test_storm_of_10000_failures_is_batched(receiver: Receiver) -> None:
    """10,000 distinct failures in a burst arrive in a few batched requests, none dropped."""
    counters = AlertCounters()
    engine = AlertEngine(fast(webhook=(WebhookConfig(url=receiver.url),)), IDENT, counters=counters)
    records = [record(serial=i, uuid=f"00000000-0000-0000-0000-{i:012d}") for i in range(10_000)]
    engine.start()
    try:
        for rec in records:
            engine.observe(rec, live=True)
        wait_for(lambda: len(receiver.alerts()) == 10_000, timeout=60, what="10,000 alerts")
    finally:
        engine.close(2.0)
    assert receiver.count() <= 10_000 // 500 + 2
    assert counters.get("webhook", "dropped") == 0


def test_firing_alerts_are_bounded_by_max_firing(receiver: Receiver) -> None:
    """Beyond alerts.max_firing, a new failure raises no alert and is counted as dropped."""
    counters = AlertCounters()
    config = fast(webhook=(WebhookConfig(url=receiver.url),), max_firing=3)
    engine = AlertEngine(config, IDENT, counters=counters)
    engine.start()
    try:
        for i in range(5):
            engine.observe(record(serial=i, uuid=f"00000000-0000-0000-0000-{i:012d}"), live=True)
        assert len(engine.firing()) == 3
        assert counters.get("webhook", "dropped") == 2
        # A resolution makes room again.
        engine.observe(record(res="success", uuid="00000000-0000-0000-0000-000000000000"), True)
        engine.observe(record(serial=9, uuid="00000000-0000-0000-0000-000000000009"), live=True)
        assert len(engine.firing()) == 3
        wait_for(lambda: len(receiver.alerts()) == 5, what="3 firing, 1 resolved, 1 new")
    finally:
        engine.close(2.0)


def test_firing_alerts_survive_restart_without_being_resent(receiver: Receiver) -> None:
    """Firing alerts go into the checkpoint; after a restore they are not sent again as new,
    and a later success still resolves them."""
    cfg = fast(webhook=(WebhookConfig(url=receiver.url),))
    first = AlertEngine(cfg, IDENT)
    first.start()
    first.observe(record(), live=True)
    first.observe(disk_record(), live=True)
    wait_for(lambda: len(receiver.alerts()) == 2, what="two firing alerts")
    first.close(2.0)
    doc = json.loads(json.dumps(first.to_json()))  # the checkpoint is plain JSON

    second = AlertEngine(cfg, IDENT)
    second.restore(doc)
    assert [a.key for a in second.firing()] == [a.key for a in first.firing()]
    second.start()
    try:
        second.observe(record(serial=50), live=True)  # repeat failure: still the same alert
        second.tick(time.time())
        second.observe(disk_record(res="success", serial=51), live=False)
        wait_for(lambda: len(receiver.alerts()) == 3, what="the resolution")
    finally:
        second.close(2.0)
    last = receiver.alerts()[2]
    assert last["status"] == "resolved" and last["labels"]["resrc"] == "disk"
    assert receiver.count() == 2  # nothing else was sent
    assert [a.key[3] for a in second.firing()] == ["start"]


def test_restore_ignores_unknown_versions_and_bad_items() -> None:
    """A checkpoint from another version or with broken items does not crash restore."""
    engine = AlertEngine(fast(), IDENT)
    engine.restore({"version": 99, "active": [{}]})
    engine.restore({"version": 1, "active": [{"alert": {}}]})
    assert engine.firing() == []


def test_reconfigure_keeps_queued_alerts_of_sinks_that_stay(receiver: Receiver) -> None:
    """SIGHUP with the same webhook (new settings) keeps what was queued; new sinks appear,
    removed ones go, and alertmanager sinks get their own worker."""
    engine = AlertEngine(fast(webhook=(WebhookConfig(url=receiver.url),)), IDENT)
    for i in range(5):
        engine.observe(record(serial=i, uuid=f"00000000-0000-0000-0000-{i:012d}"), live=True)
    hook = WebhookConfig(url=receiver.url, timeout=3.0)
    engine.reconfigure(fast(webhook=(hook,), alertmanager=alertmanagers(dead_url())))
    assert sorted(w.name for w in engine.workers) == ["alertmanager", "webhook"]
    engine.start()
    try:
        wait_for(lambda: len(receiver.alerts()) == 5, what="queued alerts after reconfigure")
        engine.reconfigure(fast())
        assert engine.workers == ()
    finally:
        engine.close(1.0)


def test_close_returns_at_the_deadline_and_keeps_webhook_alerts() -> None:
    """close() returns by its deadline with a dead sink; the webhook's undelivered alerts
    are kept for the checkpoint, not counted dropped or failed."""
    counters = AlertCounters()
    cfg = fast(webhook=(WebhookConfig(url=dead_url()),), retry_initial=5.0, retry_max=60.0)
    engine = AlertEngine(cfg, IDENT, counters=counters)
    engine.start()
    for i in range(3):
        engine.observe(record(serial=i, uuid=f"00000000-0000-0000-0000-{i:012d}"), live=True)
    started = time.monotonic()
    engine.close(0.5)
    assert time.monotonic() - started < 5.0  # not the 5 s backoff, let alone 60
    wait_for(lambda: len(engine.workers[0]) == 3, what="the batch back in the queue")
    (pending,) = engine.to_json()["pending"]
    assert [a["serial"] for a in pending["alerts"]] == [0, 1, 2]
    counts = Counter(counters.snapshot())
    assert counts[("webhook", "sent")] == counts[("webhook", "dropped")] == 0


def test_journal_without_journald_is_inactive_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With no journald socket the journal sink is skipped with one log line, never a crash."""
    caplog.set_level(logging.WARNING, logger="monitord.alerts")
    missing = str(tmp_path / "no-socket")
    engine = AlertEngine(replace(fast(), journal=True), IDENT, journal_socket=missing)
    engine.start()
    engine.observe(record(), live=True)
    engine.tick(time.time())
    engine.close(1.0)
    assert engine.workers == ()
    inactive = [r for r in caplog.records if "journal sink inactive" in r.getMessage()]
    assert len(inactive) == 1


# TLS


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS receiver with a self-signed certificate for 127.0.0.1."""
    openssl = need_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/hook", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_webhook_tls_is_verified_by_default(tls_receiver: tuple[str, Path]) -> None:
    """An unknown certificate is refused by default and accepted with its ca_file."""
    url, cert = tls_receiver
    alert = Alert.from_record(record(), IDENT)
    with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        WebhookSink(WebhookConfig(url=url, timeout=5.0), BASE).deliver([alert])
    WebhookSink(WebhookConfig(url=url, ca_file=str(cert), timeout=5.0), BASE).deliver([alert])
    WebhookSink(WebhookConfig(url=url, tls_verify=False, timeout=5.0), BASE).deliver([alert])


def test_process_gone_fires_until_the_guests_next_start_or_stop(receiver: Receiver) -> None:
    """VirtGuestProcessGone fires once per guest, outlives resolve_after, survives a restore,
    and resolves at the guest's next start or stop record (not at other records)."""
    engine = AlertEngine(
        fast(webhook=(WebhookConfig(url=receiver.url),), resolve_after=0.001), IDENT
    )
    engine.start()
    try:
        engine.process_gone(UUID, "web01", "kvm", 4242)
        engine.process_gone(UUID, "web01", "kvm", 4242)  # still gone: no second alert
        engine.tick(time.time() + 3600)  # resolve_after does not end it
        (alert,) = engine.firing()
        assert alert.labels["alertname"] == "VirtGuestProcessGone"
        assert alert.labels["host"] == "hv01" and alert.labels["domain"] == "web01"
        assert "4242" in alert.annotations["description"]
        again = AlertEngine(fast(), IDENT)
        again.restore(engine.to_json())
        engine.observe(disk_record(res="success"), live=True)  # not a start or stop
        engine.observe(record(node="hvB", res="success", op="stop"), live=True)  # other host
        assert len(engine.firing()) == 1
        engine.observe(record(res="success", op="start", vm_pid="5000"), live=True)
        assert engine.firing() == []
        again.observe(record(res="success", op="stop", reason="destroyed"), live=False)
        assert again.firing() == []
        wait_for(lambda: len(receiver.alerts()) == 2, what="firing + resolved")
    finally:
        engine.close(2.0)
    assert [a["status"] for a in receiver.alerts()] == ["firing", "resolved"]
