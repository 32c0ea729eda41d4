"""Ways to damage a state directory, for the store's and the daemon's corruption tests.

Each function takes a state directory holding a valid store (made by `make_store`,
closed) or a valid checkpoint.json (made by `make_checkpoint_json`) and breaks it in
one way. `WAYS` maps a name to (damage, expected set-aside reason or None when the
damage must be survived without setting anything aside).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitord.audit.parser import StreamParser
from monitord.audit.record import AuditRecord
from monitord.state import schema
from monitord.state.store import Store
from tests.conftest import DATA

LOG = DATA / "state" / "lifecycle.log"


def records() -> list[AuditRecord]:
    parser = StreamParser()
    return parser.feed(LOG.read_bytes()) + parser.finish()


def position(offset: int = 100) -> dict[str, Any]:
    return {
        "path": "/var/log/audit/audit.log", "dev": 2049, "ino": 77, "offset": offset,
        "fingerprint": "ab" * 32, "fingerprint_length": min(offset, 1024),
    }  # fmt: skip


def guest(uuid: str, name: str, n: int = 0) -> dict[str, Any]:
    return {"uuid": uuid, "name": name, "state": "running", "vcpus": 2 + n, "disks": ["/d"],
            "phase_open": False}  # fmt: skip


def make_store(directory: Path) -> None:
    """A valid, closed store with guests, counters, alerts and history (several buckets' worth
    of events would be slow: one bucket, the lifecycle log's records)."""
    store, loaded = Store.open(str(directory))
    assert loaded.origin == "fresh"
    recs = records()
    ok = store.commit(
        source_kind="file",
        position=position(),
        upserted=[
            (
                ("", f"0000000{i}-0000-4000-8000-000000000000"),
                guest(f"0000000{i}-0000-4000-8000-000000000000", f"g{i}", i),
            )
            for i in range(5)
        ],
        meta={"evicted": 1, "records": [["VIRT_CONTROL", "kvm", "success", 3]]},
        counters={"parse": {"lines": 55, "records": 55}},
        alerts={"version": 1, "active": []},
        events=recs,
    )
    assert ok
    store.close()


def make_checkpoint_json(directory: Path, doc: dict[str, Any] | None = None) -> None:
    """A version-1 checkpoint.json as monitord before the store wrote it: the whole table,
    each guest with its latest (at most 50) records as `events`."""
    from monitord.config import StateConfig
    from monitord.state.table import GuestTable

    if doc is None:
        table = GuestTable(StateConfig())
        recs = records()
        table.apply_many(recs)
        state = table.to_json()
        for g in state["guests"]:
            mine = [r for r in recs if r.fields.get("uuid") == g["uuid"]]
            g["events"] = [r.to_json() for r in mine[-50:]]
        state["order"] = [["", g["uuid"]] for g in state["guests"]]
        doc = {
            "source": {"kind": "file", "position": position(5000)},
            "state": state,
            # What version 1's Telemetry.to_json() wrote for a fresh daemon.
            "telemetry": {
                "source": "file",
                "parse": {"lines": 0, "bytes": 0, "records": 0, "ignored": {}, "errors": {}},
                "reopens": {},
                "last_record_time": None,
                "lag": {"buckets": [], "counts": [], "sum": 0.0},
                "checkpoint_errors": 0,
                "alerts": [],
                "dropped": {},
            },
            "alerts": {"version": 1, "active": []},
        }
    body = {**doc, "version": 1, "saved_at": 1_700_000_000.0}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "checkpoint.json").write_text(json.dumps(body, separators=(",", ":")))


def db(directory: Path) -> Path:
    return directory / schema.DB_NAME


def sql(directory: Path, *statements: str, params: tuple[Any, ...] = ()) -> None:
    """Run SQL on the store as another program (or a disk error) could leave it."""
    conn = sqlite3.connect(db(directory), isolation_level=None)
    try:
        for s in statements:
            conn.execute(s, params if "?" in s else ())
    finally:
        conn.close()


def unstrict(directory: Path, table: str, *statements: str) -> None:
    """Write rows of the wrong type into a STRICT table, as flipped bits in a record would."""
    conn = sqlite3.connect(db(directory), isolation_level=None)
    try:
        original = conn.execute(
            "SELECT sql FROM sqlite_schema WHERE name = ?", (table,)
        ).fetchone()[0]
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_schema SET sql = ? WHERE name = ?",
            (original.replace(" STRICT", ""), table),
        )
    finally:
        conn.close()
    conn = sqlite3.connect(db(directory), isolation_level=None)
    try:
        for s in statements:
            conn.execute(s)
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_schema SET sql = ? WHERE name = ?", (original, table))
    finally:
        conn.close()


