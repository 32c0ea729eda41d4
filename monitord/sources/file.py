"""Follow audit.log: inotify as a wake-up hint, rotation and truncation handled, resumable.

After any wake-up (an inotify event, a timeout) the follower reads to EOF, then
compares the path's inode and size with the open file to notice rotation or
truncation. A rotated file is always finished to EOF before the next one is
opened, and files rotated several times while we were reading (audit.log.2,
audit.log.1, ...) are each read in order.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import select
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from inotify_simple import INotify
from inotify_simple import flags as iflags

from monitord.audit.parser import ErrorHandler, StreamParser
from monitord.audit.record import AuditRecord
from monitord.config import SourceConfig
from monitord.errors import ConfigError
from monitord.sources.base import Health, LogSource, Position
from monitord.sources.counters import SourceCounters

log = logging.getLogger(__name__)

READ_SIZE: Final = 1 << 20
# Read at most this much per poll, so checkpoints, health and the watchdog keep ticking.
MAX_READ_PER_POLL: Final = 16 << 20
FINGERPRINT_BYTES: Final = 1024

_DIR_EVENTS: Final = (
    iflags.MODIFY
    | iflags.CREATE
    | iflags.MOVED_TO
    | iflags.MOVED_FROM
    | iflags.DELETE
    | iflags.ATTRIB
    | iflags.CLOSE_WRITE
)


_KINDS: Final = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def unusable(path: Path) -> str | None:
    """Why path cannot be followed as an audit log, or None (a regular file, or none yet).

    Only regular files are read: a FIFO would block the open and has no position to
    resume from. A symbolic link is refused, not followed: auditd rotates by renaming
    in the log's own directory, which is the link's target directory, not the one
    monitord watches; and a root daemon should not read wherever a link points.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None  # missing (waited for) or unreadable (reported when opened)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.path.realpath(path)
        except OSError:
            target = "its target"
        return (
            f"{path} is a symbolic link; monitord follows only regular files (auditd "
            f"rotates in the log's own directory): set source.path to {target}"
        )
    if stat.S_ISREG(st.st_mode):
        return None
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
    hint = "; auditd's plugin pipe is read with source kind audisp" if "FIFO" in kind else ""
    return f"{path} is {kind}, not a regular file{hint}"


def check_log_path(path: str) -> None:
    """Refuse at start-up an audit log path that exists but cannot be followed (exit 2)."""
    reason = unusable(Path(path))
    if reason is not None:
        raise ConfigError(f"source.path: {reason}")


def fingerprint(fd: int, length: int) -> str:
    """Hash of the file's first `length` bytes: tells a reused inode from the file we read."""
    data = os.pread(fd, length, 0)
    return hashlib.sha256(data).hexdigest()


@dataclass
class _OpenFile:
    fd: int
    path: Path
    dev: int
    ino: int
    offset: int  # bytes read so far (records are complete up to offset - parser.pending)
    head: str = ""  # fingerprint of the first `head_len` bytes, to notice a rewrite in place
    head_len: int = 0


