"""How one libvirt record is kept in the history: a shape, a subject and the values that vary.

Most of a libvirt record repeats from one record to the next: its type, the
field names in their order, `virt`, `op`, `reason`, `resrc`, `res`, `exe` and
the auditing process's ids. Those make its *shape* (stored once, referenced by
number). The guest's node, UUID and name make its *subject*. What is left per
record is the time, the serial and a short JSON array: the pid, then the
values of the varying fields (vm-pid, old/new devices, paths, contexts).
Decoding gives back an `AuditRecord` equal to the one stored, fields in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from monitord.audit.record import AuditRecord, make_record

# Fields whose values come from a small set (kept in the shape, not in every row).
CONST_FIELDS: Final = frozenset(
    {"virt", "op", "reason", "resrc", "res", "exe", "hostname", "addr", "terminal",
     "model", "class", "category", "acl", "bus", "maj"}
)  # fmt: skip
# Fields the subject holds.
SUBJECT_FIELDS: Final = frozenset({"uuid", "vm"})

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
_loads = json.JSONDecoder().decode

# A field of a shape: (name, where, constant) with where 0 = vals, 1 = constant,
# 2 = subject uuid, 3 = subject vm.
_VAR, _CONST, _UUID, _VM = 0, 1, 2, 3


def to_db(text: str | None) -> str | bytes | None:
    """Text for a TEXT/ANY column: names that are not UTF-8 (surrogate escapes) as bytes."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
    return text


def from_db(value: object) -> str | None:
    """Inverse of to_db; anything else is a ValueError (a corrupt row)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    raise ValueError(f"expected text, got {type(value).__name__}")


def time_to_db(t: float) -> float | int:
    """Record time in milliseconds: an integer for the audit stamp's three decimals (6 bytes)."""
    ms = round(t * 1000)
    if ms / 1000 == t:
        return ms
    return t * 1000.0


def time_from_db(tms: float | int) -> float:
    return tms / 1000


def result_code(fields: Any) -> int | None:
    """1 for success, 0 for failed (the `events_failed` index), None for anything else."""
    res = fields.get("res")
    if res == "success" or res == "1":
        return 1
    if res == "failed" or res == "0":
        return 0
    return None


@dataclass(frozen=True, slots=True)
class Shape:
    """What records of one shape share; `fields` says where each field's value comes from."""

    type: str
    type_id: int
    uid: int | None
    auid: int | None
    ses: int | None
    subj: str | None
    enrichment: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, int, str | None], ...]
    # For decoding: the field names, their values with None where a row or the subject
    # fills them in, and those places.
    names: tuple[str, ...] = ()
    template: tuple[str | None, ...] = ()
    var_at: tuple[int, ...] = ()
    uuid_at: int = -1
    vm_at: int = -1

    def const(self, name: str) -> str | None:
        """The constant value of a field (op, resrc, res, ...), None if absent or varying."""
        for key, where, value in self.fields:
            if key == name:
                return value if where == _CONST else None
        return None

    @property
    def result(self) -> str | None:
        res = self.const("res")
        if res in ("success", "1"):
            return "success"
        if res in ("failed", "0"):
            return "failed"
        return res

    @classmethod
    def from_doc(cls, doc: str) -> Shape:
        """Parse a shapes.doc; ValueError if it is not one (a corrupt row)."""
        try:
            t, tid, uid, auid, ses, subj, enrich, spec = _loads(doc)
            fields: list[tuple[str, int, str | None]] = []
            for item in spec:
                if isinstance(item, str):
                    fields.append((item, _VAR, None))
                elif len(item) == 2 and (item[1] is None or isinstance(item[1], str)):
                    fields.append((str(item[0]), _CONST, item[1]))
                elif len(item) == 1 and item[0] in SUBJECT_FIELDS:
                    fields.append((item[0], _UUID if item[0] == "uuid" else _VM, None))
                else:
                    raise ValueError(f"bad field {item!r}")
            where = [w for _, w, _ in fields]
            shape = cls(
                type=_text(t),
                type_id=_int(tid),
                uid=_opt_int(uid),
                auid=_opt_int(auid),
                ses=_opt_int(ses),
                subj=None if subj is None else _text(subj),
                enrichment=tuple((_text(k), _text(v)) for k, v in enrich),
                fields=tuple(fields),
                names=tuple(n for n, _, _ in fields),
                template=tuple(c if w == _CONST else None for _, w, c in fields),
                var_at=tuple(i for i, w in enumerate(where) if w == _VAR),
                uuid_at=where.index(_UUID) if _UUID in where else -1,
                vm_at=where.index(_VM) if _VM in where else -1,
            )
        except (TypeError, ValueError, RecursionError) as err:
            raise ValueError(f"not a shape: {err}") from None
        return shape


