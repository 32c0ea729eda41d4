"""`monitord sessions`: each run of a guest (start to stop) from the recorded history.

Reads the store, a running daemon or log files, as `monitord history` does
(monitord/commands/history.py); the runs are derived by monitord.state.sessions.
A run is listed when it was under way at some time between `--since` and
`--until`; it is always derived from the guest's whole history, so a run that
started before `--since` keeps its start.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from monitord.commands.guesttable import human_bytes, table
from monitord.commands.history import HistoryArgs, when
from monitord.state.sessions import Session, SessionBuilder

END_TEXT = {"stopped": "stopped", "running": "running", "no_record": "no record",
            "failed": "failed"}  # fmt: skip


def human_duration(seconds: float | None) -> str:
    """`45s`, `12m 03s`, `3h 05m`, `2d 4h`."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.3f}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def resources(r: dict[str, Any]) -> str:
    parts = []
    if r.get("vcpus") is not None:
        parts.append(f"{r['vcpus']} vCPU")
    if r.get("memory_bytes") is not None:
        parts.append(human_bytes(r["memory_bytes"]))
    for key, noun in (("disks", "disk"), ("nics", "nic"), ("hostdevs", "hostdev")):
        n = len(r.get(key) or ())
        if n:
            parts.append(f"{n} {noun}{'s' if n > 1 else ''}")
    return ", ".join(parts) or "-"


def render(sessions: list[Session], now: float) -> str:
    rows = []
    for s in sessions:
        name = s.name or s.uuid or "?"
        if s.node:
            name = f"{name}@{s.node}"
        stop = when(s.stop)
        if s.end == "no_record":
            stop = "<= " + stop
        duration = human_duration(s.duration)
        if s.end == "running" and s.start is not None:
            duration = human_duration(max(0.0, now - s.start)) + " so far"
        reasons = f"{s.start_reason or '-'} / {s.stop_reason or '-'}"
        rows.append((
            name, when(s.start), stop, duration, END_TEXT.get(s.end, s.end), reasons,
            resources(s.resources), str(len(s.changes)), str(len(s.failures)),
        ))  # fmt: skip
    columns = ("GUEST", "START", "STOP", "DURATION", "END", "REASONS", "RESOURCES", "CHANGES",
               "FAILURES")  # fmt: skip
    n = len(sessions)
    return table(columns, rows) + f"{n} session{'s' if n != 1 else ''}\n"


def main(args: argparse.Namespace) -> int:
    """`monitord sessions`."""
    h = HistoryArgs(args)
    # A run is made of all its records: read the guest's whole history, then pick the runs.
    builder = SessionBuilder()
    for record in h.all_records():
        builder.feed(record)
    found = [s for s in builder.finish() if s.overlaps(h.since, h.until)]
    out = sys.stdout
    if args.json:
        json.dump({"sessions": [s.to_json() for s in found]}, out, indent=1)
        out.write("\n")
    else:
        out.write(render(found, h.now))
    out.flush()
    return 0
