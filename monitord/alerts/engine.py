"""The alert engine: failed libvirt records in, firing and resolved alerts out to the sinks.

`observe` runs in the ingestion thread for every libvirt record, so it only
looks up a dict and, for a new failure or a resolution, appends to each sink
worker's bounded queue. `tick` (the daemon loop, when `next_due` says) expires
alerts after `resolve_after` and, as Prometheus' notifier does, re-sends firing
alerts and, for `resolved_retention`, resolved ones to Alertmanager; with no
alert firing or resolved within the retention the engine needs no wake-up.

Workers: one for the journal (an entry per firing and per resolution), ONE for
every configured Alertmanager (a batch is fanned out to all of them and counts
as sent when one accepted it), one per webhook (retried for as long as its
alerts matter: see delivery.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from monitord.alerts.counters import AlertCounters
from monitord.alerts.delivery import DeliveryWorker
from monitord.alerts.model import Alert, AlertKey, Identity, alert_key, process_gone_key
from monitord.alerts.sinks import AlertmanagerSink, JournalSink, Sink, WebhookSink
from monitord.audit.record import AuditRecord
from monitord.audit.types import VIRT_CONTROL
from monitord.config import AlertsConfig
from monitord.logsetup import RateLimitedLogger

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("monitord.alerts")

# 2: keys carry the node; resolved alerts in retention and webhook deliveries are kept.
CHECKPOINT_VERSION: Final = 2


@dataclass(slots=True)
class _Active:
    """A firing alert and when it was last seen failing and last sent to Alertmanager."""

    alert: Alert
    last_seen: float
    last_sent: float
    failures: int = 1


@dataclass(slots=True)
class _Resolved:
    """A resolved alert kept for `resolved_retention`, re-sent to Alertmanager meanwhile."""

    alert: Alert
    resolved_at: float
    last_sent: float


def _same(a: Alert, b: Alert) -> bool:
    """True when both are the same firing of an alert (one may be its resolution)."""
    return a.key == b.key and a.serial == b.serial and a.starts_at == b.starts_at


@contextlib.contextmanager
def _skip_bad(what: str) -> Iterator[None]:
    """Skip one broken item of a checkpoint with a warning (a crash would lose all of it)."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        log.warning("alerts: skipped %s in the checkpoint: %r", what, exc)


# Identity of a worker: (kind, slot, everything that configures it). A worker whose kind
# and slot stay but whose settings change hands its queue to its successor.
_Spec = tuple[Any, ...]


