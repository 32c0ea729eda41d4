"""`checkpoint.json` (format version 1), the state file of monitord before the store.

It held the source position and the whole state in one JSON document.
`read_v1` reads one completely and strictly for the store's import on the
first start after an upgrade (monitord/state/store.py); `retire` and
`set_aside` rename it out of the way afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    pass

from monitord.audit.record import AuditRecord

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
FILENAME: Final = "checkpoint.json"
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
        # O_NONBLOCK: a FIFO put in its place must not block the start-up (it is refused).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise CheckpointError(f"cannot read: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError("not a regular file")
        try:
            raw = f.read(MAX_BYTES + 1)
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
