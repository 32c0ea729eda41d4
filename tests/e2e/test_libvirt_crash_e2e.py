"""Live: a guest whose QEMU is killed while libvirtd is down (libvirt never writes a stop).

A real libvirtd (tests/libvirt_stack.py) audited by a private auditd, monitord following
auditd's log. QEMU of one guest is killed while libvirtd is stopped; libvirtd comes back
and says "shut off (crashed)" with no record. The log (and so monitord) still says the
guest runs with its old pid: monitord.state.liveness must tell that pid is gone while the
other guest's is alive; the guest's next start then arrives for a guest that looks
running and must leave it running with the new pid and one run's devices.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from monitord.state.liveness import Liveness, check
from tests.conftest import need_root
from tests.daemonproc import MonitordProcess, wait_until
from tests.libvirt_stack import (
    RUN_DIR,
    TEST_UUID_PREFIX,
    Guest,
    LibvirtStack,
    running_libvirt,
    write_boot_disk,
)
from tests.realstack import running_auditd
from tests.waiting import wait_until as wait_for


def virt_records(log: Path) -> int:
    # Split on newlines only: 0x1D (the enrichment separator) is not a line break.
    return sum(1 for ln in log.read_bytes().split(b"\n") if ln.startswith(b"type=VIRT_"))


def qemu_pid(name: str) -> int:
    return int((RUN_DIR / "qemu" / f"{name}.pid").read_text().strip())


def guests_by_name(daemon: MonitordProcess, log: Path, last: str) -> dict[str, dict[str, Any]]:
    """monitord's guest documents once auditd has written `last` and monitord read it all."""
    try:
        wait_for(lambda: last.encode() in log.read_bytes(), 20, what=f"{last} in the audit log")
    except AssertionError as err:
        if b"audit_enabled=0" in log.read_bytes():
            # A systemd-journald started elsewhere on the host turns the kernel's auditing off.
            raise AssertionError("auditing switched off by another process: records lost") from err
        raise
    total = virt_records(log)
    wait_for(
        lambda: daemon.metric("libvirt_audit_records_total") == total,
        20,
        what=f"monitord to read {total} records",
    )
    return {g["name"]: g for g in daemon.guests()["guests"]}


def make_guest(stack: LibvirtStack, name: str, n: int) -> Guest:
    guest = Guest(
        name=name,
        uuid=f"{TEST_UUID_PREFIX}{300 + n:012d}",
        mac=f"52:54:00:6d:03:{n:02x}",
        disk=stack.images / f"{name}.img",
    )
    write_boot_disk(guest.disk)
    stack.define(guest)
    return guest


@pytest.mark.slow
def test_guest_killed_while_libvirtd_is_down(tmp_path: Path) -> None:
    """No stop record: monitord says running with the dead pid, liveness says gone; the
    next start closes that run (running, new pid, one disk and one NIC)."""
    need_root()
    t0 = time.monotonic()
    with ExitStack() as cleanup:
        auditd = cleanup.enter_context(running_auditd(tmp_path / "auditd"))
        daemon = cleanup.enter_context(
            MonitordProcess(tmp_path / "state", ["--audit-log", str(auditd.log)])
        )
        stack = cleanup.enter_context(running_libvirt())
        stack.images.mkdir(exist_ok=True)
        alive = make_guest(stack, "alive01", 1)
        crashed = make_guest(stack, "crashed01", 2)
        for guest in (alive, crashed):
            stack.virsh("start", guest.name)
        dead_pid, alive_pid = qemu_pid(crashed.name), qemu_pid(alive.name)

        stack.stop_libvirtd()
        os.kill(dead_pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{dead_pid}").exists(), 10)
        stack.restart_libvirtd()
        assert stack.virsh("domstate", "--reason", crashed.name).stdout.strip() == (
            "shut off (crashed)"
        )
        assert stack.virsh("domstate", alive.name).stdout.strip() == "running"
        assert f'op=stop reason=failed vm="{crashed.name}"' not in auditd.log.read_text()

        seen = guests_by_name(daemon, auditd.log, f"vm-pid={dead_pid}")  # started last
        stale = seen[crashed.name]
        # The log's word: running, with the pid that no longer exists.
        assert (stale["state"], stale["vm_pid"]) == ("running", dead_pid)
        assert check(stale["vm_pid"], stale["started_at"]) is Liveness.GONE
        live = seen[alive.name]
        assert (live["state"], live["vm_pid"]) == ("running", alive_pid)
        assert check(live["vm_pid"], live["started_at"]) is Liveness.ALIVE

        stack.virsh("start", crashed.name)
        new_pid = qemu_pid(crashed.name)
        restarted = guests_by_name(daemon, auditd.log, f"vm-pid={new_pid}")[crashed.name]
        assert (restarted["state"], restarted["vm_pid"]) == ("running", new_pid)
        assert restarted["started_at"] > stale["started_at"]
        assert (len(restarted["disks"]), len(restarted["nics"])) == (1, 1)
        assert check(restarted["vm_pid"], restarted["started_at"]) is Liveness.ALIVE
        # The dead pid checked against the new start: still gone (or reused: also gone).
        assert check(dead_pid, restarted["started_at"]) is Liveness.GONE
    print("crash e2e:", json.dumps({"seconds": round(time.monotonic() - t0, 1)}))
