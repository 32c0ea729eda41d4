"""The VIRT_* record parser: golden files, field decoding and StreamParser.

Golden files: every `tests/data/*.log` (and every shared sample in
`contrib/samples/*.log`) has an `.expected.jsonl` with one outcome per line.
Regenerate them with `UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_parser.py`
and review the diff.
"""

# Audit lines are long by nature; keeping each test line whole reads better than wrapping.
# ruff: noqa: E501

from __future__ import annotations

import dataclasses
import json
import os
import resource
from pathlib import Path
from typing import Any

import pytest

from monitord.audit import (
    AuditRecord,
    Ignored,
    ParseError,
    ParseStats,
    StreamParser,
    parse_line,
)
from monitord.audit.jsonl import HEAD_KEYS, JsonLines, dumps
from monitord.audit.parser import (
    PARSE_ERROR_REASONS,
    RecordLines,
    candidate_spans,
)
from monitord.audit.record import DOCUMENT_KEYS
from tests.conftest import DATA, SAMPLES

UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def iter_records(chunks: list[bytes]) -> list[AuditRecord]:
    parser = StreamParser()
    return [r for chunk in chunks for r in parser.feed(chunk)] + parser.finish()


U = "c857b1ce-7157-4be5-ae36-29cf22a62ec8"
HDR = "pid=1349 uid=0 auid=4294967295 ses=4294967295"
TAIL = 'exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? res=success'


def outcome(line: bytes) -> dict[str, Any]:
    """The golden form of what parse_line makes of one line."""
    try:
        result = parse_line(line)
    except ParseError as err:
        return {"error": err.reason}
    if isinstance(result, Ignored):
        return {"ignored": result.reason}
    return {"record": result.to_json()}


def golden_inputs() -> list[tuple[Path, Path]]:
    pairs = [(log, log.with_suffix(".expected.jsonl")) for log in sorted(DATA.glob("*.log"))]
    pairs += [
        (log, DATA / f"sample--{log.stem}.expected.jsonl") for log in sorted(SAMPLES.glob("*.log"))
    ]
    return pairs


@pytest.mark.parametrize(("log", "expected"), golden_inputs(), ids=lambda p: p.name)
def test_golden(log: Path, expected: Path) -> None:
    """Each line of a golden log parses to exactly the recorded outcome."""
    lines = log.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    got = [{"line": i + 1, **outcome(line)} for i, line in enumerate(lines)]
    text = "".join(json.dumps(doc, ensure_ascii=True, sort_keys=False) + "\n" for doc in got)
    if UPDATE or not expected.exists():
        if not UPDATE:
            pytest.fail(f"{expected.name} is missing: run with UPDATE_GOLDEN=1")
        expected.write_text(text)
    want = [json.loads(line) for line in expected.read_text().splitlines()]
    assert [json.loads(line) for line in text.splitlines()] == want


@pytest.mark.parametrize(("log", "expected"), golden_inputs(), ids=lambda p: p.name)
def test_stream_matches_lines(log: Path, expected: Path) -> None:
    """StreamParser over a whole file (in odd-sized chunks) yields the golden records in order."""
    want = [
        doc["record"]
        for doc in map(json.loads, expected.read_text().splitlines())
        if "record" in doc
    ]
    data = log.read_bytes()
    parser = StreamParser()
    records: list[AuditRecord] = []
    for i in range(0, len(data), 97):
        records += parser.feed(data[i : i + 97])
    records += parser.finish()
    assert [r.to_json() for r in records] == want
    errors = sum(1 for doc in map(json.loads, expected.read_text().splitlines()) if "error" in doc)
    assert sum(parser.stats.errors.values()) == errors


def test_golden_covers_the_contract() -> None:
    """The golden set covers every resrc form, the traps, hex names and all record kinds."""
    docs = [
        json.loads(line)
        for _, expected in golden_inputs()
        for line in expected.read_text().splitlines()
    ]
    records = [d["record"] for d in docs if "record" in d]
    resrcs = {r["resrc"] for r in records}
    assert {
        "disk", "fs", "net", "chardev", "smartcard", "rng", "dev", "hostdev", "tpm",
        "tpm-emulator", "tpm-external", "cgroup", "mem", "vcpu", "iothread", "shmem",
        "ivshmem-socket", "evdev",
    } <= resrcs  # fmt: skip
    assert {r["type"] for r in records} >= {"VIRT_CONTROL", "VIRT_RESOURCE", "VIRT_MACHINE_ID"}
    assert any(r["node"] for r in records) and any(r["enrichment"] for r in records)
    assert {d["ignored"] for d in docs if "ignored" in d} == {"not_virt", "not_libvirt"}
    assert {d["error"] for d in docs if "error" in d} <= set(PARSE_ERROR_REASONS)
    assert len({d["error"] for d in docs if "error" in d}) >= 4


