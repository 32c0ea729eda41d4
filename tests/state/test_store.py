"""The SQLite state store: what a commit writes comes back exactly; history queries; pruning."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from monitord.audit.record import AuditRecord
from monitord.state import schema
from monitord.state.history import EventQuery, HistoryReader, matches
from monitord.state.store import COMPACT_ROWS, Store, StoreLocked
from tests.state import store_corruptions as c


def wal_frames(state: Path) -> int:
    wal = state / (schema.DB_NAME + "-wal")
    size = wal.stat().st_size if wal.exists() else 0
    return max(0, size - 32) // (schema.PAGE_SIZE + 24)


def shifted(r: AuditRecord, dt: float, serial: int = 0) -> AuditRecord:
    return dataclasses.replace(r, time=r.time + dt, serial=r.serial + serial)


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_commit_round_trip(tmp_path: Path) -> None:
    """Position, guests (in last-change order), deletions, meta, counters and alerts come back."""
    store, loaded = Store.open(str(tmp_path))
    assert loaded.origin == "fresh"
    g = {u: c.guest(u, u.upper()) for u in ("a", "b", "c")}
    assert store.commit(
        source_kind="file", position=c.position(10),
        upserted=[(("", u), doc) for u, doc in g.items()],
        meta={"evicted": 0, "label_values": {"op": ["start"]}},
        counters={"parse": {"lines": 1}, "lag": {"counts": [1, 2]}},
        alerts={"version": 1, "active": [{"alert": {"x": 1}}], "pending": {"journal": []}},
    )  # fmt: skip
    changed = {**g["a"], "vcpus": 8}
    assert store.commit(
        source_kind="file", position=c.position(20), upserted=[(("", "a"), changed)],
        deleted=[("", "b")], meta={"evicted": 1, "label_values": {"op": ["start"]}},
        counters={"parse": {"lines": 2}}, alerts=None,
    )  # fmt: skip
    store.close()
    store, loaded = Store.open(str(tmp_path))
    assert loaded.origin == "store"
    assert loaded.position == c.position(20) and loaded.source_kind == "file"
    assert loaded.guests == (g["c"], changed)
    assert loaded.meta == {"evicted": 1, "label_values": {"op": ["start"]}}
    assert loaded.counters == {"parse": {"lines": 2}}  # `lag` was not given any more: dropped
    assert loaded.alerts == {"version": 1, "active": [{"alert": {"x": 1}}],
                             "pending": {"journal": []}}  # fmt: skip
    store.close()


def test_guest_log_folds_into_the_table(tmp_path: Path) -> None:
    """Many commits of a few guests each: the log is folded, the latest document always wins."""
    store, _ = Store.open(str(tmp_path))
    expected: dict[str, dict[str, Any]] = {}
    for i in range(3 * COMPACT_ROWS):
        uuid = f"g{i % 37}"
        doc = c.guest(uuid, uuid, i)
        expected.pop(uuid, None)
        expected[uuid] = doc
        deleted = []
        if i % 50 == 49:
            gone = f"g{(i + 5) % 37}"
            expected.pop(gone, None)
            deleted.append(("", gone))
        assert store.commit(source_kind=None, position=None, upserted=[(("", uuid), doc)],
                            deleted=deleted)  # fmt: skip
    store.close()
    conn = sqlite3.connect(tmp_path / schema.DB_NAME)
    log_rows = conn.execute("SELECT count(*) FROM guest_log").fetchone()[0]
    conn.close()
    assert log_rows < 3 * COMPACT_ROWS  # it was folded at least once
    store, loaded = Store.open(str(tmp_path))
    assert loaded.guests == tuple(expected.values())
    store.close()


def test_commit_cost_follows_what_changed(tmp_path: Path) -> None:
    """One event and one guest changed on a store of 500 guests: a handful of pages, not all."""
    store, _ = Store.open(str(tmp_path))
    guests = [(("", f"u{i}"), c.guest(f"u{i}", f"n{i}", i)) for i in range(500)]
    recs = c.records()
    assert store.commit(source_kind="file", position=c.position(), upserted=guests,
                        meta={"m": list(range(200))}, counters={"parse": {"n": 1}}, events=recs,
                        full=True)  # fmt: skip
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
    before = wal_frames(tmp_path)
    assert store.commit(source_kind="file", position=c.position(200),
                        upserted=[(("", "u7"), c.guest("u7", "n7", 99))],
                        meta={"m": list(range(200))}, counters={"parse": {"n": 2}},
                        events=[shifted(recs[0], 1.0, 1000)])  # fmt: skip
    written = wal_frames(tmp_path) - before
    store.close()
    assert written <= 8, written


def test_history_filters_cursor_and_order_match_the_records(tmp_path: Path) -> None:
    """Every filter, page size and order gives exactly what filtering the records gives."""
    recs = c.records()
    store, _ = Store.open(str(tmp_path))
    assert store.commit(source_kind=None, position=None, events=recs[:30])
    assert store.commit(source_kind=None, position=None, events=recs[30:])
    reader = store.history
    uuids = sorted({r.fields["uuid"] for r in recs if r.fields.get("uuid")})
    times = sorted(r.time for r in recs)
    queries = [
        EventQuery(),
        *(EventQuery(uuid=u) for u in uuids),
        EventQuery(uuid=uuids[0].upper()),
        EventQuery(name="web01"),
        EventQuery(name="db 01"),
        EventQuery(node="host1"),
        EventQuery(node=""),
        EventQuery(since=times[10]),
        EventQuery(until=times[20]),
        EventQuery(since=times[5], until=times[40], result="success"),
        EventQuery(type_id=2500),
        EventQuery(type_id=2502),
        EventQuery(op="start"),
        EventQuery(op="stop", result="success"),
        EventQuery(resrc="disk"),
        EventQuery(result="failed"),
        EventQuery(uuid=uuids[1], resrc="mem"),
        EventQuery(name="nobody"),
    ]
    for q in queries:
        want = [
            r for r in recs if matches(r, dataclasses.replace(q, uuid=q.uuid and q.uuid.lower()))
        ]
        for limit in (1, 7, 100):
            for order in ("asc", "desc"):
                got: list[AuditRecord] = []
                page = dataclasses.replace(q, limit=limit, order=order)
                pages = 0
                while True:
                    events, nxt = reader.events(page)
                    got += [e.record for e in events]
                    pages += 1
                    assert len(events) <= limit
                    if nxt is None:
                        break
                    page = dataclasses.replace(page, after=nxt)
                expected = want if order == "asc" else want[::-1]
                assert got == expected, (q, limit, order)
    store.close()


def test_guest_events_newest_last(tmp_path: Path) -> None:
    """guest_events(n): the guest's n most recent events, oldest of them first."""
    recs = c.records()
    store, _ = Store.open(str(tmp_path))
    store.commit(source_kind=None, position=None, events=recs)
    uuid = recs[0].fields["uuid"]
    mine = [r for r in recs if r.fields.get("uuid") == uuid and not r.node]
    got = [e.record for e in store.history.guest_events(uuid, "", 5)]
    assert got == mine[-5:]
    assert store.history.guest_events(uuid, "", 0) == []
    store.close()


