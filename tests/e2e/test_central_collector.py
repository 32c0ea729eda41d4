"""A central collector on auditd's own remote logging: three hosts, one aggregated log.

Three audisp-remote senders (hosts hvA, hvB, hvC) send libvirt records to a
receiving auditd on a loopback TCP port, which writes them all to one log, each
line prefixed with its sender's `node=`. One monitord follows that log and must
show each host's guests apart, a migration from both ends, and metrics by node.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemonproc import MonitordProcess, wait_until
from tests.remotelog import Receiver, send

pytestmark = [pytest.mark.slow, pytest.mark.root]

MIGRANT = "3f2d6a41-7c1e-4b9a-8e2f-0a1b2c3d4e01"  # migrates hvA -> hvB
TWIN = "3f2d6a41-7c1e-4b9a-8e2f-0a1b2c3d4e02"  # the same UUID defined on hvA and hvC
LOCAL_C = "3f2d6a41-7c1e-4b9a-8e2f-0a1b2c3d4e03"
EXE = 'exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? res=success'


class Host:
    """Plugin-format records of one simulated libvirt host."""

    def __init__(self, node: str, t: float) -> None:
        self.node = node
        self.t = t
        self.serial = 100
        self.lines: list[str] = []

    def rec(self, rtype: str, body: str) -> None:
        self.t += 0.5
        self.serial += 1
        self.lines.append(
            f"node={self.node} type={rtype} msg=audit({self.t:.3f}:{self.serial}): pid=1205 "
            f"uid=0 auid=4294967295 ses=4294967295 msg='{body} {EXE}'"
        )

    def start(self, vm: str, uuid: str, pid: int, reason: str = "booted") -> None:
        disk = f"/var/lib/libvirt/images/{vm}.qcow2"
        self.rec("VIRT_RESOURCE", f'virt=kvm resrc=disk reason=start vm="{vm}" uuid={uuid} '
                 f'old-disk="?" new-disk="{disk}"')  # fmt: skip
        self.rec("VIRT_RESOURCE", f'virt=kvm resrc=mem reason=start vm="{vm}" uuid={uuid} '
                 "old-mem=0 new-mem=1048576")  # fmt: skip
        self.rec("VIRT_RESOURCE", f'virt=kvm resrc=vcpu reason=start vm="{vm}" uuid={uuid} '
                 "old-vcpu=0 new-vcpu=2")  # fmt: skip
        self.rec("VIRT_CONTROL", f'virt=kvm op=start reason={reason} vm="{vm}" uuid={uuid} '
                 f"vm-pid={pid}")  # fmt: skip

    def stop(self, vm: str, uuid: str, reason: str) -> None:
        self.rec("VIRT_CONTROL", f'virt=kvm op=stop reason={reason} vm="{vm}" uuid={uuid} '
                 "vm-pid=0")  # fmt: skip


def test_collector_follows_three_hosts_with_a_migration(tmp_path: Path) -> None:
    """Per-node guests from one aggregated log; a migration is visible on both nodes."""
    receiver = Receiver(tmp_path)
    receiver.start()
    try:
        a, b, c = Host("hvA", 1_700_000_000.0), Host("hvB", 1_700_000_000.2), Host("hvC", 0)
        c.t = 1_700_000_000.4
        a.start("mover", MIGRANT, 4001)
        a.start("twin", TWIN, 4002)
        c.start("twin", TWIN, 6002)
        c.start("solo", LOCAL_C, 6003)
        send(tmp_path, "hvA", receiver.port, a.lines)
        send(tmp_path, "hvC", receiver.port, c.lines)
        wait_until(lambda: receiver.log.exists() and "node=hvC" in receiver.log.read_text())
        with MonitordProcess(
            tmp_path / "state", ["--audit-log", str(receiver.log), "--start", "beginning"]
        ) as daemon:
            wait_until(lambda: len(daemon.guests()["guests"]) == 4)
            # The migration: hvA writes the stop, hvB the start (sent while monitord follows).
            a.t = b.t = max(a.t, c.t) + 10
            a.stop("mover", MIGRANT, "migrated")
            b.start("mover", MIGRANT, 5001, reason="migrated")
            send(tmp_path, "hvA2", receiver.port, a.lines[-1:])
            send(tmp_path, "hvB", receiver.port, b.lines)

            def on(node: str, uuid: str) -> dict[str, object]:
                for g in daemon.guests()["guests"]:
                    if g["node"] == node and g["uuid"] == uuid:
                        return dict(g)
                raise KeyError((node, uuid))

            wait_until(lambda: on("hvB", MIGRANT)["state"] == "running")
            gone, arrived = on("hvA", MIGRANT), on("hvB", MIGRANT)
            assert gone["state"] == "stopped" and gone["last_reason"] == "migrated"
            assert arrived["last_reason"] == "migrated" and arrived["vm_pid"] == 5001
            assert arrived["host"] == "hvB" and arrived["disks"] == [
                "/var/lib/libvirt/images/mover.qcow2"
            ]
            # The same UUID on two nodes stays two guests, each with its own pid.
            assert on("hvA", TWIN)["vm_pid"] == 4002 and on("hvC", TWIN)["vm_pid"] == 6002
            assert len(daemon.guests()["guests"]) == 5
            assert all(g["node"] in ("hvA", "hvB", "hvC") for g in daemon.guests()["guests"])
            # One guest document per node through ?node=.
            one = daemon.get(f"/api/v1/guests/{MIGRANT}?node=hvA")
            assert b'"state": "stopped"' in one or b'"state":"stopped"' in one
            # Metrics carry the node; running counts per node add up.
            assert daemon.metric("libvirt_audit_domain_running", uuid=MIGRANT, node="hvB") == 1
            assert daemon.metric("libvirt_audit_domain_running", uuid=MIGRANT, node="hvA") == 0
            assert daemon.metric("libvirt_audit_domain_running", node="hvC") == 2
            ops = daemon.metric("libvirt_audit_operations_total", op="start", reason="migrated")
            assert ops == 1
    finally:
        receiver.stop()
