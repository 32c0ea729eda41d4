"""Benchmarks of the guest table, the exporter and `monitord replay`.

    .venv/bin/python bench/bench_state.py [--lines 1000000] [--quick]

1. `monitord replay` over a 1,000,000-line mixed audit.log vs `aureport --virt --input F`
   on the same file, in the same run (wall time, best of 5, interleaved).
2. /metrics scrape time over HTTP and process RSS with 10,000 tracked guests.
3. Churn: 200,000 guests started and destroyed over simulated time, eviction on:
   RSS sampled along the way (it should stay flat).
Prints a Markdown report (bench/results/state.md is a copy of one run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitord.audit.parser import ACCELERATOR, StreamParser  # noqa: E402
from monitord.audit.record import AuditRecord  # noqa: E402
from monitord.config import HttpConfig, StateConfig  # noqa: E402
from monitord.serve.exporter import make_registry  # noqa: E402
from monitord.serve.server import WebServer  # noqa: E402
from monitord.state.table import GuestTable  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> str:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    # The interpreter's prefix tells Debian's python3 (/usr, what ./bootstrap uses) from a
    # plain source build, which runs the pure-Python code ~25% slower.
    python = f"Python {platform.python_version()} ({sys.base_prefix})"
    return f"{os.cpu_count()} cores, {model}, {python}"


def write_mixed_log(path: Path, lines: int, seed: int = 1) -> None:
    """The shared simulator's mixed log (5% libvirt records in realistic auditd noise)."""
    from monitord.commands.simulate import mixed_log, write_lines

    with path.open("wb") as out:
        write_lines(out, mixed_log(seed, lines))


def bench_replay(lines: int) -> list[str]:
    out = ["## `monitord replay` vs `aureport --virt`", ""]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "audit.log"
        t0 = time.perf_counter()
        write_mixed_log(log, lines)
        gen = time.perf_counter() - t0
        size = log.stat().st_size / 2**20
        # Bytecode as an installed package has it (pip compiles it; this tree may not).
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "monitord")],
                       check=True, capture_output=True)  # fmt: skip
        monitord = [str(ROOT / ".venv/bin/monitord"), "replay", "--json", str(log)]
        aureport = shutil.which("aureport") or "/usr/sbin/aureport"
        pure = {**os.environ, "MONITORD_PURE_PYTHON": "1"}
        rows = [
            ("`monitord replay --json F` (one process, C leaf)", monitord, None),
            ("same, `MONITORD_PURE_PYTHON=1`", monitord, pure),
            ("`monitord replay --json /dev/null` (start-up and exit alone)",
             [*monitord[:-1], "/dev/null"], None),
            ("`aureport --virt --input F`",
             [aureport, "--virt", "--input", str(log)] if Path(aureport).exists() else None,
             None),
        ]  # fmt: skip
        times: dict[str, float] = {}
        for _ in range(5):  # interleaved, so a busy moment hits every row alike
            for label, cmd, env in rows:
                if cmd is not None:
                    times[label] = min(times.get(label, 99.0), timed(cmd, env))
        out.append(f"Log: {lines:,} lines, {size:.0f} MiB, simulate.mixed_log seed 1 "
                   f"(generated in {gen:.1f} s). Wall time, best of 5 (interleaved). "
                   f"Parser: {ACCELERATOR}. Load {os.getloadavg()[0]:.2f} after.")  # fmt: skip
        out.append("")
        out.append("| command | seconds | lines/s |")
        out.append("|---|---|---|")
        for label, _, _ in rows:
            t = times.get(label)
            out.append(f"| {label} | {t:.3f} | {lines / t:,.0f} |" if t else f"| {label} | n/a | |")
        theirs = times.get(rows[-1][0])
        if theirs:
            ours, ours_pure = times[rows[0][0]], times[rows[1][0]]
            out.append("")
            out.append(f"monitord is **{theirs / ours:.2f}x** as fast as aureport (target >= 2x), "
                       f"{theirs / ours_pure:.2f}x without the C leaf.")  # fmt: skip
    return out


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env)
    return time.perf_counter() - t0


