"""Metrics from the guest table and each stage's counters (docs/INTERFACE.md, "Metrics")."""

from __future__ import annotations

import subprocess
import tempfile

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from monitord.alerts import AlertEngine, Identity
from monitord.audit.record import AuditRecord
from monitord.config import AlertmanagerConfig, AlertsConfig, StateConfig
from monitord.pipeline import Pipeline
from monitord.serve.exporter import MonitordRegistry, StageMetrics, make_registry, render
from monitord.sources.counters import SourceCounters
from monitord.state.metrics import StoreCollector
from monitord.state.store import Store
from monitord.state.table import GuestTable
from tests.conftest import need_tool
from tests.state.test_state import UUID, UUID2, Log, feed

CONTRACT_METRICS = (
    "libvirt_audit_records_total libvirt_audit_operations_total "
    "libvirt_audit_resource_changes_total libvirt_audit_security_labels_total "
    "libvirt_audit_domains libvirt_audit_domain_info libvirt_audit_domain_state "
    "libvirt_audit_domain_running libvirt_audit_unmatched_detaches_total "
    "libvirt_audit_domain_vcpus libvirt_audit_domain_memory_bytes libvirt_audit_domain_devices "
    "libvirt_audit_domain_failures_total libvirt_audit_domain_last_event_timestamp_seconds "
    "libvirt_audit_domain_start_timestamp_seconds libvirt_audit_domain_security_info "
    "monitord_build_info monitord_lines_read_total monitord_bytes_read_total "
    "monitord_parse_errors_total monitord_records_ignored_total monitord_log_reopens_total "
    "monitord_last_record_timestamp_seconds monitord_record_lag_seconds monitord_guests_tracked "
    "monitord_guests_evicted_total monitord_checkpoint_timestamp_seconds "
    "monitord_checkpoint_errors_total monitord_alerts_total monitord_alert_queue_length"
).split()


def populated() -> tuple[GuestTable, list[StageMetrics]]:
    """A table with two guests, and every stage's counters with known values."""
    log = Log()
    table = GuestTable(StateConfig(), clock=lambda: 0.0)
    feed(table, log.start(disks=("/d/a", "/d/b")))
    table.apply(log.label("selinux", "system_u:system_r:svirt_t:s0:c1,c2"))
    failed = log.disk("attach", new="/d/c", res="failed")
    table.apply(failed)
    feed(table, log.start(uuid=UUID2, vm='db "quoted" \\ name'))
    table.apply(log.control("stop", "destroyed", uuid=UUID2, vm="db01"))
    source = SourceCounters("file")
    source.parse.lines, source.parse.bytes = 100, 12345
    source.parse.errors["bad_header"] = 2
    source.parse.ignored["not_virt"] = 80
    source.reopens["rotated"] = 1
    pipeline = Pipeline(table)
    pipeline.last_record_time = log.t
    pipeline.lag.observe(0.02)
    pipeline.lag.observe(7.0)
    store, _ = Store.open(
        tempfile.mkdtemp(prefix="monitord-exporter-"), clock=lambda: 1_700_000_500.0
    )
    store.restore_counters({"checkpoint_errors": 1})
    assert store.commit(source_kind="file", position=None)
    store.close()  # its numbers stay readable
    checkpoint = StoreCollector(store)
    # Not started: the two failures stay queued for the Alertmanager sink.
    config = AlertsConfig(
        journal=False, alertmanager=(AlertmanagerConfig(url="http://127.0.0.1:9/"),)
    )
    alerts = AlertEngine(config, Identity("hv01", "http://127.0.0.1:9781"))
    alerts.counters.count("alertmanager", "sent", 3)
    alerts.observe(failed, live=True)
    alerts.observe(log.control("start", "booted", uuid=UUID2, res="failed"), live=True)
    return table, [source, pipeline, checkpoint, alerts]


