"""The guest table: every tracked guest, the event counters, bounded and persistable.

One `GuestTable` is written by the ingestion thread (`apply_many`, `expire`)
and read by the HTTP thread (`snapshot`, `document`, `guest_document`). A
write holds the table lock for a short batch of records; a reader holds it
only to collect one copy per guest, made once per change and cached, and
builds documents and metric lines after releasing it, so scrapes and
ingestion never wait on each other for long.

What each record means is `monitord.state.effects`; what a guest holds is
`monitord.state.guest`. Time comes from the records; "now" is injected.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from monitord.audit.record import AuditRecord, result_of
from monitord.audit.types import VIRT_CONTROL, VIRT_MACHINE_ID, VIRT_RESOURCE
from monitord.config import StateConfig
from monitord.state.effects import AmountChange, DeviceChange, Label, Lifecycle, effect
from monitord.state.guest import DEVICE_LISTS, Guest, GuestKey

OTHER: Final = "other"
# Label values for absent fields: Prometheus reads an empty label as "no such label".
ABSENT: Final = ""


class LabelBound:
    """Keep at most `limit` distinct values per label name; later new values become `other`."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int, seen: Mapping[str, Iterable[str]] | None = None) -> None:
        self.limit = limit
        self.seen: dict[str, set[str]] = {k: set(v) for k, v in (seen or {}).items()}

    def __call__(self, label: str, value: str | None) -> str:
        if value is None:
            return ABSENT
        values = self.seen.get(label)
        if values is None:
            values = self.seen[label] = set()
        if value in values:
            return value
        if len(values) >= self.limit:
            return OTHER
        values.add(value)
        return value


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent copy of the table for one scrape or API answer (never mutated).

    `guests` holds one copy per tracked guest, least recently changed first.
    """

    guests: tuple[Guest, ...]
    records: dict[tuple[str, str, str], int]
    operations: dict[tuple[str, str, str, str], int]
    resources: dict[tuple[str, str, str, str], int]
    labels: dict[tuple[str, str, str], int]
    unmatched_detaches: dict[str, int]
    evicted: int
    host: str

    @property
    def tracked(self) -> int:
        return len(self.guests)


# Records applied under one taking of the lock: long enough to make the lock cheap, short
# enough that a scrape never waits more than ~1 ms for ingestion.
BATCH: Final = 256


class GuestTable:
    """Guests keyed by (node, uuid), the event counters; bounded and persistable.

    `host` names this host in documents (the `[identity] host`): the records
    without `node=` are its own.
    """

    def __init__(
        self,
        config: StateConfig,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.host = host if host is not None else socket.gethostname()
        self._lock = threading.Lock()
        # Least recently changed first: eviction under max_guests takes from the front.
        self._guests: OrderedDict[GuestKey, Guest] = OrderedDict()
        # Stopped guests by stop order: expiry by age walks from the front.
        self._stopped: OrderedDict[GuestKey, None] = OrderedDict()
        # Copies for readers, made at the first read after a change.
        self._copies: dict[GuestKey, Guest] = {}
        # What changed (or was forgotten) since the last take_changes().
        self._changed: set[GuestKey] = set()
        self._forgotten: set[GuestKey] = set()
        self._bound = LabelBound(config.max_label_values)
        self.records: dict[tuple[str, str, str], int] = {}
        self.operations: dict[tuple[str, str, str, str], int] = {}
        self.resources: dict[tuple[str, str, str, str], int] = {}
        self.labels: dict[tuple[str, str, str], int] = {}
        # Detaches of a device the guest's list did not hold (libvirt audits an RNG's
        # detach but not its attach): they change nothing.
        self.unmatched_detaches: Counter[str] = Counter()
        self.evicted = 0

    # -- ingestion (one thread) ------------------------------------------------

    def apply(self, record: AuditRecord) -> None:
        """Apply one libvirt record: counters first, then the guest it names."""
        self.apply_many((record,))

    def apply_many(self, records: Sequence[AuditRecord]) -> None:
        """Apply records in order, taking the lock once per BATCH records."""
        lock = self._lock
        one = self._apply
        for i in range(0, len(records), BATCH):
            with lock:
                for record in records[i : i + BATCH]:
                    one(record)

    def _apply(self, record: AuditRecord) -> None:
        fields = record.fields
        bound = self._bound
        result = result_of(fields) or ABSENT
        type_id = record.type_id
        virt = bound("virt", fields.get("virt"))
        key3 = (record.type, virt, result)
        self.records[key3] = self.records.get(key3, 0) + 1
        if type_id == VIRT_CONTROL:
            key4 = (virt, bound("op", fields.get("op")), bound("reason", fields.get("reason")),
                    result)  # fmt: skip
            self.operations[key4] = self.operations.get(key4, 0) + 1
        elif type_id == VIRT_RESOURCE:
            key4 = (virt, bound("resrc", fields.get("resrc")),
                    bound("reason", fields.get("reason")), result)  # fmt: skip
            self.resources[key4] = self.resources.get(key4, 0) + 1
        elif type_id == VIRT_MACHINE_ID:
            key3 = (virt, bound("model", fields.get("model")), result)
            self.labels[key3] = self.labels.get(key3, 0) + 1
        uuid = fields.get("uuid")
        if uuid is None:
            return
        key = (record.node or "", uuid)
        guest = self._guests.get(key)
        if guest is None:
            guest = self._add(key)
        else:
            self._guests.move_to_end(key)
        self._copies.pop(key, None)
        self._changed.add(key)
        self._update(guest, record, result)

    def _add(self, key: GuestKey) -> Guest:
        limit = max(1, self.config.max_guests)
        while len(self._guests) >= limit:
            self._forget(self._victim())
        guest = Guest(key[1], node=key[0])
        self._guests[key] = guest
        self._forgotten.discard(key)
        return guest

    def _victim(self) -> GuestKey:
        # Prefer forgetting the longest-stopped guest; else the least recently active one.
        return next(iter(self._stopped)) if self._stopped else next(iter(self._guests))

    def _forget(self, key: GuestKey) -> None:
        del self._guests[key]
        self._stopped.pop(key, None)
        self._copies.pop(key, None)
        self._changed.discard(key)
        self._forgotten.add(key)
        self.evicted += 1

    def _update(self, g: Guest, record: AuditRecord, result: str) -> None:
        fields = record.fields
        name = fields.get("vm")
        if name is not None:
            g.name = name
        virt = fields.get("virt")
        if virt is not None:
            g.virt = virt
        t = record.time
        if g.last_event_time is None or t > g.last_event_time:
            g.last_event_time = t
        failed = result != "success"
        if result == "failed":
            g.failures += 1
        e = effect(record)
        if type(e) is Lifecycle:
            g.process_gone = False
            g.last_op = e.op
            g.last_reason = e.reason
            g.last_result = result or None
            if not failed:
                self._lifecycle(g, e, t)
            elif e.op == "start":
                g.phase_open = False  # the attempt is over: the next one starts afresh
            return
        if failed or e is None:
            return  # a failed resource or label record changes nothing
        if fields.get("reason") == "start" and not g.phase_open:
            # A start's resources arrive before its op=start (docs/FORMATS.md); the first
            # of them begins the new run, also for a guest whose last run ended unrecorded.
            g.begin_phase()
        if type(e) is DeviceChange:
            if e.removed is not None and not g.remove_device(e.devices, e.removed):
                self.unmatched_detaches[DEVICE_LISTS[e.devices]] += 1
            if e.added is not None:
                g.add_device(e.devices, e.added)
        elif type(e) is AmountChange:
            if e.new is not None:
                setattr(g, e.field, e.new * e.unit)
        elif type(e) is Label:
            g.set_label(e)

    def _lifecycle(self, g: Guest, e: Lifecycle, t: float) -> None:
        key = g.key
        if e.op == "start":
            # A start for a running guest ends the previous run, which wrote no stop (its
            # QEMU died while libvirtd was down): the new run starts afresh.
            if not g.phase_open:
                g.begin_phase()
            g.phase_open = False
            g.state = "running"
            g.started_at = t
            g.stopped_at = None
            g.vm_pid = e.vm_pid or None
            self._stopped.pop(key, None)
        elif e.op == "stop":
            g.phase_open = False
            g.state = "stopped"
            g.stopped_at = t
            g.vm_pid = None  # stops carry vm-pid=0: the process is gone
            self._stopped.pop(key, None)
            self._stopped[key] = None
        elif e.op == "init":
            # LXC: the container's init is up (reported after op=start).
            if g.state != "running":
                g.state = "running"
                g.started_at = t
                g.stopped_at = None
                g.phase_open = False
                self._stopped.pop(key, None)
            if e.vm_pid:
                g.vm_pid = e.vm_pid

    def running_processes(self) -> list[tuple[GuestKey, int, float]]:
        """(key, vm-pid, start time) of this host's own running guests with a known pid."""
        with self._lock:
            return [
                (k, g.vm_pid, g.started_at)
                for k, g in self._guests.items()
                if not k[0] and g.state == "running" and g.vm_pid and g.started_at is not None
            ]

    def set_process_gone(self, key: GuestKey, vm_pid: int, gone: bool) -> bool:
        """Record whether a running guest's process is gone; False when the guest moved on
        meanwhile (another pid, stopped, forgotten) or nothing changed."""
        with self._lock:
            g = self._guests.get(key)
            if g is None or g.state != "running" or g.vm_pid != vm_pid or g.process_gone == gone:
                return False
            g.process_gone = gone
            self._guests.move_to_end(key)  # a change like any other: see take_changes
            self._copies.pop(key, None)
            self._changed.add(key)
            return True

    def expire(self, now: float) -> int:
        """Forget guests stopped before `now - forget_stopped_after` (record time) and
        any beyond `max_guests`; return how many were forgotten."""
        cutoff = now - self.config.forget_stopped_after
        n = 0
        with self._lock:
            while self._stopped:
                key = next(iter(self._stopped))
                stopped_at = self._guests[key].stopped_at
                if stopped_at is not None and stopped_at >= cutoff:
                    break
                self._forget(key)
                n += 1
            while len(self._guests) > max(1, self.config.max_guests):
                self._forget(self._victim())
                n += 1
        return n

    # -- readers (any thread) --------------------------------------------------

    def _copy(self, key: GuestKey, g: Guest) -> Guest:
        c = self._copies.get(key)
        if c is None:
            c = self._copies[key] = g.copy()
        return c

    def snapshot(self) -> Snapshot:
        """Return a consistent copy: changed guests are copied again, others reused."""
        with self._lock:
            return Snapshot(
                guests=tuple([self._copy(k, g) for k, g in self._guests.items()]),
                records=dict(self.records),
                operations=dict(self.operations),
                resources=dict(self.resources),
                labels=dict(self.labels),
                unmatched_detaches=dict(self.unmatched_detaches),
                evicted=self.evicted,
                host=self.host,
            )

    @property
    def guests_tracked(self) -> int:
        return len(self._guests)

    @property
    def guests_evicted(self) -> int:
        return self.evicted

    def document(self, now: float | None = None) -> dict[str, Any]:
        """Return the `GET /api/v1/guests` document (guests by name, then node and UUID)."""
        snap = self.snapshot()
        return {
            "generated_at": self.clock() if now is None else now,
            "guests": guest_documents(snap.guests, snap.host),
        }

    def guest_document(self, uuid: str, node: str | None = None) -> dict[str, Any] | None:
        """Return one guest's document, None if unknown (its `events` come from the store).

        Without `node`, this host's own guest of that UUID, else the most recently active.
        """
        with self._lock:
            if node is not None:
                key: GuestKey | None = (node, uuid)
            elif ("", uuid) in self._guests:
                key = ("", uuid)
            else:
                key = next((k for k in reversed(self._guests) if k[1] == uuid), None)
            g = self._guests.get(key) if key is not None else None
            if key is None or g is None:
                return None
            copy = self._copy(key, g)
        return copy.document(self.host)

    # -- persistence -----------------------------------------------------------

    def take_changes(
        self, everything: bool = False
    ) -> tuple[list[tuple[GuestKey, dict[str, Any]]], list[GuestKey]]:
        """The guests changed and the keys forgotten since the last call (incremental saves);
        with `everything`, every guest (for a store that replaces all it holds).

        Changed guests come least recently changed first: a store that keeps them in the
        order of their last save gives the table's order back at the next start.
        """
        with self._lock:
            changed = self._guests.keys() if everything else self._changed
            # Every change moves its guest to the end: the changed ones are the last ones.
            keys: list[GuestKey] = []
            for k in reversed(self._guests):
                if len(keys) == len(changed):
                    break
                if k in changed:
                    keys.append(k)
            keys.reverse()
            out = [(k, self._guests[k].to_json()) for k in keys]
            forgotten = list(self._forgotten)
            self._changed = set()
            self._forgotten = set()
        return out, forgotten

    def meta_json(self) -> dict[str, Any]:
        """Everything but the guests: counters and label bounds (small, bounded by the
        label cardinality; the guests' order is theirs, not a list here)."""
        with self._lock:
            return {
                "records": [[*k, n] for k, n in self.records.items()],
                "operations": [[*k, n] for k, n in self.operations.items()],
                "resources": [[*k, n] for k, n in self.resources.items()],
                "labels": [[*k, n] for k, n in self.labels.items()],
                "label_values": {k: sorted(v) for k, v in self._bound.seen.items()},
                "unmatched_detaches": dict(self.unmatched_detaches),
                "evicted": self.evicted,
            }

    def to_json(self) -> dict[str, Any]:
        """Return everything needed to restore this table exactly (guests in table order)."""
        with self._lock:
            guests = [g.to_json() for g in self._guests.values()]
        return {"version": 2, "guests": guests, **self.meta_json()}

    def restore(self, doc: Mapping[str, Any], *, saved: bool = False) -> None:
        """Replace this table's content with saved state (`to_json` output, or older ones).

        `guests` are in table order (least recently changed first) unless an `order` list
        says otherwise (version 1). `saved`: the guests are already in the store, so they
        do not count as changed. Raises ValueError (nothing replaced) when the saved state
        is not what it should be.
        """
        if not isinstance(doc, Mapping):
            raise ValueError("saved state is not an object")
        guests: OrderedDict[GuestKey, Guest] = OrderedDict()
        for gdoc in _list(doc, "guests"):
            g = Guest.from_json(gdoc)
            guests[g.key] = g
        for k in map(_key, _list(doc, "order")):
            if k in guests:
                guests.move_to_end(k)
        if "stopped" in doc:
            stopped_keys = [k for k in map(_key, _list(doc, "stopped")) if k in guests]
        else:
            # Guests stop in log order: by stop time, ties in table order (sorted is stable).
            stopped_keys = sorted(
                (k for k, g in guests.items() if g.state == "stopped"),
                key=lambda k: guests[k].stopped_at or 0.0,
            )
        stopped: OrderedDict[GuestKey, None] = OrderedDict((k, None) for k in stopped_keys)
        bound = doc.get("label_values") or {}
        if not isinstance(bound, Mapping) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in bound.values()
        ):
            raise ValueError("label_values: expected lists of strings")
        unmatched = doc.get("unmatched_detaches") or {}
        if not isinstance(unmatched, Mapping):
            raise ValueError("unmatched_detaches: expected an object")
        counts = {name: _counts(doc, name, width) for name, width in _COUNTERS}
        with self._lock:
            self._guests = guests
            self._stopped = stopped
            self._copies = {}
            self._changed = set() if saved else set(guests)
            self._forgotten = set()
            self.records = counts["records"]
            self.operations = counts["operations"]
            self.resources = counts["resources"]
            self.labels = counts["labels"]
            self.unmatched_detaches = Counter({str(k): _count(v) for k, v in unmatched.items()})
            self._bound = LabelBound(self.config.max_label_values, bound)
            self.evicted = _count(doc.get("evicted") or 0)


_COUNTERS: Final = (("records", 3), ("operations", 4), ("resources", 4), ("labels", 3))


def _list(doc: Mapping[str, Any], name: str) -> list[Any]:
    value = doc.get(name) or []
    if not isinstance(value, list):
        raise ValueError(f"{name}: expected a list")
    return value


def _key(value: Any) -> GuestKey:
    """A saved guest key: [node, uuid], or a bare uuid (version 1)."""
    if isinstance(value, str):
        return ("", value)
    if isinstance(value, list) and len(value) == 2 and all(isinstance(x, str) for x in value):
        return (value[0], value[1])
    raise ValueError(f"not a guest key: {value!r}")


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _counts(doc: Mapping[str, Any], name: str, width: int) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for row in _list(doc, name):
        if not isinstance(row, list) or len(row) != width + 1:
            raise ValueError(f"{name}: expected rows of {width} labels and a count")
        out[tuple(str(x) for x in row[:width])] = _count(row[width])
    return out


def guest_documents(guests: Iterable[Guest], host: str) -> list[dict[str, Any]]:
    """Guest documents in the API's order (by name, then node and UUID)."""
    rows = sorted(guests, key=lambda g: (g.name or "", g.node, g.uuid))
    return [g.document(host) for g in rows]
