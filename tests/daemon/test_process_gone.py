"""A running guest whose process died with no stop record: reported, alerted, then resolved."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.alerts.test_alerts import Receiver, receiver  # noqa: F401 (the fixture)
from tests.daemonproc import MonitordProcess, wait_until

UUID = "5a1f0c3e-9b2d-4e6f-8a7c-1d2e3f4a5b6c"


def control(op: str, pid: int, serial: int) -> bytes:
    return (
        f"type=VIRT_CONTROL msg=audit({time.time():.3f}:{serial}): pid=1 uid=0 "
        f'auid=4294967295 ses=4294967295 msg=\'virt=kvm op={op} reason=booted vm="crashy" '
        f'uuid={UUID} vm-pid={pid} exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? '
        "res=success'\n"
    ).encode()


@pytest.mark.slow
def test_process_gone_reported_alerted_and_resolved_by_the_next_start(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
) -> None:
    """The log says running; the process (a real one) dies: the guest shows process_gone and
    its gauge, VirtGuestProcessGone fires; the guest's next start resolves both."""
    qemu = subprocess.Popen(["sleep", "600"])
    log = tmp_path / "audit.log"
    log.write_bytes(control("start", qemu.pid, 1))
    conf = tmp_path / "monitord.toml"
    conf.write_text(
        '[state]\nprocess_check_interval = "0.2s"\n[alerts]\njournal = false\n'
        f'[[alerts.webhook]]\nurl = "{receiver.url}"\n'
    )
    conf.chmod(0o600)
    args = ["--config", str(conf), "--audit-log", str(log), "--start", "beginning"]
    try:
        with MonitordProcess(tmp_path / "state", args) as daemon:

            def guest() -> dict[str, object]:
                doc: dict[str, object] = json.loads(daemon.get(f"/api/v1/guests/{UUID}"))
                return doc

            wait_until(lambda: guest()["state"] == "running")
            time.sleep(0.5)  # a few checks with the process alive
            assert guest()["process_gone"] is False
            assert daemon.metric("libvirt_audit_domain_process_gone", uuid=UUID) == 0
            qemu.kill()
            qemu.wait()
            wait_until(lambda: guest()["process_gone"] is True)
            assert guest()["state"] == "running"  # what the log says stays
            # /metrics may be a render up to http.cache_max_age old.
            wait_until(lambda: daemon.metric("libvirt_audit_domain_process_gone", uuid=UUID) == 1)
            wait_until(lambda: len(receiver.alerts()) == 1)
            (alert,) = receiver.alerts()
            assert alert["labels"]["alertname"] == "VirtGuestProcessGone"
            assert alert["status"] == "firing" and alert["labels"]["domain"] == "crashy"
            again = subprocess.Popen(["sleep", "600"])  # libvirt starts it again, alive
            try:
                with log.open("ab") as f:
                    f.write(control("start", again.pid, 2))
                wait_until(lambda: guest()["process_gone"] is False)
                wait_until(lambda: len(receiver.alerts()) >= 2)
                time.sleep(0.5)  # a few more checks: the new process is alive, nothing fires
                assert [a["status"] for a in receiver.alerts()] == ["firing", "resolved"]
            finally:
                again.kill()
                again.wait()
    finally:
        qemu.kill()
        qemu.wait()
