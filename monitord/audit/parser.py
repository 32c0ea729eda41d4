"""Audit log text -> `AuditRecord`: a pure, total parser with a closed set of errors.

Every line ends as a record, an ignored line (counted by reason) or a
`ParseError` with a reason from `PARSE_ERROR_REASONS`. Most lines of a real
audit log are not VIRT records, so `StreamParser` finds candidate lines in
whole chunks of bytes and reads only those.

A line is read in two steps: its header (`[node=NAME ]type=TYPE msg=audit(TIME:SERIAL)`)
and its tail (everything after the stamp). libvirt repeats its tails verbatim (the same
daemon, guest and device in record after record), so decoded tails are cached by their
bytes and most records cost a header split and a dict lookup.

The optional C leaf (`monitord.audit._fastparse`, see `_load_accelerator`) does the same
two steps for whole regions of a chunk; it gets every table below at set-up, and hands
every line it does not read in full back to this module, which stays the reference.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any, Final, Generic, Literal, TypeVar, cast, get_args, overload

from monitord.audit.encoding import decode_hex
from monitord.audit.record import (
    DOCUMENT_KEYS,
    RESULT_KEY,
    RESULTS,
    AuditRecord,
    make_record,
    to_int,
)
from monitord.audit.types import VIRT_FIRST, VIRT_LAST, VIRT_NUMBERS, type_name

ParseErrorReason = Literal[
    "line_too_long",
    "bad_header",
    "bad_timestamp",
    "no_message",
    "unbalanced_quote",
    "bad_uuid",
]
PARSE_ERROR_REASONS: Final[tuple[ParseErrorReason, ...]] = get_args(ParseErrorReason)

IgnoredReason = Literal["not_virt", "not_libvirt"]
IGNORED_REASONS: Final[tuple[IgnoredReason, ...]] = get_args(IgnoredReason)

DEFAULT_MAX_LINE_LENGTH: Final = 64 * 1024


class ParseError(Exception):
    """A line that looks like a VIRT record but cannot be read as one."""

    def __init__(self, reason: ParseErrorReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: ParseErrorReason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Ignored:
    """A line that is well-formed but not a libvirt VIRT record."""

    reason: IgnoredReason


NOT_VIRT: Final = Ignored("not_virt")
NOT_LIBVIRT: Final = Ignored("not_libvirt")

# ---- the tables (the C leaf gets each of them at set-up: TABLES) ---------------------------

# Fields libvirt never encodes (docs/FORMATS.md): hex-looking values stay as they are.
_RAW_KEYS: Final = frozenset(
    "virt op reason resrc uuid vm-pid init-pid pid-ns old-mem new-mem old-vcpu new-vcpu "
    "old-iothread new-iothread net rdev bus class category maj acl size vm-ctx img-ctx "
    "model res hostname addr terminal user auid uid".split()
)
# Fields libvirt writes through virAuditEncode (and `exe`, which libaudit encodes).
_ENCODED_KEYS: Final = frozenset({"vm", "device", "disk", "chardev", "cgroup", "exe"})
# Other keys with these prefixes are libvirt's device changes (old-disk=, new-rng=...): encoded.
_ENCODED_PREFIXES: Final = ("old-", "new-")
# `path` is encoded for `net reason=open` and `cgroup class=path`, raw elsewhere.
_PATH_KEY: Final = "path"
_RESRC_KEY: Final = "resrc"
_ENCODED_PATH_RESRC: Final = frozenset({"net", "cgroup"})
# A record is libvirt's when it has these inner fields (dockerd's VIRT_CONTROL has neither).
_UUID_KEY: Final = "uuid"
_LIBVIRT_KEYS: Final = frozenset({"virt", _UUID_KEY})
# The outer fields a record keeps: these as ints, then the SELinux context as text.
_OUTER_INTS: Final = ("pid", "uid", "auid", "ses")
_OUTER_TEXT: Final = "subj"
# A canonical UUID (RFC 4122 text form): `x` stands for a hex digit of either case, as the
# RFC reads input. libvirt writes lowercase; an uppercase one is kept as written.
UUID_SHAPE: Final = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
UUID_DIGITS: Final = "0123456789abcdefABCDEF"
# auditd names the types it has no name for UNKNOWN[N].
_UNKNOWN_PREFIX: Final = "UNKNOWN["
_UNKNOWN: Final = re.compile(re.escape(_UNKNOWN_PREFIX) + r"(\d+)\]\Z", re.ASCII)
# A line is a candidate when its header starts with one of these (the VIRT range, 25xx).
_NEEDLES: Final = (b"type=VIRT_", b"type=" + _UNKNOWN_PREFIX.encode() + b"25")
# auditd writes serials as unsigned longs: more digits than 2**64 has is not a serial.
_MAX_SERIAL_DIGITS: Final = 20
# 20 digits of seconds reach past year 10^12; longer stamps would overflow to inf.
_MAX_STAMP_LENGTH: Final = 32

TABLES: Final[dict[str, object]] = {
    "raw_keys": _RAW_KEYS,
    "encoded_keys": _ENCODED_KEYS,
    "encoded_prefixes": _ENCODED_PREFIXES,
    "path_key": _PATH_KEY,
    "resrc_key": _RESRC_KEY,
    "encoded_path_resrc": _ENCODED_PATH_RESRC,
    "libvirt_keys": _LIBVIRT_KEYS,
    "uuid_key": _UUID_KEY,
    "uuid_shape": UUID_SHAPE,
    "uuid_digits": UUID_DIGITS,
    "outer_ints": _OUTER_INTS,
    "outer_text": _OUTER_TEXT,
    "types": VIRT_NUMBERS,
    "virt_range": (VIRT_FIRST, VIRT_LAST),
    "unknown_prefix": _UNKNOWN_PREFIX,
    "needles": _NEEDLES,
    "max_serial_digits": _MAX_SERIAL_DIGITS,
    "max_stamp_length": _MAX_STAMP_LENGTH,
    "results": RESULTS,
    "result_key": RESULT_KEY,
    "document": DOCUMENT_KEYS,
}

_CACHE_LIMIT: Final = 1 << 14
_V = TypeVar("_V")
_T = TypeVar("_T")


class _BoundedCache(dict[_V, _T], Generic[_V, _T]):
    """A dict that forgets everything when full: repeats are common, memory stays bounded."""

    __slots__ = ("limit",)

    def __init__(self, limit: int = _CACHE_LIMIT) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: _V, value: _T) -> _T:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value


# ---- inner fields ----------------------------------------------------------------------------


def _is_encoded(key: str) -> bool:
    if key in _ENCODED_KEYS:
        return True
    if key in _RAW_KEYS:
        return False
    return key.startswith(_ENCODED_PREFIXES)


def decode_value(key: str, value: str, encoded: bool | None = None) -> str | None:
    """Decode one inner value: quoted -> content, hex -> text for encoded fields, `?` -> None."""
    if value.startswith('"'):
        content = value[1:-1] if len(value) >= 2 and value.endswith('"') else value[1:]
        return None if content == "?" else content
    if value == "?":
        return None
    if encoded if encoded is not None else _is_encoded(key):
        decoded = decode_hex(value)
        if decoded is not None:
            return decoded
    return value


# Tokens that mean the same wherever they stand, decoded: libvirt repeats most of them.
_TOKENS: Final[_BoundedCache[str, tuple[str, str | None]]] = _BoundedCache()


def _simple_token(token: str) -> tuple[str, str | None] | None:
    """Decode a token that means the same wherever it stands; None for the others."""
    key, sep, value = token.partition("=")
    if not sep or not key:
        return None  # empty (a run of spaces) or part of a raw value with a space
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            return None  # a quoted value with spaces
    elif key == _PATH_KEY and value != "?":
        return None  # hex or raw depends on `resrc`
    return _TOKENS.put(token, (key, decode_value(key, value)))


def parse_fields(inner: str) -> dict[str, str | None]:
    """Split and decode the inner `msg='...'` text into ordered fields; first duplicate wins."""
    # The common case: every token a self-contained `key=value`; map/dict run the loop in C.
    tokens = split = inner.split(" ")
    if "" in tokens:  # runs of spaces: skipped, as the slow path does
        tokens = [token for token in tokens if token]
    pairs = list(map(_TOKENS.get, tokens))
    if not all(pairs):  # a pair is a non-empty tuple: only a cache miss is falsy
        for i, pair in enumerate(pairs):
            if pair is None:
                pair = _simple_token(tokens[i])
                if pair is None:
                    return _parse_fields_slow(split)
                pairs[i] = pair
    fields = dict(pairs)  # type: ignore[arg-type]  # every pair is filled in by now
    if len(fields) != len(pairs):  # a duplicate key: the first occurrence wins
        fields = {}
        for key, value in pairs:  # type: ignore[misc]
            if key not in fields:
                fields[key] = value
    return fields


def _parse_fields_slow(tokens: list[str]) -> dict[str, str | None]:
    """Tokenise odd inner text: raw values with spaces, unbalanced quotes, runs of spaces."""
    fields: dict[str, str | None] = {}
    n = len(tokens)
    i = 0
    last_key: str | None = None
    resrc: str | None = None
    while i < n:
        token = tokens[i]
        i += 1
        if not token:
            continue
        key, sep, value = token.partition("=")
        if not sep or not key:
            # A raw value with a space in it (shmem/evdev paths): glue it back on.
            if last_key is not None:
                prev = fields[last_key]
                if prev is not None:
                    fields[last_key] = prev + " " + token
            continue
        if value.startswith('"') and (len(value) < 2 or not value.endswith('"')):
            # A quoted value with spaces (other writers than libvirt): join to the closing quote.
            parts = [value]
            while i < n and not tokens[i].endswith('"'):
                parts.append(tokens[i])
                i += 1
            if i < n:
                parts.append(tokens[i])
                i += 1
            value = " ".join(parts)
        if key in fields:
            last_key = None
            continue
        encoded = resrc in _ENCODED_PATH_RESRC if key == _PATH_KEY else None
        fields[key] = decoded = decode_value(key, value, encoded)
        if key == _RESRC_KEY:
            resrc = decoded
        # Only raw values may be continued by a following bare token.
        last_key = key if not value.startswith('"') else None
    return fields


# ---- the tail: `): outer msg='inner'` and the enrichment after 0x1D --------------------------

# (pid, uid, auid, ses, subj, fields, enrichment); the cached dicts are copied per record.
TAIL_PARTS: Final = (*_OUTER_INTS, _OUTER_TEXT, "fields", "enrichment")
Tail = tuple[
    int | None,
    int | None,
    int | None,
    int | None,
    str | None,
    dict[str, str | None],
    dict[str, str],
]
_Outer = tuple[int | None, int | None, int | None, int | None, str | None]
_OUTERS: Final[_BoundedCache[str, _Outer]] = _BoundedCache(1024)
_ENRICHMENTS: Final[_BoundedCache[str, dict[str, str]]] = _BoundedCache(256)


def _unquoted(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def _parse_outer(text: str) -> _Outer:
    outer: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in outer:
            outer[key] = value
    subj = outer.get(_OUTER_TEXT)
    pid, uid, auid, ses = (to_int(outer.get(key)) for key in _OUTER_INTS)
    return (pid, uid, auid, ses, None if subj in (None, "?") else subj)


def _parse_enrichment(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key and key not in out:
            out[key] = _unquoted(value)
    return out


@cache
def _uuid_pattern(shape: str, digits: str) -> re.Pattern[str]:
    return re.compile("".join(f"[{digits}]" if c == "x" else re.escape(c) for c in shape) + r"\Z")


def parse_tail(tail: str) -> Tail | Ignored:
    """Decode what follows the stamp (`): outer msg='inner'` and the enrichment).

    Depends on nothing before it, so the result can be cached by the tail's text.
    """
    gs = tail.find("\x1d")
    limit = gs if gs >= 0 else len(tail)
    start = tail.find("msg='", 0, limit)
    if start < 0:
        raise ParseError("no_message", tail[2:122])
    end = tail.rfind("'", start, limit)
    if end < start + 5:
        raise ParseError("unbalanced_quote", tail[start : start + 120])
    fields = parse_fields(tail[start + 5 : end])
    if not fields.keys() >= _LIBVIRT_KEYS:
        return NOT_LIBVIRT
    uuid = fields[_UUID_KEY]
    if uuid is None or not _uuid_pattern(UUID_SHAPE, UUID_DIGITS).match(uuid):
        raise ParseError("bad_uuid", (uuid or "?")[:120])
    outer_text = tail[2:start]
    outer = _OUTERS.get(outer_text)
    if outer is None:
        outer = _OUTERS.put(outer_text, _parse_outer(outer_text))
    enrichment: dict[str, str] = {}
    if gs >= 0:
        enr_text = tail[gs + 1 :]
        enrichment = _ENRICHMENTS.get(enr_text) or _ENRICHMENTS.put(
            enr_text, _parse_enrichment(enr_text)
        )
    return (*outer, fields, enrichment)


class RecordLines:
    """Candidate lines -> AuditRecords, their tails decoded once and kept by their bytes."""

    def __init__(self) -> None:
        self.tails: _BoundedCache[bytes, Tail | Ignored] = _BoundedCache(1 << 13)

    def line(self, line: bytes) -> AuditRecord | Ignored:
        """One line's record or Ignored; raises ParseError."""
        head = split_header(line)
        if type(head) is Ignored:
            return head
        tname, type_id, time, serial, node, tail = head  # type: ignore[misc]
        return self._record(tname, type_id, time, serial, node, self.decoded(tail))

    def decoded(self, tail: bytes) -> Tail | Ignored:
        """parse_tail of a tail's bytes, kept; raises ParseError."""
        decoded = self.tails.get(tail)
        if decoded is None:
            decoded = self.tails.put(tail, parse_tail(tail.decode("utf-8", "surrogateescape")))
        return decoded

    def head(self, item: Sequence[Any]) -> AuditRecord | Ignored:
        """The record of a line the C leaf read: (*Head without the tail's bytes, its decoded
        tail, the tail's bytes if new to `tails`)."""
        decoded = item[5]
        if item[6] is not None:
            self.tails.put(item[6], decoded)
        if type(decoded) is Ignored:
            return decoded
        pid, uid, auid, ses, subj, fields, enrichment = decoded  # _record's, without its call
        return make_record(
            item[0], item[1], item[2], item[3], item[4], pid, uid, auid, ses, subj,
            fields.copy(), enrichment.copy(),
        )  # fmt: skip

    @staticmethod
    def _record(
        tname: str, type_id: int, time: float, serial: int, node: str | None, decoded: Any
    ) -> AuditRecord | Ignored:
        if type(decoded) is Ignored:
            return decoded
        pid, uid, auid, ses, subj, fields, enrichment = decoded
        # Each record owns its dicts: the cached ones are never handed out.
        return make_record(
            tname, type_id, time, serial, node, pid, uid, auid, ses, subj,
            fields.copy(), enrichment.copy(),
        )  # fmt: skip


