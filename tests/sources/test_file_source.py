"""The file follower against real files and real inotify: rotation, truncation, partial lines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitord.audit.record import AuditRecord
from monitord.config import SourceConfig
from monitord.errors import ConfigError
from monitord.sources.file import FileSource, check_log_path
from tests.conftest import ROOT, need_root, need_tool

UUID = "c857b1ce-7157-4be5-ae36-29cf22a62ec8"


def line(serial: int, name: str = "web01") -> bytes:
    return (
        f"type=VIRT_CONTROL msg=audit(1700000000.{serial % 1000:03d}:{serial}): pid=1 uid=0 "
        f'auid=4294967295 ses=4294967295 msg=\'virt=kvm op=start reason=booted vm="{name}" '
        f'uuid={UUID} vm-pid={serial} exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? '
        f'res=success\'\x1dUID="root" AUID="unset"\n'
    ).encode()


NOISE = b'type=SYSCALL msg=audit(1700000000.000:1): arch=c000003e key="VIRT_RESOURCE"\n'


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def make_source(path: Path, **kw: object) -> tuple[FileSource, Counter[str]]:
    config = SourceConfig(path=str(path), **kw)  # type: ignore[arg-type]
    src = FileSource(config)
    return src, src.counters.reopens


def collect(src: FileSource, want: int, timeout: float = 5.0) -> list[AuditRecord]:
    """Poll until `want` records came in (inotify wakes each poll) or the timeout passes."""
    got: list[AuditRecord] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got.extend(src.poll(timeout=max(0.0, deadline - time.monotonic())))
    return got


def serials(records: list[AuditRecord]) -> list[int]:
    return [r.serial for r in records]


def test_reads_existing_content_then_follows(tmp_path: Path) -> None:
    """Reads what the file holds at start, then new lines as inotify reports them."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(1) + NOISE + line(2))
    src, _ = make_source(log)
    src.open(None)
    assert serials(collect(src, 2)) == [1, 2]
    assert src.caught_up is False or src.caught_up is True  # state is defined either way
    assert serials(src.poll(timeout=0.05)) == []
    assert src.caught_up
    append(log, line(3))
    assert serials(collect(src, 1)) == [3]
    assert src.stats.ignored["not_virt"] == 1
    src.close()


def test_partial_line_waits_for_newline(tmp_path: Path) -> None:
    """Keeps half a line until its newline arrives, and the position excludes it."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    src, _ = make_source(log)
    src.open(None)
    whole = line(7)
    append(log, whole[:50])
    assert src.poll(timeout=0.2) == []
    pos = src.position()
    assert pos is not None and pos["offset"] == 0
    append(log, whole[50:])
    assert serials(collect(src, 1)) == [7]
    pos = src.position()
    assert pos is not None and pos["offset"] == len(whole)
    src.close()


def test_start_end_skips_existing(tmp_path: Path) -> None:
    """With start = end, old content is skipped and only new lines are read."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(1))
    src, _ = make_source(log, start="end")
    src.open(None)
    assert src.caught_up
    append(log, line(2))
    assert serials(collect(src, 1)) == [2]
    src.close()


def test_rename_rotation_finishes_old_file_first(tmp_path: Path) -> None:
    """Lines written to the old file just before rotation are read before the new file's."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(1))
    src, reopens = make_source(log)
    src.open(None)
    assert serials(collect(src, 1)) == [1]
    append(log, line(2))
    log.rename(tmp_path / "audit.log.1")
    (tmp_path / "audit.log.1").chmod(0o400)
    log.write_bytes(line(3))
    assert serials(collect(src, 2)) == [2, 3]
    assert reopens["rotated"] == 1
    src.close()


def test_three_quick_rotations_lose_nothing(tmp_path: Path) -> None:
    """Three rotations between two polls: every intermediate file is read, in order."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(1))
    src, _ = make_source(log)
    src.open(None)
    assert serials(collect(src, 1)) == [1]
    serial = 2
    for _ in range(3):
        append(log, line(serial))
        serial += 1
        for n in range(4, 0, -1):  # shift audit.log.N up as auditd does
            older = tmp_path / f"audit.log.{n}"
            if older.exists():
                older.rename(tmp_path / f"audit.log.{n + 1}")
        log.rename(tmp_path / "audit.log.1")
        log.write_bytes(line(serial))
        serial += 1
    assert serials(collect(src, serial - 2)) == list(range(2, serial))
    src.close()


