"""auditd's plugin pipe overloading a real daemon with a small queue.

100,000 lines (a quarter of them libvirt starts, each of its own guest) are pushed
into `monitord run --source audisp` with `queue_size = 200` as fast as the pipe
takes them. Lines read plus lines dropped must equal lines written, and every guest
tracked must be a real one (its name matches its UUID): dropping never splices two
lines into a phantom guest. Closing the pipe then stops the daemon cleanly.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.adversarial.probes import start_line
from tests.daemonproc import MonitordProcess, wait_until

LINES = 100_000


def noise(i: int) -> bytes:
    return b"type=SYSCALL msg=audit(1700000000.000:%d): arch=c000003e syscall=59 a0=%x\n" % (i, i)


@pytest.mark.slow
def test_audisp_overload_with_a_small_queue(tmp_path: Path) -> None:
    """Counts add up exactly and no guest is a phantom after an overload of a 200-record
    queue."""
    config = tmp_path / "monitord.toml"
    # Started as root like auditd starts it; stays root (no monitord user on a test machine).
    config.write_text('[source]\nkind = "audisp"\nqueue_size = 200\n[plugin]\nuser = "root"\n')
    config.chmod(0o600)
    daemon = MonitordProcess(tmp_path / "state", ["--config", str(config)], stdin=subprocess.PIPE)
    with daemon:
        proc = daemon.proc
        assert proc is not None and proc.stdin is not None
        written = [start_line(i) if i % 4 == 0 else noise(i) for i in range(LINES)]
        data = b"".join(written)
        t0 = time.monotonic()
        for i in range(0, len(data), 1 << 16):
            proc.stdin.write(data[i : i + (1 << 16)])
        proc.stdin.flush()
        assert time.monotonic() - t0 < 30, "the daemon held back auditd's writes"

        def accounted() -> bool:
            read = daemon.metric("monitord_lines_read_total", source="audisp")
            dropped = daemon.metric("monitord_records_dropped_total", reason="queue_full")
            return read + dropped == len(written)

        wait_until(accounted, timeout=60)
        assert daemon.metric("monitord_records_dropped_total", reason="queue_full") > 0
        assert daemon.metric("monitord_parse_errors_total") == 0
        guests = daemon.guests()["guests"]
        assert guests
        for guest in guests:
            index = int(guest["uuid"].rsplit("-", 1)[1])
            assert guest["name"] == f"g{index}", guest
        proc.stdin.close()  # EOF on the plugin pipe: the daemon stops
        proc.wait(timeout=30)
        assert proc.returncode == 0
