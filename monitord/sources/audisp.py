"""The `audisp` source: records from auditd's plugin pipe on stdin.

auditd blocks or drops when its plugin queue fills, so a reader thread keeps
stdin drained whatever the later stages do: it hands chunks to the loop through
a bounded buffer and counts what it has to drop, never deadlocking.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections import Counter, deque
from collections.abc import Sequence
from typing import Final

from monitord.audit.parser import ErrorHandler, ParseStats, StreamParser
from monitord.audit.record import AuditRecord
from monitord.config import SourceConfig
from monitord.sources.base import Health, Position

log = logging.getLogger(__name__)

READ_SIZE: Final = 1 << 16
# The queue bound is given in records; a record line is ~300-600 bytes.
BYTES_PER_RECORD: Final = 512


class AudispSource:
    """Read auditd's plugin stream (string format) from a file descriptor, stdin by default."""

    name = "audisp"

    def __init__(
        self,
        config: SourceConfig,
        stats: ParseStats,
        dropped: Counter[str],
        on_error: ErrorHandler | None = None,
        fd: int = 0,
    ) -> None:
        self.fd = fd
        self.stats = stats
        self.dropped = dropped
        self.parser = StreamParser(stats, config.max_line_length, on_error)
        self.limit = max(1, config.queue_size) * BYTES_PER_RECORD
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._lock = threading.Lock()
        self._eof = False
        self._drained = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._reader, name="audisp-reader", daemon=True)
        self._error: str | None = None

    def open(self, position: Position | None) -> None:
        # A pipe has no position: the checkpoint restores state, auditd sends what is new.
        self._thread.start()

    def _reader(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            except OSError as err:
                self._error = f"reading the plugin pipe failed: {err.strerror}"
                chunk = b""
            with self._lock:
                if not chunk:
                    self._eof = True
                elif self._queued + len(chunk) > self.limit:
                    # Never block auditd: drop, count and carry on.
                    self.dropped["queue_full"] += chunk.count(b"\n")
                else:
                    self._chunks.append(chunk)
                    self._queued += len(chunk)
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the loop has a wake-up pending already
            except OSError:
                return  # closed: the daemon is shutting down
            if not chunk:
                return

    def poll(self, timeout: float, wake_fds: Sequence[int] = ()) -> list[AuditRecord]:
        records = self._take()
        if records or self._drained:
            return records
        try:
            ready, _, _ = select.select([self._wake_r, *wake_fds], [], [], max(0.0, timeout))
        except InterruptedError:  # pragma: no cover
            ready = []
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        return self._take()

    def _take(self) -> list[AuditRecord]:
        with self._lock:
            chunks = list(self._chunks)
            self._chunks.clear()
            self._queued = 0
            eof = self._eof
        records: list[AuditRecord] = []
        for chunk in chunks:
            records.extend(self.parser.feed(chunk))
        if eof and not self._drained:
            records.extend(self.parser.finish())
            self._drained = True
        return records

    def position(self) -> Position | None:
        return None

    @property
    def caught_up(self) -> bool:
        # Everything on the pipe is new: auditd hands plugins records as they happen.
        return True

    @property
    def finished(self) -> bool:
        return self._drained

    @property
    def queued_bytes(self) -> int:
        return self._queued

    def take_switch(self) -> bool:
        return False  # a pipe has no files to switch between

    def health(self) -> Health:
        if self._error is not None:
            return Health(False, self._error)
        return Health(True)

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