def start_records(i: int, t: float) -> list[str]:
    """The lines libvirt writes for one guest start (13 records), as docs/FORMATS.md orders them."""
    u = f"{i:08x}-0000-4000-8000-{i:012x}"
    vm = f'"guest-{i:06d}"'
    head = "type={} msg=audit({:.3f}:{}): pid=1205 uid=0 auid=4294967295 ses=4294967295 msg='"
    tail = ' exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? res=success\''
    cg = f'cgroup="/sys/fs/cgroup/machine.slice/machine-qemu\\x2d{i}\\x2dguest.scope/"'
    bodies = [
        ("VIRT_RESOURCE", f"virt=kvm resrc=cgroup reason=deny vm={vm} uuid={u} {cg} class=all"),
        ("VIRT_RESOURCE", f"virt=kvm resrc=cgroup reason=allow vm={vm} uuid={u} {cg} "
         "class=major category=pty maj=88 acl=rw"),
        ("VIRT_MACHINE_ID", f"virt=kvm vm={vm} uuid={u} vm-ctx=+64055:+64055 "
         "img-ctx=+64055:+64055 model=dac"),
        ("VIRT_RESOURCE", f'virt=kvm resrc=disk reason=start vm={vm} uuid={u} old-disk="?" '
         f'new-disk="/var/lib/libvirt/images/guest-{i:06d}.qcow2"'),
        ("VIRT_RESOURCE", f'virt=kvm resrc=disk reason=start vm={vm} uuid={u} old-disk="?" '
         f'new-disk="/var/lib/libvirt/images/guest-{i:06d}-data.qcow2"'),
        ("VIRT_RESOURCE", f'virt=kvm resrc=net reason=start vm={vm} uuid={u} old-net="?" '
         f'new-net="52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"'),
        ("VIRT_RESOURCE", f'virt=kvm resrc=chardev reason=start vm={vm} uuid={u} '
         f'old-chardev="?" new-chardev="/run/libvirt/qemu/channel/{i}/org.qemu.guest_agent.0"'),
        ("VIRT_RESOURCE", f'virt=kvm resrc=rng reason=start vm={vm} uuid={u} old-rng="?" '
         'new-rng="/dev/urandom"'),
        ("VIRT_RESOURCE", f"virt=kvm resrc=mem reason=start vm={vm} uuid={u} old-mem=0 "
         "new-mem=2097152"),
        ("VIRT_RESOURCE", f"virt=kvm resrc=vcpu reason=start vm={vm} uuid={u} old-vcpu=0 "
         "new-vcpu=2"),
        ("VIRT_CONTROL", f"virt=kvm op=start reason=booted vm={vm} uuid={u} vm-pid={4000 + i}"),
        ("VIRT_RESOURCE", f'virt=kvm resrc=net reason=open vm={vm} uuid={u} '
         'net=52:54:00:00:00:01 path="/dev/net/tun" rdev=0A:C8'),
    ]  # fmt: skip
    return [head.format(k, t + n * 0.001, i * 20 + n) + b + tail for n, (k, b) in enumerate(bodies)]


# As the daemon parses: StreamParser, through the C accelerator when it is built (unless
# MONITORD_PURE_PYTHON=1), whose records share their strings and cache nothing in Python.
PARSER = StreamParser()


def records(lines: list[str]) -> Iterator[AuditRecord]:
    parsed = PARSER.feed(("\n".join(lines) + "\n").encode())
    assert len(parsed) == len(lines)
    yield from parsed


# The HTTP client runs in its own process: reading 15 MiB answers in the measured process
# would add the client's memory to the daemon's RSS.
CLIENT = """
import http.client, json, sys, time
host, port, plan = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
out = []
for path, accept, n in plan:
    times, size = [], 0
    for _ in range(n):
        t = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        size = len(conn.getresponse().read())
        conn.close()
        times.append(time.perf_counter() - t)
    out.append([times, size])
print(json.dumps(out))
"""


def client(host: str, port: int, plan: list[tuple[str, str | None, int]]) -> list[Any]:
    """Run the requests of `plan` (path, Accept, count) from another process: [[times, size]]."""
    cmd = [sys.executable, "-c", CLIENT, host, str(port), json.dumps(plan)]
    result: list[Any] = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
    return result


def bench_scrape(guests: int) -> list[str]:
    base = rss_mib()
    table = GuestTable(StateConfig(max_guests=guests))
    t0 = time.perf_counter()
    for i in range(guests):
        for r in records(start_records(i, 1_700_000_000.0 + i)):
            table.apply(r)
    build = time.perf_counter() - t0
    gc.collect()
    rss_table = rss_mib()
    web = WebServer(
        HttpConfig(listen="127.0.0.1:0"),
        make_registry(table, "bench"),
        table,
        lambda: (True, ""),
    )
    web.start()
    host, port = web.address
    om = "application/openmetrics-text; version=1.0.0"
    # The first scrape renders every guest's label prefix and timestamps once.
    (first, size), (times, _), (om_times, _) = client(
        host, port, [("/metrics", None, 1), ("/metrics", None, 20), ("/metrics", om, 5)]
    )
    rss_scrape = rss_mib()
    # After 1% of the guests changed, the next scrape re-renders only those.
    for i in range(0, guests, 100):
        u = f"{i:08x}-0000-4000-8000-{i:012x}"
        line = (
            f"type=VIRT_RESOURCE msg=audit(1800000000.000:1): pid=1 uid=0 auid=1 ses=1 "
            f'msg=\'virt=kvm resrc=mem reason=update vm="guest-{i:06d}" uuid={u} '
            'old-mem=2097152 new-mem=4194304 exe="/usr/sbin/libvirtd" res=success\''
        )
        table.apply(next(records([line])))
    (changed, _), (api, api_size), (one, _) = client(
        host, port,
        [("/metrics", None, 1), ("/api/v1/guests", None, 3),
         ("/api/v1/guests/00000007-0000-4000-8000-000000000007", None, 5)],
    )  # fmt: skip
    rss = rss_mib()
    web.stop()
    ms = statistics.median
    return [
        f"## /metrics with {guests:,} tracked guests",
        "",
        f"Table built from {guests * 12:,} records in {build:.1f} s (12 records a guest, "
        f"all kept as events; parsed by StreamParser, {ACCELERATOR} path, as the daemon "
        "does). Scrapes over HTTP on loopback, from a client in another process.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| first scrape (every guest's prefix rendered) | {first[0] * 1000:.0f} ms "
        f"({size / 2**20:.1f} MiB) |",
        f"| scrape, text format (median of 20) | {ms(times) * 1000:.0f} ms |",
        f"| scrape, OpenMetrics (median of 5) | {ms(om_times) * 1000:.0f} ms |",
        f"| scrape after 1% of guests changed | {changed[0] * 1000:.0f} ms |",
        f"| GET /api/v1/guests (median of 3) | {ms(api) * 1000:.0f} ms "
        f"({api_size / 2**20:.1f} MiB) |",
        f"| GET /api/v1/guests/UUID (median of 5) | {ms(one) * 1000:.1f} ms |",
        f"| RSS: interpreter and modules | {base:.0f} MiB |",
        f"| RSS: table built | {rss_table:.0f} MiB |",
        f"| RSS: after 26 scrapes | {rss_scrape:.0f} MiB |",
        f"| RSS: after the scrapes and 3 API answers | {rss:.0f} MiB |",
    ]


