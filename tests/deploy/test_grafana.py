"""contrib/grafana/monitord.json: valid dashboard JSON, contract metric names, and every
query answered by a real Prometheus scraping three hosts' worth of version 2 metrics."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, need_tool
from tests.daemonproc import free_port
from tests.waiting import wait_until

DASHBOARD = ROOT / "contrib" / "grafana" / "monitord.json"

# The metric tables of docs/INTERFACE.md (version 2), embedded so a rename shows up here.
CONTRACT_METRICS = {
    "libvirt_audit_records_total": "counter",
    "libvirt_audit_operations_total": "counter",
    "libvirt_audit_resource_changes_total": "counter",
    "libvirt_audit_security_labels_total": "counter",
    "libvirt_audit_domains": "gauge",
    "libvirt_audit_domain_info": "gauge",
    "libvirt_audit_domain_state": "gauge",
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
    "offset", "bool", "group_left", "group_right", "e6", "e3", "label_replace",
}  # fmt: skip
# Grafana's variables, replaced by plausible values before an expression is run; the
# selectors' variables as Grafana writes "All" (allValue ".*").
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1m",
    "$__interval": "1s",
    "$job": ".*",
    "$cluster": ".*",
    "$instance": ".*",
    "$host": ".*",
    "$domain": ".*",
}
SELECTOR_VARIABLES = ("$job", "$cluster", "$instance", "$host", "$domain")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def panel_expressions() -> dict[str, str]:
    """Return every panel query by "panel title/refId"."""
    return {
        f"{p['title']}/{t['refId']}": t["expr"]
        for p in all_panels(dashboard()["panels"])
        for t in p.get("targets", [])
    }


def variable_queries() -> dict[str, str]:
    """Return the PromQL inside each query variable (label_values and query_result are
    Grafana's functions, not PromQL) by variable name."""
    out = {}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            m = re.fullmatch(r"(?:label_values\((.*), *\w+\)|query_result\((.*)\))",
                             variable["definition"])  # fmt: skip
            assert m, variable["definition"]
            out[variable["name"]] = m.group(1) or m.group(2)
    return out


def expressions() -> list[str]:
    return [*panel_expressions().values(), *variable_queries().values()]


def substitute(expr: str, **values: str) -> str:
    for variable, value in {**GRAFANA_VARIABLES, **{f"${k}": v for k, v in values.items()}}.items():
        expr = expr.replace(variable, value)
    return expr


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


def test_panels_do_not_overlap() -> None:
    """No two panels share a grid cell."""
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard()["panels"]):
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_has_the_four_views() -> None:
    """Rows for the fleet, failures, a per-guest row repeated over $domain, and monitord health;
    variables for the job, the cluster, the monitord instance, the host and the guest."""
    rows = [p for p in dashboard()["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == [
        "Fleet overview",
        "Failures",
        "Guest $domain",
        "monitord health",
    ]
    assert rows[2]["repeat"] == "domain"
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "cluster", "instance", "host", "domain"]
    for name in SELECTOR_VARIABLES:
        v = variables[name.lstrip("$")]
        assert v["multi"] and v["includeAll"] and v["allValue"] == ".*", name
    titles = {p["title"] for p in all_panels(dashboard()["panels"])}
    assert {"Guests running by host", "Migrations by host", "Failures by host"} <= titles


def test_every_metric_is_in_the_contract() -> None:
    """Every metric name an expression uses is a documented metric (histogram series included)."""
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


def test_version_2_metrics_only() -> None:
    """The dashboard reads a guest's state from libvirt_audit_domain_state: domain_info has no
    state label since version 2."""
    exprs = expressions()
    assert any("libvirt_audit_domain_state{" in e for e in exprs)
    assert not any(re.search(r"libvirt_audit_domain_info\{[^}]*state", e) for e in exprs)


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses every expression (Grafana variables substituted) as a recording rule."""
    promtool = need_tool("promtool")
    rules = []
    for i, expr in enumerate(expressions()):
        rules.append({"record": f"dashboard:expr_{i}", "expr": substitute(expr)})
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@pytest.mark.parametrize("variable", SELECTOR_VARIABLES)
def test_variables_are_used(variable: str) -> None:
    """The job, cluster, monitord, host and guest selectors filter the panels' queries."""
    assert sum(variable in expr for expr in panel_expressions().values()) >= 5


# A real Prometheus scraping three monitord targets: hvA and hvB (one monitord per host) and
# a central collector following hvC and hvD (guest series carry node=...). The exposition is
# version 2 of the metrics; counters grow with every scrape, so rates and increases are > 0.

SHARED = "00000000-0000-0000-0000-0000000000ff"  # running on hvA and on hvC: split brain
TARGETS: dict[str, list[tuple[str | None, str, str, str]]] = {
    # instance: [(node, uuid, domain, state)]
    "hvA:9781": [
        (None, "00000000-0000-0000-0000-00000000000a", "web01", "running"),
        (None, "00000000-0000-0000-0000-00000000000b", "db01", "stopped"),
        (None, SHARED, "shared01", "running"),
    ],
    "hvB:9781": [(None, "00000000-0000-0000-0000-00000000000c", "web02", "running")],
    "collector:9781": [
        ("hvC", "00000000-0000-0000-0000-00000000000d", "web03", "running"),
        ("hvC", SHARED, "shared01", "running"),
        ("hvD", "00000000-0000-0000-0000-00000000000e", "db02", "stopped"),
    ],
}


