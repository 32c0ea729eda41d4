"""Log destination (journal or stderr), level, and rate limiting of repeated warnings."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitord.config import LoggingConfig
from monitord.logsetup import (
    RateLimitedLogger,
    RateLimiter,
    choose_target,
    setup_logging,
    stderr_is_journal,
)
from tests.conftest import ROOT, need_root, need_tool
from tests.journalfiles import PRIVATE_JOURNALD


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def journal_socket(tmp_path: Path) -> Iterator[str]:
    """A path where a journal socket exists (bound, so the existence check is real)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "journal.sock")
    sock.bind(path)
    yield path
    sock.close()


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


def test_stderr_journal_stream_detection(tmp_path: Path) -> None:
    """JOURNAL_STREAM counts only when it names stderr's own device and inode."""
    with open(tmp_path / "err", "w") as stderr:
        st = os.fstat(stderr.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stderr)
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stderr)
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, stderr)
        assert not stderr_is_journal({}, stderr)


def test_auto_target(tmp_path: Path, journal_socket: str) -> None:
    """auto picks the journal under systemd (or as a plugin) when it exists, stderr otherwise."""
    auto = LoggingConfig(target="auto")
    with open(tmp_path / "err", "w") as stderr:
        st = os.fstat(stderr.fileno())
        stream = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert choose_target(auto, stream, stderr, journal_socket) == "journal"
        assert choose_target(auto, {"INVOCATION_ID": "x"}, stderr, journal_socket) == "journal"
        # Started by systemd but stderr redirected (a test's pipe): keep stderr.
        redirected = {"INVOCATION_ID": "x", "JOURNAL_STREAM": "1:2"}
        assert choose_target(auto, redirected, stderr, journal_socket) == "stderr"
        assert choose_target(auto, {}, stderr, journal_socket) == "stderr"
        assert choose_target(auto, {}, stderr, journal_socket, plugin=True) == "journal"
        # No journald: never the journal in auto mode.
        missing = str(tmp_path / "none.sock")
        assert choose_target(auto, stream, stderr, missing) == "stderr"
        assert choose_target(auto, {}, stderr, missing, plugin=True) == "stderr"
        forced = LoggingConfig(target="journal")
        assert choose_target(forced, {}, stderr, missing) == "journal"
        assert choose_target(LoggingConfig(target="stderr"), stream, stderr, journal_socket) == (
            "stderr"
        )


def test_stderr_level_and_reload(restore_root_logger: None, journal_socket: str) -> None:
    """stderr gets formatted lines at the configured level; a second setup replaces the first."""
    first, second = io.StringIO(), io.StringIO()
    target = setup_logging(LoggingConfig(level="warning"), env={}, stderr=first)
    assert target == "stderr"
    log = logging.getLogger("monitord.test")
    log.info("hidden")
    log.warning("shown %d", 1)
    setup_logging(LoggingConfig(level="debug"), env={}, stderr=second)
    log.debug("now visible")
    assert "hidden" not in first.getvalue()
    assert "WARNING monitord.test: shown 1" in first.getvalue()
    assert f"monitord[{os.getpid()}]" in first.getvalue()
    assert "now visible" not in first.getvalue()  # the old handler is gone
    assert "DEBUG monitord.test: now visible" in second.getvalue()
    assert [h.get_name() for h in logging.getLogger().handlers].count("monitord") == 1


