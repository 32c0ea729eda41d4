"""Optional C accelerator of `monitord parse` (monitord/audit/_fastparse.c)."""

from collections.abc import Callable

from monitord.audit.parser import Ignored
from monitord.audit.record import AuditRecord

def setup(
    not_virt: Ignored,
    not_libvirt: Ignored,
    make_record: Callable[..., AuditRecord] | None = None,
    /,
) -> None:
    """Register the ignored-line markers (NOT_VIRT, NOT_LIBVIRT) and the record factory."""

def line_json(line: bytes, /) -> bytes | Ignored | None:
    """One candidate line -> its JSON line (with newline), a marker, or None: use Python."""

def region_json(
    buf: bytes, end: int, max_line_length: int, /
) -> tuple[int, int, int, int, int, list[bytes | tuple[int, int]]]:
    """Scan buf[:end] as StreamParser does; convert its candidate lines (see parser.py)."""

def region_records(
    buf: bytes, end: int, max_line_length: int, /
) -> tuple[int, int, int, int, int, list[AuditRecord | tuple[int, int]]]:
    """region_json with records (built by make_record) instead of JSON lines."""
