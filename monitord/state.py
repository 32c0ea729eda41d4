"""Per-guest state derived from libvirt's audit records (CONTRACT.md, "Guest state").

One `GuestTable` is written by the ingestion thread (`apply`, `expire`) and
read by the HTTP thread (`document`, `guest_document`, `metrics`). Every write
holds the table lock for one record only; a reader holds it only to collect
per-guest documents, which are built once per change and cached, so scrapes
and ingestion never wait on each other for long.

Time comes from the records; "now" is injected (`clock`, or the `now` argument).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from monitord.audit.record import (
    AuditRecord,
    Control,
    CountChange,
    DeviceChange,
    HostDevice,
    MachineId,
    PathResource,
    Tpm,
    view,
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


# Events are kept packed: a guest keeps up to 50 records, and AuditRecord's
# dicts would cost ~1 KiB each. Key layouts and enrichments repeat, so they are
# shared; the values tuple is the only per-record container.
_Packed = tuple[
    str, int, float, int, "str | None", "int | None", "int | None", "int | None", "int | None",
    "str | None", tuple[str, ...], tuple["str | None", ...], tuple[tuple[str, str], ...],
]  # fmt: skip


class _Packer:
    __slots__ = ("_enrich", "_keys", "_values")

    def __init__(self) -> None:
        self._keys: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._enrich: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
        # Field values repeat across a guest's records (uuid, name, exe, cgroup path):
        # share one string object for each instead of one per record.
        self._values: dict[str, str] = {}

    def pack(self, r: AuditRecord) -> _Packed:
        keys = tuple(r.fields)
        keys = self._keys.setdefault(keys, keys)
        if len(self._keys) > 4096:
            self._keys.clear()
        enrich = tuple(r.enrichment.items())
        enrich = self._enrich.setdefault(enrich, enrich)
        if len(self._enrich) > 4096:
            self._enrich.clear()
        return (
            r.type, r.type_id, r.time, r.serial, r.node, r.pid, r.uid, r.auid, r.ses, r.subj,
            keys, self._share(r.fields.values()), enrich,
        )  # fmt: skip

    def _share(self, values: Iterable[str | None]) -> tuple[str | None, ...]:
        shared = self._values
        if len(shared) > 65536:
            shared.clear()
        get = shared.setdefault
        return tuple(None if v is None else get(v, v) for v in values)


def _unpack(p: _Packed) -> AuditRecord:
    return AuditRecord(
        type=p[0],
        type_id=p[1],
        time=p[2],
        serial=p[3],
        node=p[4],
        pid=p[5],
        uid=p[6],
        auid=p[7],
        ses=p[8],
        subj=p[9],
        fields=dict(zip(p[10], p[11], strict=True)),
        enrichment=dict(p[12]),
    )


class Guest:
    """The mutable state of one guest; only GuestTable touches it, under its lock."""

    __slots__ = (
        "devices",
        "doc",
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
        "security",
        "started_at",
        "state",
        "stopped_at",
        "uuid",
        "vcpus",
        "virt",
        "vm_pid",
    )

    def __init__(self, uuid: str, max_events: int) -> None:
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
        # List name -> members; only lists in use have a set (an empty set costs 216 bytes).
        self.devices: dict[str, set[str]] = {}
        # model -> (vm_ctx, img_ctx); the latest label of each model wins.
        self.security: dict[str | None, tuple[str | None, str | None]] = {}
        self.failures = 0
        # True between the first record of a start phase and its op=start.
        self.phase_open = False
        self.events: deque[_Packed] = deque(maxlen=max_events)
        # The cached guest document; None after any change.
        self.doc: dict[str, Any] | None = None

    def begin_phase(self) -> None:
        """Start describing a new start: forget the previous run's resources."""
        self.devices.clear()
        self.vcpus = None
        self.iothreads = None
        self.memory_bytes = None
        self.phase_open = True

    def document(self) -> dict[str, Any]:
        doc = self.doc
        if doc is None:
            doc = {
                "uuid": self.uuid,
                "name": self.name,
                "virt": self.virt,
                "state": self.state,
                "vm_pid": self.vm_pid,
                "last_op": self.last_op,
                "last_reason": self.last_reason,
                "last_result": self.last_result,
                "last_event_time": self.last_event_time,
                "started_at": self.started_at,
                "stopped_at": self.stopped_at,
                "vcpus": self.vcpus,
                "iothreads": self.iothreads,
                "memory_bytes": self.memory_bytes,
            }
            for name in DEVICE_LISTS:
                doc[name] = sorted(self.devices.get(name, ()))
            doc["security"] = [
                {"model": model, "vm_ctx": ctx[0], "img_ctx": ctx[1]}
                for model, ctx in sorted(self.security.items(), key=lambda kv: kv[0] or "")
            ]
            doc["failures"] = self.failures
            self.doc = doc
        return doc

    def to_json(self) -> dict[str, Any]:
        doc = dict(self.document())
        doc["phase_open"] = self.phase_open
        doc["events"] = [_unpack(p).to_json() for p in self.events]
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], max_events: int, packer: _Packer) -> Guest:
        g = cls(str(doc["uuid"]), max_events)
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
        for name in DEVICE_LISTS:
            if doc.get(name):
                g.devices[name] = set(doc[name])
        for label in doc.get("security") or ():
            g.security[label.get("model")] = (label.get("vm_ctx"), label.get("img_ctx"))
        g.failures = int(doc.get("failures") or 0)
        g.phase_open = bool(doc.get("phase_open"))
        for event in doc.get("events") or ():
            g.events.append(packer.pack(AuditRecord.from_json(event)))
        return g


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent copy of the table for one scrape or API answer (never mutated)."""

    guests: tuple[dict[str, Any], ...]
    records: dict[tuple[str, str, str], int]
    operations: dict[tuple[str, str, str, str], int]
    resources: dict[tuple[str, str, str, str], int]
    labels: dict[tuple[str, str, str], int]
    evicted: int

    @property
    def tracked(self) -> int:
        return len(self.guests)


def _result(record: AuditRecord) -> str:
    res = record.result
    return res if res is not None else ABSENT


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
        fields = record.fields
        bound = self._bound
        result = _result(record)
        type_id = record.type_id
        with self._lock:
            virt = bound("virt", fields.get("virt"))
            key3 = (record.type, virt, result)
            self.records[key3] = self.records.get(key3, 0) + 1
            if type_id == VIRT_CONTROL:
                op = bound("op", fields.get("op"))
                key4 = (virt, op, bound("reason", fields.get("reason")), result)
                self.operations[key4] = self.operations.get(key4, 0) + 1
            elif type_id == VIRT_RESOURCE:
                resrc = bound("resrc", fields.get("resrc"))
                key4 = (virt, resrc, bound("reason", fields.get("reason")), result)
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
        guest = Guest(uuid, self.config.max_events)
        self._guests[uuid] = guest
        return guest

    def _forget(self, uuid: str) -> None:
        del self._guests[uuid]
        self._stopped.pop(uuid, None)
        self.evicted += 1

    def _update(self, g: Guest, record: AuditRecord, result: str) -> None:
        g.doc = None
        g.events.append(self._packer.pack(record))
        name = record.fields.get("vm")
        if name is not None:
            g.name = name
        virt = record.fields.get("virt")
        if virt is not None:
            g.virt = virt
        t = record.time
        if g.last_event_time is None or t > g.last_event_time:
            g.last_event_time = t
        failed = result != "success"
        if failed and result == "failed":
            g.failures += 1
        v = view(record)
        if isinstance(v, Control):
            g.last_op = v.op
            g.last_reason = v.reason
            g.last_result = result or None
            self._control(g, v, t, failed)
            return
        if failed:
            return  # a failed resource or label record changes nothing
        if isinstance(v, MachineId):
            g.security[v.model] = (v.vm_ctx, v.img_ctx)
            return
        if v is None:
            return
        reason = record.fields.get("reason")
        if reason == "start" and g.state != "running" and not g.phase_open:
            g.begin_phase()
        if isinstance(v, DeviceChange):
            target = _CHANGE_LISTS.get(v.resrc)
            if target is not None:
                items = g.devices.setdefault(target, set())
                if v.old is not None:
                    items.discard(v.old)
                if v.new is not None:
                    items.add(v.new)
        elif isinstance(v, CountChange):
            if v.new is not None:
                if v.resrc == "mem":
                    g.memory_bytes = v.new * 1024
                elif v.resrc == "vcpu":
                    g.vcpus = v.new
                else:
                    g.iothreads = v.new
        elif isinstance(v, HostDevice):
            self._set_member(g.devices, "hostdevs", v.name, reason)
        elif isinstance(v, Tpm):
            self._set_member(g.devices, "tpms", v.device, reason)
        elif isinstance(v, PathResource):
            target = _PATH_LISTS.get(v.resrc)
            if target is not None:
                self._set_member(g.devices, target, v.path, reason)
        # NetOpen, CgroupAcl, OtherResource: counted, no list changes.

    @staticmethod
    def _set_member(
        devices: dict[str, set[str]], name: str, value: str | None, reason: str | None
    ) -> None:
        if value is None:
            return
        if reason == "detach":
            items = devices.get(name)
            if items is not None:
                items.discard(value)
        else:
            devices.setdefault(name, set()).add(value)

    def _control(self, g: Guest, c: Control, t: float, failed: bool) -> None:
        op = c.op
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
            g.vm_pid = c.vm_pid if c.vm_pid else None
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
            if c.vm_pid:
                g.vm_pid = c.vm_pid

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
        """Return a consistent copy: documents of changed guests are rebuilt, others reused."""
        with self._lock:
            guests = tuple(g.document() for g in self._guests.values())
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
        guests = self.snapshot().guests
        return {
            "generated_at": self.clock() if now is None else now,
            "guests": sorted(guests, key=lambda d: (d["name"] or "", d["uuid"])),
        }

    def guest_document(self, uuid: str) -> dict[str, Any] | None:
        """Return one guest's document with its recent `events` (newest last), None if unknown."""
        with self._lock:
            g = self._guests.get(uuid)
            if g is None:
                return None
            doc = dict(g.document())
            packed = list(g.events)
        doc["events"] = [_unpack(p).to_json() for p in packed]
        return doc

    # -- checkpoint ------------------------------------------------------------

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
