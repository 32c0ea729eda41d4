"""The shipped Prometheus rules and scrape config, checked with the real promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from monitord.alerts import JOURNAL_MESSAGE_ID
from tests.conftest import ROOT, need_tool

DEPLOY = ROOT / "deploy" / "prometheus"
RULES = DEPLOY / "monitord.rules.yml"
RULE_TESTS = DEPLOY / "monitord.rules.test.yml"
SCRAPE = DEPLOY / "prometheus.yml"

# docs/INTERFACE.md "Metrics", plus what Prometheus and prometheus-client add.
CONTRACT_METRICS = {
    "libvirt_audit_records_total",
    "libvirt_audit_operations_total",
    "libvirt_audit_resource_changes_total",
    "libvirt_audit_security_labels_total",
    "libvirt_audit_domains",
    "libvirt_audit_domain_info",
    "libvirt_audit_domain_state",
    "libvirt_audit_domain_running",
    "libvirt_audit_domain_vcpus",
    "libvirt_audit_domain_memory_bytes",
    "libvirt_audit_domain_devices",
    "libvirt_audit_domain_failures_total",
    "libvirt_audit_domain_last_event_timestamp_seconds",
    "libvirt_audit_domain_start_timestamp_seconds",
    "libvirt_audit_domain_security_info",
    "monitord_build_info",
    "monitord_lines_read_total",
    "monitord_bytes_read_total",
    "monitord_parse_errors_total",
    "monitord_records_ignored_total",
    "monitord_log_reopens_total",
    "monitord_last_record_timestamp_seconds",
    "monitord_record_lag_seconds",
    "monitord_guests_tracked",
    "monitord_guests_evicted_total",
    "monitord_checkpoint_timestamp_seconds",
    "monitord_checkpoint_errors_total",
    "monitord_alerts_total",
    "monitord_alert_queue_length",
    "process_start_time_seconds",
    "up",
}


def promtool(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need_tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def rule_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\S+)$", RULES.read_text(), re.M)


def recording_names() -> list[str]:
    return re.findall(r"^\s*- record: (\S+)$", RULES.read_text(), re.M)


def rule_test_cases() -> dict[str, list[str]]:
    """Return each test case's text by the rules it names (`# rule: NAME` lines above it)."""
    cases: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=  # rule: )", RULE_TESTS.read_text())[1:]:
        for name in re.findall(r"^  # rule: (\S+)$", block, re.M):
            cases.setdefault(name, []).append(block)
    return cases


def test_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts the shipped rules."""
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    total = len(rule_names()) + len(recording_names())
    assert f"SUCCESS: {total} rules found" in done.stdout


def test_rule_unit_tests_pass() -> None:
    """`promtool test rules` passes every firing and non-firing case."""
    done = promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests notice a broken rule (here: a flapping threshold that is too high)."""
    text = RULES.read_text()
    assert "changes(libvirt_audit_domain_start_timestamp_seconds[30m]) >= 3" in text
    (tmp_path / RULES.name).write_text(text.replace(">= 3", ">= 4"))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    done = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode == 1
    assert "LibvirtGuestFlapping" in done.stdout + done.stderr


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    """Each alerting rule has at least one test where it fires and one where it does not."""
    cases = re.findall(r"alertname: (\S+)\n\s+exp_alerts:( \[\])?", RULE_TESTS.read_text())
    firing = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    names = rule_names()
    assert len(names) >= 15
    assert sorted(set(names) - firing) == [], "rules without a firing test"
    assert sorted(set(names) - quiet) == [], "rules without a non-firing test"
    assert sorted({n for n, _ in cases} - set(names)) == [], "tests of rules that do not exist"


def test_every_recording_rule_is_checked_by_value() -> None:
    """Each recording rule has a promql_expr_test with the samples it must produce."""
    text = RULE_TESTS.read_text()
    names = recording_names()
    assert len(names) >= 3
    for name in names:
        assert re.search(rf"^\s+- expr: {re.escape(name)}$", text, re.M), name
        assert f"labels: '{name}{{" in text, name


def test_fleet_alerts_are_tested_for_both_deployments() -> None:
    """The split-brain and lost-migration rules have cases with per-host daemons (hosts told
    apart by instance) and with a central collector (hosts told apart by node)."""
    cases = rule_test_cases()
    for name in ("LibvirtGuestRunningOnTwoHosts", "LibvirtMigrationLost"):
        blocks = cases[name]
        assert any('instance="hvB:9781"' in b for b in blocks), f"{name}: no per-host case"
        collector = [b for b in blocks if 'instance="collector:9781", node=' in b]
        assert collector and all('instance="hv' not in b for b in collector), name


def test_rules_use_only_contract_metrics() -> None:
    """Rules only query metric names the contract promises (a typo would never fire), or
    recorded names defined in the same file; domain_info has no state label (version 2)."""
    exprs = RULES.read_text()
    recorded = set(recording_names())
    for name in recorded:  # level:metric:operation names are not contract metrics
        exprs = exprs.replace(name, "")
    used = set(re.findall(r"\b((?:libvirt_audit|monitord)_[a-z_]+|process_start_time_seconds)\b",
                          exprs))  # fmt: skip
    assert used, "no metric found"
    assert sorted(used - CONTRACT_METRICS) == []
    assert "libvirt_audit_domain_state" in used
    assert not re.search(r"libvirt_audit_domain_info\{[^}]*state", exprs)
    assert JOURNAL_MESSAGE_ID in exprs  # the annotation points at the journal entries


def test_scrape_config_example_is_valid() -> None:
    """`promtool check config` accepts the example prometheus.yml (and its rule file)."""
    done = promtool("check", "config", SCRAPE.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "job_name: monitord" in SCRAPE.read_text()
