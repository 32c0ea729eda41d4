"""Follow libvirt's audit records in the systemd journal, resumable by cursor.

On hosts without auditd, journald reads the kernel's audit messages itself and
stores each as one entry (systemd `src/journal/journald-audit.c`):
`_TRANSPORT=audit`, `_AUDIT_TYPE` (the number), `_AUDIT_TYPE_NAME`, `_AUDIT_ID`
(the serial), `_SOURCE_REALTIME_TIMESTAMP` (the record's own time, seconds and
milliseconds as microseconds) and `MESSAGE` = type name, a space, then the
kernel's text after `audit(SEC.MSEC:SERIAL): `. Types journald cannot name are
written `AUDIT2510` (not auditd's `UNKNOWN[2510]`).

Each entry is turned back into the audit.log line auditd would have written
(raw format: the kernel's text carries no enrichment) and given to the same
`parse_line` as the file source, so both sources produce equal records.
The reader's own inotify fd is the wake-up: there is no polling loop.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import select
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from systemd import journal

from monitord.audit.parser import ErrorHandler, Ignored, ParseError, parse_line
from monitord.audit.record import AuditRecord
from monitord.audit.types import VIRT_FIRST, VIRT_LAST, type_name
from monitord.config import SourceConfig
from monitord.errors import UserError
from monitord.sources.base import Health, LogSource, Position
from monitord.sources.counters import SourceCounters

log = logging.getLogger(__name__)

# Entries read per poll, so checkpoints, health and signals keep ticking while catching up.
MAX_ENTRIES_PER_POLL: Final = 20_000
SYSTEM_JOURNAL_DIRS: Final = (Path("/var/log/journal"), Path("/run/log/journal"))
# Groups whose members may read the whole system journal (journalctl's own hint).
JOURNAL_GROUPS: Final = ("systemd-journal", "adm", "wheel")
_USEC: Final = 1_000_000


class JournalOpenError(UserError):
    """The journal named in the configuration cannot be opened."""


def audit_line(
    message: bytes, type_id: int, serial: int, source_usec: int
) -> tuple[str, int] | ParseError:
    """Rebuild the raw audit.log line of a journald audit entry.

    Returns the line and its length in bytes (newline included), or the
    `ParseError` the entry earns. Time is formatted as auditd does (3-digit
    milliseconds), so the parsed float equals the file source's.
    """
    name, sep, rest = message.partition(b" ")
    if not sep or not name:
        return ParseError("no_message", message[:120].decode("utf-8", "replace"))
    sec, usec = divmod(source_usec, _USEC)
    text = rest.decode("utf-8", "surrogateescape")
    line = f"type={type_name(type_id)} msg=audit({sec}.{usec // 1000:03d}:{serial}): {text}"
    # Header bytes are ASCII, so only the body needs counting in bytes.
    return line, len(line) - len(text) + len(rest) + 1


def _with_node(line: str, get: Callable[[str], bytes]) -> str:
    """The line with the entry's host as its `node=` prefix (none for a missing or odd name)."""
    try:
        host = get("_HOSTNAME").decode("utf-8", "replace")
    except KeyError:
        return line
    if not host or any(c.isspace() for c in host):
        return line
    return f"node={host} {line}"


def _int_field(reader: journal._Reader, name: str) -> int | None:
    try:
        raw = reader._get(name)
    except KeyError:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


