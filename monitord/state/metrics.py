"""The state store's own metrics, read from `Store.stats()` at scrape time.

A commit is what the interface calls a checkpoint: position and state saved
together. The families:

| metric | type | labels |
|---|---|---|
| `monitord_checkpoint_timestamp_seconds` | gauge (the last successful commit) | |
| `monitord_checkpoint_errors_total` | counter (commits that failed) | |
| `monitord_state_set_aside_total` | counter | `reason` (see below) |
| `monitord_state_store_bytes` | gauge | |
| `monitord_state_commit_duration_seconds` | gauge (the last commit) | |
| `monitord_history_events` | gauge | |
| `monitord_history_pruned_total` | counter | `reason` (`age`, `size`) |
| `monitord_history_dropped_total` | counter | |

Set-aside reasons: `corrupt`, `not_a_database`, `empty`, `foreign`, `newer_version`,
`invalid_rows`, `invalid_position`, `not_a_file`, `unreadable`, `rejected` (state.db)
and `checkpoint_json` (an old checkpoint.json that could not be imported).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitord.serve.exporter import family
from monitord.state.store import SET_ASIDE_REASONS, Store


class StoreCollector(Collector):
    """Prometheus families of one store (register it on the daemon's registry)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        stats = self.store.stats()
        when = GaugeMetricFamily(
            "monitord_checkpoint_timestamp_seconds",
            "When the state was last saved (Unix seconds): a commit to the state store.",
        )
        if stats.last_commit is not None:
            when.add_metric([], stats.last_commit)
        yield when
        yield CounterMetricFamily(
            "monitord_checkpoint_errors_total",
            "Commits to the state store that failed (each is retried at the next one).",
            value=stats.commit_errors,
        )
        yield family(
            "counter", "monitord_state_set_aside_total",
            "State files set aside (renamed) because they could not be trusted, by reason.",
            ["reason"], stats.set_aside, always=(*SET_ASIDE_REASONS, "checkpoint_json"),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "monitord_state_store_bytes",
            "Size of the state store (state.db and its write-ahead log).",
            value=stats.file_bytes,
        )
        yield GaugeMetricFamily(
            "monitord_state_commit_duration_seconds",
            "How long the last successful commit to the state store took.",
            value=stats.commit_seconds,
        )
        yield GaugeMetricFamily(
            "monitord_history_events",
            "History events held in the state store.",
            value=stats.events,
        )
        yield family(
            "counter", "monitord_history_pruned_total",
            "History events deleted by retention: age (history_retention) or size "
            "(history_max_bytes).",
            ["reason"], stats.pruned, always=("age", "size"),
        )  # fmt: skip
        yield CounterMetricFamily(
            "monitord_history_dropped_total",
            "History events lost because commits failed for so long that too many waited.",
            value=stats.events_dropped,
        )