# ---- the header: `[node=NAME ]type=TYPE msg=audit(SECONDS.MMM:SERIAL)` ------------------------

# (type name, type number, time, serial, node, tail): a VIRT line's header, read.
Head = tuple[str, int, float, int, str | None, bytes]

_KNOWN_IDS: Final = frozenset(VIRT_NUMBERS.values())
_NOT_A_VIRT_TYPE: Final = ("", -1)
_TYPES: Final[_BoundedCache[bytes, tuple[str, int]]] = _BoundedCache(256)


def _type_of(name: str) -> tuple[str, int]:
    """The (name, number) a record type has; _NOT_A_VIRT_TYPE outside the VIRT range."""
    num = VIRT_NUMBERS.get(name)
    if num is None:
        m = _UNKNOWN.match(name)
        if m is None:
            return _NOT_A_VIRT_TYPE
        digits = m.group(1).lstrip("0")
        if len(digits) > 6:  # far outside the range (and int() of 5,000 digits raises)
            return _NOT_A_VIRT_TYPE
        num = int(digits or "0")
    if not VIRT_FIRST <= num <= VIRT_LAST:
        return _NOT_A_VIRT_TYPE
    return (type_name(num) if num in _KNOWN_IDS else name, num)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _bad_header(line: bytes) -> Ignored:
    """A line whose header cannot be read: an error if it names a VIRT type, else not ours."""
    pos = line.find(b" ") + 1 if line.startswith(b"node=") else 0
    if line.startswith(_NEEDLES, pos):
        raise ParseError("bad_header", _text(line[:120]))
    return NOT_VIRT


