"""A central collector's aggregated log keeps each node's guests apart (issue 15, Targets).

The aggregated log is what a receiving auditd writes for its audisp-remote senders: each
sender's own log, every line prefixed with `node=<name> `, the senders' lines interleaved.
Replayed through one guest table it must give, node by node, exactly the guests that
node's own log gives alone.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from monitord.audit.parser import StreamParser
from monitord.commands.simulate import AuditClock, Fleet, noise_lines
from monitord.config import StateConfig
from monitord.state.table import GuestTable

NODES = 20
GUESTS = 10
STEPS = 40  # libvirt operations per node after every guest's first start


def node_name(i: int) -> str:
    return f"hv{i:02d}"


def own_logs() -> tuple[dict[str, list[bytes]], str]:
    """Each node's own audit.log lines (no `node=`), and a UUID that hv00 and hv01 share.

    Every guest starts once, then the node runs STEPS operations; non-libvirt noise between.
    """
    fleets = []
    for i in range(NODES):
        clock = AuditClock(1_700_000_000.0 + i * 0.01)
        fleets.append(Fleet(100 + i, guests=GUESTS, virt="mixed", clock=clock))
    twin = fleets[0].guests[0].uuid
    fleets[1].guests[3].uuid = twin  # another guest (name, devices) behind the same UUID
    logs: dict[str, list[bytes]] = {}
    for i, fleet in enumerate(fleets):
        rng = random.Random(i)
        lines: list[bytes] = []
        for g in fleet.guests:
            lines.extend(ev.line for ev in fleet._start(g, "booted"))
            lines.extend(noise_lines(rng, fleet.clock))
        events = fleet.events()
        for _ in range(STEPS * 3):
            lines.append(next(events).line)
            lines.extend(noise_lines(rng, fleet.clock))
        logs[node_name(i)] = lines
    return logs, twin


def aggregate(logs: dict[str, list[bytes]], seed: int = 7) -> list[bytes]:
    """The receiving auditd's log: each node's lines in their order, prefixed, interleaved."""
    rng = random.Random(seed)
    pending = {node: iter(lines) for node, lines in logs.items()}
    out: list[bytes] = []
    while pending:
        node = rng.choice(sorted(pending))
        line = next(pending[node], None)
        if line is None:
            del pending[node]
        else:
            out.append(b"node=" + node.encode() + b" " + line)
    return out


def replay(lines: Iterable[bytes], host: str) -> GuestTable:
    table = GuestTable(StateConfig(), clock=lambda: 1_800_000_000.0, host=host)
    parser = StreamParser()
    table.apply_many(parser.feed(b"".join(lines)) + parser.finish())
    return table


@pytest.fixture(scope="module")
def world() -> tuple[dict[str, list[bytes]], str, GuestTable]:
    """Each node's own log, the shared UUID, and the aggregated log replayed."""
    logs, twin = own_logs()
    return logs, twin, replay(aggregate(logs), host="collector")


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """A guest document without what names the host (its events' `node` too)."""
    out = {k: v for k, v in doc.items() if k not in ("node", "host", "events")}
    out["events"] = [{k: v for k, v in e.items() if k != "node"} for e in doc["events"]]
    return out


def test_each_nodes_guests_equal_its_own_log_replayed(
    world: tuple[dict[str, list[bytes]], str, GuestTable],
) -> None:
    """N x M guests; each node's documents equal its own log's, field by field."""
    logs, _, collector = world
    assert collector.guests_tracked == NODES * GUESTS
    docs = collector.document()["guests"]
    assert len({(d["node"], d["uuid"]) for d in docs}) == NODES * GUESTS
    for node, lines in logs.items():
        own = replay(lines, host=node)
        assert own.guests_tracked == GUESTS
        mine = [d for d in docs if d["node"] == node]
        assert sorted(d["uuid"] for d in mine) == sorted(
            d["uuid"] for d in own.document()["guests"]
        )
        for d in mine:
            assert d["host"] == node
            got = collector.guest_document(d["uuid"], node)
            want = own.guest_document(d["uuid"])
            assert got is not None and want is not None
            assert got["node"] == got["host"] == node
            assert all(e["node"] == node for e in got["events"])
            assert want["node"] is None and want["host"] == node
            assert comparable(got) == comparable(want), (node, d["uuid"])


def test_same_uuid_on_two_nodes_is_two_guests(
    world: tuple[dict[str, list[bytes]], str, GuestTable],
) -> None:
    """A UUID on hv00 and hv01 gives two guests, each with its own node's history."""
    _, twin, collector = world
    both = [d for d in collector.document()["guests"] if d["uuid"] == twin]
    assert sorted(d["node"] for d in both) == ["hv00", "hv01"]
    a = collector.guest_document(twin, "hv00")
    b = collector.guest_document(twin, "hv01")
    assert a is not None and b is not None
    assert (a["name"], a["disks"]) != (b["name"], b["disks"])  # not one guest's merged state
    assert {e["node"] for e in a["events"]} == {"hv00"}
    assert {e["node"] for e in b["events"]} == {"hv01"}


def test_counters_are_the_sum_of_the_nodes(
    world: tuple[dict[str, list[bytes]], str, GuestTable],
) -> None:
    """The record and operation counters of the aggregated log add up the nodes' own."""
    logs, _, collector = world
    records: Counter[tuple[str, str, str]] = Counter()
    operations: Counter[tuple[str, str, str, str]] = Counter()
    for node, lines in logs.items():
        own = replay(lines, host=node)
        records.update(own.records)
        operations.update(own.operations)
    assert Counter(collector.records) == records
    assert Counter(collector.operations) == operations
