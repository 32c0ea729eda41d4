"""Benchmarks of the SQLite state store (issue 13) against the checkpoint.json snapshot design.

    .venv/bin/python bench/bench_store.py [--quick] [--events 10000000] [--only PART]

The host is the daemon's own stages (a `Daemon` that is never run: its pipeline, guest
table, alert engine and counters) and each commit is its `_commit_batch()`. The snapshot
design the store replaced (checkpoint.json of the whole table, each guest with its last
50 records, written atomically every 5 s) no longer exists in monitord; it is
reimplemented here (`snapshot_doc`, `save_snapshot`) as the baseline of parts 1 and 2.

1. Write cost, small host: 500 guests with 60 records of history each, then one record
   every 0.5 s (commits every `checkpoint_interval`): bytes written per record.
2. Write cost, big host: 10,000 guests at 5,000 records/s for 60 s (simulated time):
   bytes the store writes vs the bytes the snapshot design (checkpoint.json of every
   guest with 50 events, rewritten every 5 s) writes for the same records; the commit
   time, and the p99 of applying a batch of records while commits run in a thread.
3. A store of 10,000 guests and 10 million history events (generated straight into
   SQLite, cached in bench/out/): restart to loaded, `history` of one guest, `sessions`
   of one guest, an events page of 100, bytes per event on disk.
4. `monitord run` restarted on (a copy of) that store: exec to READY=1 on a real
   NOTIFY_SOCKET, 5 times; the same with an empty state directory; `Store.open` and the
   stages' load timed apart in this process; a cProfile of one start.

Bytes written are the process's `wchar` (bytes handed to write(2)/pwrite(2)) and
`write_bytes` (bytes sent towards the block layer) from /proc/self/io, taken
around the measured part only, WAL checkpoints included (a final TRUNCATE
checkpoint is part of the measured part).
Prints a Markdown report (bench/results/store.md is a copy of one run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitord.audit.parser import StreamParser  # noqa: E402
from monitord.audit.record import AuditRecord  # noqa: E402
from monitord.commands.simulate import Fleet  # noqa: E402
from monitord.config import AlertsConfig, Config, IdentityConfig, StateConfig  # noqa: E402
from monitord.daemon import Daemon  # noqa: E402
from monitord.state import schema  # noqa: E402
from monitord.state.eventcodec import time_to_db  # noqa: E402
from monitord.state.history import EventQuery, HistoryReader  # noqa: E402
from monitord.state.sessions import sessions  # noqa: E402
from monitord.state.store import CommitThread, Store, encode_event  # noqa: E402

OUT: Final = ROOT / "bench" / "out"
KiB: Final = 1024
MiB: Final = 1024 * 1024


def io_counters() -> tuple[int, int]:
    """(wchar, write_bytes) of this process."""
    values = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        values[key] = int(value)
    return values["wchar"], values["write_bytes"]


def machine() -> str:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    fs = "unknown fs"
    try:
        import subprocess

        fs = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(OUT)],
            capture_output=True, text=True, check=False,
        ).stdout.strip() or fs  # fmt: skip
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores, {model}, Linux {platform.release()}, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, bench/out on {fs}"
    )


def records(guests: int, seed: int) -> Iterator[AuditRecord]:
    """Parsed libvirt records of a simulated host with `guests` guests, forever.

    They start a day ago (history retention keeps them; alerts fire for the failures)."""
    parser = StreamParser()
    batch: list[bytes] = []
    fleet = Fleet(seed, guests=guests, virt="kvm", start_time=time.time() - 86400)
    for event in fleet.events():
        batch.append(event.line)
        if len(batch) >= 512:
            yield from parser.feed(b"".join(batch))
            batch.clear()


class Position:
    """The file source's position, as the daemon's source reports it (offset moves on)."""

    def __init__(self) -> None:
        self.offset = 0

    def position(self) -> dict[str, Any]:
        return {
            "path": "/var/log/audit/audit.log", "dev": 2049, "ino": 1234, "offset": self.offset,
            "fingerprint": "a" * 64, "fingerprint_length": 1024,
        }  # fmt: skip


class Host:
    """The daemon's stages, those of a real `Daemon` that is never run.

    Records go through its pipeline (guest table, alert engine, lag, the records kept
    for the history), and `take()` is the daemon's own commit batch (take_changes,
    meta, counters, alerts, applied records). The source is replaced by its position
    (records come parsed) and the parse counters are advanced as the source would.
    With `keep_events`, the last records of each guest are kept as well, for the
    snapshot design that held them in memory.
    """

    def __init__(self, keep_events: int = 0) -> None:
        config = Config(
            identity=IdentityConfig(host="bench"),
            state=StateConfig(max_guests=20_000),
            alerts=AlertsConfig(journal=False),  # no sink: nothing is delivered here
        )
        self.daemon = Daemon(config)
        self.source = Position()
        self.daemon.source = self.source  # type: ignore[assignment]
        self.table = self.daemon.table
        self.keep_events = keep_events
        self.events: dict[tuple[str, str], deque[AuditRecord]] = {}

    def apply(self, batch: list[AuditRecord]) -> None:
        parse = self.daemon.source_counters.parse
        parse.lines += len(batch)
        parse.records += len(batch)
        self.source.offset += 300 * len(batch)
        self.daemon.pipeline.apply(batch, True)
        if self.keep_events:
            for r in batch:
                uuid = r.fields.get("uuid")
                if isinstance(uuid, str):
                    key = (r.node or "", uuid)
                    kept = self.events.get(key)
                    if kept is None:
                        kept = self.events[key] = deque(maxlen=self.keep_events)
                    kept.append(r)

    def attach(self, store: Store) -> None:
        self.daemon.store = store

    def take(self) -> dict[str, Any]:
        """What the daemon hands the commit thread (Daemon._commit_batch)."""
        return self.daemon._commit_batch()


# -- the snapshot design (monitord before the store), kept here as the baseline -------------


def snapshot_doc(host: Host) -> dict[str, Any]:
    """checkpoint.json as the snapshot design wrote it: the whole table, each guest with
    its last 50 records, the counters and the alerts."""
    d = host.daemon
    state = d.table.to_json()
    for g in state["guests"]:
        kept = host.events.get((g.get("node") or "", g["uuid"]), ())
        g["events"] = [r.to_json() for r in kept]
    telemetry = {
        **d.source_counters.to_json(),
        **d.pipeline.to_json(),
        **d.alerts.counters.to_json(),
    }
    return {
        "version": 1,
        "saved_at": time.time(),
        "source": {"kind": "file", "position": host.source.position()},
        "state": state,
        "telemetry": telemetry,
        "alerts": d.alerts.to_json(),
    }


def save_snapshot(directory: Path, doc: dict[str, Any]) -> int:
    """Write checkpoint.json atomically (temp file, fsync, rename, fsync dir); its size."""
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()
    path = directory / "checkpoint.json"
    tmp = directory / f".checkpoint.json.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(data)


class TimedStore(Store):
    """The store, with the duration of every commit kept (for the report)."""

    durations: list[float]

    def commit(self, **kwargs: Any) -> bool:
        t0 = time.perf_counter()
        try:
            return super().commit(**kwargs)
        finally:
            if not hasattr(self, "durations"):
                self.durations = []
            self.durations.append(time.perf_counter() - t0)


def fresh_dir(name: str) -> Path:
    path = OUT / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def checkpoint_wal(store: Store) -> None:
    conn = store._conn  # the bench measures the store's own file writes, WAL checkpoint included
    assert conn is not None
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# -- 1. small host ---------------------------------------------------------------------------


def small_host(interval: float, records_after: int) -> dict[str, Any]:
    """500 guests x 60 records of history, then one record every 0.5 s, commits every interval."""
    directory = fresh_dir("store-small")
    store, _ = Store.open(str(directory))
    host = Host()
    host.attach(store)
    stream = records(500, seed=7)
    # Warm-up: 30,000 records (60 a guest on average), committed 1,000 at a time.
    for _ in range(30):
        host.apply([next(stream) for _ in range(1000)])
        store.commit(**host.take())
    checkpoint_wal(store)
    per_commit = max(1, round(interval / 0.5))
    w0, b0 = io_counters()
    commit_times = []
    for _ in range(records_after // per_commit):
        host.apply([next(stream) for _ in range(per_commit)])
        batch = host.take()
        t0 = time.perf_counter()
        store.commit(**batch)
        commit_times.append(time.perf_counter() - t0)
    checkpoint_wal(store)
    w1, b1 = io_counters()
    n = (records_after // per_commit) * per_commit
    stats = store.stats()
    store.close()
    alerts = host.daemon.alerts.to_json()
    return {
        "alerts_firing": len(alerts.get("active") or ()),
        "alerts_bytes": len(json.dumps(alerts, separators=(",", ":"))),
        "interval": interval,
        "records": n,
        "wchar_per_record": (w1 - w0) / n,
        "write_bytes_per_record": (b1 - b0) / n,
        "commit_ms_median": statistics.median(commit_times) * 1000,
        "file_bytes": stats.file_bytes,
    }


def small_host_snapshot(records_after: int) -> dict[str, Any]:
    """The snapshot design on the same workload: checkpoint.json rewritten every 5 s."""
    directory = fresh_dir("snapshot-small")
    host = Host(keep_events=50)
    stream = records(500, seed=7)
    for _ in range(30):
        host.apply([next(stream) for _ in range(1000)])
    w0, b0 = io_counters()
    for i in range(records_after):
        host.apply([next(stream)])
        if i % 10 == 9:  # 10 records = 5 s
            save_snapshot(directory, snapshot_doc(host))
    w1, b1 = io_counters()
    return {
        "wchar_per_record": (w1 - w0) / records_after,
        "write_bytes_per_record": (b1 - b0) / records_after,
        "file_bytes": (directory / "checkpoint.json").stat().st_size,
    }


# -- 2. big host -----------------------------------------------------------------------------


def big_host(interval: float, seconds: int, rate: int) -> dict[str, Any]:
    """10,000 guests, `rate` records/s for `seconds` s; commits in a thread every interval."""
    directory = fresh_dir("store-big")
    store, _ = TimedStore.open(str(directory))
    host = Host()
    host.attach(store)
    stream = records(10_000, seed=11)
    warm = [next(stream) for _ in range(150_000)]  # every guest started at least once
    warm_commits = range(0, len(warm), 10_000)
    for i in warm_commits:
        host.apply(warm[i : i + 10_000])
        store.commit(**host.take())
    checkpoint_wal(store)
    del warm
    total = seconds * rate
    work = [next(stream) for _ in range(total)]
    gc.collect()
    per_commit = int(rate * interval)
    batch = 100  # what one poll of the source hands the pipeline at this rate
    w0, b0 = io_counters()
    apply_times: list[float] = []
    take_times: list[float] = []
    committer = CommitThread(store)
    submitted = skipped = 0
    started = time.perf_counter()
    behind = 0
    for i in range(0, total, batch):
        # Records arrive at `rate` a second, as from auditd: wait for this batch's time.
        due = started + i / rate
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        elif now - due > 0.1:
            behind += 1
        t0 = time.perf_counter()
        host.apply(work[i : i + batch])
        apply_times.append(time.perf_counter() - t0)
        if (i + batch) % per_commit == 0:
            # As the daemon loop would: hand over what changed unless a commit still runs.
            if committer.busy:
                skipped += 1
            else:
                t0 = time.perf_counter()
                taken = host.take()  # the ingestion thread's part of a commit
                take_times.append(time.perf_counter() - t0)
                assert committer.submit(**taken)
                submitted += 1
    committer.wait()
    assert committer.submit(**host.take())
    committer.close()
    durations = store.durations[len(warm_commits) :]
    elapsed = time.perf_counter() - started
    checkpoint_wal(store)
    w1, b1 = io_counters()
    # The same batches applied without any commit: the baseline of the apply p99.
    host2 = Host()
    stream2 = records(10_000, seed=11)
    for _ in range(15):
        host2.apply([next(stream2) for _ in range(10_000)])
    base: list[float] = []
    for i in range(0, total, batch):
        t0 = time.perf_counter()
        host2.apply(work[i : i + batch])
        base.append(time.perf_counter() - t0)
    stats = store.stats()
    store.close()
    alerts = host.daemon.alerts.to_json()
    return {
        "alerts_firing": len(alerts.get("active") or ()),
        "alerts_bytes": len(json.dumps(alerts, separators=(",", ":"))),
        "interval": interval,
        "records": total,
        "wchar": w1 - w0,
        "write_bytes": b1 - b0,
        "elapsed": elapsed,
        "commits": submitted + 1,
        "behind": behind,
        "skipped": skipped,
        "commit_ms_median": statistics.median(durations) * 1000,
        "commit_ms_max": max(durations) * 1000,
        "apply_p99_ms": percentile(apply_times, 99) * 1000,
        "take_ms": (statistics.median(take_times) * 1000, max(take_times) * 1000),
        "apply_p99_base_ms": percentile(base, 99) * 1000,
        "file_bytes": stats.file_bytes,
        "events": stats.events,
    }


def big_host_snapshot(seconds: int, rate: int, every: float = 5.0) -> dict[str, Any]:
    """The snapshot design: checkpoint.json (50 events a guest) written every 5 s."""
    directory = fresh_dir("snapshot-big")
    host = Host(keep_events=50)
    stream = records(10_000, seed=11)
    for _ in range(15):
        host.apply([next(stream) for _ in range(10_000)])
    total = seconds * rate
    per_save = int(rate * every)
    w0, b0 = io_counters()
    save_times = []
    for i in range(0, total, 1000):
        host.apply([next(stream) for _ in range(1000)])
        if (i + 1000) % per_save == 0:
            t0 = time.perf_counter()
            save_snapshot(directory, snapshot_doc(host))
            save_times.append(time.perf_counter() - t0)
    w1, b1 = io_counters()
    return {
        "wchar": w1 - w0,
        "write_bytes": b1 - b0,
        "saves": len(save_times),
        "save_s_median": statistics.median(save_times),
        "file_bytes": (directory / "checkpoint.json").stat().st_size,
    }


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


# -- 3. ten million events -------------------------------------------------------------------


def build_big_store(path: Path, guests: int, events: int) -> None:
    """A store of `guests` guests and `events` history events, written in bulk.

    Events are the simulated host's stream (200,000 records, every guest starting,
    changing and stopping in bursts as libvirt writes them) repeated in order with
    times spread over 90 days; rows go straight in with executemany (the store's
    own encoding), 16,384 at a time, the way commits would have written them.
    """
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    store, _ = Store.open(str(path))
    host = Host()
    host.attach(store)
    stream = records(guests, seed=3)
    sample: list[AuditRecord] = []
    while len(host.table.snapshot().guests) < guests or len(sample) < 200_000:
        batch = [next(stream) for _ in range(10_000)]
        host.apply(batch)
        sample.extend(batch)
        store.commit(**host.take())
    have = store.stats().events
    conn = store._conn
    assert conn is not None
    start = time.time() - 90 * 86400
    step = 90 * 86400 / events
    encoded = [encode_event(r) for r in sample[:200_000]]
    shapes = {d: s for s, d in conn.execute("SELECT sid, doc FROM shapes")}
    subjects: dict[Any, int] = {}
    for gid, node, uuid, vm in conn.execute("SELECT gid, node, uuid, vm FROM subjects"):
        subjects[(node, uuid, vm)] = gid
    for _tms, _serial, subject, _res, doc, _vals in encoded:
        if doc not in shapes:
            shapes[doc] = conn.execute("INSERT INTO shapes(doc) VALUES (?)", (doc,)).lastrowid
        if subject not in subjects:
            n, u, v = subject
            subjects[subject] = conn.execute(
                "INSERT INTO subjects(node, uuid, vm) VALUES (?, ?, ?)", (n, u, v)
            ).lastrowid
    next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0]
    conn.execute("DELETE FROM events")
    conn.execute("DELETE FROM spans")
    chunk = 1 << schema.BUCKET_BITS
    serial = 1000
    made = 0
    while made < events:
        rows = []
        first = next_id
        for _ in range(min(chunk, events - made)):
            tms, _, subject, res, doc, vals = encoded[made % len(encoded)]
            t = time_to_db(start + made * step)
            serial += 1
            rows.append((next_id, t, serial, subjects[subject], shapes[doc], res, vals))
            next_id += 1
            made += 1
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        lo, hi = rows[0][1], rows[-1][1]
        for b in range(first >> schema.BUCKET_BITS, ((next_id - 1) >> schema.BUCKET_BITS) + 1):
            conn.execute(
                "INSERT INTO spans VALUES (?, ?, ?) ON CONFLICT(b) DO UPDATE"
                " SET lo = min(lo, excluded.lo), hi = max(hi, excluded.hi)", (b, lo, hi),
            )  # fmt: skip
        conn.execute("COMMIT")
    # The store's next_id must follow the bulk rows.
    doc = json.loads(conn.execute("SELECT value FROM state WHERE name = 'store'").fetchone()[0])
    doc["next_id"] = next_id
    conn.execute("UPDATE state SET value = ? WHERE name = 'store'", (json.dumps(doc),))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    del have


def big_store(events: int, guests: int = 10_000) -> dict[str, Any]:
    path = OUT / f"store-{guests}-{events}"
    marker = path / "complete"
    if not marker.exists():
        t0 = time.perf_counter()
        build_big_store(path, guests, events)
        marker.write_text(f"built in {time.perf_counter() - t0:.0f} s\n")
    db = path / schema.DB_NAME
    size = db.stat().st_size
    # Restart to loaded, cold page cache is not reachable without root tricks: warm and cold-ish.
    opens = []
    for _ in range(3):
        t0 = time.perf_counter()
        store, loaded = Store.open(str(path))
        opens.append(time.perf_counter() - t0)
        assert loaded.origin == "store", loaded
        n_guests = len(loaded.guests)
        store.close()
    reader = HistoryReader.open(str(path))
    uuids = [u for (_, _, u, _) in reader.subjects()]
    rng = random.Random(9)
    picks = [uuids[rng.randrange(len(uuids))] for _ in range(20)]

    cpu: dict[str, list[float]] = {"history": [], "sessions": []}

    def timed(fn: Any, kind: str = "") -> tuple[float, Any]:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if kind:
            cpu[kind].append(time.process_time() - c0)
        return time.perf_counter() - t0, out

    # A first pass reads what the page cache does not hold from the disk (reported apart).
    first = []
    for uuid in picks:
        t, _ = timed(lambda u=uuid: list(reader.iter_events(EventQuery(uuid=u))))
        first.append(t)
    hist, sess, page = [], [], []
    counts = []
    for uuid in picks:
        t, evs = timed(lambda u=uuid: list(reader.iter_events(EventQuery(uuid=u))), "history")
        hist.append(t)
        counts.append(len(evs))
        t, _ = timed(
            lambda u=uuid: sessions(e.record for e in reader.iter_events(EventQuery(uuid=u))),
            "sessions",
        )
        sess.append(t)
    for _ in range(20):
        after = rng.randrange(events)
        t, _ = timed(lambda a=after: reader.events(EventQuery(limit=100, after=a)))
        page.append(t)
    newest = reader.events(EventQuery(limit=1, order="desc"))[0][0].record.time
    since_t, _ = timed(lambda: reader.events(EventQuery(limit=100, since=newest - 3600)))
    guest_page, _ = timed(lambda: reader.events(EventQuery(limit=100, uuid=picks[0], order="desc")))
    failed_t, _ = timed(lambda: reader.events(EventQuery(limit=100, result="failed")))
    count = reader.count()
    reader.close()
    return {
        "events": count,
        "guests": n_guests,
        "db_bytes": size,
        "bytes_per_event": size / count,
        "open_s": opens,
        "history_ms": (statistics.median(hist) * 1000, max(hist) * 1000),
        "history_first_ms": (statistics.median(first) * 1000, max(first) * 1000),
        "history_events": statistics.median(counts),
        "sessions_ms": (statistics.median(sess) * 1000, max(sess) * 1000),
        "page_ms": (statistics.median(page) * 1000, max(page) * 1000),
        "since_ms": since_t * 1000,
        "guest_page_ms": guest_page * 1000,
        "history_cpu_ms": statistics.median(cpu["history"]) * 1000,
        "sessions_cpu_ms": statistics.median(cpu["sessions"]) * 1000,
        "failed_ms": failed_t * 1000,
        "built": (path / "complete").read_text().strip(),
    }


# -- 4. restart of `monitord run` to READY ---------------------------------------------------


def monitord_cmd() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "monitord"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "monitord"]


def small_log(path: Path, lines: int = 1000) -> None:
    """An audit log of `lines` libvirt records (what the daemon reads after READY)."""
    fleet = Fleet(5, guests=50, virt="kvm", start_time=time.time() - 3600)
    events = fleet.events()
    path.write_bytes(b"".join(next(events).line for _ in range(lines)))


def proc_rss(pid: int) -> int:
    """Resident set size of a process, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def time_to_ready(
    state: Path,
    work: Path,
    prefix: Sequence[str] = (),
    timeout: float = 120.0,
    rss: list[int] | None = None,
) -> float:
    """Seconds from exec of `monitord run` to its READY=1 on a NOTIFY_SOCKET; then SIGTERM
    (with `rss`, 2 s after READY, its resident set size is appended to it first)."""
    import socket
    import subprocess

    sock_path = work / "notify.sock"
    sock_path.unlink(missing_ok=True)
    log = work / "audit.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
        env.pop("WATCHDOG_USEC", None)
        cmd = [
            *(prefix or monitord_cmd()), "run", "--audit-log", str(log), "--state-dir",
            str(state), "--listen", "127.0.0.1:0", "--log-level", "info",
        ]  # fmt: skip
        with open(work / "monitord.log", "ab") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
            try:
                sock.settimeout(1.0)
                ready = None
                while ready is None:
                    try:
                        msg = sock.recv(4096)
                    except TimeoutError:
                        if proc.poll() is not None or time.perf_counter() - t0 > timeout:
                            raise RuntimeError(f"no READY=1 (exit {proc.returncode})") from None
                        continue
                    if b"READY=1" in msg.split(b"\n"):
                        ready = time.perf_counter() - t0
                if rss is not None:
                    time.sleep(2.0)  # the log read, the first commit
                    rss.append(proc_rss(proc.pid))
                proc.terminate()
                if proc.wait(60) != 0:
                    raise RuntimeError(f"monitord run exited with {proc.returncode}")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return ready


