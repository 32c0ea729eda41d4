"""The parser's optional C leaf (monitord/audit/_fastparse.c): pure functions over bytes."""

from collections.abc import Mapping
from typing import Any

from monitord.audit.parser import Region

def setup(tables: Mapping[str, object], /) -> None:
    """Take parser.TABLES: every name the leaf matches (types, key rules, document keys...)."""

def tables() -> Mapping[str, object] | None:
    """The tables setup() was given (None before it ran)."""

def region(
    buf: bytes | bytearray,
    start: int,
    end: int,
    max_line_length: int,
    tails: dict[bytes, Any] | None,
    /,
) -> Region:
    """The candidate lines of buf[start:end] (whole lines), as parser.Region describes: JSON
    lines when tails is None, else lines read, their tails looked up in `tails` (read only)."""
