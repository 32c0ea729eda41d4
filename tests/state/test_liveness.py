"""monitord.state.liveness: is a guest's process still there (kill(pid, 0) + start time)."""

from __future__ import annotations

import errno
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitord.state.liveness import (
    Liveness,
    boot_time,
    check,
    process_start_time,
)
from tests.conftest import need_root

TICKS = os.sysconf("SC_CLK_TCK")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A real process to look at; killed and reaped at the end."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def fake_proc(root: Path, pid: int, *, comm: str, state: str, start_ticks: int, btime: int) -> str:
    """Write a minimal /proc: PID/stat (52 fields) and stat with `btime`."""
    (root / str(pid)).mkdir(parents=True)
    rest = [state, "1"] + ["0"] * 17 + [str(start_ticks)] + ["0"] * 30
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")
    (root / "stat").write_text(f"cpu  1 2 3 4\nbtime {btime}\nprocesses 9\n")
    return str(root)


def alive_kill(pid: int, sig: int) -> None:
    """kill() answering "exists" for any pid (a fake /proc's pids need not exist)."""


# -- real processes ------------------------------------------------------------------------------


def test_a_running_process_is_alive(sleeper: subprocess.Popen[bytes]) -> None:
    """A live pid whose process started before the start record is alive."""
    assert check(sleeper.pid, time.time()) is Liveness.ALIVE


def test_a_killed_process_is_gone(sleeper: subprocess.Popen[bytes]) -> None:
    """After the process is killed and reaped, kill(pid, 0) fails with ESRCH: gone."""
    pid = sleeper.pid
    sleeper.kill()
    sleeper.wait()
    assert check(pid, time.time() - 5) is Liveness.GONE


def test_a_killed_unreaped_process_is_gone(sleeper: subprocess.Popen[bytes]) -> None:
    """A zombie still answers kill(pid, 0), but its /proc state Z says it is gone."""
    sleeper.kill()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the killed process never became a zombie"
        time.sleep(0.01)
    os.kill(sleeper.pid, 0)  # the pid still exists
    assert check(sleeper.pid, time.time()) is Liveness.GONE


def test_a_process_started_after_the_record_is_another_process(
    sleeper: subprocess.Popen[bytes],
) -> None:
    """Pid reuse: the live process behind the pid started a minute after the start record."""
    began = process_start_time(sleeper.pid)
    assert began is not None
    assert check(sleeper.pid, began - 60) is Liveness.GONE
    # The same process against a record written just after it started: alive.
    assert check(sleeper.pid, began + 0.5) is Liveness.ALIVE


def test_start_time_of_a_real_process_is_now(sleeper: subprocess.Popen[bytes]) -> None:
    """/proc/PID/stat field 22 + /proc/stat btime give the wall-clock start (within ~1 s)."""
    began = process_start_time(sleeper.pid)
    assert began is not None
    assert abs(began - time.time()) < 5
    booted = boot_time()
    assert booted is not None and booted < began


def test_another_users_process_is_alive_through_eperm() -> None:
    """kill(pid, 0) on another user's process fails with EPERM: it exists (real, unprivileged)."""
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            os.kill(1, 0)
        assert check(1, time.time()) is Liveness.ALIVE
        return
    need_root()
    nobody = pwd.getpwnam("nobody")
    child = os.fork()
    if child == 0:  # drop to nobody: pid 1 (root's) is then out of reach of kill()
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                os.kill(1, 0)
                os._exit(3)  # not EPERM: the test would prove nothing
            except PermissionError:
                pass
            os._exit(0 if check(1, time.time()) is Liveness.ALIVE else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# -- injected /proc and kill ----------------------------------------------------------------------


def test_no_pid_is_unknown() -> None:
    """A running guest without a vm-pid (or pid 0) cannot be checked."""
    assert check(None, time.time()) is Liveness.UNKNOWN
    assert check(0, time.time()) is Liveness.UNKNOWN


def test_eperm_with_proc_hidden_is_alive(tmp_path: Path) -> None:
    """ProtectProc=invisible: no /proc entry, kill() says EPERM: alive (kill alone answers)."""

    def eperm(pid: int, sig: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    assert check(4242, time.time(), proc_root=str(tmp_path), kill=eperm) is Liveness.ALIVE


def test_esrch_is_gone_whatever_proc_says(tmp_path: Path) -> None:
    """ESRCH from kill() is gone, even with a /proc entry for the pid (the kernel decides)."""
    root = fake_proc(tmp_path, 4242, comm="qemu", state="S", start_ticks=100, btime=1000)

    def esrch(pid: int, sig: int) -> None:
        raise ProcessLookupError(errno.ESRCH, "No such process")

    assert check(4242, 2000.0, proc_root=root, kill=esrch) is Liveness.GONE


def test_other_kill_errors_are_unknown(tmp_path: Path) -> None:
    """kill() failing for another reason (EINVAL) tells nothing."""

    def einval(pid: int, sig: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    assert check(4242, 2000.0, proc_root=str(tmp_path), kill=einval) is Liveness.UNKNOWN


def test_start_time_parses_names_with_spaces_and_parentheses(tmp_path: Path) -> None:
    """The command name may hold ') (' and spaces: fields are counted after the last ')'."""
    root = fake_proc(
        tmp_path, 77, comm="qemu-system-x86 ) (x", state="S", start_ticks=250, btime=1000
    )
    assert process_start_time(77, root, clock_ticks=100) == 1002.5


def test_pid_reuse_detected_from_a_fake_proc(tmp_path: Path) -> None:
    """A process started 10 s after the start record (btime + ticks) is not the guest's."""
    root = fake_proc(tmp_path, 77, comm="bash", state="S", start_ticks=100_000, btime=1000)
    # started at 1000 + 1000 s = 2000
    assert check(77, 1990.0, proc_root=root, kill=alive_kill, clock_ticks=100) is Liveness.GONE
    assert check(77, 1999.0, proc_root=root, kill=alive_kill, clock_ticks=100) is Liveness.ALIVE
    # Without a record time there is nothing to compare: alive.
    assert check(77, None, proc_root=root, kill=alive_kill, clock_ticks=100) is Liveness.ALIVE


def test_unreadable_boot_time_falls_back_to_kill(tmp_path: Path) -> None:
    """No /proc/stat btime: the start time is unknown and kill() alone answers."""
    root = fake_proc(tmp_path, 77, comm="qemu", state="S", start_ticks=100_000, btime=1000)
    (tmp_path / "stat").unlink()
    assert process_start_time(77, root) is None
    assert check(77, 0.0, proc_root=root, kill=alive_kill) is Liveness.ALIVE


def test_zombie_in_fake_proc_is_gone(tmp_path: Path) -> None:
    """State Z (or X) in /proc/PID/stat: the process has exited."""
    root = fake_proc(tmp_path, 77, comm="qemu", state="Z", start_ticks=1, btime=1000)
    assert check(77, 5000.0, proc_root=root, kill=alive_kill) is Liveness.GONE
