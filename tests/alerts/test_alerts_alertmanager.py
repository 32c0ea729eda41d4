"""Alerts delivered to real Alertmanagers (Debian's prometheus-alertmanager) on loopback:
an HA pair clustered over gossip, and one behind TLS with client certificates."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from monitord.alerts import ALERT_NAME, AlertEngine, DeliveryError, Identity
from monitord.alerts.counters import AlertCounters
from monitord.alerts.model import Alert, fingerprint
from monitord.alerts.sinks import AlertmanagerSink
from monitord.config import AlertmanagerConfig
from tests.alertmanager import AM_HOOK_CONFIG, Alertmanager, make_certificates
from tests.alerts.test_alerts import (
    BASE,
    IDENT,
    UUID,
    Receiver,
    alertmanagers,
    dead_url,
    disk_record,
    fast,
    receiver,
    record,
    wait_for,
)
from tests.conftest import need_tool
from tests.daemonproc import free_port

__all__ = ["receiver"]  # the fixture, imported for the tests below

PEER_TIMEOUT = 2.0  # how long the second member of the pair waits for the first to notify


@pytest.fixture
def pair(tmp_path: Path, receiver: Receiver) -> Iterator[tuple[Alertmanager, Alertmanager]]:
    """An HA pair: two Alertmanagers clustered over loopback gossip, notifying `receiver`
    once per group (alertname, host)."""
    binary = need_tool("prometheus-alertmanager")
    config = AM_HOOK_CONFIG.format(hook=receiver.url)
    gossip = (free_port(), free_port())
    started: list[Alertmanager] = []
    try:
        for i in range(2):
            started.append(
                Alertmanager(
                    tmp_path / f"am{i + 1}",
                    binary,
                    config=config,
                    cluster_port=gossip[i],
                    peers=(gossip[1 - i],),
                    peer_timeout=f"{PEER_TIMEOUT}s",
                )
            )
        for am in started:
            wait_for(lambda am=am: am.peers() == 2, timeout=20, what=f"{am.url} sees its peer")
        yield started[0], started[1]
    finally:
        for am in started:
            am.stop()


def notifications(rcv: Receiver) -> list[tuple[str, str]]:
    """Return (status, host) of each notification the pair sent, one alert per group."""
    with rcv.lock:
        bodies = [body for _, body in rcv.requests]
    out = []
    for body in bodies:
        (alert,) = body["alerts"]
        out.append((body["status"], alert["labels"]["host"]))
    return sorted(out)


def test_pair_lists_labels_and_annotations_then_resolution(
    pair: tuple[Alertmanager, Alertmanager],
) -> None:
    """Both Alertmanagers of an HA pair list the alert with the contract's labels,
    annotations and generatorURL; a later success resolves it in both. Each alert counts
    once as sent (accepted by at least one)."""
    counters = AlertCounters()
    identity = Identity("hv01", BASE, (("cluster", "prod-eu"),))
    engine = AlertEngine(
        fast(alertmanager=alertmanagers(*(am.url for am in pair))), identity, counters=counters
    )
    engine.start()
    try:
        engine.observe(record(at=time.time()), live=True)
        for am in pair:
            wait_for(lambda am=am: len(am.alerts()) == 1, what=f"alert listed by {am.url}")
        for am in pair:
            (listed,) = am.alerts()
            assert listed["labels"] == {
                "alertname": ALERT_NAME,
                "severity": "critical",
                "host": "hv01",
                "cluster": "prod-eu",
                "virt": "kvm",
                "domain": "web01",
                "uuid": UUID,
                "record": "VIRT_CONTROL",
                "op": "start",
                "reason": "booted",
            }
            assert listed["annotations"]["summary"] == "Guest web01 failed to start"
            assert UUID in listed["annotations"]["description"]
            assert listed["generatorURL"] == f"{BASE}/api/v1/guests/{UUID}"
            assert listed["status"]["state"] == "active"
            assert listed["fingerprint"] == fingerprint(listed["labels"])
        engine.observe(record(res="success", serial=43, at=time.time()), live=True)
        for am in pair:
            wait_for(lambda am=am: am.alerts() == [], what=f"resolution at {am.url}")
    finally:
        engine.close(2.0)
    assert counters.get("alertmanager", "sent") == 2  # 2 alerts, each to the pair once
    assert counters.get("alertmanager", "failed") == 0


def test_three_hosts_stay_three_alerts_notified_once_each(
    pair: tuple[Alertmanager, Alertmanager], receiver: Receiver
) -> None:
    """The same guest failing the same operation on three hosts (records with node=hvA/hvB/hvC
    read by a central collector) stays three alerts in both Alertmanagers; the pair sends one
    notification per group after deduplication, and one per group when they resolve."""
    counters = AlertCounters()
    now = [time.time()]
    collector = Identity("collector", BASE, (("cluster", "prod-eu"),))
    cfg = fast(alertmanager=alertmanagers(*(am.url for am in pair)), resend_interval=60.0)
    engine = AlertEngine(cfg, collector, clock=lambda: now[0], counters=counters)
    hosts = ("hvA", "hvB", "hvC")
    engine.start()
    try:
        for serial, node in enumerate(hosts):
            engine.observe(record(serial=serial, node=node, at=now[0]), live=True)
        for am in pair:
            wait_for(lambda am=am: len(am.alerts()) == 3, what=f"three alerts at {am.url}")
            listed = am.alerts()
            assert sorted(a["labels"]["host"] for a in listed) == list(hosts)
            assert {a["labels"]["uuid"] for a in listed} == {UUID}
            assert len({a["fingerprint"] for a in listed}) == 3
            assert sorted(a["generatorURL"] for a in listed) == [
                f"{BASE}/api/v1/guests/{UUID}?node={h}" for h in hosts
            ]
        wait_for(lambda: len(notifications(receiver)) >= 3, timeout=20, what="notifications")
        now[0] += 61  # a re-send changes nothing: no new notification
        engine.tick(now[0])
        # The second member notifies only if the first has not within the peer timeout:
        # give it that long (and more) to send a duplicate, if deduplication failed.
        time.sleep(PEER_TIMEOUT * 2)
        assert notifications(receiver) == [("firing", h) for h in hosts]

        for serial, node in enumerate(hosts, start=10):
            engine.observe(record(res="success", serial=serial, node=node), live=True)
        for am in pair:
            wait_for(lambda am=am: am.alerts() == [], what=f"resolved at {am.url}")
        wait_for(lambda: len(notifications(receiver)) >= 6, timeout=20, what="resolutions")
        time.sleep(PEER_TIMEOUT * 2)  # as above: room for a duplicate
        expected = sorted([("firing", h) for h in hosts] + [("resolved", h) for h in hosts])
        assert notifications(receiver) == expected
    finally:
        engine.close(2.0)
    counts = Counter(counters.snapshot())
    assert counts[("alertmanager", "sent")] == 9  # 3 firing, 3 re-sent, 3 resolved
    assert counts[("alertmanager", "failed")] == counts[("alertmanager", "dropped")] == 0


def test_dead_alertmanager_of_a_pair_does_not_stop_the_other(
    pair: tuple[Alertmanager, Alertmanager],
) -> None:
    """With one Alertmanager of the pair down, the other still gets every alert promptly;
    the alert counts as sent, and as failed once for the Alertmanager that is down."""
    up, down = pair
    down.stop()
    counters = AlertCounters()
    cfg = fast(alertmanager=alertmanagers(down.url, up.url), retry_initial=5.0, retry_max=60.0)
    engine = AlertEngine(cfg, IDENT, counters=counters)
    engine.start()
    try:
        engine.observe(record(at=time.time()), live=True)
        wait_for(lambda: len(up.alerts()) == 1, what="alert at the live Alertmanager")
        wait_for(lambda: counters.get("alertmanager", "failed") == 1, what="failed count")
    finally:
        engine.close(0.2)
    assert counters.get("alertmanager", "sent") == 1
    assert counters.get("alertmanager", "dropped") == 0


def test_alert_no_alertmanager_accepted_is_dropped() -> None:
    """When no Alertmanager accepts a batch after the retries, each alert counts dropped once,
    and failed once per Alertmanager."""
    counters = AlertCounters()
    engine = AlertEngine(
        fast(alertmanager=alertmanagers(dead_url(), dead_url())), IDENT, counters=counters
    )
    engine.start()
    try:
        engine.observe(record(), live=True)
        wait_for(lambda: counters.get("alertmanager", "dropped") == 1, what="dropped")
    finally:
        engine.close(1.0)
    assert counters.get("alertmanager", "failed") == 2
    assert counters.get("alertmanager", "sent") == 0


def test_firing_alerts_are_resent_and_kept_alive(
    pair: tuple[Alertmanager, Alertmanager],
) -> None:
    """tick() re-sends firing alerts every resend_interval, pushing endsAt forward, and
    resolve_after finally resolves them in Alertmanager."""
    am = pair[0]
    t0 = time.time() - 3700  # the failure was seen an hour ago (injected clock)
    cfg = fast(alertmanager=alertmanagers(am.url), resend_interval=60.0, resolve_after=3600.0)
    engine = AlertEngine(cfg, IDENT, clock=lambda: t0)
    engine.start()
    try:
        engine.observe(disk_record(at=t0), live=True)
        wait_for(lambda: len(am.alerts()) == 1, what="alert listed")
        first_end = am.alerts()[0]["endsAt"]
        engine.tick(t0 + 30)  # too early: nothing re-sent
        engine.tick(t0 + 61)
        wait_for(lambda: am.alerts()[0]["endsAt"] != first_end, what="endsAt extended")
        assert am.alerts()[0]["endsAt"] > first_end
        engine.tick(time.time())  # now more than resolve_after after the failure
        wait_for(lambda: am.alerts() == [], what="resolved after resolve_after")
    finally:
        engine.close(2.0)


# What an Alertmanager is sent, seen on the wire


class Capture:
    """An HTTP server standing in for Alertmanager's API: records each POST's headers and body."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], Any]] = []
        self.lock = threading.Lock()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with capture.lock:
                    capture.posts.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def capture() -> Iterator[Capture]:
    cap = Capture()
    try:
        yield cap
    finally:
        cap.close()


