"""Optional C accelerator of the parser and of `monitord replay` (monitord/audit/_fastparse.c)."""

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
    buf: bytes | bytearray, end: int, max_line_length: int, start: int = 0, /
) -> tuple[int, int, int, int, int, list[bytes | tuple[int, int]]]:
    """Scan buf[:end] as StreamParser does; convert its candidate lines (see parser.py)."""

def region_records(
    buf: bytes | bytearray, end: int, max_line_length: int, start: int = 0, /
) -> tuple[int, int, int, int, int, list[AuditRecord | tuple[int, int]]]:
    """region_json with records (built by make_record) instead of JSON lines."""

def region_lines(
    buf: bytes | bytearray, end: int, max_line_length: int, start: int = 0, /
) -> tuple[int, int, int, int, int, list[bytes | tuple[int, int]]]:
    """region_json with runs of the candidate lines themselves (newline-terminated)."""

def region_apply(
    buf: bytes | bytearray,
    start: int,
    end: int,
    max_line_length: int,
    context: tuple[object, ...],
    /,
) -> tuple[int, int, int, int, int, int, float | None]:
    """Apply the candidate lines of buf[start:end] to GuestTable.fast_context()'s table.

    Returns (candidates, records, not_virt, not_libvirt, stop, stop_end, latest): it stops
    before the first line the Python path must read (buf[stop:stop_end]; -1 when none);
    latest is the newest record time applied (None: none).
    """

def count_lines(buf: bytes | bytearray, start: int, end: int, /) -> int:
    """The number of newline bytes in buf[start:end]."""
