"""Follow benchmarks (issue 3): latency, sustained throughput, idle cost, commit cost.

    .venv/bin/python bench/bench_follow.py [--quick] [--collector] [--out FILE]

1. End-to-end latency, append -> record applied to the guest table, at 100 and
   5,000 records/s, and at 5,000/s with 10,000 guests tracked (so the state store
   holds them all). The real `Daemon` runs in a thread of this process
   (same FileSource, StreamParser, Pipeline, GuestTable, state store commits and HTTP
   listener as `monitord run`); the only change is a GuestTable subclass that
   notes when each record was applied. A writer in a separate process appends
   simulator records one write each at the given rate and notes when it wrote
   each serial. Both use CLOCK_MONOTONIC, which is system-wide.
2. Sustained follow throughput: a writer process appends a pre-generated mixed
   log (5% VIRT) in 1 MiB writes, once as fast as it can and once paced at
   500,000 lines/s, while the daemon follows.
3. Idle cost of a real `monitord run` process (HTTP listener on) over 60 s
   without writes: CPU from /proc/PID/stat and per-thread schedstat, and
   voluntary context switches of every thread.
4. State store commits with 10,000 guests: the first, the periodic one, the load.
5. Central collector (`--collector` runs only this): the aggregated log of 100 nodes x 100
   guests (`node=` on every line, noise as in 2.) followed by the daemon with all 10,000
   guests tracked: throughput as in 2., latency at 5,000 records/s as in 1., and a check
   that each node's guests equal what replaying that node's own log alone gives.

Prints a Markdown report (bench/results/follow.md is a copy of one run).
"""

from __future__ import annotations

import argparse
import gc
import heapq
import itertools
import json
import logging
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Final

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitord.audit.parser import parse_line  # noqa: E402
from monitord.audit.record import AuditRecord  # noqa: E402
from monitord.commands.simulate import (  # noqa: E402
    AuditClock,
    Fleet,
    mixed_log,
    noise_lines,
    write_lines,
)
from monitord.config import (  # noqa: E402
    AlertsConfig,
    Config,
    HttpConfig,
    SourceConfig,
    StateConfig,
)
from monitord.daemon import Daemon  # noqa: E402
from monitord.state.store import Store  # noqa: E402
from monitord.state.table import GuestTable  # noqa: E402
from tests.daemonproc import free_port  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine() -> str:
    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    return f"{nproc} cores (`nproc`), {model} (`lscpu`), Python {platform.python_version()}"


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


# -- writer processes -------------------------------------------------------------------


def writer_paced(path: str, rate: float, seconds: float, seed: int, out: str) -> None:
    """Append `rate` simulator records a second, one write each; note when each serial left."""
    n = int(rate * seconds)
    fleet = Fleet(seed, guests=12, virt="mixed", start_time=time.time())
    events = list(itertools.islice(fleet.events(), n))
    stamps = [0.0] * n
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    for i, ev in enumerate(events):
        due = t0 + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        stamps[i] = time.monotonic()
        os.write(fd, ev.line)
    elapsed = time.monotonic() - t0
    os.close(fd)
    doc = {"serials": [e.serial for e in events], "stamps": stamps, "elapsed": elapsed}
    Path(out).write_text(json.dumps(doc))


def writer_lines(src: str, dst: str, rate: float, out: str) -> None:
    """Append src's lines to dst at `rate` lines a second, one write each; note each time."""
    lines = Path(src).read_bytes().splitlines(keepends=True)
    stamps = [0.0] * len(lines)
    fd = os.open(dst, os.O_WRONLY | os.O_APPEND)
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    for i, line in enumerate(lines):
        due = t0 + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        stamps[i] = time.monotonic()
        os.write(fd, line)
    elapsed = time.monotonic() - t0
    os.close(fd)
    Path(out).write_text(json.dumps({"stamps": stamps, "elapsed": elapsed}))


def writer_bulk(src: str, dst: str, rate: float, out: str) -> None:
    """Append src to dst in writes of up to 1 MiB cut at line ends; rate 0 = as fast as possible."""
    fd_in = os.open(src, os.O_RDONLY)
    fd = os.open(dst, os.O_WRONLY | os.O_APPEND)
    print("ready", flush=True)
    sys.stdin.readline()
    offset = lines = 0
    t0 = time.monotonic()
    while True:
        chunk = os.pread(fd_in, 1 << 20, offset)
        if not chunk:
            break
        cut = chunk.rfind(b"\n") + 1 or len(chunk)
        chunk = chunk[:cut]
        if rate:
            due = t0 + lines / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        offset += cut
        lines += chunk.count(b"\n")
    t1 = time.monotonic()
    Path(out).write_text(json.dumps({"start": t0, "end": t1, "bytes": offset, "lines": lines}))


