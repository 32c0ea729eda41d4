"""Is a running guest's process still there? (a guest can die with no record at all)

Why this exists: when a guest's QEMU dies while libvirtd is not running, libvirt
writes no stop record, ever (virsh later says "shut off (crashed)"; see
docs/FORMATS.md). The log then says the guest runs until its next start, which
may never come. Where the records come from this host, the guest's `vm-pid` can
be asked directly.

How: `kill(pid, 0)` says whether a pid exists: ESRCH means gone, EPERM means it
exists but belongs to someone else. It needs no privilege and works under
systemd's `ProtectProc=invisible`, which hides other users' /proc entries but
not their pids from kill(). A pid can be reused by an unrelated process after the
guest died, so where /proc/PID/stat is readable the process's start time is
compared with the time of the guest's start record: libvirt writes that record
after starting the process, so a process that started clearly later is another
process, and the guest's is gone. A zombie is gone too. Where /proc is not
readable (hidden, another pid namespace), kill() alone answers.

Pure functions; the /proc root, kill() and the clock tick rate are parameters so
tests can give a fake /proc or a kill that fails as they need.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

PROC: Final = "/proc"
# The start record's time (milliseconds) and the process start time (clock ticks since
# boot plus /proc/stat's whole-second boot time) disagree by up to ~1 s for the same
# process; libvirt writes the record after the process started (QEMU: before the guest
# runs, ~0.1-1 s; LXC: the controller's pid). A process that started more than this
# after the record is another process.
REUSE_MARGIN: Final = 2.0


class Liveness(enum.Enum):
    """What is known about a guest's process."""

    ALIVE = "alive"  # the pid exists and (where checkable) is the process of that start
    GONE = "gone"  # no such pid, a zombie, or a process started after the start record
    UNKNOWN = "unknown"  # no pid to ask, or kill() failed otherwise (e.g. EINVAL)


def boot_time(proc_root: str = PROC) -> float | None:
    """Return the boot time (seconds since the epoch) from PROC/stat `btime`, or None."""
    try:
        with Path(proc_root, "stat").open("rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _stat_fields(pid: int, proc_root: str) -> list[bytes] | None:
    """Fields of PROC/PID/stat from field 3 (state) on, or None if unreadable.

    The command name (field 2) is in parentheses and may hold spaces and ')':
    the fields after it start after the LAST ')'.
    """
    try:
        data = Path(proc_root, str(pid), "stat").read_bytes()
    except OSError:
        return None
    end = data.rfind(b")")
    if end < 0:
        return None
    return data[end + 1 :].split()


def process_start_time(
    pid: int, proc_root: str = PROC, clock_ticks: int | None = None
) -> float | None:
    """Return when `pid` started (seconds since the epoch), or None where /proc says nothing.

    Field 22 of /proc/PID/stat is the start in clock ticks after boot; /proc/stat's
    `btime` is the boot time in whole seconds.
    """
    fields = _stat_fields(pid, proc_root)
    booted = boot_time(proc_root)
    if fields is None or booted is None or len(fields) < 20:
        return None
    ticks = clock_ticks if clock_ticks is not None else os.sysconf("SC_CLK_TCK")
    try:
        return booted + int(fields[19]) / ticks  # field 22 is the 20th after the name
    except ValueError:
        return None


def check(
    pid: int | None,
    started_at: float | None,
    *,
    proc_root: str = PROC,
    kill: Callable[[int, int], None] = os.kill,
    clock_ticks: int | None = None,
    margin: float = REUSE_MARGIN,
) -> Liveness:
    """Tell whether the process `pid` of a guest whose start record has time `started_at`
    (seconds since the epoch; None: unknown) is still that guest's process."""
    if pid is None or pid <= 0:
        return Liveness.UNKNOWN
    try:
        kill(pid, 0)
    except ProcessLookupError:
        return Liveness.GONE
    except PermissionError:
        pass  # it exists, owned by another user (QEMU runs as libvirt-qemu)
    except OSError as err:
        return Liveness.GONE if err.errno == errno.ESRCH else Liveness.UNKNOWN
    fields = _stat_fields(pid, proc_root)
    if fields is None:
        return Liveness.ALIVE  # /proc hidden or elsewhere: kill() is all we know
    if fields and fields[0] in (b"Z", b"X"):
        return Liveness.GONE  # exited, not yet reaped
    if started_at is not None:
        began = process_start_time(pid, proc_root, clock_ticks)
        if began is not None and began > started_at + margin:
            return Liveness.GONE  # the pid was reused by a later process
    return Liveness.ALIVE