def _text(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected text, got {type(v).__name__}")
    return v


def _int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {type(v).__name__}")
    return v


def _opt_int(v: object) -> int | None:
    return None if v is None else _int(v)


def encode(record: AuditRecord) -> tuple[str, str]:
    """Return (shape doc, vals JSON) of a record."""
    spec: list[Any] = []
    vals: list[Any] = [record.pid]
    for name, value in record.fields.items():
        if name in SUBJECT_FIELDS:
            spec.append([name])
        elif name in CONST_FIELDS:
            spec.append([name, value])
        else:
            spec.append(name)
            vals.append(value)
    enrichment = [[k, v] for k, v in record.enrichment.items()] if record.enrichment else []
    doc = _dumps(
        [record.type, record.type_id, record.uid, record.auid, record.ses, record.subj,
         enrichment, spec]
    )  # fmt: skip
    return doc, _dumps(vals)


class Encoder:
    """`encode` with its work remembered: records of one kind share their shape's JSON.

    A record's shape is found from a key of plain tuples (cheap to build and hash);
    only the values that vary are turned into JSON for each record.
    """

    __slots__ = ("_docs", "_plans")

    def __init__(self) -> None:
        # (type_id, field names) -> (indexes of constant values, indexes of varying values)
        self._plans: dict[tuple[int, tuple[str, ...]], tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._docs: dict[tuple[Any, ...], str] = {}

    def __call__(self, record: AuditRecord) -> tuple[str, str]:
        """Return (shape doc, vals JSON) of a record."""
        fields = record.fields
        names = tuple(fields)
        values = tuple(fields.values())
        plan_key = (record.type_id, names)
        plan = self._plans.get(plan_key)
        if plan is None:
            if len(self._plans) >= _ENCODER_LIMIT:
                self._plans.clear()
            const = tuple(i for i, n in enumerate(names) if n in CONST_FIELDS)
            var = tuple(
                i for i, n in enumerate(names) if n not in CONST_FIELDS and n not in SUBJECT_FIELDS
            )
            plan = self._plans[plan_key] = (const, var)
        const_idx, var_idx = plan
        enrichment = record.enrichment
        key = (
            record.type, record.uid, record.auid, record.ses, record.subj,
            tuple(enrichment.items()) if enrichment else (), plan_key,
            tuple([values[i] for i in const_idx]),
        )  # fmt: skip
        doc = self._docs.get(key)
        if doc is None:
            if len(self._docs) >= _ENCODER_LIMIT:
                self._docs.clear()
            doc = self._docs[key] = encode(record)[0]
        return doc, _dumps([record.pid, *[values[i] for i in var_idx]])


_ENCODER_LIMIT: Final = 4096


def decode(
    shape: Shape, node: str | None, uuid: str | None, vm: str | None, t: float, serial: int,
    vals: str,
) -> AuditRecord:  # fmt: skip
    """Rebuild the record from its parts; ValueError if they do not fit together."""
    try:
        values = _loads(vals)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"bad values: {err}") from None
    var_at = shape.var_at
    if type(values) is not list or len(values) != len(var_at) + 1:
        raise ValueError("bad values: not the shape's number of values")
    pid = values[0]
    if pid is not None and type(pid) is not int:
        raise ValueError("bad values: pid")
    row = list(shape.template)
    for at, value in zip(var_at, values[1:], strict=True):
        if value is not None and type(value) is not str:
            raise ValueError("bad values: not text")
        row[at] = value
    if shape.uuid_at >= 0:
        row[shape.uuid_at] = uuid
    if shape.vm_at >= 0:
        row[shape.vm_at] = vm
    return make_record(
        shape.type, shape.type_id, t, serial, node, pid, shape.uid, shape.auid, shape.ses,
        shape.subj, dict(zip(shape.names, row, strict=True)), dict(shape.enrichment),
    )  # fmt: skip