def restart(cached: Path, runs: int = 5) -> dict[str, Any]:
    """`monitord run` restarted on a store (a copy): exec to READY=1, and its parts."""
    import pstats
    import tempfile

    work = fresh_dir("restart")
    small_log(work / "audit.log")
    # The fixed part: interpreter, imports, config, listener, an empty store.
    empty = [time_to_ready(work / f"empty-{i}", work) for i in range(3)]
    state = work / "state"
    shutil.copytree(cached, state)
    (state / "complete").unlink(missing_ok=True)
    reader = HistoryReader.open(str(state))
    n_events = reader.count()
    reader.close()
    db_bytes = (state / schema.DB_NAME).stat().st_size
    times = [time_to_ready(state, work) for _ in range(runs)]
    rss: list[int] = []
    time_to_ready(state, work, rss=rss)
    # The same start in this process, in its two parts: Store.open, then the stages' load.
    split: list[tuple[float, float]] = []
    for _ in range(3):
        d = Daemon(Config(state=StateConfig(dir=str(state)), alerts=AlertsConfig(journal=False)))
        t0 = time.perf_counter()
        store, loaded = Store.open(str(state))
        t1 = time.perf_counter()
        d.store = store
        d._load(loaded)
        t2 = time.perf_counter()
        assert loaded.origin == "store" and d.table.guests_tracked == len(loaded.guests)
        n_guests = d.table.guests_tracked
        store.close()
        split.append((t1 - t0, t2 - t1))
    # Where the time goes in the real process (cProfile, so slower than the runs above).
    with tempfile.NamedTemporaryFile(suffix=".prof", dir=work, delete=False) as f:
        prof = Path(f.name)
    profiled = time_to_ready(
        state, work, [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "monitord"]
    )
    st = pstats.Stats(str(prof))
    cumulative: dict[str, float] = {}
    wanted = {
        ("daemon.py", "_open_store"), ("store.py", "open"), ("store.py", "_quick_check"),
        ("store.py", "_read_state"), ("store.py", "_guest_doc"), ("daemon.py", "_load"),
        ("table.py", "restore"), ("guest.py", "from_json"), ("alerts/engine.py", "restore"),
        ("store.py", "_check_history_rows"), ("store.py", "_load_existing"),
        ("store.py", "_take_lock"), ("daemon.py", "run"), ("daemon.py", "_make_source"),
        ("server.py", "start"),
    }  # fmt: skip
    for (file, _line, func), row in st.stats.items():  # type: ignore[attr-defined]
        for suffix, name in wanted:
            if func == name and file.endswith(suffix) and "monitord" in file:
                cumulative[f"{suffix}:{name}"] = cumulative.get(f"{suffix}:{name}", 0.0) + row[3]
    return {
        "guests": n_guests,
        "events": n_events,
        "db_bytes": db_bytes,
        "ready_s": times,
        "rss": rss[0],
        "empty_s": empty,
        "split_s": split,
        "profiled_s": profiled,
        "profile": dict(sorted(cumulative.items(), key=lambda kv: -kv[1])),
        "prof_path": prof,
    }


