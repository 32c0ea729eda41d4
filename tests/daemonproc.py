"""Run `monitord run` as a real process in tests, and read its HTTP API."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests import waiting
from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def monitord_cmd() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "monitord"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "monitord"]


class MonitordProcess:
    """`monitord run` with its own state dir and port; stopped by pid."""

    def __init__(
        self,
        state_dir: Path,
        args: Sequence[str] = (),
        port: int | None = None,
        env: dict[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
    ) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args)
        self.env = env
        self.stdin = stdin
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"monitord-{self.port}.log"

    def start(self, wait: bool = True) -> MonitordProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            *monitord_cmd(),
            "run",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--state-dir",
            str(self.state_dir),
            "--log-level",
            "debug",
            *self.args,
        ]
        env = {**os.environ, **(self.env or {})}
        env.pop("NOTIFY_SOCKET", None) if "NOTIFY_SOCKET" not in (self.env or {}) else None
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                cmd, stdin=self.stdin, stdout=logf, stderr=logf, env=env, cwd=ROOT
            )
        if wait:
            self.wait_healthy_or_listening()
        return self

    def wait_healthy_or_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"monitord exited with {self.proc.returncode}: {self.log()}")
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # answering, maybe 503 while the source is not there yet
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"monitord did not listen within {timeout} s: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            body: bytes = resp.read()
            return body

    def guests(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.get("/api/v1/guests"))
        return doc

    def metrics(self) -> dict[str, float]:
        """Return every sample of /metrics as `name{labels}` -> value."""
        out: dict[str, float] = {}
        for line in self.get("/metrics").decode().split("\n"):
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
        return out

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for key, value in self.metrics().items():
            base, _, rest = key.partition("{")
            if base != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += value
        return total

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"monitord did not stop on SIGTERM: {self.log()}") from None
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> MonitordProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Wait for a daemon's answer: errors while it starts or restarts count as "not yet"."""
    return waiting.wait_until(
        predicate, timeout, interval, ignore=(OSError, ValueError, KeyError, AssertionError)
    )


def saved_telemetry(state: Path) -> dict[str, Any]:
    """The counters of the last commit, read as `monitord history` reads: read-only, no lock."""
    conn = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM state WHERE name = 'counters:telemetry'").fetchone()
    finally:
        conn.close()
    return dict(json.loads(row[0])) if row else {}
