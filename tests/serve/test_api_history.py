"""GET /api/v1/events and the guest's `events` from the store: filters, cursors, errors, HTTP."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitord.audit.record import AuditRecord
from monitord.config import HttpConfig, StateConfig
from monitord.serve import api
from monitord.serve.exporter import make_registry
from monitord.serve.server import WebServer
from monitord.state.history import EventQuery, matches
from monitord.state.store import Store
from monitord.state.table import GuestTable
from tests.state import store_corruptions as c

WEB01 = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"


@pytest.fixture
def history(tmp_path: Path) -> Iterator[tuple[api.History, list[AuditRecord]]]:
    # A central collector's view: one guest's records came from node host1.
    recs = [dataclasses.replace(r, node="host1") if r.vm == "db 01" else r for r in c.records()]
    store, _ = Store.open(str(tmp_path))
    assert store.commit(source_kind=None, position=None, events=recs)
    yield api.History(store.history, host="hv01"), recs
    store.close()


def pages(history: api.History, query: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = ""
    for _ in range(1000):
        status, doc = api.events_answer(query + after, history)
        assert status == 200, doc
        out += doc["events"]
        if doc["next"] is None:
            return out
        after = f"&after={doc['next']}"
    raise AssertionError("no end of pages")


def test_events_pages_follow_next_to_the_end(
    history: tuple[api.History, list[AuditRecord]],
) -> None:
    """limit + after=next walks every event once, oldest first; order=desc newest first."""
    h, recs = history
    got = pages(h, "limit=4")
    assert [e["serial"] for e in got] == [r.serial for r in recs]
    assert got[0]["host"] == "hv01" and "id" in got[0]
    assert {k: v for k, v in got[0].items() if k not in ("host", "id")} == recs[0].to_json()
    down = pages(h, "limit=7&order=desc")
    assert [e["serial"] for e in down] == [r.serial for r in reversed(recs)]


def test_events_filters(history: tuple[api.History, list[AuditRecord]]) -> None:
    """Each filter of the contract selects what the same filter on the records selects."""
    h, recs = history
    t = sorted(r.time for r in recs)
    cases = {
        f"uuid={WEB01.upper()}": EventQuery(uuid=WEB01),
        "name=web01": EventQuery(name="web01"),
        "node=host1": EventQuery(node="host1"),
        f"since={t[10]}&until={t[30]}": EventQuery(since=t[10], until=t[30]),
        "type=VIRT_CONTROL": EventQuery(type_id=2500),
        "type=2501": EventQuery(type_id=2501),
        "op=start": EventQuery(op="start"),
        "resrc=disk&result=success": EventQuery(resrc="disk", result="success"),
        "result=failed": EventQuery(result="failed"),
    }
    for query, q in cases.items():
        got = pages(h, query + "&limit=3")
        assert [e["serial"] for e in got] == [r.serial for r in recs if matches(r, q)], query
        assert got, query


def test_events_since_accepts_iso_and_relative_times(
    history: tuple[api.History, list[AuditRecord]],
) -> None:
    """since/until take epoch seconds, ISO 8601 and times ago."""
    h, recs = history
    status, doc = api.events_answer("since=2023-11-14T22:14:20Z&limit=1000", h)
    assert status == 200 and len(doc["events"]) == sum(r.time >= 1700000060 for r in recs)
    status, doc = api.events_answer("since=-1h", h, now=recs[-1].time + 1800)
    assert status == 200 and len(doc["events"]) == len(recs)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=many", "limit must be a whole number"),
        ("limit=-1", "limit must be a whole number"),
        ("order=up", "order must be asc or desc"),
        ("result=maybe", "result must be success or failed"),
        ("since=yesterday-ish", "bad time"),
        ("after=abc", "bad cursor"),
        ("type=VIRT_NOPE", "unknown record type"),
        ("uuid=not-a-uuid", "not a UUID"),
        ("colour=red", "unknown parameter"),
        ("op=start&op=stop", "given twice"),
    ],
)
def test_bad_queries_are_400_with_the_reason(
    history: tuple[api.History, list[AuditRecord]], query: str, message: str
) -> None:
    """A bad parameter is a 400 JSON error naming it, never a 500."""
    status, doc = api.events_answer(query, history[0])
    assert status == 400 and message in doc["error"] and doc["status"] == 400


def test_guest_document_gets_its_events_from_the_store(
    history: tuple[api.History, list[AuditRecord]],
) -> None:
    """?events=N: the guest's N latest events, newest last (default: the History's
    default_events, state.max_events); unknown guests 404; no store: no events."""
    h, recs = history
    doc_of: dict[str, dict[str, Any]] = {WEB01: {"uuid": WEB01, "name": "web01", "node": None}}

    def lookup(uuid: str, node: str | None) -> dict[str, Any] | None:
        return doc_of.get(uuid)

    mine = [r for r in recs if r.fields.get("uuid") == WEB01 and r.node is None]
    status, doc = api.guest_answer(WEB01, "", lookup, h)
    assert status == 200 and [e["serial"] for e in doc["events"]] == [r.serial for r in mine]
    status, doc = api.guest_answer(WEB01.upper(), "events=3", lookup, h)
    assert [e["serial"] for e in doc["events"]] == [r.serial for r in mine[-3:]]
    assert api.guest_answer(WEB01, "events=0", lookup, h)[1]["events"] == []
    assert api.guest_answer(WEB01, "events=x", lookup, h)[0] == 400
    assert api.guest_answer("nope", "", lookup, h)[0] == 400
    assert api.guest_answer("0e4a9d2f-6c1b-4f3e-8d7a-5b9c2e1f3a45", "", lookup, h)[0] == 404
    assert api.guest_answer(WEB01, "", lookup, None) == (200, {**doc_of[WEB01], "events": []})
    two = api.History(h.reader, h.host, default_events=2)
    assert [e["serial"] for e in api.guest_answer(WEB01, "", lookup, two)[1]["events"]] == [
        r.serial for r in mine[-2:]
    ]


def test_events_over_http(tmp_path: Path) -> None:
    """The listener routes /api/v1/events and guests/{uuid} to the store."""
    recs = c.records()
    store, _ = Store.open(str(tmp_path))
    store.commit(source_kind=None, position=None, events=recs)
    table = GuestTable(StateConfig())
    table.apply_many(recs)
    web = WebServer(HttpConfig(listen="127.0.0.1:0"), make_registry(table, "1"),
                    table, lambda: (True, ""), api.History(store.history, "hv01"))  # fmt: skip
    web.start()
    try:
        with urllib.request.urlopen(web.url + "/api/v1/events?limit=2&order=desc") as resp:
            doc = json.loads(resp.read())
        assert [e["serial"] for e in doc["events"]] == [recs[-1].serial, recs[-2].serial]
        assert doc["next"] == str(doc["events"][-1]["id"])
        with urllib.request.urlopen(web.url + f"/api/v1/guests/{WEB01}?events=2") as resp:
            guest = json.loads(resp.read())
        assert guest["uuid"] == WEB01 and len(guest["events"]) == 2
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(web.url + "/api/v1/events?limit=x")
        assert info.value.code == 400
    finally:
        web.stop()
        store.close()


def test_history_of_a_store_not_there_is_503(tmp_path: Path) -> None:
    """A store file that is missing (the store could not create it): 503 with the reason."""
    from monitord.state.history import HistoryReader

    reader = HistoryReader(str(tmp_path / "missing" / "state.db"))
    status, doc = api.events_answer("", api.History(reader))
    assert status == 503 and "cannot read" in doc["error"]