def exposition(guests: list[tuple[str | None, str, str, str]], n: int) -> str:
    """Return the /metrics text of one monitord at its `n`th scrape."""
    now = time.time()
    lines = [
        "# HELP monitord_build_info monitord's version.",
        "# TYPE monitord_build_info gauge",
        'monitord_build_info{version="2.0.0"} 1',
    ]

    def family(name: str, kind: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {name.replace('_', ' ')}.")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {value}")

    kvm = {"virt": "kvm"}
    family("libvirt_audit_records_total", "counter", [
        ({"record": "VIRT_CONTROL", **kvm, "result": "success"}, 10 * n),
        ({"record": "VIRT_RESOURCE", **kvm, "result": "failed"}, n),
    ])  # fmt: skip
    family("libvirt_audit_operations_total", "counter", [
        ({**kvm, "op": "start", "reason": "booted", "result": "success"}, 5 * n),
        ({**kvm, "op": "start", "reason": "booted", "result": "failed"}, n),
        ({**kvm, "op": "start", "reason": "migrated", "result": "success"}, n),
        ({**kvm, "op": "stop", "reason": "migrated", "result": "success"}, n),
    ])  # fmt: skip
    family("libvirt_audit_resource_changes_total", "counter", [
        ({**kvm, "resrc": "disk", "reason": "attach", "result": "failed"}, n),
        ({**kvm, "resrc": "disk", "reason": "start", "result": "success"}, 3 * n),
    ])  # fmt: skip
    family("libvirt_audit_security_labels_total", "counter",
           [({**kvm, "model": "dac", "result": "success"}, 2 * n)])  # fmt: skip
    states = ("running", "stopped", "unknown")
    family("libvirt_audit_domains", "gauge",
           [({**kvm, "state": s}, sum(g[3] == s for g in guests)) for s in states])  # fmt: skip
    per_guest: dict[str, list[tuple[dict[str, str], float]]] = {}
    for node, uuid, domain, state in guests:
        g = {"uuid": uuid, "domain": domain, **kvm, **({"node": node} if node else {})}
        for name, value in (
            ("libvirt_audit_domain_info", 1.0),
            ("libvirt_audit_domain_running", float(state == "running")),
            ("libvirt_audit_domain_vcpus", 2.0),
            ("libvirt_audit_domain_memory_bytes", 2147483648.0),
            ("libvirt_audit_domain_failures_total", float(n)),
            ("libvirt_audit_domain_last_event_timestamp_seconds", now - 30),
            ("libvirt_audit_domain_start_timestamp_seconds", now - 3600),
        ):
            per_guest.setdefault(name, []).append((g, value))
        for s in states:
            per_guest.setdefault("libvirt_audit_domain_state", []).append(
                ({**g, "state": s}, float(state == s))
            )
        for kind in ("disk", "nic"):
            per_guest.setdefault("libvirt_audit_domain_devices", []).append(
                ({**g, "kind": kind}, 1)
            )
        ctx = {"model": "dac", "vm_ctx": "+64055:+64055", "img_ctx": "+64055:+64055"}
        per_guest.setdefault("libvirt_audit_domain_security_info", []).append(({**g, **ctx}, 1))
    for name, samples in per_guest.items():
        family(name, "counter" if name.endswith("_total") else "gauge", samples)
    family("monitord_lines_read_total", "counter", [({"source": "file"}, 100 * n)])
    family("monitord_bytes_read_total", "counter", [({"source": "file"}, 25600 * n)])
    family("monitord_parse_errors_total", "counter", [({"reason": "bad_header"}, n)])
    family("monitord_records_ignored_total", "counter", [({"reason": "not_libvirt"}, 50 * n)])
    family("monitord_log_reopens_total", "counter", [({"reason": "rotated"}, n)])
    family("monitord_last_record_timestamp_seconds", "gauge", [({}, now - 1)])
    lines.append("# HELP monitord_record_lag_seconds Processing time minus record time.")
    lines.append("# TYPE monitord_record_lag_seconds histogram")
    for le, part in (("0.001", 0.5), ("0.01", 0.9), ("+Inf", 1.0)):
        lines.append(f'monitord_record_lag_seconds_bucket{{le="{le}"}} {int(100 * n * part)}')
    lines += [
        f"monitord_record_lag_seconds_sum {0.2 * n}",
        f"monitord_record_lag_seconds_count {100 * n}",
    ]
    family("monitord_guests_tracked", "gauge", [({}, len(guests))])
    family("monitord_guests_evicted_total", "counter", [({}, n)])
    family("monitord_checkpoint_timestamp_seconds", "gauge", [({}, now - 2)])
    family("monitord_checkpoint_errors_total", "counter", [({}, n)])
    family("monitord_alerts_total", "counter", [({"sink": "webhook", "outcome": "sent"}, n)])
    family("monitord_alert_queue_length", "gauge", [({"sink": "webhook"}, 0)])
    family("process_cpu_seconds_total", "counter", [({}, 0.01 * n)])
    family("process_resident_memory_bytes", "gauge", [({}, 5e7)])
    return "\n".join(lines).replace("{}", "") + "\n"


