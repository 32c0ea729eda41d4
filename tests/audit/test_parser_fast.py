"""The parser's fast paths build exactly what the plain code builds.

`make_record` must give a real, frozen, comparable `AuditRecord`; `monitord parse`
prints the same bytes from a file and from stdin.
"""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from monitord.audit.parser import candidate_spans
from monitord.audit.record import AuditRecord, make_record
from monitord.commands.simulate import mixed_log, write_lines
from tests.conftest import ROOT

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


def test_parse_cli_file_equals_stdin(tmp_path: Path) -> None:
    """`monitord parse FILE` prints exactly what `monitord parse < FILE` prints."""
    log = tmp_path / "mixed.log"
    with log.open("wb") as f:
        write_lines(f, mixed_log(seed=7, lines=240_000))
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
