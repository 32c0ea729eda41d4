"""The C accelerator of `monitord parse` against the pure-Python reference, byte for byte.

Every input goes through both paths: one line at a time (`line_json` must return the
reference JSON line, the same ignored marker, or None = "use Python"; never a result
where Python raises ParseError) and as whole streams (`region_json` through
StreamParser: same output bytes, same counters, same malformed lines and reasons).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from monitord.audit import jsonl
from monitord.audit.parser import (
    NOT_LIBVIRT,
    NOT_VIRT,
    Ignored,
    ParseError,
    StreamParser,
    candidate_spans,
)
from monitord.audit.record import AuditRecord, make_record
from monitord.commands import simulate
from tests.audit.test_encoding import audit_encode_nv_string, line_with
from tests.audit.test_parser_fuzz import REAL, mutate
from tests.conftest import DATA, IN_CI, ROOT, SAMPLES


def _load() -> ModuleType:
    try:
        from monitord.audit import _fastparse
    except ImportError:
        if IN_CI:  # ./bootstrap installs gcc and python3-dev: CI must build and test it
            raise
        pytest.skip("the C accelerator is not built (no compiler at install time)")
    return _fastparse


fast = _load()
fast.setup(NOT_VIRT, NOT_LIBVIRT, make_record)
REFERENCE = jsonl.python_line_converter()
GOLDEN = sorted(DATA.glob("*.log")) + sorted((DATA / "real").glob("*.log"))
GOLDEN += sorted(SAMPLES.glob("*.log"))
U = "c857b1ce-7157-4be5-ae36-29cf22a62ec8"


def reference(line: bytes) -> bytes | Ignored | str:
    """The Python path's answer: JSON line, Ignored, or the ParseError reason."""
    try:
        return REFERENCE(line)
    except ParseError as err:
        return f"error:{err.reason}"


def check_line(line: bytes) -> bool:
    """line_json agrees with the reference on one line; True when C handled it."""
    got = fast.line_json(line)
    if got is None:
        return False
    want = reference(line)
    assert got == want, (line, got, want)
    return True


def check_lines(lines: Iterable[bytes]) -> tuple[int, int]:
    """Check every line; return (lines, lines C handled)."""
    total = handled = 0
    for line in lines:
        total += 1
        handled += check_line(line)
    return total, handled


def stream(
    data: bytes, read_size: int, accelerated: bool, max_line_length: int = 64 * 1024
) -> tuple[bytes, list[tuple[str, str, bytes]], dict[str, object]]:
    """What cmd_parse's loop prints, reports and counts, C path or pure Python."""
    convert = jsonl.converter_with(fast if accelerated else None)
    errors: list[tuple[str, str, bytes]] = []
    parser = StreamParser(
        max_line_length=max_line_length,
        on_error=lambda err, line: errors.append((err.reason, err.detail, line)),
    )
    out: list[bytes] = []
    for i in range(0, len(data), read_size):
        out += parser.feed_as(data[i : i + read_size], convert.line, convert.region)
    out += parser.finish_as(convert.line, convert.region)
    return b"".join(out), errors, parser.stats.to_json()


def records(
    data: bytes, read_size: int, accelerated: bool, max_line_length: int = 64 * 1024
) -> tuple[list[object], list[tuple[str, str, bytes]], dict[str, object]]:
    """What StreamParser.feed gives (replay, the daemon): records, errors, counters."""
    errors: list[tuple[str, str, bytes]] = []
    parser = StreamParser(
        max_line_length=max_line_length,
        on_error=lambda err, line: errors.append((err.reason, err.detail, line)),
        accelerated=accelerated,
    )
    if accelerated:  # this test runs the C path even under MONITORD_PURE_PYTHON=1
        parser._region = fast.region_records
    got: list[AuditRecord] = []
    for i in range(0, len(data), read_size):
        got += parser.feed(data[i : i + read_size])
    got += parser.finish()
    # Equal records with their fields and enrichment in the same order, of the same types.
    exact: list[object] = [
        (r, type(r), [(k, type(v)) for k, v in r.fields.items()], list(r.enrichment.items()))
        for r in got
    ]
    return exact, errors, parser.stats.to_json()


