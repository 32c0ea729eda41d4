"""`monitord history` and `monitord sessions`: the store, a running daemon's API and log files
give the same answer; user errors are one line and exit 2."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitord.commands.cli import main
from monitord.config import HttpConfig, StateConfig
from monitord.serve import api
from monitord.serve.exporter import make_registry
from monitord.serve.server import WebServer
from monitord.state import schema
from monitord.state.sessions import sessions
from monitord.state.store import Store
from monitord.state.table import GuestTable
from tests.conftest import DATA
from tests.daemonproc import monitord_cmd
from tests.state import store_corruptions as c

LOG = DATA / "state" / "lifecycle.log"
WEB01 = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A store holding the lifecycle log's records, closed."""
    store, _ = Store.open(str(tmp_path / "state"))
    assert store.commit(source_kind=None, position=None, events=c.records())
    store.close()
    yield tmp_path / "state"


@pytest.fixture
def daemon_url(state: Path) -> Iterator[str]:
    """A listener serving that store's history, as the daemon does."""
    store, _ = Store.open(str(state))
    table = GuestTable(StateConfig())
    table.apply_many(c.records())
    web = WebServer(HttpConfig(listen="127.0.0.1:0"), make_registry(table, "1"),
                    table, lambda: (True, ""), api.History(store.history))  # fmt: skip
    web.start()
    yield web.url
    web.stop()
    store.close()


def events_of(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    code, out, err = run_cli(capsys, "history", "--json", *argv)
    assert code == 0, err
    events: list[dict[str, Any]] = json.loads(out)["events"]
    for e in events:
        e.pop("id", None)
    return events


@pytest.mark.parametrize(
    "filters",
    [
        [],
        ["--guest", "web01"],
        ["--guest", WEB01.upper()],
        ["--guest", "broken", "--failed"],
        ["--guest", "db 01"],
        ["--failed"],
        ["--since", "1700000065", "--until", "2023-11-14T22:15:09Z"],
        ["--guest", "nobody"],
    ],
    ids=lambda f: " ".join(f) or "all",
)
def test_history_is_the_same_from_store_api_and_log(
    capsys: pytest.CaptureFixture[str], state: Path, daemon_url: str, filters: list[str]
) -> None:
    """--state-dir, --url and --from-log print the same events for the same filters."""
    from_store = events_of(capsys, "--state-dir", str(state), *filters)
    from_api = events_of(capsys, "--url", daemon_url, *filters)
    from_log = events_of(capsys, "--from-log", str(LOG), *filters)
    assert from_store == from_api == from_log
    if filters != ["--guest", "nobody"]:
        assert from_store
    records = {r.serial: r for r in c.records()}
    for e in from_store:
        assert {k: v for k, v in e.items() if k != "host"} == records[e["serial"]].to_json()


def test_history_table(capsys: pytest.CaptureFixture[str], state: Path) -> None:
    """On a terminal: one row per event with time, guest, event, result and detail."""
    code, out, _ = run_cli(capsys, "history", "--state-dir", str(state), "--guest", "broken")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "GUEST", "EVENT", "RESULT", "DETAIL"]
    assert any("start/booted" in ln and "failed" in ln for ln in lines)
    assert lines[-1] == f"{len(lines) - 2} events"


def test_sessions_are_the_same_from_store_api_and_log(
    capsys: pytest.CaptureFixture[str], state: Path, daemon_url: str
) -> None:
    """`sessions --json` from the three sources equals sessions() over the log's records."""
    expected = [s.to_json() for s in sessions(c.records())]
    for source in (["--state-dir", str(state)], ["--url", daemon_url], ["--from-log", str(LOG)]):
        code, out, err = run_cli(capsys, "sessions", "--json", *source)
        assert code == 0, err
        assert json.loads(out) == {"sessions": expected}


def test_sessions_of_one_guest_and_since(capsys: pytest.CaptureFixture[str], state: Path) -> None:
    """--guest keeps one guest's runs; --since drops runs over before it, keeps running ones."""
    code, out, _ = run_cli(capsys, "sessions", "--json", "--state-dir", str(state),
                           "--guest", "db 01", "--since", "1700000100")  # fmt: skip
    assert code == 0
    got = json.loads(out)["sessions"]
    assert [(s["start_reason"], s["end"]) for s in got] == [("restored", "running")]
    code, out, _ = run_cli(capsys, "sessions", "--state-dir", str(state), "--guest", "db 01")
    assert code == 0 and "2 sessions" in out and "saved" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["history", "--since", "soon"], "bad time"),
        (["sessions", "--until", "2026-13-45"], "bad time"),
        (["history", "--from-log", "/nonexistent/audit.log"], "cannot read /nonexistent"),
        (["history", "--state-dir", "/nonexistent/dir"], "no such directory"),
        (["history", "--state-dir", "/tmp", "--url", "http://x"], "not allowed with"),
        (["sessions", "--bogus"], "unrecognized arguments"),
    ],
)
def test_user_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A wrong flag or input: exit 2, one line on stderr, no traceback."""
    try:
        code, _, err = run_cli(capsys, *argv)
    except SystemExit as exit_:  # argparse errors
        code = int(exit_.code or 0)
        err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_empty_directory_is_a_user_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A state directory without a store: exit 2 naming the directory."""
    code, _, err = run_cli(capsys, "history", "--state-dir", str(tmp_path))
    assert code == 2 and str(tmp_path) in err and "not found" in err


def test_newer_store_is_refused(capsys: pytest.CaptureFixture[str], state: Path) -> None:
    """A store written by a newer monitord: exit 1 with the reason, nothing misread."""
    conn = sqlite3.connect(state / schema.DB_NAME)
    conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    conn.close()
    code, out, err = run_cli(capsys, "history", "--state-dir", str(state))
    assert code == 1 and out == "" and "newer monitord" in err


def test_unreachable_daemon_is_a_runtime_failure(capsys: pytest.CaptureFixture[str]) -> None:
    """--url with nothing listening: exit 1, one line."""
    code, _, err = run_cli(capsys, "history", "--url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach" in err


def test_reads_while_the_daemon_writes(state: Path) -> None:
    """The command reads the store read-only while its writer holds it and commits."""
    store, _ = Store.open(str(state))
    try:
        for _ in range(3):
            assert store.commit(source_kind=None, position=None, events=c.records())
            proc = subprocess.run(
                [*monitord_cmd(), "history", "--json", "--state-dir", str(state)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            assert len(json.loads(proc.stdout)["events"]) % len(c.records()) == 0
        assert store.commit(source_kind=None, position=None)  # never blocked by the reader
    finally:
        store.close()
