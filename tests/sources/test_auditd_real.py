"""With Debian's real auditd: the file follower across USR1 rotations, and the audisp plugin."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.conftest import ROOT, need_root
from tests.daemonproc import MonitordProcess, free_port, monitord_cmd, saved_telemetry, wait_until
from tests.realstack import lines_of_type, running_auditd

pytestmark = pytest.mark.slow

UUID = "0d3b2c1e-5f4a-4b7c-9d8e-1f2a3b4c5d6e"


def control(serial: int, name: str = "web01", op: str = "start") -> tuple[str, str]:
    return (
        "VIRT_CONTROL",
        f'virt=kvm op={op} reason=booted vm="{name}" uuid={UUID} vm-pid={1000 + serial}',
    )


def disk(n: int) -> tuple[str, str]:
    return (
        "VIRT_RESOURCE",
        f'virt=kvm resrc=disk reason=attach vm="web01" uuid={UUID} old-disk="?" '
        f'new-disk="/var/lib/libvirt/images/d{n}.qcow2"',
    )


def test_file_mode_sees_every_record_across_rotations(tmp_path: Path) -> None:
    """monitord following auditd's log counts every injected record across USR1 rotations."""
    need_root()
    with (
        running_auditd(tmp_path / "auditd") as auditd,
        MonitordProcess(tmp_path / "state", ["--audit-log", str(auditd.log)]) as d,
    ):
        auditd.inject([control(1)])
        total = 1
        for round_ in range(4):
            batch = [disk(round_ * 10 + i) for i in range(10)]
            auditd.inject(batch)
            total += len(batch)
            wait_until(lambda: len(lines_of_type(auditd.log, "VIRT_RESOURCE")) == 10)
            auditd.rotate()
            wait_until(lambda: not lines_of_type(auditd.log, "VIRT_RESOURCE"))
        wait_until(lambda: d.metric("libvirt_audit_records_total") == total, timeout=20)
        assert d.metric("monitord_log_reopens_total", reason="rotated") >= 4
        guest = d.guests()["guests"][0]
        assert guest["state"] == "running"
        assert len(guest["disks"]) == 40
        assert d.stop() == 0


def test_audisp_plugin_receives_every_record(tmp_path: Path) -> None:
    """auditd starts monitord from its plugins.d with our conf, and every record arrives."""
    need_root()
    port = free_port()
    state = tmp_path / "state"
    conf = tmp_path / "monitord.toml"
    conf.write_text(
        f'[source]\nkind = "audisp"\n[state]\ndir = "{state}"\ncheckpoint_interval = "1s"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n[alerts]\njournal = false\n'
        # Stays root (tmp_path is root's alone); tests/deploy/test_privileges.py tests the drop.
        '[plugin]\nuser = "root"\nhttp = true\n'
    )
    conf.chmod(0o600)
    template = (ROOT / "deploy" / "audit" / "plugins.d" / "monitord.conf").read_text()
    exe = monitord_cmd()[0]
    st = Path(exe).stat()
    assert st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    lines = []
    for line in template.splitlines():
        key = line.split("=", 1)[0].strip()
        if key == "path":
            line = f"path = {exe}"
        elif key == "args":
            line = f"args = run --config={conf}"
        elif key == "active":
            line = "active = yes"
        lines.append(line)
    with running_auditd(tmp_path / "auditd") as auditd:
        plugin = auditd.plugins / "monitord.conf"
        plugin.write_text("\n".join(lines) + "\n")
        plugin.chmod(0o640)
        auditd.stop()
        auditd.start()  # plugins are read at start-up
        wait_until(lambda: _healthz(port), timeout=30)
        auditd.inject([control(1)] + [disk(i) for i in range(25)])
        wait_until(lambda: _metric(port, "libvirt_audit_records_total") == 26, timeout=20)
        auditd.stop()  # SIGTERM to auditd ends the plugin: a final checkpoint is written
        wait_until(lambda: saved_telemetry(state).get("parse", {}).get("records") == 26, timeout=10)


def _healthz(port: int) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
        return True
    except OSError:
        return False


def _metric(port: int, name: str) -> float:
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in body.split("\n")
        if line.startswith((name + "{", name + " "))
    )
