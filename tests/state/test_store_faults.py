"""The store on a real, small filesystem (tmpfs) that fills up or is read-only: commits fail,
are counted and retried, nothing is left behind, and the next good commit catches up."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitord.audit.record import AuditRecord
from monitord.state import schema
from monitord.state.history import EventQuery
from monitord.state.store import LOCK_NAME, Store
from tests.conftest import need_root, need_tool
from tests.state import store_corruptions as c

pytestmark = pytest.mark.root
EXPECTED_FILES = {schema.DB_NAME, schema.DB_NAME + "-wal", schema.DB_NAME + "-shm", LOCK_NAME}


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test (unmounted afterwards)."""
    need_root()
    mount = need_tool("mount")
    point = tmp_path / "mnt"
    point.mkdir()
    subprocess.run([mount, "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(point)],
                   check=True)  # fmt: skip
    try:
        yield point
    finally:
        subprocess.run([need_tool("umount"), "-l", str(point)], check=False)


def fill(point: Path) -> None:
    """Fill the filesystem to the last block with dd (it ends with ENOSPC)."""
    subprocess.run(
        [need_tool("dd"), "if=/dev/zero", f"of={point / 'filler'}", "bs=4k"],
        capture_output=True, check=False,
    )  # fmt: skip
    st = os.statvfs(point)
    assert st.f_bavail == 0


class Mono:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def batches() -> Iterator[list[AuditRecord]]:
    recs = c.records()
    k = 0
    while True:
        k += 1
        yield [dataclasses.replace(r, time=r.time + 1000 * k, serial=r.serial + 1000 * k)
               for r in recs] * 20  # fmt: skip


def test_disk_full_rolls_back_then_catches_up(small_fs: Path) -> None:
    """ENOSPC: commits fail and are counted, /healthz reason after the grace, no stray files;
    space back: one commit writes everything held, nothing lost or doubled."""
    state = small_fs / "state"
    mono = Mono()
    store, _ = Store.open(str(state), grace=3.0, monotonic=mono)
    source = batches()
    committed: list[AuditRecord] = []
    first = next(source)
    assert store.commit(source_kind="file", position=c.position(1),
                        upserted=[(("", "u1"), c.guest("u1", "one"))], events=first)  # fmt: skip
    committed += first
    fill(small_fs)
    failures = 0
    position = 1
    guests = {"u1": c.guest("u1", "one")}
    for i in range(8):
        batch = next(source)
        position += 1
        uuid = f"u{i % 3}"
        guests.pop(uuid, None)
        guests[uuid] = c.guest(uuid, "n", i)
        ok = store.commit(source_kind="file", position=c.position(position),
                          upserted=[(("", uuid), guests[uuid])], events=batch)  # fmt: skip
        committed += batch
        failures += not ok
        mono.t += 1.0
        assert set(os.listdir(state)) <= EXPECTED_FILES
    assert failures >= 5
    assert store.stats().commit_errors == failures
    ok, reason = store.healthy()
    assert not ok and "full" in reason.lower()
    (small_fs / "filler").unlink()
    assert store.commit(source_kind="file", position=c.position(position + 1))
    assert store.healthy() == (True, "ok")
    store.close()
    assert set(os.listdir(state)) <= EXPECTED_FILES
    store, loaded = Store.open(str(state))
    assert loaded.position == c.position(position + 1)
    assert loaded.guests == tuple(guests.values())
    assert [e.record for e in store.history.iter_events(EventQuery())] == committed
    store.close()


def test_read_only_filesystem_at_start_runs_from_memory_then_writes_all(small_fs: Path) -> None:
    """A store on a read-only filesystem: open works (detached), commits fail and are counted;
    once writable, the store is set aside (not read at start) and the full state is written."""
    state = small_fs / "state"
    c.make_store(state)
    subprocess.run([need_tool("mount"), "-o", "remount,ro", str(small_fs)], check=True)
    mono = Mono()
    store, loaded = Store.open(str(state), grace=2.0, monotonic=mono)
    assert loaded.origin == "fresh"
    recs = c.records()
    assert not store.commit(source_kind="file", position=c.position(3), events=recs[:5])
    mono.t = 10.0
    assert not store.healthy()[0]
    subprocess.run([need_tool("mount"), "-o", "remount,rw", str(small_fs)], check=True)
    assert not store.commit(source_kind="file", position=c.position(4), events=recs[5:])
    assert store.needs_full_state
    assert store.commit(source_kind="file", position=c.position(5),
                        upserted=[(("", "g"), c.guest("g", "g"))], full=True)  # fmt: skip
    assert store.stats().set_aside == {"unreadable": 1}
    store.close()
    store, loaded = Store.open(str(state))
    assert loaded.position == c.position(5) and loaded.guests == (c.guest("g", "g"),)
    assert [e.record for e in store.history.iter_events(EventQuery())] == recs
    store.close()


def test_an_import_that_does_not_fit_is_tried_again(small_fs: Path) -> None:
    """checkpoint.json on a full disk: no half-made store is left; once there is room, the
    next start imports it."""
    state = small_fs / "state"
    state.mkdir()
    c.make_checkpoint_json(state)
    fill(small_fs)
    store, loaded = Store.open(str(state))
    assert loaded.origin == "fresh"
    store.close()
    assert (state / "checkpoint.json").exists()
    assert not (state / schema.DB_NAME).exists()
    (small_fs / "filler").unlink()
    store, loaded = Store.open(str(state))
    assert loaded.origin == "checkpoint.json" and loaded.guests
    store.close()
