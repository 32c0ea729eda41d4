"""`monitord run` as a real process: follow, serve, checkpoint, restart, SIGKILL torture."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from monitord.commands.simulate import Fleet, mixed_log
from monitord.state.store import Store
from tests.conftest import ROOT
from tests.daemonproc import MonitordProcess, monitord_cmd, saved_telemetry, wait_until


def fleet_lines(seed: int, n: int) -> list[bytes]:
    events = Fleet(seed, guests=4).events()
    return [next(events).line for _ in range(n)]


def guests_without_time(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(doc["guests"], key=lambda g: g["uuid"])


def replay_json(files: list[Path]) -> dict[str, Any]:
    out = subprocess.run(
        [*monitord_cmd(), "replay", "--json", *map(str, files)],
        capture_output=True,
        check=True,
        cwd=ROOT,
    )
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def test_follows_log_and_serves_state(tmp_path: Path) -> None:
    """New records appended to the log show up in the API; the guest table matches a replay."""
    log = tmp_path / "audit.log"
    lines = fleet_lines(1, 400)
    log.write_bytes(b"".join(lines[:200]))
    with MonitordProcess(tmp_path / "state", ["--audit-log", str(log)]) as d:
        wait_until(lambda: d.metric("monitord_lines_read_total") == 200)
        with open(log, "ab") as f:
            f.write(b"".join(lines[200:]))
        wait_until(lambda: d.metric("monitord_lines_read_total") == 400)
        live = d.guests()
        assert d.get("/healthz").strip() == b"ok"
        assert d.stop() == 0
    assert guests_without_time(live) == guests_without_time(replay_json([log]))
    assert (tmp_path / "state" / "state.db").exists()


def test_restart_counts_nothing_twice(tmp_path: Path) -> None:
    """After a clean restart the counters continue from the checkpoint, not from zero or double."""
    log = tmp_path / "audit.log"
    lines = fleet_lines(2, 300)
    log.write_bytes(b"".join(lines[:100]))
    state = tmp_path / "state"
    with MonitordProcess(state, ["--audit-log", str(log)]) as d:
        wait_until(lambda: d.metric("monitord_lines_read_total") == 100)
        # Lines are counted as read before their records are applied: a render between
        # the two (served for up to http.cache_max_age) shows fewer records for a moment.
        wait_until(lambda: d.metric("libvirt_audit_records_total") == 100)
        assert d.stop() == 0
    with open(log, "ab") as f:
        f.write(b"".join(lines[100:]))
    with MonitordProcess(state, ["--audit-log", str(log)]) as d:
        wait_until(lambda: d.metric("monitord_lines_read_total") == 300)
        wait_until(lambda: d.metric("libvirt_audit_records_total") == 300)
        time.sleep(1.5)  # past http.cache_max_age: a double count would show now
        assert d.metric("libvirt_audit_records_total") == 300
        assert d.stop() == 0


def test_corrupt_checkpoint_is_set_aside(tmp_path: Path) -> None:
    """A corrupt checkpoint never stops the daemon: it is renamed and state is rebuilt."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(fleet_lines(3, 50)))
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoint.json").write_bytes(b"\x00garbage{")
    with MonitordProcess(state, ["--audit-log", str(log)]) as d:
        wait_until(lambda: d.metric("libvirt_audit_records_total") == 50)
        assert d.stop() == 0
    assert list(state.glob("checkpoint.json.corrupt-*"))


def test_audisp_stdin_until_eof(tmp_path: Path) -> None:
    """As an auditd plugin: reads stdin (EOE lines included), exits 0 at EOF with a checkpoint."""
    lines = fleet_lines(4, 120)
    stream = b"".join(
        line + f"type=EOE msg=audit(1700000000.000:{i}): \n".encode()
        for i, line in enumerate(lines)
    )
    r, w = os.pipe()
    # As root the plugin would become [plugin] user (tests/deploy/test_privileges.py); stay.
    config = tmp_path / "monitord.toml"
    config.write_text('[plugin]\nuser = "root"\n')
    args = ["--source", "audisp", "--config", str(config)]
    d = MonitordProcess(tmp_path / "state", args, stdin=r)
    d.start()
    os.close(r)
    os.write(w, stream[: len(stream) // 2])
    wait_until(lambda: d.metric("monitord_lines_read_total") >= 100)
    os.write(w, stream[len(stream) // 2 :])
    wait_until(lambda: d.metric("libvirt_audit_records_total") == 120)
    os.close(w)
    assert d.proc is not None
    assert d.proc.wait(timeout=20) == 0
    store, saved = Store.open(str(tmp_path / "state"))
    store.close()
    assert saved.source_kind == "audisp"
    assert saved.counters["telemetry"]["parse"]["records"] == 120


def test_bad_flag_is_a_one_line_error(tmp_path: Path) -> None:
    """A bad --listen value is a user error: exit 2, one line, no traceback."""
    out = subprocess.run(
        [*monitord_cmd(), "run", "--listen", "nonsense", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0
    assert "--listen" in out.stderr


def test_listen_address_taken_is_runtime_failure(tmp_path: Path) -> None:
    """A port already in use: exit 1 with a clear message."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    with MonitordProcess(tmp_path / "s1", ["--audit-log", str(log)]) as d:
        out = subprocess.run(
            [*monitord_cmd(), "run", "--audit-log", str(log), "--listen", f"127.0.0.1:{d.port}",
             "--state-dir", str(tmp_path / "s2")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
            check=False,
        )  # fmt: skip
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr
        d.stop()


def test_sighup_with_bad_config_keeps_running(tmp_path: Path) -> None:
    """SIGHUP with a broken config file keeps the old config; a good one is applied."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(fleet_lines(5, 20)))
    conf = tmp_path / "monitord.toml"
    conf.write_text('[logging]\nlevel = "info"\n')
    conf.chmod(0o600)
    with MonitordProcess(tmp_path / "state", ["--config", str(conf), "--audit-log", str(log)]) as d:
        wait_until(lambda: d.metric("libvirt_audit_records_total") == 20)
        conf.write_text("[logging]\nlevel = 42\n")
        d.signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in d.log())
        with open(log, "ab") as f:
            f.write(b"".join(fleet_lines(6, 10)))
        wait_until(lambda: d.metric("libvirt_audit_records_total") == 30)
        conf.write_text('[logging]\nlevel = "debug"\n')
        d.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in d.log())
        assert d.stop() == 0


def _rotate(log: Path) -> None:
    """Rename rotation as auditd does it: shift audit.log.N up, then a new audit.log."""
    n = 1
    while (log.parent / f"{log.name}.{n}").exists():
        n += 1
    for i in range(n - 1, 0, -1):
        (log.parent / f"{log.name}.{i}").rename(log.parent / f"{log.name}.{i + 1}")
    log.rename(log.parent / f"{log.name}.1")
    log.touch(mode=0o600)


@pytest.mark.slow
def test_sigkill_torture_counts_every_record_once(tmp_path: Path) -> None:
    """Rotating writer, daemon SIGKILLed at random: final state equals a run never stopped."""
    rng = random.Random(7)
    log = tmp_path / "audit.log"
    log.touch()
    lines = list(mixed_log(11, 40_000, virt_fraction=0.3))
    state = tmp_path / "state"
    done = threading.Event()

    def writer() -> None:
        wrng = random.Random(3)
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

    t = threading.Thread(target=writer)
    d = MonitordProcess(state, ["--audit-log", str(log)])
    d.start()
    t.start()
    for _ in range(6):
        done.wait(rng.uniform(0.1, 0.6))
        d.kill()
        d = MonitordProcess(state, ["--audit-log", str(log)], port=d.port)
        d.start()
    t.join()
    try:
        try:
            wait_until(lambda: d.metric("monitord_lines_read_total") >= len(lines), timeout=60)
        except AssertionError:
            got = d.metric("monitord_lines_read_total")
            raise AssertionError(f"read {got} of {len(lines)}: {d.log()[-3000:]}") from None
        assert d.metric("monitord_lines_read_total") == len(lines)
        files = [*sorted(tmp_path.glob("audit.log.*"), key=lambda p: -int(p.suffix[1:])), log]
        assert sum(len(p.read_bytes().split(b"\n")) - 1 for p in files) == len(lines)
        expected = guests_without_time(replay_json(files))
        truth = sum(1 for ln in lines if b"uuid=" in ln and b"type=VIRT_" in ln[:40])
        # Answers may come from a render up to http.cache_max_age old: wait for one made
        # after the last line (a record lost or counted twice never gets there).
        wait_until(lambda: d.metric("libvirt_audit_records_total") == truth)
        wait_until(lambda: guests_without_time(d.guests()) == expected)
        assert d.stop() == 0
    finally:
        d.kill()


def test_sighup_switches_to_another_log(tmp_path: Path) -> None:
    """A reload that names another audit log re-opens the source there; state is kept."""
    first, second = tmp_path / "a" / "audit.log", tmp_path / "b" / "audit.log"
    for path, seed in ((first, 8), (second, 9)):
        path.parent.mkdir()
        path.write_bytes(b"".join(fleet_lines(seed, 40)))
    conf = tmp_path / "monitord.toml"
    conf.write_text(f'[source]\npath = "{first}"\n')
    conf.chmod(0o600)
    with MonitordProcess(tmp_path / "state", ["--config", str(conf)]) as d:
        wait_until(lambda: d.metric("libvirt_audit_records_total") == 40)
        conf.write_text(f'[source]\npath = "{second}"\n')
        d.signal(signal.SIGHUP)
        wait_until(lambda: d.metric("libvirt_audit_records_total") == 80)
        with open(second, "ab") as f:
            f.write(b"".join(fleet_lines(10, 5)))
        wait_until(lambda: d.metric("libvirt_audit_records_total") == 85)
        assert d.stop() == 0


def test_commits_while_running(tmp_path: Path) -> None:
    """While the daemon runs, position and counters are committed every checkpoint_interval;
    no child process is left (commits run in a thread, there is no fork)."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(fleet_lines(12, 100)))
    state = tmp_path / "state"
    conf = tmp_path / "monitord.toml"
    conf.write_text('[state]\ncheckpoint_interval = "200ms"\n')
    conf.chmod(0o600)
    with MonitordProcess(state, ["--config", str(conf), "--audit-log", str(log)]) as d:

        def saved_records() -> int:
            return int(saved_telemetry(state).get("parse", {}).get("records", -1))

        wait_until(lambda: saved_records() == 100)
        with open(log, "ab") as f:
            f.write(b"".join(fleet_lines(13, 50)))
        wait_until(lambda: saved_records() == 150)
        wait_until(lambda: d.metric("monitord_checkpoint_timestamp_seconds") > 0)
        assert d.proc is not None
        tasks = Path(f"/proc/{d.proc.pid}/task")
        assert not [c for t in tasks.iterdir() for c in (t / "children").read_text().split()]
        assert d.stop() == 0
