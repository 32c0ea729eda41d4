"""Per-guest state derived from libvirt's audit records (CONTRACT.md, "Guest state").

One `GuestTable` is written by the ingestion thread (`apply`, `apply_many`,
`expire`) and read by the HTTP thread (`snapshot`, `document`,
`guest_document`). A write holds the table lock for one record (`apply`) or a
short batch (`apply_many`); a reader holds it only to collect one immutable
row per guest, rebuilt once per change and cached, and builds documents and
metric lines after releasing it, so scrapes and ingestion never wait on each
other for long.

Time comes from the records; "now" is injected (`clock`, or the `now` argument).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar, cast

from monitord.audit.record import (
    COUNT_RESOURCES,
    PATH_RESOURCES,
    TPM_RESOURCES,
    AuditRecord,
    to_int,
)
from monitord.audit.types import VIRT_CONTROL, VIRT_MACHINE_ID, VIRT_RESOURCE
from monitord.config import StateConfig

# The guest document's device lists, in document order.
DEVICE_LISTS: Final[tuple[str, ...]] = (
    "disks",
    "nics",
    "filesystems",
    "chardevs",
    "rngs",
    "smartcards",
    "hostdevs",
    "tpms",
    "shmems",
    "inputs",
)
# List -> the `kind` label of libvirt_audit_domain_devices.
DEVICE_KINDS: Final[dict[str, str]] = {
    "disks": "disk",
    "nics": "nic",
    "filesystems": "filesystem",
    "chardevs": "chardev",
    "rngs": "rng",
    "smartcards": "smartcard",
    "hostdevs": "hostdev",
    "tpms": "tpm",
    "shmems": "shmem",
    "inputs": "input",
}
# `resrc` of an old-X/new-X record -> the list it changes.
_CHANGE_LISTS: Final[dict[str, str]] = {
    "disk": "disks",
    "net": "nics",
    "fs": "filesystems",
    "chardev": "chardevs",
    "rng": "rngs",
    "smartcard": "smartcards",
    "redir": "hostdevs",  # libvirt's documentation names it; real libvirt writes resrc=dev bus=usb
}
_PATH_LISTS: Final[dict[str, str]] = {
    "shmem": "shmems",
    "ivshmem-socket": "shmems",
    "evdev": "inputs",
}
# `resrc` of a count record -> the Guest attribute its new-X sets, and the unit (memory is KiB).
_COUNT_ATTRS: Final[dict[str, tuple[str, int]]] = {
    "mem": ("memory_bytes", 1024),
    "vcpu": ("vcpus", 1),
    "iothread": ("iothreads", 1),
}
assert set(_COUNT_ATTRS) == COUNT_RESOURCES

_V = TypeVar("_V")

STATES: Final[tuple[str, ...]] = ("running", "stopped", "unknown")
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


# Events are kept packed: a guest keeps up to 50 records, and AuditRecord's dicts would
# cost ~1 KiB each. One flat tuple a record: a shared head (everything but time, serial and
# the field values: the same for most records), then time, serial and the field values,
# whose strings the parser's caches already share between records.
_Head = tuple[
    str, int, "str | None", "int | None", "int | None", "int | None", "int | None",
    "str | None", tuple[str, ...], tuple[tuple[str, str], ...],
]  # fmt: skip
_Packed = tuple[Any, ...]  # (_Head, time, serial, *field values)
_HEAD_LIMIT: Final = 4096


class _Packer:
    __slots__ = ("_heads", "_shared")

    def __init__(self) -> None:
        self._heads: dict[_Head, _Head] = {}
        # Small immutable values many guests hold (security label triples): one object each.
        self._shared: dict[Any, Any] = {}

    def pack(self, r: AuditRecord) -> _Packed:
        fields = r.fields
        enrichment = r.enrichment
        head: _Head = (
            r.type, r.type_id, r.node, r.pid, r.uid, r.auid, r.ses, r.subj, tuple(fields),
            tuple(enrichment.items()) if enrichment else (),
        )  # fmt: skip
        shared = self._heads.get(head)
        if shared is None:
            if len(self._heads) >= _HEAD_LIMIT:
                self._heads.clear()
            self._heads[head] = shared = head
        return (shared, r.time, r.serial, *fields.values())

    def share(self, value: _V) -> _V:
        hit = self._shared.get(value)
        if hit is not None:
            return cast(_V, hit)
        if len(self._shared) >= 65536:
            self._shared.clear()
        self._shared[value] = value
        return value


def _unpack(p: _Packed) -> AuditRecord:
    head = p[0]
    return AuditRecord(
        type=head[0],
        type_id=head[1],
        time=p[1],
        serial=p[2],
        node=head[2],
        pid=head[3],
        uid=head[4],
        auid=head[5],
        ses=head[6],
        subj=head[7],
        fields=dict(zip(head[8], p[3:], strict=True)),
        enrichment=dict(head[9]),
    )


_Devices = tuple[tuple[str, ...], ...]
# No devices: one empty tuple per list of DEVICE_LISTS, shared by every guest.
NO_DEVICES: Final[_Devices] = ((),) * len(DEVICE_LISTS)
_LIST_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(DEVICE_LISTS)}
_HOSTDEVS: Final = _LIST_INDEX["hostdevs"]
_TPMS: Final = _LIST_INDEX["tpms"]
_Label = tuple["str | None", "str | None", "str | None"]  # model, vm_ctx, img_ctx


def _hostdev_name(bus: str | None, device: str | None) -> str | None:
    """The device as the guest document lists it (HostDevice.name): `pci:0000:03:00.0`."""
    if device is None:
        return None
    return f"{bus}:{device}" if bus else device


class GuestRow(NamedTuple):
    """What the guest document and the per-guest metrics say about one guest (immutable).

    Device lists are sorted tuples in DEVICE_LISTS order; security labels are sorted by model.
    """

    uuid: str
    name: str | None
    virt: str | None
    state: str
    vm_pid: int | None
    last_op: str | None
    last_reason: str | None
    last_result: str | None
    last_event_time: float | None
    started_at: float | None
    stopped_at: float | None
    vcpus: int | None
    iothreads: int | None
    memory_bytes: int | None
    devices: _Devices
    security: tuple[_Label, ...]
    failures: int


def row_document(row: GuestRow) -> dict[str, Any]:
    """Return the guest document of CONTRACT.md (without `events`) for one row."""
    doc: dict[str, Any] = {
        "uuid": row.uuid,
        "name": row.name,
        "virt": row.virt,
        "state": row.state,
        "vm_pid": row.vm_pid,
        "last_op": row.last_op,
        "last_reason": row.last_reason,
        "last_result": row.last_result,
        "last_event_time": row.last_event_time,
        "started_at": row.started_at,
        "stopped_at": row.stopped_at,
        "vcpus": row.vcpus,
        "iothreads": row.iothreads,
        "memory_bytes": row.memory_bytes,
    }
    for name, items in zip(DEVICE_LISTS, row.devices, strict=True):
        doc[name] = list(items)
    doc["security"] = [{"model": m, "vm_ctx": v, "img_ctx": i} for m, v, i in row.security]
    doc["failures"] = row.failures
    return doc


def _with(items: tuple[str, ...], value: str) -> tuple[str, ...]:
    if value in items:
        return items
    return tuple(sorted((*items, value)))


def _without(items: tuple[str, ...], value: str) -> tuple[str, ...]:
    if value not in items:
        return items
    return tuple(x for x in items if x != value)


class Guest:
    """The mutable state of one guest; only GuestTable touches it, under its lock.

    Memory matters (10,000 guests): device lists and security labels are immutable
    tuples replaced on change (a snapshot can hold them without copying), events are
    packed tuples in a plain list, and the row for readers is cached until a change.
    """

    __slots__ = (
        "devices",
        "events",
        "failures",
        "iothreads",
        "last_event_time",
        "last_op",
        "last_reason",
        "last_result",
        "memory_bytes",
        "name",
        "phase_open",
        "row",
        "security",
        "started_at",
        "state",
        "stopped_at",
        "uuid",
        "vcpus",
        "virt",
        "vm_pid",
    )

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.name: str | None = None
        self.virt: str | None = None
        self.state = "unknown"
        self.vm_pid: int | None = None
        self.last_op: str | None = None
        self.last_reason: str | None = None
        self.last_result: str | None = None
        self.last_event_time: float | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.vcpus: int | None = None
        self.iothreads: int | None = None
        self.memory_bytes: int | None = None
        # One sorted tuple per DEVICE_LISTS entry.
        self.devices: _Devices = NO_DEVICES
        # (model, vm_ctx, img_ctx) in first-seen order of model; the latest label of a model wins.
        self.security: tuple[_Label, ...] = ()
        self.failures = 0
        # True between the first record of a start phase and its op=start.
        self.phase_open = False
        # Packed records, oldest first (at most max_events).
        self.events: list[_Packed] = []
        # The cached row for readers; None after any change.
        self.row: GuestRow | None = None

    def begin_phase(self) -> None:
        """Start describing a new start: forget the previous run's resources."""
        self.devices = NO_DEVICES
        self.vcpus = None
        self.iothreads = None
        self.memory_bytes = None
        self.phase_open = True

    def add_device(self, index: int, value: str) -> None:
        items = self.devices[index]
        new = _with(items, value)
        if new is not items:
            d = list(self.devices)
            d[index] = new
            self.devices = tuple(d)

    def remove_device(self, index: int, value: str) -> None:
        items = self.devices[index]
        new = _without(items, value)
        if new is not items:
            d = list(self.devices)
            d[index] = new
            self.devices = tuple(d)

    def set_label(self, label: _Label) -> None:
        model = label[0]
        labels = list(self.security)
        for i, old in enumerate(labels):
            if old[0] == model:
                labels[i] = label
                break
        else:
            labels.append(label)
        self.security = tuple(labels)

    def make_row(self) -> GuestRow:
        security = self.security
        if len(security) > 1:
            security = tuple(sorted(security, key=lambda label: label[0] or ""))
        row = self.row = GuestRow(
            self.uuid, self.name, self.virt, self.state, self.vm_pid, self.last_op,
            self.last_reason, self.last_result, self.last_event_time, self.started_at,
            self.stopped_at, self.vcpus, self.iothreads, self.memory_bytes, self.devices,
            security, self.failures,
        )  # fmt: skip
        return row

    def document(self) -> dict[str, Any]:
        return row_document(self.row or self.make_row())

    def to_json(self) -> dict[str, Any]:
        doc = self.document()
        doc["phase_open"] = self.phase_open
        doc["events"] = [_unpack(p).to_json() for p in self.events]
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], max_events: int, packer: _Packer) -> Guest:
        g = cls(str(doc["uuid"]))
        g.name = doc.get("name")
        g.virt = doc.get("virt")
        g.state = doc.get("state") or "unknown"
        g.vm_pid = doc.get("vm_pid")
        g.last_op = doc.get("last_op")
        g.last_reason = doc.get("last_reason")
        g.last_result = doc.get("last_result")
        g.last_event_time = doc.get("last_event_time")
        g.started_at = doc.get("started_at")
        g.stopped_at = doc.get("stopped_at")
        g.vcpus = doc.get("vcpus")
        g.iothreads = doc.get("iothreads")
        g.memory_bytes = doc.get("memory_bytes")
        g.devices = tuple(tuple(sorted(set(doc.get(name) or ()))) for name in DEVICE_LISTS)
        for label in doc.get("security") or ():
            g.set_label(
                packer.share((label.get("model"), label.get("vm_ctx"), label.get("img_ctx")))
            )
        g.failures = int(doc.get("failures") or 0)
        g.phase_open = bool(doc.get("phase_open"))
        if max_events > 0:
            events = [packer.pack(AuditRecord.from_json(e)) for e in doc.get("events") or ()]
            g.events = events[-max_events:]
        return g


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent copy of the table for one scrape or API answer (never mutated).

    `guests` holds one immutable row per tracked guest, least recently changed first.
    """

    guests: tuple[GuestRow, ...]
    records: dict[tuple[str, str, str], int]
    operations: dict[tuple[str, str, str, str], int]
    resources: dict[tuple[str, str, str, str], int]
    labels: dict[tuple[str, str, str], int]
    evicted: int

    @property
    def tracked(self) -> int:
        return len(self.guests)


# Records applied under one taking of the lock: long enough to make the lock cheap, short
# enough that a scrape never waits more than ~1 ms for ingestion.
BATCH: Final = 256


class GuestTable:
    """Guests keyed by UUID, the event counters, bounded and checkpointable."""

    def __init__(self, config: StateConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        # Least recently changed first: eviction under max_guests takes from the front.
        self._guests: OrderedDict[str, Guest] = OrderedDict()
        # Stopped guests by stop order: expiry by age walks from the front.
        self._stopped: OrderedDict[str, None] = OrderedDict()
        self._bound = LabelBound(config.max_label_values)
        self._packer = _Packer()
        self.records: dict[tuple[str, str, str], int] = {}
        self.operations: dict[tuple[str, str, str, str], int] = {}
        self.resources: dict[tuple[str, str, str, str], int] = {}
        self.labels: dict[tuple[str, str, str], int] = {}
        self.evicted = 0

    # -- ingestion (one thread) ------------------------------------------------

    def apply(self, record: AuditRecord) -> None:
        """Apply one libvirt record: counters first, then the guest it names."""
        with self._lock:
            self._apply(record)

    def apply_many(self, records: Sequence[AuditRecord]) -> None:
        """Apply records in order, as `apply` each, taking the lock once per BATCH records."""
        lock = self._lock
        one = self._apply
        for i in range(0, len(records), BATCH):
            with lock:
                for record in records[i : i + BATCH]:
                    one(record)

    def _apply(self, record: AuditRecord) -> None:
        fields = record.fields
        bound = self._bound
        # AuditRecord.result, inlined: this runs for every record.
        res = fields.get("res")
        if res == "success" or res == "1":
            result = "success"
        elif res == "failed" or res == "0":
            result = "failed"
        else:
            result = ABSENT if res is None else res
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
        guest = self._guests.get(uuid)
        if guest is None:
            guest = self._add(uuid)
        else:
            self._guests.move_to_end(uuid)
        self._update(guest, record, result)

    def _add(self, uuid: str) -> Guest:
        limit = max(1, self.config.max_guests)
        while len(self._guests) >= limit:
            # Prefer forgetting the longest-stopped guest; else the least recently active one.
            victim = next(iter(self._stopped)) if self._stopped else next(iter(self._guests))
            self._forget(victim)
        guest = Guest(uuid)
        self._guests[uuid] = guest
        return guest

    def _forget(self, uuid: str) -> None:
        del self._guests[uuid]
        self._stopped.pop(uuid, None)
        self.evicted += 1

    def _update(self, g: Guest, record: AuditRecord, result: str) -> None:
        g.row = None
        max_events = self.config.max_events
        events = g.events
        if max_events > 0:
            events.append(self._packer.pack(record))
            if len(events) > max_events:
                # Also trims a history kept under a larger limit before a reload.
                del events[: len(events) - max_events]
        elif events:
            events.clear()
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
        if failed and result == "failed":
            g.failures += 1
        # What monitord.audit.record.view() says, read straight from the fields: building
        # the typed view costs more than the rest of the update.
        type_id = record.type_id
        if type_id == VIRT_CONTROL:
            g.last_op = op = fields.get("op")
            g.last_reason = fields.get("reason")
            g.last_result = result or None
            self._control(g, op, to_int(fields.get("vm-pid")), t, failed)
            return
        if failed:
            return  # a failed resource or label record changes nothing
        if type_id == VIRT_MACHINE_ID:
            g.set_label(
                self._packer.share(
                    (fields.get("model"), fields.get("vm-ctx"), fields.get("img-ctx"))
                )
            )
            return
        if type_id != VIRT_RESOURCE:
            return
        reason = fields.get("reason")
        if reason == "start" and g.state != "running" and not g.phase_open:
            g.begin_phase()
        resrc = fields.get("resrc")
        # The forms of monitord.audit.record.resource_view, in its order.
        if resrc is None:
            return  # OtherResource
        if resrc == "net" and "net" in fields and "old-net" not in fields:
            return  # NetOpen: counted, no list changes
        counted = _COUNT_ATTRS.get(resrc)
        if counted is not None:
            new = to_int(fields.get(f"new-{resrc}"))
            if new is not None:
                setattr(g, counted[0], new * counted[1])
            return
        if resrc == "cgroup":
            return  # CgroupAcl: counted, no list changes
        if resrc == "dev":
            self._set_member(g, _HOSTDEVS, _hostdev_name(fields.get("bus"), fields.get("device")),
                             reason)  # fmt: skip
            return
        if resrc == "hostdev":
            if "disk" in fields:
                self._set_member(g, _HOSTDEVS, _hostdev_name("disk", fields.get("disk")), reason)
                return
            if "chardev" in fields:
                device = _hostdev_name("chardev", fields.get("chardev"))
                self._set_member(g, _HOSTDEVS, device, reason)
                return
        if resrc in TPM_RESOURCES:
            self._set_member(g, _TPMS, fields.get("device"), reason)
            return
        if resrc in PATH_RESOURCES:
            self._set_member(g, _LIST_INDEX[_PATH_LISTS[resrc]], fields.get("path"), reason)
            return
        old_key = f"old-{resrc}"
        new_key = f"new-{resrc}"
        if old_key in fields or new_key in fields:
            target = _CHANGE_LISTS.get(resrc)
            if target is not None:
                index = _LIST_INDEX[target]
                old = fields.get(old_key)
                if old is not None:
                    g.remove_device(index, old)
                new_value = fields.get(new_key)
                if new_value is not None:
                    g.add_device(index, new_value)
        # OtherResource: counted, no list changes.

    @staticmethod
    def _set_member(g: Guest, index: int, value: str | None, reason: str | None) -> None:
        if value is None:
            return
        if reason == "detach":
            g.remove_device(index, value)
        else:
            g.add_device(index, value)

    def _control(
        self, g: Guest, op: str | None, vm_pid: int | None, t: float, failed: bool
    ) -> None:
        if op == "start":
            # A start attempt closes its phase either way: the next attempt resets again.
            if failed:
                g.phase_open = False
                return
            if g.state != "running" and not g.phase_open:
                g.begin_phase()
            g.phase_open = False
            g.state = "running"
            g.started_at = t
            g.stopped_at = None
            g.vm_pid = vm_pid if vm_pid else None
            self._stopped.pop(g.uuid, None)
        elif op == "stop":
            if failed:
                return
            g.phase_open = False
            g.state = "stopped"
            g.stopped_at = t
            # Stops carry vm-pid=0: the process is gone.
            g.vm_pid = None
            self._stopped.pop(g.uuid, None)
            self._stopped[g.uuid] = None
        elif op == "init":
            # LXC: the container's init is up (reported after op=start).
            if failed:
                return
            if g.state != "running":
                g.state = "running"
                g.started_at = t
                g.stopped_at = None
                g.phase_open = False
                self._stopped.pop(g.uuid, None)
            if vm_pid:
                g.vm_pid = vm_pid

    def expire(self, now: float) -> int:
        """Forget guests stopped before `now - forget_stopped_after` (record time) and
        any beyond `max_guests`; return how many were forgotten."""
        cutoff = now - self.config.forget_stopped_after
        n = 0
        with self._lock:
            while self._stopped:
                uuid = next(iter(self._stopped))
                stopped_at = self._guests[uuid].stopped_at
                if stopped_at is not None and stopped_at >= cutoff:
                    break
                self._forget(uuid)
                n += 1
            limit = max(1, self.config.max_guests)
            while len(self._guests) > limit:
                victim = next(iter(self._stopped)) if self._stopped else next(iter(self._guests))
                self._forget(victim)
                n += 1
        return n

    # -- readers (any thread) --------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Return a consistent copy: rows of changed guests are rebuilt, others reused."""
        with self._lock:
            guests = tuple([g.row or g.make_row() for g in self._guests.values()])
            return Snapshot(
                guests=guests,
                records=dict(self.records),
                operations=dict(self.operations),
                resources=dict(self.resources),
                labels=dict(self.labels),
                evicted=self.evicted,
            )

    @property
    def guests_tracked(self) -> int:
        return len(self._guests)

    @property
    def guests_evicted(self) -> int:
        return self.evicted

    def document(self, now: float | None = None) -> dict[str, Any]:
        """Return the `GET /api/v1/guests` document (guests by name, then UUID)."""
        rows = sorted(self.snapshot().guests, key=lambda r: (r.name or "", r.uuid))
        return {
            "generated_at": self.clock() if now is None else now,
            "guests": [row_document(r) for r in rows],
        }

    def guest_document(self, uuid: str) -> dict[str, Any] | None:
        """Return one guest's document with its recent `events` (newest last), None if unknown."""
        with self._lock:
            g = self._guests.get(uuid)
            if g is None:
                return None
            row = g.row or g.make_row()
            packed = list(g.events)
        doc = row_document(row)
        doc["events"] = [_unpack(p).to_json() for p in packed]
        return doc

    # -- checkpoint ------------------------------------------------------------

    def after_fork(self) -> None:
        """In a forked child (the checkpoint writer): replace the lock a reader thread may hold."""
        self._lock = threading.Lock()

    def to_json(self) -> dict[str, Any]:
        """Return everything needed to restore this table exactly (checkpoint)."""
        with self._lock:
            return {
                "version": 1,
                "guests": [g.to_json() for g in self._guests.values()],
                "stopped": list(self._stopped),
                "records": [[*k, n] for k, n in self.records.items()],
                "operations": [[*k, n] for k, n in self.operations.items()],
                "resources": [[*k, n] for k, n in self.resources.items()],
                "labels": [[*k, n] for k, n in self.labels.items()],
                "label_values": {k: sorted(v) for k, v in self._bound.seen.items()},
                "evicted": self.evicted,
            }

    def restore(self, doc: Mapping[str, Any]) -> None:
        """Replace this table's content with a checkpoint's (`to_json` output)."""
        packer = _Packer()
        guests: OrderedDict[str, Guest] = OrderedDict()
        for gdoc in doc.get("guests") or ():
            g = Guest.from_json(gdoc, self.config.max_events, packer)
            guests[g.uuid] = g
        stopped: OrderedDict[str, None] = OrderedDict(
            (u, None) for u in doc.get("stopped") or () if u in guests
        )

        def counts(name: str, width: int) -> dict[Any, int]:
            rows = doc.get(name) or ()
            return {tuple(str(x) for x in row[:width]): int(row[width]) for row in rows}

        with self._lock:
            self._guests = guests
            self._stopped = stopped
            self._packer = packer
            self.records = counts("records", 3)
            self.operations = counts("operations", 4)
            self.resources = counts("resources", 4)
            self.labels = counts("labels", 3)
            self._bound = LabelBound(self.config.max_label_values, doc.get("label_values") or {})
            self.evicted = int(doc.get("evicted") or 0)

    @classmethod
    def from_json(
        cls, doc: Mapping[str, Any], config: StateConfig, clock: Callable[[], float] = time.time
    ) -> GuestTable:
        table = cls(config, clock)
        table.restore(doc)
        return table
