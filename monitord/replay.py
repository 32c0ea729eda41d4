"""`monitord replay`: the whole pipeline over existing logs, no alerts (CONTRACT.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import BinaryIO

from monitord import guesttable
from monitord.audit.parser import StreamParser
from monitord.config import StateConfig
from monitord.errors import InputError
from monitord.pipeline import Pipeline
from monitord.state import GuestTable
from monitord.telemetry import Telemetry

READ_SIZE = 1 << 20


def open_all(names: list[str]) -> list[tuple[str, BinaryIO]]:
    """Open every input before reading any, so an unreadable one fails with no output."""
    if not names:
        return [("<stdin>", sys.stdin.buffer)]
    opened: list[tuple[str, BinaryIO]] = []
    try:
        for name in names:
            if name == "-":
                opened.append(("<stdin>", sys.stdin.buffer))
                continue
            try:
                opened.append((name, open(name, "rb")))  # noqa: SIM115 - closed by replay()
            except IsADirectoryError:
                raise InputError(f"cannot read {name}: is a directory") from None
            except OSError as err:
                raise InputError(f"cannot read {name}: {err.strerror}") from None
    except InputError:
        for _, stream in opened:
            if stream is not sys.stdin.buffer:
                stream.close()
        raise
    return opened


def replay(
    inputs: list[tuple[str, BinaryIO]],
    table: GuestTable,
    telemetry: Telemetry | None = None,
) -> Telemetry:
    """Feed the inputs, in order, through parser and pipeline; expire by record time."""
    telemetry = telemetry if telemetry is not None else Telemetry(source="file")
    pipeline = Pipeline(table, telemetry, alerts=None)
    for name, stream in inputs:
        # One parser per file: a partial last line never joins the next file's first.
        parser = StreamParser(stats=telemetry.parse)
        try:
            while True:
                try:
                    chunk = stream.read(READ_SIZE)
                except OSError as err:
                    raise InputError(f"cannot read {name}: {err.strerror}") from None
                if not chunk:
                    break
                pipeline.apply(parser.feed(chunk), live=False)
                if telemetry.last_record_time is not None:
                    table.expire(telemetry.last_record_time)
            pipeline.apply(parser.finish(), live=False)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
    if telemetry.last_record_time is not None:
        table.expire(telemetry.last_record_time)
    return telemetry


def main(args: argparse.Namespace) -> int:
    inputs = open_all(list(args.files))
    table = GuestTable(StateConfig())
    telemetry = replay(inputs, table)
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
