"""`monitord parse` as a user runs it: a real subprocess, real files, pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import DATA, ROOT, SAMPLES

REQUIRED = (
    "type type_id time serial node virt vm uuid result op reason resrc pid uid auid ses "
    "subj exe fields"
).split()


def monitord(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    exe = ROOT / ".venv" / "bin" / "monitord"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "monitord"]
    return subprocess.run(
        [*cmd, *args], input=stdin, capture_output=True, timeout=60, check=False, cwd=ROOT
    )


def docs(out: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.decode().splitlines()]


def test_parse_file_prints_contract_records() -> None:
    """Every libvirt record becomes one JSON line with every required key."""
    result = monitord("parse", str(DATA / "resources.log"))
    assert result.returncode == 0, result.stderr
    records = docs(result.stdout)
    assert len(records) == 39
    for doc in records:
        assert set(REQUIRED) <= set(doc)
        assert doc["type"] == "VIRT_RESOURCE" and doc["type_id"] == 2501
    assert result.stderr == b""


def test_stdin_and_dash_and_several_files() -> None:
    """No FILE and `-` read stdin; several files are read in order."""
    data = (DATA / "names.log").read_bytes()
    plain = monitord("parse", stdin=data)
    dash = monitord("parse", "-", stdin=data)
    assert plain.returncode == dash.returncode == 0
    assert plain.stdout == dash.stdout and len(docs(plain.stdout)) == 16
    both = monitord(
        "parse", str(DATA / "names.log"), str(SAMPLES / "auditlog-enriched-apparmor.log")
    )
    serials = [d["serial"] for d in docs(both.stdout)]
    assert len(serials) == 18 and serials[-2:] == [88, 89]


def test_malformed_lines_counted_on_stderr() -> None:
    """Malformed VIRT lines are reported on stderr with a count; the exit code stays 0."""
    result = monitord("parse", str(DATA / "traps.log"))
    assert result.returncode == 0
    err = result.stderr.decode()
    assert "malformed line(s) skipped" in err and "bad_header=4" in err and "bad_uuid=2" in err
    assert "Traceback" not in err
    assert len(docs(result.stdout)) == 6


def test_unreadable_file_is_a_one_line_error(tmp_path: Path) -> None:
    """A missing file, a directory or an unreadable file: one line on stderr, exit 2, no output."""
    secret = tmp_path / "secret.log"
    secret.write_bytes(b"")
    secret.chmod(0)
    cases = [str(tmp_path / "missing.log"), str(tmp_path)]
    if os.geteuid() != 0:  # root reads anything
        cases.append(str(secret))
    for name in cases:
        result = monitord("parse", str(DATA / "names.log"), name)
        assert result.returncode == 2, name
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("monitord: cannot read") and name in lines[0]
        assert result.stdout == b""


def test_help_and_version() -> None:
    """--help describes parse; --version prints the version and the parser's path."""
    result = monitord("parse", "--help")
    assert result.returncode == 0 and b"FILE" in result.stdout
    result = monitord("--version")
    assert result.returncode == 0 and result.stdout.startswith(b"monitord ")
    assert result.stdout.rstrip().endswith((b"(parser: c)", b"(parser: python)"))


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    """`monitord parse BIG | head -1` ends without a traceback."""
    big = tmp_path / "virt.log"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "monitord.commands.simulate",
            "virt-only",
            "--lines",
            "20000",
            str(big),
        ],
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    exe = ROOT / ".venv" / "bin" / "monitord"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "monitord"]
    with subprocess.Popen(
        [*cmd, "parse", str(big)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(timeout=60)
    assert json.loads(first)["type"].startswith("VIRT_")
    assert b"Traceback" not in err and b"Exception" not in err
    assert code == 0
