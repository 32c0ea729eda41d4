"""The record that flows from the parser to every later stage, and typed views of it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from operator import attrgetter
from typing import Any, Final, Literal

from monitord.audit.types import VIRT_CONTROL, VIRT_MACHINE_ID, VIRT_RESOURCE

FieldValue = str | None

# `res=` as `AuditRecord.result` reads it; any other value is kept as written.
RESULT_KEY: Final = "res"
RESULTS: Final[Mapping[str, str]] = {
    "success": "success",
    "1": "success",
    "failed": "failed",
    "0": "failed",
}
# The `monitord parse` document (docs/INTERFACE.md): these attributes of the record, in this
# order. `virt`, `vm`, `uuid`, `op`, `reason`, `resrc` and `exe` are properties that read the
# inner field of their name. The C leaf gets this tuple too and writes the same document.
DOCUMENT_KEYS: Final = (
    "type", "type_id", "time", "serial", "node", "virt", "vm", "uuid", "result", "op", "reason",
    "resrc", "pid", "uid", "auid", "ses", "subj", "exe", "fields", "enrichment",
)  # fmt: skip


def result_of(fields: Mapping[str, FieldValue]) -> str | None:
    """The `result` of a record with these inner fields (RESULTS; other values as written)."""
    res = fields.get(RESULT_KEY)
    return RESULTS.get(res, res) if res is not None else None


@cache
def _attributes(names: tuple[str, ...]) -> Callable[[object], tuple[Any, ...]]:
    return attrgetter(*names)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One VIRT_* audit record, decoded.

    `fields` holds every key=value of the inner `msg='...'` in order of appearance,
    decoded (quoted -> content, libvirt's hex -> text, `?` -> None); the first
    occurrence of a duplicate key wins.
    """

    type: str
    type_id: int
    time: float
    serial: int
    node: str | None
    pid: int | None
    uid: int | None
    auid: int | None
    ses: int | None
    subj: str | None
    fields: Mapping[str, FieldValue]
    enrichment: Mapping[str, str]

    def get(self, key: str) -> FieldValue:
        """Return a decoded inner field, None when absent or `?`."""
        return self.fields.get(key)

    @property
    def is_libvirt(self) -> bool:
        """True for records libvirt wrote: they always carry `virt=` and `uuid=`."""
        return "virt" in self.fields and "uuid" in self.fields

    @property
    def virt(self) -> FieldValue:
        return self.fields.get("virt")

    @property
    def vm(self) -> FieldValue:
        return self.fields.get("vm")

    @property
    def uuid(self) -> FieldValue:
        return self.fields.get("uuid")

    @property
    def op(self) -> FieldValue:
        return self.fields.get("op")

    @property
    def reason(self) -> FieldValue:
        return self.fields.get("reason")

    @property
    def resrc(self) -> FieldValue:
        return self.fields.get("resrc")

    @property
    def exe(self) -> FieldValue:
        return self.fields.get("exe")

    @property
    def result(self) -> str | None:
        """`success` or `failed` (audit also writes `res=1`/`res=0` in old records)."""
        return result_of(self.fields)

    @property
    def succeeded(self) -> bool:
        return self.result == "success"

    def to_json(self) -> dict[str, Any]:
        """Return the `monitord parse` document of the record (docs/INTERFACE.md)."""
        doc = dict(zip(DOCUMENT_KEYS, _attributes(DOCUMENT_KEYS)(self), strict=True))
        doc["fields"] = dict(self.fields)
        doc["enrichment"] = dict(self.enrichment)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AuditRecord:
        """Rebuild a record from `to_json` output (checkpoints keep recent records this way)."""
        return cls(
            type=doc["type"],
            type_id=doc["type_id"],
            time=doc["time"],
            serial=doc["serial"],
            node=doc["node"],
            pid=doc["pid"],
            uid=doc["uid"],
            auid=doc["auid"],
            ses=doc["ses"],
            subj=doc["subj"],
            fields=dict(doc["fields"]),
            enrichment=dict(doc.get("enrichment") or {}),
        )


