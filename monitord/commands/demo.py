"""`monitord demo`: the product working on a machine without libvirt.

A simulated libvirt host writes its audit records, with the noise of a real
audit.log, into a temporary `audit.log` (rotated along the way). A real
`monitord run` follows it, serves its HTTP API and sends alerts to a webhook
receiver in this process; the demo draws the guest table and the alerts.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, TextIO

from monitord.commands.guesttable import render
from monitord.commands.simulate import AuditClock, Fleet, noise_lines
from monitord.commands.status import get_document
from monitord.config import parse_listen
from monitord.errors import RuntimeFailure, UserError

SEED: Final = 2026
GUESTS: Final = 7
# Rotate the demo log after this many lines, twice, as auditd's max_log_file would.
ROTATE_EVERY: Final = 600
MAX_ROTATIONS: Final = 2
NOISE_PER_OPERATION: Final = 6
REFRESH: Final = 1.0


class AlertReceiver:
    """A webhook endpoint on loopback that queues the alerts monitord posts to it."""

    def __init__(self) -> None:
        self.alerts: queue.Queue[dict[str, Any]] = queue.Queue()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    payload = json.loads(self.rfile.read(length))
                    for alert in payload.get("alerts", []):
                        receiver.alerts.put(alert)
                except (ValueError, AttributeError):
                    pass
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StreamWriter:
    """Write the simulated host's records into audit.log over time, rotating it twice."""

    def __init__(self, log: Path, speed: float, seed: int = SEED) -> None:
        self.log = log
        self.speed = speed
        self.rng = random.Random(seed)
        self.clock = AuditClock(time.time())
        self.fleet = Fleet(seed, guests=GUESTS, virt="mixed", clock=self.clock)
        self.stop = threading.Event()
        self.lines = 0
        self.rotations = 0
        self.thread = threading.Thread(target=self._run, name="demo-writer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _rotate(self) -> None:
        """As auditd: the old file becomes audit.log.1 (0400), a new audit.log is created."""
        older = self.log.with_name(self.log.name + ".1")
        if older.exists():
            older.rename(self.log.with_name(self.log.name + ".2"))
        self.log.rename(older)
        older.chmod(0o400)
        self.log.touch(mode=0o600)
        self.rotations += 1

    def _write(self, lines: list[bytes]) -> None:
        with open(self.log, "ab") as f:
            f.write(b"".join(lines))
        self.lines += len(lines)
        if self.rotations < MAX_ROTATIONS and self.lines >= ROTATE_EVERY * (self.rotations + 1):
            self._rotate()

    def _run(self) -> None:
        events = self.fleet.events()
        last = self.clock.time
        while not self.stop.is_set():
            event = next(events)
            # Pace by the simulated host's own clock, sped up by --speed.
            delay = min(max(0.0, event.time - last) / self.speed, 3.0)
            last = event.time
            if delay and self.stop.wait(delay):
                return
            batch = [event.line]
            if self.rng.random() < 0.3:
                for _ in range(self.rng.randint(1, NOISE_PER_OPERATION)):
                    batch.extend(noise_lines(self.rng, self.clock))
            self._write(batch)


def _guests(base: str) -> dict[str, Any] | None:
    """The daemon's guest document, None while it does not answer (the table waits)."""
    try:
        return get_document(base, "/api/v1/guests", "guests", timeout=2)
    except RuntimeFailure:
        return None


def _alert_line(alert: dict[str, Any]) -> str:
    labels = alert.get("labels", {})
    what = labels.get("op") or labels.get("resrc") or labels.get("model") or "?"
    state = "RESOLVED" if alert.get("status") == "resolved" else "FIRING  "
    summary = alert.get("annotations", {}).get("summary", "")
    return f"{state} {labels.get('severity', ''):8} {labels.get('domain', '?')}: {what}  {summary}"


class Screen:
    """Redraw the table in place on a terminal; print plain lines otherwise."""

    def __init__(self, out: TextIO, table: bool) -> None:
        self.out = out
        self.live = table and out.isatty()
        self.recent: list[str] = []

    def alert(self, line: str) -> None:
        self.recent = [*self.recent, line][-8:]
        if not self.live:
            print(line, file=self.out, flush=True)

    def draw(self, header: str, doc: dict[str, Any] | None) -> None:
        if not self.live:
            return
        guests = doc["guests"] if doc else []
        body = render(guests) if doc else "(waiting for the daemon)\n"
        alerts = "\n".join(self.recent) if self.recent else "(none yet)"
        self.out.write(
            "\x1b[H\x1b[2J" + header + "\n" + body + "\nAlerts (webhook sink):\n" + alerts + "\n"
        )
        self.out.flush()


def _start_daemon(workdir: Path, listen: str, hook_url: str) -> subprocess.Popen[bytes]:
    config = workdir / "monitord.toml"
    config.write_text(
        "[source]\n"
        f'path = "{workdir / "audit.log"}"\n'
        "[state]\n"
        f'dir = "{workdir / "state"}"\n'
        'checkpoint_interval = "2s"\n'
        "[http]\n"
        f'listen = "{listen}"\n'
        "[alerts]\n"
        "journal = false\n"
        'resolve_after = "2m"\n'
        "[[alerts.webhook]]\n"
        f'url = "{hook_url}"\n'
    )
    config.chmod(0o600)
    log = open(workdir / "monitord.log", "wb")  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "monitord", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    finally:
        log.close()


def _wait_ready(proc: subprocess.Popen[bytes], base: str, workdir: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (workdir / "monitord.log").read_text(errors="replace").strip().splitlines()
            reason = tail[-1] if tail else f"exit code {proc.returncode}"
            raise RuntimeFailure(f"the demo daemon did not start: {reason}")
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # answering (503 until the first line is read)
        except OSError:
            time.sleep(0.1)
    raise RuntimeFailure("the demo daemon did not answer within 30 s")


def main(args: argparse.Namespace) -> int:
    """`monitord demo`."""
    try:
        parse_listen(args.listen)
    except ValueError as err:
        raise UserError(f"--listen: {err}") from None
    if args.speed <= 0:
        raise UserError("--speed must be greater than 0")
    if args.duration is not None and args.duration <= 0:
        raise UserError("--duration must be greater than 0")
    out = sys.stdout
    workdir = Path(tempfile.mkdtemp(prefix="monitord-demo-"))
    (workdir / "audit.log").touch(mode=0o600)
    receiver = AlertReceiver()
    receiver.start()
    proc = _start_daemon(workdir, args.listen, receiver.url)
    writer = StreamWriter(workdir / "audit.log", args.speed)
    base = "http://" + args.listen
    screen = Screen(out, table=not args.no_table)
    stopping = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stopping.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        _wait_ready(proc, base, workdir)
        print(
            f"monitord demo: a simulated libvirt host writes {workdir / 'audit.log'}\n"
            f"  metrics   {base}/metrics\n"
            f"  guests    {base}/api/v1/guests\n"
            f"  health    {base}/healthz\n"
            f"  daemon log {workdir / 'monitord.log'}\n"
            "Ctrl-C stops the demo.",
            file=out,
            flush=True,
        )
        writer.start()
        started = time.monotonic()
        header = f"monitord demo -- {base}  (Ctrl-C to stop)"
        while not stopping.is_set():
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
            while True:
                try:
                    screen.alert(_alert_line(receiver.alerts.get_nowait()))
                except queue.Empty:
                    break
            screen.draw(header, _guests(base))
            stopping.wait(REFRESH)
            if proc.poll() is not None:
                raise RuntimeFailure(f"the demo daemon exited with code {proc.returncode}")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        writer.stop.set()
        doc = _guests(base)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        receiver.stop()
    print(
        f"\n{writer.lines} audit lines written ({writer.rotations} rotations); final state:",
        file=out,
    )
    print(render(doc["guests"]) if doc else "(no state: the daemon did not answer)", file=out)
    if os.environ.get("MONITORD_DEMO_KEEP"):
        print(f"files kept in {workdir}", file=out)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
