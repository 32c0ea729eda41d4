"""A worker thread per sink: bounded queue, batches, retries with exponential backoff.

The ingestion thread only appends to a deque under a lock (`put`), so a slow
or dead receiver never slows parsing: when the queue is full the oldest alert
is dropped and counted. The worker takes up to `batch_size` alerts per
delivery, so a storm of failures costs a few requests, not one per alert.

Outcomes (`monitord_alerts_total{sink,outcome}`): every alert handed to a worker
ends as `sent` (accepted; by at least one Alertmanager of a cluster) or `dropped`
(given up undelivered: queue full, HTTP 4xx, retries exhausted, shut down, or no
longer wanted). `failed` counts receivers that refused an alert for good (HTTP
4xx) or had not taken it when the backoff reached `retry_max`: once per alert
and Alertmanager at the end of the retries, and for a webhook at every further
attempt, so it rises for as long as the receiver is down.

Two retry policies. Without `wanted` (journal, Alertmanager) a batch is retried
until the backoff reached `retry_max`, then dropped: Alertmanager gets firing
alerts again at each re-send anyway. With `wanted` (webhooks, which get nothing
else) a batch is retried every `retry_max` for as long as `wanted` says its
alerts still matter (firing, or resolved less than `resolved_retention` ago), and
what is still queued at shutdown stays queued for the checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from monitord.alerts.counters import AlertCounters
from monitord.alerts.model import Alert
from monitord.alerts.sinks import DeliveryError, Sink

log = logging.getLogger("monitord.alerts")


class DeliveryWorker:
    """Deliver alerts queued by the engine to one sink, off the ingestion path."""

    def __init__(
        self,
        sink: Sink,
        counters: AlertCounters,
        queue_size: int = 10_000,
        batch_size: int = 500,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        wanted: Callable[[Alert], bool] | None = None,
    ) -> None:
        self.sink = sink
        self.counters = counters
        self.wanted = wanted
        self.queue_size = max(1, queue_size)
        self.batch_size = max(1, batch_size)
        self.retry_initial = max(0.001, retry_initial)
        self.retry_max = max(self.retry_initial, retry_max)
        self._queue: deque[Alert] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._wake = threading.Event()  # cuts a backoff wait short when closing
        self._deadline: float | None = None  # monotonic; set by close()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._batch: list[Alert] = []  # being delivered (the worker thread's; read for pending())

    @property
    def name(self) -> str:
        return self.sink.name

    def _count(self, outcome: str, n: int = 1) -> None:
        """Count `n` alerts of this sink with `outcome` (sent, failed, dropped)."""
        self.counters.count(self.sink.name, outcome, n)

    def __len__(self) -> int:
        return len(self._queue) + len(self._batch)

    def pending(self) -> list[Alert]:
        """Return what is being delivered and what is queued, in order (for the checkpoint)."""
        with self._cond:
            return [*self._batch, *self._queue]

    def put(self, alert: Alert) -> None:
        """Queue one alert (never blocks); the oldest is dropped when the queue is full."""
        self.put_many((alert,))

    def put_many(self, alerts: Iterable[Alert]) -> None:
        dropped = 0
        with self._cond:
            queue = self._queue
            was_empty = not queue
            for alert in alerts:
                if len(queue) >= self.queue_size:
                    queue.popleft()
                    dropped += 1
                queue.append(alert)
            if was_empty and queue:
                self._cond.notify()
        if dropped:
            self._count("dropped", dropped)

    def take_all(self) -> list[Alert]:
        """Remove and return what is queued (a reconfigured sink hands it to its successor)."""
        with self._cond:
            items = list(self._queue)
            self._queue.clear()
        return items

    @property
    def started(self) -> bool:
        return self._thread is not None

    def drop_queued(self) -> None:
        """Count what is still queued as dropped and forget it."""
        rest = self.take_all()
        if rest:
            self._count("dropped", len(rest))

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"alerts-{self.sink.name}", daemon=True
        )
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Ask the worker to drain until `deadline` (time.monotonic()) and then stop."""
        with self._cond:
            self._deadline = deadline
            self._cond.notify()
        self._wake.set()

    def join(self, deadline: float) -> bool:
        """Wait for the worker until `deadline`; True when it has stopped."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(max(0.0, deadline - time.monotonic()))
        return not thread.is_alive()

    def close(self, deadline_seconds: float) -> None:
        """Drain for at most `deadline_seconds`, then stop; what is left is counted dropped."""
        deadline = time.monotonic() + deadline_seconds
        self.stop(deadline)
        if self._thread is None:
            self.drop_queued()
            return
        self.join(deadline)

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and self._deadline is None:
                    self._cond.wait()
                if not self._queue or self._past_deadline():
                    break
                n = min(self.batch_size, len(self._queue))
                self._batch = [self._queue.popleft() for _ in range(n)]
            try:
                batch = self._still_wanted(self._batch)
                if batch:
                    self._deliver(batch)
            finally:
                with self._cond:
                    self._batch = []
        if self.wanted is None:
            self.drop_queued()
        # else: what is left stays queued; the engine's checkpoint keeps it for the next run

    def _still_wanted(self, batch: list[Alert]) -> list[Alert]:
        """Return the alerts of `batch` that still matter; count the others dropped."""
        if self.wanted is None:
            return batch
        keep = [a for a in batch if self.wanted(a)]
        if len(keep) < len(batch):
            self._count("dropped", len(batch) - len(keep))
        return keep

    def _deliver(self, batch: list[Alert]) -> None:
        """Try a batch until it is delivered, a retry cannot help, or the drain deadline
        passed; without `wanted`, also until the backoff reached `retry_max` once."""
        sink, delay, window_over = self.sink, self.retry_initial, False
        while True:
            try:
                refused = sink.deliver(batch)
            except DeliveryError as exc:
                if not self._failing:
                    log.warning("alerts: delivery to %s failed: %s", sink.target, exc)
                    self._failing = True
                if window_over or not exc.retry:
                    self._count("failed", len(batch) * exc.receivers)
                if not exc.retry or (window_over and self.wanted is None):
                    self._give_up(batch, exc)
                    return
                if window_over:
                    batch = self._still_wanted(batch)
                    if not batch:
                        return
                wait = delay
                if self._deadline is not None:
                    wait = min(wait, max(0.0, self._deadline - time.monotonic()))
                if self._wake.wait(wait):
                    self._wake.clear()  # closing began: later waits run to the drain deadline
                if self._past_deadline():  # no attempt after it: the checkpoint follows
                    if self.wanted is None:
                        self._give_up(batch, exc)
                    else:  # back to the front of the queue, for the checkpoint
                        with self._cond:
                            self._queue.extendleft(reversed(batch))
                            self._batch = []
                    return
                window_over = delay >= self.retry_max
                delay = min(delay * 2, self.retry_max)
                continue
            except Exception:  # a bug in a sink must not kill delivery for the others
                log.exception("alerts: sink %s raised", sink.target)
                self._count("dropped", len(batch))
                return
            if self._failing:
                log.info("alerts: delivery to %s works again", sink.target)
                self._failing = False
            self._count("sent", len(batch))
            if refused:  # receivers of a cluster that did not take what another one did
                self._count("failed", len(batch) * refused)
            return

    def _give_up(self, batch: list[Alert], exc: DeliveryError) -> None:
        self._count("dropped", len(batch))
        log.warning("alerts: gave up on %d alert(s) for %s: %s", len(batch), self.sink.target, exc)
