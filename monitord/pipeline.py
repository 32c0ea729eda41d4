"""Apply parsed records to the guest table and the alert engine, in log order.

The pipeline also owns what it measures on the way: the newest record time
and how late live records arrive (its self-metrics, saved with the state), and
keeps the records applied since the state store's last commit, which become
the history (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from monitord.audit.record import AuditRecord

if TYPE_CHECKING:  # prometheus-client is imported at scrape time only (replay never scrapes)
    from prometheus_client.metrics_core import Metric

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
        return {"buckets": list(self.buckets), "counts": list(self.counts), "sum": self.total}

    def restore(self, doc: Mapping[str, Any]) -> None:
        """Load a `to_json` document into this histogram; another bucket layout starts over."""
        buckets = tuple(float(b) for b in doc.get("buckets", LAG_BUCKETS))
        counts = [int(c) for c in doc.get("counts", [])]
        total = float(doc.get("sum", 0.0))
        if buckets != self.buckets or len(counts) != len(self.buckets) + 1:
            counts, total = [0] * (len(self.buckets) + 1), 0.0  # layout changed between versions
        self.counts, self.total, self.count = counts, total, sum(counts)


class RecordConsumer(Protocol):
    """The guest table: takes every libvirt record in log order."""

    def apply_many(self, records: Sequence[AuditRecord]) -> None: ...


class AlertObserver(Protocol):
    """The alert engine: sees every record; `live` is False while catching up on old log content."""

    def observe(self, record: AuditRecord, live: bool) -> None: ...


class Pipeline:
    """Records -> state and alerts; the one place that order is decided."""

    def __init__(
        self,
        table: RecordConsumer,
        alerts: AlertObserver | None = None,
        clock: Callable[[], float] = time.time,
        keep_applied: Callable[[AuditRecord], object] | None = None,
    ) -> None:
        self.table = table
        self.alerts = alerts
        self.clock = clock
        self.last_record_time: float | None = None  # record time, not arrival time
        self.lag = Histogram()
        # The records applied since take_applied(), each as `keep_applied` makes it, when a
        # store wants them as history.
        self._keep = keep_applied
        self._applied: list[object] = []

    def apply(self, records: Sequence[AuditRecord], live: bool) -> None:
        """Apply records in order; lag is observed only for live records (old ones are not late)."""
        if not records:
            return
        alerts = self.alerts
        lag = self.lag
        now = self.clock() if live else 0.0
        last = self.last_record_time
        # The table takes its lock once per batch, not once per record.
        self.table.apply_many(records)
        keep = self._keep
        if keep is not None:
            self._applied.extend(map(keep, records))
        for record in records:
            if alerts is not None:
                alerts.observe(record, live)
            if last is None or record.time > last:
                last = record.time
            if live:
                lag.observe(max(0.0, now - record.time))
        self.last_record_time = last

    def take_applied(self) -> list[object]:
        """The records applied since the last call, in order, as `keep_applied` made them
        (none without it)."""
        if not self._applied:
            return []
        applied, self._applied = self._applied, []
        return applied

    # -- self-metrics and saved state ---------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Yield the newest record time and the lag histogram."""
        from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily

        last = GaugeMetricFamily(
            "monitord_last_record_timestamp_seconds",
            "Time of the newest libvirt record applied (Unix seconds, record time).",
        )
        if self.last_record_time is not None:
            last.add_metric([], self.last_record_time)
        yield last
        yield HistogramMetricFamily(
            "monitord_record_lag_seconds",
            "Seconds between a record's own time and the moment monitord applied it (live "
            "records only).",
            buckets=self.lag.cumulative(),
            sum_value=self.lag.total,
        )

    def to_json(self) -> dict[str, Any]:
        """Return this part of the checkpoint's `telemetry` object."""
        return {"last_record_time": self.last_record_time, "lag": self.lag.to_json()}

    def restore(self, doc: Mapping[str, Any]) -> None:
        """Load what `to_json` saved; raises ValueError or TypeError on wrong types."""
        last = doc.get("last_record_time")
        newest = None if last is None else float(last)
        lag = doc.get("lag") or {}
        if not isinstance(lag, Mapping):
            raise TypeError(f"telemetry.lag is {type(lag).__name__}, not an object")
        self.lag.restore(lag)
        self.last_record_time = newest
