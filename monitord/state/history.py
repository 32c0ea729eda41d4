"""Reading the history of libvirt records: queries, cursors, times, event documents.

`HistoryReader` answers queries on the store's `state.db` through read-only
connections (SQLite URI `mode=ro`; WAL lets them read while the daemon
writes, and they hold no lock the daemon waits for). The same `EventQuery`
filters records read from log files (`matches`), so `monitord history
--from-log` and the store give the same answer.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

from monitord.audit.record import AuditRecord
from monitord.audit.types import VIRT_NUMBERS
from monitord.state import schema
from monitord.state.eventcodec import Shape, decode, from_db, time_from_db, time_to_db, to_db

BUCKET: Final = schema.BUCKET_BITS
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 10_000
# Read connections kept open for reuse (the HTTP threads borrow them), and the page cache
# of each (KiB): the daemon's memory stays bounded however many requests come.
POOL: Final = 2
READER_CACHE_KIB: Final = 1024
_CACHE_LIMIT: Final = 100_000
# Buckets probed by one query when looking for a guest's events.
_GROUP: Final = 64

UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)


class HistoryError(Exception):
    """The history cannot be read (no store, a newer schema, a corrupt file): one clear line."""


class QueryError(ValueError):
    """A filter value the user gave is not valid (HTTP 400, CLI exit 2)."""


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which events, in which order. `node=""` means this host's own records (no node=)."""

    uuid: str | None = None
    name: str | None = None
    node: str | None = None
    since: float | None = None
    until: float | None = None
    type_id: int | None = None
    op: str | None = None
    resrc: str | None = None
    result: str | None = None
    limit: int = DEFAULT_LIMIT
    after: int | None = None
    order: Literal["asc", "desc"] = "asc"

    @property
    def by_guest(self) -> bool:
        return self.uuid is not None or self.name is not None or self.node is not None

    @property
    def by_shape(self) -> bool:
        return (
            self.type_id is not None
            or self.op is not None
            or self.resrc is not None
            or (self.result is not None and self.result not in ("success", "failed"))
        )


class StoredEvent(NamedTuple):
    """An event of the history: its id (the cursor) and the record."""

    id: int
    record: AuditRecord


def matches(record: AuditRecord, q: EventQuery) -> bool:
    """Tell whether a record passes the query's filters (limit, cursor and order aside)."""
    f = record.fields
    if q.uuid is not None and f.get("uuid") != q.uuid:
        return False
    if q.name is not None and f.get("vm") != q.name:
        return False
    if q.node is not None and (record.node or "") != q.node:
        return False
    if q.since is not None and record.time < q.since:
        return False
    if q.until is not None and record.time > q.until:
        return False
    if q.type_id is not None and record.type_id != q.type_id:
        return False
    if q.op is not None and f.get("op") != q.op:
        return False
    if q.resrc is not None and f.get("resrc") != q.resrc:
        return False
    return q.result is None or record.result == q.result


def event_document(event: StoredEvent, host: str | None = None) -> dict[str, Any]:
    """The JSON of one event: the `monitord parse` document plus `id` and `host`."""
    doc = event.record.to_json()
    doc["host"] = event.record.node or host
    doc["id"] = event.id
    return doc


# -- times ---------------------------------------------------------------------------------

_RELATIVE = re.compile(r"([-+]?)((?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+)\Z")


def parse_time(text: str, now: float | None = None) -> float:
    """Seconds since the epoch from what a user types; QueryError if it is none of:

    - epoch seconds: `1700000000`, `1700000000.5`;
    - ISO 8601: `2026-11-26`, `2026-11-26T16:30`, `2026-11-26 16:30:05.250`, with `Z` or
      `+01:00` (without a zone: local time);
    - relative to now: `-1h`, `90m`, `2d`, `1h30m` (the past: a sign is optional), `now`.
    """
    value = text.strip()
    now = time.time() if now is None else now
    if not value:
        raise QueryError("empty time")
    if value == "now":
        return now
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            raise QueryError(f"bad time {text!r}")
        return seconds
    m = _RELATIVE.match(value)
    if m:
        from monitord.config import parse_duration

        if m.group(1) == "+":
            raise QueryError(f"bad time {text!r}: relative times are in the past (e.g. -1h)")
        return now - parse_duration(m.group(2))
    import datetime

    iso = value.replace(" ", "T", 1) if re.match(r"\d{4}-\d\d-\d\d \d", value) else value
    try:
        when = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(
            f"bad time {text!r}: use epoch seconds, ISO 8601 (2026-11-26T16:30:00Z) "
            "or a time ago (-1h, 2d)"
        ) from None
    return when.timestamp()


