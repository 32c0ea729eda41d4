"""Audit log text -> `AuditRecord`: a pure, total parser with a closed set of errors.

Every line ends as a record, an ignored line (counted by reason) or a
`ParseError` with a reason from `PARSE_ERROR_REASONS`. Most lines of a real
audit log are not VIRT records, so `StreamParser` finds candidate lines in
whole chunks of bytes and decodes only those.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Final, Generic, Literal, TypeVar, cast

from monitord.audit.encoding import decode_hex
from monitord.audit.record import AuditRecord, make_record, to_int
from monitord.audit.types import VIRT_FIRST, VIRT_LAST, VIRT_NUMBERS, type_name

ParseErrorReason = Literal[
    "line_too_long",
    "bad_header",
    "bad_timestamp",
    "no_message",
    "unbalanced_quote",
]
PARSE_ERROR_REASONS: Final[tuple[ParseErrorReason, ...]] = (
    "line_too_long",
    "bad_header",
    "bad_timestamp",
    "no_message",
    "unbalanced_quote",
)

IgnoredReason = Literal["not_virt", "not_libvirt"]
IGNORED_REASONS: Final[tuple[IgnoredReason, ...]] = ("not_virt", "not_libvirt")

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

# `[node=NAME ]type=TYPE msg=audit(SECONDS.MMM:SERIAL): `
_UNKNOWN: Final = re.compile(r"UNKNOWN\[(\d+)\]\Z", re.ASCII)

# Fields libvirt never encodes (FORMATS.md section 2): hex-looking values stay as they are.
_RAW_KEYS: Final = frozenset(
    "virt op reason resrc uuid vm-pid init-pid pid-ns old-mem new-mem old-vcpu new-vcpu "
    "old-iothread new-iothread net rdev bus class category maj acl size vm-ctx img-ctx "
    "model res hostname addr terminal user auid uid".split()
)
# Fields libvirt writes through virAuditEncode (and `exe`, which libaudit encodes).
_ENCODED_KEYS: Final = frozenset({"vm", "device", "disk", "chardev", "cgroup", "exe"})
# `path` is encoded for `net reason=open` and `cgroup class=path`, raw elsewhere.
_ENCODED_PATH_RESRC: Final = frozenset({"net", "cgroup"})

_TOKEN_CACHE_LIMIT: Final = 1 << 14
_V = TypeVar("_V")
_T = TypeVar("_T")


def _is_encoded(key: str) -> bool:
    if key in _ENCODED_KEYS:
        return True
    if key in _RAW_KEYS:
        return False
    return key.startswith(("old-", "new-"))


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


class _TokenCache:
    """Decoded `key=value` tokens: libvirt repeats most of them (virt, exe, uuid, res...)."""

    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map: dict[str, tuple[str, str | None]] = {}

    def decode(self, token: str) -> tuple[str, str | None] | None:
        hit = self._map.get(token)
        if hit is not None:
            return hit
        key, sep, value = token.partition("=")
        if not sep or not key:
            return None
        pair = (key, decode_value(key, value))
        if len(self._map) >= _TOKEN_CACHE_LIMIT:
            self._map.clear()
        self._map[token] = pair
        return pair


_CACHE = _TokenCache()


def parse_fields(inner: str) -> dict[str, str | None]:
    """Split and decode the inner `msg='...'` text into ordered fields; first duplicate wins."""
    # The common case: every token a self-contained `key=value` whose decoding does not
    # depend on its neighbours, so it can be cached by its text; map/dict run the loop in C.
    tokens = inner.split(" ")
    pairs = list(map(_SIMPLE_TOKENS.get, tokens))
    if not all(pairs):  # a pair is a non-empty tuple: only a cache miss is falsy
        for i, pair in enumerate(pairs):
            if pair is None:
                pair = _simple_token(tokens[i])
                if pair is None:
                    return _parse_fields_slow(inner)
                pairs[i] = pair
    complete = cast(list[tuple[str, str | None]], pairs)
    fields = dict(complete)
    if len(fields) != len(complete):  # a duplicate key: the first occurrence wins
        fields = {}
        for key, value in complete:
            if key not in fields:
                fields[key] = value
    return fields


_SIMPLE_TOKENS: dict[str, tuple[str, str | None]] = {}


def _simple_token(token: str) -> tuple[str, str | None] | None:
    """Decode a token that means the same wherever it stands; None for the others."""
    key, sep, value = token.partition("=")
    if not sep or not key:
        return None  # empty (a run of spaces) or part of a raw value with a space
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            return None  # a quoted value with spaces
    elif key == "path" and value != "?":
        return None  # hex or raw depends on `resrc`
    pair = (key, decode_value(key, value))
    if len(_SIMPLE_TOKENS) >= _TOKEN_CACHE_LIMIT:
        _SIMPLE_TOKENS.clear()
    _SIMPLE_TOKENS[token] = pair
    return pair


def _parse_fields_slow(inner: str) -> dict[str, str | None]:
    """Tokenise odd inner text: raw values with spaces, unbalanced quotes, runs of spaces."""
    fields: dict[str, str | None] = {}
    tokens = inner.split(" ")
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
            parts = [token]
            while i < n and not tokens[i].endswith('"'):
                parts.append(tokens[i])
                i += 1
            if i < n:
                parts.append(tokens[i])
                i += 1
            token = " ".join(parts)
            value = token.partition("=")[2]
        if key in fields:
            last_key = None
            continue
        if key == "path":
            decoded = decode_value(key, value, encoded=resrc in _ENCODED_PATH_RESRC)
            fields[key] = decoded
        else:
            pair = _CACHE.decode(token)
            decoded = pair[1] if pair is not None else value
            fields[key] = decoded
            if key == "resrc":
                resrc = decoded
        # Only raw values may be continued by a following bare token.
        last_key = key if not value.startswith('"') else None
    return fields


def _parse_enrichment(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key and key not in out:
            out[key] = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    return out


def _parse_outer(text: str) -> _Outer:
    outer: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in outer:
            outer[key] = value
    subj = outer.get("subj")
    return (
        to_int(outer.get("pid")),
        to_int(outer.get("uid")),
        to_int(outer.get("auid")),
        to_int(outer.get("ses")),
        None if subj in (None, "?") else subj,
    )


_KNOWN_IDS: Final = frozenset(VIRT_NUMBERS.values())


def _type_of(name: str) -> tuple[str, int] | None:
    """Return the (name, number) a record type has, None outside the VIRT range."""
    num = VIRT_NUMBERS.get(name)
    if num is None:
        m = _UNKNOWN.match(name)
        if m is None:
            return None
        num = int(m.group(1))
    if not VIRT_FIRST <= num <= VIRT_LAST:
        return None
    return (type_name(num) if num in _KNOWN_IDS else name, num)


class _BoundedCache(dict[str, _V], Generic[_V]):
    """A dict that forgets everything when full: repeats are common, memory stays bounded."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: str, value: _V) -> _V:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value


