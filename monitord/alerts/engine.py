"""The alert engine: failed libvirt records in, firing and resolved alerts out to the sinks.

`observe` runs in the ingestion thread for every libvirt record, so it only
looks up a dict and, for a new failure or a resolution, appends to each sink
worker's bounded queue. `tick` (the daemon loop, when `next_due` says) expires
alerts after `resolve_after` and re-sends firing ones to Alertmanager; with no
alert firing the engine needs no wake-up at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from monitord.alerts.counters import AlertCounters
from monitord.alerts.delivery import DeliveryWorker
from monitord.alerts.model import Alert, AlertKey, alert_key
from monitord.alerts.sinks import AlertmanagerSink, JournalSink, Sink, WebhookSink
from monitord.audit.record import AuditRecord
from monitord.config import AlertsConfig
from monitord.logsetup import RateLimitedLogger

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("monitord.alerts")

CHECKPOINT_VERSION: Final = 1


@dataclass(slots=True)
class _Active:
    """A firing alert and when it was last seen failing and last sent to Alertmanager."""

    alert: Alert
    last_seen: float
    last_sent: float
    failures: int = 1


# Identity of a worker: what it delivers to, and everything that configures it.
_Spec = tuple[Any, ...]


class AlertEngine:
    """Turn failed libvirt records into alerts and hand them to the sink workers."""

    def __init__(
        self,
        config: AlertsConfig,
        base_url: str,
        clock: Callable[[], float] = time.time,
        *,
        journal_socket: str | None = None,
        counters: AlertCounters | None = None,
    ) -> None:
        self.config = config
        self.counters = counters if counters is not None else AlertCounters()
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self._journal_socket = journal_socket
        self._lock = threading.Lock()
        self._active: dict[AlertKey, _Active] = {}
        self._next_due: float | None = None  # clock time; never later than tick has work
        self._limited = RateLimitedLogger(log, burst=1, interval=300.0)
        self._started = False
        self._workers: dict[_Spec, DeliveryWorker] = {}
        self._all: tuple[DeliveryWorker, ...] = ()
        self._alertmanagers: tuple[DeliveryWorker, ...] = ()
        self._install(self._build(config, {}))

    # Sinks and workers

    def _specs(self, config: AlertsConfig) -> list[tuple[_Spec, Callable[[], Sink]]]:
        worker = (config.queue_size, config.batch_size, config.retry_initial, config.retry_max)
        specs: list[tuple[_Spec, Callable[[], Sink]]] = []
        if config.journal:
            path = self._journal_socket
            specs.append(
                (
                    ("journal", path, *worker),
                    lambda: JournalSink() if path is None else JournalSink(socket_path=path),
                )
            )
        for url in dict.fromkeys(config.alertmanager):  # an HA pair: every URL is sent to

            def make_am(url: str = url) -> Sink:
                return AlertmanagerSink(url, config.resend_interval)

            specs.append((("alertmanager", url, config.resend_interval, *worker), make_am))
        for hook in config.webhook:

            def make_hook(hook: Any = hook) -> Sink:
                return WebhookSink(hook, self.base_url)

            specs.append((("webhook", hook.url, hook, *worker), make_hook))
        return specs

    def _build(
        self, config: AlertsConfig, old: dict[_Spec, DeliveryWorker]
    ) -> dict[_Spec, DeliveryWorker]:
        """Return the workers for `config`, reusing those of `old` whose spec is unchanged."""
        workers: dict[_Spec, DeliveryWorker] = {}
        for spec, make in self._specs(config):
            if spec in old:
                workers[spec] = old[spec]
                continue
            sink = make()
            if isinstance(sink, JournalSink) and not sink.active():
                continue  # logged once by the sink; without journald there is nothing to do
            workers[spec] = DeliveryWorker(
                sink,
                self.counters,
                queue_size=config.queue_size,
                batch_size=config.batch_size,
                retry_initial=config.retry_initial,
                retry_max=config.retry_max,
            )
        return workers

    def _install(self, workers: dict[_Spec, DeliveryWorker]) -> None:
        self._workers = workers
        ordered = tuple(workers.values())
        # Assigned whole, so `observe` in the ingestion thread always sees a consistent set.
        self._alertmanagers = tuple(w for w in ordered if w.name == "alertmanager")
        self._all = ordered

    # Ingestion side

    def observe(self, record: AuditRecord, live: bool) -> None:
        """Raise an alert for a failed record, resolve one for a success; never blocks."""
        result = record.result
        if result == "failed":
            if not live and not self.config.on_catch_up:
                return
            key = alert_key(record)
            now = self.clock()
            with self._lock:
                active = self._active.get(key)
                if active is not None:  # already firing: one alert per guest and operation
                    active.last_seen = now
                    active.failures += 1
                    return
                if len(self._active) >= self.config.max_firing:
                    self._over_limit()
                    return
                alert = Alert.from_record(record, self.base_url)
                active = self._active[key] = _Active(alert, last_seen=now, last_sent=now)
                due = self._due(active)
                if self._next_due is None or due < self._next_due:
                    self._next_due = due
            for worker in self._all:
                worker.put(alert)
        elif result == "success":
            if not self._active:
                return  # the common case: nothing is firing
            key = alert_key(record)
            with self._lock:
                ended = self._active.pop(key, None)
            if ended is not None:
                resolved = ended.alert.resolved(record.time)
                for worker in self._all:
                    worker.put(resolved)

    def _over_limit(self) -> None:
        """Count a failure that found alerts.max_firing alerts firing already."""
        for worker in self._all:
            self.counters.count(worker.name, "dropped")
        self._limited.warning(
            "%d alerts firing (alerts.max_firing): new failures raise no alert until some resolve",
            len(self._active),
        )

    # Daemon loop side

    def _due(self, active: _Active) -> float:
        """When `tick` has to look at this alert: to resolve it, or to re-send it."""
        due = active.last_seen + self.config.resolve_after
        if self._alertmanagers:
            due = min(due, active.last_sent + self.config.resend_interval)
        return due

    def _recompute_due(self) -> None:
        """Scan the firing alerts for the earliest due time (call with `_lock` held)."""
        due = self._due
        self._next_due = min((due(a) for a in self._active.values()), default=None)

    def next_due(self) -> float | None:
        """Return when `tick` has work next (clock time), None while no alert fires."""
        return self._next_due

    def tick(self, now: float) -> None:
        """Resolve stale alerts and re-send firing ones to Alertmanager."""
        resolve_after = self.config.resolve_after
        resend_interval = self.config.resend_interval
        alertmanagers = self._alertmanagers
        resolved: list[Alert] = []
        resend: list[Alert] = []
        with self._lock:
            if self._active:
                # Written as `_due` computes it, so a tick at the due time always finds it due.
                expired = [k for k, a in self._active.items() if a.last_seen + resolve_after <= now]
                for key in expired:
                    resolved.append(self._active.pop(key).alert.resolved(now))
                if alertmanagers:
                    for active in self._active.values():
                        if active.last_sent + resend_interval <= now:
                            active.last_sent = now
                            resend.append(active.alert)
            self._recompute_due()
        if resolved:
            for worker in self._all:
                worker.put_many(resolved)
        if resend:
            for worker in alertmanagers:
                worker.put_many(resend)

    def queue_lengths(self) -> dict[str, int]:
        """Return the alerts waiting (or in delivery) per configured sink."""
        lengths: dict[str, int] = {}
        for worker in self._all:
            lengths[worker.name] = lengths.get(worker.name, 0) + len(worker)
        return lengths

    def collect(self) -> Iterator[Metric]:
        """Yield deliveries by sink and outcome, and the queue length of each sink."""
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        alerts = CounterMetricFamily(
            "monitord_alerts_total",
            "Alert deliveries by sink and outcome (sent, failed, dropped).",
            labels=["sink", "outcome"],
        )
        for (sink, outcome), n in sorted(self.counters.snapshot().items()):
            alerts.add_metric([sink, outcome], n)
        yield alerts
        queue = GaugeMetricFamily(
            "monitord_alert_queue_length", "Alerts waiting to be delivered, by sink.",
            labels=["sink"],
        )  # fmt: skip
        for sink, n in sorted(self.queue_lengths().items()):
            queue.add_metric([sink], n)
        yield queue

    def after_fork(self) -> None:
        """In a forked child (the checkpoint writer): replace the locks other threads may hold."""
        self._lock = threading.Lock()
        self.counters.after_fork()

    def firing_count(self) -> int:
        """Return how many alerts are firing (cheap; the daemon loop asks often)."""
        return len(self._active)

    def firing(self) -> list[Alert]:
        """Return the alerts firing now (oldest first)."""
        with self._lock:
            return sorted((a.alert for a in self._active.values()), key=lambda a: a.starts_at)

    def start(self) -> None:
        """Start the sink workers (alerts observed before are queued and delivered then)."""
        self._started = True
        for worker in self._all:
            worker.start()

    def close(self, deadline_seconds: float) -> None:
        """Deliver what is queued for at most `deadline_seconds`, then stop the workers."""
        self._stop(self._all, deadline_seconds, wait=True)
        self._started = False

    @staticmethod
    def _stop(workers: Iterable[DeliveryWorker], seconds: float, wait: bool) -> None:
        deadline = time.monotonic() + max(0.0, seconds)
        workers = list(workers)
        for worker in workers:  # all drain in parallel under one deadline
            if worker.started:
                worker.stop(deadline)
            else:
                worker.drop_queued()
        if wait:
            for worker in workers:
                worker.join(deadline)

    def reconfigure(self, config: AlertsConfig) -> None:
        """Swap sinks for a new config (SIGHUP); a sink that stays keeps its queue."""
        old = self._workers
        new = self._build(config, old)
        old_ids = {id(w) for w in old.values()}
        new_ids = {id(w) for w in new.values()}
        retired = {(s[0], s[1]): w for s, w in old.items() if id(w) not in new_ids}
        for spec, worker in new.items():
            if id(worker) in old_ids:
                continue
            # Same target, new settings: the replacement takes over what was queued.
            previous = retired.get((spec[0], spec[1]))
            if previous is not None:
                worker.put_many(previous.take_all())
            if self._started:
                worker.start()
        self.config = config
        self._install(new)
        with self._lock:
            self._recompute_due()  # resolve_after, resend_interval or the Alertmanagers changed
        # Retired workers finish in the background: SIGHUP must not stall the daemon loop.
        self._stop(retired.values(), config.drain_timeout, wait=False)

    # Checkpoint

    def to_json(self) -> dict[str, Any]:
        """Return the firing alerts for the daemon checkpoint."""
        with self._lock:
            active = [
                {
                    "alert": a.alert.to_json(),
                    "last_seen": a.last_seen,
                    "last_sent": a.last_sent,
                    "failures": a.failures,
                }
                for a in self._active.values()
            ]
        return {"version": CHECKPOINT_VERSION, "active": active}

    def restore(self, doc: dict[str, Any]) -> None:
        """Load firing alerts from a checkpoint; they are not sent again as new ones."""
        if doc.get("version") != CHECKPOINT_VERSION:
            log.warning("alerts: checkpoint version %r not understood; ignored", doc.get("version"))
            return
        restored: dict[AlertKey, _Active] = {}
        for item in doc.get("active") or []:
            try:
                alert = Alert.from_json(item["alert"])
                restored[alert.key] = _Active(
                    alert,
                    last_seen=float(item["last_seen"]),
                    last_sent=float(item["last_sent"]),
                    failures=int(item.get("failures", 1)),
                )
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                log.warning("alerts: skipped a bad alert in the checkpoint: %s", exc)
        with self._lock:
            self._active = restored
            self._recompute_due()

    @property
    def workers(self) -> Sequence[DeliveryWorker]:
        return self._all
