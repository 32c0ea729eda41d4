"""`monitord demo` end to end: a real daemon follows the simulated host, alerts arrive."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT
from tests.daemonproc import free_port, monitord_cmd


@pytest.mark.slow
def test_demo_runs_rotates_and_alerts() -> None:
    """The demo prints its URLs, rotates the log twice, shows alerts and a final guest table."""
    port = free_port()
    out = subprocess.run(
        [*monitord_cmd(), "demo", "--duration", "6", "--speed", "50", "--no-table",
         "--listen", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"http://127.0.0.1:{port}/metrics" in out.stdout
    assert "(2 rotations)" in out.stdout
    assert "FIRING" in out.stdout
    table = out.stdout.split("final state:", 1)[1]
    assert "NAME" in table and "running" in table
    assert "Traceback" not in out.stderr


def test_demo_rejects_bad_flags() -> None:
    """Bad --speed or --listen is a one-line user error (exit 2)."""
    for flags in (["--speed", "0"], ["--listen", "nowhere"]):
        out = subprocess.run(
            [*monitord_cmd(), "demo", *flags],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
            check=False,
        )
        assert out.returncode == 2, (flags, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
