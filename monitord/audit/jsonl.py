"""Audit lines -> their `monitord parse` JSON lines: `json.dumps(record.to_json())`, fast.

The document is `AuditRecord.to_json()` (its keys: record.DOCUMENT_KEYS). Of a line, only
the time and serial of its stamp change the document from line to line: everything else
follows from the rest of the line. So the document is serialised once per distinct rest
of line, with the time and serial left as `%r`/`%d`; every repeat of that rest costs a
dict lookup and a `%`. With the C leaf, `json_reader` lets it write whole runs of JSON
lines from the same DOCUMENT_KEYS; the lines it leaves (unusual ones) take this path, and
tests hold both to `json.dumps(record.to_json())` byte for byte.
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
    stamp_of,
)
from monitord.audit.record import AuditRecord

# The compact, ASCII form `monitord parse` prints.
dumps: Final[Callable[[object], str]] = json.JSONEncoder(
    separators=(",", ":"), check_circular=False
).encode
# The document's head: what the header gives, in DOCUMENT_KEYS' order. The type and node
# are filled in once per line shape; time (%r is repr, as json writes floats) and serial
# (%d) per line.
_HEAD: Final = b'{"type":%s,"type_id":%d,"time":%%r,"serial":%%d,"node":%s,'
HEAD_KEYS: Final = ("type", "type_id", "time", "serial", "node")


class JsonLines:
    """Candidate lines -> JSON lines (bytes, newline included), `Ignored`, or ParseError."""

    def __init__(self, records: RecordLines) -> None:
        self._records = records
        # (line before ` msg=audit(`, line from its `)`) -> the line's JSON as a %-template
        self._lines: _BoundedCache[tuple[bytes, bytes], bytes] = _BoundedCache(1 << 13)
        self._rests: _BoundedCache[bytes, bytes] = _BoundedCache(1 << 13)  # tail -> its JSON

    def line(self, line: bytes) -> bytes | Ignored:
        mark = line.find(b" msg=audit(")
        close = line.find(b")", mark)
        # The key keeps both parts apart: joined, a `)` could move from one to the other.
        key = (line[:mark], line[close:])
        template = self._lines.get(key)
        if template is not None:
            stamp = stamp_of(line[mark + 11 : close])
            if stamp is not None:
                return template % stamp
        head = split_header(line)  # raises ParseError as parse_line does
        if type(head) is Ignored:
            return head
        made = self._template(*head)  # type: ignore[misc]
        if type(made) is Ignored:
            return made
        self._lines.put(key, made)  # type: ignore[arg-type]
        return made % head[2:4]  # type: ignore[index,operator]

    def head(
        self, tname: str, type_id: int, time: float, serial: int, node: str | None, tail: bytes
    ) -> bytes | Ignored:
        template = self._template(tname, type_id, time, serial, node, tail)
        return template if type(template) is Ignored else template % (time, serial)  # type: ignore[operator]

    def _template(
        self, tname: str, type_id: int, time: float, serial: int, node: str | None, tail: bytes
    ) -> bytes | Ignored:
        rest = self._rests.get(tail)
        if rest is None:
            record = self._records.head(tname, type_id, time, serial, node, tail)
            if type(record) is Ignored:
                return record
            doc = AuditRecord.to_json(record)  # type: ignore[arg-type]
            for key in HEAD_KEYS:
                del doc[key]
            rest = self._rests.put(tail, dumps(doc)[1:].encode().replace(b"%", b"%%") + b"\n")
        return _HEAD % (dumps(tname).encode(), type_id, dumps(node).encode()) + rest


def json_reader(fast: ModuleType | None = ACCELERATOR_MODULE) -> Reader[bytes]:
    """Candidate lines -> JSON lines, through `fast` (the C leaf; None: pure Python)."""
    lines = JsonLines(RecordLines(fast))
    return Reader(lines.line, lines.head, region_reader(fast, json=True))