def test_repeated_warnings_are_rate_limited(restore_root_logger: None) -> None:
    """Past the burst, similar warnings are dropped; the next one admitted says how many."""
    clock = FakeClock()
    out = io.StringIO()
    config = LoggingConfig(level="info", rate_limit_burst=3, rate_limit_interval=60.0)
    setup_logging(config, env={}, stderr=out, clock=clock)
    log = logging.getLogger("monitord.sources.file")
    for i in range(10):
        log.warning("malformed record at offset %d", i)
        log.info("reopened %d", i)  # below warning: never limited
    log.warning("cannot read %s", "/var/log/audit/audit.log")  # another kind: not limited
    clock.now = 61.0
    log.warning("malformed record at offset %d", 99)
    lines = out.getvalue().splitlines()
    malformed = [line for line in lines if "malformed" in line]
    assert [m.split(": ", 1)[1] for m in malformed] == [
        "malformed record at offset 0",
        "malformed record at offset 1",
        "malformed record at offset 2",
        "malformed record at offset 99 (suppressed 7 similar)",
    ]
    assert sum("reopened" in line for line in lines) == 10
    assert sum("cannot read" in line for line in lines) == 1


def test_rate_limiter_windows() -> None:
    """Each key gets `burst` per interval; a burst of 0 means no limit."""
    clock = FakeClock()
    limiter = RateLimiter(burst=2, interval=10.0, clock=clock)
    assert [limiter.admit("a")[0] for _ in range(4)] == [True, True, False, False]
    assert limiter.admit("b") == (True, 0)
    clock.now = 9.9
    assert limiter.admit("a") == (False, 0)
    clock.now = 10.0
    assert limiter.admit("a") == (True, 3)
    assert limiter.admit("a") == (True, 0)
    unlimited = RateLimiter(burst=0, interval=10.0, clock=clock)
    assert all(unlimited.admit("a")[0] for _ in range(100))


def test_rate_limited_logger(caplog: pytest.LogCaptureFixture) -> None:
    """RateLimitedLogger limits per format string at any level, with the suppressed note."""
    clock = FakeClock()
    limited = RateLimitedLogger(logging.getLogger("monitord.rl"), burst=1, interval=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="monitord.rl"):
        assert limited.log(logging.INFO, "file %s missing, waiting", "/a")
        assert not limited.log(logging.INFO, "file %s missing, waiting", "/b")
        assert not limited.log(logging.INFO, "file %s missing, waiting", "/c")
        assert not limited.log(logging.DEBUG, "below the level")
        clock.now = 5
        assert limited.log(logging.INFO, "file %s missing, waiting", "/d")
    assert [r.getMessage() for r in caplog.records] == [
        "file /a missing, waiting",
        "file /d missing, waiting (suppressed 2 similar)",
    ]


_JOURNAL_SCRIPT = (
    PRIVATE_JOURNALD
    + r"""
"$PYTHON" -c "$CODE"
journalctl --sync
journalctl -o json --no-pager SYSLOG_IDENTIFIER=monitord
"""
)

_LOGGING_CODE = """
import logging
from monitord.config import LoggingConfig
from monitord.logsetup import setup_logging
target = setup_logging(LoggingConfig(level='info'), env={'INVOCATION_ID': 'x'})
assert target == 'journal', target
logging.getLogger('monitord.sources.file').warning('cannot read %s: %s', 'TOKEN', 'denied')
"""


def test_journal_gets_structured_records() -> None:
    """Under systemd the records reach a real journald with identifier, priority and logger."""
    need_root()
    unshare = need_tool("unshare")
    journald = need_tool("systemd-journald")
    need_tool("journalctl")
    token = uuid.uuid4().hex
    result = subprocess.run(
        [unshare, "-m", "--propagation", "private", "sh", "-c", _JOURNAL_SCRIPT],
        env=dict(
            os.environ,
            JOURNALD=journald,
            PYTHON=sys.executable,
            CODE=_LOGGING_CODE.replace("TOKEN", token),
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    mine = [e for e in entries if token in e.get("MESSAGE", "")]
    assert len(mine) == 1, result.stdout
    entry = mine[0]
    assert entry["MESSAGE"] == f"cannot read {token}: denied"
    assert entry["PRIORITY"] == "4"
    assert entry["LOGGER"] == "monitord.sources.file"
    assert entry["SYSLOG_IDENTIFIER"] == "monitord"