def split_header(line: bytes) -> Head | Ignored:
    """Read a line's header: its Head, NOT_VIRT, or ParseError (bad_header, bad_timestamp)."""
    if line.endswith((b"\n", b"\r")):
        line = line.rstrip(b"\r\n")
    # Split with bytes methods: a regex costs more than the rest of a cached record.
    node: str | None = None
    pos = 0
    if line.startswith(b"node="):
        pos = line.find(b" ") + 1
        if pos <= 0 or b"\t" in line[5:pos]:
            return _bad_header(line)
        node = _text(line[5 : pos - 1])
    if not line.startswith(b"type=", pos):
        return _bad_header(line)
    mark = line.find(b" msg=audit(", pos)
    if mark < 0:
        return _bad_header(line)
    close = line.find(b")", mark)
    if close < 0 or not line.startswith(b"):", close):
        return _bad_header(line)
    raw_type = line[pos + 5 : mark]
    kind = _TYPES.get(raw_type)  # only well-formed names are cached
    if kind is None:
        if not raw_type or b" " in raw_type or b"\t" in raw_type:
            return _bad_header(line)
        kind = _TYPES.put(raw_type, _type_of(_text(raw_type)))
    if kind is _NOT_A_VIRT_TYPE:
        return NOT_VIRT
    stamp = stamp_of(line[mark + 11 : close])
    if stamp is None:
        raise ParseError("bad_timestamp", _text(line[mark + 11 : close][:120]))
    return (kind[0], kind[1], stamp[0], stamp[1], node, line[close:])


