"""Audit lines -> their `monitord parse` JSON lines: `json.dumps(record.to_json())`, fast.

The document is `AuditRecord.to_json()` (its keys: record.DOCUMENT_KEYS). Only its head
(type, type_id, time, serial, node: what the header gives) differs from line to line;
the rest depends on the line's tail alone, so it is serialised once per distinct tail
and kept. With the C leaf, `json_reader` lets it write whole runs of JSON lines from the
same DOCUMENT_KEYS; the lines it leaves (unusual ones) take this module's path, and tests
hold both to `json.dumps(record.to_json())` byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import ModuleType
from typing import Final

from monitord.audit.parser import (
    ACCELERATOR_MODULE,
    Ignored,
    Reader,
    RecordLines,
    _BoundedCache,
    region_reader,
    split_header,
)

# The compact, ASCII form `monitord parse` prints.
dumps: Final[Callable[[object], str]] = json.JSONEncoder(separators=(",", ":")).encode
# The document's head, filled in per line: json's forms of a str (%s, from dumps), an int
# (%d), a float (%r is repr, which json uses) and None (%s of b"null").
_HEAD: Final = b'{"type":%s,"type_id":%d,"time":%r,"serial":%d,"node":%s,'
HEAD_KEYS: Final = ("type", "type_id", "time", "serial", "node")


class JsonLines:
    """Candidate lines -> JSON lines (bytes, newline included), `Ignored`, or ParseError."""

    def __init__(self, records: RecordLines) -> None:
        self._records = records
        self._tails: _BoundedCache[bytes, bytes] = _BoundedCache()
        self._names: _BoundedCache[str | None, bytes] = _BoundedCache(1024)

    def line(self, line: bytes) -> bytes | Ignored:
        head = split_header(line)
        if type(head) is Ignored:
            return head
        return self.head(*head)  # type: ignore[misc]

    def head(
        self, tname: str, type_id: int, time: float, serial: int, node: str | None, tail: bytes
    ) -> bytes | Ignored:
        rest = self._tails.get(tail)
        if rest is None:
            record = self._records.head(tname, type_id, time, serial, node, tail)
            if type(record) is Ignored:
                return record
            doc = record.to_json()  # type: ignore[union-attr]
            for key in HEAD_KEYS:
                del doc[key]
            rest = self._tails.put(tail, dumps(doc)[1:].encode() + b"\n")
        names = self._names
        jtype = names.get(tname) or names.put(tname, dumps(tname).encode())
        jnode = names.get(node) or names.put(node, dumps(node).encode())
        return _HEAD % (jtype, type_id, time, serial, jnode) + rest


def json_reader(fast: ModuleType | None = ACCELERATOR_MODULE) -> Reader[bytes]:
    """Candidate lines -> JSON lines, through `fast` (the C leaf; None: pure Python)."""
    lines = JsonLines(RecordLines(fast))
    return Reader(lines.line, lines.head, region_reader(fast, json=True))
