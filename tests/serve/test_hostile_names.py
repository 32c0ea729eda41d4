"""Any bytes as guest names, paths, contexts and reasons: every output stays valid.

Names are decoded with surrogateescape, so bytes that are not UTF-8 live in the
state as lone surrogates. The exposition (text checked by promtool, OpenMetrics by
prometheus-client's strict parser), the JSON documents (strict UTF-8, json.loads)
and the checkpoint round trip must all survive them (the issue's defect 1).
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from monitord.audit.encoding import encode_nv
from monitord.audit.parser import parse_line
from monitord.audit.record import AuditRecord
from monitord.config import StateConfig
from monitord.serve.answers import document_parts
from monitord.serve.exporter import make_registry, render
from monitord.state.table import GuestTable
from monitord.textout import json_bytes
from tests.conftest import need_tool

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def record(kind: str, serial: int, *fields: str | bytes) -> AuditRecord:
    body = b" ".join(f if isinstance(f, bytes) else f.encode() for f in fields)
    line = (
        f"type={kind} msg=audit(1700000000.{serial:03d}:{serial}): pid=1 uid=0 "
        "auid=4294967295 ses=4294967295 msg='".encode()
        + body
        + b' exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? res=success\''
    )
    parsed = parse_line(line)
    assert isinstance(parsed, AuditRecord), line
    return parsed


def raw(key: str, value: bytes) -> bytes:
    """key=value with value's bytes as they are (libvirt writes reason, contexts and model
    unencoded), less what would end the token or the message."""
    kept = bytes(b for b in value if b not in b" \t\n\r'\"\x1d") or b"x"
    return key.encode() + b"=" + kept


def hostile_table(names: list[bytes], path: bytes, ctx: bytes, reason: bytes) -> GuestTable:
    """Guests named by `names`, with a disk at `path`, a label `ctx` and a start `reason`."""
    table = GuestTable(StateConfig(), clock=lambda: 1_700_000_100.0)
    for i, name in enumerate(names):
        uuid = f"00000000-0000-0000-0000-{i:012d}"
        common = ("virt=kvm", encode_nv("vm", name), f"uuid={uuid}")
        table.apply(record("VIRT_RESOURCE", 3 * i, "resrc=disk", raw("reason", reason),
                           *common, 'old-disk="?"', encode_nv("new-disk", path)))  # fmt: skip
        table.apply(record("VIRT_MACHINE_ID", 3 * i + 1, *common, raw("vm-ctx", ctx),
                           raw("img-ctx", ctx), raw("model", ctx)))  # fmt: skip
        table.apply(record("VIRT_CONTROL", 3 * i + 2, "op=start", raw("reason", reason),
                           *common, "vm-pid=42"))  # fmt: skip
    return table


def check_exposition(text: bytes, openmetrics: bool) -> None:
    decoded = text.decode("utf-8")  # strict: no lone surrogates, no raw bad bytes
    parse = om_families if openmetrics else text_string_to_metric_families
    seen: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    for family in parse(decoded):
        for sample in family.samples:
            seen[sample.name, tuple(sorted(sample.labels.items()))] += 1
    duplicates = [key for key, n in seen.items() if n > 1]
    assert not duplicates, duplicates[:3]


def check_json(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"))


hostile = st.binary(min_size=1, max_size=24)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.lists(hostile, min_size=1, max_size=4), path=hostile, ctx=hostile, reason=hostile)
@example(names=[b"\xff\xfe"], path=b"/d/\xff", ctx=b'\x80\n"\\', reason=b"\xc3")
@example(names=[b"\xff", b"\\xff"], path=b"\\x", ctx=b"\xed\xa0\x80", reason=b"\\xc3")
def test_any_bytes_give_valid_outputs(
    names: list[bytes], path: bytes, ctx: bytes, reason: bytes
) -> None:
    """Arbitrary bytes as names, paths, contexts and reasons: text exposition passes
    `promtool check metrics`, OpenMetrics parses strictly with no duplicate series, the JSON
    documents are UTF-8 that json.loads reads, and a checkpoint restores the same output."""
    promtool = need_tool("promtool")
    table = hostile_table(names, path, ctx, reason)
    registry = make_registry(table, "t")
    text, _ = render(registry, None)
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert check.returncode == 0, check.stderr.decode(errors="replace")
    check_exposition(text, openmetrics=False)
    om, content_type = render(registry, OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    check_exposition(om, openmetrics=True)
    doc = check_json(b"".join(document_parts(table.document())))
    assert len(doc["guests"]) == len(names)
    for guest in doc["guests"]:
        one = table.guest_document(guest["uuid"])
        assert one is not None and check_json(json_bytes(one))["uuid"] == guest["uuid"]
    # The checkpoint (JSON with \udcXX escapes) gives back the very same state and outputs.
    saved = json.dumps(table.to_json(), ensure_ascii=True)
    restored = GuestTable(StateConfig(), clock=table.clock)
    restored.restore(json.loads(saved))
    assert restored.to_json() == table.to_json()
    again, _ = render(make_registry(restored, "t"), None)
    assert guest_lines(again) == guest_lines(text)


def guest_lines(text: bytes) -> list[bytes]:
    return [ln for ln in text.split(b"\n") if ln.startswith(b"libvirt_")]


def test_distinct_bytes_stay_distinct() -> None:
    """Two guests whose names differ only in bytes that are not UTF-8 get different
    `domain` labels and names in the API, shown as \\xHH."""
    table = hostile_table([b"vm\xff", b"vm\xfe"], b"/d", b"c", b"booted")
    text, _ = render(make_registry(table, "t"), None)
    assert b'domain="vm\\\\xff"' in text and b'domain="vm\\\\xfe"' in text
    doc = check_json(b"".join(document_parts(table.document())))
    assert sorted(g["name"] for g in doc["guests"]) == ["vm\\xfe", "vm\\xff"]


def test_counter_labels_that_print_alike_share_one_series() -> None:
    """A reason with byte c3 and one spelling `\\xc3` print alike: the event counters give
    one series with both counted, never two series with the same labels."""
    table = GuestTable(StateConfig())
    for serial, reason in ((1, b"\xc3"), (2, b"\\xc3")):
        table.apply(record("VIRT_CONTROL", serial, "op=start", raw("reason", reason),
                           "virt=kvm", 'vm="a"', "uuid=00000000-0000-0000-0000-000000000001",
                           "vm-pid=1"))  # fmt: skip
    text, _ = render(make_registry(table, "t"), None)
    check_exposition(text, openmetrics=False)
    lines = [ln for ln in text.split(b"\n") if ln.startswith(b"libvirt_audit_operations_total{")]
    assert lines == [
        b'libvirt_audit_operations_total{op="start",reason="\\\\xc3",result="success",'
        b'virt="kvm"} 2.0'
    ]
