"""Scrape storm benchmark (issue 14, defect 4): ingestion and memory while clients scrape.

    .venv/bin/python bench/bench_scrape_storm.py [--quick] [--out FILE]
        [--pythonpath DIR --baseline]   (the same run against another checkout)

A real `monitord run` pinned to core 0 (taskset) follows an audit.log that first
creates 10,000 guests (12 records each), so /metrics is ~9 MB. Clients run in
separate processes pinned to core 1, with HTTP/1.1 keep-alive and, like
Prometheus, `Accept-Encoding: gzip` and an OpenMetrics Accept header (the storm
also without gzip). Ingestion time: from the start of appending a fixed mixed log
(420,000 lines, ~86 MB, 5% libvirt) to the moment a sentinel record written
after it is visible through /api/v1/guests/UUID (polled every 10 ms). Phases:

1. unloaded: ingestion, 3 times;
2. 50 clients each scraping once a second (50 scrapes/s): ingestion 3 times;
3. storm: 200 clients looping as fast as they can: ingestion 2 times, /healthz
   latency sampled every 100 ms throughout;
then RSS (VmRSS of the daemon) 10 s after each load ended, against RSS before
any load (after one warm-up scrape: the per-guest label cache is steady state).
Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# `--nice N`: run the daemon and the clients at that niceness (e.g. -10 on a shared machine,
# so other work on the cores disturbs the comparison less); set in main(). With the
# kernel's autogroups, niceness counts only within a session: each process then gets a
# session of its own whose autogroup gets that niceness (see boost()).
NICE: list[str] = []


def boost(proc: subprocess.Popen[Any]) -> None:
    """Give a process started in its own session the --nice niceness for its autogroup."""
    if NICE:
        try:
            Path(f"/proc/{proc.pid}/autogroup").write_text(NICE[-1])
        except OSError:
            pass  # no autogroups here: plain niceness applies


OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
GUESTS = 10_000
FIXED_LINES = 420_000


def start_records(i: int, t: float) -> list[str]:
    from bench.bench_state import start_records as make

    return make(i, t)


def write_base_log(path: Path, guests: int) -> None:
    with path.open("w") as out:
        for i in range(guests):
            out.write("\n".join(start_records(i, 1_700_000_000.0 + i)) + "\n")


def write_fixed_log(path: Path, lines: int) -> None:
    from monitord.commands.simulate import mixed_log, write_lines

    with path.open("wb") as out:
        write_lines(out, mixed_log(7, lines))


def sentinel(n: int) -> tuple[str, bytes]:
    uuid = f"5e471e10-0000-4000-8000-{n:012x}"
    line = (
        f"type=VIRT_CONTROL msg=audit(1900000000.000:{n}): pid=1 uid=0 auid=4294967295 "
        f'ses=4294967295 msg=\'virt=kvm op=start reason=booted vm="sentinel-{n}" uuid={uuid} '
        f'vm-pid=1 exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? res=success\'\n'
    )
    return uuid, line.encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Daemon:
    """`monitord run` pinned to core 0, with a config fit for the storm."""

    def __init__(self, tmp: Path, log: Path, pythonpath: str | None, baseline: bool) -> None:
        self.port = free_port()
        state = tmp / "state"
        http_extra = (
            ""
            if baseline
            else 'max_connections = 256\nmax_connections_per_client = 256\ncache_max_age = "1s"\n'
        )
        config = tmp / "monitord.toml"
        config.write_text(
            f'[source]\npath = "{log}"\nstart = "beginning"\n'
            f'[state]\ndir = "{state}"\nmax_guests = 20000\n'
            f'[http]\nlisten = "127.0.0.1:{self.port}"\n{http_extra}'
            '[alerts]\njournal = false\n[logging]\nlevel = "warning"\ntarget = "stderr"\n'
        )
        config.chmod(0o600)
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.stderr = (tmp / "daemon.log").open("wb")
        self.proc = subprocess.Popen(
            [*NICE, "taskset", "-c", "0", sys.executable, "-m", "monitord", "run",
             "--config", str(config)],
            env=env, stdout=self.stderr, stderr=subprocess.STDOUT, cwd=tmp,
            start_new_session=bool(NICE),
        )  # fmt: skip
        boost(self.proc)
        self.tmp = tmp

    def conn(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def has_guest(self, conn: http.client.HTTPConnection, uuid: str) -> bool:
        conn.request("GET", f"/api/v1/guests/{uuid}")
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200

    def wait_for(self, uuid: str, timeout: float) -> float:
        """Poll every 10 ms until the guest exists; return when it was seen (monotonic)."""
        deadline = time.monotonic() + timeout
        conn = self.conn()
        try:
            while time.monotonic() < deadline:
                try:
                    if self.has_guest(conn, uuid):
                        return time.monotonic()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = self.conn()
                time.sleep(0.01)
        finally:
            conn.close()
        raise RuntimeError(f"guest {uuid} not seen within {timeout} s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def thread_cpu(pid: int) -> float:
    """CPU seconds of the daemon's main thread: the ingestion loop."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Ingestion:
    wall: float  # seconds until the sentinel was seen
    loop_cpu: float  # CPU seconds of the ingestion thread meanwhile
    cpu: float  # CPU seconds of the whole daemon meanwhile