class FakeMonitord:
    """Serves exposition() on loopback, one more scrape's worth of counts each time."""

    def __init__(self, guests: list[tuple[str | None, str, str, str]]) -> None:
        self.scrapes = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.scrapes += 1
                body = exposition(guests, fake.scrapes).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_exposition_is_valid(tmp_path: Path) -> None:
    """The fake monitords' text is valid exposition (promtool check metrics)."""
    promtool = need_tool("promtool")
    for guests in TARGETS.values():
        done = subprocess.run([promtool, "check", "metrics"], input=exposition(guests, 3),
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the three fake monitords every second (cluster "prod")."""
    binary = need_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    fakes = {instance: FakeMonitord(guests) for instance, guests in TARGETS.items()}
    statics = ",".join(
        f"{{targets: ['{fake.address}'], labels: {{instance: '{instance}', cluster: prod}}}}"
        for instance, fake in fakes.items()
    )
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: monitord\n    static_configs: [{statics}]\n"
    )
    listen = f"127.0.0.1:{free_port()}"
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address={listen}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://{listen}"
    try:
        # Every target scraped at least 4 times: enough samples for rate() over a minute.
        ready = "min(count_over_time(up[1m])) >= 4 and count(up == 1) == 3"
        wait_until(lambda: query(url, ready), 40, 0.2, what="three targets scraped",
                   ignore=(OSError,))  # fmt: skip
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for fake in fakes.values():
            fake.close()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=10) as resp:
        doc = json.loads(resp.read())
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("panel", sorted(panel_expressions()))
def test_every_panel_query_has_data(prometheus: str, panel: str) -> None:
    """Each panel's query, run by a real Prometheus over three hosts' data (All selected),
    succeeds and returns data."""
    result = query(prometheus, substitute(panel_expressions()[panel]))
    assert result, f"{panel}: no data"


@pytest.mark.slow
def test_variables_list_the_fleet(prometheus: str) -> None:
    """The variables offer the job, the cluster, the three monitords and the four hosts
    (per-host instances without their port, and the collector's nodes)."""
    queries = variable_queries()

    def values(name: str, label: str) -> set[str]:
        return {r["metric"].get(label, "") for r in query(prometheus, substitute(queries[name]))}

    assert values("job", "job") == {"monitord"}
    assert values("cluster", "cluster") == {"prod"}
    assert values("instance", "instance") == set(TARGETS)
    assert values("host", "host") == {"hvA", "hvB", "hvC", "hvD"}
    assert values("domain", "domain") == {g[2] for gs in TARGETS.values() for g in gs}


@pytest.mark.slow
def test_fleet_panels_count_by_host(prometheus: str) -> None:
    """Guests running by host counts a collector's guests under their node and a per-host
    monitord's under its instance; the split-brain table finds the guest on two hosts."""
    panels = panel_expressions()
    by_host = query(prometheus, substitute(panels["Guests running by host/A"]))
    assert {r["metric"]["host"]: float(r["value"][1]) for r in by_host} == {
        "hvA": 2.0, "hvB": 1.0, "hvC": 2.0, "hvD": 0.0,
    }  # fmt: skip
    (split,) = query(prometheus, substitute(panels["Guests running on more than one host/A"]))
    assert split["metric"]["uuid"] == SHARED and float(split["value"][1]) == 2.0
    migrations = query(prometheus, substitute(panels["Migrations by host/A"]))
    assert {(r["metric"]["host"], r["metric"]["op"]) for r in migrations} >= {
        ("hvA", "start"), ("hvA", "stop"), ("hvB", "stop"),
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("hvA", {("hvA:9781", None, "web01", "running"), ("hvA:9781", None, "db01", "stopped"),
                 ("hvA:9781", None, "shared01", "running")}),
        ("hvC", {("collector:9781", "hvC", "web03", "running"),
                 ("collector:9781", "hvC", "shared01", "running")}),
        ("(hvB|hvD)", {("hvB:9781", None, "web02", "running"),
                       ("collector:9781", "hvD", "db02", "stopped")}),
    ],
)  # fmt: skip
def test_host_variable_selects_guests_of_either_deployment(
    prometheus: str, host: str, expected: set[tuple[str, str | None, str, str]]
) -> None:
    """Choosing hosts shows their guests, whether a host has its own monitord (matched by
    instance) or is a node of a central collector (matched by node), with their state."""
    rows = query(prometheus, substitute(panel_expressions()["Guests/A"], host=host))
    got = {
        (
            r["metric"]["instance"],
            r["metric"].get("node"),
            r["metric"]["domain"],
            r["metric"]["state"],
        )
        for r in rows
    }
    assert got == expected