class Writer:
    """This script run as a writer process; `go()` starts the writing."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "_writer", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"writer did not start: {line!r}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> None:
        # Blocks in waitpid, holding no GIL: the daemon thread is not disturbed.
        if self.proc.wait(timeout=timeout) != 0:
            raise RuntimeError(f"writer failed with {self.proc.returncode}")


# -- the real daemon, in a thread -------------------------------------------------------


class Stamper:
    """Stands between the pipeline and the production guest table; notes when each record
    (by node and serial: serials repeat across nodes) was applied."""

    def __init__(self, table: GuestTable) -> None:
        self.table = table
        self.applied: dict[tuple[str, int], float] = {}
        self.last_applied = 0.0

    def apply_many(self, records: Sequence[AuditRecord]) -> None:
        self.table.apply_many(records)
        self.last_applied = t = time.monotonic()
        applied = self.applied
        for record in records:
            applied[(record.node or "", record.serial)] = t


class InProcessDaemon:
    """`monitord run`'s Daemon on a file, in a thread, with the HTTP listener on a free port.

    Journal alerts are off (no journald in a benchmark); the alert engine still sees every
    record. With no NOTIFY_SOCKET there are no watchdog pings, as with `monitord run` by hand.
    The pipeline writes to the production table through a `Stamper`.
    """

    def __init__(self, log_path: Path, state_dir: Path) -> None:
        os.environ.pop("NOTIFY_SOCKET", None)
        self.config = Config(
            source=SourceConfig(kind="file", path=str(log_path), start="checkpoint"),
            # The simulated guests' vm-pids are no processes of this machine: the liveness
            # check would find every local guest gone (a warning and an alert each).
            state=StateConfig(dir=str(state_dir), process_check_interval=86400.0),
            http=HttpConfig(listen="127.0.0.1:0"),
            alerts=AlertsConfig(journal=False),
        )
        state_dir.mkdir(parents=True, exist_ok=True)
        self.daemon = Daemon(self.config)
        self.table = self.daemon.table
        # The pipeline is the table's only writer: stamp there, on the production table.
        self.stamps = Stamper(self.table)
        self.daemon.pipeline.table = self.stamps
        self.tracked_before = 0
        self.thread = threading.Thread(target=self.daemon.run, name="ingestion", daemon=True)

    def start(self, timeout: float = 120.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            source = self.daemon.source
            if source is not None and self.daemon.web is not None and source.caught_up:
                return
            time.sleep(0.05)
        raise RuntimeError("daemon did not catch up")

    def stop(self) -> None:
        self.daemon.flags.stop = True
        os.write(self.daemon._wake_w, b"x")  # what a signal handler's wakeup fd does
        # Shutdown commits twice, synchronously.
        self.thread.join(timeout=300)
        if self.thread.is_alive():
            raise RuntimeError("daemon thread did not stop")


# -- 1. latency -------------------------------------------------------------------------


def fleet_start_lines(guests: int, seed: int = 7) -> Iterator[bytes]:
    """Every guest of a `guests`-strong fleet started once (about 20 records each)."""
    fleet = Fleet(seed, guests=guests, virt="mixed", start_time=time.time() - 86400)
    for g in fleet.guests:
        for ev in fleet._start(g, "booted"):  # one start per guest: every guest is tracked
            yield ev.line


def latency_run(tmp: Path, rate: float, seconds: float, preload_guests: int) -> dict[str, Any]:
    run = tmp / f"lat-{int(rate)}-{preload_guests}"
    run.mkdir()
    log = run / "audit.log"
    with log.open("wb") as out:
        if preload_guests:
            write_lines(out, fleet_start_lines(preload_guests))
    d = InProcessDaemon(log, run / "state")
    d.start()
    stamps_path = run / "stamps.json"
    writer = Writer("paced", str(log), str(rate), str(seconds), "11", str(stamps_path))
    doc = paced_writing(d, writer, stamps_path, seconds)
    keys = [("", s) for s in doc["serials"]]
    return latency_result(d, keys, doc, rate)


def paced_writing(d: InProcessDaemon, writer: Writer, stamps: Path, seconds: float) -> Any:
    """Let a ready paced writer go; return its stamps document once it is done."""
    d.stamps.applied.clear()  # the preload's (node, serial) pairs may recur
    d.tracked_before = d.table.guests_tracked
    writer.go()
    writer.wait(timeout=seconds * 3 + 60)
    return json.loads(stamps.read_text())


def latency_result(
    d: InProcessDaemon, keys: list[tuple[str, int]], doc: Any, rate: float
) -> dict[str, Any]:
    """Wait for every written record to be applied; stop the daemon; the latency figures."""
    applied = d.stamps.applied
    wait_until(lambda: len(applied) >= len(keys), 60, 0.05, what="every record applied")
    d.stop()
    lat = [(applied[k] - t) * 1000 for k, t in zip(keys, doc["stamps"], strict=True)]
    return {
        "rate": rate,
        "achieved": len(keys) / doc["elapsed"],
        "records": len(lat),
        "tracked": d.tracked_before,
        "p50": statistics.median(lat),
        "p99": pct(lat, 99),
        "p999": pct(lat, 99.9),
        "max": max(lat),
        "over5": sum(1 for x in lat if x > 5),
        "over20": sum(1 for x in lat if x > 20),
    }


def bench_latency(tmp: Path, quick: bool) -> list[str]:
    runs = [
        latency_run(tmp, 100, 5 if quick else 20, 0),
        latency_run(tmp, 5000, 10 if quick else 30, 0),
        latency_run(tmp, 5000, 10 if quick else 30, 10_000),
    ]
    out = [
        "## 1. End-to-end latency: append -> record applied to the guest table",
        "",
        "Writer process: one `write()` per record (simulator VIRT records, 12 guests), paced "
        "on CLOCK_MONOTONIC. Daemon: the real `Daemon` in a thread (FileSource with inotify, "
        "StreamParser, Pipeline with alerts, GuestTable, state store commits every 1 s in "
        "their thread, "
        "HTTP listener up); latency = monotonic time after `GuestTable.apply_many` returned "
        "for its batch minus time just before the writer's `write()`.",
        "",
        "| rate (achieved) | guests tracked | records | p50 ms | p99 ms | p99.9 ms | max ms | "
        "> 20 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        out.append(
            f"| {r['rate']:,.0f}/s ({r['achieved']:,.0f}) | {r['tracked']:,} | {r['records']:,} "
            f"| {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.1f} | {r['max']:.1f} "
            f"| {r['over20']:,} |"
        )
    out.append("")
    out.append("Target: p99 <= 20 ms at 5,000 records/s.")
    return out


# -- 2. throughput ----------------------------------------------------------------------


def throughput_run(tmp: Path, src: Path, lines: int, rate: float) -> dict[str, Any]:
    run = tmp / f"tp-{int(rate)}"
    run.mkdir()
    log = run / "audit.log"
    log.touch()
    d = InProcessDaemon(log, run / "state")
    d.start()
    result = run / "writer.json"
    writer = Writer("bulk", str(src), str(log), str(rate), str(result))
    writer.go()
    writer.wait(timeout=600)
    w = json.loads(result.read_text())
    stats = d.daemon.source_counters.parse
    wait_until(lambda: stats.lines >= lines, 600, 0.05, what="the daemon to read every line")
    done_seen = time.monotonic()
    last_applied = d.stamps.last_applied
    records = stats.records
    d.stop()
    end = last_applied  # exact: the last VIRT record is among the log's last lines
    return {
        "rate": rate,
        "writer_lps": lines / (w["end"] - w["start"]),
        "daemon_lps": lines / (end - w["start"]),
        "lag_end": max(0.0, end - w["end"]),
        "seen_lag": done_seen - w["end"],
        "mib": w["bytes"] / 2**20,
        "records": records,
    }


def bench_throughput(tmp: Path, quick: bool) -> list[str]:
    lines = 500_000 if quick else 2_000_000
    src = tmp / "mixed.log"
    t0 = time.perf_counter()
    with src.open("wb") as f:
        write_lines(f, mixed_log(1, lines))
    gen = time.perf_counter() - t0
    runs = [throughput_run(tmp, src, lines, 0), throughput_run(tmp, src, lines, 500_000)]
    size = src.stat().st_size / 2**20
    src.unlink()
    out = [
        "## 2. Sustained follow throughput (mixed log, 5% VIRT)",
        "",
        f"Log: {lines:,} lines, {size:.0f} MiB, `simulate.mixed_log` seed 1 (generated in "
        f"{gen:.1f} s), appended by a writer process in writes of up to 1 MiB cut at line ends "
        "while the daemon (in-process, as above) follows from an empty file. Daemon lines/s = "
        "lines / (last record applied - writer's first write). Lag at end = last record "
        "applied - writer's last write.",
        "",
        "| writer | writer lines/s | daemon lines/s | lag at end | records applied |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        label = "as fast as it can" if not r["rate"] else f"paced at {r['rate']:,.0f} lines/s"
        out.append(
            f"| {label} | {r['writer_lps']:,.0f} | {r['daemon_lps']:,.0f} "
            f"| {r['lag_end'] * 1000:.0f} ms | {r['records']:,} |"
        )
    out.append("")
    best = runs[0]["daemon_lps"]
    kept = runs[1]["lag_end"] < 0.1
    out.append(
        f"Target: >= 500,000 lines/s. Highest rate followed (daemon-bound run): {best:,.0f} "
        f"lines/s; at 500,000 lines/s the daemon {'kept up' if kept else 'fell behind'} "
        f"(lag at end {runs[1]['lag_end'] * 1000:.0f} ms)."
    )
    return out


# -- 3. idle ----------------------------------------------------------------------------


def proc_snapshot(pid: int) -> dict[str, Any]:
    """CPU ticks of the process and, per thread: context switches, ns on CPU, wait channel."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    threads: dict[int, dict[str, Any]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            run_ns = int((task / "schedstat").read_text().split()[0])
            wchan = (task / "wchan").read_text().strip() or "-"
        except OSError:
            continue  # the thread ended
        vol = nonvol = 0
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                nonvol = int(line.split()[1])
        threads[int(task.name)] = {"vol": vol, "nonvol": nonvol, "ns": run_ns, "wchan": wchan}
    return {"ticks": ticks, "threads": threads, "t": time.monotonic()}