def auditd_rotate(log: Path) -> None:
    """Rotate as auditd does: shift audit.log.N up by one, oldest first, then audit.log to .1."""
    n = 1
    while log.with_name(f"{log.name}.{n}").exists():
        n += 1
    for i in range(n - 1, 0, -1):
        log.with_name(f"{log.name}.{i}").rename(log.with_name(f"{log.name}.{i + 1}"))
    log.rename(log.with_name(f"{log.name}.1"))


class LateStatEntry:
    """A directory entry whose stat runs a hook first: a rename lands between list and stat."""

    def __init__(self, entry: os.DirEntry[str], before_stat: Callable[[], None]) -> None:
        self.name, self.path, self.before_stat = entry.name, entry.path, before_stat

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        self.before_stat()
        return Path(self.path).stat(follow_symlinks=follow_symlinks)


@pytest.mark.parametrize(
    ("rotations_before", "stats_before"),
    [(1, 0), (2, 1)],
    ids=["old-file-moved-out-of-scan", "successor-moved-mid-scan"],
)
def test_rotation_during_directory_scan_skips_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rotations_before: int, stats_before: int
) -> None:
    """auditd shifting names while the follower scans the directory skips no rotated file."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(1))
    src, _ = make_source(log)
    src.open(None)
    assert serials(collect(src, 1)) == [1]
    serial = 2

    def rotate_and_write() -> None:
        nonlocal serial
        auditd_rotate(log)
        log.write_bytes(line(serial))
        serial += 1

    for _ in range(rotations_before):
        rotate_and_write()
    # The follower's next scan lists the names, then auditd rotates once more after
    # `stats_before` of them were stat'ed: the rest are stat'ed under their new owners.
    real_scandir = os.scandir
    stats = 0

    def before_stat() -> None:
        nonlocal stats
        if stats == stats_before:
            rotate_and_write()
        stats += 1

    def scandir(path: str | Path) -> list[LateStatEntry] | Iterator[os.DirEntry[str]]:
        if Path(path) != tmp_path or stats > 0:
            return real_scandir(path)
        listed = sorted(real_scandir(path), key=lambda e: e.name, reverse=True)  # oldest first
        return [LateStatEntry(e, before_stat) for e in listed]

    monkeypatch.setattr(os, "scandir", scandir)
    assert serials(collect(src, rotations_before + 1)) == list(range(2, serial))
    assert stats > stats_before  # the rotation did land inside a scan
    src.close()


def test_lines_written_just_before_rotation_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines written then rotated away between the read to EOF and the rotation check are read."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(1))
    src, reopens = make_source(log)
    src.open(None)
    assert serials(collect(src, 1)) == [1]
    check_switch = src._check_switch

    def write_and_rotate_first() -> bool:
        monkeypatch.setattr(src, "_check_switch", check_switch)  # only this once
        append(log, line(2))
        auditd_rotate(log)
        log.write_bytes(line(3))
        return check_switch()

    monkeypatch.setattr(src, "_check_switch", write_and_rotate_first)
    assert serials(collect(src, 2)) == [2, 3]
    assert reopens["rotated"] == 1
    src.close()


def test_copytruncate_restarts_from_zero(tmp_path: Path) -> None:
    """A truncated file (copytruncate) is read again from its start, and counted."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(1) + line(2))
    src, reopens = make_source(log)
    src.open(None)
    assert serials(collect(src, 2)) == [1, 2]
    with open(log, "r+b") as f:
        f.truncate(0)
    append(log, line(3))
    assert serials(collect(src, 1)) == [3]
    assert reopens["truncated"] == 1
    src.close()