class _RecordBuilder:
    """AuditRecord's layout without its frozen `__setattr__`: builds a record ~4x faster.

    A frozen dataclass stores each field through `object.__setattr__` (~1 us for twelve
    fields, as much as parsing the line). This twin class has exactly the same slots, so
    plain attribute stores fill them and `__class__` assignment (allowed between classes
    of identical layout) turns the object into the frozen record it equals.
    """

    __slots__ = AuditRecord.__slots__

    def __init__(
        self,
        type: str,
        type_id: int,
        time: float,
        serial: int,
        node: str | None,
        pid: int | None,
        uid: int | None,
        auid: int | None,
        ses: int | None,
        subj: str | None,
        fields: Mapping[str, FieldValue],
        enrichment: Mapping[str, str],
    ) -> None:
        self.type = type
        self.type_id = type_id
        self.time = time
        self.serial = serial
        self.node = node
        self.pid = pid
        self.uid = uid
        self.auid = auid
        self.ses = ses
        self.subj = subj
        self.fields = fields
        self.enrichment = enrichment
        self.__class__ = AuditRecord  # type: ignore[assignment]


# `make_record(...)` takes AuditRecord's positional arguments and returns an equal
# AuditRecord; the parser's hot path uses it, everyone else may keep `AuditRecord(...)`.
make_record: Callable[
    [
        str,
        int,
        float,
        int,
        str | None,
        int | None,
        int | None,
        int | None,
        int | None,
        str | None,
        Mapping[str, FieldValue],
        Mapping[str, str],
    ],
    AuditRecord,
] = _RecordBuilder  # type: ignore[assignment]


# Typed views: what each kind of libvirt record says, named.


@dataclass(frozen=True, slots=True)
class Control:
    """VIRT_CONTROL: a lifecycle step (`op=start|stop|init`)."""

    op: str | None
    reason: str | None
    vm_pid: int | None
    init_pid: int | None = None
    pid_ns: int | None = None


@dataclass(frozen=True, slots=True)
class MachineId:
    """VIRT_MACHINE_ID: one security label of a guest."""

    model: str | None
    vm_ctx: str | None
    img_ctx: str | None


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """A device assigned, removed or replaced: `old-X`/`new-X` (disk, fs, net, chardev, ...)."""

    resrc: str
    reason: str | None
    old: str | None
    new: str | None

    @property
    def action(self) -> Literal["add", "remove", "replace", "none"]:
        if self.old is None and self.new is not None:
            return "add"
        if self.old is not None and self.new is None:
            return "remove"
        if self.old is not None and self.new is not None:
            return "replace"
        return "none"


@dataclass(frozen=True, slots=True)
class NetOpen:
    """`resrc=net reason=open`: a host device (tap, vhost-net) opened for a guest NIC."""

    mac: str | None
    path: str | None
    rdev: str | None


@dataclass(frozen=True, slots=True)
class HostDevice:
    """`resrc=dev` (PCI/USB/SCSI/mdev passthrough, USB redirection) or LXC `resrc=hostdev`."""

    resrc: str
    reason: str | None
    bus: str | None
    device: str | None

    @property
    def name(self) -> str | None:
        """The device as the guest document lists it: `pci:0000:03:00.0`, `usb:USB redirdev`."""
        if self.device is None:
            return None
        return f"{self.bus}:{self.device}" if self.bus else self.device


@dataclass(frozen=True, slots=True)
class Tpm:
    """`resrc=tpm|tpm-emulator|tpm-external`: TPM path or swtpm socket."""

    resrc: str
    reason: str | None
    device: str | None


@dataclass(frozen=True, slots=True)
class CgroupAcl:
    """`resrc=cgroup`: a device ACL change in the guest's cgroup."""

    reason: str | None
    cgroup: str | None
    cls: str | None
    category: str | None
    maj: str | None
    path: str | None
    rdev: str | None
    acl: str | None


