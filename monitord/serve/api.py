"""The history answers of the JSON API: pure functions from a request to (status, document).

`GET /api/v1/events` pages through the store's history with filters;
`GET /api/v1/guests/{uuid}` is the guest's document with its most recent
`events` from the store. The HTTP server only routes to these functions and
sends what they return, so they are tested without a socket.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from monitord.state.history import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    UUID_RE,
    EventQuery,
    HistoryError,
    HistoryReader,
    QueryError,
    event_document,
    parse_cursor,
    parse_time,
    type_id_of,
)

Answer = tuple[int, dict[str, Any]]
# Looks a guest up by (uuid, node or None): its document, None if not tracked.
GuestLookup = Callable[[str, str | None], dict[str, Any] | None]

EVENT_PARAMS: Final = frozenset(
    {"uuid", "name", "node", "since", "until", "type", "op", "resrc", "result", "limit",
     "after", "order"}
)  # fmt: skip
GUEST_PARAMS: Final = frozenset({"events", "node"})
DEFAULT_EVENTS: Final = 50
RESULTS: Final = ("success", "failed")


@dataclass(frozen=True, slots=True)
class History:
    """What the history answers need: the store's reader and this host's name (`host`)."""

    reader: HistoryReader
    host: str | None = None
    # How many events a guest's document carries without `?events=N` (state.max_events).
    default_events: int = DEFAULT_EVENTS

    @property
    def host_name(self) -> str:
        return self.host or socket.gethostname()


def error(status: int, message: str) -> Answer:
    return status, {"error": message, "status": status}


def _params(query: str, allowed: frozenset[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise QueryError(f"unknown parameter {key[:40]!r} (known: {known})")
        if key in params:
            raise QueryError(f"parameter {key!r} given twice")
        params[key] = value
    return params


def _count(params: dict[str, str], key: str, default: int, most: int) -> int:
    text = params.get(key)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 9:
        raise QueryError(f"{key} must be a whole number from 0 to {most}, not {text[:40]!r}")
    return min(int(text), most)


def event_query(query: str, now: float | None = None) -> EventQuery:
    """The EventQuery of a `/api/v1/events` query string; QueryError says what is wrong."""
    p = _params(query, EVENT_PARAMS)
    now = time.time() if now is None else now
    order = p.get("order", "asc")
    if order not in ("asc", "desc"):
        raise QueryError(f"order must be asc or desc, not {order[:40]!r}")
    result = p.get("result")
    if result is not None and result not in RESULTS:
        raise QueryError(f"result must be success or failed, not {result[:40]!r}")
    uuid = p.get("uuid")
    if uuid is not None and not UUID_RE.match(uuid):
        raise QueryError(f"not a UUID: {uuid[:64]!r}")
    return EventQuery(
        uuid=uuid.lower() if uuid is not None else None,
        name=p.get("name"),
        node=p.get("node"),
        since=parse_time(p["since"], now) if "since" in p else None,
        until=parse_time(p["until"], now) if "until" in p else None,
        type_id=type_id_of(p["type"]) if "type" in p else None,
        op=p.get("op"),
        resrc=p.get("resrc"),
        result=result,
        limit=_count(p, "limit", DEFAULT_LIMIT, MAX_LIMIT),
        after=parse_cursor(p["after"]) if "after" in p else None,
        order="desc" if order == "desc" else "asc",
    )


def events_answer(query: str, history: History | None, now: float | None = None) -> Answer:
    """`GET /api/v1/events?...`: `{"events": [...], "next": CURSOR or null}`."""
    if history is None:
        return error(503, "no history: the state store is not open")
    try:
        q = event_query(query, now)
    except QueryError as err:
        return error(400, str(err))
    try:
        events, nxt = history.reader.events(q)
    except HistoryError as err:
        return error(503, f"history unavailable: {err}")
    host = history.host_name
    return 200, {
        "events": [event_document(e, host) for e in events],
        "next": None if nxt is None else str(nxt),
    }


def guest_answer(uuid: str, query: str, lookup: GuestLookup, history: History | None) -> Answer:
    """`GET /api/v1/guests/{uuid}?events=N&node=NAME`: the guest with its N latest events."""
    if not UUID_RE.match(uuid):
        return error(400, f"not a UUID: {uuid[:64]!r}")
    try:
        p = _params(query, GUEST_PARAMS)
        default = min(history.default_events, MAX_LIMIT) if history else DEFAULT_EVENTS
        n = _count(p, "events", default, MAX_LIMIT)
    except QueryError as err:
        return error(400, str(err))
    node = p.get("node")
    doc = lookup(uuid.lower(), node) or lookup(uuid, node)
    if doc is None:
        where = f" on node {node}" if node else ""
        return error(404, f"no guest with UUID {uuid}{where} is tracked")
    if history is None:
        return 200, {**doc, "events": []}  # no store, no history
    if node is None and "node" in doc:
        node = doc["node"] or ""
    try:
        events = history.reader.guest_events(str(doc.get("uuid") or uuid), node, n)
    except HistoryError as err:
        return error(503, f"history unavailable: {err}")
    host = history.host_name
    doc = {**doc, "events": [event_document(e, host) for e in events]}
    return 200, doc