def posted(cap: Capture) -> list[dict[str, Any]]:
    with cap.lock:
        return [a for _, body in cap.posts for a in body]


def test_resolved_alerts_are_resent_for_the_retention(capture: Capture) -> None:
    """A resolved alert is re-sent at every resend_interval until resolved_retention has
    passed, then forgotten (the firing one goes on being re-sent)."""
    now = [10_000.0]
    cfg = fast(
        alertmanager=alertmanagers(capture.url), resend_interval=60.0, resolved_retention=900.0
    )
    engine = AlertEngine(cfg, IDENT, clock=lambda: now[0])
    engine.start()
    try:
        engine.observe(record(serial=1, at=now[0]), live=True)
        engine.observe(disk_record(serial=2, at=now[0]), live=True)
        engine.observe(record(res="success", serial=3, at=now[0] + 1), live=True)
        wait_for(lambda: len(posted(capture)) == 3, what="2 firing + 1 resolved")
        for minute in range(1, 15):  # re-sent every minute within the 15 minutes
            now[0] = 10_000.0 + 60 * minute + 0.5
            engine.tick(now[0])
            wait_for(lambda m=minute: len(posted(capture)) == 3 + 2 * m, what=f"minute {minute}")
        # Past the retention: the resolution is no longer sent, the disk alert still is.
        now[0] = 10_000.0 + 60 * 15 + 0.5
        engine.tick(now[0])
        wait_for(lambda: len(posted(capture)) == 3 + 2 * 14 + 1, what="only the firing one")
        last = posted(capture)[-1]
        assert last["labels"]["resrc"] == "disk"
        assert engine.to_json()["resolved"] == []
    finally:
        engine.close(2.0)
    resolved = [a for a in posted(capture) if a["labels"].get("op") == "start"][1:]
    assert len(resolved) == 15  # sent when it resolved, then at 14 re-sends
    assert {a["endsAt"] for a in resolved} == {"1970-01-01T02:46:41.000Z"}  # the success