def stamp_of(text: bytes) -> tuple[float, int] | None:
    """`TIME:SERIAL` of `msg=audit(TIME:SERIAL)` as (time, serial); None when malformed."""
    stamp, colon, serial = text.partition(b":")
    if (
        colon
        and serial.isdigit()  # bytes: ASCII digits only
        and stamp.replace(b".", b"", 1).isdigit()
        and len(stamp) <= _MAX_STAMP_LENGTH
        and len(serial.lstrip(b"0")) <= _MAX_SERIAL_DIGITS
    ):
        return (float(stamp), int(serial))
    return None


def parse_line(line: bytes | str) -> AuditRecord | Ignored:
    """Parse one audit.log line (or audisp plugin line) into a record.

    Returns `Ignored` for lines that are not VIRT records or not libvirt's,
    raises `ParseError` for VIRT lines that cannot be read. Text is read as its
    UTF-8 bytes (surrogate escapes included: the journal source decodes that way).
    """
    raw = line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")
    return _RECORDS.line(raw)


# ---- candidate lines -----------------------------------------------------------------------


def candidate_spans(
    buf: bytes | bytearray, end: int | None = None, start: int = 0
) -> list[tuple[int, int]]:
    """Return (start, end) of every line in buf[start:end] whose header names a VIRT type.

    buf[start:end] holds whole lines. A line counts when one of the needles is its
    header, at its start or right after `node=NAME `, and does not occur earlier in it.
    The needles are searched over bytes (at memchr-like speed), so the ~95% of lines
    that are not VIRT records are never decoded.
    """
    size = len(buf) if end is None else end
    spans = _needle_lines(buf, _NEEDLES[0], start, size)
    more = _needle_lines(buf, _NEEDLES[1], start, size)
    if more:
        spans = sorted(spans + more)  # both needles found lines: in line order
    return spans


