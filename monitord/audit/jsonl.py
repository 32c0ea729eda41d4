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
from collections.abc import Callable, Sequence
from functools import cache
from types import ModuleType
from typing import Any, Final, cast

from monitord.audit import record
from monitord.audit.parser import (
    ACCELERATOR_MODULE,
    TAIL_PARTS,
    Ignored,
    Reader,
    RecordLines,
    Tail,
    _BoundedCache,
    region_reader,
    split_header,
    stamp_of,
)
from monitord.audit.record import result_of

# The compact, ASCII form `monitord parse` prints.
dumps: Final[Callable[[object], str]] = json.JSONEncoder(
    separators=(",", ":"), check_circular=False
).encode
# The document's head: what the header gives, in DOCUMENT_KEYS' order. The type and node
# are filled in once per line shape; time (%r is repr, as json writes floats) and serial
# (%d) per line.
_HEAD: Final = b'{"type":%s,"type_id":%d,"time":%%r,"serial":%%d,"node":%s,'
HEAD_KEYS: Final = ("type", "type_id", "time", "serial", "node")
_RESULT: Final = -1
_FIELD: Final = -2


@cache
def _layout(keys: tuple[str, ...]) -> tuple[tuple[str, int, str], ...]:
    """Each document key after the head: its JSON prefix and where its value is: a part of
    the line's parser.Tail, the record's result, or else the inner field of that name (as
    AuditRecord's properties `virt`, `vm`... read them)."""
    return tuple(
        (
            dumps(key) + ":",
            TAIL_PARTS.index(key) if key in TAIL_PARTS else _RESULT if key == "result" else _FIELD,
            key,
        )
        for key in keys
        if key not in HEAD_KEYS
    )


class JsonLines:
    """Candidate lines -> JSON lines (bytes, newline included), `Ignored`, or ParseError."""

    def __init__(self, records: RecordLines) -> None:
        self._records = records
        # (line before ` msg=audit(`, line from its `)`) -> the line's JSON as a %-template
        self._lines: _BoundedCache[tuple[bytes, bytes], bytes] = _BoundedCache(1 << 13)
        self._rests: _BoundedCache[bytes, bytes] = _BoundedCache(1 << 13)  # tail -> its JSON
        self._json: _BoundedCache[object, str] = _BoundedCache()  # str, int or None -> JSON
        self._pairs: _BoundedCache[tuple[str, str | None], str] = _BoundedCache()

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
        made = self._template(head)  # type: ignore[arg-type]
        if type(made) is Ignored:
            return made
        self._lines.put(key, made)  # type: ignore[arg-type]
        return made % head[2:4]  # type: ignore[index,operator]

    def _template(self, head: Sequence[Any]) -> bytes | Ignored:
        tname, type_id, _, _, node, tail = head
        rest = self._rests.get(tail)
        if rest is None:
            decoded = self._records.decoded(tail)  # raises ParseError
            if type(decoded) is Ignored:
                return decoded
            rest = self._rests.put(tail, self._rest(decoded))  # type: ignore[arg-type]
        get, scalar = self._json.get, self._scalar
        jtype, jnode = get(tname) or scalar(tname), get(node) or scalar(node)
        # The head is a %-template too: a % of the node's (or type's) is doubled.
        jtype, jnode = jtype.replace("%", "%%"), jnode.replace("%", "%%")
        head = _HEAD % (jtype.encode(), type_id, jnode.encode())
        return head + rest

    def _rest(self, decoded: Tail) -> bytes:
        """The document after its head for a decoded tail, %-escaped, with `}` and newline."""
        fields = decoded[TAIL_PARTS.index("fields")]
        get, scalar = self._json.get, self._scalar  # a hit costs no call: the values recur
        parts = []
        for prefix, where, key in _layout(record.DOCUMENT_KEYS):
            value = (
                decoded[where]
                if where >= 0
                else result_of(fields)  # type: ignore[arg-type]
                if where == _RESULT
                else fields.get(key)  # type: ignore[union-attr]
            )
            if type(value) is dict:
                pairs = list(map(self._pairs.get, value.items()))  # one C loop when all known
                if None in pairs:
                    pairs = [p or self._pair(*kv) for p, kv in zip(pairs, value.items())]  # noqa: B905
                parts.append(prefix + "{" + ",".join(cast(list[str], pairs)) + "}")
            else:
                parts.append(prefix + (get(value) or scalar(value)))
        return (",".join(parts) + "}\n").encode().replace(b"%", b"%%")

    def _pair(self, key: str, value: str | None) -> str:
        """`"key":value` of a dict's item, kept (fields and enrichment recur)."""
        get, scalar = self._json.get, self._scalar
        pair = (get(key) or scalar(key)) + ":" + (get(value) or scalar(value))
        return self._pairs.put((key, value), pair)

    def _scalar(self, value: object) -> str:
        """json.dumps of a str, an int or None, kept (the same values recur)."""
        return self._json.put(value, dumps(value))


def json_reader(fast: ModuleType | None = ACCELERATOR_MODULE) -> Reader[bytes]:
    """Candidate lines -> JSON lines, through `fast` (the C leaf; None: pure Python)."""
    lines = JsonLines(RecordLines())
    return Reader(lines.line, None, region_reader(fast, None))
