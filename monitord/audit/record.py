"""The record that flows from the parser to every later stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from operator import attrgetter
from typing import Any, Final

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


def to_int(value: str | None) -> int | None:
    """Return value as an int, None for absent or non-numeric values (`?`, garbage)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