def ingest(daemon: Daemon, log: Path, fixed: bytes, n: int) -> Ingestion:
    """Append the fixed log and a sentinel; time until the sentinel is applied."""
    uuid, line = sentinel(n)
    pid = daemon.proc.pid
    loop0, cpu0 = thread_cpu(pid), cpu_seconds(pid)
    t0 = time.monotonic()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(fixed)
        for i in range(0, len(view), 1 << 20):
            os.write(fd, view[i : i + (1 << 20)])
        os.write(fd, line)
    finally:
        os.close(fd)
    wall = daemon.wait_for(uuid, timeout=600) - t0
    return Ingestion(wall, thread_cpu(pid) - loop0, cpu_seconds(pid) - cpu0)


def fmt(runs: list[Ingestion]) -> str:
    return ", ".join(f"{r.wall:.2f} ({r.loop_cpu:.2f} / {r.cpu:.2f})" for r in runs)


class Clients:
    """Scraping client processes pinned to core 1 (this script with --client)."""

    def __init__(self, port: int, count: int, interval: float, gzip: bool) -> None:
        per_process = 50
        self.procs = []
        for start in range(0, count, per_process):
            n = min(per_process, count - start)
            cmd = [*NICE, "taskset", "-c", "1", sys.executable, __file__, "--client", str(port),
                   "--threads", str(n), "--interval", str(interval)]  # fmt: skip
            if gzip:
                cmd.append("--gzip")
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
                start_new_session=bool(NICE),
            )  # fmt: skip
            boost(proc)
            self.procs.append(proc)

    def stop(self) -> dict[str, Any]:
        results = []
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.close()  # the signal to stop
        for proc in self.procs:
            assert proc.stdout is not None
            results.append(json.loads(proc.stdout.read()))
            proc.wait(timeout=120)
        latencies = sorted(x for r in results for x in r["latencies"])
        return {
            "scrapes": sum(r["scrapes"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "bytes": sum(r["bytes"] for r in results),
            "seconds": max(r["seconds"] for r in results),
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "p99": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
            "status": {k: sum(r["status"].get(k, 0) for r in results)
                       for k in {k for r in results for k in r["status"]}},
        }  # fmt: skip


def client_main(port: int, threads: int, interval: float, gzip: bool) -> None:
    """One client process: `threads` scrapers until stdin closes; prints JSON stats."""
    stop = threading.Event()
    lock = threading.Lock()
    stats: dict[str, Any] = {"scrapes": 0, "errors": 0, "bytes": 0, "latencies": [], "status": {}}
    headers = {"Accept": OPENMETRICS}
    if gzip:
        headers["Accept-Encoding"] = "gzip"

    def scraper(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        next_at = time.monotonic() + (interval * i / threads if interval else 0.0)
        while not stop.is_set():
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
                next_at += interval
            t0 = time.monotonic()
            try:
                conn.request("GET", "/metrics", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                status = str(resp.status)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                with lock:
                    stats["errors"] += 1
                continue
            with lock:
                stats["scrapes"] += 1
                stats["bytes"] += len(body)
                stats["latencies"].append(time.monotonic() - t0)
                stats["status"][status] = stats["status"].get(status, 0) + 1
        conn.close()

    t0 = time.monotonic()
    workers = [threading.Thread(target=scraper, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    sys.stdin.read()  # until the parent closes our stdin
    stop.set()
    for w in workers:
        w.join(timeout=60)
    stats["seconds"] = time.monotonic() - t0
    json.dump(stats, sys.stdout)


class HealthProbe:
    """GET /healthz every 100 ms on a fresh connection; keeps the latencies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            t0 = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.failures += 1
            except (OSError, http.client.HTTPException):
                self.failures += 1
            finally:
                conn.close()
            self.latencies.append(time.monotonic() - t0)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        lat = sorted(self.latencies)
        return {
            "n": len(lat),
            "p50": statistics.median(lat),
            "p99": lat[int(len(lat) * 0.99)],
            "max": lat[-1],
            "failures": self.failures,
        }


def settle_rss(pid: int, seconds: float) -> float:
    time.sleep(seconds)
    return rss_mib(pid)


def warm_up_scrape(daemon: Daemon) -> None:
    conn = daemon.conn()
    conn.request("GET", "/metrics", headers={"Accept": OPENMETRICS, "Accept-Encoding": "gzip"})
    conn.getresponse().read()
    conn.close()


def run(args: argparse.Namespace) -> Iterator[str]:
    fixed_lines = FIXED_LINES // 4 if args.quick else FIXED_LINES
    guests = GUESTS // 4 if args.quick else GUESTS
    with tempfile.TemporaryDirectory(prefix="storm-") as tmp_name:
        tmp = Path(tmp_name)
        log, fixed_path = tmp / "audit.log", tmp / "fixed.log"
        t0 = time.monotonic()
        write_base_log(log, guests)
        uuid0, line0 = sentinel(0)
        with log.open("ab") as out:
            out.write(line0)
        write_fixed_log(fixed_path, fixed_lines)
        fixed = fixed_path.read_bytes()
        generated = time.monotonic() - t0
        daemon = Daemon(tmp, log, args.pythonpath, args.baseline)
        n = 0
        try:
            daemon.wait_for(uuid0, timeout=300)
            warm_up_scrape(daemon)
            time.sleep(2)
            pid = daemon.proc.pid
            rss0 = settle_rss(pid, 3)
            conn = daemon.conn()
            conn.request("GET", "/metrics", headers={"Accept": OPENMETRICS})
            size = len(conn.getresponse().read())
            conn.close()
            load = os.getloadavg()[0]
            yield "# Scrape storm (`bench/bench_scrape_storm.py`, issue 14)"
            yield ""
            yield (
                f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                f"Python {platform.python_version()}; 1-min load {load:.2f} at the start. "
                f"Code: {args.pythonpath or 'this checkout'}. Niceness of daemon and clients: "
                f"{args.nice or 0}."
            )
            yield (
                f"Daemon pinned to core 0, clients to core 1. {guests:,} guests; /metrics "
                f"{size / 1e6:.1f} MB (OpenMetrics). Fixed log: {fixed_lines:,} lines, "
                f"{len(fixed) / 1e6:.0f} MB (generated with the table in {generated:.0f} s). "
                f"RSS before any load (after one warm-up scrape): {rss0:.0f} MiB."
            )
            yield ""
            yield (
                "| phase | ingestion: wall s (CPU s of the ingestion thread / of the daemon), "
                "each run | scrapes | scrapes/s | errors |"
            )
            yield "|---|---|---|---|---|"
            unloaded = []
            for _ in range(3):
                n += 1
                unloaded.append(ingest(daemon, log, fixed, n))
            yield f"| unloaded | {fmt(unloaded)} | | | |"
            base = statistics.median(r.wall for r in unloaded)
            base_cpu = statistics.median(r.loop_cpu for r in unloaded)
            phases = [
                ("50 clients, 1 scrape/s each, gzip", 50, 1.0, True, 3),
                ("200 clients looping, gzip", 200, 0.0, True, 2),
                ("200 clients looping, no gzip", 200, 0.0, False, 2),
            ]
            if args.quick:
                phases = phases[:2]
            report = []
            for name, count, interval, gzip, runs in phases:
                clients = Clients(daemon.port, count, interval, gzip)
                probe = HealthProbe(daemon.port)
                time.sleep(3)  # clients connected and scraping
                peak = rss_mib(pid)
                cpu0, loop0, wall0 = cpu_seconds(pid), thread_cpu(pid), time.monotonic()
                times = []
                for _ in range(runs):
                    n += 1
                    times.append(ingest(daemon, log, fixed, n))
                    peak = max(peak, rss_mib(pid))
                time.sleep(2)
                peak = max(peak, rss_mib(pid))
                # CPU per second spent besides ingestion: renders, gzip, the HTTP loop.
                cpu = (cpu_seconds(pid) - cpu0 - (thread_cpu(pid) - loop0)) / (
                    time.monotonic() - wall0
                )
                health = probe.stop()
                stats = clients.stop()
                rss_after = settle_rss(pid, 10)
                rate = stats["scrapes"] / stats["seconds"]
                yield (
                    f"| {name} | {fmt(times)} | {stats['scrapes']:,} "
                    f"| {rate:.1f} | {stats['errors']} |"
                )
                report.append((name, times, stats, health, peak, rss_after, cpu))
            yield ""
            yield (
                "| phase | ingestion vs unloaded, median wall (ingestion-thread CPU) | scrape "
                "p50 / p99 s | /healthz p50 / p99 / max s (failures) | RSS peak MiB | RSS 10 s "
                "after MiB (x before) | daemon CPU s/s besides ingestion |"
            )
            yield "|---|---|---|---|---|---|---|"
            for name, times, stats, health, peak, rss_after, cpu in report:
                ratio = statistics.median(r.wall for r in times) / base
                cpu_ratio = statistics.median(r.loop_cpu for r in times) / base_cpu
                yield (
                    f"| {name} | {ratio:.2f}x ({cpu_ratio:.2f}x) | {stats['p50']:.3f} / "
                    f"{stats['p99']:.3f} "
                    f"| {health['p50']:.3f} / {health['p99']:.3f} / {health['max']:.3f} "
                    f"({health['failures']}) | {peak:.0f} | {rss_after:.0f} "
                    f"({rss_after / rss0:.2f}x) | {cpu:.2f} |"
                )
            yield ""
            yield "Answers by status: " + "; ".join(
                f"{name}: {dict(sorted(stats['status'].items()))}" for name, _, stats, *_ in report
            )
        finally:
            daemon.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the sizes, two phases")
    ap.add_argument("--out", type=Path, help="also write the report here")
    ap.add_argument("--pythonpath", help="run the daemon from this source tree instead")
    ap.add_argument(
        "--baseline", action="store_true", help="the daemon knows no [http] storm settings"
    )
    ap.add_argument("--nice", type=int, help="niceness of the daemon and clients (e.g. -10)")
    ap.add_argument("--client", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--interval", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--gzip", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.nice is not None:
        NICE.extend(["nice", "-n", str(args.nice)])
    if args.client:
        client_main(args.client, args.threads, args.interval, args.gzip)
        return 0
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("needs taskset and two cores", file=sys.stderr)
        return 2
    lines = []
    for line in run(args):
        print(line, flush=True)
        lines.append(line)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
