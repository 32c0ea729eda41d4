"""Sessions (runs of a guest) derived from libvirt records: starts, stops, crashes, failures."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from monitord.audit.parser import StreamParser
from monitord.audit.record import AuditRecord
from monitord.commands.simulate import Fleet
from monitord.config import StateConfig
from monitord.state.history import EventQuery
from monitord.state.sessions import DEVICE_LISTS, Session, sessions
from monitord.state.store import Store
from monitord.state.table import GuestTable
from tests.conftest import DATA

U = "11111111-2222-4333-8444-555555555555"


def parse(data: bytes) -> list[AuditRecord]:
    parser = StreamParser()
    return parser.feed(data) + parser.finish()


_serial = itertools.count(1)


def rec(t: float, type_id: int, result: str = "success", **fields: str | None) -> AuditRecord:
    names = {2500: "VIRT_CONTROL", 2501: "VIRT_RESOURCE", 2502: "VIRT_MACHINE_ID"}
    body: dict[str, str | None] = {"virt": "kvm", **fields, "vm": "vm1", "uuid": U, "res": result}
    return AuditRecord(names[type_id], type_id, t, next(_serial), None, 1, 0, None, None, None,
                       body, {})  # fmt: skip


def start_set(t: float, disk: str = "/d1.qcow2") -> list[AuditRecord]:
    return [
        rec(t, 2501, resrc="disk", reason="start", **{"old-disk": None, "new-disk": disk}),
        rec(t + 0.1, 2501, resrc="mem", reason="start", **{"old-mem": "0", "new-mem": "1024"}),
        rec(t + 0.2, 2501, resrc="vcpu", reason="start", **{"old-vcpu": "0", "new-vcpu": "2"}),
        rec(t + 0.3, 2502, model="dac", **{"vm-ctx": "+107:+107", "img-ctx": "+107:+107"}),
    ]


def start(t: float, result: str = "success", reason: str = "booted") -> AuditRecord:
    return rec(t, 2500, result, op="start", reason=reason, **{"vm-pid": "4242"})


def stop(t: float, reason: str = "shutdown", result: str = "success") -> AuditRecord:
    return rec(t, 2500, result, op="stop", reason=reason, **{"vm-pid": "0"})


def test_a_run_with_resources_changes_and_failures() -> None:
    """start set + start + hot-plug + a failure + stop: one session with all of it."""
    records = [
        *start_set(100.0),
        start(101.0),
        rec(200.0, 2501, resrc="disk", reason="attach", **{"old-disk": None, "new-disk": "/x"}),
        rec(
            210.0,
            2501,
            "failed",
            resrc="disk",
            reason="attach",
            **{"old-disk": None, "new-disk": "/bad"},
        ),
        rec(220.0, 2501, resrc="mem", reason="update", **{"old-mem": "1024", "new-mem": "2048"}),
        stop(301.0),
    ]
    (s,) = sessions(records)
    doc = s.to_json()
    assert (doc["start"], doc["start_reason"], doc["vm_pid"]) == (101.0, "booted", 4242)
    assert (doc["stop"], doc["stop_reason"], doc["end"], doc["duration"]) == (
        301.0, "shutdown", "stopped", 200.0)  # fmt: skip
    assert doc["resources"]["disks"] == ["/d1.qcow2"]
    assert doc["resources"]["memory_bytes"] == 1024 * 1024 and doc["resources"]["vcpus"] == 2
    assert doc["resources"]["security"] == [
        {"model": "dac", "vm_ctx": "+107:+107", "img_ctx": "+107:+107"}]  # fmt: skip
    assert [(c["resrc"], c["reason"], c["result"], c["old"], c["new"]) for c in doc["changes"]] == [
        ("disk", "attach", "success", None, "/x"),
        ("disk", "attach", "failed", None, "/bad"),
        ("mem", "update", "success", "1024", "2048"),
    ]
    assert [f["time"] for f in doc["failures"]] == [210.0]


def test_a_start_while_running_ends_the_run_without_a_record() -> None:
    """QEMU gone without a stop record: the next start closes the run, `stop` = its first record."""
    records = [*start_set(100.0), start(101.0), *start_set(500.0, "/d2.qcow2"), start(501.0)]
    first, second = sessions(records)
    assert (first.end, first.stop, first.stop_reason) == ("no_record", 500.0, None)
    assert first.duration == 399.0
    assert (second.end, second.start, second.stop) == ("running", 501.0, None)
    assert second.resources["disks"] == ["/d2.qcow2"]
    assert second.duration is None


def test_a_failed_start_is_a_failed_attempt() -> None:
    """op=start res=failed for a stopped guest: a session ended `failed`, with its resources."""
    records = [*start_set(100.0), start(101.0, "failed"), *start_set(200.0), start(201.0)]
    failed, ran = sessions(records)
    assert (failed.end, failed.start, failed.stop) == ("failed", 101.0, None)
    assert [f["op"] for f in failed.failures] == ["start"]
    assert failed.resources["disks"] == ["/d1.qcow2"]
    assert (ran.end, ran.start) == ("running", 201.0)


def test_records_of_a_run_whose_start_is_not_seen() -> None:
    """A log that begins mid-run: a session with no start, its changes, ended by the stop."""
    records = [
        rec(50.0, 2501, resrc="disk", reason="detach", **{"old-disk": "/d", "new-disk": None}),
        stop(60.0, "destroyed"),
        start(70.0),
    ]
    orphan, ran = sessions(records)
    assert (orphan.start, orphan.stop, orphan.end, orphan.duration) == (None, 60.0, "stopped", None)
    assert orphan.changes[0]["old"] == "/d"
    assert ran.start == 70.0


def test_failed_stop_stays_in_the_run() -> None:
    """A failed stop is a failure of the run, which goes on."""
    (s,) = sessions([start(10.0), stop(20.0, result="failed")])
    assert s.end == "running" and len(s.failures) == 1


def test_sessions_of_the_lifecycle_log() -> None:
    """The golden lifecycle log: each guest's runs, as libvirt wrote them."""
    got = [
        (s.name, s.node, s.start, s.start_reason, s.stop_reason, s.end, len(s.changes),
         len(s.failures))
        for s in sessions(parse((DATA / "state" / "lifecycle.log").read_bytes()))
    ]  # fmt: skip
    assert got == [
        ("web01", None, 1700000000.068, "booted", "shutdown", "stopped", 7, 1),
        ("db 01", None, 1700000065.082, "booted", "saved", "stopped", 0, 0),
        ("db 01", None, 1700000105.087, "restored", None, "running", 0, 0),
        ("broken", None, 1700000108.091, "booted", None, "failed", 0, 1),
        ("ct01", None, 1700000110.098, "booted", None, "running", 0, 0),
    ]