class JournalSource(LogSource):
    """The `journal` source: VIRT audit entries of the systemd journal, checkpointed by cursor."""

    name = "journal"

    def __init__(
        self,
        config: SourceConfig,
        counters: SourceCounters | None = None,
        on_error: ErrorHandler | None = None,
        max_entries_per_poll: int = MAX_ENTRIES_PER_POLL,
    ) -> None:
        super().__init__(config, counters)
        self.on_error = on_error
        self.max_entries_per_poll = max_entries_per_poll
        self._reader: journal._Reader | None = None
        self._cursor: str | None = None
        self._open_error: str | None = None

    # -- Source protocol ------------------------------------------------------------

    def open(self, position: Position | None) -> None:
        self._reader = self._open_reader()
        cursor = position.get("cursor") if position else None
        if isinstance(cursor, str) and cursor:
            if self._resume(cursor):
                return
            self.counters.reopens["cursor_lost"] += 1
            log.warning(
                "checkpointed journal cursor no longer exists (journal vacuumed or replaced): "
                "reading from the oldest entry; cursor was %s",
                cursor,
            )
            self._reader.seek_head()
            return
        if position is None and self.config.start == "end":
            self._seek_end()
            self._caught_up = True
            return
        # "beginning", "checkpoint" without a checkpoint, or a checkpoint taken before any entry.
        self._reader.seek_head()

    def poll(self, timeout: float, wake_fds: Sequence[int] = ()) -> list[AuditRecord]:
        records, read = self._read_available()
        if read:
            return records
        self._caught_up = True
        if self._wait(timeout, wake_fds):
            records, _ = self._read_available()
        return records

    def position(self) -> Position | None:
        return {"cursor": self._cursor}

    def take_switch(self) -> bool:
        return False  # the cursor covers every journal file: nothing to checkpoint early

    def health(self) -> Health:
        if self._open_error is not None:
            return Health(False, self._open_error)
        if self._reader is None:
            return Health(False, "journal: not opened yet")
        problem = self._permission_problem()
        if problem is not None:
            return Health(False, problem)
        return Health(True)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def fileno(self) -> int:
        """The reader's inotify fd (for loops that want to wait on it themselves)."""
        assert self._reader is not None, "open() first"
        return int(self._reader.fileno())

    # -- opening ----------------------------------------------------------------------

    def _open_reader(self) -> journal._Reader:
        where = self.config.journal_dir
        try:
            if where is None:
                # Audit entries are written to the system journal only.
                reader = journal._Reader(journal.LOCAL_ONLY | journal.SYSTEM, None, None)
            elif Path(where).is_file():
                reader = journal._Reader(0, None, [where])
            else:
                reader = journal._Reader(0, where, None)
        except OSError as err:
            self._open_error = f"journal {where}: cannot open: {os.strerror(err.errno or 0)}"
            hint = _PERMISSION_HINT if err.errno in (errno.EACCES, errno.EPERM) else ""
            raise JournalOpenError(self._open_error + hint) from None
        self._open_error = None
        self._add_matches(reader)
        problem = self._permission_problem()
        if problem is not None:
            log.warning("%s", problem)
        return reader

    def _add_matches(self, reader: journal._Reader) -> None:
        reader.add_match("_TRANSPORT=audit")
        # Same field: OR'ed by sd_journal; different fields: AND'ed.
        for type_id in range(VIRT_FIRST, VIRT_LAST + 1):
            reader.add_match(f"_AUDIT_TYPE={type_id}")

    def _seek_end(self) -> None:
        """Place the reader after the last entry, so only entries written from now on are read."""
        reader = self._reader
        assert reader is not None
        reader.seek_tail()
        # sd_journal_seek_tail() needs one step back to stand on a real entry.
        if reader._previous():
            self._cursor = reader._get_cursor()
            return
        # No VIRT entry yet. A reader left at "tail" jumps to the then-last entry on its next
        # next(), skipping the ones appended before it: stand on the last entry of any kind.
        reader.flush_matches()
        reader.seek_tail()
        last = reader._get_cursor() if reader._previous() else None
        self._add_matches(reader)
        if last is None:
            reader.seek_head()  # an empty journal: whatever comes is new
        else:
            reader.seek_cursor(last)  # not a VIRT entry, so next() never returns it

    def _resume(self, cursor: str) -> bool:
        """Place the reader just after `cursor`; False when that entry no longer exists."""
        reader = self._reader
        assert reader is not None
        try:
            reader.seek_cursor(cursor)
        except ValueError:  # not a cursor at all
            return False
        # seek_cursor() only positions near the cursor: the entry must be read and tested.
        if not reader._next():
            return False
        try:
            if not reader.test_cursor(cursor):
                return False
        except OSError:
            return False
        self._cursor = cursor
        return True

    # -- reading ----------------------------------------------------------------------

    def _read_available(self) -> tuple[list[AuditRecord], int]:
        """Read up to the per-poll limit; return the records and how many entries were read."""
        reader = self._reader
        assert reader is not None, "open() first"
        stats = self.stats
        max_len = self.config.max_line_length
        records: list[AuditRecord] = []
        read = 0
        limit = self.max_entries_per_poll
        get = reader._get
        while read < limit and reader._next():
            read += 1
            stats.lines += 1
            try:
                message = get("MESSAGE")
            except KeyError:
                self._error(ParseError("no_message", "entry without MESSAGE"), b"")
                continue
            type_id = _int_field(reader, "_AUDIT_TYPE")
            if type_id is None:
                stats.bytes += len(message) + 1
                self._error(ParseError("bad_header", "no _AUDIT_TYPE"), message)
                continue
            if not VIRT_FIRST <= type_id <= VIRT_LAST:
                stats.bytes += len(message) + 1
                stats.ignored["not_virt"] += 1
                continue
            serial = _int_field(reader, "_AUDIT_ID")
            usec = _int_field(reader, "_SOURCE_REALTIME_TIMESTAMP")
            if serial is None or usec is None:
                stats.bytes += len(message) + 1
                self._error(ParseError("bad_timestamp", "no _AUDIT_ID or time"), message)
                continue
            if len(message) > max_len:
                stats.bytes += len(message) + 1
                self._error(ParseError("line_too_long", f"{len(message)} bytes"), message[:200])
                continue
            built = audit_line(message, type_id, serial, usec)
            if isinstance(built, ParseError):
                stats.bytes += len(message) + 1
                self._error(built, message)
                continue
            line, size = built
            stats.bytes += size
            if self.config.node_from_hostname:
                line = _with_node(line, get)
            try:
                outcome = parse_line(line)
            except ParseError as err:
                self._error(err, line.encode("utf-8", "surrogateescape"))
                continue
            if isinstance(outcome, Ignored):
                stats.ignored[outcome.reason] += 1
            else:
                records.append(outcome)
        if read:
            # The reader still points at the last entry read, even after _next() said "no more".
            self._cursor = reader._get_cursor()
        stats.records += len(records)
        return records, read

    def _error(self, err: ParseError, raw: bytes) -> None:
        self.stats.errors[err.reason] += 1
        if self.on_error is not None:
            self.on_error(err, raw)

    def _wait(self, timeout: float, wake_fds: Sequence[int]) -> bool:
        """Wait on the reader's fd and the wake fds; True when the journal changed."""
        reader = self._reader
        assert reader is not None
        fd = reader.fileno()
        # Journals on file systems without inotify give a timeout to re-check after.
        limit_ms = reader.get_timeout_ms()
        wait = timeout if limit_ms < 0 else min(timeout, limit_ms / 1000)
        poller = select.poll()
        poller.register(fd, reader.get_events())
        for wake in wake_fds:
            poller.register(wake, select.POLLIN)
        try:
            ready = poller.poll(max(0.0, wait) * 1000)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            ready = []
        if not any(ready_fd == fd for ready_fd, _ in ready) and limit_ms < 0:
            return False
        # process() drains the inotify queue and takes in added or removed journal files.
        return bool(reader.process() != journal.NOP or limit_ms >= 0)

    # -- health -----------------------------------------------------------------------

    def _permission_problem(self) -> str | None:
        """Why some journal files are unreadable to us, or None when all can be read."""
        dirs = [Path(self.config.journal_dir)] if self.config.journal_dir else []
        if not dirs:
            dirs = [d for d in SYSTEM_JOURNAL_DIRS if d.exists()]
        for top in dirs:
            if top.is_file():
                if not os.access(top, os.R_OK):
                    return f"journal {top}: permission denied" + _PERMISSION_HINT
                continue
            if not os.access(top, os.R_OK | os.X_OK):
                if not top.exists():
                    return f"journal {top}: no such directory"
                return f"journal {top}: permission denied" + _PERMISSION_HINT
            unreadable = [f for f in _journal_files(top) if not os.access(f, os.R_OK)]
            if unreadable:
                return (
                    f"journal {top}: cannot read {len(unreadable)} journal file(s) "
                    f"such as {unreadable[0]}" + _PERMISSION_HINT
                )
        if self.config.journal_dir is None and os.geteuid() != 0 and not _in_journal_group():
            return "journal: this user sees only its own entries" + _PERMISSION_HINT
        return None


_PERMISSION_HINT: Final = (
    " (run as root, or add the user to the systemd-journal or adm group: "
    "usermod -aG systemd-journal USER)"
)


def _journal_files(top: Path) -> list[Path]:
    """Journal files in `top` and its machine-id subdirectories (where journald writes them)."""
    found: list[Path] = []
    try:
        entries = list(os.scandir(top))
    except OSError:
        return found
    for entry in entries:
        if entry.name.endswith((".journal", ".journal~")):
            found.append(Path(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            try:
                found.extend(
                    Path(sub.path)
                    for sub in os.scandir(entry.path)
                    if sub.name.endswith((".journal", ".journal~"))
                )
            except OSError:
                found.append(Path(entry.path))  # an unreadable machine directory
    return found


def _in_journal_group() -> bool:
    groups = set(os.getgroups()) | {os.getegid()}
    for name in JOURNAL_GROUPS:
        try:
            if grp.getgrnam(name).gr_gid in groups:
                return True
        except KeyError:
            continue
    return False