def _needle_lines(
    buf: bytes | bytearray, needle: bytes, start: int, size: int
) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    find = buf.find
    pos = find(needle, start, size)
    while pos >= 0:
        line_start = buf.rfind(b"\n", start, pos) + 1 or start
        line_end = find(b"\n", pos, size)
        if line_end < 0:
            line_end = size
        # The needle's first occurrence in its line (the search goes on after the line):
        # the header when it stands first or right after the node name's space.
        if pos == line_start or (
            buf.startswith(b"node=", line_start) and find(b" ", line_start, pos) == pos - 1
        ):
            spans.append((line_start, line_end))
        pos = find(needle, line_end, size)
    return spans


# ---- streams -----------------------------------------------------------------------------------


@dataclass
class ParseStats:
    """Counters of what the parser saw; the daemon exports them as self-metrics."""

    lines: int = 0
    bytes: int = 0
    records: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "bytes": self.bytes,
            "records": self.records,
            "ignored": dict(self.ignored),
            "errors": dict(self.errors),
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> ParseStats:
        ignored = doc.get("ignored") or {}
        errors = doc.get("errors") or {}
        assert isinstance(ignored, dict) and isinstance(errors, dict)
        return cls(
            lines=int(doc.get("lines", 0)),  # type: ignore[call-overload]
            bytes=int(doc.get("bytes", 0)),  # type: ignore[call-overload]
            records=int(doc.get("records", 0)),  # type: ignore[call-overload]
            ignored=Counter(ignored),
            errors=Counter(errors),
        )


