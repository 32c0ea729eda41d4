"""The state store: position, guests, counters, alerts and history in one SQLite database.

`Store.open(dir)` finds `dir/state.db` (or imports the `checkpoint.json` of
earlier versions, or starts fresh) and returns what was saved. `commit(...)`
writes everything that changed since the previous commit as ONE transaction:
the source position, the guests upserted and deleted, the table's shared
parts, the stage counters, the alert engine's state and the new history
events. A `kill -9` at any moment leaves the last committed transaction, whose
position matches its state exactly: reading on from it counts nothing twice.

Failures never stop the daemon:
- A file that cannot be trusted (not a database, a failed `quick_check`,
  foreign or altered tables, rows of the wrong type or out of range, a
  position that cannot be, a newer schema, a directory in its place) is set
  aside (renamed `state.db.<reason>-<time>`, with its `-wal`/`-shm`), logged
  and counted, and the store starts empty: the daemon reads the current log
  from its beginning.
- A commit that fails (disk full, read-only, state directory deleted, I/O
  error) is rolled back; what it held is kept in memory and merged into the
  next attempt, so when the disk is writable again the next commit catches up
  with nothing lost or doubled. `healthy()` turns false once commits have
  failed for longer than the grace.

Why `synchronous = NORMAL`: in WAL mode a commit is then safe against a crash
of the process (the written WAL is in the kernel's page cache), and a power
loss can only roll back the latest commits, never corrupt the file. Position
and state roll back together, so the daemon re-reads those records from the
log: exactly-once holds. FULL would add an fsync (and a filesystem journal
commit) to every commit, every second, for no gain in correctness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

from monitord import __version__
from monitord.audit.record import AuditRecord
from monitord.errors import RuntimeFailure
from monitord.logsetup import RateLimitedLogger
from monitord.state import schema
from monitord.state.eventcodec import Encoder, result_code, time_to_db, to_db
from monitord.state.history import HistoryReader

log = logging.getLogger(__name__)

GuestKey = tuple[str, str]  # (node, uuid); node "" for this host's own records
Doc = dict[str, Any]

DAY: Final = 86400.0
DEFAULT_RETENTION: Final = 90 * DAY
DEFAULT_MAX_BYTES: Final = 1 << 30
LOCK_NAME: Final = "state.lock"
CHECKPOINT_JSON: Final = "checkpoint.json"
# A database up to this size gets a complete `quick_check` at open (~0.1 s); a larger one
# has its state tables checked completely and its history when read.
FULL_CHECK_BYTES: Final = 64 << 20
# Every history row is also decoded at open up to this size (~0.06 s per MiB: a 58 MiB
# store took 3.6 s); a larger history is checked as it is read.
HISTORY_CHECK_BYTES: Final = 4 << 20
# History pruning runs this often (seconds) and deletes at most PRUNE_BATCH events a
# commit; while it is behind it runs at every commit.
PRUNE_EVERY: Final = 60.0
PRUNE_BATCH: Final = 50_000
# Size pruning brings the store down to this share of history_max_bytes (hysteresis).
PRUNE_TARGET: Final = 0.9
# History events held in memory while commits fail; older ones beyond it are dropped
# (counted): state stays exact, the history gets a gap.
MAX_PENDING_EVENTS: Final = 200_000
# guest_log is folded into guests once it holds as many rows as guests, and at least this many.
COMPACT_ROWS: Final = 256
# Set-aside copies kept per state directory; older ones are deleted.
KEEP_SET_ASIDE: Final = 3
WRITER_CACHE_KIB: Final = 4096
# The WAL is copied into state.db once it holds this many pages (SQLite's default is
# 1,000): pages rewritten by many commits (guests, the newest index pages) are copied
# once per checkpoint, not once per commit. After a checkpoint the WAL is truncated
# back to WAL_LIMIT bytes.
WAL_AUTOCHECKPOINT: Final = 4000
WAL_LIMIT: Final = 16 << 20

SET_ASIDE_REASONS: Final = (
    "not_a_database", "empty", "corrupt", "foreign", "newer_version", "invalid_rows",
    "invalid_position", "not_a_file", "unreadable", "rejected",
)  # fmt: skip


class StoreLocked(RuntimeFailure):
    """Another monitord uses this state directory (exit 1 with this message)."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """What `Store.open` found; empty when it started fresh."""

    origin: str  # "store", "checkpoint.json" or "fresh"
    source_kind: str | None = None
    position: Doc | None = None
    # Least recently upserted first: the order `take_changes` gave them in.
    guests: tuple[Doc, ...] = ()
    meta: Doc = field(default_factory=dict)
    counters: dict[str, Doc] = field(default_factory=dict)
    alerts: Doc | None = None
    saved_at: float | None = None
    set_aside: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreStats:
    """The store's own numbers, for metrics (see docs/INTERFACE.md)."""

    commits: int
    commit_errors: int
    last_commit: float | None  # wall clock of the last successful commit
    commit_seconds: float  # duration of the last successful commit
    set_aside: dict[str, int]
    events: int  # history events held
    events_dropped: int  # history events lost while commits failed (beyond MAX_PENDING_EVENTS)
    pruned: dict[str, int]  # history events deleted, by "age" / "size"
    file_bytes: int  # state.db + its WAL
    healthy: bool


# An event as the store writes it: (tms, serial, (node, uuid, vm), res, shape doc, vals).
Encoded = tuple[float | int, int, tuple[str | None, str | None, str | None], int | None, str, str]


@dataclass(slots=True)
class _Batch:
    kind: str | None
    position: Doc | None
    upserted: dict[GuestKey, Doc]
    deleted: set[GuestKey]
    meta: Doc | None
    counters: dict[str, Doc] | None
    alerts: Doc | None
    events: list[Encoded]
    full: bool

    def merged_into(self, newer: _Batch) -> _Batch:
        """This (older, unwritten) batch followed by `newer`, as one batch."""
        if newer.full:
            upserted, deleted = dict(newer.upserted), set()
        else:
            # A guest changed again moves to the end: the order is that of the last change.
            upserted = {
                k: v for k, v in self.upserted.items()
                if k not in newer.deleted and k not in newer.upserted
            }  # fmt: skip
            upserted.update(newer.upserted)
            deleted = (self.deleted | newer.deleted) - newer.upserted.keys()
        return _Batch(
            kind=newer.kind,
            position=newer.position,
            upserted=upserted,
            deleted=deleted,
            meta=newer.meta if newer.meta is not None else self.meta,
            counters=newer.counters if newer.counters is not None else self.counters,
            alerts=newer.alerts if newer.alerts is not None else self.alerts,
            events=self.events + newer.events,
            full=self.full or newer.full,
        )