def bench_churn(total: int, max_guests: int) -> list[str]:
    table = GuestTable(StateConfig(max_guests=max_guests, forget_stopped_after=3600.0))
    curve: list[tuple[int, int, float, int]] = []
    t = 1_700_000_000.0
    t0 = time.perf_counter()
    step = total // 10
    for i in range(total):
        lines = start_records(i, t)
        u = f"{i:08x}-0000-4000-8000-{i:012x}"
        for r in records(lines):
            table.apply(r)
        # Each guest runs ~10 minutes of simulated time; ~1 new guest every 2 s.
        if i >= 300:
            j = i - 300
            uj = f"{j:08x}-0000-4000-8000-{j:012x}"
            stop = (f"type=VIRT_CONTROL msg=audit({t:.3f}:{i}): pid=1 uid=0 auid=1 ses=1 "
                    f"msg='virt=kvm op=stop reason=destroyed vm=\"guest-{j:06d}\" uuid={uj} "
                    "vm-pid=0 exe=\"/usr/sbin/libvirtd\" res=success'")  # fmt: skip
            table.apply(next(records([stop])))
        del u
        t += 2.0
        if i % 1000 == 0:
            table.expire(t)
        if (i + 1) % step == 0:
            curve.append((i + 1, table.guests_tracked, rss_mib(), table.guests_evicted))
    elapsed = time.perf_counter() - t0
    out = [
        f"## Churn: {total:,} guests started and destroyed, eviction on",
        "",
        f"One guest started every 2 s of record time, each destroyed 300 guests later; "
        f"forget_stopped_after=1h, max_guests={max_guests:,}; expire() every 1000 guests. "
        f"{total * 13:,} records in {elapsed:.0f} s.",
        "",
        "| guests so far | tracked | evicted | RSS MiB |",
        "|---|---|---|---|",
    ]
    out += [f"| {n:,} | {tracked:,} | {ev:,} | {rss:.0f} |" for n, tracked, rss, ev in curve]
    return out


# The scrape part again, as a daemon without the C accelerator parses.
PURE: Final = {"MONITORD_PURE_PYTHON": "1"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--guests", type=int, default=10_000)
    ap.add_argument("--churn", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--only", choices=("replay", "scrape", "churn"))
    args = ap.parse_args()
    if args.quick:
        args.lines, args.guests, args.churn = 50_000, 1_000, 5_000
    report = [f"# Guest state benchmarks\n\nMachine: {machine()}.\n"]
    # Each part in its own process so RSS numbers do not mix.
    if args.only is None:
        for part, env in (("replay", {}), ("scrape", {}), ("scrape", PURE), ("churn", {})):
            cmd = [sys.executable, __file__, "--only", part, "--lines", str(args.lines),
                   "--guests", str(args.guests), "--churn", str(args.churn)]  # fmt: skip
            if env:
                report.append("With MONITORD_PURE_PYTHON=1 (the daemon without the C "
                              "accelerator):\n")  # fmt: skip
            run = subprocess.run(
                cmd, check=True, capture_output=True, text=True, env={**os.environ, **env}
            )
            report.append(run.stdout)
        print("\n".join(report))
        return 0
    if args.only == "replay":
        print("\n".join(bench_replay(args.lines)))
    elif args.only == "scrape":
        print("\n".join(bench_scrape(args.guests)))
    else:
        print("\n".join(bench_churn(args.churn, max_guests=args.guests)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
