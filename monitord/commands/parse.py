"""`monitord parse`: print the libvirt records of audit logs as JSON Lines (docs/INTERFACE.md)."""

from __future__ import annotations

import argparse
import sys

from monitord.audit.jsonl import json_reader
from monitord.audit.parser import ParseError, ParseStats, StreamParser
from monitord.commands.inputs import open_all, read_chunks


class ErrorReporter:
    """Print malformed lines to stderr, at most `limit` of them, then only count."""

    def __init__(self, limit: int = 20) -> None:
        self.limit = limit
        self.shown = 0
        self.name = ""

    def __call__(self, err: ParseError, line: bytes) -> None:
        if self.shown < self.limit:
            self.shown += 1
            text = line[:160].decode("utf-8", "backslashreplace")
            print(
                f"monitord: {self.name}: malformed record ({err.reason}): {text}", file=sys.stderr
            )


def main(args: argparse.Namespace) -> int:
    inputs = open_all(args.files)
    reporter = ErrorReporter()
    sink = sys.stdout.buffer  # the JSON lines are ASCII bytes, written as such
    # Candidate lines straight to JSON lines: whole runs in C when the leaf is built.
    reader = json_reader()
    stats = ParseStats()
    for name, stream in inputs:
        reporter.name = name
        # One parser per file: a partial last line never joins the next file's first.
        parser = StreamParser(stats, on_error=reporter, reader=reader)
        try:
            for chunk in read_chunks(stream, name):
                sink.write(b"".join(parser.feed(chunk)))
            sink.write(b"".join(parser.finish()))
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
    errors = sum(stats.errors.values())
    if errors:
        detail = ", ".join(f"{reason}={n}" for reason, n in sorted(stats.errors.items()))
        print(f"monitord: {errors} malformed line(s) skipped ({detail})", file=sys.stderr)
    sys.stdout.flush()
    return 0
