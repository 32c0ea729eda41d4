"""The daemon's stages own their counters: what /metrics shows after a restore, an old
checkpoint.json, saved state that does not fit, and an idle loop with alerts firing."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from monitord.config import AlertsConfig, Config, HttpConfig, SourceConfig, StateConfig
from monitord.daemon import Daemon
from monitord.state.store import Store
from tests.daemonproc import MonitordProcess, free_port, saved_telemetry, wait_until

OLD_CHECKPOINT = Path(__file__).parent / "data" / "checkpoint-v1.json"


def failed_start(i: int, at: float | None = None) -> bytes:
    """A failed op=start of guest number i: one firing alert per guest."""
    t = time.time() if at is None else at
    return (
        f"type=VIRT_CONTROL msg=audit({t:.3f}:{1000 + i}): pid=1 uid=0 auid=4294967295 "
        f'ses=4294967295 msg=\'virt=kvm op=start reason=booted vm="g{i}" '
        f'uuid={uuid.UUID(int=i + 1)} vm-pid=0 exe="/usr/sbin/libvirtd" hostname=? addr=? '
        "terminal=? res=failed'\n"
    ).encode()


class Hook:
    """A real webhook receiver on loopback that counts the alerts posted to it."""

    def __init__(self) -> None:
        self.alerts = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.alerts += len(body["alerts"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def config_file(tmp_path: Path, body: str) -> Path:
    conf = tmp_path / "monitord.toml"
    conf.write_text(body)
    conf.chmod(0o600)
    return conf


def test_alert_counters_after_saved_state_that_does_not_fit(tmp_path: Path, hook: Hook) -> None:
    """After saved state that does not fit, /metrics shows the counters the alert engine writes."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    state = tmp_path / "state"
    state.mkdir()
    # A sound store whose guest the table cannot load (a count that is text).
    store, _ = Store.open(str(state))
    guest = str(uuid.UUID(int=99))
    assert store.commit(source_kind="file", position=None,
                        upserted=[(("", guest), {"uuid": guest, "vcpus": "many"})])  # fmt: skip
    store.close()
    conf = config_file(tmp_path, f'[alerts]\njournal = false\nwebhook = [{{url = "{hook.url}"}}]\n')
    with MonitordProcess(state, ["--config", str(conf), "--audit-log", str(log)]) as d:
        wait_until(lambda: "loaded content rejected" in d.log())
        with open(log, "ab") as f:
            f.write(failed_start(1))
        wait_until(lambda: hook.alerts == 1)
        wait_until(lambda: d.metric("monitord_alerts_total", sink="webhook", outcome="sent") == 1)
        assert d.metric("libvirt_audit_records_total") == 1
        assert d.stop() == 0


def test_checkpoint_of_the_previous_version_loads(tmp_path: Path) -> None:
    """A checkpoint.json written before the counters were split is imported into the store
    with every counter."""
    old = json.loads(OLD_CHECKPOINT.read_text())
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(OLD_CHECKPOINT, state / "checkpoint.json")
    conf = config_file(tmp_path, "[alerts]\njournal = false\n")
    with MonitordProcess(state, ["--config", str(conf), "--audit-log", str(log)]) as d:
        # Its log is gone: the position is lost, but state and counters are kept.
        wait_until(lambda: d.metric("monitord_log_reopens_total", reason="position_lost") == 1)
        m = d.metric
        assert m("monitord_lines_read_total", source="file") == 15
        assert m("monitord_bytes_read_total") == 5762
        assert m("monitord_parse_errors_total", reason="no_message") == 1
        assert m("monitord_log_reopens_total", reason="rotated") == 1
        assert m("monitord_last_record_timestamp_seconds") == old["telemetry"]["last_record_time"]
        assert m("monitord_record_lag_seconds_count") == 6
        assert m("monitord_checkpoint_timestamp_seconds") >= old["saved_at"]
        assert m("monitord_checkpoint_errors_total") == 0
        assert m("monitord_alerts_total", sink="webhook", outcome="sent") == 2
        assert m("monitord_guests_tracked") == 3
        assert d.stop() == 0
    assert list(state.glob("checkpoint.json.imported-*"))
    store, saved = Store.open(str(state))
    store.close()
    new = saved.counters["telemetry"]
    assert new.keys() == old["telemetry"].keys()
    assert new["parse"] == old["telemetry"]["parse"]
    assert new["alerts"] == old["telemetry"]["alerts"]


def test_partial_restore_leaves_nothing_behind(tmp_path: Path) -> None:
    """Saved state whose table fits but whose counters do not: every stage starts empty (the
    store is set aside), and the exporter still reads the objects the stages write."""
    doc = json.loads(OLD_CHECKPOINT.read_text())
    doc["telemetry"]["alerts"] = "bogus"  # restored after the table and the source counters
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoint.json").write_text(json.dumps(doc))
    config = Config(
        source=SourceConfig(path=str(tmp_path / "audit.log")),
        state=StateConfig(dir=str(state)),
        http=HttpConfig(listen=f"127.0.0.1:{free_port()}"),
        alerts=AlertsConfig(journal=False),
    )
    daemon = Daemon(config)
    source_counters, pipeline = daemon.source_counters, daemon.pipeline
    alert_counters = daemon.alerts.counters
    assert daemon._open_store() is None
    assert daemon.table.guests_tracked == 0
    assert daemon.source_counters is source_counters and source_counters.parse.lines == 0
    assert daemon.pipeline is pipeline and pipeline.last_record_time is None
    assert daemon.pipeline.table is daemon.table
    assert daemon.alerts.counters is alert_counters and not alert_counters.snapshot()
    assert daemon.store is not None and daemon.store.stats().set_aside == {"rejected": 1}
    daemon.store.close()


@pytest.mark.slow
def test_idle_loop_with_alerts_firing_does_not_tick(tmp_path: Path) -> None:
    """With alerts firing and no record coming, the loop sleeps until the next alert is due
    (resolve or re-send), not once a second."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    conf = config_file(tmp_path, '[source]\nrescan_interval = "60s"\n[alerts]\njournal = false\n')
    with MonitordProcess(tmp_path / "state", ["--config", str(conf), "--audit-log", str(log)]) as d:
        with open(log, "ab") as f:
            f.write(b"".join(failed_start(i) for i in range(50)))
        wait_until(lambda: d.metric("libvirt_audit_records_total") == 50)
        assert d.proc is not None
        status = Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/status")

        def wakeups() -> int:
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
            raise AssertionError("no voluntary_ctxt_switches")

        # The commit after the records (up to checkpoint_interval later).
        wait_until(lambda: saved_telemetry(tmp_path / "state").get("parse", {}).get("records"))
        time.sleep(0.5)
        before = wakeups()
        time.sleep(4.0)
        assert wakeups() - before <= 1  # it was 4 or more with a tick every second
        assert d.stop() == 0
