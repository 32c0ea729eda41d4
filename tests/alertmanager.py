"""A real Alertmanager for tests (Debian's prometheus-alertmanager), stopped by PID."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.daemonproc import free_port, wait_until

AM_CONFIG = """\
route:
  receiver: sink
  group_wait: 0s
  group_interval: 1s
receivers:
  - name: sink
"""


class Alertmanager:
    """A real Alertmanager on 127.0.0.1 with temp storage and no cluster; stopped by PID."""

    def __init__(self, root: Path, binary: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "am.yml").write_text(AM_CONFIG)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "am.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={root / 'am.yml'}",
                f"--storage.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self.ready, timeout=20)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"alertmanager exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def alerts(self) -> list[dict[str, Any]]:
        """Return what `GET /api/v2/alerts` lists (active, unresolved alerts)."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as r:
            doc: list[dict[str, Any]] = json.load(r)
            return doc

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