def set_source(directory: Path, value: Any) -> None:
    sql(directory, "UPDATE state SET value = ? WHERE name = 'source'", params=(json.dumps(value),))


def truncate(size: int | Callable[[int], int]) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        path = db(directory)
        total = path.stat().st_size
        os.truncate(path, size(total) if callable(size) else size)

    return damage


def overwrite(offset: int | Callable[[int], int], data: bytes) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        path = db(directory)
        at = offset(path.stat().st_size) if callable(offset) else offset
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(data)

    return damage


def replace_with(content: bytes) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        db(directory).write_bytes(content)

    return damage


def directory_instead(directory: Path) -> None:
    db(directory).unlink()
    (db(directory) / "something").mkdir(parents=True)


def symlink_instead(directory: Path) -> None:
    db(directory).unlink()
    db(directory).symlink_to("/etc/hostname")


def fifo_instead(directory: Path) -> None:
    db(directory).unlink()
    os.mkfifo(db(directory))


def json_fifo(directory: Path) -> None:
    """A FIFO nobody writes where checkpoint.json is: reading it would block for ever."""
    for p in [*directory.glob(schema.DB_NAME + "*"), directory / "checkpoint.json"]:
        p.unlink(missing_ok=True)
    os.mkfifo(directory / "checkpoint.json")


def wal_directory(directory: Path) -> None:
    (directory / (schema.DB_NAME + "-wal")).mkdir()


def wal_garbage(directory: Path) -> None:
    (directory / (schema.DB_NAME + "-wal")).write_bytes(os.urandom(50_000))


def foreign_database(directory: Path) -> None:
    db(directory).unlink()
    conn = sqlite3.connect(db(directory))
    conn.execute("CREATE TABLE users(name TEXT, password TEXT)")
    conn.execute("INSERT INTO users VALUES ('root', 'x')")
    conn.commit()
    conn.close()


def flip_page(index: Callable[[int], int]) -> Callable[[Path], None]:
    """Overwrite one whole page with a pattern (a torn or misdirected write)."""

    def damage(directory: Path) -> None:
        path = db(directory)
        pages = path.stat().st_size // schema.PAGE_SIZE
        page = index(pages)
        with open(path, "r+b") as f:
            f.seek(page * schema.PAGE_SIZE)
            f.write(bytes([0xA5]) * schema.PAGE_SIZE)

    return damage


def json_file(content: bytes) -> Callable[[Path], None]:
    """Replace the store by a checkpoint.json of this content (the first start after upgrade)."""

    def damage(directory: Path) -> None:
        for p in directory.glob(schema.DB_NAME + "*"):
            p.unlink()
        (directory / "checkpoint.json").write_bytes(content)

    return damage


def _deep(depth: int) -> bytes:
    return b'{"version": 1, "state": ' + b"[" * depth + b"]" * depth + b"}"


def json_bad_offset(directory: Path) -> None:
    for p in directory.glob(schema.DB_NAME + "*"):
        p.unlink()
    make_checkpoint_json(directory)
    path = directory / "checkpoint.json"
    doc = json.loads(path.read_text())
    doc["source"]["position"]["offset"] = -100
    path.write_text(json.dumps(doc))


def json_bad_event(directory: Path) -> None:
    for p in directory.glob(schema.DB_NAME + "*"):
        p.unlink()
    make_checkpoint_json(directory)
    path = directory / "checkpoint.json"
    doc = json.loads(path.read_text())
    del doc["state"]["guests"][0]["events"][0]["fields"]
    path.write_text(json.dumps(doc))


Damage = Callable[[Path], None]

