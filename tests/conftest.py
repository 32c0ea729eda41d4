"""Shared fixtures: paths, and the rule for external tools (missing in CI = failure)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SAMPLES = ROOT / "contrib" / "samples"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_tool(name: str) -> str:
    """Return the path of an external tool; skip without it, but fail in CI (CI=true)."""
    places = (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}", f"/lib/systemd/{name}")
    path = shutil.which(name) or next((p for p in places if os.access(p, os.X_OK)), None)
    if path is None:
        message = f"{name} is not installed (./bootstrap setup installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def need_root() -> None:
    """Skip unless root; in CI, fail (CI runs as root and must run these tests)."""
    if os.geteuid() != 0:
        message = "needs root: run the test suite as root (sudo ./bootstrap test)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
