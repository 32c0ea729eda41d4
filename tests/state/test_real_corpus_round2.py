"""The second real-libvirt corpus: replay must give what virsh said, at every checkpoint.

tests/data/real/libvirt-9.0-round2.* was captured from libvirt 9.0 + QEMU 7.2 + auditd
3.0.9 by `python -m tests.libvirt_round2 capture tests/data/real` (cases and virsh facts:
tests/data/real/README.md). The golden file holds checkpoints: a position in the log
stream (the rotated file, then the new one) and in the plugin stream, and per guest what
monitord must say there, taken from virsh at capture time (state, vm_pid, vcpus,
memory_bytes, how many devices of each list). Other document fields (e.g. `node`) are
not compared.

Device lists are multisets: the `devices` guest has two identical USB redirdevs
(`hostdevs` holds "usb:USB redirdev" twice, as virsh lists two), and a start for a
guest the log says is running closes the previous run (the `crashed` guest, whose QEMU
died while libvirtd was down, with no stop record).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA
from tests.daemonproc import monitord_cmd

REAL = DATA / "real"
STEM = "libvirt-9.0-round2"
GOLDEN = json.loads((REAL / f"{STEM}.golden.json").read_text())
LOGS = [REAL / name for name in GOLDEN["streams"]["log"]]
PLUGIN = REAL / GOLDEN["streams"]["plugin"]
CHECKPOINTS = {c["label"]: c for c in GOLDEN["checkpoints"]}
REDIRDEV = "usb:USB redirdev"


def lines_of(path: Path) -> list[bytes]:
    """Complete lines (split on newlines only: 0x1D, the enrichment separator, is no break)."""
    return path.read_bytes().split(b"\n")[:-1]


def prefixes(files: list[Path], count: int, tmp_path: Path) -> list[Path]:
    """The first `count` lines of the stream made of `files`, as files cut at the same places."""
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))
    out = []
    for i, path in enumerate(files):
        lines = lines_of(path)[:count]
        count -= len(lines)
        part = tmp_path / f"{i}-{path.name}"
        part.write_bytes(b"".join(line + b"\n" for line in lines))
        out.append(part)
        if count <= 0:
            break
    return out


def replay(files: list[Path]) -> dict[str, dict[str, Any]]:
    proc = subprocess.run(
        [*monitord_cmd(), "replay", "--json", *map(str, files)], capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return {g["uuid"]: g for g in json.loads(proc.stdout)["guests"]}


def assert_matches(guests: dict[str, dict[str, Any]], checkpoint: dict[str, Any]) -> None:
    """Each guest of the checkpoint has the expected (virsh-confirmed) fields."""
    assert set(guests) == set(checkpoint["guests"])
    for uuid, entry in checkpoint["guests"].items():
        want = entry["expected"]
        got = guests[uuid]
        where = f"{checkpoint['label']}/{want['name']}: monitord {got}\nvs expected {want}"
        assert got["name"] == want["name"], where
        assert got["state"] == want["state"], where
        for key in ("vm_pid", "vcpus", "memory_bytes"):
            if key in want:
                assert got[key] == want[key], f"{key}: {where}"
        for name, count in want.get("devices", {}).items():
            assert len(got[name]) == count, f"{name}: {where}"


@pytest.mark.parametrize("label", list(CHECKPOINTS))
def test_replayed_log_agrees_with_virsh(label: str, tmp_path: Path) -> None:
    """Replaying the log (rotated file first) up to a checkpoint gives what virsh said there."""
    checkpoint = CHECKPOINTS[label]
    assert_matches(replay(prefixes(LOGS, checkpoint["log_line"], tmp_path)), checkpoint)


@pytest.mark.parametrize("label", list(CHECKPOINTS))
def test_replayed_plugin_stream_agrees_with_virsh(label: str, tmp_path: Path) -> None:
    """The plugin stream (log lines plus EOE, no rotation mark) gives the same state."""
    checkpoint = CHECKPOINTS[label]
    assert_matches(replay(prefixes([PLUGIN], checkpoint["plugin_line"], tmp_path)), checkpoint)


def test_two_identical_redirdevs_are_two_devices(tmp_path: Path) -> None:
    """Two USB redirdevs at start, a third attached, one detached: two, as virsh shows."""
    checkpoint = CHECKPOINTS["final"]
    devices = next(u for u, e in checkpoint["guests"].items() if e["expected"]["name"] == "devices")
    assert checkpoint["guests"][devices]["virsh"]["devices"]["hostdevs"] == 2
    got = replay(prefixes(LOGS, checkpoint["log_line"], tmp_path))[devices]
    assert got["hostdevs"] == [REDIRDEV, REDIRDEV]


def test_a_start_while_running_closes_the_previous_run(tmp_path: Path) -> None:
    """The `crashed` guest: running with the dead pid (no stop record), then running with the
    new pid and one disk and one NIC (the new run's, not both runs')."""
    before, after = CHECKPOINTS["crashed-while-down"], CHECKPOINTS["final"]
    crashed = next(u for u, e in after["guests"].items() if e["expected"]["name"] == "crashed")
    assert before["guests"][crashed]["virsh"]["domstate"] == "shut off (crashed)"
    assert before["guests"][crashed]["expected"]["no_stop_record"] is True
    old = replay(prefixes(LOGS, before["log_line"], tmp_path))[crashed]
    dead_pid = before["guests"][crashed]["expected"]["vm_pid"]
    assert (old["state"], old["vm_pid"]) == ("running", dead_pid)
    new = replay(prefixes(LOGS, after["log_line"], tmp_path))[crashed]
    assert new["state"] == "running"
    assert new["vm_pid"] == after["guests"][crashed]["expected"]["vm_pid"] != old["vm_pid"]
    assert (len(new["disks"]), len(new["nics"])) == (1, 1)
