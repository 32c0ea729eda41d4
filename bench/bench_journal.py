"""Journal source throughput: a 1,000,000-entry journal (5% VIRT) vs journalctl on the same files.

Builds real journal files with systemd-journal-remote from the simulator's
audit stream (every line becomes the entry journald writes for it, see
tests/journalfiles.py), then times in the same run:

- `JournalSource` reading the whole journal (start=beginning) to the end;
- `journalctl --directory D _TRANSPORT=audit -o export > /dev/null`;
- the same journalctl with the source's VIRT type matches (equal work).

    .venv/bin/python bench/bench_journal.py [--entries 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitord.audit.parser import ParseStats  # noqa: E402
from monitord.commands.simulate import mixed_log  # noqa: E402
from monitord.config import SourceConfig  # noqa: E402
from monitord.sources.journal import JournalSource  # noqa: E402
from tests.journalfiles import Host, audit_entry, write_journal  # noqa: E402

JOURNALCTL = shutil.which("journalctl") or "/usr/bin/journalctl"


def build(directory: Path, entries: int, seed: int) -> float:
    host = Host()
    lines = (b.decode("utf-8", "surrogateescape").rstrip("\n") for b in mixed_log(seed, entries))
    started = time.perf_counter()
    write_journal(directory / "bench.journal", (audit_entry(line, host) for line in lines))
    return time.perf_counter() - started


def read_source(directory: Path) -> tuple[float, ParseStats, int]:
    config = SourceConfig(kind="journal", journal_dir=str(directory), start="beginning")
    src = JournalSource(config)
    stats = src.counters.parse
    started = time.perf_counter()
    src.open(None)
    n = 0
    while not src.caught_up:
        n += len(src.poll(timeout=0))
    elapsed = time.perf_counter() - started
    src.close()
    return elapsed, stats, n


def run_journalctl(directory: Path, matches: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [JOURNALCTL, "--directory", str(directory), "-o", "export", *matches],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="build into (or reuse) this directory")
    args = ap.parse_args()

    directory = args.keep or Path(tempfile.mkdtemp(prefix="monitord-bench-journal-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        if not any(directory.glob("*.journal")):
            secs = build(directory, args.entries, args.seed)
            print(f"built {args.entries} entries in {secs:.1f} s (systemd-journal-remote)")
        size = sum(f.stat().st_size for f in directory.glob("*.journal"))
        files = len(list(directory.glob("*.journal")))
        print(f"journal: {files} file(s), {size / 2**20:.0f} MiB")

        t_src, stats, records = read_source(directory)
        virt = [f"_AUDIT_TYPE={n}" for n in range(2500, 2600)]
        t_all = run_journalctl(directory, ["_TRANSPORT=audit"])
        t_virt = run_journalctl(directory, ["_TRANSPORT=audit", *virt])

        print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
        print(
            f"JournalSource: {records} records from {stats.lines} VIRT entries in {t_src:.2f} s"
            f" = {records / t_src:,.0f} records/s, {stats.lines / t_src:,.0f} VIRT entries/s,"
            f" {args.entries / t_src:,.0f} journal entries/s"
        )
        print(
            f"journalctl _TRANSPORT=audit -o export: {t_all:.2f} s"
            f" = {args.entries / t_all:,.0f} entries/s"
        )
        print(
            f"journalctl _TRANSPORT=audit + VIRT types -o export: {t_virt:.2f} s"
            f" = {stats.lines / t_virt:,.0f} VIRT entries/s"
        )
        print(f"errors: {dict(stats.errors)} ignored: {dict(stats.ignored)}")
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
