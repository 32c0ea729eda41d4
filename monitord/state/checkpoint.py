"""The checkpoint: source position and everything derived up to it, written atomically.

State and position are saved together, so after a crash the daemon resumes
reading exactly where the saved state ends: nothing is lost and nothing is
counted twice.

`checkpoint.json` (format version 1) is the snapshot design the SQLite store
(monitord/state/store.py) replaces; `read_v1` reads one completely and
strictly for the store's import on the first start after an upgrade.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

from monitord.audit.record import AuditRecord

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
FILENAME: Final = "checkpoint.json"


@dataclass
class CheckpointCounters:
    """When the last checkpoint was written and how many writes failed (the daemon thread's)."""

    time: float | None = None
    errors: int = 0

    def collect(self) -> Iterator[Metric]:
        """Yield the checkpoint's metric families."""
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        when = GaugeMetricFamily(
            "monitord_checkpoint_timestamp_seconds",
            "When the last checkpoint was written (Unix seconds).",
        )
        if self.time is not None:
            when.add_metric([], self.time)
        yield when
        errors = CounterMetricFamily(
            "monitord_checkpoint_errors_total", "Checkpoint writes that failed."
        )
        errors.add_metric([], self.errors)
        yield errors

    def to_json(self) -> dict[str, Any]:
        """Return this part of the checkpoint's `telemetry` object (the time is `saved_at`)."""
        return {"checkpoint_errors": self.errors}

    def restore(self, doc: Mapping[str, Any], saved_at: float | None = None) -> None:
        """Load what `to_json` saved and the checkpoint's own `saved_at`."""
        errors = int(doc.get("checkpoint_errors", 0))
        self.time = None if saved_at is None else float(saved_at)
        self.errors = errors


class CheckpointStore:
    """Load and save `checkpoint.json` in the state directory; count what was written."""

    def __init__(self, directory: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        self.path = self.dir / FILENAME
        self.clock = clock
        self.counters = CheckpointCounters()

    def load(self) -> dict[str, Any] | None:
        """Return the saved document, None when there is none.

        A corrupt or unreadable checkpoint is set aside (renamed) and logged, so a
        bad file can never make the daemon crash in a loop.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.error("cannot read checkpoint %s: %s; starting fresh", self.path, err.strerror)
            self._set_aside()
            return None
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            log.error("checkpoint %s is corrupt (%s); set aside, starting fresh", self.path, err)
            self._set_aside()
            return None
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            log.error("checkpoint %s has an unknown format; set aside, starting fresh", self.path)
            self._set_aside()
            return None
        return doc

    def save(self, doc: dict[str, Any]) -> int:
        """Write doc atomically and count it; return its size. Raises OSError, counted."""
        saved_at = self.clock()
        try:
            size = self._write(doc, saved_at)
        except OSError:
            self.counters.errors += 1
            raise
        self.counters.time = saved_at
        return size

    def _write(self, doc: dict[str, Any], saved_at: float) -> int:
        """Write doc atomically (temp file, fsync, rename, fsync dir); return its size."""
        body = dict(doc)
        body["version"] = FORMAT_VERSION
        body["saved_at"] = saved_at
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True, exist_ok=True)
            log.warning("state directory %s was missing (deleted?); created it again", self.dir)
        tmp = self.path.with_name(f".{FILENAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.path)
        dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return len(data)

    def _set_aside(self) -> None:
        target = self.path.with_name(f"{FILENAME}.corrupt-{int(time.time())}")
        try:
            self.path.replace(target)
            log.warning("old checkpoint kept as %s", target)
        except OSError as err:
            log.error("cannot set aside checkpoint %s: %s", self.path, err.strerror)


CHILD_NICE: Final = 10


class BackgroundSave:
    """At most one checkpoint written by a forked child; the parent reaps it without blocking.

    The child's outcome is counted in the store's counters when it is reaped.
    """

    def __init__(self, store: CheckpointStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.pid: int | None = None
        self.taken_at = 0.0

    def start(self, build: Callable[[], dict[str, Any]], in_child: Callable[[], None]) -> bool:
        """Fork a child that runs in_child(), then saves build(); False if one is running."""
        if self.pid is not None:
            return False
        taken_at = self.clock()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, checked through its result
            code = 1
            try:
                # Serialising 10,000 guests takes seconds of CPU: yield it to the ingestion
                # thread this snapshot must not slow down (2 cores, a busy collector).
                os.nice(CHILD_NICE)
                in_child()
                self.store.save(build())
                code = 0
            except OSError as err:
                log.error("cannot write checkpoint %s: %s", self.store.path, err.strerror)
            except BaseException:
                log.exception("checkpoint child failed")
            finally:
                logging.shutdown()
                os._exit(code)
        self.pid, self.taken_at = pid, taken_at
        return True

    def poll(self) -> tuple[bool, float] | None:
        """Return (succeeded, snapshot time) once the child has ended, None while it runs."""
        if self.pid is None:
            return None
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        return self._reaped(status)

    def wait(self) -> tuple[bool, float] | None:
        """Wait for a running child (before a synchronous save, so files land in order)."""
        if self.pid is None:
            return None
        _, status = os.waitpid(self.pid, 0)
        return self._reaped(status)

    def _reaped(self, status: int) -> tuple[bool, float]:
        self.pid = None
        ok = os.waitstatus_to_exitcode(status) == 0
        counters = self.store.counters
        if ok:
            counters.time = self.taken_at
        else:
            counters.errors += 1
        return ok, self.taken_at


# -- reading version 1 for the import into the store ----------------------------------------

# Larger files are refused (the largest real ones, 10,000 guests with 50 events each,
# are ~140 MiB); JSON nested deeper than this is refused before it is parsed.
MAX_BYTES: Final = 512 << 20
MAX_DEPTH: Final = 64


class CheckpointError(ValueError):
    """checkpoint.json cannot be imported: says what is wrong."""


@dataclass(frozen=True, slots=True)
class V1Doc:
    """A version-1 checkpoint, split the way the store keeps state."""

    source_kind: str | None
    position: dict[str, Any] | None
    # Guest documents without their `events`, in the table's order (least recent first).
    guests: list[dict[str, Any]]
    # The table document without `guests` (version, stopped, records, operations,
    # resources, labels, label_values, evicted).
    meta: dict[str, Any]
    # {"telemetry": Telemetry.to_json() of that version}.
    counters: dict[str, dict[str, Any]]
    alerts: dict[str, Any] | None
    saved_at: float | None
    # Every guest's kept records, oldest first (by time, then serial).
    events: list[AuditRecord]


def _depth_ok(raw: bytes) -> bool:
    """Tell whether brackets nest at most MAX_DEPTH deep (strings skipped)."""
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def read_v1(path: str | Path) -> V1Doc:
    """Read a version-1 checkpoint.json; CheckpointError for anything it cannot hold."""
    from monitord.state.store import position_problem

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except IsADirectoryError:
        raise CheckpointError("is a directory") from None
    except OSError as err:
        raise CheckpointError(f"cannot read: {err.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise CheckpointError(f"larger than {MAX_BYTES} bytes")
    if not _depth_ok(raw):
        raise CheckpointError(f"JSON nested deeper than {MAX_DEPTH}")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"not JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise CheckpointError("not a version-1 checkpoint")
    source = doc.get("source") or {}
    state = doc.get("state")
    telemetry = doc.get("telemetry")
    alerts = doc.get("alerts")
    saved_at = doc.get("saved_at")
    if not isinstance(source, dict) or not isinstance(state, dict):
        raise CheckpointError("source or state is not an object")
    kind, position = source.get("kind"), source.get("position")
    if kind is not None and not isinstance(kind, str):
        raise CheckpointError("source kind is not text")
    problem = position_problem(kind, position)
    if problem:
        raise CheckpointError(f"source position: {problem}")
    if telemetry is not None and not isinstance(telemetry, dict):
        raise CheckpointError("telemetry is not an object")
    if alerts is not None and not isinstance(alerts, dict):
        raise CheckpointError("alerts is not an object")
    if saved_at is not None and (
        isinstance(saved_at, bool) or not isinstance(saved_at, int | float)
    ):
        raise CheckpointError("saved_at is not a number")
    guests_in = state.get("guests") or []
    if not isinstance(guests_in, list):
        raise CheckpointError("state.guests is not a list")
    guests: list[dict[str, Any]] = []
    events: list[AuditRecord] = []
    seen: set[str] = set()
    for g in guests_in:
        if not isinstance(g, dict) or not isinstance(g.get("uuid"), str) or g["uuid"] in seen:
            raise CheckpointError("a guest without a (unique) uuid")
        seen.add(g["uuid"])
        kept = g.get("events") or []
        if not isinstance(kept, list):
            raise CheckpointError(f"guest {g['uuid']}: events is not a list")
        for e in kept:
            try:
                record = AuditRecord.from_json(e)
                _check_record(record)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise CheckpointError(f"guest {g['uuid']}: a bad event ({err})") from None
            events.append(record)
        guests.append({k: v for k, v in g.items() if k != "events"})
    events.sort(key=lambda r: (r.time, r.serial))
    return V1Doc(
        source_kind=kind,
        position=position,
        guests=guests,
        meta={k: v for k, v in state.items() if k != "guests"},
        counters={"telemetry": telemetry} if telemetry is not None else {},
        alerts=alerts,
        saved_at=float(saved_at) if saved_at is not None else None,
        events=events,
    )


def _check_record(r: AuditRecord) -> None:
    if not isinstance(r.type, str) or not isinstance(r.type_id, int):
        raise ValueError("type")
    if isinstance(r.time, bool) or not isinstance(r.time, int | float):
        raise ValueError("time")
    if isinstance(r.serial, bool) or not isinstance(r.serial, int) or r.serial < 0:
        raise ValueError("serial")
    for v in (r.pid, r.uid, r.auid, r.ses):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError("ids")
    if r.node is not None and not isinstance(r.node, str):
        raise ValueError("node")
    if r.subj is not None and not isinstance(r.subj, str):
        raise ValueError("subj")
    for key, value in r.fields.items():
        if not isinstance(key, str) or (value is not None and not isinstance(value, str)):
            raise ValueError("fields")
    for key, text in r.enrichment.items():
        if not isinstance(key, str) or not isinstance(text, str):
            raise ValueError("enrichment")


def retire(path: str | Path, why: str, now: float) -> str | None:
    """Rename checkpoint.json to `checkpoint.json.<why>-<time>`; return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    target = f"{path}.{why}-{stamp}"
    n = 1
    while os.path.lexists(target):
        n += 1
        target = f"{path}.{why}-{stamp}.{n}"
    try:
        Path(path).rename(target)
    except OSError as err:
        log.error("cannot rename %s: %s", path, err.strerror)
        return None
    return target


def set_aside(path: str | Path, now: float) -> str | None:
    """Rename an unusable checkpoint.json out of the way (`checkpoint.json.corrupt-<time>`)."""
    return retire(path, "corrupt", now)
