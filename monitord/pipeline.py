"""Apply parsed records to the guest table, the daemon's counters and the alert engine."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from monitord.audit.record import AuditRecord
from monitord.telemetry import Telemetry


class RecordConsumer(Protocol):
    """The guest table: takes every libvirt record in log order."""

    def apply_many(self, records: Sequence[AuditRecord]) -> None: ...


class AlertObserver(Protocol):
    """The alert engine: sees every record; `live` is False while catching up on old log content."""

    def observe(self, record: AuditRecord, live: bool) -> None: ...


class Pipeline:
    """Records -> state, counters, alerts; the one place that order is decided."""

    def __init__(
        self,
        table: RecordConsumer,
        telemetry: Telemetry,
        alerts: AlertObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.telemetry = telemetry
        self.alerts = alerts
        self.clock = clock

    def apply(self, records: Sequence[AuditRecord], live: bool) -> None:
        """Apply records in order; lag is observed only for live records (old ones are not late)."""
        if not records:
            return
        telemetry = self.telemetry
        alerts = self.alerts
        now = self.clock() if live else 0.0
        last = telemetry.last_record_time
        # The table takes its lock once per batch, not once per record.
        self.table.apply_many(records)
        for record in records:
            if alerts is not None:
                alerts.observe(record, live)
            if last is None or record.time > last:
                last = record.time
            if live:
                telemetry.lag.observe(max(0.0, now - record.time))
        telemetry.last_record_time = last