def test_truncated_and_refilled_past_offset(tmp_path: Path) -> None:
    """Same inode rewritten with more content than before is still noticed by its first bytes."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(1))
    src, reopens = make_source(log)
    src.open(None)
    assert serials(collect(src, 1)) == [1]
    with open(log, "r+b") as f:
        f.truncate(0)
        f.write(line(5) + line(6) + line(7))
    assert serials(collect(src, 3)) == [5, 6, 7]
    assert reopens["truncated"] == 1
    src.close()


def test_deleted_and_recreated(tmp_path: Path) -> None:
    """A deleted log is waited for; when it is created again it is read from its start."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(1))
    src, reopens = make_source(log)
    src.open(None)
    assert serials(collect(src, 1)) == [1]
    log.unlink()
    assert src.poll(timeout=0.1) == []
    log.write_bytes(line(2))
    assert serials(collect(src, 1)) == [2]
    src.close()


def test_missing_at_start_then_created(tmp_path: Path) -> None:
    """A log missing at start-up is waited for (unhealthy meanwhile), then read when created."""
    log = tmp_path / "audit.log"
    src, reopens = make_source(log)
    src.open(None)
    assert not src.health().ok
    assert "does not exist" in src.health().reason
    assert src.poll(timeout=0.1) == []
    log.write_bytes(line(1))
    assert serials(collect(src, 1)) == [1]
    assert src.health().ok
    assert reopens["created"] == 1
    src.close()


def test_resume_at_checkpointed_position(tmp_path: Path) -> None:
    """A new follower opened at a saved position reads exactly what came after it."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(1) + line(2))
    src, _ = make_source(log)
    src.open(None)
    assert serials(collect(src, 2)) == [1, 2]
    pos = src.position()
    src.close()
    append(log, line(3))
    src2, _ = make_source(log)
    src2.open(pos)
    assert serials(collect(src2, 1)) == [3]
    assert src2.poll(timeout=0.05) == []
    src2.close()


def test_resume_in_rotated_file(tmp_path: Path) -> None:
    """Rotated while down: the rest of the old file (now audit.log.1) comes first, then the new."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(1))
    src, _ = make_source(log)
    src.open(None)
    assert serials(collect(src, 1)) == [1]
    pos = src.position()
    src.close()
    append(log, line(2))
    log.rename(tmp_path / "audit.log.1")
    log.write_bytes(line(3))
    src2, _ = make_source(log)
    src2.open(pos)
    assert serials(collect(src2, 2)) == [2, 3]
    src2.close()


def test_resume_with_replaced_file_starts_over(tmp_path: Path) -> None:
    """A position whose file is gone (fingerprint mismatch) restarts the current file, counted."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(1))
    src, _ = make_source(log)
    src.open(None)
    collect(src, 1)
    pos = src.position()
    src.close()
    assert pos is not None
    pos = {**pos, "fingerprint": "0" * 64}
    src2, reopens = make_source(log)
    src2.open(pos)
    assert serials(collect(src2, 1)) == [1]
    assert reopens["position_lost"] == 1
    src2.close()


def test_overlong_line_is_skipped_with_bounded_memory(tmp_path: Path) -> None:
    """A line past max_line_length is counted as an error and skipped, the next line is read."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"type=VIRT_CONTROL " + b"x" * 300_000 + b"\n" + line(2))
    src, _ = make_source(log, max_line_length=4096)
    src.open(None)
    assert serials(collect(src, 1)) == [2]
    assert src.stats.errors["line_too_long"] == 1
    assert src.parser.pending < 4096
    src.close()