def check_stream(data: bytes, read_sizes: Iterable[int] = (1 << 20, 4096, 333)) -> bytes:
    """The C path's output, errors and counters equal the Python path's; return the output."""
    out = b""
    for size in read_sizes:
        for max_len in (64 * 1024, 700):
            want = stream(data, size, accelerated=False, max_line_length=max_len)
            got = stream(data, size, accelerated=True, max_line_length=max_len)
            assert got[0] == want[0]
            assert got[1] == want[1]
            assert got[2] == want[2]
            out = got[0]
            want_r = records(data, size, accelerated=False, max_line_length=max_len)
            got_r = records(data, size, accelerated=True, max_line_length=max_len)
            assert got_r == want_r
    return out


def virt_lines(data: bytes) -> list[bytes]:
    return [data[a:b] for a, b in candidate_spans(data + b"\n")]


def test_golden_inputs_line_by_line() -> None:
    """Every candidate line of the golden logs and samples: C equals Python, most in C."""
    lines = [line for path in GOLDEN for line in virt_lines(path.read_bytes())]
    total, handled = check_lines(lines)
    assert total > 300
    assert handled > 0.9 * total  # the accelerator really runs (and so can fail this test)


def test_golden_inputs_as_streams() -> None:
    """Each golden log parses to the same bytes, counters and errors on both paths."""
    for path in GOLDEN:
        check_stream(path.read_bytes())


def test_simulated_logs() -> None:
    """Seeded mixed (5% VIRT, enriched and raw) and VIRT-only logs: identical output."""
    for seed in (1, 2):
        for enriched in (True, False):
            mixed = b"".join(simulate.mixed_log(seed, 20_000, enriched=enriched))
            check_stream(mixed, read_sizes=(1 << 20, 8191))
            virt = b"".join(simulate.virt_only_log(seed, 3000, enriched=enriched))
            total, handled = check_lines(virt.splitlines())
            assert handled == total  # libvirt's own shapes never need the Python path
            check_stream(virt, read_sizes=(1 << 20,))


def test_fuzz_corpus() -> None:
    """The fuzz test's mutations of real lines (and random bytes): C never disagrees."""
    rng = random.Random(20240601)
    mutants = [mutate(rng, rng.choice(REAL)) for _ in range(20_000)]
    mutants += [rng.randbytes(rng.randrange(0, 300)) for _ in range(2000)]
    check_lines(mutants)
    check_stream(b"\n".join(mutants) + b"\n", read_sizes=(1 << 20, 1000))


