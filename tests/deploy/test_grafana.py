"""contrib/grafana/monitord.json: valid dashboard JSON, contract metric names, valid PromQL."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, need_tool

DASHBOARD = ROOT / "contrib" / "grafana" / "monitord.json"

# CONTRACT.md's metric tables (embedded: CI has no copy of the contract next to the repo).
CONTRACT_METRICS = {
    "libvirt_audit_records_total": "counter",
    "libvirt_audit_operations_total": "counter",
    "libvirt_audit_resource_changes_total": "counter",
    "libvirt_audit_security_labels_total": "counter",
    "libvirt_audit_domains": "gauge",
    "libvirt_audit_domain_info": "gauge",
    "libvirt_audit_domain_running": "gauge",
    "libvirt_audit_domain_vcpus": "gauge",
    "libvirt_audit_domain_memory_bytes": "gauge",
    "libvirt_audit_domain_devices": "gauge",
    "libvirt_audit_domain_failures_total": "counter",
    "libvirt_audit_domain_last_event_timestamp_seconds": "gauge",
    "libvirt_audit_domain_start_timestamp_seconds": "gauge",
    "libvirt_audit_domain_security_info": "gauge",
    "monitord_build_info": "gauge",
    "monitord_lines_read_total": "counter",
    "monitord_bytes_read_total": "counter",
    "monitord_parse_errors_total": "counter",
    "monitord_records_ignored_total": "counter",
    "monitord_log_reopens_total": "counter",
    "monitord_last_record_timestamp_seconds": "gauge",
    "monitord_record_lag_seconds": "histogram",
    "monitord_guests_tracked": "gauge",
    "monitord_guests_evicted_total": "counter",
    "monitord_checkpoint_timestamp_seconds": "gauge",
    "monitord_checkpoint_errors_total": "counter",
    "monitord_alerts_total": "counter",
    "monitord_alert_queue_length": "gauge",
}
# prometheus-client's process collector, and Prometheus' own scrape health.
OTHER_METRICS = {"process_cpu_seconds_total", "process_resident_memory_bytes", "up"}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "topk", "by", "without", "on", "ignoring", "and", "or",
    "unless", "rate", "increase", "irate", "time", "histogram_quantile", "le",
    "offset", "bool", "group_left", "group_right", "e6", "e3",
}  # fmt: skip
# Grafana's variables, replaced by plausible values before promtool parses an expression.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__range": "6h",
    "$__interval": "1m",
    "$instance": ".*",
    "$domain": ".*",
}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def expressions() -> list[str]:
    exprs = [t["expr"] for p in all_panels(dashboard()["panels"]) for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(SELECTOR, label) is Grafana's, not PromQL: keep the selector.
            m = re.fullmatch(r"label_values\((.*), *\w+\)", variable["definition"])
            assert m, variable["definition"]
            exprs.append(m.group(1))
    return exprs


def metric_names(expr: str) -> set[str]:
    """Identifiers in an expression that are not labels, functions, keywords or strings."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", r"\1", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "[]", without_groupings)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_ranges))
    return {n for n in names if n not in PROMQL_WORDS and not n.startswith("__")} - {"instance"}


def test_dashboard_is_valid_json_with_unique_ids() -> None:
    """The dashboard parses; panels have unique ids, a grid position and the chosen data source."""
    data = dashboard()
    assert data["uid"] == "monitord-libvirt" and data["title"]
    ids = [p["id"] for p in all_panels(data["panels"])]
    assert len(ids) == len(set(ids))
    for panel in all_panels(data["panels"]):
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]


def test_dashboard_has_the_four_views() -> None:
    """Rows for the fleet, failures, a per-guest row repeated over $domain, and monitord health."""
    rows = [p for p in dashboard()["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == [
        "Fleet overview",
        "Failures",
        "Guest $domain",
        "monitord health",
    ]
    assert rows[2]["repeat"] == "domain"
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert set(variables) == {"datasource", "instance", "domain"}
    assert variables["domain"]["multi"] and variables["domain"]["includeAll"]


def test_every_metric_is_in_the_contract() -> None:
    """Every metric name an expression uses is a CONTRACT.md metric (histogram series included)."""
    used: set[str] = set()
    for expr in expressions():
        for name in metric_names(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base != name:
                assert CONTRACT_METRICS.get(base) == "histogram", f"{name} in {expr}"
                name = base
            assert name in CONTRACT_METRICS or name in OTHER_METRICS, f"{name!r} in {expr}"
            used.add(name)
    # Nearly the whole contract is on the dashboard; a rename would show up here.
    assert len(used & CONTRACT_METRICS.keys()) >= len(CONTRACT_METRICS) - 1


def test_metric_name_extraction_can_fail() -> None:
    """The name check sees metric names and only them (so a typo is caught)."""
    expr = 'sum by (op) (rate(libvirt_audit_operatons_total{op="start", x=~"$a"}[$__range])) > 0'
    assert metric_names(expr) == {"libvirt_audit_operatons_total"}


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses every expression (Grafana variables substituted) as a recording rule."""
    promtool = need_tool("promtool")
    rules = []
    for i, expr in enumerate(expressions()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@pytest.mark.parametrize("variable", ["$instance", "$domain"])
def test_variables_are_used(variable: str) -> None:
    """The host and guest selectors filter the panels' queries."""
    assert sum(variable in expr for expr in expressions()) >= 5
