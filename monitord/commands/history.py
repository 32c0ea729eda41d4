"""`monitord history`: a guest's (or every guest's) recorded libvirt events.

The events come from one of three places, the same for `monitord sessions`:
- the store (`--state-dir DIR`, default the configured state directory), read
  through read-only SQLite connections: safe while the daemon runs, which
  never waits for them;
- a running daemon's API (`--url URL`: `GET /api/v1/events`, page by page);
- audit logs (`--from-log FILE ...`), parsed as `monitord replay` does.

Times (`--since`, `--until`) are epoch seconds (`1700000000`), ISO 8601
(`2026-11-26`, `2026-11-26T16:30:00Z`, local time without a zone) or a time ago
(`-1h`, `2d`, `90m`).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from monitord.audit.record import AuditRecord
from monitord.commands.guesttable import table
from monitord.commands.status import get_document
from monitord.errors import InputError, RuntimeFailure, UserError
from monitord.state.effects import effect, subject
from monitord.state.history import (
    UUID_RE,
    EventQuery,
    HistoryError,
    HistoryReader,
    QueryError,
    event_document,
    matches,
    parse_time,
)

PAGE: Final = 1000
T = TypeVar("T")


class HistoryArgs:
    """The flags `history` and `sessions` share, checked: where from, which guest, when."""

    def __init__(self, args: argparse.Namespace, now: float | None = None) -> None:
        self.args = args
        self.now = time.time() if now is None else now
        try:
            self.since = parse_time(args.since, self.now) if args.since else None
            self.until = parse_time(args.until, self.now) if getattr(args, "until", None) else None
        except QueryError as err:
            raise UserError(str(err)) from None
        guest = args.guest
        self.uuid = guest.lower() if guest and UUID_RE.match(guest) else None
        self.name = guest if guest and self.uuid is None else None

    def guests(self) -> list[str | None]:
        """The UUIDs `--guest` names ([None]: every guest). A name selects every guest that
        bore it, with all its records (before and after a rename)."""
        if self.uuid is not None:
            return [self.uuid]
        if self.name is None:
            return [None]
        args = self.args
        if args.from_log:
            found = {r.fields.get("uuid") for r in log_records(args.from_log)
                     if r.fields.get("vm") == self.name}  # fmt: skip
        elif args.url:
            q = EventQuery(name=self.name, limit=PAGE)
            found = {d.get("uuid") for d in _from_url(args.url, q)}
        else:
            with open_store(args) as reader:
                found = {u for (_, _, u, _) in reader.subjects(name=self.name)}
        return list[str | None](sorted(x for x in found if x is not None))

    def all_documents(self, **filters: Any) -> Iterable[dict[str, Any]]:
        """Event documents of the selected guests and times, oldest first."""
        streams = [
            self.documents(EventQuery(uuid=u, since=self.since, until=self.until, limit=PAGE,
                                      **filters))
            for u in self.guests()
        ]  # fmt: skip
        return _merged(streams, lambda d: (d["time"], d["serial"]))

    def all_records(self) -> Iterable[AuditRecord]:
        """Every record of the selected guests (whole history: runs need all their records)."""
        streams = [self.records(EventQuery(uuid=u, limit=PAGE)) for u in self.guests()]
        return _merged(streams, lambda r: (r.time, r.serial))

    def documents(self, q: EventQuery) -> Iterator[dict[str, Any]]:
        """Event documents (the API's shape) the query selects, oldest first."""
        args = self.args
        if args.url:
            yield from _from_url(args.url, q)
        elif args.from_log:
            host = socket.gethostname()
            for record in log_records(args.from_log):
                if matches(record, q):
                    doc = record.to_json()
                    doc["host"] = record.node or host
                    yield doc
        else:
            host = socket.gethostname()
            with open_store(args) as reader:
                for event in reader.iter_events(q, page=PAGE):
                    yield event_document(event, host)

    def records(self, q: EventQuery) -> Iterator[AuditRecord]:
        """The records the query selects, oldest first (for sessions)."""
        args = self.args
        if args.from_log:
            yield from (r for r in log_records(args.from_log) if matches(r, q))
        elif args.url:
            for doc in _from_url(args.url, q):
                yield AuditRecord.from_json(doc)
        else:
            with open_store(args) as reader:
                yield from (event.record for event in reader.iter_events(q, page=PAGE))


def _merged(streams: list[Iterator[T]], key: Callable[[T], Any]) -> Iterable[T]:
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=key)