EDGE = [
    # continuation tokens, runs of spaces, quoted values with spaces, duplicates
    f'virt=kvm resrc=shmem reason=start vm="a" uuid={U} size=4 path=/dev/shm/my file x',
    f'virt=kvm resrc=shmem reason=start vm="a" uuid={U} path=a  b   c path=x res=success',
    f'virt=kvm op=start vm="a b c" uuid={U} exe="/usr/bin/x y" res=success',
    f'virt=kvm op=start vm="a b uuid={U} res=failed',
    f'virt=kvm op=start vm=" uuid={U} res=0',
    f"virt=kvm op=start vm=? uuid={U} vm=616263 uuid=x res=1",
    f"virt=kvm op=start vm=? foo bar uuid={U} res=success",
    f'virt=kvm op=start vm="?" uuid={U} =x bare res=?',
    f'virt=kvm op=start vm=6E616D65 uuid={U} res="success" trailing ',
    f" virt=kvm  op=start vm=41 uuid={U} res=weird",
    # path decoding by resrc
    f'virt=kvm resrc=net reason=open vm="a" uuid={U} net=52:54:00:00:00:01 '
    "path=2F6465762F6E65742F74756E rdev=0A:C8 res=success",
    f'virt=kvm resrc=cgroup reason=allow vm="a" uuid={U} cgroup=2F78 class=path '
    "path=2F6465762F6E756C6C rdev=01:03 acl=rw res=success",
    f'virt=kvm resrc=disk reason=start vm="a" uuid={U} path=2F6465762F6E756C6C res=success',
    f'virt=kvm resrc="net" reason=open vm="a" uuid={U} path=41 res=success',
    f'virt=kvm path=41 resrc=net vm="a" uuid={U} res=success',
    f'virt=kvm resrc=net x reason=open vm="a" uuid={U} path=41 res=success',
    f'virt=kvm resrc=? reason=open vm="a" uuid={U} path=41 path=? res=success',
    # hex: odd length, lowercase, invalid UTF-8, astral, controls, DEL
    f"virt=kvm op=start vm=ABC uuid={U} res=success",
    f"virt=kvm op=start vm=6162 uuid={U} old-disk=ff00fe new-disk=F09F9880 res=success",
    f"virt=kvm op=start vm=0A0D09085C22 uuid={U} device=7F1F00 res=success",
    f"virt=kvm op=start vm=EDA080 uuid={U} disk=C3 chardev=E282AC res=success",
    f'virt=kvm op=start vm="a\\\\b" uuid={U} maj=88 new-vcpu=10 pid-ns=ABCD res=success',
    # not libvirt
    'virt=kvm op=start vm="a" res=success',
    f'op=start vm="a" uuid={U} res=success',
]
OUTERS = [
    "pid=1 uid=0 auid=4294967295 ses=4294967295 subj=unconfined",
    "pid=-0 uid=+5 auid=007 ses= subj=?",
    "pid=1_0 uid=0",
    'pid=abc uid=0x10 auid=- ses=99999999999999999999 subj=a"b\\c',
    "uid=0 pid=2 pid=3  subj=x subj=y",
    "",
]
HEADERS = [
    "type=VIRT_CONTROL msg=audit(1700000000.123:42): ",
    "type=VIRT_RESOURCE msg=audit(1700000000.120:00042): ",
    "node=host-1 type=VIRT_MACHINE_ID msg=audit(5.:1): ",
    'node=a"b\\c type=UNKNOWN[2501] msg=audit(.5:1): ',
    "node= type=UNKNOWN[02510] msg=audit(1:1): ",
    "type=UNKNOWN[2600] msg=audit(1:1): ",
    "type=UNKNOWN[25] msg=audit(1:1): ",
    "type=UNKNOWN[25x] msg=audit(1:1): ",
    "type=VIRT_CREATE msg=audit(1700000000.1234567890123456789:1): ",
    "type=VIRT_DESTROY msg=audit(1.2.3:1): ",
    "type=VIRT_MIGRATE_IN msg=audit(1:): ",
    "type=VIRT_MIGRATE_OUT msg=audit(1:1:2): ",
    "type=VIRT_CONTROLX msg=audit(1:1): ",
    "type=VIRT_INTEGRITY_CHECK msg=audit(123456789012345678901234567890123:1): ",
]
ENRICHMENTS = ["", '\x1dUID="root" AUID="unset"', '\x1d UID=root UID="x" =y z "a"="b" Q=""']


def edge_lines() -> list[bytes]:
    lines = []
    for h in HEADERS:
        for o in OUTERS:
            for inner in EDGE:
                for e in ENRICHMENTS[:2] if o else ENRICHMENTS:
                    lines.append(f"{h}{o} msg='{inner}'{e}".encode())
    lines += [
        f"type=VIRT_CONTROL msg=audit(1:1): pid=1 msg='virt=kvm uuid={U} 'x''".encode(),
        b"type=VIRT_CONTROL msg=audit(1:1): pid=1 msg='",
        b"type=VIRT_CONTROL msg=audit(1:1): pid=1",
        b"type=VIRT_CONTROL msg=audit(1:1) pid=1 msg='virt=kvm'",
        b"type=VIRT_CONTROL msg=audit(1:1): msg='virt=kvm uuid=x'\r\r",
        b"type=VIRT_CONTROL msg=audit(1:1): msg='virt=kvm uuid=x'\x1dA=1\x1dB=2",
        b"type=VIRT_CONTROL msg=audit(1:1): msg='virt=kvm uuid=x'\x1dA=\xc3\xa9",
        b"type=VIRT_CONTROL msg=audit(1:1): msg='virt=kvm uuid=x vm=\xff'",
        b"type=VIRT_CONTROL\x1d msg=audit(1:1): msg='virt=kvm uuid=x'",
        b"type=VIRT_CONTROL msg=audit(1:1\x1d): msg='virt=kvm uuid=x'",
        b"node=a\tb type=VIRT_CONTROL msg=audit(1:1): msg='virt=kvm uuid=x'",
        b"node=type=VIRT_CONTROL msg=audit(1:1): msg='virt=kvm uuid=x'",
        b"type= msg=audit(1:1): msg='virt=kvm uuid=x'",
    ]
    return lines


