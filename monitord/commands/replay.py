"""`monitord replay`: the whole pipeline over existing logs, no alerts (docs/INTERFACE.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import BinaryIO

from monitord.audit.parser import ParseStats, StreamParser
from monitord.audit.record import AuditRecord
from monitord.commands import guesttable
from monitord.commands.inputs import open_all, read_chunks
from monitord.config import StateConfig
from monitord.pipeline import Pipeline
from monitord.state.table import GuestTable
from monitord.textout import printable_doc


def replay(inputs: list[tuple[str, BinaryIO]], table: GuestTable) -> ParseStats:
    """Feed the inputs, in order, through parser and pipeline; expire by record time.

    Expiry runs after each chunk's records, the order `monitord run` follows too.
    Returns what the parser counted.
    """
    stats = ParseStats()
    pipeline = Pipeline(table, alerts=None)
    for name, stream in inputs:
        # One parser per file: a partial last line never joins the next file's first.
        parser = StreamParser(stats=stats)
        try:
            for chunk in read_chunks(stream, name):
                _apply(parser.feed(chunk), pipeline, table)
            _apply(parser.finish(), pipeline, table)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
    return stats


def _apply(records: list[AuditRecord], pipeline: Pipeline, table: GuestTable) -> None:
    pipeline.apply(records, live=False)
    if pipeline.last_record_time is not None:
        table.expire(pipeline.last_record_time)


def main(args: argparse.Namespace) -> int:
    inputs = open_all(list(args.files))
    # The document has no `events`: keeping none saves their memory.
    table = GuestTable(StateConfig(max_events=0))
    stats = replay(inputs, table)
    # Names with bytes that are not UTF-8 are shown escaped (monitord/textout.py).
    doc = printable_doc(table.document())
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(guesttable.render(doc["guests"]))
    errors = sum(stats.errors.values())
    if errors:
        detail = ", ".join(f"{r}={n}" for r, n in sorted(stats.errors.items()))
        print(f"monitord: {errors} malformed line(s) skipped ({detail})", file=sys.stderr)
    sys.stdout.flush()
    return 0
