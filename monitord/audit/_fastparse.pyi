"""Optional C accelerator of `monitord parse` (monitord/audit/_fastparse.c)."""

from monitord.audit.parser import Ignored

def setup(not_virt: Ignored, not_libvirt: Ignored, /) -> None:
    """Register the markers returned for ignored lines (the parser's NOT_VIRT, NOT_LIBVIRT)."""

def line_json(line: bytes, /) -> bytes | Ignored | None:
    """One candidate line -> its JSON line (with newline), a marker, or None: use Python."""

def region_json(
    buf: bytes, end: int, max_line_length: int, /
) -> tuple[int, int, int, int, int, list[bytes | tuple[int, int]]]:
    """Scan buf[:end] as StreamParser does; convert its candidate lines (see parser.py)."""