def _compare(session: Session, doc: dict[str, Any]) -> None:
    for key in ("vcpus", "iothreads", "memory_bytes"):
        assert session.resources[key] == doc[key], key
    for name in DEVICE_LISTS:
        # Lists are multisets (two identical USB redirdevs are two devices) on both sides.
        assert sorted(session.resources[name]) == sorted(doc[name]), name
    assert session.resources["security"] == doc["security"]


def test_resources_at_start_agree_with_the_guest_table() -> None:
    """For every start in a simulated host's log, the session's resources are what the guest
    document says right after that start (the table is the reference)."""
    lines = []
    for event in itertools.islice(Fleet(5, guests=12, virt="mixed").events(), 20_000):
        lines.append(event.line)
    records = parse(b"".join(lines))
    table = GuestTable(StateConfig(max_events=0))
    running: set[str] = set()
    expected: dict[tuple[str, float], dict[str, Any]] = {}
    for r in records:
        uuid = r.fields.get("uuid")
        table.apply(r)
        if r.type_id == 2500 and r.fields.get("op") == "start" and r.succeeded and uuid:
            if uuid not in running:  # a start after a stop: a new phase in the table too
                doc = table.guest_document(uuid)
                assert doc is not None
                expected[(uuid, r.time)] = doc
            running.add(uuid)
        elif r.type_id == 2500 and r.fields.get("op") == "stop" and r.succeeded and uuid:
            running.discard(uuid)
    checked = 0
    for s in sessions(records):
        if s.start is not None and (s.uuid, s.start) in expected:
            _compare(s, expected[(s.uuid, s.start)])
            checked += 1
    assert checked > 50


def test_the_store_and_the_log_give_the_same_sessions(tmp_path: Path) -> None:
    """Sessions over the store's history equal sessions over the log it came from."""
    records = parse((DATA / "state" / "lifecycle.log").read_bytes())
    records += parse((DATA / "real-libvirt.log").read_bytes())
    store, _ = Store.open(str(tmp_path))
    assert store.commit(source_kind=None, position=None, events=records)
    stored = [e.record for e in store.history.iter_events(EventQuery())]
    assert [s.to_json() for s in sessions(stored)] == [s.to_json() for s in sessions(records)]
    store.close()


def test_overlaps_selects_runs_under_way_in_a_window() -> None:
    """overlaps(since, until): runs that were under way at some time of the window."""
    done = Session(U, None, "a", "kvm", 100.0, "booted", 1, stop=200.0, end="stopped", first=100.0)
    running = Session(U, None, "a", "kvm", 300.0, "booted", 1, first=300.0)
    assert done.overlaps(150.0, None) and not done.overlaps(201.0, None)
    assert done.overlaps(None, 100.0) and not done.overlaps(None, 99.0)
    assert running.overlaps(10_000.0, None) and not running.overlaps(None, 299.0)
