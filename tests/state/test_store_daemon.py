"""`monitord run` on a damaged state directory serves within 5 s every time; a SIGKILLed daemon
keeps its history exactly once."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from monitord.commands.simulate import mixed_log
from monitord.state import schema
from tests.conftest import ROOT
from tests.daemonproc import MonitordProcess, monitord_cmd, wait_until
from tests.state import store_corruptions as c


@pytest.mark.slow
@pytest.mark.parametrize("way", list(c.WAYS))
def test_daemon_serves_within_5_s_on_a_damaged_store(tmp_path: Path, way: str) -> None:
    """Damaged state: the daemon listens within 5 s, sets the damage aside, counts it, and
    rebuilds state from the beginning of the log."""
    damage, reason = c.WAYS[way]
    state = tmp_path / "state"
    c.reset(state)
    if way.startswith("checkpoint.json"):
        c.make_checkpoint_json(state)
    else:
        c.make_store(state)
    damage(state)
    log = tmp_path / "audit.log"
    log.write_bytes(c.LOG.read_bytes())
    started = time.monotonic()
    d = MonitordProcess(state, ["--audit-log", str(log)])
    try:
        d.start(wait=False)
        d.wait_healthy_or_listening(timeout=5.0)
        assert time.monotonic() - started < 5.0
        wait_until(
            lambda: d.metric("monitord_lines_read_total") == len(c.LOG.read_bytes().splitlines())
        )
        assert d.get("/healthz").strip() == b"ok"
        if reason is not None:
            assert d.metric("monitord_state_set_aside_total", reason=reason) == 1
            pattern = "checkpoint.json.corrupt-*" if reason == "checkpoint_json" else "state.db.*-*"
            assert list(state.glob(pattern))
        assert d.stop() == 0
    finally:
        d.kill()
    assert (state / schema.DB_NAME).is_file()
    if reason is None:
        # The store was kept: the daemon added the log's records to the history it held.
        out = subprocess.run(
            [*monitord_cmd(), "history", "--json", "--state-dir", str(state)],
            capture_output=True, check=True, cwd=ROOT,
        )  # fmt: skip
        assert len(json.loads(out.stdout)["events"]) > len(c.records())


def _rotate(log: Path) -> None:
    """Rename rotation as auditd does it, keeping every file (none is lost unread)."""
    n = 1
    while (log.parent / f"{log.name}.{n}").exists():
        n += 1
    for i in range(n - 1, 0, -1):
        (log.parent / f"{log.name}.{i}").rename(log.parent / f"{log.name}.{i + 1}")
    log.rename(log.parent / f"{log.name}.1")
    log.touch(mode=0o600)


@pytest.mark.slow
def test_sigkill_torture_keeps_history_exactly_once(tmp_path: Path) -> None:
    """Rotating writer, daemon SIGKILLed at random: the history holds every libvirt record of
    the logs once, in order, like a run that never stopped."""
    rng = random.Random(17)
    log = tmp_path / "audit.log"
    log.touch()
    lines = list(mixed_log(21, 30_000, virt_fraction=0.3))
    state = tmp_path / "state"
    done = threading.Event()

    def writer() -> None:
        wrng = random.Random(5)
        i = 0
        while i < len(lines):
            n = wrng.randint(50, 400)
            with open(log, "ab") as f:
                f.write(b"".join(lines[i : i + n]))
            i += n
            if wrng.random() < 0.05:
                _rotate(log)
            done.wait(0.002)
        done.set()

    thread = threading.Thread(target=writer)
    d = MonitordProcess(state, ["--audit-log", str(log)])
    d.start()
    thread.start()
    for _ in range(6):
        done.wait(rng.uniform(0.1, 0.6))
        d.kill()
        d = MonitordProcess(state, ["--audit-log", str(log)], port=d.port)
        d.start()
    thread.join()
    try:
        wait_until(lambda: d.metric("monitord_lines_read_total") >= len(lines), timeout=60)
        assert d.stop() == 0
    finally:
        d.kill()
    files = [*sorted(tmp_path.glob("audit.log.*"), key=lambda p: -int(p.suffix[1:])), log]
    history = subprocess.run(
        [*monitord_cmd(), "history", "--json", "--state-dir", str(state)],
        capture_output=True, check=True, cwd=ROOT,
    )  # fmt: skip
    logged = subprocess.run(
        [*monitord_cmd(), "history", "--json", "--from-log", *map(str, files)],
        capture_output=True, check=True, cwd=ROOT,
    )  # fmt: skip
    stored = [(e["time"], e["serial"]) for e in json.loads(history.stdout)["events"]]
    expected = [(e["time"], e["serial"]) for e in json.loads(logged.stdout)["events"]]
    assert stored == expected