def rec(inner: str, rtype: str = "VIRT_RESOURCE", head: str = "") -> AuditRecord:
    line = f"{head}type={rtype} msg=audit(1700000000.123:42): {HDR} msg='{inner} {TAIL}'"
    result = parse_line(line.encode())
    assert isinstance(result, AuditRecord), result
    return result


def test_record_header_and_outer_fields() -> None:
    """Time, serial, node, pid/uid/auid/ses, subj and enrichment come out typed."""
    line = (
        "node=host1 type=VIRT_CONTROL msg=audit(1700000000.123:42): pid=7 uid=0 "
        "auid=4294967295 ses=4294967295 subj=unconfined msg='virt=kvm op=start reason=booted "
        f'vm="web01" uuid={U} vm-pid=99 {TAIL}\'\x1dUID="root" AUID="unset"\n'
    )
    r = parse_line(line.encode())
    assert isinstance(r, AuditRecord)
    assert (r.type, r.type_id, r.time, r.serial, r.node) == (
        "VIRT_CONTROL",
        2500,
        1700000000.123,
        42,
        "host1",
    )
    assert (r.pid, r.uid, r.auid, r.ses, r.subj) == (7, 0, 4294967295, 4294967295, "unconfined")
    assert r.enrichment == {"UID": "root", "AUID": "unset"}
    assert (r.virt, r.vm, r.uuid, r.op, r.reason, r.result) == (
        "kvm",
        "web01",
        U,
        "start",
        "booted",
        "success",
    )
    assert r.exe == "/usr/sbin/libvirtd" and r.succeeded and r.is_libvirt
    assert list(r.fields)[:3] == ["virt", "op", "reason"]


def test_values_decoded_only_where_libvirt_encodes() -> None:
    """Hex is decoded for vm/device/path-of-cgroup, never for maj, counts, pid-ns or uuid."""
    r = rec(f"virt=kvm resrc=vcpu reason=update vm=6D7920766D uuid={U} old-vcpu=10 new-vcpu=12")
    assert r.vm == "my vm" and r.get("old-vcpu") == "10" and r.get("new-vcpu") == "12"
    r = rec(
        f'virt=kvm resrc=cgroup reason=allow vm="DEADBEEF" uuid={U} cgroup="/x" class=major category=pty maj=88 acl=rw'
    )
    assert r.vm == "DEADBEEF" and r.get("maj") == "88"
    r = rec(
        f'virt=lxc op=init vm="c" uuid={U} vm-pid=1 init-pid=2 pid-ns=4026532218', "VIRT_CONTROL"
    )
    assert r.get("pid-ns") == "4026532218"
    r = rec(
        'virt=kvm resrc=disk reason=attach vm="w" uuid=ABCDEF01-2345-6789-ABCD-EF0123456789 old-disk="?" new-disk=2F6120622E696D67'
    )
    assert (
        r.uuid == "ABCDEF01-2345-6789-ABCD-EF0123456789"
        and r.get("old-disk") is None
        and r.get("new-disk") == "/a b.img"
    )
    r = rec(f'virt=kvm resrc=shmem reason=start vm="w" uuid={U} size=1024 path=4142')
    assert r.get("path") == "4142"  # shmem paths are raw
    r = rec(
        f'virt=kvm resrc=net reason=open vm="w" uuid={U} net=52:54:00:00:00:01 path=2F6465762F74 6170 rdev=0A:C8'
    )
    assert r.get("rdev") == "0A:C8"


def test_question_marks_and_duplicates() -> None:
    """`?` and `"?"` are None; the first of duplicate keys wins; a `'` inside a value is kept."""
    r = rec(
        f'virt=kvm op=stop reason=? vm="bob\'s=vm" uuid={U} vm-pid=? vm="other"', "VIRT_CONTROL"
    )
    assert r.reason is None and r.get("vm-pid") is None and r.vm == "bob's=vm"
    assert r.exe == "/usr/sbin/libvirtd"


def test_unknown_type_numbers_and_generic_virt_types() -> None:
    """UNKNOWN[2501] is VIRT_RESOURCE; 2503-2507 are generic VIRT records; others are not VIRT."""
    r = rec(
        f'virt=kvm resrc=mem reason=update vm="w" uuid={U} old-mem=1 new-mem=2', "UNKNOWN[2501]"
    )
    assert (r.type, r.type_id) == ("VIRT_RESOURCE", 2501)
    r = rec(f'virt=kvm vm="w" uuid={U}', "UNKNOWN[2550]")
    assert (r.type, r.type_id) == ("UNKNOWN[2550]", 2550)
    r = rec(f'virt=kvm vm="w" uuid={U}', "VIRT_MIGRATE_OUT")
    assert r.type_id == 2507
    assert parse_line(b"type=UNKNOWN[2600] msg=audit(1.0:1): pid=1 msg='virt=a uuid=b'") == Ignored(
        "not_virt"
    )