@dataclass(slots=True)
class _Tentative:
    """What a transaction adds to the store's memory, applied once it has committed."""

    guest_seq: int = 0
    base_rows: int = 0
    log_rows: int = 0
    spanned: int = 0
    keysets: dict[tuple[str, ...], int] = field(default_factory=dict)
    shapes: dict[str, int] = field(default_factory=dict)
    subjects: dict[tuple[str | None, str | None, str | None], int] = field(default_factory=dict)
    shape_last: dict[int, int] = field(default_factory=dict)
    subject_last: dict[int, int] = field(default_factory=dict)


class Corrupt(Exception):
    """The database cannot be trusted; `reason` labels the set-aside metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


class Store:
    """The daemon's durable state in `DIR/state.db`; one writer (the caller of `commit`)."""

    def __init__(
        self,
        directory: str,
        *,
        retention: float = DEFAULT_RETENTION,
        max_bytes: int = DEFAULT_MAX_BYTES,
        grace: float = 3.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dir = str(directory)
        self.path = str(Path(directory) / schema.DB_NAME)
        self.retention = retention
        self.max_bytes = max_bytes
        self.grace = grace
        self.clock = clock
        self.monotonic = monotonic
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._lock_fd: int | None = None
        self.generation = 0  # changes whenever state.db is replaced (readers reconnect)
        self.history = HistoryReader(self.path, lambda: self.generation)
        # What the database holds (valid while _conn is open).
        self._seq = 0
        self._next_id = 1
        self._min_id: int | None = None
        self._written: dict[str, str] = {}
        self._keysets: dict[tuple[str, ...], int] = {}
        self._shapes: dict[str, int] = {}
        self._subjects: dict[tuple[str | None, str | None, str | None], int] = {}
        self._spanned = 0  # buckets below it have their spans row
        self._base_rows = 0  # rows in guests
        self._log_rows = 0  # rows in guest_log
        # Last event id using each shape/subject since open; those not seen since open are
        # taken as used by the newest event at open (`_floor`): pruning below it frees them.
        self._shape_last: dict[int, int] = {}
        self._subject_last: dict[int, int] = {}
        self._floor = 0
        self._floor_swept = False
        self._guest_seq = 0
        self._pending: _Batch | None = None
        self._pending_seq: int | None = None
        self.needs_full_state = False
        self._unread = False  # state.db may exist but could not be read at open
        self._next_prune = 0.0
        # Health and numbers.
        self._failing_since: float | None = None
        self._last_error = ""
        self._commits = 0
        self._errors = 0
        self._last_commit: float | None = None
        self._commit_seconds = 0.0
        self._set_aside: dict[str, int] = {}
        self._pruned: dict[str, int] = {"age": 0, "size": 0}
        self._dropped = 0
        self._errlog = RateLimitedLogger(log, burst=3, interval=60.0)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str,
        *,
        retention: float = DEFAULT_RETENTION,
        max_bytes: int = DEFAULT_MAX_BYTES,
        grace: float = 3.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> tuple[Store, Loaded]:
        """Open (or create) the store in `directory`; never fails for what the files hold.

        StoreLocked if another monitord holds the directory. If the directory cannot be
        written at all, the store starts detached: `healthy()` says why, commits retry.
        """
        store = cls(
            directory, retention=retention, max_bytes=max_bytes, grace=grace,
            clock=clock, monotonic=monotonic,
        )  # fmt: skip
        return store, store._open()

    def _open(self) -> Loaded:
        set_aside: list[str] = []
        try:
            Path(self.dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            self._take_lock()
        except StoreLocked:
            raise
        except OSError as err:
            self._unread = True
            self._fail(f"cannot use state directory {self.dir}: {err.strerror}", count=False)
            return Loaded(origin="fresh")
        loaded: Loaded | None = None
        if os.path.lexists(self.path):
            try:
                loaded = self._load_existing()
            except Corrupt as err:
                self._close()
                target = self._set_aside_files(err.reason, str(err))
                if target:
                    set_aside.append(target)
            except OSError as err:
                # The directory or file went bad in a way renaming cannot fix (EIO, EACCES on
                # the directory): run from memory, retry at each commit.
                self._close()
                self._unread = True
                self._fail(f"cannot open {self.path}: {err.strerror or err}", count=False)
                return Loaded(origin="fresh", set_aside=tuple(set_aside))
            else:
                self._forget_checkpoint_json("ignored")
        if loaded is None:
            try:
                loaded = self._import_checkpoint_json(set_aside)
                if loaded is None:
                    self._create()
                    loaded = Loaded(origin="fresh")
            except (OSError, sqlite3.Error) as err:
                self._close()
                self._fail(f"cannot create {self.path}: {_why(err)}", count=False)
                return Loaded(origin="fresh", set_aside=tuple(set_aside))
        if set_aside:
            loaded = dataclasses.replace(loaded, set_aside=tuple(set_aside))
        self._last_commit = loaded.saved_at  # what the checkpoint timestamp shows until then
        return loaded

    def _take_lock(self) -> None:
        if self._lock_fd is not None:
            return
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(Path(self.dir) / LOCK_NAME, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(
                f"state directory {self.dir} is in use by another monitord; "
                "give each instance its own --state-dir"
            ) from None
        self._lock_fd = fd

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            "file:" + _uri_path(self.path) + "?mode=rw",
            uri=True, isolation_level=None, check_same_thread=False,
        )  # fmt: skip
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL mode (journal mode {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
        conn.execute("PRAGMA foreign_keys = OFF")

    def _load_existing(self) -> Loaded:
        """Open state.db, check it completely, load the state; Corrupt if it cannot be trusted."""
        st = os.lstat(self.path)
        if not _is_regular(st.st_mode):
            raise Corrupt("not_a_file", f"{self.path} is not a regular file")
        try:
            with open(self.path, "rb") as f:
                head = f.read(100)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM, errno.EISDIR):
                raise Corrupt("unreadable", f"cannot read {self.path}: {err.strerror}") from None
            raise
        if not head:
            raise Corrupt("empty", f"{self.path} is empty")
        if not head.startswith(schema.SQLITE_MAGIC) or len(head) < 100:
            raise Corrupt("not_a_database", f"{self.path} is not an SQLite database")
        for suffix in ("-wal", "-shm"):
            side = self.path + suffix
            if os.path.lexists(side) and not _is_regular(os.lstat(side).st_mode):
                raise Corrupt("not_a_file", f"{side} is not a regular file")
        try:
            conn = self._connect()
            self._conn = conn
            version = schema.identify(conn)
            if version > schema.SCHEMA_VERSION:  # pragma: no cover - identify raises first
                raise schema.SchemaError("newer_version", "newer schema")
            self._setup(conn)
            schema.verify(conn)
            version = schema.migrate(conn, version)
            self._quick_check(conn)
            loaded = self._read_state(conn)
        except schema.SchemaError as err:
            raise Corrupt(err.reason, f"{self.path}: {err}") from None
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and _transient(err):
                raise OSError(errno.EIO, str(err)) from None
            reason = "not_a_database" if "not a database" in str(err) else "corrupt"
            raise Corrupt(reason, f"{self.path}: {err}") from None
        except (Corrupt, OSError):
            raise
        except Exception as err:
            # Content no check above foresaw must not stop the daemon at every start.
            log.exception("unexpected error while reading %s", self.path)
            raise Corrupt("corrupt", f"{self.path}: {type(err).__name__}: {err}") from None
        self._identity = _identity(self.path)
        return loaded

    def _quick_check(self, conn: sqlite3.Connection) -> None:
        size = Path(self.path).stat().st_size
        if size <= FULL_CHECK_BYTES:
            problems = conn.execute("PRAGMA quick_check(5)").fetchall()
        else:
            problems = []
            for table in schema.STATE_TABLES:
                problems += conn.execute(f"PRAGMA quick_check({table})").fetchall()
            problems = [p for p in problems if p != ("ok",)] or [("ok",)]
        if problems != [("ok",)]:
            detail = "; ".join(str(p[0]) for p in problems[:3])
            raise Corrupt("corrupt", f"{self.path} failed quick_check: {detail}")

    def _read_state(self, conn: sqlite3.Connection) -> Loaded:
        """Load and validate every row outside the history; Corrupt on the first bad one."""
        values: dict[str, Any] = {}
        for name, text in conn.execute("SELECT name, value FROM state"):
            if not isinstance(name, str) or not isinstance(text, str):
                raise Corrupt("invalid_rows", "state: a row of the wrong type")
            try:
                values[name] = json.loads(text)
            except (ValueError, RecursionError):
                raise Corrupt("invalid_rows", f"state {name!r}: not JSON") from None
            self._written[name] = text
        meta: Doc = {}
        counters: dict[str, Doc] = {}
        alerts: Doc | None = None
        kind: str | None = None
        position: Doc | None = None
        saved_at: float | None = None
        for name, value in values.items():
            section, _, key = name.partition(":")
            if name == "source":
                if not isinstance(value, dict) or set(value) != {"kind", "position"}:
                    raise Corrupt("invalid_rows", "state 'source': not a source document")
                kind, position = value["kind"], value["position"]
                if kind is not None and not isinstance(kind, str):
                    raise Corrupt("invalid_rows", "state 'source': kind is not text")
                problem = position_problem(kind, position)
                if problem:
                    raise Corrupt("invalid_position", f"saved source position: {problem}")
            elif name == "store":
                if not isinstance(value, dict):
                    raise Corrupt("invalid_rows", "state 'store': not an object")
                seq, next_id, saved = value.get("seq"), value.get("next_id"), value.get("saved_at")
                if not _count(seq) or not _count(next_id) or not _number(saved):
                    raise Corrupt("invalid_rows", "state 'store': seq, next_id or saved_at invalid")
                self._seq, self._next_id = cast(int, seq), max(1, cast(int, next_id))
                saved_at = float(cast(float, saved))
            elif section == "meta" and key:
                meta[key] = value
            elif section == "counters" and key:
                if not isinstance(value, dict):
                    raise Corrupt("invalid_rows", f"state {name!r}: not an object")
                counters[key] = value
            elif section == "alerts" and key:
                alerts = alerts if alerts is not None else {}
                alerts[key] = value
            else:
                raise Corrupt("invalid_rows", f"state: unknown row {name!r}")
        keysets: dict[int, tuple[str, ...]] = {}
        for ks, text in conn.execute("SELECT ks, keys FROM keysets"):
            try:
                keys = json.loads(text)
            except (ValueError, RecursionError):
                raise Corrupt("invalid_rows", f"keyset {ks}: not JSON") from None
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise Corrupt("invalid_rows", f"keyset {ks}: not a list of names")
            keysets[ks] = tuple(keys)
        self._keysets = {v: k for k, v in keysets.items()}
        # Each guest's latest row (its guests row, or its last guest_log row), in the order of
        # their last change; only those are parsed.
        latest: dict[tuple[Any, Any], tuple[Any, ...]] = {}
        base = conn.execute("SELECT node, uuid, seq, ks, vals FROM guests ORDER BY seq").fetchall()
        logged = conn.execute("SELECT node, uuid, seq, ks, vals FROM guest_log ORDER BY seq")
        self._base_rows = len(base)
        self._log_rows = 0
        last_seq = 0
        for rows, is_log in ((base, False), (logged, True)):
            for row in rows:
                node, uuid, seq, ks, text = row
                if not isinstance(node, str | bytes) or not isinstance(uuid, str | bytes):
                    raise Corrupt("invalid_rows", "guests: a key of the wrong type")
                if not _count(seq) or (is_log and seq <= last_seq):
                    raise Corrupt("invalid_rows", "guests: a sequence number out of order")
                last_seq = max(last_seq, seq)
                self._log_rows += is_log
                latest.pop((node, uuid), None)
                if not (is_log and ks is None and text is None):  # else: deleted
                    latest[(node, uuid)] = row
        guests = [
            self._guest_doc(keysets, node, uuid, ks, text)
            for node, uuid, _, ks, text in latest.values()
        ]
        self._guest_seq = last_seq
        lo, hi = conn.execute(schema.ID_RANGE).fetchone()
        if (lo is not None and not _count(lo)) or (hi is not None and not _count(hi)):
            raise Corrupt("invalid_rows", "events: ids of the wrong type")
        if hi is not None and hi < lo:  # pragma: no cover - SQLite's own invariant
            raise Corrupt("invalid_rows", "events: ids out of order")
        self._min_id = lo
        self._next_id = max(self._next_id, (hi or 0) + 1)
        self._floor = hi or 0
        for b, span_lo, span_hi in conn.execute("SELECT b, lo, hi FROM spans"):
            if not _count(b) or not _number(span_lo) or not _number(span_hi):
                raise Corrupt("invalid_rows", "spans: a row of the wrong type")
        self._spanned = self._spanned_from(conn)
        if Path(self.path).stat().st_size <= HISTORY_CHECK_BYTES:
            self._check_history_rows(conn)
        self._pending_seq = None
        return Loaded(
            origin="store",
            source_kind=kind,
            position=position,
            guests=tuple(guests),
            meta=meta,
            counters=counters,
            alerts=alerts,
            saved_at=saved_at,
        )

    @staticmethod
    def _guest_doc(
        keysets: Mapping[int, tuple[str, ...]], node: Any, uuid: Any, ks: Any, text: Any
    ) -> Doc:
        keys = keysets.get(ks) if isinstance(ks, int) else None
        try:
            vals = json.loads(text) if isinstance(text, str) else None
        except (ValueError, RecursionError):
            vals = None
        if keys is None or not isinstance(vals, list) or len(vals) != len(keys):
            raise Corrupt("invalid_rows", f"guest {uuid!r}: values do not fit their keys")
        doc = dict(zip(keys, vals, strict=True))
        if "uuid" in doc and (not isinstance(doc["uuid"], str) or to_db(doc["uuid"]) != uuid):
            raise Corrupt("invalid_rows", f"guest {uuid!r}: its document names another uuid")
        return doc

    def _spanned_from(self, conn: sqlite3.Connection) -> int:
        """The first bucket without a spans row: the one being filled (or an older one)."""
        top = conn.execute("SELECT max(b) FROM spans").fetchone()[0]
        if top is not None:
            return int(top) + 1
        return (self._min_id or self._next_id) >> schema.BUCKET_BITS

    def _check_history_rows(self, conn: sqlite3.Connection) -> None:
        """Every history row decodes (small stores; big ones are checked as they are read)."""
        bad = conn.execute(
            "SELECT count(*) FROM events WHERE typeof(serial) != 'integer' OR serial < 0"
            " OR typeof(gid) != 'integer' OR typeof(sid) != 'integer'"
            " OR typeof(tms) NOT IN ('integer', 'real')"
            " OR NOT (res IS NULL OR res IN (0, 1))"
            " OR gid NOT IN (SELECT gid FROM subjects) OR sid NOT IN (SELECT sid FROM shapes)"
        ).fetchone()[0]
        if bad:
            raise Corrupt("invalid_rows", f"events: {bad} row(s) do not fit the schema")
        from monitord.state.eventcodec import Shape, decode

        shapes = {}
        for sid, doc in conn.execute("SELECT sid, doc FROM shapes"):
            try:
                shapes[sid] = Shape.from_doc(doc)
            except ValueError as err:
                raise Corrupt("invalid_rows", f"shape {sid}: {err}") from None
        for gid, node, uuid, vm in conn.execute("SELECT gid, node, uuid, vm FROM subjects"):
            if any(v is not None and not isinstance(v, str | bytes) for v in (node, uuid, vm)):
                raise Corrupt("invalid_rows", f"subject {gid}: a value of the wrong type")
        for eid, sid, vals in conn.execute("SELECT id, sid, vals FROM events"):
            try:
                decode(shapes[sid], None, None, None, 0.0, 0, vals)
            except ValueError as err:
                raise Corrupt("invalid_rows", f"event {eid}: {err}") from None

    def _create(self) -> None:
        """A new, empty state.db: built under a temporary name, then renamed into place."""
        tmp = self.path + ".new"
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(tmp + suffix).unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute(f"PRAGMA page_size = {schema.PAGE_SIZE}")
            conn.execute("BEGIN")
            schema.create(conn)
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode = WAL")
        finally:
            conn.close()
        Path(tmp).replace(self.path)
        _fsync_dir(self.dir)
        self._reset_memory()
        self._conn = self._connect()
        self._setup(self._conn)
        self._identity = _identity(self.path)
        self.generation += 1

    def _reset_memory(self) -> None:
        self._seq = 0
        self._next_id = 1
        self._min_id = None
        self._written = {}
        self._keysets = {}
        self._shapes = {}
        self._subjects = {}
        self._spanned = 0
        self._base_rows = 0
        self._log_rows = 0
        self._shape_last = {}
        self._subject_last = {}
        self._floor = 0
        self._floor_swept = True
        self._guest_seq = 0

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Close the database (a clean close checkpoints and removes the WAL)."""
        self._close()
        self.history.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- setting aside -------------------------------------------------------------------

    def _set_aside_files(self, reason: str, message: str) -> str | None:
        """Rename state.db (+ -wal, -shm) to state.db.<reason>-<time>; return the new name."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(self.clock()))
        base = f"{self.path}.{reason}-{stamp}"
        target, n = base, 1
        while any(os.path.lexists(target + s) for s in ("", "-wal", "-shm")):
            n += 1
            target = f"{base}.{n}"
        self._set_aside[reason] = self._set_aside.get(reason, 0) + 1
        moved = None
        for suffix in ("", "-wal", "-shm"):
            src = self.path + suffix
            if not os.path.lexists(src):
                continue
            try:
                Path(src).rename(target + suffix)
                moved = moved or target
            except OSError as err:
                log.error("cannot set aside %s: %s; removing it", src, err.strerror)
                _remove(src)
        log.error("%s; set aside as %s, starting fresh from the beginning of the log", message,
                  target)  # fmt: skip
        self.generation += 1
        self._prune_set_aside()
        return moved

    def _prune_set_aside(self) -> None:
        pattern = re.compile(re.escape(schema.DB_NAME) + r"\.[a-z_]+-\d{8}T\d{6}(\.\d+)?\Z")
        try:
            names = [n for n in os.listdir(self.dir) if pattern.match(n)]
        except OSError:
            return
        names.sort(key=lambda n: (n.rsplit("-", 1)[1], n))
        for old in names[:-KEEP_SET_ASIDE]:
            for suffix in ("", "-wal", "-shm"):
                _remove(str(Path(self.dir) / (old + suffix)))
            log.warning("removed old set-aside store %s (keeping the %d newest)", old,
                        KEEP_SET_ASIDE)  # fmt: skip

    def reject(self, reason: str) -> None:
        """The loaded content did not fit the daemon (e.g. a guest the table cannot load):
        set the store aside and start fresh, as for a corrupt file."""
        self._close()
        self._set_aside_files("rejected", f"{self.path}: loaded content rejected ({reason})")
        self._pending = None
        try:
            self._create()
        except (OSError, sqlite3.Error) as err:
            self._close()
            self._fail(f"cannot create {self.path}: {_why(err)}", count=False)

    # -- checkpoint.json (monitord before the store) -------------------------------------

    def _import_checkpoint_json(self, set_aside: list[str]) -> Loaded | None:
        from monitord.state import checkpoint

        path = str(Path(self.dir) / CHECKPOINT_JSON)
        if not os.path.lexists(path):
            return None
        try:
            doc = checkpoint.read_v1(path)
        except checkpoint.CheckpointError as err:
            target = checkpoint.set_aside(path, self.clock())
            self._set_aside["checkpoint_json"] = self._set_aside.get("checkpoint_json", 0) + 1
            log.error("%s: %s; set aside as %s, starting fresh", path, err, target)
            if target:
                set_aside.append(target)
            return None
        self._create()
        records = [encode_event(r) for r in doc.events]
        batch = _Batch(
            kind=doc.source_kind,
            position=doc.position,
            upserted={("", str(g["uuid"])): g for g in doc.guests},
            deleted=set(),
            meta=doc.meta,
            counters=doc.counters,
            alerts=doc.alerts,
            events=records,
            full=True,
        )
        assert self._conn is not None
        try:
            self._write(self._conn, batch, self.monotonic())
        except (OSError, sqlite3.Error):
            # Leave no empty store behind: the next start tries the import again.
            self._close()
            for suffix in ("", "-wal", "-shm"):
                Path(self.path + suffix).unlink(missing_ok=True)
            raise
        target = checkpoint.retire(path, "imported", self.clock())
        log.warning(
            "imported %s (%d guests, %d events) into %s; the old file is kept as %s",
            path, len(doc.guests), len(records), self.path, target,
        )  # fmt: skip
        return Loaded(
            origin=CHECKPOINT_JSON,
            source_kind=doc.source_kind,
            position=doc.position,
            guests=tuple(doc.guests),
            meta=doc.meta,
            counters=doc.counters,
            alerts=doc.alerts,
            saved_at=doc.saved_at,
        )

    def _forget_checkpoint_json(self, why: str) -> None:
        path = str(Path(self.dir) / CHECKPOINT_JSON)
        if os.path.lexists(path):
            from monitord.state import checkpoint

            target = checkpoint.retire(path, why, self.clock())
            log.warning("%s exists beside %s, which is used; renamed to %s", path, self.path,
                        target)  # fmt: skip

    # -- committing ----------------------------------------------------------------------

    def commit(
        self,
        *,
        source_kind: str | None,
        position: Doc | None,
        upserted: Iterable[tuple[GuestKey, Doc]] = (),
        deleted: Iterable[GuestKey] = (),
        meta: Doc | None = None,
        counters: Mapping[str, Doc] | None = None,
        alerts: Doc | None = None,
        events: Sequence[AuditRecord] = (),
        encoded: Sequence[Encoded] = (),
        full: bool = False,
    ) -> bool:
        """Write everything given as one transaction; False if it failed (kept for the next).

        `upserted`/`deleted`: guests changed since the previous call (with `full`, every
        guest, and any other is deleted). `meta`, `counters`, `alerts`: complete current
        values (None: unchanged); each part is rewritten only when its JSON changed.
        `events`: the libvirt records applied since the previous call, in order; or
        `encoded`: the same already through `encode_event` (the daemon encodes each record
        as it is applied: a compact tuple the garbage collector does not track, where a
        second of AuditRecords waiting for the commit would fill its oldest generation).
        """
        started = self.monotonic()
        batch = _Batch(
            kind=source_kind,
            position=position,
            upserted=dict(upserted),
            deleted=set(deleted),
            meta=meta,
            counters=dict(counters) if counters is not None else None,
            alerts=alerts,
            events=[encode_event(r) for r in events] + list(encoded),
            full=full,
        )
        conn: sqlite3.Connection | None = None
        error: BaseException | None = None
        try:
            # First: reopening may find that the batch kept from a failed commit had landed.
            conn = self._ready()
        except (sqlite3.Error, OSError) as err:
            error = err
        if self._pending is not None:
            batch = self._pending.merged_into(batch)
            self._pending = None
        if conn is not None and self.needs_full_state and not batch.full:
            self._keep(batch)
            return False
        if conn is not None:
            try:
                self._write(conn, batch, started)
            except (sqlite3.Error, OSError) as err:
                error = err
        if error is not None:
            self._keep(batch)
            self._pending_seq = self._seq + 1
            self._close()  # reopened (and checked against _pending_seq) at the next attempt
            self._fail(f"cannot commit to {self.path}: {_why(error)}")
            return False
        self.needs_full_state = False
        self._commits += 1
        self._last_commit = self.clock()
        self._commit_seconds = self.monotonic() - started
        if self._failing_since is not None:
            log.warning("state store: commits succeed again (%s)", self.path)
        self._failing_since = None
        self._last_error = ""
        return True

    def _keep(self, batch: _Batch) -> None:
        excess = len(batch.events) - MAX_PENDING_EVENTS
        if excess > 0:
            del batch.events[:excess]
            self._dropped += excess
            self._errlog.error(
                "state store: %d history event(s) dropped while commits fail "
                "(guest state is kept whole)", excess,
            )  # fmt: skip
        self._pending = batch

    def _fail(self, message: str, count: bool = True) -> None:
        if count:
            self._errors += 1
        if self._failing_since is None:
            self._failing_since = self.monotonic()
        self._last_error = message
        self._errlog.error("%s; running from memory, will retry", message)

    def _ready(self) -> sqlite3.Connection:
        """The open connection to the state.db at self.path, reopened or recreated if needed."""
        if self._conn is not None:
            if _identity(self.path) == self._identity:
                return self._conn
            # Deleted or replaced under us: what the old file held is not here any more.
            log.error("%s was deleted or replaced while in use; writing a new one", self.path)
            self._close()
        if not Path(self.dir).is_dir():
            # Deleted under us (the directory is ours, as StateDirectory= makes it): make it
            # again, with a lock of its own; the next commit writes the whole state.
            try:
                Path(self.dir).mkdir(mode=0o700, parents=True)
            except OSError as err:
                why = f"state directory {self.dir} is gone and cannot be created: {err.strerror}"
                raise OSError(err.errno, why) from None
            log.warning("state directory %s was missing (deleted?); created it again", self.dir)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
        self._take_lock()
        if os.path.lexists(self.path) and self._unread:
            # Not read at start-up: the daemon started from the log's beginning without it.
            self._set_aside_files("unreadable", f"{self.path} could not be read at start-up")
            self._create_for_full_state()
        elif os.path.lexists(self.path):
            try:
                self._reopen()
            except Corrupt as err:
                self._close()
                self._set_aside_files(err.reason, str(err))
                self._create_for_full_state()
        else:
            self._create_for_full_state()
        self._unread = False
        assert self._conn is not None
        return self._conn

    def _create_for_full_state(self) -> None:
        self._create()
        self.needs_full_state = True

    def _reopen(self) -> None:
        """Reopen after a failed commit: light checks; learn whether that commit landed."""
        st = os.lstat(self.path)
        if not _is_regular(st.st_mode):
            raise Corrupt("not_a_file", f"{self.path} is not a regular file")
        try:
            conn = self._connect()
            self._conn = conn
            schema.identify(conn)
            self._setup(conn)
            schema.verify(conn)
            row = conn.execute("SELECT value FROM state WHERE name = 'store'").fetchone()
            lo, hi = conn.execute(schema.ID_RANGE).fetchone()
        except schema.SchemaError as err:
            raise Corrupt(err.reason, f"{self.path}: {err}") from None
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and _transient(err):
                raise
            raise Corrupt("corrupt", f"{self.path}: {err}") from None
        seq = 0
        if row is not None:
            with contextlib.suppress(ValueError, TypeError, AttributeError, RecursionError):
                seq = int(json.loads(row[0]).get("seq", 0))
        if self._pending is not None and self._pending_seq is not None and seq >= self._pending_seq:
            # The commit reported as failed had landed (an error after its commit record).
            self._pending = None
        if seq != self._seq:
            self._reload_memory(conn, seq, lo, hi)
        self._identity = _identity(self.path)

    def _reload_memory(self, conn: sqlite3.Connection, seq: int, lo: Any, hi: Any) -> None:
        """What the database holds, after it changed without us (a commit that did land)."""
        self._seq = seq
        self._min_id = lo
        self._next_id = max(self._next_id, (hi or 0) + 1)
        self._written = dict(conn.execute("SELECT name, value FROM state").fetchall())
        keysets = conn.execute("SELECT ks, keys FROM keysets").fetchall()
        self._keysets = {tuple(json.loads(k)): ks for ks, k in keysets}
        self._shapes = {}
        self._subjects = {}
        self._spanned = self._spanned_from(conn)
        self._base_rows = conn.execute("SELECT count(*) FROM guests").fetchone()[0]
        self._log_rows = conn.execute("SELECT count(*) FROM guest_log").fetchone()[0]
        self._guest_seq = conn.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM guests), 0),"
            " coalesce((SELECT max(seq) FROM guest_log), 0))"
        ).fetchone()[0]

    def _write(self, conn: sqlite3.Connection, batch: _Batch, started: float) -> None:
        """Apply one batch in one transaction; memory follows only once it committed."""
        now = self.clock()
        seq = self._seq + 1
        t = _Tentative()
        first_id = self._next_id
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._write_guests(conn, batch, t)
            next_id = self._write_events(conn, batch.events, t)
            state = self._state_rows(batch, seq, next_id, now)
            written: dict[str, str | None] = {
                name: text for name, text in state.items() if self._written.get(name) != text
            }
            gone = [
                n for n in self._written
                if n not in state and n.partition(":")[0] in _given_sections(batch)
            ]  # fmt: skip
            if gone:
                conn.executemany("DELETE FROM state WHERE name = ?", [(n,) for n in gone])
                written.update((n, None) for n in gone)
            upserts = [(n, v) for n, v in written.items() if v is not None]
            if upserts:
                conn.executemany(
                    "INSERT INTO state(name, value) VALUES (?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    upserts,
                )
            pruned = self._prune(
                conn, started, next_id,
                {**self._shape_last, **t.shape_last}, {**self._subject_last, **t.subject_last},
            )  # fmt: skip
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        # Committed: memory now follows the database.
        self._seq = seq
        self._next_id = next_id
        self._guest_seq = t.guest_seq
        self._base_rows, self._log_rows = t.base_rows, t.log_rows
        self._spanned = t.spanned
        self._keysets.update(t.keysets)
        self._shapes.update(t.shapes)
        self._subjects.update(t.subjects)
        self._shape_last.update(t.shape_last)
        self._subject_last.update(t.subject_last)
        for name, text in written.items():
            if text is None:
                self._written.pop(name, None)
            else:
                self._written[name] = text
        if self._min_id is None and batch.events:
            self._min_id = first_id
        if pruned is not None:
            self._after_prune(*pruned)

    def _write_guests(self, conn: sqlite3.Connection, batch: _Batch, t: _Tentative) -> None:
        """Append the changed guests to guest_log (a full state goes straight to guests)."""
        t.guest_seq = self._guest_seq
        t.base_rows, t.log_rows = self._base_rows, self._log_rows
        rows: list[tuple[Any, ...]] = []
        if not batch.full:
            for node, uuid in batch.deleted:
                t.guest_seq += 1
                rows.append((t.guest_seq, to_db(node), to_db(uuid), None, None))
        for (node, uuid), doc in batch.upserted.items():
            keys = tuple(doc)
            ks = self._keysets.get(keys) or t.keysets.get(keys)
            if ks is None:
                cur = conn.execute("INSERT INTO keysets(keys) VALUES (?)", (_dumps(list(keys)),))
                ks = t.keysets[keys] = int(cur.lastrowid or 0)
            t.guest_seq += 1
            rows.append((t.guest_seq, to_db(node), to_db(uuid), ks, _dumps(list(doc.values()))))
        if batch.full:
            conn.execute("DELETE FROM guests")
            conn.execute("DELETE FROM guest_log")
            conn.executemany(
                "INSERT INTO guests(seq, node, uuid, ks, vals) VALUES (?, ?, ?, ?, ?)", rows
            )
            t.base_rows, t.log_rows = len(rows), 0
            return
        if rows:
            conn.executemany("INSERT INTO guest_log VALUES (?, ?, ?, ?, ?)", rows)
            t.log_rows += len(rows)
        if t.log_rows >= max(COMPACT_ROWS, t.base_rows):
            self._compact(conn, t)

    @staticmethod
    def _compact(conn: sqlite3.Connection, t: _Tentative) -> None:
        """Fold guest_log into guests: each guest's latest row wins; empty the log."""
        latest: dict[tuple[Any, Any], tuple[int, Any, Any]] = {}
        for seq, node, uuid, ks, vals in conn.execute("SELECT * FROM guest_log ORDER BY seq"):
            latest[(node, uuid)] = (seq, ks, vals)
        gone = [key for key, (_, ks, vals) in latest.items() if ks is None and vals is None]
        if gone:
            conn.executemany("DELETE FROM guests WHERE node = ? AND uuid = ?", gone)
        conn.executemany(
            "INSERT INTO guests(node, uuid, seq, ks, vals) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(node, uuid) DO UPDATE SET seq = excluded.seq, ks = excluded.ks,"
            " vals = excluded.vals",
            [(n, u, seq, ks, v) for (n, u), (seq, ks, v) in latest.items() if ks is not None],
        )
        conn.execute("DELETE FROM guest_log")
        t.base_rows = conn.execute("SELECT count(*) FROM guests").fetchone()[0]
        t.log_rows = 0

    def _write_events(self, conn: sqlite3.Connection, events: list[Encoded], t: _Tentative) -> int:
        """Insert the events; give each bucket that became full its spans row."""
        next_id = self._next_id
        t.spanned = self._spanned
        if not events:
            return next_id
        rows = []
        for tms, serial, subject, res, shape_doc, vals in events:
            sid = self._shapes.get(shape_doc) or t.shapes.get(shape_doc)
            if sid is None:
                sid = t.shapes[shape_doc] = self._find_or_add(
                    conn, "SELECT sid FROM shapes WHERE doc = ?",
                    "INSERT INTO shapes(doc) VALUES (?)", (shape_doc,),
                )  # fmt: skip
            gid = self._subjects.get(subject) or t.subjects.get(subject)
            if gid is None:
                node, uuid, vm = (to_db(x) for x in subject)
                gid = t.subjects[subject] = self._find_or_add(
                    conn, "SELECT gid FROM subjects WHERE uuid IS ? AND node IS ? AND vm IS ?",
                    "INSERT INTO subjects(uuid, node, vm) VALUES (?, ?, ?)", (uuid, node, vm),
                )  # fmt: skip
            rows.append((next_id, tms, serial, gid, sid, res, vals))
            t.shape_last[sid] = next_id
            t.subject_last[gid] = next_id
            next_id += 1
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        bits = schema.BUCKET_BITS
        full = next_id >> bits  # buckets below it have all their ids
        for b in range(t.spanned, full):
            conn.execute(
                "INSERT INTO spans(b, lo, hi) SELECT ?, min(tms), max(tms) FROM events"
                " WHERE id BETWEEN ? AND ? HAVING count(*) > 0"
                " ON CONFLICT(b) DO UPDATE SET lo = excluded.lo, hi = excluded.hi",
                (b, b << bits, ((b + 1) << bits) - 1),
            )
        t.spanned = max(t.spanned, full)
        return next_id

    @staticmethod
    def _find_or_add(conn: sqlite3.Connection, find: str, add: str, params: tuple[Any, ...]) -> int:
        row = conn.execute(find, params).fetchone()
        if row is not None:
            return int(row[0])
        return int(conn.execute(add, params).lastrowid or 0)

    def _state_rows(self, batch: _Batch, seq: int, next_id: int, now: float) -> dict[str, str]:
        rows = {
            "source": _dumps({"kind": batch.kind, "position": batch.position}),
            "store": _dumps(
                {"seq": seq, "next_id": next_id, "saved_at": now, "monitord": __version__}
            ),
        }
        for section, value in (("meta", batch.meta), ("alerts", batch.alerts)):
            if value is None:
                rows.update((n, t) for n, t in self._written.items() if n.startswith(section + ":"))
            else:
                rows.update((f"{section}:{k}", _dumps(v)) for k, v in value.items())
        if batch.counters is None:
            rows.update((n, t) for n, t in self._written.items() if n.startswith("counters:"))
        else:
            rows.update((f"counters:{k}", _dumps(v)) for k, v in batch.counters.items())
        return rows

    # -- pruning -------------------------------------------------------------------------

    def _prune(
        self,
        conn: sqlite3.Connection,
        mono: float,
        next_id: int,
        shape_last: dict[int, int],
        subject_last: dict[int, int],
    ) -> tuple[int, int, int, list[int], list[int]] | None:
        """Delete the oldest history beyond retention or size, at most PRUNE_BATCH events.

        Returns (bound, by age, by size, dead shapes, dead subjects), None if nothing ran.
        """
        if mono < self._next_prune:
            return None
        lo = self._min_id
        if lo is None:
            lo_row = conn.execute("SELECT min(id) FROM events").fetchone()[0]
            if lo_row is None:
                self._next_prune = mono + PRUNE_EVERY
                return None
            lo = int(lo_row)
        limit = lo + PRUNE_BATCH
        bound = lo
        # By age: record time against the newest record time (never ahead of the clock).
        bits = schema.BUCKET_BITS
        newest = conn.execute(
            "SELECT max(coalesce((SELECT max(hi) FROM spans), -1e300),"
            " coalesce((SELECT max(tms) FROM events WHERE id >= ?), -1e300))",
            (((next_id - 1) >> bits) << bits,),
        ).fetchone()[0]
        if newest > -1e300:
            cutoff = time_to_db(min(newest / 1000, self.clock()) - self.retention)
            row = conn.execute(
                "SELECT id FROM events WHERE id >= ? AND id < ? AND tms >= ? ORDER BY id LIMIT 1",
                (lo, limit, cutoff),
            ).fetchone()
            bound = int(row[0]) if row is not None else min(limit, next_id)
        by_age = bound - lo
        # By size: used pages (free ones are reused) against history_max_bytes.
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))  # fmt: skip
        used = (pages - free) * size
        if used > self.max_bytes and next_id > bound:
            held = next_id - bound
            per_event = used / max(1, next_id - lo)
            want = math.ceil((used - self.max_bytes * PRUNE_TARGET) / max(per_event, 1.0))
            bound = min(next_id, limit, max(bound, bound + min(want, held)))
        by_size = bound - lo - by_age
        behind = bound >= limit
        self._next_prune = mono if behind else mono + PRUNE_EVERY
        if bound <= lo:
            return None
        conn.execute("DELETE FROM events WHERE id < ?", (bound,))
        conn.execute("DELETE FROM spans WHERE b < ?", (bound >> schema.BUCKET_BITS,))
        dead_shapes = self._dead(conn, "shapes", "sid", shape_last, bound)
        dead_subjects = self._dead(conn, "subjects", "gid", subject_last, bound)
        return bound, by_age, by_size, dead_shapes, dead_subjects

    def _dead(
        self, conn: sqlite3.Connection, table: str, col: str, last: dict[int, int], bound: int
    ) -> list[int]:
        """Delete the shapes or subjects whose last event is below `bound`; return them."""
        dead = [k for k, v in last.items() if v < bound]
        if not self._floor_swept and self._floor < bound:
            # Rows not used since open were last used at or below the floor: all gone now.
            dead += [int(k) for (k,) in conn.execute(f"SELECT {col} FROM {table}") if k not in last]
        for i in range(0, len(dead), 500):
            part = dead[i : i + 500]
            conn.execute(f"DELETE FROM {table} WHERE {col} IN ({','.join(map(str, part))})")
        return dead

    def _after_prune(
        self,
        bound: int,
        by_age: int,
        by_size: int,
        dead_shapes: list[int],
        dead_subjects: list[int],
    ) -> None:
        self._min_id = bound if bound < self._next_id else None
        self._pruned["age"] += by_age
        self._pruned["size"] += by_size
        if self._floor < bound:
            self._floor_swept = True
        gone = set(dead_shapes)
        for sid in gone:
            self._shape_last.pop(sid, None)
        self._shapes = {d: s for d, s in self._shapes.items() if s not in gone}
        gone = set(dead_subjects)
        for gid in gone:
            self._subject_last.pop(gid, None)
        self._subjects = {k: g for k, g in self._subjects.items() if g not in gone}
        log.debug("history pruned below id %d: %d by age, %d by size", bound, by_age, by_size)

    # -- health and numbers --------------------------------------------------------------

    def counters_json(self) -> Doc:
        """The store's counters that outlive a restart (saved with the other stages')."""
        return {"checkpoint_errors": self._errors}

    def restore_counters(self, doc: Mapping[str, Any]) -> None:
        """Continue the counts of the run that saved `doc` (`counters_json` output)."""
        errors = doc.get("checkpoint_errors", 0)
        if not _count(errors):
            raise ValueError(f"checkpoint_errors is not a count: {errors!r}")
        self._errors = cast(int, errors)

    def healthy(self, now: float | None = None) -> tuple[bool, str]:
        """(ok, reason): not ok once commits have failed for longer than the grace.

        `now` is monotonic time (default: the store's monotonic clock).
        """
        if self._failing_since is None:
            return True, "ok"
        failing = (self.monotonic() if now is None else now) - self._failing_since
        if failing <= self.grace:
            return True, "ok"
        return False, f"state store: commits failing for {failing:.0f} s: {self._last_error}"

    def stats(self) -> StoreStats:
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += Path(self.path + suffix).stat().st_size
        lo = self._min_id
        return StoreStats(
            commits=self._commits,
            commit_errors=self._errors,
            last_commit=self._last_commit,
            commit_seconds=self._commit_seconds,
            set_aside=dict(self._set_aside),
            events=0 if lo is None else self._next_id - lo,
            events_dropped=self._dropped,
            pruned=dict(self._pruned),
            file_bytes=size,
            healthy=self.healthy()[0],
        )


