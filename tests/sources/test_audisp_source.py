"""The audisp source under overload: a small queue, a known stream, a slow consumer.

Whole lines are dropped, never pieces of them (the issue's defect 3: 82 spliced
lines, 2 phantom guests); lines read plus lines dropped is exactly what was written;
the writer (auditd) is never blocked; the dropped counter is written by the loop's
thread only.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import pytest

from monitord.audit.parser import ParseStats
from monitord.config import SourceConfig
from monitord.sources.audisp import AudispSource


def line(i: int) -> bytes:
    return (
        f"type=VIRT_CONTROL msg=audit(1700000000.{i % 1000:03d}:{i}): pid=1 uid=0 "
        f'auid=4294967295 ses=4294967295 msg=\'virt=kvm op=start reason=booted vm="g{i}" '
        f'uuid=00000000-0000-0000-0000-{i:012d} vm-pid=1 exe="/usr/sbin/libvirtd" '
        "hostname=? addr=? terminal=? res=success'\n"
    ).encode()


def noise(i: int) -> bytes:
    return f"type=SYSCALL msg=audit(1700000000.000:{i}): arch=c000003e syscall=59 x={i}\n".encode()


class Feed:
    """A pipe written by a thread (auditd's side) in writes of `batch` lines."""

    def __init__(self, lines: list[bytes], batch: int = 997) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.lines = lines
        self.batch = batch
        self.finished_at: float | None = None
        self.thread = threading.Thread(target=self._write)

    def _write(self) -> None:
        data = self.lines
        for i in range(0, len(data), self.batch):
            os.write(self.write_fd, b"".join(data[i : i + self.batch]))
        os.close(self.write_fd)
        self.finished_at = time.monotonic()

    def start(self) -> Feed:
        self.thread.start()
        return self


def source(feed: Feed, queue_size: int, **config: int) -> tuple[AudispSource, Counter[str]]:
    dropped: Counter[str] = Counter()
    src = AudispSource(
        SourceConfig(kind="audisp", queue_size=queue_size, **config),  # type: ignore[arg-type]
        ParseStats(),
        dropped,
        fd=feed.read_fd,
    )
    src.open(None)
    return src, dropped


def test_overload_drops_whole_lines_and_counts_them_exactly() -> None:
    """200,000 lines through a queue of 200 records with a slow consumer: every record is a
    real one (name matches UUID), no parse errors, and read + dropped == written."""
    written = [line(i) if i % 4 else noise(i) for i in range(200_000)]
    feed = Feed(written)
    src, dropped = source(feed, queue_size=200)
    feed.start()
    records = []
    while not src.finished:
        records += src.poll(1.0)
        time.sleep(0.002)  # a slower pipeline than the pipe
    feed.thread.join()
    src.close()
    for rec in records:
        index = int(str(rec.uuid).rsplit("-", 1)[1])
        assert rec.vm == f"g{index}", rec
    stats = src.stats
    assert not stats.errors, stats.errors
    assert dropped["queue_full"] > 0, "the queue never filled: the test did not overload it"
    assert stats.lines + dropped["queue_full"] == len(written)
    assert stats.records == len(records)


def test_writer_is_never_blocked() -> None:
    """With nobody polling at all, the writer still gets all of 40 MiB into the pipe
    (auditd never waits on monitord); everything beyond the queue is counted as dropped."""
    written = [line(i) for i in range(150_000)]
    feed = Feed(written)
    src, dropped = source(feed, queue_size=100)
    started = time.monotonic()
    feed.start()
    feed.thread.join(timeout=60)
    assert feed.finished_at is not None and feed.finished_at - started < 30
    time.sleep(0.2)
    assert dropped == Counter()  # counted by the loop's thread, at its next poll
    records = []
    while not src.finished:
        records += src.poll(1.0)
    src.close()
    assert src.stats.lines + dropped["queue_full"] == len(written)
    assert 0 < len(records) < len(written)


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_overlong_lines_and_last_line_without_newline(batch: int) -> None:
    """A line longer than max_line_length is counted (as too long) without being kept whole,
    the lines around it are intact, and a last line without newline still counts."""
    long_line = b"type=VIRT_CONTROL msg=audit(1.000:1): " + b"x" * 300_000 + b"\n"
    written = [line(1), long_line, line(2), long_line, line(3), line(4).rstrip(b"\n")]
    feed = Feed(written, batch=batch)
    src, dropped = source(feed, queue_size=100_000, max_line_length=65_536)
    feed.start()
    records = []
    while not src.finished:
        records += src.poll(1.0)
    feed.thread.join()
    src.close()
    assert [r.vm for r in records] == ["g1", "g2", "g3", "g4"]
    assert src.stats.errors == Counter({"line_too_long": 2})
    assert src.stats.lines == len(written) and dropped == Counter()