def value(reg: MonitordRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample of what /metrics serves now (the text format, parsed by prometheus-client)."""
    want = labels or {}
    for family in text_string_to_metric_families(render(reg, None)[0].decode()):
        for s in family.samples:
            if s.name == name and s.labels == want:
                return s.value
    return None


def test_every_contract_metric_is_exported() -> None:
    """Every metric of the contract appears with HELP and TYPE in the text output."""
    table, stages = populated()
    text = render(make_registry(table, "1.2.3", stages), None)[0].decode()
    for name in CONTRACT_METRICS:
        base = name.removesuffix("_total")
        assert f"# HELP {name} " in text or f"# HELP {base} " in text, name
    assert "process_cpu_seconds_total" in text and "python_info" in text


def test_guest_and_counter_values() -> None:
    """Sample values follow the table: running, vcpus, memory, devices, failures, counters."""
    table, stages = populated()
    reg = make_registry(table, "1.2.3", stages)
    g = {"uuid": UUID, "domain": "web01", "virt": "kvm"}
    assert value(reg, "libvirt_audit_domain_running", g) == 1.0
    assert value(reg, "libvirt_audit_domain_vcpus", g) == 2.0
    assert value(reg, "libvirt_audit_domain_memory_bytes", g) == 65536 * 1024
    assert value(reg, "libvirt_audit_domain_devices", {**g, "kind": "disk"}) == 2.0
    assert value(reg, "libvirt_audit_domain_devices", {**g, "kind": "nic"}) == 1.0
    assert value(reg, "libvirt_audit_domain_failures_total", g) == 1.0
    assert value(reg, "libvirt_audit_domain_info", g) == 1.0
    assert value(reg, "libvirt_audit_domain_state", {**g, "state": "running"}) == 1.0
    assert value(reg, "libvirt_audit_domain_state", {**g, "state": "stopped"}) == 0.0
    sec = {**g, "model": "selinux", "vm_ctx": "system_u:system_r:svirt_t:s0:c1,c2",
           "img_ctx": "system_u:system_r:svirt_t:s0:c1,c2"}  # fmt: skip
    assert value(reg, "libvirt_audit_domain_security_info", sec) == 1.0
    db = {"uuid": UUID2, "domain": "db01", "virt": "kvm"}
    assert value(reg, "libvirt_audit_domain_running", db) == 0.0
    assert value(reg, "libvirt_audit_domains", {"virt": "kvm", "state": "stopped"}) == 1
    assert value(reg, "libvirt_audit_domains", {"virt": "kvm", "state": "unknown"}) == 0
    ops = {"virt": "kvm", "op": "start", "reason": "booted", "result": "success"}
    assert value(reg, "libvirt_audit_operations_total", ops) == 2.0
    res = {"virt": "kvm", "resrc": "disk", "reason": "attach", "result": "failed"}
    assert value(reg, "libvirt_audit_resource_changes_total", res) == 1.0
    rec = {"record": "VIRT_MACHINE_ID", "virt": "kvm", "result": "success"}
    assert value(reg, "libvirt_audit_records_total", rec) == 1.0
    labels = {"virt": "kvm", "model": "selinux", "result": "success"}
    assert value(reg, "libvirt_audit_security_labels_total", labels) == 1.0


def test_daemon_self_metrics() -> None:
    """Self-metrics come from the stages that own them, and from the table."""
    table, stages = populated()
    reg = make_registry(table, "1.2.3", stages)
    assert value(reg, "monitord_build_info", {"version": "1.2.3"}) == 1.0
    assert value(reg, "monitord_lines_read_total", {"source": "file"}) == 100
    assert value(reg, "monitord_bytes_read_total", {"source": "file"}) == 12345
    assert value(reg, "monitord_parse_errors_total", {"reason": "bad_header"}) == 2
    assert value(reg, "monitord_parse_errors_total", {"reason": "no_message"}) == 0
    assert value(reg, "monitord_records_ignored_total", {"reason": "not_virt"}) == 80
    assert value(reg, "monitord_log_reopens_total", {"reason": "rotated"}) == 1
    assert value(reg, "monitord_log_reopens_total", {"reason": "truncated"}) == 0
    assert value(reg, "monitord_record_lag_seconds_count") == 2
    assert value(reg, "monitord_record_lag_seconds_bucket", {"le": "0.025"}) == 1
    assert value(reg, "monitord_record_lag_seconds_bucket", {"le": "+Inf"}) == 2
    assert value(reg, "monitord_guests_tracked") == 2
    assert value(reg, "monitord_guests_evicted_total") == 0
    assert value(reg, "monitord_checkpoint_timestamp_seconds") == 1_700_000_500.0
    assert value(reg, "monitord_checkpoint_errors_total") == 1
    alerts = {"sink": "alertmanager", "outcome": "sent"}
    assert value(reg, "monitord_alerts_total", alerts) == 3
    assert value(reg, "monitord_alert_queue_length", {"sink": "alertmanager"}) == 2


def test_forgotten_guest_series_disappear() -> None:
    """After eviction a guest's series are gone; the eviction is counted."""
    table, stages = populated()
    reg = make_registry(table, "x", stages)
    db = {"uuid": UUID2, "domain": "db01", "virt": "kvm"}
    assert value(reg, "libvirt_audit_domain_running", db) == 0.0
    last = stages[1].last_record_time  # type: ignore[attr-defined]
    assert table.expire(last + 8 * 86400) == 1
    assert value(reg, "libvirt_audit_domain_running", db) is None
    assert value(reg, "monitord_guests_evicted_total") == 1
    body, _ = render(reg, None)
    assert UUID2 not in body.decode()


def _samples(text: str, openmetrics: bool) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    parse = om_families if openmetrics else text_string_to_metric_families
    out = set()
    for family in parse(text):
        if family.name.startswith(("process_", "python_")):
            continue  # their values move between two scrapes
        for s in family.samples:
            out.add((s.name, tuple(sorted(s.labels.items())), s.value))
    return out


def test_text_and_openmetrics_say_the_same() -> None:
    """Both exposition formats carry the same samples; OpenMetrics parses strictly, once EOF."""
    table, stages = populated()
    reg = make_registry(table, "1.2.3", stages)
    body, ctype = render(reg, None)
    assert ctype.startswith("text/plain")
    om_body, om_type = render(reg, "application/openmetrics-text; version=1.0.0")
    assert om_type.startswith("application/openmetrics-text")
    om_text = om_body.decode()
    assert om_text.endswith("# EOF\n") and om_text.count("# EOF") == 1
    assert _samples(body.decode(), False) == _samples(om_text, True)
    # A second render follows changes.
    log = Log(t=2_000_000_000.0)
    table.apply(log.disk("attach", new="/d/z"))
    again = render(reg, None)[0].decode()
    disks = {"uuid": UUID, "domain": "web01", "virt": "kvm", "kind": "disk"}
    assert ("libvirt_audit_domain_devices", tuple(sorted(disks.items())), 3.0) in _samples(
        again, False
    )


def test_node_label_only_for_other_hosts_guests() -> None:
    """A central collector's guests carry node=; this host's own guests have no node label."""
    log = Log()
    table = GuestTable(StateConfig(), clock=lambda: 0.0)
    feed(table, log.start())
    from monitord.audit.parser import parse_line

    line = log.line(
        "VIRT_CONTROL", f'virt=kvm op=start reason=booted vm="web01" uuid={UUID} vm-pid=9'
    )
    remote = parse_line("node=hvB " + line)
    assert isinstance(remote, AuditRecord)
    table.apply(remote)
    reg = make_registry(table, "1")
    g = {"uuid": UUID, "domain": "web01", "virt": "kvm"}
    assert value(reg, "libvirt_audit_domain_running", g) == 1.0
    assert value(reg, "libvirt_audit_domain_running", {**g, "node": "hvB"}) == 1.0


def test_promtool_check_metrics_passes() -> None:
    """`promtool check metrics` accepts our text output with no lint warning.

    (promtool reads only the text format; the OpenMetrics output is checked by
    prometheus-client's strict OpenMetrics parser in the test above.)
    """
    promtool = need_tool("promtool")
    table, stages = populated()
    reg = make_registry(table, "1.2.3", stages)
    body, _ = render(reg, None)
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert not proc.stdout.strip() and not proc.stderr.strip(), proc.stderr.decode()


def test_registries_are_independent() -> None:
    """Two registries never share state and the global registry gets nothing of ours."""
    from prometheus_client import REGISTRY

    table, stages = populated()
    make_registry(table, "a", stages)
    make_registry(table, "b", stages)
    assert REGISTRY.get_sample_value("monitord_guests_tracked") is None


def test_render_follows_renames_states_labels_and_evictions() -> None:
    """Cached per-guest label prefixes follow changes; odd label values are escaped."""
    log = Log()
    table = GuestTable(StateConfig(max_guests=3), clock=lambda: 0.0)
    reg = make_registry(table, "1.2.3")
    om = "application/openmetrics-text; version=1.0.0"

    def same() -> str:
        text = render(reg, None)[0].decode()
        assert _samples(text, False) == _samples(render(reg, om)[0].decode(), True)
        return text

    odd = 'a\\b "c'
    feed(table, log.start(vm=odd, disks=("/d/1", "/d/2")))
    table.apply(log.resource("tpm", "start", 'device="/dev/tpm0"', vm=odd))
    table.apply(log.resource("evdev", "start", "path=/dev/input/event3", vm=odd))
    table.apply(log.label("selinux", 'x:"y"\\z', vm=odd))
    table.apply(log.rec("VIRT_MACHINE_ID", f'virt=kvm vm="{odd}" uuid={UUID} vm-ctx=? img-ctx=?'))
    feed(table, log.start(uuid=UUID2, vm="db01"))
    text = same()
    assert 'kind="tpm"' in text and 'kind="input"' in text and 'kind="rng"' not in text
    name = table.document()["guests"][0]["name"]
    assert '"' in name and "\\" in name  # what the parser made of the quoted name
    assert 'domain="' + name.replace("\\", "\\\\").replace('"', '\\"') + '"' in text
    first = text
    table.apply(log.disk("attach", new="/d/3", vm="renamed"))  # a new name and one more disk
    text = same()
    assert 'domain="renamed"' in text and 'domain="a \\"b\\"' not in text and text != first
    table.apply(log.control("stop", "shutdown", uuid=UUID2, vm="db01"))
    assert (
        'libvirt_audit_domain_running{uuid="' + UUID2 + '",domain="db01",virt="kvm"} 0.0' in same()
    )
    u3, u4 = "00000000-0000-0000-0000-000000000003", "00000000-0000-0000-0000-000000000004"
    feed(table, log.start(uuid=u3, vm="c3"))
    feed(table, log.start(uuid=u4, vm="c4"))  # evicts the stopped db01
    text = same()
    assert UUID2 not in text and u4 in text
