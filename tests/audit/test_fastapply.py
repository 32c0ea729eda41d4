"""The C accelerator's `region_apply` against GuestTable's Python `_apply`, record for record.

`monitord replay` lets C apply the common records straight to the guest table
(`StreamParser.feed_apply` with `GuestTable.fast_context()`). Every input here goes
through both paths and must end in the same table (`to_json()`: guests in their
order, devices, labels, counters and their order, label bounds, evictions), the same
parse counts and the same newest record time.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from monitord.audit.parser import StreamParser
from monitord.audit.record import AuditRecord
from monitord.commands import simulate
from monitord.commands.replay import replay
from monitord.config import StateConfig
from monitord.state.table import GuestTable
from monitord.telemetry import Telemetry
from tests.audit.test_encoding import audit_encode_nv_string
from tests.conftest import DATA, IN_CI, SAMPLES


def _accelerated() -> None:
    if not StreamParser().accelerated:
        if IN_CI:  # ./bootstrap installs gcc and python3-dev: CI must build and test it
            pytest.fail("the C accelerator is not built")
        pytest.skip("the C accelerator is not built (no compiler at install time)")


_accelerated()

GOLDEN = sorted(DATA.glob("*.log")) + sorted((DATA / "real").glob("*.log"))
GOLDEN += sorted(SAMPLES.glob("*.log"))
SMALL = StateConfig(max_events=0, max_guests=4, forget_stopped_after=30.0, max_label_values=3)


ZERO_EVENTS = StateConfig(max_events=0)


def run(chunks: Sequence[bytes], config: StateConfig, fast: bool) -> tuple[Any, ...]:
    """A table document, the parse counts and the newest record time after the chunks,
    with expiry after each chunk as `replay` does; `fast`: through the C path."""
    table = GuestTable(config)
    parser = StreamParser()
    context = table.fast_context() if fast else None
    assert fast is (context is not None)
    times: list[float] = []

    def apply(records: list[AuditRecord]) -> None:
        times.extend(r.time for r in records)
        table.apply_many(records)

    for chunk in chunks:
        t = parser.feed_apply(bytearray(chunk), context, apply)
        times.extend([] if t is None else [t])
        if times:
            table.expire(max(times))
    t = parser.finish_apply(context, apply)
    times.extend([] if t is None else [t])
    return table.to_json(), parser.stats.to_json(), max(times, default=None)


def both(chunks: Sequence[bytes], config: StateConfig = ZERO_EVENTS) -> tuple[Any, Any]:
    """(Python path, C path)."""
    return run(chunks, config, False), run(chunks, config, True)


def cut(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    chunks, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        chunks.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        chunks.append(data[pos:])
    return chunks


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.name)
def test_golden_logs(path: Path) -> None:
    """Every golden log (real libvirt's included) in one chunk and in small random ones."""
    data = path.read_bytes()
    py, c = both([data])
    assert c == py
    rng = random.Random(path.name)
    py2, c2 = both(cut(data, (rng.randint(1, 300) for _ in range(len(data)))))
    assert c2 == py2
    assert c2[0] == py[0]  # the chunking changes nothing but where expiry runs


def test_simulated_log_with_small_bounds() -> None:
    """A mixed simulated log with eviction, expiry and label bounding at work."""
    data = b"".join(simulate.mixed_log(5, 40_000))
    chunks = cut(data, [1 << 16] * (len(data) >> 16))
    py, c = both(chunks, SMALL)
    assert c == py
    assert py[0]["evicted"] > 0
    assert any(v == "other" for row in py[0]["resources"] for v in row[:3])


def test_events_of_a_restored_table_are_cleared_as_python_does() -> None:
    """A checkpoint with kept events, restored where none are kept: each update drops them."""
    data = (DATA / "simulated.log").read_bytes()
    with_events = GuestTable(StateConfig())
    with_events.apply_many(StreamParser().feed(data) + StreamParser().finish())
    doc = with_events.to_json()
    assert any(g["events"] for g in doc["guests"])
    results = []
    for fast in (False, True):
        table = GuestTable(StateConfig(max_events=50))
        table.restore(doc)
        table.config = StateConfig(max_events=0)  # what a reload with max_events = 0 does
        context = table.fast_context() if fast else None
        parser = StreamParser()
        parser.feed_apply(data, context, table.apply_many)
        parser.finish_apply(context, table.apply_many)
        results.append(table.to_json())
    assert results[1] == results[0]


def test_the_c_path_is_taken() -> None:
    """Most records are applied in C (not handed back to Python one by one)."""
    data = b"".join(simulate.virt_only_log(3, 2_000))
    table = GuestTable(StateConfig(max_events=0))
    handed: list[AuditRecord] = []
    parser = StreamParser()
    parser.feed_apply(data, table.fast_context(), handed.extend)
    assert parser.stats.records == 2_000 and len(handed) < 20


def test_no_fast_context_while_events_are_kept() -> None:
    """Kept events need whole records: then the table gives C no context."""
    assert GuestTable(StateConfig(max_events=1)).fast_context() is None


def test_replay_takes_the_c_path_and_ends_as_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """`replay()` itself, with and without the C path, on a log with malformed lines."""
    data = (DATA / "traps.log").read_bytes() + b"".join(simulate.mixed_log(9, 20_000))
    docs = []
    for fast in (False, True):
        table = GuestTable(SMALL)
        if not fast:
            monkeypatch.setattr(table, "fast_context", lambda: None)
        telemetry = replay([("x", io.BytesIO(data))], table, Telemetry(source="file"))
        docs.append((table.to_json(), telemetry.parse.to_json(), telemetry.last_record_time))
    assert docs[1] == docs[0]
    assert docs[0][1]["errors"]


U = ("c857b1ce-7157-4be5-ae36-29cf22a62ec8", "4a2f20aa-f3c6-4af7-b5a8-9294c2cd789a", "?")
RESOURCES = (
    "disk", "net", "fs", "chardev", "rng", "smartcard", "redir", "mem", "vcpu", "iothread",
    "cgroup", "dev", "hostdev", "tpm", "tpm-emulator", "shmem", "evdev", "ivshmem-socket",
    "other", "?",
)  # fmt: skip
COUNTS = ("1024", "0", "?", "+5", " 7", "1_000", "12345678901234567890", "-3", "x")
VALUES = ("/a.img", "/b.img", "52:54:00:00:00:01", "?", "/dev/vg0/c d")
REASONS = ("start", "attach", "detach", "update", "open", "allow", "deny", "?")
RESULTS = ("success", "failed", "1", "0", "yes", "?")


def _value(v: str) -> str:
    if v == "?":
        return "?"
    return f'"{v}"' if " " not in v else audit_encode_nv_string(v.encode())


record_line = st.builds(
    lambda kind, uuid, name, resrc, reason, old, new, count, op, pid, model, res, t: (
        kind, uuid, name, resrc, reason, old, new, count, op, pid, model, res, t
    ),
    st.sampled_from(("control", "resource", "label", "create")),
    st.sampled_from(U),
    st.sampled_from(("vm1", "my vm", "café", "?")),
    st.sampled_from(RESOURCES),
    st.sampled_from(REASONS),
    st.sampled_from(VALUES),
    st.sampled_from(VALUES),
    st.sampled_from(COUNTS),
    st.sampled_from(("start", "stop", "init", "other", "?")),
    st.sampled_from(("0", "1234", "?", "+7", "99999999999999999999")),
    st.sampled_from(("selinux", "dac", "apparmor", "?")),
    st.sampled_from(RESULTS),
    st.integers(0, 50),
)  # fmt: skip


def render(n: int, rec: tuple[Any, ...]) -> bytes:
    kind, uuid, name, resrc, reason, old, new, count, op, pid, model, res, t = rec
    vm = "?" if name == "?" else audit_encode_nv_string(name.encode())
    common = f"virt=kvm vm={vm} uuid={uuid}"
    tail = 'exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? res=' + res
    if kind == "control":
        inner, type_name = f"op={op} reason={reason} {common} vm-pid={pid} {tail}", "VIRT_CONTROL"
    elif kind == "label":
        inner = f'{common} model={model} vm-ctx="u:r:t:s0" img-ctx="+107:+107" {tail}'
        type_name = "VIRT_MACHINE_ID"
    elif kind == "create":
        inner, type_name = f"op=create {common} {tail}", "VIRT_CREATE"
    else:
        type_name = "VIRT_RESOURCE"
        if resrc in ("mem", "vcpu", "iothread"):
            value = f'"{count}"' if " " in count else count
            body = f"old-{resrc}=1 new-{resrc}={value}"
        elif resrc in ("dev", "hostdev"):
            body = f"bus=usb device={_value(new)} disk={_value(old)}"
        elif resrc in ("shmem", "evdev", "ivshmem-socket"):
            body = f"path={_value(new)} size={count}"
        elif resrc.startswith("tpm"):
            body = f"device={_value(new)}"
        elif resrc == "cgroup":
            body = f"cgroup={_value('/m/a')} class=path path={_value(new)} rdev=? acl=rw"
        elif resrc == "net" and reason == "open":
            body = f"net={new} path={_value('/dev/net/tun')} rdev=0A:C8"
        else:
            body = f"old-{resrc}={_value(old)} new-{resrc}={_value(new)}"
        inner = f"reason={reason} {common} resrc={resrc} {body} {tail}"
    stamp = f"{1700000000 + t}.{n % 1000:03d}"
    return (
        f"type={type_name} msg=audit({stamp}:{n}): pid=1 uid=0 auid=4294967295 "
        f"ses=4294967295 msg='{inner}'\x1dUID=\"root\"\n"
    ).encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(record_line, min_size=1, max_size=60), st.integers(1, 400))