def test_docker_records_are_ignored_not_errors() -> None:
    """dockerd's VIRT_CONTROL (no virt=/uuid=) is ignored as not_libvirt."""
    for line in (SAMPLES / "auditlog-docker-not-libvirt.log").read_bytes().splitlines():
        assert parse_line(line) == Ignored("not_libvirt")


def test_json_round_trip_and_json_lines() -> None:
    """from_json(to_json()) is the same record; JsonLines prints json.dumps(to_json())."""
    lines = JsonLines(RecordLines())
    for log in sorted(DATA.glob("*.log")):
        for line in log.read_bytes().splitlines():
            try:
                record = parse_line(line)
            except ParseError:
                continue
            if isinstance(record, Ignored):
                assert lines.line(line) == record
                continue
            assert AuditRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
            for _ in range(2):  # the second time from the cache
                assert lines.line(line) == dumps(record.to_json()).encode() + b"\n"


def test_records_do_not_share_fields() -> None:
    """Two records from the same text have equal but independent fields (caches never leak)."""
    line = f"type=VIRT_CONTROL msg=audit(1.000:1): {HDR} msg='virt=kvm uuid={U} op=start {TAIL}'"
    a, b = parse_line(line), parse_line(line)
    assert isinstance(a, AuditRecord) and isinstance(b, AuditRecord)
    assert a == b and a.fields is not b.fields
    a.fields["op"] = "changed"  # type: ignore[index]
    c = parse_line(line)
    assert isinstance(c, AuditRecord) and c.op == "start"


def test_candidate_spans_only_headers() -> None:
    """Candidate lines are those whose header names a VIRT type, with or without node=."""
    buf = (
        b'type=SYSCALL msg=audit(1.0:1): key="VIRT_RESOURCE"\n'
        b"type=VIRT_CONTROL msg=audit(1.0:2): x\n"
        b'type=EXECVE msg=audit(1.0:3): a1="type=VIRT_CONTROL"\n'
        b"node=h type=UNKNOWN[2501] msg=audit(1.0:4): y\n"
        b"node=h x type=VIRT_CONTROL msg=audit(1.0:5): z\n"
    )
    spans = candidate_spans(buf)
    assert [buf[a:b].split(b"(")[1][:5] for a, b in spans] == [b"1.0:2", b"1.0:4"]


def test_stream_partial_lines_across_chunks() -> None:
    """A line split over many chunks is parsed once, when its newline arrives."""
    line = (DATA / "resources.log").read_bytes().splitlines(keepends=True)[0]
    parser = StreamParser()
    for i, byte in enumerate(line[:-1]):
        assert parser.feed(line[i : i + 1]) == []
        assert byte is not None
    assert parser.pending == len(line) - 1
    records = parser.feed(b"\n")
    assert len(records) == 1 and parser.pending == 0
    assert parser.stats.lines == 1 and parser.stats.records == 1


def test_stream_crlf_and_unterminated_last_line() -> None:
    """CRLF line ends parse like LF; finish() parses an unterminated last line."""
    lines = (DATA / "names.log").read_bytes().splitlines()
    parser = StreamParser()
    got = parser.feed(b"\r\n".join(lines[:3]) + b"\r\n" + lines[3])
    assert [r.serial for r in got] == [
        r.serial for r in (parse_line(line) for line in lines[:3]) if isinstance(r, AuditRecord)
    ]
    last = parser.finish()
    assert len(last) == 1 and last[0] == parse_line(lines[3])
    assert parser.finish() == []


def test_stream_overlong_line_skipped_with_bounded_memory() -> None:
    """A 10 MB line is counted as line_too_long and never buffered; the next line parses."""
    errors: list[str] = []
    stats = ParseStats()
    parser = StreamParser(
        stats, max_line_length=64 * 1024, on_error=lambda e, _: errors.append(e.reason)
    )
    good = (DATA / "resources.log").read_bytes().splitlines(keepends=True)[0]
    parser.feed(b"type=VIRT_CONTROL msg=audit(1.0:1): ")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    chunk = b"A" * (1 << 20)
    for _ in range(10):
        assert parser.feed(chunk) == []
        assert parser.pending <= 64 * 1024
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 8 * 1024  # KiB: nowhere near the 10 MB line
    records = parser.feed(b"AAA\n" + good)
    assert len(records) == 1 and errors == ["line_too_long"]
    assert stats.errors["line_too_long"] == 1 and stats.lines == 2
    # Also when a whole over-long VIRT line arrives in one chunk.
    records = parser.feed(b"type=VIRT_CONTROL msg=audit(1.0:1): " + b"B" * 70_000 + b"\n" + good)
    assert len(records) == 1 and stats.errors["line_too_long"] == 2


