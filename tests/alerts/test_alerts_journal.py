"""The journal sink writing to a real systemd-journald in a private mount namespace."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from monitord.alerts import JOURNAL_MESSAGE_ID, JOURNAL_RESOLVED_MESSAGE_ID
from tests.alerts.test_alerts import UUID
from tests.conftest import ROOT, need_root, need_tool
from tests.journalfiles import PRIVATE_JOURNALD

# Runs inside the namespace: the engine with only the journal sink, as the daemon builds it.
_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from monitord.alerts import AlertEngine, Identity
    from monitord.config import AlertsConfig
    from monitord.alerts.counters import AlertCounters
    from tests.alerts.test_alerts import record, disk_record

    counters = AlertCounters()
    identity = Identity("hv01", "http://hv01:9781", (("cluster", "prod-eu"),))
    engine = AlertEngine(AlertsConfig(journal=True), identity, counters=counters)
    assert [w.name for w in engine.workers] == ["journal"], engine.workers
    engine.start()
    engine.observe(record(serial=42), live=True)
    engine.observe(disk_record(serial=43), live=True)
    engine.observe(disk_record(res="success", serial=44), live=True)
    engine.observe(record(serial=45, node="hvB"), live=True)
    engine.close(5.0)
    assert counters.get("journal", "sent") == 4, Counter(counters.snapshot())
    """
)

_NAMESPACE = PRIVATE_JOURNALD + textwrap.dedent(
    """
    "$PYTHON" "$WRITER" "$ROOT"
    journalctl --sync
    journalctl -o json MESSAGE_ID=$FIRING + MESSAGE_ID=$RESOLVED > "$OUT"
    """
)


@pytest.mark.root
def test_journal_entries_have_the_documented_fields(tmp_path: Path) -> None:
    """Each firing and resolved alert is one journal entry with MESSAGE_ID, PRIORITY and the
    VIRT_* fields, the host and the [identity] labels; `journalctl MESSAGE_ID=...` finds them."""
    need_root()
    unshare = need_tool("unshare")
    journald = need_tool("systemd-journald")
    need_tool("journalctl")
    writer = tmp_path / "writer.py"
    writer.write_text(_WRITER)
    out = tmp_path / "entries.json"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "JOURNALD": journald,
        "PYTHON": sys.executable,
        "WRITER": str(writer),
        "ROOT": str(ROOT),
        "OUT": str(out),
        "FIRING": JOURNAL_MESSAGE_ID,
        "RESOLVED": JOURNAL_RESOLVED_MESSAGE_ID,
    }
    done = subprocess.run(
        [unshare, "-m", "--propagation", "private", "sh", "-c", _NAMESPACE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(e["AUDIT_SERIAL"] for e in entries) == ["42", "43", "43", "45"]
    by_serial = {e["AUDIT_SERIAL"]: e for e in entries}

    start = by_serial["42"]
    assert start["MESSAGE"] == "Guest web01 failed to start"
    assert start["MESSAGE_ID"] == JOURNAL_MESSAGE_ID
    assert start["PRIORITY"] == "3"
    assert start["VIRT_DOMAIN"] == "web01"
    assert start["VIRT_UUID"] == UUID
    assert start["VIRT_RECORD"] == "VIRT_CONTROL"
    assert start["VIRT_OP"] == "start"
    assert start["VIRT_REASON"] == "booted"
    assert "VIRT_RESRC" not in start
    assert start["VIRT_HOST"] == "hv01"
    assert start["VIRT_LABEL_CLUSTER"] == "prod-eu"
    assert "VIRT_NODE" not in start

    remote = by_serial["45"]  # a record with node=hvB, as a central collector reads it
    assert remote["VIRT_HOST"] == remote["VIRT_NODE"] == "hvB"
    assert remote["VIRT_LABEL_CLUSTER"] == "prod-eu"

    disk = [e for e in entries if e["AUDIT_SERIAL"] == "43"]
    firing = next(e for e in disk if e["MESSAGE_ID"] == JOURNAL_MESSAGE_ID)
    resolved = next(e for e in disk if e["MESSAGE_ID"] == JOURNAL_RESOLVED_MESSAGE_ID)
    assert firing["PRIORITY"] == "4"
    assert firing["VIRT_RESRC"] == "disk"
    assert firing["VIRT_REASON"] == "attach"
    assert "/var/lib/libvirt/images/data.qcow2" in firing["VIRT_DESCRIPTION"]
    assert resolved["MESSAGE"].startswith("Resolved: ")
    assert resolved["VIRT_ALERT_STATUS"] == "resolved"
