"""The checkpoint: source position and everything derived up to it, written atomically.

State and position are saved together, so after a crash the daemon resumes
reading exactly where the saved state ends: nothing is lost and nothing is
counted twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
FILENAME: Final = "checkpoint.json"


@dataclass
class CheckpointCounters:
    """When the last checkpoint was written and how many writes failed (the daemon thread's)."""

    time: float | None = None
    errors: int = 0

    def collect(self) -> Iterator[Metric]:
        """Yield the checkpoint's metric families."""
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        when = GaugeMetricFamily(
            "monitord_checkpoint_timestamp_seconds",
            "When the last checkpoint was written (Unix seconds).",
        )
        if self.time is not None:
            when.add_metric([], self.time)
        yield when
        errors = CounterMetricFamily(
            "monitord_checkpoint_errors_total", "Checkpoint writes that failed."
        )
        errors.add_metric([], self.errors)
        yield errors

    def to_json(self) -> dict[str, Any]:
        """Return this part of the checkpoint's `telemetry` object (the time is `saved_at`)."""
        return {"checkpoint_errors": self.errors}

    def restore(self, doc: Mapping[str, Any], saved_at: float | None = None) -> None:
        """Load what `to_json` saved and the checkpoint's own `saved_at`."""
        errors = int(doc.get("checkpoint_errors", 0))
        self.time = None if saved_at is None else float(saved_at)
        self.errors = errors


class CheckpointStore:
    """Load and save `checkpoint.json` in the state directory; count what was written."""

    def __init__(self, directory: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        self.path = self.dir / FILENAME
        self.clock = clock
        self.counters = CheckpointCounters()

    def load(self) -> dict[str, Any] | None:
        """Return the saved document, None when there is none.

        A corrupt or unreadable checkpoint is set aside (renamed) and logged, so a
        bad file can never make the daemon crash in a loop.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.error("cannot read checkpoint %s: %s; starting fresh", self.path, err.strerror)
            self._set_aside()
            return None
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            log.error("checkpoint %s is corrupt (%s); set aside, starting fresh", self.path, err)
            self._set_aside()
            return None
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            log.error("checkpoint %s has an unknown format; set aside, starting fresh", self.path)
            self._set_aside()
            return None
        return doc

    def save(self, doc: dict[str, Any]) -> int:
        """Write doc atomically and count it; return its size. Raises OSError, counted."""
        saved_at = self.clock()
        try:
            size = self._write(doc, saved_at)
        except OSError:
            self.counters.errors += 1
            raise
        self.counters.time = saved_at
        return size

    def _write(self, doc: dict[str, Any], saved_at: float) -> int:
        """Write doc atomically (temp file, fsync, rename, fsync dir); return its size."""
        body = dict(doc)
        body["version"] = FORMAT_VERSION
        body["saved_at"] = saved_at
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True, exist_ok=True)
            log.warning("state directory %s was missing (deleted?); created it again", self.dir)
        tmp = self.path.with_name(f".{FILENAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.path)
        dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return len(data)

    def _set_aside(self) -> None:
        target = self.path.with_name(f"{FILENAME}.corrupt-{int(time.time())}")
        try:
            self.path.replace(target)
            log.warning("old checkpoint kept as %s", target)
        except OSError as err:
            log.error("cannot set aside checkpoint %s: %s", self.path, err.strerror)


CHILD_NICE: Final = 10


class BackgroundSave:
    """At most one checkpoint written by a forked child; the parent reaps it without blocking.

    The child's outcome is counted in the store's counters when it is reaped.
    """

    def __init__(self, store: CheckpointStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.pid: int | None = None
        self.taken_at = 0.0

    def start(self, build: Callable[[], dict[str, Any]], in_child: Callable[[], None]) -> bool:
        """Fork a child that runs in_child(), then saves build(); False if one is running."""
        if self.pid is not None:
            return False
        taken_at = self.clock()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, checked through its result
            code = 1
            try:
                # Serialising 10,000 guests takes seconds of CPU: yield it to the ingestion
                # thread this snapshot must not slow down (2 cores, a busy collector).
                os.nice(CHILD_NICE)
                in_child()
                self.store.save(build())
                code = 0
            except OSError as err:
                log.error("cannot write checkpoint %s: %s", self.store.path, err.strerror)
            except BaseException:
                log.exception("checkpoint child failed")
            finally:
                logging.shutdown()
                os._exit(code)
        self.pid, self.taken_at = pid, taken_at
        return True

    def poll(self) -> tuple[bool, float] | None:
        """Return (succeeded, snapshot time) once the child has ended, None while it runs."""
        if self.pid is None:
            return None
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        return self._reaped(status)

    def wait(self) -> tuple[bool, float] | None:
        """Wait for a running child (before a synchronous save, so files land in order)."""
        if self.pid is None:
            return None
        _, status = os.waitpid(self.pid, 0)
        return self._reaped(status)

    def _reaped(self, status: int) -> tuple[bool, float]:
        self.pid = None
        ok = os.waitstatus_to_exitcode(status) == 0
        counters = self.store.counters
        if ok:
            counters.time = self.taken_at
        else:
            counters.errors += 1
        return ok, self.taken_at