def test_history_across_buckets(tmp_path: Path) -> None:
    """Guest and time queries stay exact over many buckets (ids beyond 2**14)."""
    recs = c.records()
    store, _ = Store.open(str(tmp_path))
    stream = [shifted(r, 100.0 * k, 100 * k) for k in range(700) for r in recs]  # 38,500 events
    for i in range(0, len(stream), 5000):
        assert store.commit(source_kind=None, position=None, events=stream[i : i + 5000])
    uuid = recs[0].fields["uuid"]
    q = EventQuery(uuid=uuid, since=stream[20_000].time, until=stream[30_000].time)
    want = [r for r in stream if matches(r, q)]
    assert [e.record for e in store.history.iter_events(q, page=333)] == want
    q = EventQuery(since=stream[17_000].time, op="start", order="desc")
    want = [r for r in reversed(stream) if matches(r, q)]
    assert [e.record for e in store.history.iter_events(q, page=500)] == want
    store.close()


def test_prune_by_age_keeps_the_recent_and_frees_shapes(tmp_path: Path) -> None:
    """Events older than the retention (by record time) go; shapes and guests only they used too."""
    recs = c.records()
    clock, mono = Clock(recs[-1].time + 10_000), Clock(0.0)
    store, _ = Store.open(str(tmp_path), retention=3600.0, clock=clock, monotonic=mono)
    old = [dataclasses.replace(r, fields={**r.fields, "reason": "old-only"}) for r in recs]
    assert store.commit(source_kind=None, position=None, events=old)
    new = [shifted(r, 7200.0, 1000) for r in recs]
    mono.t = 1000.0  # the prune pass is due
    assert store.commit(source_kind=None, position=None, events=new)
    got = [e.record for e in store.history.iter_events(EventQuery())]
    assert got == new
    assert store.stats().pruned == {"age": len(old), "size": 0}
    conn = sqlite3.connect(tmp_path / schema.DB_NAME)
    docs = [d for (d,) in conn.execute("SELECT doc FROM shapes")]
    conn.close()
    assert not any("old-only" in d for d in docs)
    store.close()
    store, _ = Store.open(str(tmp_path), retention=3600.0, clock=clock, monotonic=mono)
    assert [e.record for e in store.history.iter_events(EventQuery())] == new
    store.close()