def test_inotify_queue_overflow_is_survived(tmp_path: Path) -> None:
    """After a real IN_Q_OVERFLOW (too many events unread) the follower still reads new lines."""
    max_events = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if max_events > 100_000:
        pytest.skip("max_queued_events too large to overflow quickly")
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    src, _ = make_source(log, rescan_interval=0.2)
    src.open(None)
    assert src.poll(timeout=0.01) == []
    other = tmp_path / "noise"
    other.write_bytes(b"")
    for _ in range(max_events + 100):
        os.utime(other)
    append(log, line(9))
    assert serials(collect(src, 1)) == [9]
    src.close()


def test_unreadable_file_names_the_fix(tmp_path: Path) -> None:
    """An unreadable log makes the source unhealthy with a message naming the fix, no crash."""
    need_root()
    setpriv = need_tool("setpriv")
    log = tmp_path / "audit.log"
    log.write_bytes(line(1))
    log.chmod(0o600)
    os.chown(log, 65534, 65534)
    code = (
        "from monitord.config import SourceConfig\n"
        "from monitord.sources.file import FileSource\n"
        f"s = FileSource(SourceConfig(path={str(log)!r}))\n"
        "s.open(None); print(s.poll(timeout=0.05)); print(s.health().reason)\n"
    )
    # Root without CAP_DAC_* is refused a file of another user, as the monitord user would be;
    # unlike switching users, this keeps the checkout readable wherever it lives.
    out = subprocess.run(
        [setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "permission denied" in out.stdout
    assert "CAP_DAC_READ_SEARCH" in out.stdout and "log_group" in out.stdout


def open_in_thread(src: FileSource) -> None:
    """src.open(None), failing the test if it does not return within 5 s (a blocked open)."""
    import threading

    opener = threading.Thread(target=src.open, args=(None,), daemon=True)
    opener.start()
    opener.join(timeout=5)
    assert not opener.is_alive(), "FileSource.open() blocked"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO as the audit log (nobody writing it) is not opened: open() returns at once and
    health says why, naming the audisp source (it blocked in open() before)."""
    fifo = tmp_path / "audit.log"
    os.mkfifo(fifo)
    src, _ = make_source(fifo)
    try:
        open_in_thread(src)
        health = src.health()
        assert not health.ok and "FIFO" in health.reason and "audisp" in health.reason
        assert src.poll(0.1) == []
    finally:
        src.close()
    with pytest.raises(ConfigError, match=r"source.path: .*FIFO \(named pipe\), not a regular"):
        check_log_path(str(fifo))


def test_symlinked_log_is_refused_with_its_target(tmp_path: Path) -> None:
    """A symbolic link as the audit log is refused (not followed), the message names the
    real file to configure instead; a symlinked directory above it is fine."""
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "audit.log"
    real.write_bytes(line(1))
    link = tmp_path / "audit.log"
    link.symlink_to(real)
    src, _ = make_source(link)
    try:
        open_in_thread(src)
        health = src.health()
        assert not health.ok and "symbolic link" in health.reason and str(real) in health.reason
    finally:
        src.close()
    with pytest.raises(ConfigError, match="set source.path to " + str(real)):
        check_log_path(str(link))
    (tmp_path / "logdir").symlink_to(real_dir, target_is_directory=True)
    check_log_path(str(tmp_path / "logdir" / "audit.log"))
    src, _ = make_source(tmp_path / "logdir" / "audit.log", start="beginning")
    try:
        src.open(None)
        assert serials(collect(src, 1)) == [1]
    finally:
        src.close()


def test_other_file_kinds_are_named(tmp_path: Path) -> None:
    """A directory or a device as the audit log is refused with what it is; a missing file
    is not an error (it is waited for)."""
    with pytest.raises(ConfigError, match="is a directory, not a regular file"):
        check_log_path(str(tmp_path))
    with pytest.raises(ConfigError, match="is a character device"):
        check_log_path("/dev/null")
    check_log_path(str(tmp_path / "later.log"))