class FileSource(LogSource):
    """The `file` source: follows one audit log across rotation and truncation."""

    name = "file"

    def __init__(
        self,
        config: SourceConfig,
        counters: SourceCounters | None = None,
        on_error: ErrorHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, counters)
        self.path = Path(config.path)
        self.reopens = self.counters.reopens
        self.clock = clock
        self.parser = StreamParser(self.counters.parse, config.max_line_length, on_error)
        self._file: _OpenFile | None = None
        # (dev, ino) of files known to follow the open one, oldest first: the way on if the
        # open file is deleted from the directory before we see where it was in the chain.
        self._newer: list[tuple[int, int]] = []
        self._carry: list[AuditRecord] = []  # the last line of a finished file, if unterminated
        self._inotify: INotify | None = None
        self._watching: Path | None = None
        self._health = Health(False, f"{self.path}: not opened yet")
        self._problem_logged: str | None = None
        self._switched = False  # set on every switch of file; the daemon checkpoints then

    # -- Source protocol ------------------------------------------------------------

    def open(self, position: Position | None) -> None:
        self._inotify = INotify()
        self._ensure_watch()
        if position is not None and self._resume(position):
            return
        if position is not None:
            self.reopens["position_lost"] += 1
            log.warning(
                "checkpointed position in %s is gone (file deleted or replaced); "
                "reading the current file from its beginning",
                position.get("path", self.path),
            )
            self._open_current(at_end=False)
            return
        self._open_current(at_end=self.config.start == "end")
        if self.config.start == "end":
            self._caught_up = True

    def poll(self, timeout: float, wake_fds: Sequence[int] = ()) -> list[AuditRecord]:
        records = self._read_available()
        if records:
            return records
        if self._check_switch():
            return self._read_available()
        if self._file is not None and self._file.path == self.path:
            self._caught_up = True
        self._wait(timeout, wake_fds)
        records = self._read_available()
        if not records and self._check_switch():
            records = self._read_available()
        return records

    def position(self) -> Position | None:
        f = self._file
        if f is None:
            return None
        offset = f.offset - self.parser.pending
        fp_len = min(FINGERPRINT_BYTES, offset)
        return {
            "path": str(f.path),
            "dev": f.dev,
            "ino": f.ino,
            "offset": offset,
            "fingerprint": fingerprint(f.fd, fp_len),
            "fingerprint_length": fp_len,
        }

    def take_switch(self) -> bool:
        switched, self._switched = self._switched, False
        return switched

    def health(self) -> Health:
        return self._health

    def close(self) -> None:
        self._close_file()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
            self._watching = None

    # -- reading ----------------------------------------------------------------------

    def _read_available(self) -> list[AuditRecord]:
        records, self._carry = self._carry, []
        f = self._file
        if f is None:
            return records
        if self._rewritten(f):
            self._truncated(f, os.fstat(f.fd).st_size)
        budget = MAX_READ_PER_POLL
        while budget > 0:
            try:
                chunk = os.pread(f.fd, READ_SIZE, f.offset)
            except OSError as err:
                self._set_problem(f"{f.path}: read failed: {err.strerror}")
                return records
            if not chunk:
                break
            f.offset += len(chunk)
            budget -= len(chunk)
            records.extend(self.parser.feed(chunk))
        if f.head_len < FINGERPRINT_BYTES and f.offset > f.head_len:
            f.head_len = min(FINGERPRINT_BYTES, f.offset)
            f.head = fingerprint(f.fd, f.head_len)
        return records

    def _check_switch(self) -> bool:
        """At EOF: move on to the next file after rotation, or restart after truncation."""
        f = self._file
        if f is None:
            return self._open_current(at_end=False, reason="created")
        try:
            st = self.path.stat()
        except FileNotFoundError:
            # Deleted or renamed without a successor yet: keep reading what we hold.
            return False
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != (f.dev, f.ino):
            if os.fstat(f.fd).st_size > f.offset and self._health.ok:
                # Written to after our read to EOF, then rotated: finish it first (unless
                # reading it failed: then go on rather than retry it on every poll).
                return True
            # Our file is no longer audit.log, and we are at its end: go to its successor.
            return self._advance(f)
        size = os.fstat(f.fd).st_size
        if size < f.offset or self._rewritten(f):
            self._truncated(f, size)
            return True
        return False

    def _rewritten(self, f: _OpenFile) -> bool:
        """Tell whether the file's first bytes changed: truncated and refilled past our offset."""
        return f.head_len > 0 and fingerprint(f.fd, f.head_len) != f.head

    def _truncated(self, f: _OpenFile, size: int) -> None:
        self.reopens["truncated"] += 1
        log.info("%s was truncated (size %d, offset %d); from 0", f.path, size, f.offset)
        self.parser.reset()
        f.offset = 0
        f.head, f.head_len = "", 0
        self._switched = True

    def _advance(self, old: _OpenFile) -> bool:
        """Open the file written after `old`: each rotation in order, however many happened.

        Names shift under us while auditd rotates, so files are tracked by inode and
        every open is checked against the inode the directory scan promised.
        """
        # auditd ends every file with a whole line; an unterminated one still counts.
        self._carry.extend(self.parser.finish())
        for _ in range(10):
            chain = self._rotation_chain()
            ids = [(dev, ino) for _, dev, ino in chain]
            if (old.dev, old.ino) in ids:
                later = chain[ids.index((old.dev, old.ino)) + 1 :]
            else:
                known = [i for i, key in enumerate(ids) if key in self._newer]
                if not known:
                    log.warning(
                        "%s was rotated and removed before monitord saw its successor; "
                        "records in rotated files in between may be missed",
                        old.path,
                    )
                later = chain[known[0] :] if known else chain[-1:]
            if not later:
                return False  # nothing newer yet (audit.log itself is missing)
            path, dev, ino = later[0]
            if self._open_path(path, at_end=False, identity=(dev, ino)):
                self._newer = [(d, n) for _, d, n in later[1:]]
                self.reopens["rotated"] += 1
                return True
        return False

    def _rotation_chain(self) -> list[tuple[Path, int, int]]:
        """Return (path, dev, ino) of audit.log.N ... audit.log.1, audit.log: oldest first.

        A directory scan is not atomic: a name listed before auditd shifts the names is
        stat'ed after, under its new owner, so a file can be seen twice or not at all,
        and a rotated file would be skipped whole. Scan until two scans in a row agree.
        """
        chain = self._scan_chain()
        for _ in range(20):
            again = self._scan_chain()
            if again == chain:
                break
            chain = again
        return chain

    def _scan_chain(self) -> list[tuple[Path, int, int]]:
        pattern = re.compile(re.escape(self.path.name) + r"(?:\.(\d+))?\Z")
        found: list[tuple[int, Path, int, int]] = []
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return []
        for entry in entries:
            m = pattern.match(entry.name)
            if m is None:
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            found.append((int(m.group(1) or 0), Path(entry.path), st.st_dev, st.st_ino))
        found.sort(key=lambda t: -t[0])
        return [(p, dev, ino) for _, p, dev, ino in found]

    def _open_current(self, at_end: bool, reason: str | None = None) -> bool:
        opened = self._open_path(self.path, at_end)
        if opened and reason is not None:
            self.reopens[reason] += 1
        return opened

    def _open_path(
        self, path: Path, at_end: bool, offset: int = 0, identity: tuple[int, int] | None = None
    ) -> bool:
        reason = unusable(path)
        if reason is not None:
            self._set_problem(reason)
            return False
        try:
            # O_NONBLOCK: a FIFO swapped in after the check must not hang the open.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            self._set_problem(f"{path}: does not exist yet; waiting for it to be created")
            return False
        except PermissionError:
            self._set_problem(
                f"{path}: permission denied; run monitord as root, give it auditd's log_group "
                "(log_group = adm in auditd.conf, and SupplementaryGroups=adm), or "
                "AmbientCapabilities=CAP_DAC_READ_SEARCH"
            )
            return False
        except OSError as err:
            self._set_problem(unusable(path) or f"{path}: cannot open: {err.strerror}")
            return False
        st = os.fstat(fd)
        if identity is not None and (st.st_dev, st.st_ino) != identity:
            os.close(fd)  # renamed between the directory scan and the open: scan again
            return False
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self._set_problem(f"{path} is not a regular file")
            return False
        self._close_file()
        start = st.st_size if at_end else offset
        self._file = _OpenFile(fd=fd, path=path, dev=st.st_dev, ino=st.st_ino, offset=start)
        self.parser.reset()
        self._switched = True
        self._set_ok()
        log.info("reading %s from offset %d", path, start)
        return True

    def _resume(self, position: Position) -> bool:
        """Reopen the checkpointed file (maybe rotated since) at its offset; False if gone."""
        try:
            dev, ino = int(position["dev"]), int(position["ino"])
            offset = int(position["offset"])
            fp, fp_len = str(position["fingerprint"]), int(position["fingerprint_length"])
        except (KeyError, TypeError, ValueError):
            return False
        for _ in range(10):
            chain = self._rotation_chain()
            idx = next((i for i, (_, d, n) in enumerate(chain) if (d, n) == (dev, ino)), None)
            if idx is None:
                return False
            path = chain[idx][0]
            if self._open_path(path, at_end=False, offset=offset, identity=(dev, ino)):
                break
        else:
            return False
        f = self._file
        assert f is not None
        size = os.fstat(f.fd).st_size
        if size < offset or fingerprint(f.fd, fp_len) != fp:
            self._close_file()
            return False
        self._newer = [(d, n) for _, d, n in chain[idx + 1 :]]
        if path != self.path:
            log.info("resuming in rotated file %s, then %d newer file(s)", path, len(self._newer))
        return True

    def _close_file(self) -> None:
        if self._file is not None:
            os.close(self._file.fd)
            self._file = None

    # -- waiting ----------------------------------------------------------------------

    def _ensure_watch(self) -> None:
        """Watch the log's directory: one watch sees the file, its rotations and new files."""
        if self._inotify is None or self._watching is not None:
            return
        try:
            self._inotify.add_watch(str(self.path.parent), _DIR_EVENTS)
            self._watching = self.path.parent
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.EACCES, errno.ENOTDIR):
                raise
            self._set_problem(f"{self.path.parent}: cannot watch: {err.strerror}; retrying")

    def _wait(self, timeout: float, wake_fds: Sequence[int]) -> None:
        """Sleep until inotify or a wake fd says something, or the safety re-check is due."""
        self._ensure_watch()
        fds: list[int] = list(wake_fds)
        if self._inotify is not None and self._watching is not None:
            fds.append(self._inotify.fileno())
        limit = min(timeout, self.config.rescan_interval)
        if limit > 0:
            try:
                ready, _, _ = select.select(fds, [], [], limit)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                ready = []
            if self._inotify is not None and self._inotify.fileno() in ready:
                # The events are only a hint: whatever they say, the next step reads to EOF.
                events = self._inotify.read(timeout=0)
                if any(e.mask & iflags.Q_OVERFLOW for e in events):
                    log.debug("inotify queue overflowed; the safety re-check covers it")
                if any(e.mask & iflags.IGNORED for e in events):
                    self._watching = None  # the directory itself went away
        if self._file is None:
            self._open_current(at_end=False, reason="created")

    # -- health -----------------------------------------------------------------------

    def _set_problem(self, reason: str) -> None:
        self._health = Health(False, reason)
        if self._problem_logged != reason:
            self._problem_logged = reason
            log.warning("%s", reason)

    def _set_ok(self) -> None:
        self._health = Health(True)
        self._problem_logged = None