def test_prune_by_size_keeps_the_store_under_the_cap(tmp_path: Path) -> None:
    """Beyond history_max_bytes the oldest events go, a batch per commit, newest kept."""
    recs = c.records()
    mono = Clock(0.0)
    store, _ = Store.open(str(tmp_path), max_bytes=2 << 20, monotonic=mono)
    stream = [shifted(r, 100.0 * k, 100 * k) for k in range(1000) for r in recs]
    for i in range(0, len(stream), 5500):
        mono.t += 100.0
        assert store.commit(source_kind=None, position=None, events=stream[i : i + 5500])
    for _ in range(3):
        mono.t += 100.0
        store.commit(source_kind=None, position=None)
    stats = store.stats()
    assert stats.pruned["size"] > 0
    held = [e.record for e in store.history.iter_events(EventQuery())]
    assert held == stream[-len(held) :]
    conn = sqlite3.connect(tmp_path / schema.DB_NAME)
    pages, free = (
        conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count")
    )
    conn.close()
    assert (pages - free) * schema.PAGE_SIZE <= 2 << 20
    store.close()


def test_checkpoint_json_is_imported_once(tmp_path: Path) -> None:
    """A version-1 checkpoint.json: position, guests, counters, alerts and its events imported,
    the file renamed."""
    c.make_checkpoint_json(tmp_path)
    original = json.loads((tmp_path / "checkpoint.json").read_text())
    store, loaded = Store.open(str(tmp_path))
    assert loaded.origin == "checkpoint.json"
    assert not (tmp_path / "checkpoint.json").exists()
    assert list(tmp_path.glob("checkpoint.json.imported-*"))
    assert loaded.position == original["source"]["position"]
    guests = original["state"]["guests"]
    assert loaded.guests == tuple({k: v for k, v in g.items() if k != "events"} for g in guests)
    assert loaded.meta == {k: v for k, v in original["state"].items() if k != "guests"}
    assert loaded.counters == {"telemetry": original["telemetry"]}
    assert loaded.alerts == original["alerts"]
    kept = sorted(
        (AuditRecord.from_json(e) for g in guests for e in g["events"]),
        key=lambda r: (r.time, r.serial),
    )
    assert [e.record for e in store.history.iter_events(EventQuery())] == kept
    store.close()
    store, again = Store.open(str(tmp_path))
    assert again.origin == "store" and again.guests == loaded.guests
    assert again.meta == loaded.meta and again.position == loaded.position
    store.close()


def test_checkpoint_json_beside_a_store_is_not_imported(tmp_path: Path) -> None:
    """When state.db exists, an old checkpoint.json is renamed aside, not read."""
    c.make_store(tmp_path)
    c.make_checkpoint_json(tmp_path)
    store, loaded = Store.open(str(tmp_path))
    assert loaded.origin == "store" and loaded.position == c.position()
    assert list(tmp_path.glob("checkpoint.json.ignored-*"))
    store.close()


def test_a_second_writer_is_refused_readers_are_not(tmp_path: Path) -> None:
    """Another Store on the directory is StoreLocked; read-only readers work while it commits."""
    recs = c.records()
    store, _ = Store.open(str(tmp_path))
    with pytest.raises(StoreLocked):
        Store.open(str(tmp_path))
    reader = HistoryReader.open(str(tmp_path))
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                events = list(reader.iter_events(EventQuery()))
                # Every snapshot is a whole number of commits, in order.
                assert [e.record for e in events] == (recs * 20)[: len(events)]
                assert len(events) % len(recs) == 0
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=read)
    thread.start()
    for _ in range(20):
        assert store.commit(source_kind=None, position=None, events=recs)
    done.set()
    thread.join()
    assert not errors
    reader.close()
    store.close()


def test_deleted_database_is_rewritten_from_the_full_state(tmp_path: Path) -> None:
    """state.db deleted while open: the commit fails, asks for the full state, then holds it."""
    store, _ = Store.open(str(tmp_path))
    docs = [(("", f"u{i}"), c.guest(f"u{i}", "x")) for i in range(4)]
    assert store.commit(source_kind="file", position=c.position(1), upserted=docs)
    for p in tmp_path.glob(schema.DB_NAME + "*"):
        p.unlink()
    assert not store.commit(source_kind="file", position=c.position(2), upserted=docs[:1])
    assert store.needs_full_state
    assert store.commit(source_kind="file", position=c.position(3), upserted=docs, full=True)
    assert not store.needs_full_state
    store.close()
    store, loaded = Store.open(str(tmp_path))
    assert loaded.guests == tuple(d for _, d in docs) and loaded.position == c.position(3)
    store.close()


