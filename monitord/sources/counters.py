"""What a source read, skipped, dropped and reopened: its self-metrics and their checkpoint.

A source writes these from the ingestion thread (the audisp reader thread
counts `dropped`); the exporter reads them at scrape time. The daemon keeps one
`SourceCounters` for its whole life and hands it to every source it opens, so
a reload that reopens the source continues the same counters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from monitord.audit.parser import IGNORED_REASONS, PARSE_ERROR_REASONS, ParseStats

if TYPE_CHECKING:  # prometheus-client is imported at scrape time only (replay never scrapes)
    from prometheus_client.metrics_core import Metric

REOPEN_REASONS: Final = ("rotated", "truncated", "created")


@dataclass
class SourceCounters:
    """Lines and bytes read, parse errors, ignored and dropped lines, reopens of one source."""

    kind: str = "file"
    parse: ParseStats = field(default_factory=ParseStats)
    reopens: Counter[str] = field(default_factory=Counter)
    # Lines lost before parsing (the audisp queue was full).
    dropped: Counter[str] = field(default_factory=Counter)

    def collect(self) -> Iterator[Metric]:
        """Yield the source's metric families (docs/INTERFACE.md, daemon self-metrics)."""
        from monitord.serve.exporter import family

        stats, source, reason = self.parse, ["source"], ["reason"]
        yield family("counter", "monitord_lines_read_total", "Lines read from the record source.",
                     source, {self.kind: stats.lines})  # fmt: skip
        yield family("counter", "monitord_bytes_read_total", "Bytes read from the record source.",
                     source, {self.kind: stats.bytes})  # fmt: skip
        yield family(
            "counter",
            "monitord_parse_errors_total",
            "VIRT_* lines that could not be parsed and were skipped, by reason.",
            reason,
            stats.errors,
            PARSE_ERROR_REASONS,
        )
        yield family(
            "counter",
            "monitord_records_ignored_total",
            "Lines read but not used: not a VIRT_* record (not_virt) or not libvirt's "
            "(not_libvirt).",
            reason,
            stats.ignored,
            IGNORED_REASONS,
        )
        yield family(
            "counter",
            "monitord_records_dropped_total",
            "Lines lost before parsing, e.g. when the audisp input queue was full.",
            reason,
            self.dropped,
        )
        yield family(
            "counter",
            "monitord_log_reopens_total",
            "Times the followed log was reopened: rotated, truncated or created.",
            reason,
            self.reopens,
            REOPEN_REASONS,
        )

    def to_json(self) -> dict[str, Any]:
        """Return this part of the checkpoint's `telemetry` object."""
        return {
            "source": self.kind,
            "parse": self.parse.to_json(),
            "reopens": dict(self.reopens),
            "dropped": dict(self.dropped),
        }

    def restore(self, doc: Mapping[str, Any]) -> None:
        """Load counters saved by `to_json` into these objects (the parser holds `parse`).

        The source label stays this source's kind; raises ValueError or TypeError
        on values of the wrong type.
        """
        parse = doc.get("parse") or {}
        if not isinstance(parse, Mapping):
            raise TypeError(f"telemetry.parse is {type(parse).__name__}, not an object")
        lines, nbytes, records = (int(parse.get(k, 0)) for k in ("lines", "bytes", "records"))
        ignored, errors = _counts(parse.get("ignored")), _counts(parse.get("errors"))
        reopens, dropped = _counts(doc.get("reopens")), _counts(doc.get("dropped"))
        stats = self.parse
        stats.lines, stats.bytes, stats.records = lines, nbytes, records
        for target, values in (
            (stats.ignored, ignored),
            (stats.errors, errors),
            (self.reopens, reopens),
            (self.dropped, dropped),
        ):
            target.clear()
            target.update(values)


def _counts(value: object) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected an object of counts, got {type(value).__name__}")
    return {str(k): int(n) for k, n in value.items()}
