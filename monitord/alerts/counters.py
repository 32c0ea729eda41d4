"""Alert deliveries counted by sink and outcome (sent, failed, dropped).

The sink workers count from their own threads, the engine from the ingestion
thread, the exporter reads at scrape time: every access takes the lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

Outcome = tuple[str, str]  # (sink, outcome)


class AlertCounters:
    """Deliveries by (sink, outcome); thread-safe, checkpointed with the daemon's state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[Outcome] = Counter()

    def count(self, sink: str, outcome: str, n: int = 1) -> None:
        with self._lock:
            self._counts[(sink, outcome)] += n

    def get(self, sink: str, outcome: str) -> int:
        with self._lock:
            return self._counts[(sink, outcome)]

    def snapshot(self) -> dict[Outcome, int]:
        """Return a copy of every count."""
        with self._lock:
            return dict(self._counts)

    def to_json(self) -> dict[str, Any]:
        """Return this part of the checkpoint's `telemetry` object."""
        with self._lock:
            return {"alerts": [[sink, outcome, n] for (sink, outcome), n in self._counts.items()]}

    def restore(self, doc: Mapping[str, Any]) -> None:
        """Load what `to_json` saved; raises ValueError or TypeError on wrong types."""
        rows: Sequence[Any] = doc.get("alerts") or []
        counts = Counter({(str(s), str(o)): int(n) for s, o, n in rows})
        with self._lock:
            self._counts = counts