def test_deleted_state_directory_is_unhealthy_after_the_grace(tmp_path: Path) -> None:
    """Commits into a removed directory that cannot be made again fail and are counted;
    healthy() turns false after the grace, with the reason; once the directory can be
    made, the store makes it and the next commits hold everything."""
    import shutil

    state = tmp_path / "state"
    mono = Clock(100.0)
    store, _ = Store.open(str(state), grace=3.0, monotonic=mono)
    recs = c.records()
    assert store.commit(source_kind=None, position=None, events=recs[:10])
    shutil.rmtree(state)
    state.write_text("a file where the directory was")
    assert not store.commit(source_kind=None, position=None, events=recs[10:20])
    assert store.healthy() == (True, "ok")
    mono.t += 5.0
    assert not store.commit(source_kind=None, position=None, events=recs[20:30])
    ok, reason = store.healthy()
    assert not ok and "is gone and cannot be created" in reason
    assert store.stats().commit_errors == 2
    state.unlink()
    assert not store.commit(source_kind=None, position=None, events=recs[30:])  # needs full
    assert state.is_dir()
    assert store.commit(source_kind=None, position=None, full=True)
    assert store.healthy() == (True, "ok")
    got = [e.record for e in store.history.iter_events(EventQuery())]
    assert got == recs[10:]  # the first ten went with the old directory; nothing doubled
    store.close()


def test_names_that_are_not_utf8_round_trip(tmp_path: Path) -> None:
    """A guest name decoded with surrogate escapes is stored and read back unchanged."""
    r = c.records()[0]
    odd = "caf\udce9-01"
    rec = dataclasses.replace(r, fields={**r.fields, "vm": odd, "new-disk": "/x/\udcff"})
    store, _ = Store.open(str(tmp_path))
    assert store.commit(source_kind=None, position=None, events=[rec],
                        upserted=[(("", odd), {"uuid": odd, "name": odd})])  # fmt: skip
    assert [e.record for e in store.history.events(EventQuery(name=odd))[0]] == [rec]
    store.close()
    store, loaded = Store.open(str(tmp_path))
    assert loaded.guests == ({"uuid": odd, "name": odd},)
    store.close()


def test_unwritable_directory_runs_detached(tmp_path: Path) -> None:
    """A state directory that cannot be created: open still returns, unhealthy after the grace."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    mono = Clock(0.0)
    store, loaded = Store.open(str(blocker / "state"), grace=1.0, monotonic=mono)
    assert loaded.origin == "fresh"
    mono.t = 5.0
    ok, reason = store.healthy()
    assert not ok and "state directory" in reason
    assert not store.commit(source_kind=None, position=None)
    store.close()
    assert os.listdir(tmp_path) == ["file"]


def test_commit_thread_takes_one_commit_at_a_time(tmp_path: Path) -> None:
    """CommitThread: submit() returns at once, refuses while busy; every accepted commit lands."""
    from monitord.state.store import CommitThread

    recs = c.records()
    store, _ = Store.open(str(tmp_path))
    committer = CommitThread(store)
    accepted = 0
    sent: list[AuditRecord] = []
    pending: list[AuditRecord] = []
    for i in range(200):
        pending.append(shifted(recs[i % len(recs)], float(i), 10_000 + i))
        if committer.submit(source_kind=None, position=c.position(i), events=list(pending)):
            accepted += 1
            sent += pending
            pending = []
    assert committer.wait(10)
    assert committer.submit(source_kind=None, position=c.position(999), events=pending)
    sent += pending
    committer.close(10)
    assert committer.last_ok is True and accepted >= 1
    assert [e.record for e in store.history.iter_events(EventQuery())] == sent
    store.close()


def test_store_metrics(tmp_path: Path) -> None:
    """StoreCollector: set-aside reasons, history size and pruning as Prometheus samples."""
    from prometheus_client import CollectorRegistry

    from monitord.state.metrics import StoreCollector

    (tmp_path / schema.DB_NAME).write_bytes(b"not a database at all" * 10)
    store, _ = Store.open(str(tmp_path))
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    store.commit(source_kind=None, position=None, events=c.records())
    value = registry.get_sample_value
    assert value("monitord_state_set_aside_total", {"reason": "not_a_database"}) == 1
    assert value("monitord_state_set_aside_total", {"reason": "corrupt"}) == 0
    assert value("monitord_history_events") == len(c.records())
    assert value("monitord_history_pruned_total", {"reason": "age"}) == 0
    assert value("monitord_state_store_bytes") > 0
    store.close()
