"""`monitord replay` on two cores: the forked candidate reader (monitord.audit.prefilter).

The reader passes on each chunk's candidate lines and the raw stream's counts; the
result must be exactly that of one process reading everything: the same lines per
chunk, the same counts, the same table. If the reader dies at any chunk (inside an
over-long line, or with a partial line held), this process reads on in its place.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitord.audit import prefilter
from monitord.audit.parser import ParseStats, StreamParser
from monitord.commands import replay as replay_module
from monitord.commands import simulate
from monitord.commands.inputs import open_all
from monitord.config import StateConfig
from monitord.state.table import GuestTable
from tests.commands.test_replay_status import _tricky_log
from tests.conftest import IN_CI

if not prefilter.available():
    if IN_CI:  # ./bootstrap installs gcc and python3-dev: CI must build and test it
        pytest.fail("the C accelerator is not built", pytrace=False)
    pytest.skip("the C accelerator is not built", allow_module_level=True)

CONFIG = StateConfig(forget_stopped_after=5.0, max_guests=6, max_events=0)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Over 8 MiB: long lines (some across chunk ends), malformed lines, no final newline."""
    path = tmp_path_factory.mktemp("prefilter") / "audit.log"
    _tricky_log(path)
    return path


@pytest.fixture(scope="module")
def virt_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only libvirt lines: every chunk ends inside one, and so does the file (no newline)."""
    path = tmp_path_factory.mktemp("prefilter") / "virt.log"
    path.write_bytes(b"".join(simulate.virt_only_log(4, 12_000)).rstrip(b"\n"))
    return path


def sequential(path: Path) -> tuple[list[bytes], list[tuple[int, bool]], ParseStats]:
    """One process's candidate lines and parser state per chunk, and its counts."""
    parser = StreamParser()
    with path.open("rb") as f:
        items = list(prefilter._read_lines(f.fileno(), str(path), parser, 0))
    return [lines for lines, _ in items], [state for _, state in items], parser.stats


def forked(path: Path) -> tuple[list[bytes], ParseStats]:
    stats = ParseStats()
    with path.open("rb") as f:
        lines = [bytes(x) for x in prefilter.candidate_chunks(f, str(path), stats, 65536)]
    return lines, stats


def test_reader_passes_on_what_one_process_reads(log: Path) -> None:
    lines, states, stats = sequential(log)
    got, got_stats = forked(log)
    assert got == lines
    assert got_stats.to_json() == stats.to_json()
    assert stats.errors["line_too_long"] and stats.ignored["not_virt"]
    assert any(discarding for _, discarding in states)  # a chunk ends inside a long line
    assert any(pending for pending, _ in states)


def test_candidate_lines_parse_as_the_whole_file(log: Path) -> None:
    """Parsing only the passed-on lines finds every record of the file."""
    whole = StreamParser()
    with log.open("rb") as f:
        records = [r for chunk in iter(lambda: f.read(1 << 20), b"") for r in whole.feed(chunk)]
    records += whole.finish()
    lines, _ = forked(log)
    part = StreamParser()
    found = [r for chunk in lines for r in part.feed(chunk)] + part.finish()
    assert found == records


def _die_after(monkeypatch: pytest.MonkeyPatch, chunks: int) -> None:
    """Make the forked reader exit after `chunks` chunks (this process reads normally)."""
    real = prefilter._read_lines
    parent = os.getpid()

    def reader(*args: Any) -> Iterator[tuple[bytes, tuple[int, bool]]]:
        for n, item in enumerate(real(*args)):
            if os.getpid() != parent and n == chunks:
                os._exit(3)
            yield item

    monkeypatch.setattr(prefilter, "_read_lines", reader)


def test_reader_death_at_any_kind_of_chunk_end(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside an over-long line, with a partial line held, at the start, after the last."""
    lines, states, stats = sequential(log)
    inside_long = next(n for n, (_, discarding) in enumerate(states) if discarding) + 1
    partial = next(n for n, (pending, _) in enumerate(states) if pending) + 1
    for chunks in (0, inside_long, partial, len(states) - 1, len(states)):
        with monkeypatch.context() as m:
            _die_after(m, chunks)
            got, got_stats = forked(log)
        assert got == lines, chunks
        assert got_stats.to_json() == stats.to_json(), chunks


def test_reader_death_inside_a_libvirt_line(
    virt_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines, states, stats = sequential(virt_log)
    assert len(states) > 3 and all(pending for pending, _ in states[:-1])
    # The last chunk is short; dying after it leaves the final line to this process.
    for chunks in (1, 2, len(states) - 1):
        with monkeypatch.context() as m:
            _die_after(m, chunks)
            got, got_stats = forked(virt_log)
        assert got == lines, chunks
        assert got_stats.to_json() == stats.to_json(), chunks


def _replayed(path: Path, workers: int) -> tuple[Any, Any, Any]:
    table = GuestTable(CONFIG)
    telemetry = replay_module.replay(open_all([str(path)]), table, workers=workers, min_size=0)
    return table.to_json(), telemetry.parse.to_json(), telemetry.last_record_time


def test_replay_on_two_cores_equals_one(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same table, counts and newest time, with expiry and eviction along the way."""
    used: list[str] = []
    real = replay_module._prefiltered

    def spy(*args: Any) -> None:
        used.append("prefilter")
        real(*args)

    monkeypatch.setattr(replay_module, "_prefiltered", spy)
    monkeypatch.setattr(replay_module.parallel, "usable_cpus", lambda: 2)
    one = _replayed(log, 1)
    assert not used
    two = _replayed(log, 2)
    assert used == ["prefilter"]
    assert two == one
    assert one[0]["evicted"] and one[1]["errors"]
    _die_after(monkeypatch, 3)
    assert _replayed(log, 2) == one
