"""Fuzz-style totality: no input makes the parser raise anything but ParseError."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from monitord.audit import AuditRecord, Ignored, ParseError, StreamParser, parse_line
from monitord.audit.parser import PARSE_ERROR_REASONS
from tests.conftest import DATA

REAL = [
    line
    for log in sorted(DATA.glob("*.log"))
    for line in log.read_bytes().split(b"\n")
    if b"VIRT" in line
]
SPECIAL = list(b" '\"=\x1d\x00:()\xff\t.\r?[]")


def total(line: bytes | str) -> None:
    try:
        result = parse_line(line)
    except ParseError as err:
        assert err.reason in PARSE_ERROR_REASONS
    else:
        assert isinstance(result, AuditRecord | Ignored)


def mutate(rng: random.Random, line: bytes) -> bytes:
    buf = bytearray(line)
    for _ in range(rng.randrange(1, 6)):
        i = rng.randrange(len(buf) + 1)
        op = rng.random()
        if op < 0.25 and buf:
            del buf[i : i + rng.randrange(1, 40)]
        elif op < 0.5:
            buf[i:i] = bytes([rng.choice(SPECIAL)])
        elif op < 0.7:
            buf[i:i] = rng.randbytes(rng.randrange(1, 8))
        elif op < 0.85:
            buf = buf[:i]  # truncated
        else:
            j = rng.randrange(len(buf) + 1)
            buf[i:i] = buf[j : j + 30]  # duplicated piece (duplicate keys, extra quotes)
    return bytes(buf)


def test_mutated_real_lines_never_raise() -> None:
    """20,000 mutations of real lines end as a record, an ignored line or a ParseError."""
    rng = random.Random(20240601)
    mutants = [mutate(rng, rng.choice(REAL)) for _ in range(20_000)]
    for line in mutants:
        total(line)
        total(line.decode("utf-8", "surrogateescape"))
    parser = StreamParser()
    stream = b"\n".join(mutants) + b"\n"
    parser.feed(stream)
    parser.finish()
    assert parser.stats.lines == stream.count(b"\n")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    """Arbitrary bytes, alone or behind a VIRT header, never raise unexpectedly."""
    total(data)
    total(b"type=VIRT_CONTROL msg=audit(1.0:1): " + data)
    total(b"type=VIRT_RESOURCE msg=audit(1.0:1): pid=1 msg='virt=kvm uuid=x " + data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 97))
def test_stream_parser_never_raises(chunks: list[bytes], size: int) -> None:
    """StreamParser swallows any byte stream in any chunking: errors are only counted."""
    data = b"".join(chunks) + b"\n".join(REAL[:20])
    parser = StreamParser(max_line_length=512)
    for i in range(0, len(data), size):
        parser.feed(data[i : i + size])
    parser.finish()
    assert parser.pending == 0


def test_pathological_lines() -> None:
    """NUL bytes, invalid UTF-8, unbalanced quotes and a 10 MB line are handled."""
    head = b"type=VIRT_CONTROL msg=audit(1700000000.000:1): pid=1 uid=0 "
    for tail in (
        b"msg='virt=kvm uuid=\x00\x00 res=success'",
        b"msg='virt=kvm vm=\xff\xfe\xfd uuid=1 res=success'",
        b"msg='virt=kvm vm=\"unbalanced uuid=1 res=success'",
        b'msg=\'virt=kvm vm="a" uuid=1 res=success',
        b"msg=''",
        b"msg='",
        b'msg=\'virt=kvm uuid=1 path=a b c d old-x="y z" "" = == res=success\'',
        b"msg='" + b"x=" * 5_000_000 + b"'",
    ):
        total(head + tail)
    uuid = b"c857b1ce-7157-4be5-ae36-29cf22a62ec8"
    record = parse_line(head + b"msg='virt=kvm vm=FFFE uuid=" + uuid + b" res=success'")
    assert isinstance(record, AuditRecord) and record.vm == "\udcff\udcfe"
    errors: list[str] = []
    parser = StreamParser(on_error=lambda e, _: errors.append(e.reason))
    parser.feed(head + b"msg='" + b"A" * 10_000_000 + b"'\n" + REAL[0] + b"\n")
    assert errors == ["line_too_long"]