def test_edge_cases() -> None:
    """Crafted shapes: continuations, quotes, path by resrc, hex, ints, types, stamps."""
    lines = edge_lines()
    total, handled = check_lines(lines)
    assert handled > total // 2
    noise = b'type=SYSCALL msg=audit(1:2): key="type=VIRT_RESOURCE" a=1\n'
    node_needles = [
        b"node=type=VIRT_x type=UNKNOWN[2501] msg=audit(1:1): msg='virt=a uuid=b'",
        b"node=type=UNKNOWN[25x type=VIRT_CONTROL msg=audit(1:1): msg='virt=a uuid=b'",
        b"node=type=VIRT_x type=VIRT_CONTROL msg=audit(1:1): msg='virt=a uuid=b'",
        b"node=n type=SYSCALL msg=audit(1:1): type=VIRT_CONTROL",
        b"xtype=VIRT_CONTROL msg=audit(1:1): msg='virt=a uuid=b'",
    ]
    check_lines(node_needles)
    data = b"\n".join(lines + node_needles) + b"\n" + noise * 3 + lines[0]  # no final newline
    check_stream(data, read_sizes=(1 << 20, 4096, 97))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=80).filter(lambda b: b != b"?" and b"\n" not in b))
@example(b"\xff\xfe not utf-8")
@example("\U0001f600 \x7f".encode())
@example(b"\xed\xa0\x80\xc3")
def test_any_name_or_path(raw: bytes) -> None:
    """Any guest name or path (any bytes, hex-encoded as libaudit does): C equals Python."""
    encoded = audit_encode_nv_string(raw)
    lines = [
        line_with(field, encoded, resrc)
        for field, resrc in (
            ("vm", "disk"),
            ("new-disk", "disk"),
            ("cgroup", "cgroup"),
            ("path", "net"),
            ("path", "shmem"),
            ("device", "tpm"),
        )
    ]
    assert all(check_line(line.rstrip(b"\n")) for line in lines)
    data = b"".join(lines)
    assert records(data, 1 << 20, True) == records(data, 1 << 20, False)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=60))
def test_any_text_in_a_line(text: str) -> None:
    """Arbitrary text in the inner message and the enrichment never makes C disagree."""
    raw = text.encode("utf-8", "surrogateescape")
    lines = [
        b"type=VIRT_CONTROL msg=audit(1.5:2): pid=1 msg='virt=kvm uuid=u vm=" + raw + b"'",
        b"type=VIRT_CONTROL msg=audit(1.5:2): pid=1 msg='virt=kvm uuid=u'\x1d" + raw,
    ]
    for line in lines:
        check_line(line)
        data = line + b"\n"
        assert records(data, 1 << 20, True) == records(data, 1 << 20, False)


def test_cli_both_ways(tmp_path: Path) -> None:
    """`monitord parse` prints the same bytes and messages with MONITORD_PURE_PYTHON=1."""
    log = tmp_path / "edge.log"
    log.write_bytes(b"\n".join(edge_lines()) + b"\n" + b"".join(simulate.mixed_log(4, 5000)))
    runs = []
    for pure in ("", "1"):
        env = {**os.environ, "MONITORD_PURE_PYTHON": pure}
        cmd = [
            sys.executable,
            "-c",
            "import sys; from monitord.commands.cli import main; sys.exit(main())",
            "parse",
            str(log),
        ]
        runs.append(subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT, check=True))
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout
    assert runs[0].stderr == runs[1].stderr


def test_pure_python_switch() -> None:
    """MONITORD_PURE_PYTHON=1 turns the accelerator off; without it the C path is active."""
    code = "from monitord.audit import jsonl; print(jsonl.ACCELERATOR)"
    for pure, want in (("1", "python"), ("", "c")):
        env = {**os.environ, "MONITORD_PURE_PYTHON": pure}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        assert out.stdout.strip() == want