def test_a_resolution_does_not_undo_the_same_alert_firing_again(capture: Capture) -> None:
    """When an alert resolves and fires again, re-sends carry the new firing, not the old
    resolution (same labels: Alertmanager would resolve the new one)."""
    now = [10_000.0]
    cfg = fast(alertmanager=alertmanagers(capture.url), resend_interval=60.0)
    engine = AlertEngine(cfg, IDENT, clock=lambda: now[0])
    engine.start()
    try:
        engine.observe(record(serial=1), live=True)
        engine.observe(record(res="success", serial=2), live=True)
        engine.observe(record(serial=3, at=1700000500.0), live=True)
        wait_for(lambda: len(posted(capture)) == 3, what="firing, resolved, firing")
        now[0] += 61
        engine.tick(now[0])
        wait_for(lambda: len(posted(capture)) == 4, what="one re-send")
    finally:
        engine.close(2.0)
    resent = posted(capture)[-1]
    assert resent["startsAt"] == "2023-11-14T22:21:40.000Z"
    assert resent["endsAt"] > "2023-11-14T22:21:40.000Z"  # valid-until, in the future


def test_bearer_token_and_basic_auth_towards_alertmanager(capture: Capture, tmp_path: Path) -> None:
    """Alertmanager entries take the webhook's credential keys: a bearer token file, or a
    user with a password file."""
    token, password = tmp_path / "token", tmp_path / "password"
    token.write_text("t0ken\n")
    password.write_text("s3cret\n")
    alert = Alert.from_record(record(), IDENT)
    AlertmanagerSink(
        [AlertmanagerConfig(url=capture.url, bearer_token_file=str(token))], 60.0
    ).deliver([alert])
    AlertmanagerSink(
        [
            AlertmanagerConfig(
                url=capture.url + "/prefix/",
                basic_auth_username="monitord",
                basic_auth_password_file=str(password),
            )
        ],
        60.0,
    ).deliver([alert])
    with capture.lock:
        (first, _), (second, _) = capture.posts
    assert first["Authorization"] == "Bearer t0ken"
    assert second["Authorization"] == "Basic " + base64.b64encode(b"monitord:s3cret").decode()


