"""The daemon's own counters: what it read, skipped, reopened, checkpointed and alerted.

One `Telemetry` object is shared by the stages; the exporter reads it at
scrape time and the checkpoint stores it, so counters survive restarts.
Only the ingestion thread writes it (alert workers use their own lock).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from monitord.audit.parser import ParseStats

# Seconds between a record's own time and the moment it was applied.
LAG_BUCKETS: Final[tuple[float, ...]] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
)  # fmt: skip


@dataclass
class Histogram:
    """A cumulative-bucket histogram that can be checkpointed (prometheus-client's cannot)."""

    buckets: tuple[float, ...] = LAG_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Return `(le, cumulative count)` pairs, `+Inf` last, as the text format wants."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            out.append((repr(float(bound)), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets), "counts": self.counts, "sum": self.total}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Histogram:
        buckets = tuple(float(b) for b in doc.get("buckets", LAG_BUCKETS))
        counts = [int(c) for c in doc.get("counts", [])]
        if buckets != LAG_BUCKETS or len(counts) != len(LAG_BUCKETS) + 1:
            return cls()  # bucket layout changed between versions: start the histogram over
        return cls(counts=counts, total=float(doc.get("sum", 0.0)), count=sum(counts))


@dataclass
class Telemetry:
    """Counters and gauges of the daemon itself (CONTRACT.md, "Daemon self-metrics")."""

    source: str = "file"
    parse: ParseStats = field(default_factory=ParseStats)
    reopens: Counter[str] = field(default_factory=Counter)
    last_record_time: float | None = None
    lag: Histogram = field(default_factory=Histogram)
    checkpoint_time: float | None = None
    checkpoint_errors: int = 0
    # (sink, outcome) -> count; written by alert workers under `alerts_lock`.
    alerts: Counter[tuple[str, str]] = field(default_factory=Counter)
    alert_queue: dict[str, int] = field(default_factory=dict)
    alerts_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Records dropped before parsing (audisp queue full).
    dropped: Counter[str] = field(default_factory=Counter)

    def count_alert(self, sink: str, outcome: str, n: int = 1) -> None:
        with self.alerts_lock:
            self.alerts[(sink, outcome)] += n

    def after_fork(self) -> None:
        """In a forked child: a lock held by a thread that did not survive the fork is void."""
        self.alerts_lock = threading.Lock()

    def to_json(self) -> dict[str, Any]:
        with self.alerts_lock:
            alerts = [[sink, outcome, n] for (sink, outcome), n in self.alerts.items()]
        return {
            "source": self.source,
            "parse": self.parse.to_json(),
            "reopens": dict(self.reopens),
            "last_record_time": self.last_record_time,
            "lag": self.lag.to_json(),
            "checkpoint_errors": self.checkpoint_errors,
            "alerts": alerts,
            "dropped": dict(self.dropped),
        }

    def restore(self, doc: dict[str, Any]) -> None:
        """Load counters from a checkpoint into this object (keeping identity for sharers)."""
        self.parse.__dict__.update(ParseStats.from_json(doc.get("parse") or {}).__dict__)
        self.reopens = Counter(doc.get("reopens") or {})
        self.last_record_time = doc.get("last_record_time")
        self.lag = Histogram.from_json(doc.get("lag") or {})
        self.checkpoint_errors = int(doc.get("checkpoint_errors", 0))
        with self.alerts_lock:
            self.alerts = Counter({(str(s), str(o)): int(n) for s, o, n in doc.get("alerts") or []})
        self.dropped = Counter(doc.get("dropped") or {})