def test_stream_reset_and_stats_round_trip() -> None:
    """reset() drops a partial line; ParseStats survives to_json/from_json."""
    parser = StreamParser()
    partial = b"type=VIRT_CONTROL msg=audit(1.0:1): pid=1"
    parser.feed(partial)
    parser.reset()
    assert parser.pending == 0 and parser.finish() == []
    data = (DATA / "traps.log").read_bytes()
    parser.feed(data)
    parser.finish()
    stats = parser.stats
    assert stats.ignored["not_virt"] > 0 and stats.ignored["not_libvirt"] > 0 and stats.errors
    assert ParseStats.from_json(json.loads(json.dumps(stats.to_json()))) == stats
    assert stats.lines == data.count(b"\n") and stats.bytes == len(partial) + len(data)


def test_absurd_timestamp_is_bad_timestamp_not_inf() -> None:
    """A timestamp of hundreds of digits is a bad_timestamp error, never a time of inf."""
    line = (
        "type=VIRT_CONTROL msg=audit(" + "9" * 400 + ".123:7): pid=1 uid=0 auid=1 ses=1 "
        "msg='virt=kvm op=start reason=booted vm=\"a\" uuid=u vm-pid=1 res=success'"
    )
    with pytest.raises(ParseError) as err:
        parse_line(line)
    assert err.value.reason == "bad_timestamp"


@pytest.mark.parametrize(
    "uuid",
    [
        "2fd940bb-26PAM:session_open",  # what a fuzz run left as 9,082 guests (issue 14)
        "?",
        '"?"',
        "0123456789ABCDEF0123456789ABCDEF",  # virUUIDParse reads it; libvirt never writes it
        U[:-1],
        U + "0",
        U.replace("-", "_"),
        "g" + U[1:],
        "",
    ],
)
def test_a_uuid_that_is_not_canonical_is_bad_uuid(uuid: str) -> None:
    """A libvirt record whose uuid is not 8-4-4-4-12 hex is a bad_uuid error, never a guest."""
    line = f"type=VIRT_CONTROL msg=audit(1.0:1): {HDR} msg='virt=kvm op=start vm=\"a\" uuid={uuid} {TAIL}'"
    with pytest.raises(ParseError) as err:
        parse_line(line)
    assert err.value.reason == "bad_uuid"
    errors: list[str] = []
    parser = StreamParser(on_error=lambda e, _: errors.append(e.reason))
    assert parser.feed(line.encode() + b"\n") == [] and errors == ["bad_uuid"]
    assert parser.stats.errors == {"bad_uuid": 1} and "bad_uuid" in PARSE_ERROR_REASONS


def test_a_canonical_uuid_of_either_case_is_kept_as_written() -> None:
    """Upper- and lowercase hex are both UUIDs (RFC 4122 reads either); none is rewritten."""
    for uuid in (U, U.upper(), f'"{U}"'):
        assert rec(
            f'virt=kvm resrc=mem reason=update vm="w" uuid={uuid} old-mem=1 new-mem=2'
        ).uuid == uuid.strip('"')


def test_thousands_of_digits_are_not_a_crash() -> None:
    """A serial or type number of 5,000 digits (int() refuses those) is an error or not VIRT."""
    inner = f"msg='virt=kvm uuid={U} res=success'"
    with pytest.raises(ParseError) as err:
        parse_line(f"type=VIRT_CONTROL msg=audit(1.0:{'9' * 5000}): {inner}")
    assert err.value.reason == "bad_timestamp"
    assert parse_line(f"type=UNKNOWN[{'1' * 5000}] msg=audit(1.0:1): {inner}") == Ignored(
        "not_virt"
    )
    serial = parse_line(f"type=VIRT_CONTROL msg=audit(1.0:{'0' * 30}18446744073709551615): {inner}")
    assert isinstance(serial, AuditRecord) and serial.serial == 2**64 - 1


def test_document_keys_are_attributes_or_inner_fields() -> None:
    """Every DOCUMENT_KEYS key is an AuditRecord attribute; the properties among them read the
    inner field of their name (the rule both JSON encoders, Python and C, follow)."""
    own = {f.name for f in dataclasses.fields(AuditRecord)} | {"result"}
    records = [r for log in sorted(DATA.glob("*.log")) for r in iter_records([log.read_bytes()])]
    assert len(records) > 100
    for key in DOCUMENT_KEYS:
        assert hasattr(AuditRecord, key), key
        if key not in own:
            assert all(getattr(r, key) == r.fields.get(key) for r in records), key
    assert DOCUMENT_KEYS[: len(HEAD_KEYS)] == HEAD_KEYS  # the head JsonLines fills in per line
