"""Mutated audit lines through a real daemon: no crash, valid outputs, no junk guests.

20,000 seeded mutations of real libvirt lines (bytes flipped, cut, inserted, pieces
duplicated, lines glued together) are appended to the log a real `monitord run`
follows. Afterwards the daemon still runs and answers; /metrics passes promtool and
the strict OpenMetrics parser; the guest list is UTF-8 JSON; and every tracked guest
has a canonical UUID (junk never becomes a guest: parse error `bad_uuid`).
"""

from __future__ import annotations

import random
import urllib.request
from pathlib import Path

import pytest

from tests.adversarial.probes import (
    OPENMETRICS,
    UUID_RE,
    guests_ok,
    openmetrics_ok,
    promtool_ok,
    start_line,
)
from tests.audit.test_parser_fuzz import REAL, mutate
from tests.daemonproc import MonitordProcess, wait_until

MUTANTS = 20_000


def mutated_log(seed: int) -> bytes:
    rng = random.Random(seed)
    lines = []
    for _ in range(MUTANTS):
        line = mutate(rng, rng.choice(REAL))
        if rng.random() < 0.05:  # two lines glued (a lost newline)
            line += mutate(rng, rng.choice(REAL))
        lines.append(line.replace(b"\n", b" ") + b"\n")
    return b"".join(lines)


@pytest.mark.slow
def test_mutated_lines_through_the_daemon(tmp_path: Path) -> None:
    """The daemon survives 20,000 mutated lines; /metrics and the API stay valid and
    every guest tracked has a canonical UUID."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    daemon = MonitordProcess(tmp_path / "state", ["--audit-log", str(log), "--log-level", "info"])
    with daemon:
        with log.open("ab") as out:
            out.write(mutated_log(20250101))
            out.write(start_line(999_999))  # a sentinel after them all
        sentinel = "00000000-0000-4000-8000-000000999999"
        wait_until(
            lambda: any(g["uuid"] == sentinel for g in daemon.guests()["guests"]), timeout=60
        )
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert daemon.get("/healthz") == b"ok\n"
        promtool_ok(daemon.get("/metrics"))
        request = urllib.request.Request(daemon.url + "/metrics", headers={"Accept": OPENMETRICS})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert openmetrics_ok(resp.read()) > 0
        guests = guests_ok(daemon.get("/api/v1/guests"))
        assert guests, "no guest at all: the sentinel should be one"
        junk = [g["uuid"] for g in guests if not UUID_RE.match(g["uuid"])]
        assert not junk, f"{len(junk)} of {len(guests)} guests have no UUID: {junk[:5]}"
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