@contextlib.contextmanager
def open_store(args: argparse.Namespace) -> Iterator[HistoryReader]:
    """The store of `--state-dir`, else of the configured state directory, read-only; an
    error reading it is a RuntimeFailure."""
    directory = args.state_dir
    if directory is None:
        from monitord.config import load_config

        directory = load_config(args.config).state.dir
    if not Path(directory).is_dir():
        raise InputError(f"cannot read {directory}: no such directory")
    try:
        reader = HistoryReader.open(directory)
    except HistoryError as err:
        if "not found" in str(err):
            raise InputError(f"{err} (is --state-dir right?)") from None
        raise RuntimeFailure(str(err)) from None
    try:
        yield reader
    except HistoryError as err:
        raise RuntimeFailure(str(err)) from None
    finally:
        reader.close()


def log_records(names: Sequence[str]) -> Iterator[AuditRecord]:
    """Every libvirt record of the logs, in order (one parser per file, as `replay`)."""
    from monitord.audit.parser import StreamParser
    from monitord.commands.inputs import close_all, open_all, read_chunks

    inputs = open_all(list(names))
    try:
        for name, stream in inputs:
            parser = StreamParser()
            for chunk in read_chunks(stream, name):
                yield from parser.feed(chunk)
            yield from parser.finish()
    finally:
        close_all(inputs)


def _from_url(url: str, q: EventQuery) -> Iterator[dict[str, Any]]:
    params: dict[str, str] = {"limit": str(PAGE)}
    for key, value in (("uuid", q.uuid), ("name", q.name), ("op", q.op), ("result", q.result)):
        if value is not None:
            params[key] = value
    for key, t in (("since", q.since), ("until", q.until)):
        if t is not None:
            params[key] = repr(t)
    after: str | None = None
    while True:
        query = dict(params, **({"after": after} if after else {}))
        doc = get_document(url, f"/api/v1/events?{urllib.parse.urlencode(query)}", "events")
        yield from doc["events"]
        after = doc.get("next")
        if not after:
            return


# -- the terminal table ------------------------------------------------------------------------


def when(t: float | None) -> str:
    """Local time to the millisecond: `2026-11-26 16:30:05.250`."""
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def guest_label(doc: dict[str, Any]) -> str:
    name = doc.get("vm") or doc.get("name") or doc.get("uuid") or "?"
    return f"{name}@{doc['node']}" if doc.get("node") else str(name)


def what(doc: dict[str, Any]) -> str:
    """`start/booted`, `disk attach`, `label selinux`, or the type."""
    f = doc.get("fields") or {}
    if doc.get("type_id") == 2500:
        op, reason = f.get("op") or "?", f.get("reason")
        return f"{op}/{reason}" if reason else op
    if doc.get("type_id") == 2501:
        return " ".join(x for x in (f.get("resrc") or "?", f.get("reason")) if x)
    if doc.get("type_id") == 2502:
        return f"label {f.get('model') or '?'}"
    return str(doc.get("type"))


def detail(doc: dict[str, Any]) -> str:
    f = doc.get("fields") or {}
    if doc.get("type_id") == 2500:
        pid = f.get("vm-pid")
        return f"vm-pid {pid}" if pid not in (None, "0") else ""
    if doc.get("type_id") == 2502:
        return str(f.get("vm-ctx") or "")
    if doc.get("type_id") == 2501:
        resrc = f.get("resrc")
        old, new = f.get(f"old-{resrc}"), f.get(f"new-{resrc}")
        if old is not None or new is not None:
            return f"{old or '-'} -> {new or '-'}"
        try:
            return subject(effect(AuditRecord.from_json(doc))) or ""
        except (KeyError, TypeError, ValueError):
            return ""
    return ""


def render_events(docs: Sequence[dict[str, Any]]) -> str:
    rows = [
        (when(d.get("time")), guest_label(d), what(d), str(d.get("result") or "-"), detail(d))
        for d in docs
    ]
    return table(("TIME", "GUEST", "EVENT", "RESULT", "DETAIL"), rows) + (
        f"{len(docs)} event{'s' if len(docs) != 1 else ''}\n"
    )


def main(args: argparse.Namespace) -> int:
    """`monitord history`."""
    h = HistoryArgs(args)
    docs = h.all_documents(result="failed" if args.failed else None)
    out = sys.stdout
    if args.json:
        # Streamed: a long history never sits in memory whole.
        out.write('{"events": [')
        for i, doc in enumerate(docs):
            out.write(("," if i else "") + "\n" + json.dumps(doc, separators=(",", ":")))
        out.write("\n]}\n")
    else:
        out.write(render_events(list(docs)))
    out.flush()
    return 0
