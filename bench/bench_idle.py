"""Idle cost of a real `monitord run` (issue 12): CPU and wake-ups over 60 s of a quiet log.

    .venv/bin/python bench/bench_idle.py [--seconds 60] [--root DIR] [--notify]

Each scenario starts `python -m monitord run` (the code of --root, default this
checkout) as its own process on a log nobody writes to, waits until /healthz
answers and start-up is over (--settle), then reads /proc twice, --seconds apart:

- CPU: utime+stime of /proc/PID/stat (every thread, also those that ended; the
  kernel scales the tick samples to the precise runtime, then reports whole clock
  ticks of 10 ms), and cutime+cstime (reaped children: checkpoint writers).
  Per thread: run time from /proc/PID/task/TID/schedstat (nanoseconds).
- Wake-ups: voluntary_ctxt_switches of /proc/PID/task/*/status, summed over
  every thread: each is one sleep the thread woke from.

Scenarios:
1. quiet: an empty log and an empty state directory.
2. firing: N failed starts (N alerts firing), then a restart on a new, empty
   log with the same state directory: the alerts come back from the checkpoint
   and fire for `alerts.resolve_after` (1 h) although no record arrives. This
   is the state the daemon is in for an hour after failures, across restarts.

Alerts go to no sink (journal off, no Alertmanager, no webhook), so nothing but
the daemon's own timers can wake it. With --notify the daemon gets a
NOTIFY_SOCKET and WATCHDOG_USEC=30 s, as under the systemd unit (STATUS every
5 s, a watchdog ping every 15 s). Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Thread:
    vol: int  # voluntary context switches: wake-ups from a sleep
    nonvol: int
    run_ns: int
    wchan: str


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic
    ticks: int  # utime + stime
    child_ticks: int  # cutime + cstime
    threads: dict[int, Thread]


def sample(pid: int) -> Sample:
    """Read the process's CPU ticks and, per thread, switches, run time and wait channel."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14, 15
    child_ticks = int(fields[13]) + int(fields[14])  # cutime, cstime: fields 16, 17
    threads: dict[int, Thread] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            run_ns = int((task / "schedstat").read_text().split()[0])
            wchan = (task / "wchan").read_text().strip() or "-"
        except OSError:
            continue  # the thread ended meanwhile
        counts = dict(
            line.split(":", 1) for line in status.splitlines() if line.endswith(tuple("0123456789"))
        )
        threads[int(task.name)] = Thread(
            int(counts.get("voluntary_ctxt_switches", "0")),
            int(counts.get("nonvoluntary_ctxt_switches", "0")),
            run_ns,
            wchan,
        )
    return Sample(time.monotonic(), ticks, child_ticks, threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def failed_starts(n: int) -> bytes:
    """N failed op=start records of N guests, stamped now: N alerts fire when read live."""
    t = time.time()
    return b"".join(
        (
            f"type=VIRT_CONTROL msg=audit({t:.3f}:{1000 + i}): pid=1 uid=0 auid=4294967295 "
            f'ses=4294967295 msg=\'virt=kvm op=start reason=booted vm="idle-{i}" '
            f'uuid={uuid.UUID(int=i + 1)} vm-pid=0 exe="/usr/sbin/libvirtd" hostname=? '
            "addr=? terminal=? res=failed'\n"
        ).encode()
        for i in range(n)
    )


class Daemon:
    """`python -m monitord run` of the checkout at `root`, with its own config and port."""

    def __init__(self, root: Path, work: Path, log: Path, notify: bool) -> None:
        self.root, self.work = root, work
        self.port = free_port()
        self.config = work / f"monitord-{self.port}.toml"
        self.config.write_text(
            f'[source]\npath = "{log}"\n[state]\ndir = "{work / "state"}"\n'
            f'[http]\nlisten = "127.0.0.1:{self.port}"\n[alerts]\njournal = false\n'
        )
        self.config.chmod(0o600)
        self.env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET",)}
        self.env["PYTHONPATH"] = str(root)  # this checkout's code, whatever is installed
        self.notify_sock: socket.socket | None = None
        self.notified = 0
        if notify:
            path = work / f"notify-{self.port}.sock"
            self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify_sock.bind(str(path))
            self.env.update(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="30000000")
            # Read as systemd does: a full socket would block the daemon in sendmsg().
            threading.Thread(target=self._drain, args=(self.notify_sock,), daemon=True).start()
        self.proc: subprocess.Popen[bytes] | None = None

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                sock.recv(4096)
            except OSError:
                return  # closed
            self.notified += 1

    def start(self) -> int:
        cmd = [sys.executable, "-m", "monitord", "run", "--config", str(self.config)]
        with open(self.work / f"monitord-{self.port}.log", "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=out, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"monitord exited with {self.proc.returncode}: see {out.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2).close()
                return self.proc.pid
            except urllib.error.HTTPError:
                return self.proc.pid  # answering (503 until the log is read)
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("monitord did not answer within 60 s")

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith((name + " ", name + "{")):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.notify_sock is not None:
            self.notify_sock.close()


@dataclass(frozen=True)
class Result:
    name: str
    seconds: float
    ticks: int
    child_ticks: int
    wakeups: int
    run_ns: int  # threads alive at the end (schedstat): precise, but misses ended threads
    rows: list[str]

    @property
    def core_percent(self) -> float:
        return self.ticks / CLK_TCK / self.seconds * 100


def measure(name: str, pid: int, settle: float, seconds: float) -> Result:
    time.sleep(settle)
    before = sample(pid)
    time.sleep(seconds)
    after = sample(pid)
    elapsed = after.at - before.at
    rows: list[str] = []
    wakeups = run_ns = 0
    for tid, a in sorted(after.threads.items()):
        b = before.threads.get(tid)
        if b is None:
            rows.append(
                f"| {tid} (new) | {a.wchan} | {a.vol} | | {a.nonvol} | {a.run_ns / 1e6:.2f} |"
            )
            wakeups += a.vol
            run_ns += a.run_ns
            continue
        vol = a.vol - b.vol
        wakeups += vol
        run_ns += a.run_ns - b.run_ns
        every = f"{elapsed / vol:.1f} s" if vol else "never"
        label = "main" if tid == pid else str(tid)
        rows.append(
            f"| {label} | {a.wchan} | {vol} | {every} | {a.nonvol - b.nonvol} "
            f"| {(a.run_ns - b.run_ns) / 1e6:.2f} |"
        )
    for tid in sorted(set(before.threads) - set(after.threads)):
        rows.append(f"| {tid} (ended) | | | | | |")
    return Result(
        name,
        elapsed,
        after.ticks - before.ticks,
        after.child_ticks - before.child_ticks,
        wakeups,
        run_ns,
        rows,
    )


def scenario_quiet(root: Path, tmp: Path, args: argparse.Namespace) -> Result:
    work = tmp / "quiet"
    work.mkdir()
    log = work / "audit.log"
    log.write_bytes(b"")
    daemon = Daemon(root, work, log, args.notify)
    try:
        pid = daemon.start()
        return measure("quiet: empty log, empty state", pid, args.settle, args.seconds)
    finally:
        daemon.stop()


def scenario_firing(root: Path, tmp: Path, args: argparse.Namespace) -> Result:
    work = tmp / "firing"
    work.mkdir()
    first = work / "before.log"
    first.write_bytes(b"")
    daemon = Daemon(root, work, first, args.notify)
    try:
        daemon.start()
        with first.open("ab") as f:
            f.write(failed_starts(args.firing))
        deadline = time.monotonic() + 120
        while daemon.metric("libvirt_audit_records_total") < args.firing:
            if time.monotonic() > deadline:
                raise RuntimeError("the failed starts were not read within 120 s")
            time.sleep(0.2)
    finally:
        daemon.stop()  # checkpoints the firing alerts
    log = work / "audit.log"
    log.write_bytes(b"")
    daemon = Daemon(root, work, log, args.notify)
    try:
        pid = daemon.start()
        name = f"firing: {args.firing:,} alerts restored, empty log"
        return measure(name, pid, args.settle, args.seconds)
    finally:
        daemon.stop()


def report(results: list[Result], args: argparse.Namespace, root: Path) -> list[str]:
    cores = os.cpu_count()
    tick_ms = 1000 / CLK_TCK
    head = [
        "# Idle cost of `monitord run` (issue 12)",
        "",
        f"Machine: {cores} cores, {platform.processor() or platform.machine()}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}. "
        f"Command: `.venv/bin/python bench/bench_idle.py --seconds {args.seconds:g}"
        f"{' --notify' if args.notify else ''}` (code: `{root}`).",
        "",
        f"CPU = utime+stime of /proc/PID/stat over the window ({tick_ms:.0f} ms ticks, all "
        "threads including ended ones); wake-ups = voluntary_ctxt_switches summed over "
        f"/proc/PID/task/*; measured after {args.settle:g} s of settling. One tick over "
        f"{args.seconds:g} s is {tick_ms / 10 / args.seconds:.3f}% of a core.",
        "",
        "| scenario | seconds | CPU ticks | % of a core | live threads' CPU (schedstat) "
        "| children's ticks | wake-ups | per minute |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        head.append(
            f"| {r.name} | {r.seconds:.0f} | {r.ticks} | {r.core_percent:.3f}% | "
            f"{r.run_ns / 1e6:.1f} ms = {r.run_ns / 1e7 / r.seconds:.4f}% | "
            f"{r.child_ticks} | {r.wakeups} | {r.wakeups / r.seconds * 60:.1f} |"
        )
    head += ["", "Target: < 0.1% of a core.", ""]
    for r in results:
        head += [
            f"## {r.name}",
            "",
            "| thread | sleeping in | wake-ups | one every | involuntary | CPU ms (schedstat) |",
            "|---|---|---|---|---|---|",
            *r.rows,
            "",
        ]
    load = os.getloadavg()[0]
    head.append(f"(1-min load average at the end: {load:.2f})")
    return head


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="measuring window (default 60)")
    ap.add_argument("--settle", type=float, default=6.0, help="wait after start-up (default 6)")
    ap.add_argument("--firing", type=int, default=10_000, help="alerts firing in scenario 2")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose code runs")
    ap.add_argument("--notify", action="store_true", help="NOTIFY_SOCKET and a 30 s watchdog")
    ap.add_argument(
        "--only", choices=("quiet", "firing"), action="append", help="run only these scenarios"
    )
    ap.add_argument("--out", type=Path, help="also write the report here")
    args = ap.parse_args()
    root = args.root.resolve()
    scenarios = {"quiet": scenario_quiet, "firing": scenario_firing}
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        for name in args.only or scenarios:
            results.append(scenarios[name](root, Path(tmp), args))
    text = "\n".join(report(results, args, root)) + "\n"
    sys.stdout.write(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