ErrorHandler = Callable[[ParseError, bytes], None]
# The C leaf's region(buf, start, end, max_line_length, tails): (lines, candidate lines,
# records in the runs, not_virt, not_libvirt, items). In line order, items are runs of JSON
# lines (bytes; tails None), (start, stop) spans of the lines Python reads, and for the lines
# C read (tails a dict) what RecordLines.head takes.
Region = tuple[int, int, int, int, int, list[object]]
RegionReader = Callable[[bytes | bytearray, int, int, int], Region]


@dataclass(frozen=True, slots=True)
class Reader(Generic[_T]):
    """What StreamParser makes of the candidate lines.

    `line` reads one line (an `_T`, an `Ignored`, or ParseError raised); `region` (the C
    leaf, None for pure Python) reads whole regions, and `head` makes an `_T` of a line it
    read (None: its region makes runs of `_T` bytes instead).
    """

    line: Callable[[bytes], _T | Ignored]
    head: Callable[[Sequence[Any]], _T | Ignored] | None
    region: RegionReader | None = None


@cache
def record_reader(fast: ModuleType | None) -> Reader[AuditRecord]:
    """Candidate lines -> AuditRecords, through `fast` (the C leaf; None: pure Python)."""
    lines = RecordLines()
    return Reader(lines.line, lines.head, region_reader(fast, lines.tails))


def region_reader(fast: ModuleType | None, tails: dict[bytes, Any] | None) -> RegionReader | None:
    """The C leaf's region(): JSON lines (tails None), or lines read with their tails looked
    up in `tails`; None without the leaf."""
    if fast is None:
        return None
    region_of = fast.region

    def region(buf: bytes | bytearray, start: int, end: int, max_len: int) -> Region:
        return region_of(buf, start, end, max_len, tails)  # type: ignore[no-any-return]

    return region


