"""A damaged state directory is set aside, counted and replaced by a fresh store: never a crash."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from monitord.state import schema
from monitord.state.store import Store
from tests.state import store_corruptions as c


@pytest.mark.parametrize("way", list(c.WAYS))
def test_damaged_store_opens_fresh_and_is_set_aside(tmp_path: Path, way: str) -> None:
    """Each damage: open returns within 5 s, sets the file aside (or loads), commits again."""
    damage, reason = c.WAYS[way]
    state = tmp_path / "state"
    c.reset(state)
    if way.startswith("checkpoint.json"):
        c.make_checkpoint_json(state)
    else:
        c.make_store(state)
    damage(state)
    started = time.monotonic()
    store, loaded = Store.open(str(state))
    elapsed = time.monotonic() - started
    try:
        assert elapsed < 5.0
        if reason is None:
            assert loaded.origin == "store" and not loaded.set_aside
        else:
            assert loaded.origin == "fresh", loaded
            assert loaded.position is None and loaded.guests == ()
            assert store.stats().set_aside == {reason: 1}
            assert loaded.set_aside and all(Path(p).exists() for p in loaded.set_aside)
        assert store.healthy() == (True, "ok")
        assert store.commit(source_kind="file", position=c.position(7), events=c.records()[:3])
    finally:
        store.close()
    again, reloaded = Store.open(str(state))
    try:
        assert reloaded.origin == "store"
        assert reloaded.position == c.position(7)
        assert again.stats().set_aside == {}
    finally:
        again.close()


def test_there_are_at_least_twenty_ways() -> None:
    """The corruption suite covers at least 20 different damages of the state directory."""
    assert len(c.WAYS) >= 20


def test_set_aside_copies_are_bounded(tmp_path: Path) -> None:
    """Repeated damage keeps only the newest few set-aside copies, not one per start."""
    state = tmp_path / "state"
    state.mkdir()
    clock = [1_700_000_000.0]
    for _ in range(6):
        (state / schema.DB_NAME).write_bytes(b"garbage" * 100)
        clock[0] += 60
        store, loaded = Store.open(str(state), clock=lambda: clock[0])
        assert loaded.origin == "fresh"
        store.close()
        (state / schema.DB_NAME).unlink()
        for side in state.glob(schema.DB_NAME + "-*"):
            side.unlink()
    kept = sorted(p.name for p in state.glob(schema.DB_NAME + ".*-*"))
    assert len(kept) == 3, kept


def test_reject_sets_aside_what_the_table_could_not_load(tmp_path: Path) -> None:
    """reject(): content the daemon cannot use is set aside like a corrupt file, store fresh."""
    state = tmp_path / "state"
    c.reset(state)
    c.make_store(state)
    store, loaded = Store.open(str(state))
    assert loaded.origin == "store" and len(loaded.guests) == 5
    store.reject("guest 1: vcpus is not a number")
    assert store.stats().set_aside == {"rejected": 1}
    assert list(state.glob(schema.DB_NAME + ".rejected-*"))
    assert store.commit(source_kind="file", position=c.position(9))
    store.close()
    again, reloaded = Store.open(str(state))
    assert reloaded.origin == "store" and reloaded.guests == ()
    assert reloaded.position == c.position(9)
    again.close()
