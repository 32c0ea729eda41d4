"""Real Alertmanagers for tests (Debian's prometheus-alertmanager), stopped by PID.

Alone, or clustered over loopback gossip (an HA pair), optionally behind TLS with
client certificates and basic auth (`--web.config.file`, exporter-toolkit), and
optionally notifying a webhook receiver the test runs.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.daemonproc import free_port
from tests.waiting import wait_until

AM_CONFIG = """\
route:
  receiver: sink
  group_wait: 0s
  group_interval: 1s
receivers:
  - name: sink
"""

# Notifies `{hook}` once per group (alertname, host); repeats only after an hour, so every
# notification the receiver gets is a change, and a second one for the same change is a
# duplicate the cluster failed to suppress.
AM_HOOK_CONFIG = """\
route:
  receiver: hook
  group_by: [alertname, host]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: "{hook}"
        send_resolved: true
"""


class Alertmanager:
    """A real Alertmanager on 127.0.0.1 with temp storage; stopped by PID.

    `cluster_port`/`peers` cluster it with others over loopback gossip; `web_config` is
    an exporter-toolkit web config (TLS, basic auth) and `context` how the test reaches it.
    """

    def __init__(
        self,
        root: Path,
        binary: str,
        *,
        config: str = AM_CONFIG,
        cluster_port: int | None = None,
        peers: tuple[int, ...] = (),
        peer_timeout: str = "15s",
        web_config: str | None = None,
        context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "am.yml").write_text(config)
        self.port = free_port()
        self.context = context
        self.headers = headers or {}
        self.url = f"{'https' if web_config else 'http'}://127.0.0.1:{self.port}"
        args = [
            binary,
            f"--config.file={root / 'am.yml'}",
            f"--storage.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        if cluster_port is None:
            args.append("--cluster.listen-address=")
        else:
            args += [
                f"--cluster.listen-address=127.0.0.1:{cluster_port}",
                f"--cluster.advertise-address=127.0.0.1:{cluster_port}",
                f"--cluster.peer-timeout={peer_timeout}",
                "--cluster.gossip-interval=50ms",
                "--cluster.pushpull-interval=1s",
                "--cluster.settle-timeout=10s",
                *(f"--cluster.peer=127.0.0.1:{p}" for p in peers),
            ]
        if web_config is not None:
            (root / "web.yml").write_text(web_config)
            args.append(f"--web.config.file={root / 'web.yml'}")
        self.log = open(root / "am.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_until(self.ready, timeout=20, what=f"alertmanager {self.url} ready")
        except BaseException:
            self.stop()
            raise

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers=self.headers)
        with urllib.request.urlopen(request, timeout=5, context=self.context) as r:
            return json.load(r) if r.headers.get_content_type() == "application/json" else r.read()

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"alertmanager exited with {self.proc.returncode}")
        try:
            self.get("/-/ready")
            return True
        except OSError:
            return False

    def alerts(self) -> list[dict[str, Any]]:
        """Return what `GET /api/v2/alerts` lists (active, unresolved alerts)."""
        doc: list[dict[str, Any]] = self.get("/api/v2/alerts")
        return doc

    def peers(self) -> int:
        """Return how many members its cluster has (itself included)."""
        return len(self.get("/api/v2/status")["cluster"].get("peers") or [])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass(frozen=True)
class Certificates:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate (PEM files)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(openssl: str, root: Path) -> Certificates:
    """Make a CA and the server and client certificates it signs, with openssl."""
    root.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=root)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        (root / f"{name}.ext").write_text(
            (ext + "\n" if ext else "") + f"extendedKeyUsage={name}Auth\n"
        )
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
            "-out", f"{name}.crt")  # fmt: skip
    return Certificates(
        ca=root / "ca.crt",
        server_cert=root / "server.crt",
        server_key=root / "server.key",
        client_cert=root / "client.crt",
        client_key=root / "client.key",
    )
