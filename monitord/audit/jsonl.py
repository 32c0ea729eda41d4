"""`AuditRecord` -> one JSON line (`monitord parse`), fast on libvirt's repetitive records.

The document equals `json.dumps(record.to_json())`. Most of it (the inner
fields, the daemon's pid/uid/subj, the enrichment) repeats from record to
record, so its serialised pieces are cached; only time and serial are new
each time.

`json_line_converter` goes from a candidate line straight to its JSON line. When
the optional C extension `monitord.audit._fastparse` is built (and
MONITORD_PURE_PYTHON is not set), it converts the common libvirt lines itself and
hands every other line to the Python path, which stays the reference.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

from monitord.audit.parser import (
    ACCELERATOR_MODULE,
    Ignored,
    RegionConverter,
    parse_line,
)
from monitord.audit.record import AuditRecord

LineToJson = Callable[[bytes], bytes | Ignored]


_FAST: Final = ACCELERATOR_MODULE
# Which path `monitord parse` takes: "c" (the extension, Python for unusual lines) or "python".
ACCELERATOR: Final = "c" if _FAST is not None else "python"


@dataclass(frozen=True, slots=True)
class JsonConverter:
    """Candidate lines -> JSON lines: `line` for one line, `region` (C) for whole buffers.

    Give both to `StreamParser.feed_as(chunk, c.line, c.region)`.
    """

    line: LineToJson
    region: RegionConverter[bytes] | None = None


_CACHE_LIMIT: Final = 4096
_HEAD_KEYS: Final = ("virt", "vm", "uuid", "result", "op", "reason", "resrc")


class RecordEncoder:
    """Serialise records to compact JSON with bounded caches of the repeated pieces."""

    def __init__(self, ensure_ascii: bool = True) -> None:
        self._dumps: Callable[[Any], str] = json.JSONEncoder(
            ensure_ascii=ensure_ascii, separators=(",", ":")
        ).encode
        self._fields: dict[tuple[tuple[str, str | None], ...], tuple[str, str]] = {}
        self._outer: dict[
            tuple[int | None, int | None, int | None, int | None, str | None], str
        ] = {}
        self._small: dict[object, str] = {}

    def _small_json(self, value: object) -> str:
        """JSON of a type name, node or enrichment (few distinct values)."""
        key = tuple(value.items()) if isinstance(value, dict) else value
        text = self._small.get(key)
        if text is None:
            if len(self._small) >= _CACHE_LIMIT:
                self._small.clear()
            text = self._small[key] = self._dumps(value)
        return text

    def encode(self, record: AuditRecord) -> str:
        """Return the record's `to_json()` document as one compact JSON line (no newline)."""
        dumps = self._dumps
        fields = record.fields
        fkey = tuple(fields.items())
        pieces = self._fields.get(fkey)
        if pieces is None:
            # The pieces of `to_json()` without building the whole document.
            get = fields.get
            head = dumps(
                {
                    "virt": get("virt"),
                    "vm": get("vm"),
                    "uuid": get("uuid"),
                    "result": record.result,
                    "op": get("op"),
                    "reason": get("reason"),
                    "resrc": get("resrc"),
                }
            )
            tail = dumps({"exe": get("exe"), "fields": dict(fields)})
            if len(self._fields) >= _CACHE_LIMIT:
                self._fields.clear()
            pieces = self._fields[fkey] = (head[1:-1], tail[1:-1])
        okey = (record.pid, record.uid, record.auid, record.ses, record.subj)
        outer = self._outer.get(okey)
        if outer is None:
            doc = {"pid": okey[0], "uid": okey[1], "auid": okey[2], "ses": okey[3], "subj": okey[4]}
            if len(self._outer) >= _CACHE_LIMIT:
                self._outer.clear()
            outer = self._outer[okey] = dumps(doc)[1:-1]
        enrichment = record.enrichment
        enr = self._small_json(dict(enrichment)) if enrichment else "{}"
        return (
            f'{{"type":{self._small_json(record.type)},"type_id":{record.type_id:d},'
            f'"time":{float(record.time)!r},"serial":{record.serial:d},'
            f'"node":{self._small_json(record.node)},{pieces[0]},{outer},{pieces[1]},'
            f'"enrichment":{enr}}}'
        )


def python_line_converter() -> LineToJson:
    """The reference path: parse_line, then RecordEncoder (one JSON line with its newline)."""
    encode = RecordEncoder().encode

    def convert(line: bytes) -> bytes | Ignored:
        outcome = parse_line(line)
        if isinstance(outcome, Ignored):
            return outcome
        return (encode(outcome) + "\n").encode()

    return convert


def json_converter(accelerated: bool = True) -> JsonConverter:
    """Candidate lines -> their JSON lines (bytes, newline included), Ignored or ParseError.

    Uses the C extension when it is available and `accelerated`: it converts whole
    regions and leaves the lines it does not handle (and every malformed line) to the
    Python path, so the output is the same either way.
    """
    return converter_with(_FAST if accelerated else None)


def converter_with(fast: ModuleType | None) -> JsonConverter:
    """`json_converter` over a given accelerator module (None: pure Python)."""
    slow = python_line_converter()
    if fast is None:
        return JsonConverter(slow)
    line_json = fast.line_json

    def convert(line: bytes) -> bytes | Ignored:
        out: bytes | Ignored | None = line_json(line)
        return out if out is not None else slow(line)

    region: RegionConverter[bytes] = fast.region_json
    return JsonConverter(convert, region)
