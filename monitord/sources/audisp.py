"""The `audisp` source: records from auditd's plugin pipe on stdin.

auditd blocks or drops when its plugin queue fills, so a reader thread keeps
stdin drained whatever the later stages do: it hands whole lines to the loop
through a bounded buffer and drops whole lines when that is full, never
blocking and never joining the pieces of two lines. Every line is either read
(the parser's count) or dropped (`monitord_records_dropped_total`), exactly.
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
        self.dropped = dropped  # the daemon's telemetry: written by the loop's thread only
        self.parser = StreamParser(stats, config.max_line_length, on_error)
        self.max_line_length = config.max_line_length
        self.limit = max(1, config.queue_size) * BYTES_PER_RECORD
        # Shared with the reader thread, under _lock: blocks of whole lines, their size,
        # lines dropped since the loop last looked, EOF.
        self._blocks: deque[bytes] = deque()
        self._queued = 0
        self._dropped_lines = 0
        self._eof = False
        self._lock = threading.Lock()
        self._drained = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._reader, name="audisp-reader", daemon=True)
        self._error: str | None = None

    def open(self, position: Position | None) -> None:
        # A pipe has no position: the checkpoint restores state, auditd sends what is new.
        self._thread.start()

    def _reader(self) -> None:
        """Read the pipe until EOF, queueing whole lines or dropping (and counting) them.

        A line is only ever queued or dropped whole: the unfinished end of a read waits
        here for its newline, so a dropped block never leaves half a line behind.
        """
        partial = b""  # the unfinished last line, at most max_line_length + 1 bytes kept
        overlong = False  # partial was cut: the rest of that line is skipped up to its newline
        while True:
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            except OSError as err:
                self._error = f"reading the plugin pipe failed: {err.strerror}"
                chunk = b""
            block = b""
            first_nl = chunk.find(b"\n")
            if first_nl >= 0:
                last_nl = chunk.rfind(b"\n")
                # A cut line goes on as its kept prefix: the parser counts it, as too long.
                first = partial + (b"\n" if overlong else chunk[: first_nl + 1])
                block = first + chunk[first_nl + 1 : last_nl + 1]
                partial, overlong = chunk[last_nl + 1 :], False
            elif chunk and not overlong:
                partial += chunk
            elif not chunk and partial:
                block, partial = partial, b""  # EOF: the last line, without its newline
            if len(partial) > self.max_line_length:
                partial, overlong = partial[: self.max_line_length + 1], True
            self._hand_over(block, eof=not chunk)
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the loop has a wake-up pending already
            except OSError:
                return  # closed: the daemon is shutting down
            if not chunk:
                return

    def _hand_over(self, block: bytes, eof: bool) -> None:
        with self._lock:
            if block:
                if self._queued and self._queued + len(block) > self.limit:
                    # Never block auditd: drop whole lines, and count them.
                    self._dropped_lines += block.count(b"\n") + (not block.endswith(b"\n"))
                else:
                    self._blocks.append(block)
                    self._queued += len(block)
            if eof:
                self._eof = True

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
            blocks = list(self._blocks)
            self._blocks.clear()
            self._queued = 0
            dropped, self._dropped_lines = self._dropped_lines, 0
            eof = self._eof
        if dropped:
            self.dropped["queue_full"] += dropped
        records: list[AuditRecord] = []
        for block in blocks:
            records.extend(self.parser.feed(block))
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