# libvirt repeats itself: the daemon's pid/uid/subj prefix, the enrichment, and most inner
# messages (every device of a guest at each start) recur verbatim. Everything after the
# `audit(TIME:SERIAL)` stamp is cached as one decoded tail, so most records cost one
# dict lookup; the outer and enrichment caches serve the tails seen for the first time.
_Outer = tuple[int | None, int | None, int | None, int | None, str | None]
# (pid, uid, auid, ses, subj, fields, enrichment): the cached dicts are copied per record.
_Tail = tuple[
    int | None,
    int | None,
    int | None,
    int | None,
    str | None,
    dict[str, str | None],
    dict[str, str],
]
_NOT_A_VIRT_TYPE: Final = ("", -1)
_TYPES: Final[_BoundedCache[tuple[str, int]]] = _BoundedCache(256)
_OUTERS: Final[_BoundedCache[_Outer]] = _BoundedCache(1024)
_TAILS: Final[_BoundedCache[_Tail | Ignored]] = _BoundedCache(8192)
_ENRICHMENTS: Final[_BoundedCache[dict[str, str]]] = _BoundedCache(256)
_VIRT_HINTS: Final = ("type=VIRT_", "type=UNKNOWN[25")


def _bad_header(text: str) -> Ignored:
    """A line whose header cannot be read: an error if it names a VIRT type, else not ours."""
    pos = text.find(" ") + 1 if text.startswith("node=") else 0
    if text.startswith(_VIRT_HINTS, pos):
        raise ParseError("bad_header", text[:120])
    return NOT_VIRT


