"""`monitord replay`: the whole pipeline over existing logs, no alerts (CONTRACT.md)."""

from __future__ import annotations

import argparse
import functools
import json
import marshal
import os
import signal
import struct
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO, Final, cast

from monitord.audit import parallel, prefilter
from monitord.audit.parser import FastContext, ParseStats, StreamParser
from monitord.audit.record import AuditRecord
from monitord.commands import guesttable
from monitord.commands.inputs import READ_SIZE, open_all, read_chunks, refill_chunks
from monitord.config import StateConfig
from monitord.errors import InputError
from monitord.pipeline import Pipeline
from monitord.state.table import GuestTable
from monitord.telemetry import Telemetry


def replay(
    inputs: list[tuple[str, BinaryIO]],
    table: GuestTable,
    telemetry: Telemetry | None = None,
    workers: int = 1,
    min_size: int = parallel.MIN_SIZE,
) -> Telemetry:
    """Feed the inputs, in order, through parser and pipeline; expire by record time.

    With the C accelerator and a table that keeps no events (`monitord replay`'s), lines
    are applied to the table by C as they are read (`StreamParser.feed_apply`); with
    `workers=2`, a large regular file is read by a forked candidate reader meanwhile
    (`_prefiltered`). Otherwise, with `workers=2`, a large regular file is parsed on two
    cores (`_two_processes`). The table, counters and telemetry end exactly the same
    whichever way.
    """
    telemetry = telemetry if telemetry is not None else Telemetry(source="file")
    pipeline = Pipeline(table, telemetry, alerts=None)
    context = table.fast_context()
    for name, stream in inputs:
        # One parser per file: a partial last line never joins the next file's first.
        parser = StreamParser(stats=telemetry.parse)
        try:
            if context is not None and parser.accelerated:
                if (
                    workers > 1
                    and stream is not sys.stdin.buffer
                    and prefilter.available()
                    and parallel.worth_it(stream, min_size)
                ):
                    _prefiltered(stream, name, parser, context, pipeline, table, telemetry)
                else:
                    _applied_in_c(stream, name, parser, context, pipeline, table, telemetry)
                continue
            if (
                workers > 1
                and stream is not sys.stdin.buffer
                and parallel.worth_it(stream, min_size)
            ):
                _two_processes(name, stream, parser, pipeline, table, telemetry)
                continue
            for chunk in read_chunks(stream, name):
                _apply(parser.feed(chunk), pipeline, table, telemetry)
            _apply(parser.finish(), pipeline, table, telemetry)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
    if telemetry.last_record_time is not None:
        table.expire(telemetry.last_record_time)
    return telemetry


def _apply(
    records: list[AuditRecord], pipeline: Pipeline, table: GuestTable, telemetry: Telemetry
) -> None:
    """One chunk's records, then expiry: the order `monitord run` follows too."""
    pipeline.apply(records, live=False)
    if telemetry.last_record_time is not None:
        table.expire(telemetry.last_record_time)


def _applied_in_c(
    stream: BinaryIO,
    name: str,
    parser: StreamParser,
    context: FastContext,
    pipeline: Pipeline,
    table: GuestTable,
    telemetry: Telemetry,
) -> None:
    """`_apply` per chunk, with C applying the lines it reads straight to the table."""
    apply = functools.partial(pipeline.apply, live=False)
    for chunk in refill_chunks(stream, name):
        _expire(parser.feed_apply(chunk, context, apply), table, telemetry)
    _expire(parser.finish_apply(context, apply), table, telemetry)


def _prefiltered(
    stream: BinaryIO,
    name: str,
    parser: StreamParser,
    context: FastContext,
    pipeline: Pipeline,
    table: GuestTable,
    telemetry: Telemetry,
) -> None:
    """`_applied_in_c` on two cores: a forked reader reads, counts and scans the file and
    passes on only each chunk's candidate lines (monitord.audit.prefilter), which this
    process parses and applies meanwhile, after the same chunks as one reader would."""
    found = ParseStats()  # what parsing the candidate lines finds; the reader counts the rest
    lines = StreamParser(stats=found, max_line_length=parser.max_line_length)
    apply = functools.partial(pipeline.apply, live=False)
    for chunk in prefilter.candidate_chunks(stream, name, parser.stats, parser.max_line_length):
        _expire(lines.apply_lines(chunk, context, apply), table, telemetry)
    # Every line `lines` read was a candidate line the reader counted already.
    found.lines = 0
    _merge_stats(parser.stats, found)


def _expire(latest: float | None, table: GuestTable, telemetry: Telemetry) -> None:
    """After a chunk applied in C: the newest record time so far, then expiry by it."""
    last = telemetry.last_record_time
    if latest is not None and (last is None or latest > last):
        telemetry.last_record_time = last = latest
    if last is not None:
        table.expire(last)


_LENGTH: Final = struct.Struct("<Q")
# The share of a file this process parses when a worker parses the rest: this process
# also applies every record (~3 us each) and loads the worker's.
PARENT_SHARE: Final = 0.5
# One record across the process boundary: AuditRecord's fields as plain values (marshal
# is ~5x faster than pickling the dataclass).
_Wire = tuple[
    str, int, float, int, "str | None", "int | None", "int | None", "int | None",
    "int | None", "str | None", tuple[str, ...], tuple["str | None", ...],
    tuple[tuple[str, str], ...],
]  # fmt: skip


def _to_wire(r: AuditRecord) -> _Wire:
    enrichment = r.enrichment
    return (
        r.type, r.type_id, r.time, r.serial, r.node, r.pid, r.uid, r.auid, r.ses, r.subj,
        tuple(r.fields), tuple(r.fields.values()),
        tuple(enrichment.items()) if enrichment else (),
    )  # fmt: skip