def bench_idle(tmp: Path, quick: bool) -> list[str]:
    seconds = 10.0 if quick else 60.0
    run = tmp / "idle"
    run.mkdir()
    log = run / "audit.log"
    with log.open("wb") as f:
        write_lines(f, mixed_log(3, 10_000))
    port = free_port()
    exe = ROOT / ".venv" / "bin" / "monitord"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "monitord"]
    cmd += [
        "run",
        "--audit-log",
        str(log),
        "--listen",
        f"127.0.0.1:{port}",
        "--state-dir",
        str(run / "state"),
        "--log-level",
        "info",
    ]
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with (run / "monitord.log").open("wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"monitord exited: {(run / 'monitord.log').read_text()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("monitord did not listen") from None
                time.sleep(0.1)
        # Let start-up finish: catch-up, first checkpoint, the health request's thread.
        time.sleep(6.0)
        before = proc_snapshot(proc.pid)
        time.sleep(seconds)
        after = proc_snapshot(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    elapsed = after["t"] - before["t"]
    cpu_ticks = (after["ticks"] - before["ticks"]) / CLK_TCK
    rows = []
    total_vol = 0
    total_ns = 0
    for tid, a in sorted(after["threads"].items()):
        b = before["threads"].get(tid)
        if b is None:
            continue
        vol = a["vol"] - b["vol"]
        ns = a["ns"] - b["ns"]
        total_vol += vol
        total_ns += ns
        name = "main (ingestion loop)" if tid == proc.pid else f"thread {tid}"
        every = f"{elapsed / vol:.1f} s" if vol else "never"
        rows.append(
            f"| {name} | {a['wchan']} | {vol} | {vol / elapsed:.3f} | {every} "
            f"| {a['nonvol'] - b['nonvol']} | {ns / 1e6:.2f} |"
        )
    return [
        f"## 3. Idle cost of `monitord run` over {elapsed:.0f} s without writes",
        "",
        "A real `monitord run` process (file source on a 10,000-line log it has read, HTTP "
        "listener on 127.0.0.1, default config: rescan_interval 5 s, checkpoint_interval 1 s, "
        "journal alerts on), measured after 6 s of settling.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| CPU (utime+stime, /proc/PID/stat, {1000 / CLK_TCK:.0f} ms ticks) | "
        f"{cpu_ticks * 1000:.0f} ms = {cpu_ticks / elapsed * 100:.4f}% of a core |",
        f"| CPU (sum of per-thread schedstat, ns) | {total_ns / 1e6:.2f} ms = "
        f"{total_ns / 1e9 / elapsed * 100:.4f}% of a core |",
        f"| voluntary context switches, whole process | {total_vol} "
        f"({total_vol / elapsed:.2f}/s) |",
        "",
        "| thread | sleeping in | voluntary switches | per s | one every | involuntary | "
        "CPU ms |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Target: < 0.1% of a core; no thread wakes more often than the 5 s safety re-check.",
    ]


# -- 4. state store commits ------------------------------------------------------------


def bench_checkpoint(tmp: Path, guests: int = 10_000) -> list[str]:
    """What the state store costs the daemon at 10,000 guests: the first commit (every
    guest and its records), the periodic commit of one second at 5,000 records/s (the
    part the ingestion thread does, and the commit thread's), and the load at start."""
    run = tmp / "ckpt"
    config = Config(
        state=StateConfig(dir=str(run / "state")),
        http=HttpConfig(listen="127.0.0.1:0"),
        alerts=AlertsConfig(journal=False),
    )
    fleet = Fleet(7, guests=guests, virt="mixed", start_time=time.time() - 86400)
    start = [ev.line for g in fleet.guests for ev in fleet._start(g, "booted")]
    stream = fleet.events()
    daemon = Daemon(config)
    daemon.store, _ = Store.open(config.state.dir)
    t0 = time.perf_counter()
    records = [r for r in map(parse_line, start) if isinstance(r, AuditRecord)]
    daemon.pipeline.apply(records, True)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    daemon.commit_now()
    first = time.perf_counter() - t0
    size = daemon.store.stats().file_bytes

    take, commit, changed = [], [], []
    for _ in range(7):
        second = [parse_line(next(stream).line) for _ in range(5000)]
        daemon.pipeline.apply([r for r in second if isinstance(r, AuditRecord)], True)
        t0 = time.perf_counter()
        batch = daemon._commit_batch()  # in the ingestion thread
        take.append(time.perf_counter() - t0)
        changed.append(len(batch["upserted"]))
        t0 = time.perf_counter()
        assert daemon.store.commit(**batch)  # in the commit thread
        commit.append(time.perf_counter() - t0)
    daemon.store.close()

    t0 = time.perf_counter()
    store, loaded = Store.open(config.state.dir)
    opened = time.perf_counter() - t0
    again = Daemon(config)
    again.store = store
    t0 = time.perf_counter()
    again._load(loaded)
    load = time.perf_counter() - t0
    store.close()

    def ms(x: float) -> str:
        return f"{x * 1000:.0f} ms"

    return [
        f"## 4. State store commits with {guests:,} guests",
        "",
        f"Table: {daemon.table.guests_tracked:,} guests from {len(records):,} records (every "
        f"guest of a {guests:,}-guest simulated fleet started once), applied through the "
        f"daemon's pipeline in {build:.1f} s. State dir on ext4 (real fsync).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| first commit (every guest and all {len(records):,} records), `Daemon.commit_now()` "
        f"| {ms(first)} |",
        f"| store size after it | {size / 2**20:.1f} MiB |",
        f"| one second at 5,000 records/s ({statistics.median(changed):.0f} guests changed): "
        f"`Daemon._commit_batch()` in the ingestion thread, median / max of 7 | "
        f"{statistics.median(take) * 1000:.1f} ms / {max(take) * 1000:.1f} ms |",
        f"| the same batch's `Store.commit` (the commit thread), median / max of 7 | "
        f"{ms(statistics.median(commit))} / {ms(max(commit))} |",
        f"| restart: `Store.open` / loading the stages (`Daemon._load`) | "
        f"{ms(opened)} / {ms(load)} |",
        "",
        "Periodic commits (every checkpoint_interval while records arrive, and at rotations) "
        "run in the store's commit thread; the ingestion thread only takes what changed "
        "(`_commit_batch`), so that is its pause.",
    ]


# -- 5. central collector ----------------------------------------------------------------

NODES: Final = 100
NODE_GUESTS: Final = 100
# Nodes 0..TWINS-1 share the UUIDs of their first TWINS guests with nodes 50..50+TWINS-1
# (other names, devices and histories): the same UUID on two nodes is two guests.
TWINS: Final = 10


class CollectorNode:
    """One hypervisor of the aggregated log: its simulated libvirt, its noise, one clock."""

    def __init__(self, index: int, start: float) -> None:
        self.name = f"hv{index:03d}"
        self.clock = AuditClock(start + index * 0.037, serial=100 + index)
        self.fleet = Fleet(
            1000 + index, guests=NODE_GUESTS, virt="mixed", node=self.name, clock=self.clock
        )
        self.rng = random.Random(5000 + index)
        self.events = self.fleet.events()


def collector_nodes(start: float) -> list[CollectorNode]:
    nodes = [CollectorNode(i, start) for i in range(NODES)]
    for i in range(TWINS):
        a, b = nodes[i], nodes[NODES // 2 + i]
        for k in range(TWINS):
            b.fleet.guests[k].uuid = a.fleet.guests[k].uuid
    return nodes


def collector_preload(nodes: list[CollectorNode]) -> Iterator[bytes]:
    """Every guest of every node started once, the nodes' records merged by time."""

    def starts(n: CollectorNode) -> Iterator[tuple[float, bytes]]:
        for g in n.fleet.guests:
            for ev in n.fleet._start(g, "booted"):
                yield ev.time, ev.line

    for _, line in heapq.merge(*(starts(n) for n in nodes), key=itemgetter(0)):
        yield line


def collector_follow(
    nodes: list[CollectorNode], lines: int, virt_fraction: float
) -> Iterator[bytes]:
    """About `lines` lines of the aggregated log, libvirt records (virt_fraction of each
    node's lines) in the node's non-libvirt noise, the nodes merged by time (as auditd
    writes what its senders send). The last line is a libvirt record."""
    quota = lines // len(nodes)

    def node_lines(n: CollectorNode) -> Iterator[tuple[float, list[bytes]]]:
        emitted = virt = 0
        while emitted < quota:
            if virt < virt_fraction * (emitted + 1):
                ev = next(n.events)
                out = [ev.line]
                virt += 1
            else:
                out = noise_lines(n.rng, n.clock, node=n.name)
            emitted += len(out)
            yield n.clock.time, out

    for _, out in heapq.merge(*(node_lines(n) for n in nodes), key=itemgetter(0)):
        yield from out
    yield next(nodes[0].events).line  # the measure ends at the last record applied


def node_check(table: GuestTable, virt_log: Path) -> dict[str, Any]:
    """Do the collector's guests equal, node by node, what each node's own log gives?

    Each node's libvirt lines, taken out of `virt_log` (the aggregated log's libvirt
    lines) without their `node=`, are replayed through a table of their own; every guest
    document must match field by field (but node and host), and name its node.
    """
    mine: dict[str, GuestTable] = {}
    config = StateConfig(max_guests=NODE_GUESTS)
    with virt_log.open("rb") as f:
        for line in f:
            head, _, rest = line.partition(b" ")
            node = head[5:].decode()
            record = parse_line(rest)
            if isinstance(record, AuditRecord):
                own = mine.get(node)
                if own is None:
                    own = mine[node] = GuestTable(config, host=node)
                own.apply(record)
    docs = table.document(now=0.0)["guests"]
    wrong_node = mismatched = 0
    seen: set[tuple[str, str]] = set()
    nodes_of: dict[str, set[str]] = {}
    for doc in docs:
        node = doc["node"]
        if node not in mine or doc["host"] != node:
            wrong_node += 1
            continue
        seen.add((node, doc["uuid"]))
        nodes_of.setdefault(doc["uuid"], set()).add(node)
        ref = mine[node].guest_document(doc["uuid"], "")
        if ref is None:
            wrong_node += 1
            continue
        ref.pop("events", None)
        strip = ("node", "host")
        if {k: v for k, v in doc.items() if k not in strip} != {
            k: v for k, v in ref.items() if k not in strip
        }:
            mismatched += 1
    expected = sum(own.guests_tracked for own in mine.values())
    return {
        "tracked": table.guests_tracked,
        "expected": expected,
        "nodes": len({node for node, _ in seen}),
        "wrong_node": wrong_node,
        "mismatched": mismatched,
        "missing": expected - len(seen),
        "twins": sum(1 for n in nodes_of.values() if len(n) > 1),
        "ok": wrong_node == mismatched == 0 and len(seen) == expected == table.guests_tracked,
    }


def write_collector_log(
    path: Path, virt_log: Path, lines: Iterator[bytes], mode: str = "wb"
) -> int:
    """Write lines to path, their libvirt records also to virt_log; return the line count."""
    n = 0
    with path.open(mode) as out, virt_log.open("ab") as virt:
        buf: list[bytes] = []
        for line in lines:
            buf.append(line)
            if b" type=VIRT_" in line[:40] and b" uuid=" in line:
                virt.write(line)
            if len(buf) >= 4096:
                out.write(b"".join(buf))
                n += len(buf)
                buf.clear()
        out.write(b"".join(buf))
        n += len(buf)
    return n


def collector_throughput(tmp: Path, lines: int) -> dict[str, Any]:
    run = tmp / "collector-tp"
    run.mkdir()
    log, src, virt_log = run / "audit.log", run / "follow.log", run / "virt.log"
    t0 = time.perf_counter()
    nodes = collector_nodes(time.time() - 3600)
    preload = write_collector_log(log, virt_log, collector_preload(nodes))
    n = write_collector_log(src, virt_log, collector_follow(nodes, lines, 0.05))
    gen = time.perf_counter() - t0
    size = src.stat().st_size / 2**20
    d = InProcessDaemon(log, run / "state")
    t = time.monotonic()
    d.start(timeout=600)
    catch_up = time.monotonic() - t
    tracked_before = d.table.guests_tracked
    result = run / "writer.json"
    writer = Writer("bulk", str(src), str(log), "0", str(result))
    writer.go()
    writer.wait(timeout=600)
    w = json.loads(result.read_text())
    stats = d.daemon.source_counters.parse
    wait_until(lambda: stats.lines >= preload + n, 600, 0.05, what="every line read")
    end = d.stamps.last_applied  # exact: the last line is a libvirt record
    records = stats.records
    d.stop()
    check = node_check(d.table, virt_log)
    return {
        "lines": n,
        "preload": preload,
        "mib": size,
        "gen": gen,
        "catch_up": catch_up,
        "tracked_before": tracked_before,
        "writer_lps": n / (w["end"] - w["start"]),
        "daemon_lps": n / (end - w["start"]),
        "lag_end": max(0.0, end - w["end"]),
        "records": records,
        "check": check,
    }


def collector_latency(tmp: Path, rate: float, seconds: float) -> dict[str, Any]:
    run = tmp / "collector-lat"
    run.mkdir()
    log, src, virt_log = run / "audit.log", run / "stream.log", run / "virt.log"
    nodes = collector_nodes(time.time() - 3600)
    write_collector_log(log, virt_log, collector_preload(nodes))
    write_collector_log(src, virt_log, collector_follow(nodes, int(rate * seconds), 1.0))
    keys = []
    for line in src.read_bytes().splitlines(keepends=True):
        record = parse_line(line)
        assert isinstance(record, AuditRecord)
        keys.append((record.node or "", record.serial))
    d = InProcessDaemon(log, run / "state")
    d.start(timeout=600)
    stamps_path = run / "stamps.json"
    writer = Writer("lines", str(src), str(log), str(rate), str(stamps_path))
    with Pauses(d.daemon) as pauses:
        doc = paced_writing(d, writer, stamps_path, seconds)
    result = latency_result(d, keys, doc, rate)
    result["check"] = node_check(d.table, virt_log)
    result["pauses"] = pauses
    return result


class Pauses:
    """What stops the ingestion thread while records arrive (where the slow records come
    from): full (generation 2) garbage collections, and `Daemon._commit_batch`, the part
    of each periodic commit that runs in the ingestion thread."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.gc_full: list[float] = []
        self.take: list[float] = []
        self._gc_start = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_full.append(time.perf_counter() - self._gc_start)

    def __enter__(self) -> Pauses:
        take = self.daemon._commit_batch

        def timed() -> dict[str, Any]:
            t0 = time.perf_counter()
            try:
                return take()
            finally:
                self.take.append(time.perf_counter() - t0)

        self.daemon._commit_batch = timed  # type: ignore[method-assign]
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)
        del self.daemon._commit_batch  # the class's again

    def summary(self) -> str:
        def ms(xs: list[float]) -> str:
            if not xs:
                return "none"
            return (
                f"{len(xs)}, median {statistics.median(xs) * 1000:.0f} ms, "
                f"max {max(xs) * 1000:.0f} ms"
            )

        return (
            f"full garbage collections: {ms(self.gc_full)}; `Daemon._commit_batch` "
            f"(ingestion thread): {ms(self.take)}"
        )


def bench_collector(tmp: Path, quick: bool) -> list[str]:
    lines = 500_000 if quick else 2_000_000
    tp = collector_throughput(tmp, lines)
    load = os.getloadavg()[0]
    lat = collector_latency(tmp, 5000, 10 if quick else 30)
    tc, lc = tp["check"], lat["check"]

    def check_row(name: str, c: dict[str, Any]) -> str:
        return (
            f"| {name} | {c['tracked']:,} | {c['nodes']} | {c['twins']} | {c['wrong_node']} "
            f"| {c['mismatched']} | {c['missing']} |"
        )

    met_tp = tp["daemon_lps"] >= 200_000
    met_lat = lat["p99"] < 5.0
    mixed = tc["ok"] and lc["ok"] and tc["tracked"] == lc["tracked"] == NODES * NODE_GUESTS
    return [
        f"## 5. Central collector: {NODES} nodes x {NODE_GUESTS} guests",
        "",
        f"The aggregated log a central auditd writes for {NODES} senders: every line "
        f"prefixed `node=hvNNN`, each node a simulated libvirt host of {NODE_GUESTS} guests "
        "(`simulate.Fleet` with `node=`, mixed kvm/qemu/lxc) in its own non-libvirt noise "
        "(`simulate.noise_lines`, 5% libvirt per node), the nodes' lines merged by time. "
        f"Nodes hv000-hv{TWINS - 1:03d} share {TWINS} guest UUIDs each with hv050-"
        f"hv{NODES // 2 + TWINS - 1:03d} (other guests behind them). The log starts with every "
        f"guest started once ({tp['preload']:,} lines), which the daemon (in-process, as "
        "above) reads before the measure, so all "
        f"{NODES * NODE_GUESTS:,} guests are tracked throughout.",
        "",
        "Throughput: a writer process appends the rest of the aggregated log "
        f"({tp['lines']:,} lines, {tp['mib']:.0f} MiB) in writes of up to 1 MiB, as fast as "
        "it can; daemon lines/s = lines / (last record applied - writer's first write).",
        "",
        "| guests tracked | writer lines/s | daemon lines/s | lag at end | records applied "
        "(all) | catch-up of the start |",
        "|---|---|---|---|---|---|",
        f"| {tp['tracked_before']:,} | {tp['writer_lps']:,.0f} | {tp['daemon_lps']:,.0f} "
        f"| {tp['lag_end'] * 1000:.0f} ms | {tp['records']:,} | {tp['catch_up']:.1f} s |",
        "",
        f"Latency: a writer process appends the nodes' next libvirt records (no noise), one "
        f"`write()` each at {lat['rate']:,.0f}/s, after the same start; measured as in 1. "
        f"(1-min load average before it: {load:.2f})",
        "",
        "| rate (achieved) | guests tracked | records | p50 ms | p99 ms | p99.9 ms | max ms | "
        "> 5 ms |",
        "|---|---|---|---|---|---|---|---|",
        f"| {lat['rate']:,.0f}/s ({lat['achieved']:,.0f}) | {lat['tracked']:,} "
        f"| {lat['records']:,} | {lat['p50']:.2f} | {lat['p99']:.2f} | {lat['p999']:.1f} "
        f"| {lat['max']:.1f} | {lat['over5']:,} |",
        "",
        f"Ingestion-thread pauses while it ran: {lat['pauses'].summary()}.",
        "",
        "Nodes kept apart: after each run, every node's libvirt lines without `node=` are "
        "replayed through a table of their own; each collector guest document must name its "
        "node (`node` and `host`) and equal that node's own document field by field.",
        "",
        "| run | guests tracked | nodes | UUIDs on two nodes | on a wrong node | differing "
        "| missing |",
        "|---|---|---|---|---|---|---|",
        check_row("throughput", tc),
        check_row("latency", lc),
        "",
        f"Targets: >= 200,000 lines/s: {'met' if met_tp else 'NOT met'} "
        f"({tp['daemon_lps']:,.0f}); p99 < 5 ms at 5,000 records/s with "
        f"{NODES * NODE_GUESTS:,} guests: {'met' if met_lat else 'NOT met'} "
        f"({lat['p99']:.2f} ms); guests of different nodes never mix: "
        f"{'met' if mixed else 'NOT met'}.",
    ]


# -- main -------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_writer":
        kind, *rest = sys.argv[2:]
        if kind == "paced":
            writer_paced(rest[0], float(rest[1]), float(rest[2]), int(rest[3]), rest[4])
        elif kind == "lines":
            writer_lines(rest[0], rest[1], float(rest[2]), rest[3])
        else:
            writer_bulk(rest[0], rest[1], float(rest[2]), rest[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (about a minute)")
    ap.add_argument("--out", help="also write the report to this file")
    ap.add_argument(
        "--only",
        choices=("latency", "throughput", "idle", "checkpoint", "collector"),
        action="append",
    )
    ap.add_argument(
        "--collector", action="store_true", help="only the central collector (= --only collector)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    everything = ("latency", "throughput", "idle", "checkpoint", "collector")
    only = {"collector"} if args.collector else set(args.only or everything)
    report = [
        "# Follow benchmarks (issue 3)",
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python bench/bench_follow.py"
        f"{' --quick' if args.quick else ''}`.",
    ]
    tmp = Path(tempfile.mkdtemp(prefix="bench-follow-", dir="/var/tmp"))
    try:
        sections: list[tuple[str, Callable[[], list[str]]]] = [
            ("latency", lambda: bench_latency(tmp, args.quick)),
            ("throughput", lambda: bench_throughput(tmp, args.quick)),
            ("idle", lambda: bench_idle(tmp, args.quick)),
            ("checkpoint", lambda: bench_checkpoint(tmp)),
            ("collector", lambda: bench_collector(tmp, args.quick)),
        ]
        for name, section in sections:
            if name in only:
                # The machine may be shared: other work competes for the 2 cores.
                load = os.getloadavg()[0]
                report += ["", *section(), "", f"(1-min load average before this section: "
                           f"{load:.2f})"]  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
