"""Alerts delivered to a real Alertmanager (Debian's prometheus-alertmanager) on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitord.alerts import ALERT_NAME, AlertEngine
from monitord.alerts.counters import AlertCounters
from monitord.alerts.model import fingerprint
from tests.alertmanager import Alertmanager
from tests.alerts.test_alerts import BASE, UUID, disk_record, fast, record, wait_for
from tests.conftest import need_tool


@pytest.fixture
def alertmanagers(tmp_path: Path) -> Iterator[tuple[Alertmanager, Alertmanager]]:
    """An HA pair (two independent Alertmanagers, as monitord sends to each)."""
    binary = need_tool("prometheus-alertmanager")
    first = Alertmanager(tmp_path / "am1", binary)
    try:
        second = Alertmanager(tmp_path / "am2", binary)
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


def test_alertmanager_lists_labels_and_annotations_then_resolution(
    alertmanagers: tuple[Alertmanager, Alertmanager],
) -> None:
    """Both Alertmanagers of an HA pair list the alert with the contract's labels,
    annotations and generatorURL; a later success resolves it in both."""
    ams = alertmanagers
    counters = AlertCounters()
    engine = AlertEngine(fast(alertmanager=tuple(am.url for am in ams)), BASE, counters=counters)
    engine.start()
    try:
        engine.observe(record(at=time.time()), live=True)
        for am in ams:
            wait_for(lambda am=am: len(am.alerts()) == 1, what=f"alert listed by {am.url}")
        for am in ams:
            (listed,) = am.alerts()
            assert listed["labels"] == {
                "alertname": ALERT_NAME,
                "severity": "critical",
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
        for am in ams:
            wait_for(lambda am=am: am.alerts() == [], what=f"resolution at {am.url}")
    finally:
        engine.close(2.0)
    assert counters.get("alertmanager", "sent") == 4  # 2 alerts x 2 Alertmanagers


def test_firing_alerts_are_resent_and_kept_alive(
    alertmanagers: tuple[Alertmanager, Alertmanager],
) -> None:
    """tick() re-sends firing alerts every resend_interval, pushing endsAt forward, and
    resolve_after finally resolves them in Alertmanager."""
    am = alertmanagers[0]
    t0 = time.time() - 3700  # the failure was seen an hour ago (injected clock)
    cfg = fast(alertmanager=(am.url,), resend_interval=60.0, resolve_after=3600.0)
    engine = AlertEngine(cfg, BASE, clock=lambda: t0)
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


def test_dead_alertmanager_of_a_pair_does_not_stop_the_other(
    alertmanagers: tuple[Alertmanager, Alertmanager],
) -> None:
    """With one Alertmanager of the pair down, the other still gets every alert promptly."""
    up, down = alertmanagers
    down.stop()
    counters = AlertCounters()
    cfg = fast(alertmanager=(down.url, up.url), retry_initial=5.0, retry_max=60.0)
    engine = AlertEngine(cfg, BASE, counters=counters)
    engine.start()
    try:
        engine.observe(record(at=time.time()), live=True)
        wait_for(lambda: len(up.alerts()) == 1, what="alert at the live Alertmanager")
    finally:
        engine.close(0.2)
    assert counters.get("alertmanager", "sent") == 1
