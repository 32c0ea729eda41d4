"""Hostile guest names through a real Prometheus scrape.

Names made of bytes that are not UTF-8, quotes, backslashes, newlines and control
characters: a real Prometheus (which negotiates OpenMetrics) scrapes them without
an error, stores every guest's series, and finds them by their shown names.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitord.audit.parser import StreamParser
from monitord.config import HttpConfig, StateConfig
from monitord.serve.exporter import make_registry
from monitord.serve.server import WebServer
from monitord.state.table import GuestTable
from tests.adversarial.probes import start_line
from tests.conftest import need_tool
from tests.daemonproc import free_port
from tests.waiting import wait_until

HOSTILE = [
    b"\xff\xfe",
    b"vm\xc3",
    b'quote"d',
    b"back\\slash",
    b"new\nline",
    b"tab\tand\x01ctl",
    b"\xed\xa0\x80surrogate-bytes",
    b"\\xff",  # spells what byte ff is shown as: the uuid keeps the two series apart
    "utf8-é-名".encode(),
    b"\x00nul",
]


@pytest.fixture
def hostile_web() -> Iterator[WebServer]:
    table = GuestTable(StateConfig())
    parser = StreamParser()
    lines = b"".join(start_line(i, name) for i, name in enumerate(HOSTILE))
    for record in parser.feed(lines):
        table.apply(record)
    assert table.guests_tracked == len(HOSTILE)
    web = WebServer(
        HttpConfig(listen="127.0.0.1:0"),
        make_registry(table, "adversarial"),
        table,
        lambda: (True, ""),
    )
    web.start()
    yield web
    web.stop()


def api(url: str, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{query}", timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_real_prometheus_scrapes_hostile_names(tmp_path: Path, hostile_web: WebServer) -> None:
    """Prometheus scrapes the listener with hostile names: target up with no scrape error,
    one domain_info series per guest, names findable as shown (\\xff for byte ff)."""
    binary = need_tool("prometheus")
    host, port = hostile_web.address
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: monitord\n    static_configs: [{{targets: ['{host}:{port}']}}]\n"
    )
    listen = f"127.0.0.1:{free_port()}"
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address={listen}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://{listen}"
    try:

        def scraped() -> list[dict[str, Any]] | None:
            targets = api(url, "/api/v1/targets")["data"]["activeTargets"]
            done = [t for t in targets if t["lastScrape"] != "0001-01-01T00:00:00Z"]
            return done or None

        targets = wait_until(scraped, timeout=60, interval=0.2, what="a first scrape",
                             ignore=(OSError,))  # fmt: skip
        assert targets[0]["health"] == "up", targets[0]["lastError"]
        assert targets[0]["lastError"] == ""

        def count() -> int:
            result = api(url, "/api/v1/query", query="count(libvirt_audit_domain_info)")
            data = result["data"]["result"]
            return int(float(data[0]["value"][1])) if data else 0

        wait_until(lambda: count() == len(HOSTILE), timeout=30, interval=0.2,
                   what="every guest's series", ignore=(OSError,))  # fmt: skip
        shown = {
            series["metric"]["domain"]
            for series in api(url, "/api/v1/query", query="libvirt_audit_domain_info")["data"][
                "result"
            ]
        }
        assert "\\xff\\xfe" in shown and "vm\\xc3" in shown and "\\xff" in shown
        assert 'quote"d' in shown and "new\nline" in shown and "utf8-é-名" in shown
        one = api(
            url, "/api/v1/query", query='libvirt_audit_domain_running{domain="\\\\xff\\\\xfe"}'
        )
        assert len(one["data"]["result"]) == 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
