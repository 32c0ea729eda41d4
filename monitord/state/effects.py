"""What one libvirt record does to its guest: the one classification state and alerts share.

`effect(record)` reads a record's fields once and names what it says in the
guest model's terms (docs/FORMATS.md has every form). The guest table applies
the effect; the alert engine describes a failure with it. A record form added
here is seen by both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple

from monitord.audit.record import AuditRecord, to_int
from monitord.audit.types import VIRT_CONTROL, VIRT_MACHINE_ID, VIRT_RESOURCE


class Lifecycle(NamedTuple):
    """VIRT_CONTROL: a lifecycle step (`op=start|stop|init`)."""

    op: str | None
    reason: str | None
    vm_pid: int | None


class Label(NamedTuple):
    """VIRT_MACHINE_ID: one security label of the guest; the latest of a model wins."""

    model: str | None
    vm_ctx: str | None
    img_ctx: str | None


class DeviceChange(NamedTuple):
    """A host resource assigned to or taken from one of the guest's device lists.

    `removed` then `added` (both: replaced); the lists are multisets, so a detach
    takes one occurrence away.
    """

    devices: str  # a Guest device-list field: "disks", "hostdevs", ...
    removed: str | None
    added: str | None


class AmountChange(NamedTuple):
    """`resrc=mem|vcpu|iothread`: the guest's amount of it, as libvirt wrote it (memory KiB)."""

    field: str  # the Guest field it sets
    resrc: str
    old: int | None
    new: int | None
    unit: int  # field value = new * unit


class Mention(NamedTuple):
    """A resource record that changes no guest field (host device opened for a NIC, cgroup
    ACL, a resource this version does not know); `subject` is the path or device it names."""

    subject: str | None


Effect = Lifecycle | Label | DeviceChange | AmountChange | Mention

# `resrc` of an `old-X`/`new-X` record -> the list it changes.
CHANGE_LISTS: Final[dict[str, str]] = {
    "disk": "disks",
    "net": "nics",
    "fs": "filesystems",
    "chardev": "chardevs",
    "rng": "rngs",
    "smartcard": "smartcards",
    "redir": "hostdevs",  # libvirt's documentation names it; real libvirt writes resrc=dev bus=usb
}
# `resrc` of a `path=` record -> the list it changes.
PATH_LISTS: Final[dict[str, str]] = {
    "shmem": "shmems",
    "ivshmem-socket": "shmems",
    "evdev": "inputs",
}
TPM_RESOURCES: Final = frozenset({"tpm", "tpm-emulator", "tpm-external"})
# `resrc` of a count record -> (Guest field, unit): memory is KiB.
AMOUNTS: Final[dict[str, tuple[str, int]]] = {
    "mem": ("memory_bytes", 1024),
    "vcpu": ("vcpus", 1),
    "iothread": ("iothreads", 1),
}
NOTHING: Final = Mention(None)


def effect(record: AuditRecord) -> Effect | None:
    """Return what a libvirt record does to its guest; None for VIRT types libvirt never writes."""
    f = record.fields
    type_id = record.type_id
    if type_id == VIRT_RESOURCE:
        return _resource(f)
    if type_id == VIRT_CONTROL:
        return Lifecycle(f.get("op"), f.get("reason"), to_int(f.get("vm-pid")))
    if type_id == VIRT_MACHINE_ID:
        return Label(f.get("model"), f.get("vm-ctx"), f.get("img-ctx"))
    return None


def _member(devices: str, reason: str | None, value: str | None) -> Effect:
    """A record naming one device: a detach removes it, anything else adds it."""
    if value is None:
        return NOTHING
    if reason == "detach":
        return DeviceChange(devices, value, None)
    return DeviceChange(devices, None, value)


def _resource(fields: Mapping[str, str | None]) -> Effect:
    resrc = fields.get("resrc")
    if resrc is None:
        return NOTHING
    reason = fields.get("reason")
    if resrc == "net" and "net" in fields and "old-net" not in fields:
        return Mention(fields.get("path"))  # reason=open: the tap/vhost device of a NIC
    amount = AMOUNTS.get(resrc)
    if amount is not None:
        before = to_int(fields.get(f"old-{resrc}"))
        after = to_int(fields.get(f"new-{resrc}"))
        return AmountChange(amount[0], resrc, before, after, amount[1])
    if resrc == "cgroup":
        return Mention(fields.get("path") or fields.get("cgroup"))
    if resrc == "dev":
        bus, device = fields.get("bus"), fields.get("device")
        name = f"{bus}:{device}" if bus and device is not None else device
        return _member("hostdevs", reason, name)
    if resrc == "hostdev":
        for bus in ("disk", "chardev"):
            if bus in fields:
                device = fields.get(bus)
                return _member("hostdevs", reason, None if device is None else f"{bus}:{device}")
    if resrc in TPM_RESOURCES:
        return _member("tpms", reason, fields.get("device"))
    path_list = PATH_LISTS.get(resrc)
    if path_list is not None:
        return _member(path_list, reason, fields.get("path"))
    old_key, new_key = f"old-{resrc}", f"new-{resrc}"
    if old_key in fields or new_key in fields:
        old, new = fields.get(old_key), fields.get(new_key)
        target = CHANGE_LISTS.get(resrc)
        if target is None or (old is None and new is None):
            return Mention(new or old)
        return DeviceChange(target, old, new)
    return NOTHING


def subject(e: Effect | None) -> str | None:
    """The host path, device or amount an effect names (alert descriptions)."""
    if isinstance(e, DeviceChange):
        return e.added or e.removed
    if isinstance(e, Mention):
        return e.subject
    if isinstance(e, AmountChange):
        return f"{e.resrc} {e.old} -> {e.new}"
    return None
