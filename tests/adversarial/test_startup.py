"""Start-up against hostile files: a FIFO or a symlink as the audit log, start-up blocked in
an open() (a FIFO where a file is read), a state directory deleted under the daemon.

Every probe runs a real `monitord run` process and is bounded in time.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.daemonproc import MonitordProcess, free_port, monitord_cmd, saved_telemetry
from tests.waiting import wait_until


def run_args(tmp_path: Path, log: Path, *extra: str) -> list[str]:
    return [*monitord_cmd(), "run", "--audit-log", str(log), "--state-dir",
            str(tmp_path / "state"), "--listen", f"127.0.0.1:{free_port()}", *extra]  # fmt: skip


def test_fifo_audit_log_exits_2_at_once(tmp_path: Path) -> None:
    """A FIFO as the audit log: exit 2 with one line naming it (start-up hung in open()
    before, deaf to SIGTERM)."""
    fifo = tmp_path / "audit.log"
    os.mkfifo(fifo)
    proc = subprocess.run(run_args(tmp_path, fifo), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "FIFO" in proc.stderr and str(fifo) in proc.stderr


def test_symlinked_audit_log_exits_2_naming_the_target(tmp_path: Path) -> None:
    """A symbolic link as the audit log: exit 2, the message says which path to configure."""
    real = tmp_path / "real.log"
    real.write_bytes(b"")
    link = tmp_path / "audit.log"
    link.symlink_to(real)
    proc = subprocess.run(run_args(tmp_path, link), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "symbolic link" in proc.stderr and f"set source.path to {real}" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signals_work_while_start_up_is_blocked(tmp_path: Path, sig: signal.Signals) -> None:
    """Start-up blocked in open() on a FIFO nobody writes (the config file) still ends on
    SIGTERM or SIGINT within seconds (SIGTERM was ignored before: its handler only set a
    flag, and the open was retried). A FIFO in the state directory blocks nothing: it is
    set aside (tests/state/test_store_daemon.py)."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    blocked = tmp_path / "monitord.toml"
    os.mkfifo(blocked)
    extra = ["--config", str(blocked)]
    proc = subprocess.Popen(run_args(tmp_path, log, *extra), stderr=subprocess.PIPE)
    try:
        # Wait until the process sits in the open() of that FIFO (the kernel's wait for a
        # writer), i.e. after the daemon has set up whatever it sets up before.
        def in_open() -> bool:
            return Path(f"/proc/{proc.pid}/wchan").read_text() == "wait_for_partner"

        wait_until(in_open, timeout=20, what="start-up blocked on the FIFO",
                   ignore=(OSError,))  # fmt: skip
        time.sleep(0.2)
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=10)
        assert time.monotonic() - t0 < 5
        assert proc.returncode in (-sig, 128 + sig, 0), proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_deleted_state_directory_is_recreated_with_a_log_line(tmp_path: Path) -> None:
    """The state directory removed while the daemon runs is created again at the next
    commit, which writes the whole state, and the log says so."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    state = tmp_path / "state"
    daemon = MonitordProcess(state, ["--audit-log", str(log)])
    with daemon:
        wait_until(lambda: (state / "state.db").exists(), what="the store")
        shutil.rmtree(state)
        with open(log, "ab") as out:
            out.write(
                b"type=VIRT_CONTROL msg=audit(1700000000.000:1): pid=1 uid=0 auid=4294967295 "
                b'ses=4294967295 msg=\'virt=kvm op=start reason=booted vm="a" '
                b'uuid=00000000-0000-0000-0000-000000000001 vm-pid=1 exe="/usr/sbin/libvirtd" '
                b"hostname=? addr=? terminal=? res=success'\n"
            )
        wait_until(lambda: saved_telemetry(state).get("parse", {}).get("records") == 1,
                   timeout=30, what="the state written again", ignore=(sqlite3.Error,))  # fmt: skip
        assert f"state directory {state} was missing" in daemon.log()
        assert daemon.get("/healthz").strip() == b"ok"
        assert daemon.stop() == 0