class CommitThread:
    """Commits off the ingestion thread: one at a time, each handed over whole.

    `submit(...)` takes `Store.commit`'s arguments and returns at once (False while the
    previous commit still runs: keep the changes and submit them later). The values
    handed over must not be changed afterwards (take_changes() gives new objects).
    """

    def __init__(self, store: Store, on_failure: Callable[[], None] | None = None) -> None:
        self.store = store
        # Called (in the commit thread) after a commit that did not land: its batch is kept
        # by the store, and the owner schedules the retry.
        self.on_failure = on_failure
        self._cond = threading.Condition()
        self._job: dict[str, Any] | None = None
        self._running = False
        self._stop = False
        self.last_ok: bool | None = None
        self._thread = threading.Thread(target=self._run, name="monitord-commit", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._job is not None or self._running

    def submit(self, **batch: Any) -> bool:
        with self._cond:
            if self._job is not None or self._running or self._stop:
                return False
            self._job = batch
            self._cond.notify_all()
            return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no commit runs; False if still running after `timeout`."""
        with self._cond:
            return self._cond.wait_for(lambda: self._job is None and not self._running, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Finish the commit in progress, then end the thread (the store stays open)."""
        self.wait(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None or self._stop)
                if self._job is None:
                    return
                job, self._job = self._job, None
                self._running = True
            try:
                self.last_ok = self.store.commit(**job)
            except BaseException:
                log.exception("state store: commit failed unexpectedly")
                self.last_ok = False
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()
            if not self.last_ok and self.on_failure is not None:
                self.on_failure()


_encode = Encoder()


def encode_event(record: AuditRecord) -> Encoded:
    """A record in the form the store writes (compact while it waits in memory)."""
    doc, vals = _encode(record)
    f = record.fields
    return (
        time_to_db(record.time), record.serial, (record.node, f.get("uuid"), f.get("vm")),
        result_code(f), doc, vals,
    )  # fmt: skip


_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


def position_problem(kind: str | None, position: object) -> str | None:
    """What is wrong with a saved source position (None: nothing; None position is valid)."""
    if position is None:
        return None
    if not isinstance(position, dict):
        return "not an object"
    if kind == "file":
        if not isinstance(position.get("path"), str):
            return "path is not text"
        for key in ("dev", "ino", "offset", "fingerprint_length"):
            if not _count(position.get(key)):
                return f"{key} is not a non-negative integer"
        if position["fingerprint_length"] > position["offset"]:
            return "fingerprint_length exceeds offset"
        fp = position.get("fingerprint")
        if not isinstance(fp, str) or not _HEX64.match(fp):
            return "fingerprint is not a SHA-256 hex digest"
    elif kind == "journal":
        cursor = position.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            return "cursor is not text"
    return None


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _given_sections(batch: _Batch) -> set[str]:
    out = set()
    if batch.meta is not None:
        out.add("meta")
    if batch.counters is not None:
        out.add("counters")
    if batch.alerts is not None:
        out.add("alerts")
    return out


def _transient(err: sqlite3.OperationalError) -> bool:
    """Errors of the environment (full, read-only, locked, I/O), not of the file's content."""
    text = str(err).lower()
    return any(
        s in text
        for s in ("full", "readonly", "read-only", "locked", "disk i/o", "unable to open", "busy")
    )


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


def _remove(path: str) -> None:
    import shutil

    try:
        p = Path(path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    except OSError as err:
        log.error("cannot remove %s: %s", path, err.strerror)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(str(Path(path).absolute()))
