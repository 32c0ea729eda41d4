"""Prometheus metrics read from the guest table and each stage's counters at scrape time.

`make_registry` builds a new registry (never the global one) holding every
metric of docs/INTERFACE.md, "Metrics". The per-guest series (about 14 a
guest, 140,000 lines at 10,000 guests) are written as text by `GuestSeries`
rather than as prometheus-client sample objects, which would cost several
times more per scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from monitord.state.guest import DEVICE_LISTS, METRIC_FIELDS, STATES, Guest, GuestKey
from monitord.state.table import GuestTable, Snapshot
from monitord.textout import printable

__all__ = ["GUEST_FAMILIES", "MonitordRegistry", "StageMetrics", "family", "make_registry",
           "render"]  # fmt: skip

# A guest's samples in one family: (extra label text, already escaped and comma-led; value).
_Samples = list[tuple[str, float]]


def family(
    kind: Literal["counter", "gauge"],
    name: str,
    help_text: str,
    labels: Sequence[str],
    values: Mapping[Any, float],  # keyed by a label value (str) or a tuple of them
    always: Iterable[str] = (),
) -> Metric:
    """A family with a sample per key of `values` (a label value, or a tuple of them), in
    order; the keys in `always` appear even at 0. Stages use it at scrape time."""
    make = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    metric = make(name, help_text, labels=labels)
    for key in sorted({*always, *values}):
        metric.add_metric(list(key) if isinstance(key, tuple) else [key], values.get(key, 0))
    return metric


def _escape(value: str) -> str:
    """A label value as the exposition writes it: UTF-8-safe (bytes that are not UTF-8 as
    `\\xHH`, see monitord/textout.py), then backslash, newline and quote escaped."""
    return printable(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _state_samples(g: Guest) -> _Samples:
    return [(f',state="{s}"', 1.0 if g.state == s else 0.0) for s in STATES]


def _device_samples(g: Guest) -> _Samples:
    # disk and nic always (dashboards compare them with 0); other kinds when present,
    # which keeps a 10,000-guest scrape small.
    out: _Samples = []
    for name, kind in DEVICE_LISTS.items():
        count = len(getattr(g, name))
        if count or name in ALWAYS_KINDS:
            out.append((f',kind="{kind}"', float(count)))
    return out


def _security_samples(g: Guest) -> _Samples:
    return [
        (f',model="{_escape(m or "")}",vm_ctx="{_escape(v or "")}",img_ctx="{_escape(i or "")}"',
         1.0)
        for m, v, i in g.security
    ]  # fmt: skip


def _field_samples(name: str) -> Callable[[Guest], _Samples]:
    def samples(g: Guest) -> _Samples:
        value = getattr(g, name)
        return [] if value is None else [("", float(value))]

    return samples


# name, type, help, samples: the per-guest families, in exposition order. The plain numeric
# ones come from the fields Guest declares with a metric (monitord/state/guest.py).
GUEST_FAMILIES: Final[tuple[tuple[str, str, str, Callable[[Guest], _Samples]], ...]] = (
    ("libvirt_audit_domain_info", "gauge",
     "Always 1 for each tracked guest; labels give its name and domain type.",
     lambda g: [("", 1.0)]),
    ("libvirt_audit_domain_state", "gauge",
     "1 for the guest's state (running, stopped, unknown), 0 for the others.", _state_samples),
    ("libvirt_audit_domain_running", "gauge",
     "1 if the guest's last lifecycle record says it runs, else 0.",
     lambda g: [("", 1.0 if g.state == "running" else 0.0)]),
    ("libvirt_audit_domain_devices", "gauge",
     "Devices assigned to the guest in its current run, by kind.", _device_samples),
    ("libvirt_audit_domain_security_info", "gauge",
     "Always 1 for each security label of a guest (VIRT_MACHINE_ID), by model.",
     _security_samples),
    *((metric, kind, help_text, _field_samples(field))
      for field, (metric, kind, help_text) in METRIC_FIELDS.items()),
)  # fmt: skip
ALWAYS_KINDS: Final = frozenset({"disks", "nics"})


def _prefix(g: Guest) -> str:
    """`{uuid="..",domain="..",virt=".."[,node=".."]`: the labels every series of a guest has."""
    node = f',node="{_escape(g.node)}"' if g.node else ""
    return (
        f'{{uuid="{_escape(g.uuid)}",domain="{_escape(g.name or "")}",'
        f'virt="{_escape(g.virt or "")}"{node}'
    )


def _value(v: float) -> str:
    return f"{int(v)}.0" if v.is_integer() and abs(v) < 1e15 else repr(v)


class GuestSeries:
    """The per-guest series as exposition text, built at scrape time from the table's copies.

    Only each guest's label prefix is cached (until the guest changes): the lines
    themselves are made per scrape and not kept, so 10,000 guests cost no resident text.
    """

    def __init__(self) -> None:
        self._prefixes: dict[GuestKey, tuple[Guest, str]] = {}
        self._lock = threading.Lock()

    def render(self, guests: Iterable[Guest], openmetrics: bool) -> list[bytes]:
        """Every per-guest family (header and samples) as pieces of the body."""
        prefixes: dict[GuestKey, tuple[Guest, str]] = {}
        with self._lock:
            old = self._prefixes
            pairs: list[tuple[Guest, str]] = []
            for g in guests:
                hit = old.get(g.key)
                if hit is None or hit[0] is not g:
                    hit = (g, _prefix(g))
                prefixes[g.key] = hit
                pairs.append(hit)
            self._prefixes = prefixes
        parts: list[bytes] = []
        for name, kind, help_text, samples in GUEST_FAMILIES:
            # OpenMetrics names a counter family without its `_total` sample suffix.
            family = name.removesuffix("_total") if openmetrics and kind == "counter" else name
            lines = [f"# HELP {family} {help_text}\n# TYPE {family} {kind}\n"]
            lines += [
                f"{name}{prefix}{extra}}} {_value(value)}\n"
                for g, prefix in pairs
                for extra, value in samples(g)
            ]
            parts.append("".join(lines).encode())  # _escape made every value UTF-8
        return parts


class TableCollector(Collector):
    """The table's event counters and guest counts (the per-guest series are `GuestSeries`)."""

    def __init__(self, table: GuestTable) -> None:
        self.table = table

    def collect(self) -> Iterator[Metric]:
        return table_families(self.table.snapshot())