class StreamParser(Generic[_T]):
    """Turn a byte stream into records (or what `reader` makes of lines): whole lines only,
    bounded memory.

    A partial last line is kept until its newline arrives; a line longer than
    `max_line_length` is counted as `line_too_long` and skipped without being
    buffered.
    """

    @overload
    def __init__(
        self: StreamParser[AuditRecord],
        stats: ParseStats | None = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        on_error: ErrorHandler | None = None,
        *,
        accelerated: bool = True,
    ) -> None: ...

    @overload
    def __init__(
        self,
        stats: ParseStats | None = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        on_error: ErrorHandler | None = None,
        *,
        reader: Reader[_T],
    ) -> None: ...

    def __init__(
        self,
        stats: ParseStats | None = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        on_error: ErrorHandler | None = None,
        *,
        accelerated: bool = True,
        reader: Reader[Any] | None = None,
    ) -> None:
        self.stats = stats if stats is not None else ParseStats()
        if reader is None:
            reader = record_reader(ACCELERATOR_MODULE if accelerated else None)
        self.reader = cast(Reader[_T], reader)
        self.max_line_length = max_line_length
        self.on_error = on_error
        self._partial = b""
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes held back as a partial line (not yet part of any record)."""
        return len(self._partial)

    def reset(self) -> None:
        """Forget any partial line (the file it came from was replaced)."""
        self._partial = b""
        self._discarding = False

    def resume(self, partial: bytes, discarding: bool = False) -> None:
        """Continue a stream cut mid-line: `partial` is the unfinished line before the cut
        (`discarding`: the parser there was skipping an over-long line instead).

        A parser fed the stream from the cut on then behaves exactly like one fed
        it from the start (whose state at the cut was this), except that
        `stats.bytes` counts only what it was fed.
        """
        self._partial = partial
        self._discarding = discarding

    def state(self) -> tuple[int, bool]:
        """The length of the partial line held, and whether an over-long line is being skipped."""
        return len(self._partial), self._discarding

    def feed(self, chunk: bytes | bytearray) -> list[_T]:
        """Consume bytes; return the outcomes of every line completed by them."""
        stats = self.stats
        stats.bytes += len(chunk)
        start = 0
        if self._discarding:
            start = chunk.find(b"\n") + 1
            if start <= 0:
                return []
            self._discarding = False
            stats.lines += 1
        last_nl = chunk.rfind(b"\n", start)
        if last_nl < 0:
            self._hold(self._partial + chunk[start:])
            return []
        out: list[_T] = []
        if self._partial:
            # The held line, now complete, first (its errors are reported first too); the
            # chunk is not joined to it.
            nl = chunk.find(b"\n", start) + 1
            head, start = self._partial + chunk[start:nl], nl
            out = self._parse_lines(head, 0, len(head))
        self._hold(bytes(chunk[last_nl + 1 :]))
        return out + self._parse_lines(chunk, start, last_nl + 1)

    def finish(self) -> list[_T]:
        """Treat a remaining partial line as complete (end of a finished input)."""
        rest, self._partial = self._partial, b""
        self._discarding = False
        if not rest:
            return []
        return self._parse_lines(rest + b"\n", 0, len(rest) + 1)

    def _hold(self, tail: bytes) -> None:
        if len(tail) > self.max_line_length:
            self._partial = b""
            self._discarding = True
            self._error(ParseError("line_too_long", f"{len(tail)}+ bytes"), tail[:200])
        else:
            self._partial = tail

    def _parse_lines(self, buf: bytes | bytearray, start: int, end: int) -> list[_T]:
        """The outcomes of the candidate lines among the whole lines of buf[start:end]."""
        stats = self.stats
        reader = self.reader
        items: list[Any]
        if reader.region is not None:
            nlines, candidates, records, not_virt, not_libvirt, items = reader.region(
                buf, start, end, self.max_line_length
            )
        else:
            # buf[end:] holds no newline. Counting by deletion runs at memchr speed;
            # bytes.count(b"\n") is several times slower (it is used on the short head).
            nlines = len(buf) - len(buf.replace(b"\n", b"")) - buf.count(b"\n", 0, start)
            items = candidate_spans(buf, end, start)
            candidates = len(items)
            records = not_virt = not_libvirt = 0
        stats.lines += nlines
        ignored = stats.ignored
        ignored["not_virt"] += nlines - candidates + not_virt
        if not_libvirt:
            ignored["not_libvirt"] += not_libvirt
        out: list[Any] = []
        runs = 0
        line, head, max_len = reader.line, reader.head, self.max_line_length
        for item in items:
            if type(item) is bytes:  # a run of outputs the C leaf made (records counted)
                out.append(item)
                runs += 1
                continue
            if len(item) > 2:  # a line the C leaf read (and found no fault in)
                outcome = head(item)  # type: ignore[misc]
            else:
                first, stop = item
                try:
                    if stop - first > max_len:
                        raise ParseError("line_too_long", f"{stop - first} bytes")
                    outcome = line(bytes(buf[first:stop]))
                except ParseError as err:
                    self._error(err, bytes(buf[first:stop]))
                    continue
            if type(outcome) is Ignored:
                ignored[outcome.reason] += 1
            else:
                out.append(outcome)
        stats.records += records + len(out) - runs
        return out

    def _error(self, err: ParseError, line: bytes) -> None:
        self.stats.errors[err.reason] += 1
        if self.on_error is not None:
            self.on_error(err, line)


def _load_accelerator() -> ModuleType | None:
    """The optional C leaf, set up with TABLES; None when not built or MONITORD_PURE_PYTHON."""
    if os.environ.get("MONITORD_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from monitord.audit import _fastparse
    except ImportError:  # not built (no compiler at install time): the Python path
        return None
    _fastparse.setup(TABLES)
    return _fastparse


ACCELERATOR_MODULE: Final = _load_accelerator()
_RECORDS: Final = RecordLines()
# Which path the parser takes: "c" (the C leaf, Python for unusual lines) or "python".
ACCELERATOR: Final = "c" if ACCELERATOR_MODULE is not None else "python"
