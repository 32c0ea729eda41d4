"""The layout of the state store (`state.db`, SQLite) and how a file is recognised as ours.

One database holds what the daemon must find again after a restart, committed
together: the source position, the guests, the shared table and counter parts,
the alert engine's state (the `state` table, one JSON value per name, a rowid
table so that all of it shares one or two pages), and the history of libvirt
records (`events`, with `subjects` and `shapes` holding what many records
share).

Guests: a commit appends the guests it changed to `guest_log` (a deletion is a
row without `vals`), so its cost follows the guests changed, not the pages
they are scattered over in `guests`. Once the log holds as many rows as
`guests`, one commit folds it into `guests` (the latest row of each guest wins)
and empties it. A guest is the latest of its `guests` row and its log rows;
`seq` orders guests by when they were last changed.

Why the history is laid out this way:
- `events.id` is the record's place in the log (assigned in commit order), the
  API's cursor, and the only thing pruning looks at: history is deleted from
  the oldest id on, so the ids held are always one contiguous range.
- A record's guest (node, uuid, name) is one `subjects` row and its
  low-variety parts (type, op, reason, resrc, result, exe, ...) and field
  names are one `shapes` row; an event row keeps only time, serial, the two
  references and the values that vary (pid, vm-pid, devices, ...).
- `events_guest` indexes (id >> BUCKET_BITS, subject): new entries land in
  the newest bucket only, so a commit touching thousands of guests rewrites a
  few index pages, not one page per guest; a guest's events are found with
  one probe per bucket.
- `spans` keeps the lowest and highest record time of each full bucket: time
  filters and pruning by age pick whole buckets from it, with no time index.
  The bucket being filled has no row yet (it would be rewritten by every
  commit): readers always look into it.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Final

DB_NAME: Final = "state.db"
# The first bytes of every SQLite 3 database (its header string).
SQLITE_MAGIC: Final = b"SQLite format 3\x00"
# PRAGMA application_id of monitord's store: "mond".
APPLICATION_ID: Final = 0x6D6F6E64
# PRAGMA user_version: the schema this monitord writes. Bump it with a migration below.
SCHEMA_VERSION: Final = 1
PAGE_SIZE: Final = 4096
BUCKET_BITS: Final = 14

TABLES: Final[dict[str, str]] = {
    "state": "CREATE TABLE state(name TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT",
    "keysets": "CREATE TABLE keysets(ks INTEGER PRIMARY KEY, keys TEXT NOT NULL UNIQUE) STRICT",
    "guests": (
        "CREATE TABLE guests(node ANY NOT NULL, uuid ANY NOT NULL, seq INTEGER NOT NULL,"
        " ks INTEGER NOT NULL, vals TEXT NOT NULL, PRIMARY KEY (node, uuid)) STRICT, WITHOUT ROWID"
    ),
    "guest_log": (
        "CREATE TABLE guest_log(seq INTEGER PRIMARY KEY, node ANY NOT NULL, uuid ANY NOT NULL,"
        " ks INTEGER, vals TEXT) STRICT"
    ),
    "subjects": "CREATE TABLE subjects(gid INTEGER PRIMARY KEY, node ANY, uuid ANY, vm ANY) STRICT",
    "shapes": "CREATE TABLE shapes(sid INTEGER PRIMARY KEY, doc TEXT NOT NULL UNIQUE) STRICT",
    "events": (
        "CREATE TABLE events(id INTEGER PRIMARY KEY, tms REAL NOT NULL, serial INTEGER NOT NULL,"
        " gid INTEGER NOT NULL, sid INTEGER NOT NULL, res INTEGER, vals TEXT NOT NULL) STRICT"
    ),
    "spans": "CREATE TABLE spans(b INTEGER PRIMARY KEY, lo REAL NOT NULL, hi REAL NOT NULL) STRICT",
}
INDEXES: Final[dict[str, str]] = {
    "subjects_uuid": "CREATE INDEX subjects_uuid ON subjects(uuid)",
    "subjects_vm": "CREATE INDEX subjects_vm ON subjects(vm)",
    "events_guest": f"CREATE INDEX events_guest ON events(id >> {BUCKET_BITS}, gid)",
    # Failures are few: `--failed` over every guest reads them without a scan.
    "events_failed": "CREATE INDEX events_failed ON events(id) WHERE res = 0",
}
# The tables that are not history: checked completely at every open.
STATE_TABLES: Final = ("state", "keysets", "guests", "guest_log", "subjects", "shapes", "spans")

# The lowest and highest event id. Two subqueries: with min() and max() in one SELECT,
# SQLite scans the whole table instead of reading each end of it.
ID_RANGE: Final = "SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events)"

# Migrations: MIGRATIONS[v] turns a schema-v database into schema v+1 inside the
# open transaction. Schema 1 is the first; `checkpoint.json` (the snapshot of
# monitord before the store) is imported by the store itself.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {}


class SchemaError(Exception):
    """The file is not a monitord store this version can read; `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _normal(sql: str | None) -> str:
    return re.sub(r"\s+", " ", sql or "").strip()


def create(conn: sqlite3.Connection) -> None:
    """Create the schema in an empty database (the caller commits)."""
    for sql in (*TABLES.values(), *INDEXES.values()):
        conn.execute(sql)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def identify(conn: sqlite3.Connection) -> int:
    """Return the schema version of an open database; SchemaError if it is not ours."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id != APPLICATION_ID:
        if app_id == 0 and version == 0:
            count = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if count == 0:
                raise SchemaError("empty", "the database is empty (no monitord schema)")
        raise SchemaError(
            "foreign", f"not a monitord store (application_id {app_id:#x}, expected "
            f"{APPLICATION_ID:#x})"
        )  # fmt: skip
    if version > SCHEMA_VERSION:
        raise SchemaError(
            "newer_version",
            f"written by a newer monitord (schema version {version}; this monitord reads "
            f"versions up to {SCHEMA_VERSION})",
        )
    if version < 1:
        raise SchemaError("corrupt", f"schema version {version} is not valid")
    return int(version)


def migrate(conn: sqlite3.Connection, version: int) -> int:
    """Bring a schema-`version` database up to SCHEMA_VERSION, step by step, in one transaction."""
    if version == SCHEMA_VERSION:
        return version
    conn.execute("BEGIN IMMEDIATE")
    try:
        while version < SCHEMA_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise SchemaError("corrupt", f"no migration from schema version {version}")
            for sql in step:
                conn.execute(sql)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version


def verify(conn: sqlite3.Connection) -> None:
    """Check that the tables and indexes are exactly ours; SchemaError otherwise."""
    expected = {("table", name): _normal(sql) for name, sql in TABLES.items()}
    expected.update({("index", name): _normal(sql) for name, sql in INDEXES.items()})
    found: dict[tuple[str, str], str] = {}
    for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master"):
        if not isinstance(name, str) or (kind == "index" and name.startswith("sqlite_autoindex_")):
            continue  # the implicit indexes of PRIMARY KEY / UNIQUE
        found[(str(kind), name)] = _normal(sql if isinstance(sql, str) else None)
    if found != expected:
        missing = sorted(n for k, n in expected if (k, n) not in found)
        extra = sorted(n for k, n in found if (k, n) not in expected)
        changed = sorted(
            n for k, n in expected if (k, n) in found and found[(k, n)] != expected[(k, n)]
        )
        parts = [
            f"{what}: {', '.join(names)}"
            for what, names in (("missing", missing), ("unexpected", extra), ("altered", changed))
            if names
        ]
        raise SchemaError("corrupt", "tables do not match the schema (" + "; ".join(parts) + ")")