def table_families(snap: Snapshot) -> Iterator[Metric]:
    """Return the event counters and the guest count gauges of one snapshot."""
    counters = (
        ("libvirt_audit_records_total",
         "libvirt audit records read, by record type, domain type and result.",
         ["record", "virt", "result"], snap.records),
        ("libvirt_audit_operations_total",
         "VIRT_CONTROL lifecycle records (start, stop, init), by operation, reason and result.",
         ["virt", "op", "reason", "result"], snap.operations),
        ("libvirt_audit_resource_changes_total",
         "VIRT_RESOURCE records (devices, memory, vCPUs, cgroup ACLs), by resource, reason "
         "and result.",
         ["virt", "resrc", "reason", "result"], snap.resources),
        ("libvirt_audit_security_labels_total",
         "VIRT_MACHINE_ID records (security labels assigned to guests), by model and result.",
         ["virt", "model", "result"], snap.labels),
    )  # fmt: skip
    for name, help_text, label_names, values in counters:
        # Printable values may coincide (a byte, and `\xHH` spelt out): one series, counts added.
        shown: dict[tuple[str, ...], float] = {}
        for key, n in values.items():
            label_values = tuple(map(printable, key))
            shown[label_values] = shown.get(label_values, 0) + n
        yield family("counter", name, help_text, label_names, shown)
    counts: dict[tuple[str, str], int] = {}
    for g in snap.guests:
        k = (printable(g.virt or ""), g.state)
        counts[k] = counts.get(k, 0) + 1
    domains = GaugeMetricFamily(
        "libvirt_audit_domains",
        "Tracked guests by domain type and state (running, stopped, unknown).",
        labels=["virt", "state"],
    )
    for virt in sorted({v for v, _ in counts}):
        for state in STATES:
            domains.add_metric([virt, state], counts.get((virt, state), 0))
    yield domains
    yield family(
        "counter",
        "libvirt_audit_unmatched_detaches_total",
        "Detach records for a device the guest was not known to hold (they change nothing), "
        "by device kind.",
        ["kind"],
        snap.unmatched_detaches,
    )


