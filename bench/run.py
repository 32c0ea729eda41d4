"""Run every benchmark, then gather bench/results/*.md into bench/RESULTS.md.

Usage: `./bootstrap bench [NAME ...]` or `.venv/bin/python bench/run.py [NAME ...]`,
where NAME is one of parse, follow, state, alerts, journal, idle, scrape_storm, store
(default: all).
Each run's raw report is kept in bench/out/NAME.md; bench/results/NAME.md is the
curated record (numbers, machine, verdicts) that RESULTS.md gathers.
`--collect` only rebuilds RESULTS.md from the results already recorded.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
OUT = BENCH / "out"
ORDER = ("parse", "follow", "state", "alerts", "journal", "idle", "scrape_storm", "store")
# Sections of results/ that no benchmark here writes.
RECORDS = ("readme_summary", "debian_package")
ISSUE = {
    "parse": 2,
    "follow": 3,
    "state": 4,
    "alerts": 5,
    "journal": 7,
    "idle": 12,
    "scrape_storm": 14,
    "store": 13,
}


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().split("\n"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpuinfo = Path("/proc/cpuinfo").read_text().split("\n")
    cores = sum(1 for ln in cpuinfo if ln.startswith("processor"))
    system = f"{platform.system()} {platform.release()}"
    python = f"Python {platform.python_version()} ({sys.base_prefix})"
    return f"{cores} cores, {model}, {system}, {python}"


# The interpreter ./bootstrap builds the venv from. Pure-Python speed depends on its build:
# Debian's python3 (PGO, LTO, libpython linked in) ran `monitord parse` ~25% faster than
# pyenv's default build of 3.11.7 (--enable-shared, no PGO) on the same machine.
DEBIAN_PREFIX: Final = "/usr"


def warn_interpreter() -> None:
    if sys.base_prefix != DEBIAN_PREFIX:
        print(
            f"bench: this venv runs {sys.base_prefix}'s Python {platform.python_version()}, not "
            "Debian's /usr/bin/python3 that ./bootstrap uses: pure-Python rows are not comparable "
            "(recreate .venv with /usr/bin/python3 -m venv)",
            file=sys.stderr,
        )


def collect() -> None:
    parts = [
        "# Benchmark results\n",
        "Each section is written by its benchmark (`bench/bench_NAME.py`), which measures",
        "monitord against the baseline its issue names, in the same run on the same input.",
        "Run them all with `./bootstrap bench`, one with `./bootstrap bench NAME`.\n",
        f"Last collected on {time.strftime('%Y-%m-%d')} on: {machine()}.\n",
    ]
    # Results without a benchmark of their own (written by hand or by a test) go where they
    # were; any other file of results/ at the end: collecting never drops a section.
    names = [*ORDER[:5], *RECORDS, *ORDER[5:]]
    names += sorted(p.stem for p in RESULTS.glob("*.md") if p.stem not in names)
    for name in names:
        path = RESULTS / f"{name}.md"
        if not path.exists():
            parts.append(f"## {name} (issue {ISSUE[name]})\n\nNot run yet: bench/bench_{name}.py\n")
            continue
        text = path.read_text().strip()
        # Demote each file's headings one level under its section.
        lines = [("#" + ln if ln.startswith("#") else ln) for ln in text.split("\n")]
        parts.append("\n".join(lines) + "\n")
    (BENCH / "RESULTS.md").write_text("\n".join(parts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=", ".join(ORDER))
    ap.add_argument("--collect", action="store_true", help="only rebuild RESULTS.md")
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in ORDER]
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(ORDER)})")
    failed = []
    if not args.collect:
        warn_interpreter()
        for name in args.names or ORDER:
            script = BENCH / f"bench_{name}.py"
            print(f"== {script.name}", flush=True)
            # Raw reports land in bench/out/ (not versioned); results/NAME.md is the curated
            # record with verdicts, updated from them when numbers change.
            OUT.mkdir(exist_ok=True)
            with open(OUT / f"{name}.md", "w") as report:
                proc = subprocess.Popen(
                    [sys.executable, str(script)], stdout=subprocess.PIPE, text=True
                )
                assert proc.stdout is not None
                for line in proc.stdout:
                    sys.stdout.write(line)
                    report.write(line)
                if proc.wait() != 0:
                    failed.append(name)
    collect()
    print(f"wrote {BENCH / 'RESULTS.md'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
