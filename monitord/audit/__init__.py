"""Reading libvirt's VIRT_* audit records: line -> `AuditRecord`."""

from monitord.audit.parser import (
    IGNORED_REASONS,
    PARSE_ERROR_REASONS,
    Ignored,
    ParseError,
    ParseStats,
    StreamParser,
    parse_line,
)
from monitord.audit.record import AuditRecord

__all__ = [
    "IGNORED_REASONS",
    "PARSE_ERROR_REASONS",
    "AuditRecord",
    "Ignored",
    "ParseError",
    "ParseStats",
    "StreamParser",
    "parse_line",
]