# TLS


def test_alertmanager_behind_tls_with_client_certificate_and_basic_auth(tmp_path: Path) -> None:
    """A real Alertmanager serving TLS that requires a client certificate and basic auth
    (exporter-toolkit web config) gets the alert when monitord has the CA, the certificate
    and the password; without the certificate, or with a wrong password, it does not."""
    binary = need_tool("prometheus-alertmanager")
    certs = make_certificates(need_tool("openssl"), tmp_path / "tls")
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web_config = (
        "tls_server_config:\n"
        f"  cert_file: {certs.server_cert}\n"
        f"  key_file: {certs.server_key}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        f"  client_ca_file: {certs.ca}\n"
        "basic_auth_users:\n"
        f"  monitord: '{hashed}'\n"
    )
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    auth = {"Authorization": "Basic " + base64.b64encode(b"monitord:s3cret").decode()}
    am = Alertmanager(tmp_path / "am", binary, web_config=web_config, context=context, headers=auth)
    try:
        password, wrong = tmp_path / "password", tmp_path / "wrong"
        password.write_text("s3cret\n")
        wrong.write_text("guess\n")
        good = AlertmanagerConfig(
            url=am.url,
            ca_file=str(certs.ca),
            cert_file=str(certs.client_cert),
            key_file=str(certs.client_key),
            basic_auth_username="monitord",
            basic_auth_password_file=str(password),
            timeout=5.0,
        )
        alert = Alert.from_record(record(at=time.time()), IDENT)
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            AlertmanagerSink([replace(good, ca_file=None)], 60.0).deliver([alert])
        with pytest.raises(DeliveryError):  # no client certificate: the handshake fails
            AlertmanagerSink([replace(good, cert_file=None, key_file=None)], 60.0).deliver([alert])
        with pytest.raises(DeliveryError, match="HTTP 401") as info:
            bad = replace(good, basic_auth_password_file=str(wrong))
            AlertmanagerSink([bad], 60.0).deliver([alert])
        assert not info.value.retry
        assert am.alerts() == []

        counters = AlertCounters()
        engine = AlertEngine(fast(alertmanager=(good,)), IDENT, counters=counters)
        engine.start()
        try:
            engine.observe(record(at=time.time()), live=True)
            wait_for(lambda: len(am.alerts()) == 1, what="alert over TLS")
        finally:
            engine.close(2.0)
        assert am.alerts()[0]["labels"]["host"] == "hv01"
        assert counters.get("alertmanager", "sent") == 1
    finally:
        am.stop()