# name -> (damage, set-aside reason expected; None: the store must load without setting aside)
WAYS: dict[str, tuple[Damage, str | None]] = {
    "truncated to 0 bytes": (truncate(0), "empty"),
    "truncated inside the header": (truncate(50), "not_a_database"),
    "truncated to its first page": (truncate(schema.PAGE_SIZE), "corrupt"),
    "truncated in the middle": (truncate(lambda n: n // 2 + 123), "corrupt"),
    "random garbage": (replace_with(os.urandom(64 * 1024)), "not_a_database"),
    "a text file": (replace_with(b"hello, I am not a database\n"), "not_a_database"),
    "SQLite header then garbage": (
        replace_with(schema.SQLITE_MAGIC + os.urandom(4 * 4096)),
        "not_a_database",
    ),
    "page size field garbage": (overwrite(16, b"\x00\x03"), "not_a_database"),
    "a page overwritten (guests)": (flip_page(lambda pages: 3), "corrupt"),
    "the last page overwritten": (flip_page(lambda pages: pages - 1), "corrupt"),
    "a directory instead of state.db": (directory_instead, "not_a_file"),
    "a symlink instead of state.db": (symlink_instead, "not_a_file"),
    "a FIFO instead of state.db": (fifo_instead, "not_a_file"),
    "a directory instead of state.db-wal": (wal_directory, "not_a_file"),
    "a foreign SQLite database": (foreign_database, "foreign"),
    "our id, schema version 0": (lambda d: sql(d, "PRAGMA user_version = 0"), "corrupt"),
    "a newer schema version": (
        lambda d: sql(d, f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}"),
        "newer_version",
    ),
    "an extra table": (lambda d: sql(d, "CREATE TABLE extra(x)"), "corrupt"),
    "an index dropped": (lambda d: sql(d, "DROP INDEX events_guest"), "corrupt"),
    "negative offset": (
        lambda d: set_source(d, {"kind": "file", "position": position(-100)}),
        "invalid_position",
    ),
    "fingerprint_length -1": (
        lambda d: set_source(
            d, {"kind": "file", "position": {**position(), "fingerprint_length": -1}}
        ),
        "invalid_position",
    ),
    "offset as text": (
        lambda d: set_source(d, {"kind": "file", "position": {**position(), "offset": "many"}}),
        "invalid_position",
    ),
    "source as a list": (lambda d: set_source(d, ["file", 100]), "invalid_rows"),
    "a state value not JSON": (
        lambda d: sql(d, "UPDATE state SET value = '{nope' WHERE name = 'counters:parse'"),
        "invalid_rows",
    ),
    "an unknown state row": (
        lambda d: sql(d, "INSERT INTO state(name, value) VALUES ('bogus', '1')"),
        "invalid_rows",
    ),
    "store seq as text": (
        lambda d: sql(
            d,
            'UPDATE state SET value = \'{"seq": "x", "next_id": 1, "saved_at": 1}\''
            " WHERE name = 'store'",
        ),
        "invalid_rows",
    ),
    "a guest whose values do not fit": (
        lambda d: sql(d, "UPDATE guest_log SET vals = '[1, 2]' WHERE seq = 1"),
        "invalid_rows",
    ),
    "a guest uuid as an integer": (
        lambda d: sql(d, "UPDATE guest_log SET uuid = 42 WHERE seq = 2"),
        "invalid_rows",
    ),
    "a guest uuid in its document as a number": (
        lambda d: sql(d, "UPDATE guest_log SET vals = json_set(vals, '$[0]', 5) WHERE seq = 3"),
        "invalid_rows",
    ),
    "a state value nested 100,000 deep": (
        lambda d: sql(
            d,
            "UPDATE state SET value = ? WHERE name = 'counters:parse'",
            params=("[" * 100_000 + "]" * 100_000,),
        ),
        "invalid_rows",
    ),
    "a keyset that is not a list": (
        lambda d: sql(d, "UPDATE keysets SET keys = '{\"a\": 1}'"),
        "invalid_rows",
    ),
    "an event with a negative serial": (
        lambda d: sql(d, "UPDATE events SET serial = -5 WHERE id = 3"),
        "invalid_rows",
    ),
    "an event with text in an integer column": (
        lambda d: unstrict(d, "events", "UPDATE events SET gid = 'seven' WHERE id = 4"),
        "corrupt",
    ),  # quick_check checks the types of STRICT tables
    "an event whose values are garbage": (
        lambda d: sql(
            d, "UPDATE events SET vals = '[\"x\", 1, 2, 3, 4, 5, 6, 7, 8, 9]' WHERE id = 5"
        ),
        "invalid_rows",
    ),
    "an event of a missing shape": (
        lambda d: sql(d, "UPDATE events SET sid = 999 WHERE id = 6"),
        "invalid_rows",
    ),
    "a shape that is not one": (
        lambda d: sql(d, "UPDATE shapes SET doc = '[1]' WHERE sid = 1"),
        "invalid_rows",
    ),
    "WAL full of garbage": (wal_garbage, None),
    "checkpoint.json garbage": (json_file(b"\x00garbage{"), "checkpoint_json"),
    "checkpoint.json nested 200k deep": (json_file(_deep(200_000)), "checkpoint_json"),
    "checkpoint.json state as a list": (
        json_file(b'{"version": 1, "state": [], "source": {}}'),
        "checkpoint_json",
    ),
    "checkpoint.json newer version": (json_file(b'{"version": 2, "state": {}}'), "checkpoint_json"),
    "checkpoint.json offset -100": (json_bad_offset, "checkpoint_json"),
    "checkpoint.json an event without fields": (json_bad_event, "checkpoint_json"),
    "checkpoint.json a FIFO": (json_fifo, "checkpoint_json"),
}


def reset(directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
