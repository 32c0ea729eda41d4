"""The parser's optional C leaf (monitord/audit/_fastparse.c): pure functions over bytes."""

from collections.abc import Mapping

from monitord.audit.parser import Region, Tail

def setup(tables: Mapping[str, object], /) -> None:
    """Take parser.TABLES: every name the leaf matches (types, key rules, document keys...)."""

def tables() -> Mapping[str, object] | None:
    """The tables setup() was given (None before it ran)."""

def region(
    buf: bytes | bytearray, start: int, end: int, max_line_length: int, json: bool, /
) -> Region:
    """The candidate lines of buf[start:end] (whole lines), as parser.Region describes."""

def tail(tail: bytes, /) -> Tail | None:
    """parser.parse_tail of a tail's bytes, or None: the Python path reads it."""
