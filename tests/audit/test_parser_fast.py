"""The parser's fast paths build exactly what the plain code builds.

`make_record` must give a real, frozen, comparable `AuditRecord`; the parallel
`monitord parse` must print byte for byte what the single process prints.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitord.audit import ParseStats, StreamParser, parallel
from monitord.audit.jsonl import RecordEncoder
from monitord.audit.parser import candidate_spans
from monitord.audit.record import AuditRecord, make_record
from monitord.commands.simulate import mixed_log, write_lines
from tests.conftest import DATA, ROOT, SAMPLES

ARGS = (
    "VIRT_CONTROL",
    2500,
    1700000000.25,
    42,
    "host",
    1058,
    0,
    4294967295,
    4294967295,
    "system_u:system_r:virtd_t:s0",
    {"virt": "kvm", "uuid": "u", "vm": None},
    {"UID": "root"},
)


def test_make_record_is_a_frozen_audit_record() -> None:
    """make_record returns an AuditRecord equal to the constructor's, frozen like it."""
    fast = make_record(*ARGS)
    plain = AuditRecord(*ARGS)
    assert type(fast) is AuditRecord and fast == plain and repr(fast) == repr(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.serial = 1  # type: ignore[misc]
    assert dataclasses.replace(fast, node=None) == dataclasses.replace(plain, node=None)
    assert pickle.loads(pickle.dumps(fast)) == plain
    assert fast.to_json() == plain.to_json()


# The parallel `monitord parse` (monitord.audit.parallel) against the sequential loop.


def sequential(
    data_path: Path, read_size: int, max_line_length: int
) -> tuple[bytes, list[tuple[str, bytes]], dict[str, object]]:
    """What cmd_parse's one-process loop prints, reports and counts for a file."""
    encode = RecordEncoder().encode
    errors: list[tuple[str, bytes]] = []
    parser = StreamParser(
        max_line_length=max_line_length,
        on_error=lambda err, line: errors.append((err.reason, line[:160])),
    )
    out: list[str] = []
    with data_path.open("rb") as f:
        while chunk := f.read(read_size):
            out.extend(encode(r) + "\n" for r in parser.feed(chunk))
    out.extend(encode(r) + "\n" for r in parser.finish())
    return "".join(out).encode(), errors, parser.stats.to_json()


def two_process(
    data_path: Path, read_size: int, segment_size: int, max_line_length: int
) -> tuple[bytes, list[tuple[str, bytes]], dict[str, object]]:
    """What parallel.parse_file prints, reports and counts for the same file."""
    errors: list[tuple[str, bytes]] = []
    stats = ParseStats()
    sink = io.BytesIO()
    out = io.TextIOWrapper(sink, encoding="utf-8", newline="\n")
    with data_path.open("rb") as f:
        parallel.parse_file(
            f,
            str(data_path),
            stats,
            lambda err, line: errors.append((err.reason, line[:160])),
            out,
            lambda: RecordEncoder().encode,
            read_size,
            segment_size=segment_size,
            max_line_length=max_line_length,
            error_limit=10**6,
        )
    out.flush()
    return sink.getvalue(), errors, stats.to_json()


def tricky_log(path: Path) -> Path:
    """Every golden input, long lines (VIRT and not), malformed lines, no final newline."""
    parts = [log.read_bytes() for log in sorted(DATA.glob("*.log"))]
    parts += [log.read_bytes() for log in sorted(SAMPLES.glob("*.log"))]
    real = next(line for line in parts[0].splitlines(keepends=True) if b"VIRT_" in line)
    long_virt = real.rstrip(b"\n") + b" x=" + b"A" * 3000 + b"\n"
    long_noise = b'type=SYSCALL msg=audit(1.0:9): a0="' + b"B" * 5000 + b'"\n'
    parts += [long_virt, long_noise, b"type=VIRT_CONTROL msg=audit(x): \n"] * 3
    parts.append(real.rstrip(b"\n"))
    path.write_bytes(b"".join(parts) * 3)
    return path


@settings(max_examples=40, deadline=None)
@given(
    read_size=st.sampled_from([512, 1000, 4096]),
    per_segment=st.integers(1, 5),
    max_line_length=st.sampled_from([800, 2000, 4000, 65536]),
)
def test_two_processes_print_what_one_prints(
    read_size: int, per_segment: int, max_line_length: int
) -> None:
    """Cut anywhere (long lines across cuts too), two processes give the same bytes,
    the same malformed lines in the same order and the same counters."""
    with tempfile.TemporaryDirectory() as tmp:
        log = tricky_log(Path(tmp) / "tricky.log")
        expected = sequential(log, read_size, max_line_length)
        got = two_process(log, read_size, read_size * per_segment, max_line_length)
    assert expected[0].count(b"\n") > 300 and expected[1]
    assert got == expected


def test_cut_points_avoid_long_lines(tmp_path: Path) -> None:
    """A cut falls only where the line in progress is short; else on a later chunk boundary."""
    log = tmp_path / "long.log"
    log.write_bytes(b"a\n" * 600 + b"L" * 5000 + b"\n" + b"b\n" * 3000)
    with log.open("rb") as f:
        cuts = parallel.cut_points(f.fileno(), log.stat().st_size, 1000, 1000, 800)
    # The long line spans 1200..6200: at 2000 it holds exactly 800 bytes (still a partial
    # line), at 3000..6000 more (the sequential reader would be discarding it).
    assert cuts == [0, 1000, 2000, 7000, 8000, 9000, 10000, 11000, 12000]


def test_parse_cli_file_equals_stdin(tmp_path: Path) -> None:
    """`monitord parse FILE` on a file large enough for two processes prints exactly what
    the one-process path (stdin) prints."""
    log = tmp_path / "mixed.log"
    with log.open("wb") as f:
        write_lines(f, mixed_log(seed=7, lines=240_000))
    assert log.stat().st_size >= parallel.MIN_SIZE
    exe = ROOT / ".venv" / "bin" / "monitord"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "monitord"]
    by_file = subprocess.run([*cmd, "parse", str(log)], capture_output=True, check=True)
    with log.open("rb") as f:
        by_stdin = subprocess.run([*cmd, "parse"], stdin=f, capture_output=True, check=True)
    assert by_file.stdout.count(b"\n") > 10_000
    assert by_file.stdout == by_stdin.stdout
    assert by_file.stderr.replace(str(log).encode(), b"<stdin>") == by_stdin.stderr


def test_candidate_needle_in_node_name() -> None:
    """A VIRT needle inside the node name: each needle counts by its first occurrence in the line.

    (The one-pass search keeps what the former two-pass search found.)
    """
    lines = [
        b"node=type=VIRT_x type=VIRT_CONTROL msg=audit(1.0:1): a\n",
        b"node=type=UNKNOWN[25 type=VIRT_CONTROL msg=audit(1.0:2): b\n",
        b"node=type=VIRT_x type=UNKNOWN[2501] msg=audit(1.0:3): c\n",
        b"node=h x type=VIRT_CONTROL msg=audit(1.0:4): d\n",
        b"node=h type=VIRT_RESOURCE msg=audit(1.0:5): e",
    ]
    buf = b"".join(lines)
    found = [buf[a:b] for a, b in candidate_spans(buf)]
    assert found == [lines[1][:-1], lines[2][:-1], lines[4]]
