"""One guest as its audit records describe it, declared once.

`Guest`'s fields are the model: the guest document (docs/INTERFACE.md, "Guest
state"), the per-guest metrics and the persisted form are all derived from
them. Adding a field is its declaration here (with `doc`, and `metric` if it
is exported) plus the rule that sets it in `GuestTable` (monitord/state/table.py).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from bisect import insort
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

STATES: Final[tuple[str, ...]] = ("running", "stopped", "unknown")

# (model, vm_ctx, img_ctx) of one VIRT_MACHINE_ID record.
SecurityLabel = tuple["str | None", "str | None", "str | None"]


def _devices(kind: str) -> Any:
    """A device list: a sorted multiset (two identical USB redirdevs are listed twice)."""
    return field(default=(), metadata={"device_kind": kind})


def _metric(name: str, kind: str, help_text: str, default: Any = None) -> Any:
    """A field exported as one per-guest sample (absent while the value is None)."""
    return field(default=default, metadata={"metric": (name, kind, help_text)})


@dataclass(slots=True)
class Guest:
    """The state of one guest. Only GuestTable changes it, under its lock; readers get
    copies (`GuestTable.snapshot`). Fields without `internal` are the guest document."""

    uuid: str
    # The record's node= (a central collector's other hosts); "" for this host's own records.
    node: str = ""
    name: str | None = None
    virt: str | None = None
    state: str = field(default="unknown", metadata={"choices": STATES})
    vm_pid: int | None = None
    last_op: str | None = None
    last_reason: str | None = None
    last_result: str | None = None
    last_event_time: float | None = _metric(
        "libvirt_audit_domain_last_event_timestamp_seconds",
        "gauge",
        "Time of the guest's most recent audit record (Unix seconds).",
    )
    started_at: float | None = _metric(
        "libvirt_audit_domain_start_timestamp_seconds",
        "gauge",
        "Time of the guest's most recent successful start (Unix seconds).",
    )
    stopped_at: float | None = None
    vcpus: int | None = _metric(
        "libvirt_audit_domain_vcpus",
        "gauge",
        "Virtual CPUs of the guest's current run (resrc=vcpu records).",
    )
    iothreads: int | None = None
    memory_bytes: int | None = _metric(
        "libvirt_audit_domain_memory_bytes",
        "gauge",
        "Memory of the guest's current run in bytes (resrc=mem KiB x 1024).",
    )
    disks: tuple[str, ...] = _devices("disk")
    nics: tuple[str, ...] = _devices("nic")
    filesystems: tuple[str, ...] = _devices("filesystem")
    chardevs: tuple[str, ...] = _devices("chardev")
    rngs: tuple[str, ...] = _devices("rng")
    smartcards: tuple[str, ...] = _devices("smartcard")
    hostdevs: tuple[str, ...] = _devices("hostdev")
    tpms: tuple[str, ...] = _devices("tpm")
    shmems: tuple[str, ...] = _devices("shmem")
    inputs: tuple[str, ...] = _devices("input")
    # One label per model, sorted by model.
    security: tuple[SecurityLabel, ...] = ()
    failures: int = _metric(
        "libvirt_audit_domain_failures_total",
        "counter",
        "Audit records with res=failed for the guest.",
        default=0,
    )
    # The log says running, but the guest's vm-pid is gone (its QEMU died while libvirtd
    # was down: libvirt never writes that stop). Cleared by the next lifecycle record.
    process_gone: bool = _metric(
        "libvirt_audit_domain_process_gone",
        "gauge",
        "1 when the guest's process (vm-pid) no longer exists although its last lifecycle "
        "record says it runs (it died while libvirtd was down), else 0.",
        default=False,
    )
    # True between the first record of a start phase and its op=start.
    phase_open: bool = field(default=False, metadata={"internal": True})

    @property
    def key(self) -> GuestKey:
        return (self.node, self.uuid)

    def begin_phase(self) -> None:
        """Start describing a new start: forget the previous run's resources."""
        for name in DEVICE_LISTS:
            setattr(self, name, ())
        self.vcpus = self.iothreads = self.memory_bytes = None
        self.phase_open = True

    def add_device(self, devices: str, value: str) -> None:
        items = list(getattr(self, devices))
        insort(items, value)
        setattr(self, devices, tuple(items))

    def remove_device(self, devices: str, value: str) -> bool:
        """Take one occurrence away; False when the list never held it."""
        items: tuple[str, ...] = getattr(self, devices)
        if value not in items:
            return False
        i = items.index(value)
        setattr(self, devices, items[:i] + items[i + 1 :])
        return True

    def set_label(self, label: SecurityLabel) -> None:
        others = [old for old in self.security if old[0] != label[0]]
        self.security = tuple(sorted((*others, label), key=lambda x: x[0] or ""))

    def copy(self) -> Guest:
        """An independent copy for readers (the tuples it holds are immutable)."""
        return dataclasses.replace(self)

    def document(self, host: str) -> dict[str, Any]:
        """The guest document: `host` names this host for the guest's own records."""
        doc: dict[str, Any] = {}
        for name in DOCUMENT_FIELDS:
            value = getattr(self, name)
            if name == "node":
                doc["node"] = value or None
                doc["host"] = value or host
            elif name == "security":
                doc[name] = [{"model": m, "vm_ctx": v, "img_ctx": i} for m, v, i in value]
            elif isinstance(value, tuple):
                doc[name] = list(value)
            else:
                doc[name] = value
        return doc

    def to_json(self) -> dict[str, Any]:
        """The persisted form: every field, JSON types only."""
        doc: dict[str, Any] = {}
        for name in FIELD_NAMES:
            value = getattr(self, name)
            if name == "security":
                value = [list(label) for label in value]
            elif isinstance(value, tuple):
                value = list(value)
            doc[name] = value
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Guest:
        """Rebuild a guest from `to_json` output (or a version-1 checkpoint's guest document).

        Raises ValueError for anything that is not what the declaration says: saved
        state is input like any other.
        """
        if not isinstance(doc, Mapping):
            raise ValueError("a guest is not an object")
        g = cls(_check("uuid", doc.get("uuid"), str))
        for name, convert in _CONVERTERS:
            if name not in doc or (doc[name] is None and name in _NOT_NONE):
                continue
            setattr(g, name, convert(doc[name]))
        if g.state not in STATES:
            raise ValueError(f"guest {g.uuid}: state {g.state!r}")
        g.node = g.node or ""
        return g


