"""The forked checkpoint writer (monitord.state.checkpoint.BackgroundSave)."""

from __future__ import annotations

import os
from pathlib import Path

from monitord.state.checkpoint import CHILD_NICE, BackgroundSave, CheckpointStore


def test_checkpoint_child_runs_below_the_daemon(tmp_path: Path) -> None:
    """The child serialising the state runs CHILD_NICE lower, so ingestion keeps the CPU."""
    store = CheckpointStore(tmp_path)
    save = BackgroundSave(store)
    parent = os.nice(0)
    assert save.start(lambda: {"nice": os.nice(0)}, lambda: None)
    outcome = save.wait()
    assert outcome is not None and outcome[0]
    doc = store.load()
    assert doc is not None
    assert doc["nice"] == min(19, parent + CHILD_NICE)
    assert os.nice(0) == parent  # the daemon itself is untouched