class AlertEngine:
    """Turn failed libvirt records into alerts and hand them to the sink workers."""

    def __init__(
        self,
        config: AlertsConfig,
        identity: Identity,
        clock: Callable[[], float] = time.time,
        *,
        journal_socket: str | None = None,
        counters: AlertCounters | None = None,
    ) -> None:
        self.config = config
        self.counters = counters if counters is not None else AlertCounters()
        self.identity = identity
        self.clock = clock
        self._journal_socket = journal_socket
        self._lock = threading.Lock()
        self._active: dict[AlertKey, _Active] = {}
        self._resolved: dict[AlertKey, _Resolved] = {}  # oldest resolution first
        # Keys of firing VirtGuestProcessGone alerts: they do not expire by resolve_after.
        self._gone: set[AlertKey] = set()
        self._next_due: float | None = None  # clock time; never later than tick has work
        self._limited = RateLimitedLogger(log, burst=1, interval=300.0)
        self._started = False
        self._workers: dict[_Spec, DeliveryWorker] = {}
        self._all: tuple[DeliveryWorker, ...] = ()
        self._alertmanager: DeliveryWorker | None = None
        self._install(self._build(config, {}))

    def _count(self, sink: str, outcome: str, n: int = 1) -> None:
        self.counters.count(sink, outcome, n)

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
        if config.alertmanager:
            members = tuple(dict.fromkeys(config.alertmanager))  # the same entry twice: once

            def make_am() -> Sink:
                return AlertmanagerSink(members, config.resend_interval)

            specs.append((("alertmanager", "", members, config.resend_interval, *worker), make_am))
        external_url = self.identity.external_url
        for hook in config.webhook:

            def make_hook(hook: Any = hook) -> Sink:
                return WebhookSink(hook, external_url)

            specs.append((("webhook", hook.url, hook, external_url, *worker), make_hook))
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
                # A webhook gets nothing but these deliveries: retry while they matter.
                wanted=self._wanted if sink.name == "webhook" else None,
            )
        return workers

    def _install(self, workers: dict[_Spec, DeliveryWorker]) -> None:
        self._workers = workers
        ordered = tuple(workers.values())
        # Assigned whole, so `observe` in the ingestion thread always sees a consistent set.
        self._alertmanager = next((w for w in ordered if w.name == "alertmanager"), None)
        self._all = ordered

    def _wanted(self, alert: Alert) -> bool:
        """True while an alert still matters: firing, or resolved within the retention."""
        with self._lock:
            active = self._active.get(alert.key)
            if active is not None and _same(active.alert, alert):
                return True
            resolved = self._resolved.get(alert.key)
            return resolved is not None and _same(resolved.alert, alert)

    # Ingestion side

    def observe(self, record: AuditRecord, live: bool) -> None:
        """Raise an alert for a failed record, resolve one for a success; never blocks."""
        result = record.result
        if self._gone and record.type_id == VIRT_CONTROL and record.op in ("start", "stop"):
            self._end_process_gone(record)
        if result == "failed":
            if not live and not self.config.on_catch_up:
                return
            key = alert_key(record)
            now = self.clock()
            with self._lock:
                active = self._active.get(key)
                if active is not None:  # already firing: one alert per host, guest and operation
                    active.last_seen = now
                    active.failures += 1
                    return
                if len(self._active) >= self.config.max_firing:
                    self._over_limit()
                    return
                alert = Alert.from_record(record, self.identity)
                self._fire(alert, now)
            for worker in self._all:
                worker.put(alert)
        elif result == "success":
            if self._active:  # commonly nothing is firing: no key to make
                self._resolve(alert_key(record), record.time)

    def process_gone(self, uuid: str, name: str | None, virt: str | None, vm_pid: int) -> None:
        """Raise VirtGuestProcessGone for a running guest of this host whose process is gone
        (resolved by the guest's next start or stop record)."""
        alert = Alert.process_gone(uuid, name, virt, vm_pid, self.clock(), self.identity)
        with self._lock:
            if alert.key in self._active:
                return
            self._gone.add(alert.key)
            self._fire(alert, self.clock())
        for worker in self._all:
            worker.put(alert)

    def _end_process_gone(self, record: AuditRecord) -> None:
        if not record.node:  # only this host's own guests are checked
            self._resolve(process_gone_key(record.uuid or ""), record.time)

    def _fire(self, alert: Alert, now: float) -> None:
        """Keep `alert` as firing from `now` (under the lock)."""
        active = self._active[alert.key] = _Active(alert, last_seen=now, last_sent=now)
        self._note_due(self._due(alert.key, active))

    def _resolve(self, key: AlertKey, at: float) -> None:
        """Resolve the firing alert of `key`, if any, as of `at`; tell every sink."""
        with self._lock:
            self._gone.discard(key)
            ended = self._active.pop(key, None)
            if ended is None:
                return
            resolved = ended.alert.resolved(at)
            self._retain(resolved, self.clock())
        for worker in self._all:
            worker.put(resolved)

    def _retain(self, resolved: Alert, now: float) -> None:
        """Keep a resolved alert for re-sending (under the lock), at most max_firing of them."""
        self._resolved.pop(resolved.key, None)
        done = self._resolved[resolved.key] = _Resolved(resolved, resolved_at=now, last_sent=now)
        while len(self._resolved) > self.config.max_firing:
            del self._resolved[next(iter(self._resolved))]
        self._note_due(self._resolved_due(done))

    def _over_limit(self) -> None:
        """Count a failure that found alerts.max_firing alerts firing already."""
        for worker in self._all:
            self._count(worker.name, "dropped")
        self._limited.warning(
            "%d alerts firing (alerts.max_firing): new failures raise no alert until some resolve",
            len(self._active),
        )

    # Daemon loop side

    def _due(self, key: AlertKey, active: _Active) -> float:
        """When `tick` has to look at a firing alert: to resolve it, or to re-send it."""
        due = math.inf if key in self._gone else active.last_seen + self.config.resolve_after
        if self._alertmanager is not None:
            due = min(due, active.last_sent + self.config.resend_interval)
        return due

    def _resolved_due(self, done: _Resolved) -> float:
        """When `tick` has to look at a resolution: to forget it, or to re-send it."""
        due = done.resolved_at + self.config.resolved_retention
        if self._alertmanager is not None:
            due = min(due, done.last_sent + self.config.resend_interval)
        return due

    def _earliest_due(self) -> float | None:
        """The next time `tick` has work (under the lock); None when there is none."""
        due = min(
            min((self._due(k, a) for k, a in self._active.items()), default=math.inf),
            min((self._resolved_due(r) for r in self._resolved.values()), default=math.inf),
        )
        return None if due == math.inf else due

    def _note_due(self, due: float) -> None:
        """Bring the next tick forward to `due` if it is earlier (under the lock)."""
        if due != math.inf and (self._next_due is None or due < self._next_due):
            self._next_due = due

    def _recompute_due(self) -> None:
        with self._lock:
            self._next_due = self._earliest_due()

    def next_due(self) -> float | None:
        """Return when `tick` has work next (clock time), None while nothing is firing or
        resolved within the retention."""
        return self._next_due

    def tick(self, now: float) -> None:
        """Resolve stale alerts, re-send firing and recently resolved ones to Alertmanager,
        forget resolutions older than the retention."""
        cfg = self.config
        alertmanager = self._alertmanager
        resolved: list[Alert] = []
        resend: list[Alert] = []
        with self._lock:
            if self._active:
                # Written as `_due` computes it, so a tick at the due time always finds it due.
                expired = [
                    k
                    for k, a in self._active.items()
                    if a.last_seen + cfg.resolve_after <= now and k not in self._gone
                ]
                for key in expired:
                    alert = self._active.pop(key).alert.resolved(now)
                    self._retain(alert, now)
                    resolved.append(alert)
            retained = self._resolved
            while retained:
                oldest = next(iter(retained.values()))
                if oldest.resolved_at + cfg.resolved_retention > now:
                    break
                del retained[oldest.alert.key]
            if alertmanager is not None:
                for active in self._active.values():
                    if active.last_sent + cfg.resend_interval <= now:
                        active.last_sent = now
                        resend.append(active.alert)
                for done in retained.values():
                    # A key firing again is that alert now: its old resolution must not undo it.
                    if done.alert.key not in self._active and (
                        done.last_sent + cfg.resend_interval <= now
                    ):
                        done.last_sent = now
                        resend.append(done.alert)
            self._next_due = self._earliest_due()
        if resolved:
            for worker in self._all:
                worker.put_many(resolved)
        if resend and alertmanager is not None:
            alertmanager.put_many(resend)

    def queue_lengths(self) -> dict[str, int]:
        """Return the alerts waiting (or in delivery) per configured sink."""
        lengths: dict[str, int] = {}
        for worker in self._all:
            lengths[worker.name] = lengths.get(worker.name, 0) + len(worker)
        return lengths

    def collect(self) -> Iterator[Metric]:
        """Yield deliveries by sink and outcome, and the queue length of each sink."""
        from monitord.serve.exporter import family

        yield family(
            "counter",
            "monitord_alerts_total",
            "Alert deliveries by sink and outcome (sent, failed, dropped).",
            ["sink", "outcome"],
            self.counters.snapshot(),
        )
        yield family(
            "gauge",
            "monitord_alert_queue_length",
            "Alerts waiting to be delivered, by sink.",
            ["sink"],
            self.queue_lengths(),
        )

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
        """Deliver what is queued for at most `deadline_seconds`, then stop the workers
        (a webhook's undelivered alerts stay queued for the checkpoint)."""
        self._stop(self._all, deadline_seconds, wait=True)
        self._started = False

    @staticmethod
    def _stop(workers: Iterable[DeliveryWorker], seconds: float, wait: bool) -> None:
        deadline = time.monotonic() + max(0.0, seconds)
        workers = list(workers)
        for worker in workers:  # all drain in parallel under one deadline
            if worker.started:
                worker.stop(deadline)
            elif worker.wanted is None:
                worker.drop_queued()
        if wait:
            for worker in workers:
                worker.join(deadline)

    def reconfigure(self, config: AlertsConfig, identity: Identity | None = None) -> None:
        """Swap sinks for a new config (SIGHUP); a sink that stays keeps its queue.

        A new identity applies to alerts raised from now on; firing ones keep their labels."""
        if identity is not None:
            self.identity = identity
        old = self._workers
        new = self._build(config, old)
        old_ids = {id(w) for w in old.values()}
        new_ids = {id(w) for w in new.values()}
        retired = {(s[0], s[1]): w for s, w in old.items() if id(w) not in new_ids}
        for spec, worker in new.items():
            if id(worker) in old_ids:
                continue
            # Same target, new settings: the replacement takes over what was queued.
            previous = retired.pop((spec[0], spec[1]), None)
            if previous is not None:
                worker.put_many(previous.take_all())
                previous.stop(time.monotonic() + config.drain_timeout)
            if self._started:
                worker.start()
        self.config = config
        self._install(new)
        self._recompute_due()  # resolve_after, resend_interval or the Alertmanagers changed
        # Removed sinks finish in the background: SIGHUP must not stall the daemon loop.
        self._stop(retired.values(), config.drain_timeout, wait=False)

    # Checkpoint

    def to_json(self) -> dict[str, Any]:
        """Return firing alerts, resolutions in retention and webhook deliveries still due."""
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
            resolved = [
                {"alert": r.alert.to_json(), "resolved_at": r.resolved_at, "last_sent": r.last_sent}
                for r in self._resolved.values()
            ]
        pending = [
            {"sink": w.name, "target": w.sink.target, "alerts": [a.to_json() for a in queued]}
            for w in self._all
            if w.wanted is not None and (queued := w.pending())
        ]
        return {
            "version": CHECKPOINT_VERSION,
            "active": active,
            "resolved": resolved,
            "pending": pending,
        }

    def restore(self, doc: dict[str, Any]) -> None:
        """Load alerts from a checkpoint; firing ones are not sent again as new ones, and
        webhook deliveries that were due are queued again."""
        if doc.get("version") not in (1, CHECKPOINT_VERSION):
            log.warning("alerts: checkpoint version %r not understood; ignored", doc.get("version"))
            return
        restored: dict[AlertKey, _Active] = {}
        retained: dict[AlertKey, _Resolved] = {}
        pending: list[tuple[str, str, list[Alert]]] = []
        for item in doc.get("active") or []:
            with _skip_bad("a firing alert"):
                alert = Alert.from_json(item["alert"])
                restored[alert.key] = _Active(
                    alert,
                    last_seen=float(item["last_seen"]),
                    last_sent=float(item["last_sent"]),
                    failures=int(item.get("failures", 1)),
                )
        for item in doc.get("resolved") or []:
            with _skip_bad("a resolved alert"):
                alert = Alert.from_json(item["alert"])
                retained[alert.key] = _Resolved(
                    alert, float(item["resolved_at"]), float(item["last_sent"])
                )
        for item in doc.get("pending") or []:
            with _skip_bad("undelivered webhook alerts"):
                alerts = [Alert.from_json(a) for a in item["alerts"]]
                pending.append((str(item["sink"]), str(item["target"]), alerts))
        with self._lock:
            self._active = restored
            self._gone = {k for k in restored if k == process_gone_key(k[1])}
            self._resolved = dict(sorted(retained.items(), key=lambda kv: kv[1].resolved_at))
        for sink, target, alerts in pending:
            for worker in self._all:
                if worker.name == sink and worker.sink.target == target:
                    worker.put_many(alerts)
                    break
            else:
                self._count(sink, "dropped", len(alerts))  # that webhook is gone from the config
        self._recompute_due()

    @property
    def workers(self) -> Sequence[DeliveryWorker]:
        return self._all