def type_id_of(text: str) -> int:
    """`VIRT_CONTROL`, `UNKNOWN[2501]` or `2501` -> 2501; QueryError otherwise."""
    value = text.strip()
    if value.upper() in VIRT_NUMBERS:
        return VIRT_NUMBERS[value.upper()]
    m = re.fullmatch(r"(?:UNKNOWN\[)?(\d{1,5})\]?", value)
    if m and (value.isdigit() or value.upper().startswith("UNKNOWN[")):
        return int(m.group(1))
    raise QueryError(f"unknown record type {text!r} (e.g. VIRT_CONTROL or 2500)")


def parse_cursor(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise QueryError(f"bad cursor {text[:40]!r}: pass the `next` of the previous page")
    return int(text)


# -- the reader ----------------------------------------------------------------------------


class HistoryReader:
    """Queries on the history of one `state.db`, from any thread, read-only."""

    def __init__(self, path: str, generation: Callable[[], int] | None = None) -> None:
        self.path = path
        self._generation = generation or (lambda: 0)
        self._lock = threading.Lock()
        self._pool: list[tuple[int, sqlite3.Connection]] = []
        self._shapes: dict[int, Shape] = {}
        self._subjects: dict[int, tuple[str | None, str | None, str | None]] = {}
        self._gen = self._generation()

    @classmethod
    def open(cls, directory: str) -> HistoryReader:
        """A reader on `directory/state.db`, checked; HistoryError with the reason if unusable."""
        path = str(Path(directory) / schema.DB_NAME)
        if not Path(path).exists():
            raise HistoryError(f"no monitord store in {directory} ({schema.DB_NAME} not found)")
        reader = cls(path)
        try:
            with reader.connection() as conn:
                schema.identify(conn)
                schema.verify(conn)
        except schema.SchemaError as err:
            raise HistoryError(f"{path}: {err}") from None
        except sqlite3.Error as err:
            raise HistoryError(f"cannot read {path}: {err}") from None
        return reader

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        uri = "file:" + _quote(self.path) + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 2000")
        conn.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a read-only connection; the store's file being replaced drops old ones."""
        gen = self._generation()
        with self._lock:
            if gen != self._gen:
                self._drop_all()
                self._gen = gen
            conn = self._pool.pop()[1] if self._pool else None
        try:
            if conn is None:
                conn = self._connect()
            # One snapshot for the whole query: pages of a result never mix two commits.
            conn.execute("BEGIN")
        except sqlite3.Error as err:
            if conn is not None:
                conn.close()
            raise HistoryError(f"cannot read {self.path}: {err}") from None
        ok = False
        try:
            yield conn
            ok = True
        finally:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:
                ok = False
            with self._lock:
                if ok and gen == self._gen and len(self._pool) < POOL:
                    self._pool.append((gen, conn))
                    conn = None
            if conn is not None:
                conn.close()

    def _drop_all(self) -> None:
        for _, conn in self._pool:
            conn.close()
        self._pool.clear()
        self._shapes.clear()
        self._subjects.clear()

    def close(self) -> None:
        with self._lock:
            self._drop_all()

    # -- lookups -------------------------------------------------------------------------

    def _shape(self, conn: sqlite3.Connection, sid: int) -> Shape:
        shape = self._shapes.get(sid)
        if shape is None:
            self._load_shapes(conn)
            shape = self._shapes.get(sid)
            if shape is None:
                raise HistoryError(f"corrupt history: event refers to missing shape {sid}")
        return shape

    def _load_shapes(self, conn: sqlite3.Connection) -> None:
        known = max(self._shapes, default=0)
        rows = conn.execute("SELECT sid, doc FROM shapes WHERE sid > ? ORDER BY sid", (known,))
        for sid, doc in rows:
            try:
                self._shapes[sid] = Shape.from_doc(doc)
            except ValueError as err:
                raise HistoryError(f"corrupt history: shape {sid}: {err}") from None
        if len(self._shapes) > _CACHE_LIMIT:
            self._shapes.clear()

    def _subject_rows(
        self, conn: sqlite3.Connection, gids: Iterable[int]
    ) -> dict[int, tuple[str | None, str | None, str | None]]:
        out: dict[int, tuple[str | None, str | None, str | None]] = {}
        missing = []
        for gid in gids:
            hit = self._subjects.get(gid)
            if hit is None:
                missing.append(gid)
            else:
                out[gid] = hit
        for i in range(0, len(missing), 500):
            part = missing[i : i + 500]
            marks = ",".join("?" * len(part))
            sql = f"SELECT gid, node, uuid, vm FROM subjects WHERE gid IN ({marks})"
            for gid, node, uuid, vm in conn.execute(sql, part):
                try:
                    out[gid] = (from_db(node), from_db(uuid), from_db(vm))
                except ValueError as err:
                    raise HistoryError(f"corrupt history: subject {gid}: {err}") from None
        if len(self._subjects) > _CACHE_LIMIT:
            self._subjects.clear()
        self._subjects.update((g, out[g]) for g in missing if g in out)
        return out

    def subjects(
        self, uuid: str | None = None, name: str | None = None, node: str | None = None
    ) -> list[tuple[int, str | None, str | None, str | None]]:
        """(gid, node, uuid, name) of the guests the filters select."""
        with self.connection() as conn:
            return self._gids(conn, uuid, name, node)

    @staticmethod
    def _gids(
        conn: sqlite3.Connection, uuid: str | None, name: str | None, node: str | None
    ) -> list[tuple[int, str | None, str | None, str | None]]:
        if uuid is not None:
            values = {uuid, uuid.lower()}
            marks = ",".join("?" * len(values))
            rows = conn.execute(
                f"SELECT gid, node, uuid, vm FROM subjects WHERE uuid IN ({marks})",
                [to_db(v) for v in values],
            ).fetchall()
        elif name is not None:
            rows = conn.execute(
                "SELECT gid, node, uuid, vm FROM subjects WHERE vm = ?", (to_db(name),)
            ).fetchall()
        else:
            rows = conn.execute("SELECT gid, node, uuid, vm FROM subjects").fetchall()
        out = []
        for gid, n, u, v in rows:
            try:
                n, u, v = from_db(n), from_db(u), from_db(v)
            except ValueError as err:
                raise HistoryError(f"corrupt history: subject {gid}: {err}") from None
            if name is not None and v != name:
                continue
            if node is not None and (n or "") != node:
                continue
            out.append((int(gid), n, u, v))
        return out

    def _sids(self, conn: sqlite3.Connection, q: EventQuery) -> list[int]:
        self._load_shapes(conn)
        out = []
        for sid, shape in self._shapes.items():
            if q.type_id is not None and shape.type_id != q.type_id:
                continue
            if q.op is not None and shape.const("op") != q.op:
                continue
            if q.resrc is not None and shape.const("resrc") != q.resrc:
                continue
            if q.result is not None and shape.result != q.result:
                continue
            out.append(sid)
        return out

    # -- queries -------------------------------------------------------------------------

    def events(self, q: EventQuery) -> tuple[list[StoredEvent], int | None]:
        """One page of events and the cursor of the next page (None at the end)."""
        limit = max(0, min(q.limit, MAX_LIMIT))
        with self.connection() as conn:
            try:
                rows = self._rows(conn, q, limit + 1)
                more = len(rows) > limit
                rows = rows[:limit]
                subjects = self._subject_rows(conn, {r[3] for r in rows})
                events = []
                for eid, tms, serial, gid, sid, vals in rows:
                    node, uuid, vm = subjects.get(gid, (None, None, None))
                    record = decode(
                        self._shape(conn, sid), node, uuid, vm, time_from_db(tms), serial, vals
                    )
                    events.append(StoredEvent(eid, record))
            except (ValueError, TypeError) as err:
                raise HistoryError(f"corrupt history in {self.path}: {err}") from None
            except sqlite3.DatabaseError as err:
                raise HistoryError(f"cannot read the history in {self.path}: {err}") from None
        return events, (events[-1].id if more and events else None)

    def iter_events(self, q: EventQuery, page: int = 2000) -> Iterator[StoredEvent]:
        """Every event the query selects (its limit aside), page by page."""
        q = replace(q, limit=page)
        while True:
            events, nxt = self.events(q)
            yield from events
            if nxt is None:
                return
            q = replace(q, after=nxt)

    def guest_events(self, uuid: str, node: str | None, n: int) -> list[StoredEvent]:
        """A guest's `n` most recent events, newest last."""
        if n <= 0:
            return []
        events, _ = self.events(EventQuery(uuid=uuid, node=node, limit=n, order="desc"))
        events.reverse()
        return events

    def count(self) -> int:
        with self.connection() as conn:
            lo, hi = conn.execute(schema.ID_RANGE).fetchone()
        return 0 if lo is None else int(hi) - int(lo) + 1

    def _rows(self, conn: sqlite3.Connection, q: EventQuery, limit: int) -> list[Any]:
        where: list[str] = []
        params: list[Any] = []
        gids: list[int] | None = None
        if q.by_guest:
            gids = [g[0] for g in self._gids(conn, q.uuid, q.name, q.node)]
            if not gids:
                return []
        if q.by_shape:
            sids = self._sids(conn, q)
            if not sids:
                return []
            where.append(f"sid IN ({','.join(map(str, sids))})")
        if q.result == "failed":
            where.append("res = 0")
        elif q.result == "success":
            where.append("res = 1")
        _time_window(q, "tms", "tms", where, params)
        desc = q.order == "desc"
        if q.after is not None:
            where.append("id < ?" if desc else "id > ?")
            params.append(q.after)
        order = "ORDER BY id DESC" if desc else "ORDER BY id"
        cols = "SELECT id, tms, serial, gid, sid, vals FROM events"
        if gids is None and q.since is None and q.until is None:
            sql = f"{cols} {'WHERE ' + ' AND '.join(where) if where else ''} {order} LIMIT ?"
            return conn.execute(sql, [*params, limit]).fetchall()
        # By bucket: those whose time span meets the window (all of them for a guest alone).
        span_where: list[str] = []
        span_params: list[Any] = []
        _time_window(q, "hi", "lo", span_where, span_params)
        if q.after is not None:
            span_where.append("b <= ?" if desc else "b >= ?")
            span_params.append(q.after >> BUCKET)
        sql = "SELECT b FROM spans" + (" WHERE " + " AND ".join(span_where) if span_where else "")
        buckets = [b for (b,) in conn.execute(sql + " ORDER BY b", span_params)]
        # Buckets still being filled have no spans row yet: always look into them.
        top, lo, hi = conn.execute(
            "SELECT (SELECT max(b) FROM spans), (SELECT min(id) FROM events),"
            " (SELECT max(id) FROM events)"
        ).fetchone()
        if hi is not None:
            first_open = top + 1 if top is not None else lo >> BUCKET
            buckets += range(max(first_open, buckets[-1] + 1 if buckets else 0), (hi >> BUCKET) + 1)
        if desc:
            buckets.reverse()
        out: list[Any] = []
        if gids is not None:
            # A guest's events are spread over many buckets: probe GROUP of them per query
            # (the index is searched once per bucket and guest, in C).
            gid_list = ",".join(map(str, gids))
            for i in range(0, len(buckets), _GROUP):
                group = ",".join(map(str, buckets[i : i + _GROUP]))
                scope = f"(id >> {BUCKET}) IN ({group}) AND gid IN ({gid_list})"
                sql = f"{cols} WHERE {' AND '.join([scope, *where])} {order} LIMIT ?"
                out.extend(conn.execute(sql, [*params, limit - len(out)]))
                if len(out) >= limit:
                    break
            return out
        for first, last in _runs(buckets):
            lo_id, hi_id = min(first, last) << BUCKET, ((max(first, last) + 1) << BUCKET) - 1
            sql = f"{cols} WHERE {' AND '.join(['id BETWEEN ? AND ?', *where])} {order} LIMIT ?"
            out.extend(conn.execute(sql, [lo_id, hi_id, *params, limit - len(out)]))
            if len(out) >= limit:
                break
        return out


def _runs(buckets: list[int]) -> Iterator[tuple[int, int]]:
    """Consecutive buckets as (first, last) runs, in the list's order (up or down)."""
    if not buckets:
        return
    first = prev = buckets[0]
    for b in buckets[1:]:
        if abs(b - prev) != 1:
            yield first, prev
            first = b
        prev = b
    yield first, prev


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(str(Path(path).absolute()))


def _time_window(q: EventQuery, newest: str, oldest: str, where: list[str],
                 params: list[Any]) -> None:  # fmt: skip
    """Add the conditions of `since` (on column `newest`) and `until` (on `oldest`)."""
    if q.since is not None:
        where.append(f"{newest} >= ?")
        params.append(time_to_db(q.since))
    if q.until is not None:
        where.append(f"{oldest} <= ?")
        params.append(time_to_db(q.until))
