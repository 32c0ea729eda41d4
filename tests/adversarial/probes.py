"""Shared pieces of the adversarial probes: record lines, exposition checks, a daemon's RSS."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families

from tests.conftest import need_tool

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def start_line(i: int, name: bytes | None = None, serial: int | None = None) -> bytes:
    """A successful VIRT_CONTROL start of guest i (name `g{i}` unless given, hex-encoded)."""
    vm = b'vm="g%d"' % i if name is None else b"vm=" + name.hex().upper().encode()
    return (
        b"type=VIRT_CONTROL msg=audit(1700000000.%03d:%d): pid=1 uid=0 auid=4294967295 "
        b"ses=4294967295 msg='virt=kvm op=start reason=booted %s "
        b'uuid=00000000-0000-4000-8000-%012d vm-pid=%d exe="/usr/sbin/libvirtd" '
        b"hostname=? addr=? terminal=? res=success'\n"
        % (i % 1000, serial if serial is not None else i, vm, i, 1000 + i)
    )


def promtool_ok(text: bytes) -> None:
    """`promtool check metrics` accepts the text exposition (valid UTF-8, escapes, types)."""
    check = subprocess.run(
        [need_tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert check.returncode == 0, check.stderr.decode(errors="replace")[:2000]


def openmetrics_ok(text: bytes) -> int:
    """The OpenMetrics exposition parses strictly, with no duplicate series; returns samples."""
    seen: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    for family in om_families(text.decode("utf-8")):
        for sample in family.samples:
            seen[sample.name, tuple(sorted(sample.labels.items()))] += 1
    duplicates = [key for key, n in seen.items() if n > 1]
    assert not duplicates, duplicates[:3]
    return sum(seen.values())


def guests_ok(body: bytes) -> list[dict[str, Any]]:
    """The guest list is strict UTF-8 JSON; returns its guests."""
    guests: list[dict[str, Any]] = json.loads(body.decode("utf-8"))["guests"]
    return guests


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")
