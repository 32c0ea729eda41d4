"""A worker thread per sink: bounded queue, batches, retries with exponential backoff.

The ingestion thread only appends to a deque under a lock (`put`), so a slow
or dead receiver never slows parsing: when the queue is full the oldest alert
is dropped and counted. The worker takes up to `batch_size` alerts per
delivery, so a storm of failures costs a few requests, not one per alert.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable

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
    ) -> None:
        self.sink = sink
        self.counters = counters
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
        self._busy = False

    @property
    def name(self) -> str:
        return self.sink.name

    def __len__(self) -> int:
        return len(self._queue) + (1 if self._busy else 0)

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
            self.counters.count(self.sink.name, "dropped", dropped)

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
            self.counters.count(self.sink.name, "dropped", len(rest))

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
                batch = [self._queue.popleft() for _ in range(n)]
                self._busy = True
            try:
                self._deliver(batch)
            finally:
                self._busy = False
        self.drop_queued()

    def _deliver(self, batch: list[Alert]) -> None:
        """Try a batch until it is delivered, a retry cannot help, the backoff reached
        `retry_max` once, or the drain deadline passed; then count it sent or failed."""
        sink, delay = self.sink, self.retry_initial
        while True:
            try:
                sink.deliver(batch)
            except DeliveryError as exc:
                if not self._failing:
                    log.warning("alerts: delivery to %s failed: %s", sink.target, exc)
                    self._failing = True
                gave_up = not exc.retry or delay > self.retry_max or self._past_deadline()
                if gave_up:
                    self.counters.count(sink.name, "failed", len(batch))
                    log.warning(
                        "alerts: gave up on %d alert(s) for %s: %s", len(batch), sink.target, exc
                    )
                    return
                wait = delay
                if self._deadline is not None:
                    wait = min(wait, max(0.0, self._deadline - time.monotonic()))
                if self._wake.wait(wait):
                    self._wake.clear()  # closing began: later waits run to the drain deadline
                delay = min(delay * 2, self.retry_max) if delay < self.retry_max else delay * 2
                continue
            except Exception:  # a bug in a sink must not kill delivery for the others
                log.exception("alerts: sink %s raised", sink.target)
                self.counters.count(sink.name, "failed", len(batch))
                return
            if self._failing:
                log.info("alerts: delivery to %s works again", sink.target)
                self._failing = False
            self.counters.count(sink.name, "sent", len(batch))
            return