class StageMetrics(Protocol):
    """A pipeline stage's own metrics (source, pipeline, checkpoint, alerts), read at scrape."""

    def collect(self) -> Iterable[Metric]: ...


class _StageCollector(Collector):
    """A stage's metrics registered as a prometheus-client collector."""

    def __init__(self, stage: StageMetrics) -> None:
        self.stage = stage

    def collect(self) -> Iterable[Metric]:
        return self.stage.collect()


class DaemonCollector(Collector):
    """monitord's own metrics that no stage owns: the build, and the guest table's size."""

    def __init__(self, table: GuestTable, version: str) -> None:
        self.table = table
        self.version = version

    def collect(self) -> Iterator[Metric]:
        yield family("gauge", "monitord_build_info",
                     "Always 1; the version label names the running monitord.",
                     ["version"], {self.version: 1})  # fmt: skip
        yield GaugeMetricFamily(
            "monitord_guests_tracked", "Guests currently tracked.", self.table.guests_tracked
        )
        yield CounterMetricFamily(
            "monitord_guests_evicted_total",
            "Guests forgotten: stopped longer than state.forget_stopped_after, or beyond "
            "state.max_guests.",
            self.table.guests_evicted,
        )


class MonitordRegistry(CollectorRegistry):
    """A registry of every monitord metric but the per-guest series, which `render_parts`
    appends from the table (`GuestSeries`)."""

    def __init__(self, table: GuestTable) -> None:
        super().__init__(auto_describe=True)
        self.table = table
        self.guests = GuestSeries()


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """Return the /metrics body and its content type, negotiated from an Accept header."""
    parts, content_type = render_parts(registry, accept)
    # One join: the 15 MiB body of 10,000 guests is copied once.
    return b"".join(parts), content_type


def render_parts(registry: CollectorRegistry, accept: str | None) -> tuple[list[bytes], str]:
    """Return the /metrics body as pieces (to be sent in blocks) and its content type.

    The listener writes the pieces in small blocks instead of joining one body:
    a 15 MiB body for 10,000 guests, allocated at each scrape, is what made the
    allocator keep ~80 MiB more resident than the guest table needs.
    """
    encoder, content_type = choose_encoder(accept or "")
    if not isinstance(registry, MonitordRegistry):
        return [encoder(registry)], content_type
    openmetrics = content_type.startswith("application/openmetrics-text")
    head = encoder(registry)
    if openmetrics:
        head = head.removesuffix(b"# EOF\n")
    parts = [head, *registry.guests.render(registry.table.snapshot().guests, openmetrics)]
    if openmetrics:
        parts.append(b"# EOF\n")
    return parts, content_type


def make_registry(
    table: GuestTable,
    version: str,
    stages: Iterable[StageMetrics] = (),
) -> MonitordRegistry:
    """Return a new registry with the guest metrics, the self-metrics of each stage given
    (the daemon gives them all: docs/INTERFACE.md) and the process/Python collectors."""
    registry = MonitordRegistry(table)
    registry.register(TableCollector(table))
    registry.register(DaemonCollector(table, version))
    for stage in stages:
        registry.register(_StageCollector(stage))
    # prometheus-client's default collectors, on this registry instead of the global one.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