@dataclass(frozen=True, slots=True)
class CountChange:
    """`resrc=mem|vcpu|iothread`: old and new amount (memory in KiB)."""

    resrc: str
    reason: str | None
    old: int | None
    new: int | None


@dataclass(frozen=True, slots=True)
class PathResource:
    """`resrc=shmem|ivshmem-socket|evdev`: a host path (and size for shmem)."""

    resrc: str
    reason: str | None
    path: str | None
    size: int | None


@dataclass(frozen=True, slots=True)
class OtherResource:
    """A `resrc` this version does not know: kept so nothing is silently lost."""

    resrc: str | None
    reason: str | None


ResourceView = (
    DeviceChange
    | NetOpen
    | HostDevice
    | Tpm
    | CgroupAcl
    | CountChange
    | PathResource
    | OtherResource
)
View = Control | MachineId | ResourceView | None

COUNT_RESOURCES = frozenset({"mem", "vcpu", "iothread"})
PATH_RESOURCES = frozenset({"shmem", "ivshmem-socket", "evdev"})
TPM_RESOURCES = frozenset({"tpm", "tpm-emulator", "tpm-external"})


def to_int(value: str | None) -> int | None:
    """Return value as an int, None for absent or non-numeric values (`?`, garbage)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def view(record: AuditRecord) -> View:
    """Return the typed view of a libvirt record, None for other VIRT types."""
    f = record.fields
    if record.type_id == VIRT_CONTROL:
        return Control(
            op=f.get("op"),
            reason=f.get("reason"),
            vm_pid=to_int(f.get("vm-pid")),
            init_pid=to_int(f.get("init-pid")),
            pid_ns=to_int(f.get("pid-ns")),
        )
    if record.type_id == VIRT_MACHINE_ID:
        return MachineId(model=f.get("model"), vm_ctx=f.get("vm-ctx"), img_ctx=f.get("img-ctx"))
    if record.type_id == VIRT_RESOURCE:
        return resource_view(record)
    return None


def resource_view(record: AuditRecord) -> ResourceView:
    """Return the typed view of a VIRT_RESOURCE record, by its `resrc` form."""
    f = record.fields
    resrc = f.get("resrc")
    reason = f.get("reason")
    if resrc is None:
        return OtherResource(resrc=None, reason=reason)
    if resrc == "net" and "net" in f and f"old-{resrc}" not in f:
        return NetOpen(mac=f.get("net"), path=f.get("path"), rdev=f.get("rdev"))
    if resrc in COUNT_RESOURCES:
        return CountChange(
            resrc=resrc,
            reason=reason,
            old=to_int(f.get(f"old-{resrc}")),
            new=to_int(f.get(f"new-{resrc}")),
        )
    if resrc == "cgroup":
        return CgroupAcl(
            reason=reason,
            cgroup=f.get("cgroup"),
            cls=f.get("class"),
            category=f.get("category"),
            maj=f.get("maj"),
            path=f.get("path"),
            rdev=f.get("rdev"),
            acl=f.get("acl"),
        )
    if resrc == "dev":
        return HostDevice(resrc=resrc, reason=reason, bus=f.get("bus"), device=f.get("device"))
    if resrc == "hostdev":
        if "disk" in f:
            return HostDevice(resrc=resrc, reason=reason, bus="disk", device=f.get("disk"))
        if "chardev" in f:
            return HostDevice(resrc=resrc, reason=reason, bus="chardev", device=f.get("chardev"))
    if resrc in TPM_RESOURCES:
        return Tpm(resrc=resrc, reason=reason, device=f.get("device"))
    if resrc in PATH_RESOURCES:
        return PathResource(
            resrc=resrc, reason=reason, path=f.get("path"), size=to_int(f.get("size"))
        )
    old_key, new_key = f"old-{resrc}", f"new-{resrc}"
    if old_key in f or new_key in f:
        return DeviceChange(resrc=resrc, reason=reason, old=f.get(old_key), new=f.get(new_key))
    return OtherResource(resrc=resrc, reason=reason)