@example([("resource", U[0], "vm1", "disk", "start", "?", "/a.img", "0", "start", "0",
           "dac", "success", 0)], 1)  # fmt: skip
def test_generated_records(records: list[tuple[Any, ...]], chunk: int) -> None:
    """Any mix of records, forms, odd counts, pids and results, in chunks of any size."""
    data = b"".join(render(n, r) for n, r in enumerate(records))
    py, c = both(cut(data, [chunk] * (len(data) // chunk + 1)), SMALL)
    assert c == py


def test_one_region_at_a_time() -> None:
    """The module's buffers serve one region at a time: a second caller, from a callback
    (another thread could run there), gets an error, or the Python path for one line."""
    from monitord.audit import parser as parser_module

    fast = parser_module.ACCELERATOR_MODULE
    assert fast is not None
    line = (DATA / "real-libvirt.log").read_bytes().split(b"\n")[0] + b"\n"
    seen: list[object] = []
    table = GuestTable(ZERO_EVENTS)
    add = table._add

    def add_and_reenter(uuid: str) -> Any:
        seen.append(fast.line_json(line))
        with pytest.raises(RuntimeError, match="one parsing thread"):
            fast.region_lines(line, len(line), 65536)
        return add(uuid)

    table._add = add_and_reenter  # type: ignore[method-assign]
    StreamParser().feed_apply(line, table.fast_context(), table.apply_many)
    assert seen == [None] and table.guests_tracked == 1
    assert isinstance(fast.line_json(line), bytes)  # and afterwards as before
