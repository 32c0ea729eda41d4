"""A real Prometheus scrapes our listener and sees guests start and stop."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from monitord.config import HttpConfig, StateConfig
from monitord.serve.exporter import make_registry
from monitord.serve.server import WebServer
from monitord.state.table import GuestTable
from tests.conftest import need_tool
from tests.daemonproc import free_port
from tests.state.test_state import Log, feed
from tests.waiting import wait_until


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    # Polling an external process: no event to wait on.
    return wait_until(check, timeout, 0.2, what=what, ignore=(OSError,))


@pytest.fixture
def web() -> Iterator[tuple[WebServer, GuestTable]]:
    table = GuestTable(StateConfig())
    server = WebServer(
        HttpConfig(listen="127.0.0.1:0"),
        make_registry(table, "e2e"),
        table,
        lambda: (True, ""),
    )
    server.start()
    yield server, table
    server.stop()


@pytest.fixture
def prometheus(tmp_path: Path, web: tuple[WebServer, GuestTable]) -> Iterator[str]:
    binary = need_tool("prometheus")
    host, port = web[0].address
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: monitord\n    static_configs: [{{targets: ['{host}:{port}']}}]\n"
    )
    listen = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address={listen}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://{listen}"
    try:
        wait_for(lambda: urllib.request.urlopen(url + "/-/ready", timeout=2).status == 200,
                 20, "prometheus ready")  # fmt: skip
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        doc = json.loads(resp.read())
    assert doc["status"] == "success"
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def value_is(url: str, promql: str, expected: float) -> Callable[[], bool]:
    def check() -> bool:
        result = query(url, promql)
        return len(result) == 1 and float(result[0]["value"][1]) == expected

    return check


@pytest.mark.slow
def test_prometheus_sees_guest_start_and_stop(
    web: tuple[WebServer, GuestTable], prometheus: str
) -> None:
    """Prometheus scrapes a running guest (running=1, one start), then its stop (running=0)."""
    _, table = web
    log = Log(t=time.time() - 60)
    feed(table, log.start(vm="e2e-web"))
    running = 'libvirt_audit_domain_running{domain="e2e-web",virt="kvm"}'
    wait_for(value_is(prometheus, running, 1), 30, "running=1 in prometheus")
    starts = 'sum(libvirt_audit_operations_total{op="start",reason="booted",result="success"})'
    wait_for(value_is(prometheus, starts, 1), 10, "one start counted")
    table.apply(log.control("stop", "destroyed", vm="e2e-web"))
    wait_for(value_is(prometheus, running, 0), 15, "running=0 in prometheus")
    stops = 'sum(libvirt_audit_operations_total{op="stop",reason="destroyed"})'
    wait_for(value_is(prometheus, stops, 1), 10, "one stop counted")
    up = query(prometheus, 'up{job="monitord"}')
    assert float(up[0]["value"][1]) == 1.0