def report_restart(events: int, guests: int = 10_000) -> None:
    cached = OUT / f"store-{guests}-{events}"
    assert (cached / "complete").exists(), "build it first: --only store"
    report_restart_of(cached, "4.")
    # The big host's store of part 2: written by commits and under 64 MiB
    # (store.FULL_CHECK_BYTES), so every one of its events is decoded at open.
    written = OUT / "store-big"
    if (written / schema.DB_NAME).exists():
        report_restart_of(written, "4b. The store part 2 wrote:")


def report_restart_of(cached: Path, title: str) -> None:
    r = restart(cached)
    print(f"### {title} `monitord run` restarted on {r['guests']:,} guests, "
          f"{r['events']:,} events ({r['db_bytes'] / MiB:.0f} MiB)\n")  # fmt: skip
    print("Exec of `monitord run --audit-log (1,000 records) --state-dir (a copy of the store) "
          "--listen 127.0.0.1:0` to `READY=1` on its NOTIFY_SOCKET, then SIGTERM.\n")  # fmt: skip
    ms = ", ".join(f"{t * 1000:.0f}" for t in r["ready_s"])
    print(f"- exec to READY=1: {ms} ms (median {statistics.median(r['ready_s']) * 1000:.0f} ms)")
    ms = ", ".join(f"{t * 1000:.0f}" for t in r["empty_s"])
    print(f"- the same with an empty state directory (interpreter, imports, listener): {ms} ms")
    print(f"- resident set size 2 s after READY (log read, first commit): "
          f"{r['rss'] / MiB:.0f} MiB")  # fmt: skip
    parts = "; ".join(f"{a * 1000:.0f} + {b * 1000:.0f} ms" for a, b in r["split_s"])
    print(f"- in process, `Store.open` + loading the stages (`Daemon._load`): {parts}")
    print(f"- under cProfile: {r['profiled_s'] * 1000:.0f} ms to READY; cumulative seconds "
          f"(the whole run, READY then SIGTERM):\n")  # fmt: skip
    for name, secs in r["profile"].items():
        print(f"  - `{name}`: {secs * 1000:.0f} ms")
    print()


