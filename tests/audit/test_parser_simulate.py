"""The seeded simulator: deterministic, libvirt's order, and every record parses."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

from monitord.audit import AuditRecord, StreamParser, parse_line
from monitord.audit.record import to_int
from monitord.commands.simulate import Fleet, mixed_log
from tests.conftest import ROOT


def take(fleet: Fleet, n: int) -> list[AuditRecord]:
    records = []
    for event in itertools.islice(fleet.events(), n):
        record = parse_line(event.line)
        assert isinstance(record, AuditRecord), event.line
        assert (record.serial, record.type, record.vm, record.uuid, record.result) == (
            event.serial, event.type, event.vm, event.uuid, event.result,
        )  # fmt: skip
        assert event.line.decode("utf-8", "surrogateescape").count(event.msg) == 1
        records.append(record)
    return records


def test_same_seed_same_stream() -> None:
    """Two fleets with one seed write identical bytes; another seed differs."""
    a = [e.line for e in itertools.islice(Fleet(5).events(), 300)]
    b = [e.line for e in itertools.islice(Fleet(5).events(), 300)]
    c = [e.line for e in itertools.islice(Fleet(6).events(), 300)]
    assert a == b and a != c


def test_serials_increase_and_time_advances() -> None:
    """Serials strictly increase and time never goes back."""
    events = list(itertools.islice(Fleet(1, guests=4, virt="mixed").events(), 2000))
    assert all(x.serial < y.serial for x, y in itertools.pairwise(events))
    assert all(x.time <= y.time for x, y in itertools.pairwise(events))


def test_start_order_and_lifecycle_rules() -> None:
    """Resources come before op=start; failed starts and stops carry vm-pid=0; LXC has op=init."""
    records = take(Fleet(3, guests=6, virt="mixed", node="h1"), 3000)
    ops = [r for r in records if r.type == "VIRT_CONTROL"]
    assert {r.op for r in ops} == {"start", "stop", "init"}
    for r in ops:
        if r.op == "stop" or (r.op == "start" and r.result == "failed"):
            assert to_int(r.get("vm-pid")) == 0
        if r.op == "init":
            assert r.virt == "lxc" and to_int(r.get("init-pid")) and to_int(r.get("pid-ns"))
    # Just before every op=start: mem and vcpu of the same guest.
    for i, r in enumerate(records):
        if r.op == "start" and r.type == "VIRT_CONTROL":
            before = [x.resrc for x in records[max(0, i - 3) : i] if x.uuid == r.uuid]
            assert "vcpu" in before
    reasons = {(r.op, r.reason) for r in records if r.type == "VIRT_CONTROL"}
    assert ("stop", "migrated") in reasons and ("start", "migrated") in reasons
    assert {"attach", "detach", "update", "start", "open", "allow", "deny"} <= {
        r.reason for r in records if r.type == "VIRT_RESOURCE"
    }
    assert {r.get("model") for r in records if r.type == "VIRT_MACHINE_ID"} >= {"dac"}
    assert all(r.node == "h1" for r in records)


def test_odd_names_are_encoded_like_libvirt() -> None:
    """Names with spaces/UTF-8/quotes are hex on the line and decode back."""
    fleet = Fleet(9, guests=16)
    lines = {e.vm: e.line for e in itertools.islice(fleet.events(), 5000)}
    assert b"vm=6D7920766D " in lines["my vm"]
    assert b'vm="bob\'s=vm"' in lines["bob's=vm"]
    assert "café-01" in lines and 'say "hi"' in lines


def test_mixed_log_fraction_and_traps() -> None:
    """A mixed log has the asked number of lines, ~5% VIRT records, and the traps."""
    lines = list(mixed_log(11, 20_000))
    assert len(lines) == 20_000
    parser = StreamParser()
    records = parser.feed(b"".join(lines))
    assert 900 <= len(records) <= 1100
    data = b"".join(lines)
    assert b'key="VIRT_RESOURCE"' in data and b'"type=VIRT_CONTROL"' in data
    assert parser.stats.ignored["not_libvirt"] > 0 and not parser.stats.errors
    assert b"\x1d" in data and b"\x1d" not in b"".join(mixed_log(11, 2000, enriched=False))


def test_cli_writes_files(tmp_path: Path) -> None:
    """`python -m monitord.commands.simulate mixed|virt-only` writes the seeded logs."""
    for kind in ("mixed", "virt-only"):
        out = tmp_path / f"{kind}.log"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "monitord.commands.simulate",
                kind,
                "--lines",
                "500",
                "--seed",
                "4",
                str(out),
            ],
            check=True,
            cwd=ROOT,
            timeout=60,
        )
        assert out.read_bytes().count(b"\n") == 500
    assert (tmp_path / "virt-only.log").read_bytes().count(b"type=VIRT_") == 500