def _from_wire(w: _Wire) -> AuditRecord:
    return AuditRecord(
        w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9],
        dict(zip(w[10], w[11], strict=True)), dict(w[12]),
    )  # fmt: skip


def _cut(fd: int, size: int, max_line_length: int) -> int | None:
    """A chunk boundary near PARENT_SHARE of the file where the sequential reader holds at
    most a short partial line (None: no such place, parse it all here)."""
    for cut in parallel.cut_points(fd, size, READ_SIZE, int(size * PARENT_SHARE), max_line_length):
        if cut > 0:
            return cut
    return None


def _partial_at(fd: int, cut: int, max_line_length: int) -> bytes:
    """The unfinished line a sequential reader holds at a valid cut."""
    lo = max(0, cut - max_line_length - 1)
    before = os.pread(fd, cut - lo, lo)
    return before[before.rfind(b"\n") + 1 :]


def _read_segment(
    fd: int, name: str, parser: StreamParser, start: int, end: int | None
) -> Iterator[list[AuditRecord]]:
    """The records of each READ_SIZE chunk of [start, end) (to EOF and finish when end is None),
    exactly as a sequential reader from offset 0 gets them (chunks on the same grid)."""
    pos = start
    while end is None or pos < end:
        try:
            chunk = os.pread(fd, READ_SIZE if end is None else min(READ_SIZE, end - pos), pos)
        except OSError as err:
            raise InputError(f"cannot read {name}: {err.strerror}") from None
        if not chunk:
            break
        pos += len(chunk)
        yield parser.feed(chunk)
    if end is None:
        yield parser.finish()


def _worker(fd: int, name: str, cut: int, max_line_length: int, out: BinaryIO) -> None:
    """In the forked process: parse [cut, EOF) and write each chunk's records, then the stats."""
    parser = StreamParser(max_line_length=max_line_length)
    parser.resume(_partial_at(fd, cut, max_line_length))
    for records in _read_segment(fd, name, parser, cut, None):
        if records:
            _write(out, [_to_wire(r) for r in records])
    _write(out, parser.stats.to_json())
    out.flush()


def _write(out: BinaryIO, item: Any) -> None:
    data = marshal.dumps(item)
    out.write(_LENGTH.pack(len(data)))
    out.write(data)


def _read(spool: BinaryIO) -> Any:
    # marshal.load() on a file reads it in tiny pieces: load from bytes instead.
    (n,) = _LENGTH.unpack(spool.read(_LENGTH.size))
    return marshal.loads(spool.read(n))


def _two_processes(
    name: str,
    stream: BinaryIO,
    parser: StreamParser,
    pipeline: Pipeline,
    table: GuestTable,
    telemetry: Telemetry,
) -> None:
    """Parse a large file's tail in a forked worker while this process parses and applies
    its head; then apply the worker's records in file order.

    The cut is a READ_SIZE boundary, so both processes read the same chunks as one
    sequential reader and expiry runs after the same records. The worker writes to an
    unlinked temporary file (no pipe to fill while this process is busy). If it fails,
    this process parses the tail itself: same result, one core.
    """
    fd = stream.fileno()
    cut = _cut(fd, os.fstat(fd).st_size, parser.max_line_length)
    if cut is None:
        for records in _read_segment(fd, name, parser, 0, None):
            _apply(records, pipeline, table, telemetry)
        return
    import tempfile  # only this path needs it (and it costs `replay` 3 ms to import)

    with tempfile.TemporaryFile() as spool:
        pid = parallel.fork_worker(
            lambda: _worker(fd, name, cut, parser.max_line_length, cast(BinaryIO, spool))
        )
        try:
            for records in _read_segment(fd, name, parser, 0, cut):
                _apply(records, pipeline, table, telemetry)
            _, status = os.waitpid(pid, 0)
            pid = 0
            if os.waitstatus_to_exitcode(status) != 0:
                # The worker failed (it may have met a read error): do its part here.
                parser.resume(_partial_at(fd, cut, parser.max_line_length))
                for records in _read_segment(fd, name, parser, cut, None):
                    _apply(records, pipeline, table, telemetry)
                return
            spool.seek(0)
            while True:
                item = _read(cast(BinaryIO, spool))
                if isinstance(item, dict):
                    _merge_stats(parser.stats, ParseStats.from_json(item))
                    break
                _apply([_from_wire(w) for w in item], pipeline, table, telemetry)
        finally:
            if pid:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def _merge_stats(into: ParseStats, more: ParseStats) -> None:
    into.lines += more.lines
    into.bytes += more.bytes
    into.records += more.records
    into.ignored.update(more.ignored)
    into.errors.update(more.errors)


def main(args: argparse.Namespace) -> int:
    inputs = open_all(list(args.files))
    # The document has no `events`: keeping none lets C apply the records (fast_context).
    table = GuestTable(StateConfig(max_events=0))
    # Both cores when there are two and a file is large enough to repay the fork.
    telemetry = replay(inputs, table, workers=min(2, parallel.usable_cpus()))
    doc = table.document()
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(guesttable.render(doc["guests"]))
    errors = sum(telemetry.parse.errors.values())
    if errors:
        detail = ", ".join(f"{r}={n}" for r, n in sorted(telemetry.parse.errors.items()))
        print(f"monitord: {errors} malformed line(s) skipped ({detail})", file=sys.stderr)
    sys.stdout.flush()
    return 0