GuestKey = tuple[str, str]  # (node, uuid)
FIELDS: Final = dataclasses.fields(Guest)
FIELD_NAMES: Final = tuple(f.name for f in FIELDS)
DOCUMENT_FIELDS: Final = tuple(f.name for f in FIELDS if not f.metadata.get("internal"))
# Device-list field -> the `kind` label of libvirt_audit_domain_devices, in document order.
DEVICE_LISTS: Final[dict[str, str]] = {
    f.name: f.metadata["device_kind"] for f in FIELDS if "device_kind" in f.metadata
}
# Field -> (metric name, type, help) of the fields exported as one sample each.
METRIC_FIELDS: Final[dict[str, tuple[str, str, str]]] = {
    f.name: f.metadata["metric"] for f in FIELDS if "metric" in f.metadata
}
_HINTS: Final[dict[str, Any]] = typing.get_type_hints(Guest)
# A null in saved state for these means "the default" (version 1 wrote `node` as null).
_NOT_NONE: Final = frozenset({"node", "failures", "state", "phase_open"})


def _check(name: str, value: Any, hint: Any) -> Any:
    """Return value converted to the declared type of field `name`, or raise ValueError."""
    return _converter(name, hint)(value)


def _converter(name: str, hint: Any) -> Callable[[Any], Any]:
    """The function that checks and converts a saved value of field `name` (declared as
    `hint`): worked out once per field, since a start-up converts every guest's fields."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        convert_inner = _converter(name, inner)
        return lambda v: None if v is None else convert_inner(v)
    if origin is tuple:
        item, *rest = typing.get_args(hint)
        if rest != [Ellipsis]:  # pragma: no cover
            raise ValueError(f"{name}: unsupported declaration {hint}")

        def items(v: Any) -> list[Any]:
            if not isinstance(v, list | tuple):
                raise ValueError(f"{name}: expected a list, got {type(v).__name__}")
            return list(v)

        if item is str:
            text = _converter(name, str)
            return lambda v: tuple(sorted(text(x) for x in items(v)))
        # Security labels.
        return lambda v: tuple(sorted((_label(name, x) for x in items(v)), key=_label_key))
    valid = _VALID[hint]
    to = float if hint is float else None

    def scalar(v: Any) -> Any:
        if not valid(v):
            raise ValueError(f"{name}: {v!r} is not a valid {hint.__name__}")
        return to(v) if to is not None else v

    return scalar


def _label_key(label: SecurityLabel) -> str:
    return label[0] or ""


_VALID: Final[dict[Any, Callable[[Any], bool]]] = {
    str: lambda v: isinstance(v, str),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v == v,
    bool: lambda v: isinstance(v, bool),
}


def _label(name: str, value: Any) -> SecurityLabel:
    if isinstance(value, Mapping):
        value = [value.get("model"), value.get("vm_ctx"), value.get("img_ctx")]
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ValueError(f"{name}: a label is (model, vm_ctx, img_ctx)")
    model, vm_ctx, img_ctx = (None if v is None else _check(name, v, str) for v in value)
    return (model, vm_ctx, img_ctx)


# Every field but uuid, with its converter (uuid is the constructor's argument).
_CONVERTERS: Final = tuple((f.name, _converter(f.name, _HINTS[f.name])) for f in FIELDS[1:])