def _parse_tail(tail: str) -> _Tail | Ignored:
    """Decode what follows the stamp (`): outer msg='inner'` and the enrichment).

    Depends on nothing before it, so the result is cached by the tail's text.
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
    if "virt" not in fields or "uuid" not in fields:
        return NOT_LIBVIRT
    outer_text = tail[2:start]
    outer = _OUTERS.get(outer_text)
    if outer is None:
        outer = _OUTERS.put(outer_text, _parse_outer(outer_text))
    enrichment: dict[str, str] = {}
    if gs >= 0:
        enr_text = tail[gs + 1 :]
        cached = _ENRICHMENTS.get(enr_text)
        if cached is None:
            cached = _ENRICHMENTS.put(enr_text, _parse_enrichment(enr_text))
        enrichment = cached
    return (*outer, fields, enrichment)


def parse_line(line: bytes | str) -> AuditRecord | Ignored:
    """Parse one audit.log line (or audisp plugin line) into a record.

    Returns `Ignored` for lines that are not VIRT records or not libvirt's,
    raises `ParseError` for VIRT lines that cannot be read.
    """
    text = line if isinstance(line, str) else line.decode("utf-8", "surrogateescape")
    if text.endswith(("\n", "\r")):
        text = text.rstrip("\r\n")
    # `[node=NAME ]type=TYPE msg=audit(SECONDS.MMM:SERIAL): ` split with str methods: a regex
    # costs more than the rest of a cached record.
    node: str | None = None
    pos = 0
    if text.startswith("node="):
        pos = text.find(" ") + 1
        if pos <= 0:
            return _bad_header(text)
        node = text[5 : pos - 1]
        if "\t" in node:
            return _bad_header(text)
    if not text.startswith("type=", pos):
        return _bad_header(text)
    mark = text.find(" msg=audit(", pos)
    if mark < 0:
        return _bad_header(text)
    close = text.find(")", mark)
    if close < 0 or not text.startswith("):", close):
        return _bad_header(text)
    tname = text[pos + 5 : mark]
    kind = _TYPES.get(tname)  # only well-formed names are cached
    if kind is None:
        if not tname or _has_space(tname):
            return _bad_header(text)
        kind = _TYPES.put(tname, _type_of(tname) or _NOT_A_VIRT_TYPE)
    if kind is _NOT_A_VIRT_TYPE:
        return NOT_VIRT
    stamp, colon, serial_text = text[mark + 11 : close].partition(":")
    if not (
        colon
        and serial_text.isdigit()
        and stamp.replace(".", "", 1).isdigit()
        and stamp.isascii()
        and serial_text.isascii()
        # 20 digits of seconds reach past year 10^12; more would overflow to inf.
        and len(stamp) <= 32
    ):
        raise ParseError("bad_timestamp", f"{stamp}:{serial_text}")
    tail_text = text[close:]
    tail = _TAILS.get(tail_text)
    if tail is None:
        tail = _TAILS.put(tail_text, _parse_tail(tail_text))
    if isinstance(tail, Ignored):
        return tail
    pid, uid, auid, ses, subj, fields, enrichment = tail
    return make_record(
        kind[0],
        kind[1],
        float(stamp),
        int(serial_text),
        node,
        pid,
        uid,
        auid,
        ses,
        subj,
        fields.copy(),  # each record owns its dicts: the cached ones are never handed out
        enrichment.copy(),
    )


def _has_space(text: str) -> bool:
    return " " in text or "\t" in text


_NEEDLES: Final = (b"type=VIRT_", b"type=UNKNOWN[25")
# Either needle and the rest of its line: one pass over the chunk finds both, in order.
_CANDIDATE: Final = re.compile(rb"type=(?:VIRT_|UNKNOWN\[25)[^\n]*")


def candidate_spans(
    buf: bytes | bytearray, end: int | None = None, start: int = 0
) -> list[tuple[int, int]]:
    """Return (start, end) of every line in buf[start:end] whose header names a VIRT type.

    buf[start:end] holds whole lines. The search runs over bytes (one regex pass whose
    literal prefix is found at memchr speed), so the ~95% of lines that are not VIRT
    records are never decoded.
    """
    spans: list[tuple[int, int]] = []
    size = len(buf) if end is None else end
    rfind = buf.rfind
    append = spans.append
    for m in _CANDIDATE.finditer(buf, start, size):
        pos, line_end = m.span()
        line_start = rfind(b"\n", 0, pos) + 1
        # The needle must be the line's header: at its start or right after `node=NAME `.
        if pos == line_start or (
            buf.startswith(b"node=", line_start)
            and (
                buf.find(b" ", line_start, pos) == pos - 1
                or _other_needle_heads(buf, pos, line_start, line_end)
            )
        ):
            append((line_start, line_end))
    return spans


def _other_needle_heads(buf: bytes, pos: int, line_start: int, line_end: int) -> bool:
    """A needle inside the node name: the line still counts if the header is the other needle.

    Each needle is judged by its first occurrence in the line (the historic two-pass
    search), so a header whose own needle also occurs in the node name does not count.
    """
    head = buf.find(b" ", line_start, line_end) + 1
    if head <= pos:
        return False  # the match lies after the header, which holds neither needle
    first, second = _NEEDLES
    other = second if buf.startswith(first, pos) else first
    return buf.startswith(other, head) and buf.find(other, line_start, head) < 0


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
# One candidate line -> what the caller wants of it (a record, its JSON line...), or
# Ignored; raises ParseError for malformed lines, exactly as parse_line does.
LineConverter = Callable[[bytes], _T | Ignored]
# A whole region at once (the C accelerator): (buf, end, max_line_length, start) -> (lines,
# candidate lines, records, not_virt, not_libvirt, items) for buf[start:end], where items are
# converted runs of lines and (start, stop) spans of the lines left to the LineConverter, in
# line order.
RegionConverter = Callable[
    [bytes | bytearray, int, int, int], tuple[int, int, int, int, int, list[_T | tuple[int, int]]]
]


class StreamParser:
    """Turn a byte stream into records: whole lines only, bounded memory.

    A partial last line is kept until its newline arrives; a line longer than
    `max_line_length` is counted as `line_too_long` and skipped without being
    buffered.
    """

    def __init__(
        self,
        stats: ParseStats | None = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        on_error: ErrorHandler | None = None,
        *,
        accelerated: bool = True,
    ) -> None:
        self.stats = stats if stats is not None else ParseStats()
        # The C accelerator (when built) reads the common lines; the rest take parse_line.
        self._region: RegionConverter[AuditRecord] | None = (
            ACCELERATOR_MODULE.region_records
            if accelerated and ACCELERATOR_MODULE is not None
            else None
        )
        self.max_line_length = max_line_length
        self.on_error = on_error
        self._partial = b""
        self._discarding = False

    @property
    def accelerated(self) -> bool:
        """True when the C accelerator reads the common lines."""
        return self._region is not None

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

    def feed(self, chunk: bytes) -> list[AuditRecord]:
        """Consume bytes; return the records of every line completed by them."""
        return self.feed_as(chunk, parse_line, self._region)

    def feed_as(
        self,
        chunk: bytes | bytearray,
        convert: LineConverter[_T],
        region: RegionConverter[_T] | None = None,
    ) -> list[_T]:
        """Like `feed`, with each candidate line turned into a `_T` by `convert`.

        `convert` behaves as `parse_line` (an `Ignored`, or `ParseError` raised) for the
        lines that are not records; `monitord parse` uses it to go straight to JSON.
        With `region`, whole runs of lines are converted at once (items may then hold
        several lines each) and `convert` gets only the lines `region` leaves to it.
        """
        framed = self._frame(chunk)
        if framed is None:
            return []
        head, start, end = framed
        if not head:
            return self._parse_lines(chunk, start, end, convert, region)
        # In line order: the held line first (its errors are reported first too).
        out = self._parse_lines(head, 0, len(head), convert, region)
        return out + self._parse_lines(chunk, start, end, convert, region)

    def _frame(self, chunk: bytes | bytearray) -> tuple[bytes, int, int] | None:
        """Take in a chunk as `feed` does, without joining it to the held line: returns
        (head, start, end), where head is the held line now complete (b"" if none) and
        chunk[start:end] the whole lines after it; None when no line ends in chunk."""
        stats = self.stats
        stats.bytes += len(chunk)
        start = 0
        if self._discarding:
            start = chunk.find(b"\n") + 1
            if start <= 0:
                return None
            self._discarding = False
            stats.lines += 1
        last_nl = chunk.rfind(b"\n", start)
        if last_nl < 0:
            self._hold(self._partial + chunk[start:])
            return None
        head = b""
        if self._partial:
            nl = chunk.find(b"\n", start) + 1
            head, start = self._partial + chunk[start:nl], nl
        self._hold(bytes(chunk[last_nl + 1 :]))
        return head, start, last_nl + 1

    def finish(self) -> list[AuditRecord]:
        """Treat a remaining partial line as complete (end of a finished input)."""
        return self.finish_as(parse_line, self._region)

    def finish_as(
        self, convert: LineConverter[_T], region: RegionConverter[_T] | None = None
    ) -> list[_T]:
        """Like `finish`, with lines turned into `_T` by `convert` (see `feed_as`)."""
        rest, self._partial = self._partial, b""
        self._discarding = False
        if not rest:
            return []
        return self._parse_lines(rest + b"\n", 0, len(rest) + 1, convert, region)

    def _hold(self, tail: bytes) -> None:
        if len(tail) > self.max_line_length:
            self._partial = b""
            self._discarding = True
            self._error(ParseError("line_too_long", f"{len(tail)}+ bytes"), tail[:200])
        else:
            self._partial = tail

    def _parse_lines(
        self,
        buf: bytes | bytearray,
        start: int,
        end: int,
        convert: LineConverter[_T],
        region_convert: RegionConverter[_T] | None = None,
    ) -> list[_T]:
        """The outcomes of the candidate lines among the whole lines of buf[start:end]."""
        if region_convert is not None:
            return self._parse_region(buf, start, end, convert, region_convert)
        stats = self.stats
        # buf[end:] holds no newline, so it adds no line and no span. Counting by deletion
        # runs at memchr speed; bytes.count(b"\n") is several times slower.
        rest = buf[start:] if start else buf
        nlines = len(rest) - len(rest.replace(b"\n", b""))
        stats.lines += nlines
        spans = candidate_spans(buf, end, start)
        stats.ignored["not_virt"] += nlines - len(spans)
        records: list[_T] = []
        for first, stop in spans:
            outcome = self._span(buf, first, stop, convert)
            if outcome is not None:
                records.append(outcome)
        stats.records += len(records)
        return records

    def _parse_region(
        self,
        buf: bytes | bytearray,
        start: int,
        end: int,
        convert: LineConverter[_T],
        region_convert: RegionConverter[_T],
    ) -> list[_T]:
        """`_parse_lines` with a RegionConverter: the same counts, errors and output."""
        stats = self.stats
        max_len = self.max_line_length
        nlines, nspans, nrecords, not_virt, not_libvirt, items = region_convert(
            buf, end, max_len, start
        )
        stats.lines += nlines
        stats.ignored["not_virt"] += nlines - nspans + not_virt
        if not_libvirt:
            stats.ignored["not_libvirt"] += not_libvirt
        out: list[_T] = []
        for item in items:
            if type(item) is not tuple:
                out.append(cast(_T, item))
                continue
            outcome = self._span(buf, item[0], item[1], convert)
            if outcome is not None:
                nrecords += 1
                out.append(outcome)
        stats.records += nrecords
        return out

    def _span(
        self,
        buf: bytes | bytearray | memoryview,
        start: int,
        stop: int,
        convert: LineConverter[_T],
    ) -> _T | None:
        """One candidate line for the Python path: its outcome, or None (ignored or
        malformed, and counted as such)."""
        line = bytes(buf[start:stop])
        if stop - start > self.max_line_length:
            self._error(ParseError("line_too_long", f"{stop - start} bytes"), line)
            return None
        try:
            outcome = convert(line)
        except ParseError as err:
            self._error(err, line)
            return None
        if isinstance(outcome, Ignored):
            self.stats.ignored[outcome.reason] += 1
            return None
        return outcome

    def _error(self, err: ParseError, line: bytes) -> None:
        self.stats.errors[err.reason] += 1
        if self.on_error is not None:
            self.on_error(err, line)


def _load_accelerator() -> ModuleType | None:
    """The optional C extension, None when not built or MONITORD_PURE_PYTHON is set."""
    if os.environ.get("MONITORD_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from monitord.audit import _fastparse
    except ImportError:  # not built (no compiler at install time): the Python path
        return None
    _fastparse.setup(NOT_VIRT, NOT_LIBVIRT, make_record)
    return _fastparse


ACCELERATOR_MODULE: Final = _load_accelerator()
# Which path the parser takes: "c" (the extension, Python for unusual lines) or "python".
ACCELERATOR: Final = "c" if ACCELERATOR_MODULE is not None else "python"


def iter_records(
    chunks: Iterator[bytes] | list[bytes], parser: StreamParser | None = None
) -> Iterator[AuditRecord]:
    """Parse a finished stream of chunks, the last line included even without newline."""
    p = parser if parser is not None else StreamParser()
    for chunk in chunks:
        yield from p.feed(chunk)
    yield from p.finish()