def report_small(quick: bool) -> None:
    after = 200 if quick else 1200
    snap = small_host_snapshot(after // 4)
    print("### 1. Small host: 500 guests with 60 records of history each, a record every 0.5 s\n")
    print("| design | written per record (wchar) | to block layer | commit median | file |")
    print("|---|---|---|---|---|")
    for interval in (0.5, 1.0, 2.0, 5.0):
        r = small_host(interval, after)
        cells = [
            f"store, commit every {interval:g} s",
            f"{r['wchar_per_record'] / KiB:.1f} KiB",
            f"{r['write_bytes_per_record'] / KiB:.1f} KiB",
            f"{r['commit_ms_median']:.2f} ms",
            f"{r['file_bytes'] / MiB:.1f} MiB",
        ]
        print("| " + " | ".join(cells) + " |")
    cells = [
        "checkpoint.json every 5 s",
        f"{snap['wchar_per_record'] / KiB:.1f} KiB",
        f"{snap['write_bytes_per_record'] / KiB:.1f} KiB",
        "",
        f"{snap['file_bytes'] / MiB:.1f} MiB",
    ]
    print("| " + " | ".join(cells) + " |\n")


def report_big(quick: bool) -> None:
    seconds = 10 if quick else 60
    print(f"### 2. Big host: 10,000 guests, 5,000 records/s for {seconds} s (simulated time)\n")
    snap = big_host_snapshot(seconds, 5000)
    print(
        "| design | bytes written (wchar) | to block layer | vs snapshot "
        "| commits | commit median / max | apply p99 (no commits) "
        "| commit batch taken (ingestion thread) median / max | file |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for interval in (1.0, 2.0, 5.0):
        r = big_host(interval, seconds, 5000)
        cells = [
            f"store, commit every {interval:g} s",
            f"{r['wchar'] / MiB:.0f} MiB",
            f"{r['write_bytes'] / MiB:.0f} MiB",
            f"{r['wchar'] / snap['wchar']:.3f}",
            f"{r['commits']} ({r['skipped']} skipped: busy; {r['behind']} batches late)",
            f"{r['commit_ms_median']:.0f} / {r['commit_ms_max']:.0f} ms",
            f"{r['apply_p99_ms']:.2f} ms ({r['apply_p99_base_ms']:.2f} ms)",
            f"{r['take_ms'][0]:.1f} / {r['take_ms'][1]:.1f} ms",
            f"{r['file_bytes'] / MiB:.0f} MiB",
        ]
        print("| " + " | ".join(cells) + " |")
        last = r
    cells = [
        "checkpoint.json every 5 s",
        f"{snap['wchar'] / MiB:.0f} MiB",
        f"{snap['write_bytes'] / MiB:.0f} MiB",
        "1",
        f"{snap['saves']} saves",
        f"{snap['save_s_median']:.1f} s each",
        "",
        "",
        f"{snap['file_bytes'] / MiB:.0f} MiB",
    ]
    print("| " + " | ".join(cells) + " |\n")
    print(f"At the end, {last['alerts_firing']:,} alerts were firing: the alert engine's "
          f"document is {last['alerts_bytes'] / KiB:.0f} KiB, rewritten by each commit "
          "in which it changed.\n")  # fmt: skip


def report_store(events: int) -> None:
    r = big_store(events)
    print(f"### 3. {r['guests']:,} guests, {r['events']:,} history events\n")
    per_event = r["bytes_per_event"]
    print(f"- store: {r['db_bytes'] / MiB:.0f} MiB, **{per_event:.0f} bytes per event**")
    print(f"  ({r['built']})")
    opens = ", ".join(f"{t * 1000:.0f} ms" for t in r["open_s"])
    print(f"- `Store.open` (checks, {r['guests']:,} guest rows read; the whole start: part 4): "
          f"{opens}")  # fmt: skip
    h, s, p = r["history_ms"], r["sessions_ms"], r["page_ms"]
    n = r["history_events"]
    print(f"- `history` of one guest (~{n:.0f} events; 20 guests): median {h[0]:.1f} ms, "
          f"max {h[1]:.1f} ms")  # fmt: skip
    f = r["history_first_ms"]
    print(f"  (CPU time median {r['history_cpu_ms']:.1f} ms; the first read of those guests, "
          f"partly from disk: median {f[0]:.1f} ms, max {f[1]:.1f} ms)")  # fmt: skip
    print(f"- `sessions` of one guest: median {s[0]:.1f} ms, max {s[1]:.1f} ms "
          f"(CPU time median {r['sessions_cpu_ms']:.1f} ms)")  # fmt: skip
    print(f"- events page of 100 at a random cursor (20 pages): median {p[0]:.2f} ms, "
          f"max {p[1]:.2f} ms")  # fmt: skip
    print(f"- events page of 100 `since` an hour before the newest: {r['since_ms']:.2f} ms; "
          f"`result=failed`: {r['failed_ms']:.2f} ms; one guest's newest 100: "
          f"{r['guest_page_ms']:.2f} ms\n")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (no 10M store)")
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--only", choices=("small", "big", "store", "restart"), help="run one part")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    print("## State store benchmark (`bench/bench_store.py`)\n")
    print(f"Machine: {machine()}.\n")
    if args.only in (None, "small"):
        report_small(args.quick)
        sys.stdout.flush()
    if args.only in (None, "big"):
        report_big(args.quick)
        sys.stdout.flush()
    if args.only in (None, "store") and not args.quick:
        report_store(args.events)
        sys.stdout.flush()
    if args.only in (None, "restart") and not args.quick:
        report_restart(args.events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
