"""Real libvirt output: the golden corpus (cheap, always runs) and the live stack (slow, root).

The corpus under tests/data/real/ was captured from libvirt 9.0 + QEMU 7.2 +
auditd 3.0.9 by `python -m tests.libvirt_stack capture` (see its README.md).
The live test drives the same scenario through libvirtd, has two monitords
follow auditd (its log file, and its plugin stream) and checks both against
virsh and against each other.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import DATA
from tests.daemonproc import monitord_cmd

REAL = DATA / "real"
CORPUS = REAL / "libvirt-9.0-qemu-7.2.log"
EXPECTED = CORPUS.with_suffix(".expected.jsonl")
VIRSH = CORPUS.with_suffix(".virsh.json")
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def monitord(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*monitord_cmd(), *args], input=stdin, capture_output=True, timeout=60)


def parsed(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def virt_lines(path: Path, limit: int | None = None) -> list[bytes]:
    # Split on newlines only: 0x1D (the enrichment separator) is not a line break.
    lines = path.read_bytes().split(b"\n")[:limit]
    return [ln for ln in lines if b" msg=audit(" in ln and ln.startswith(b"type=VIRT_")]


# -- the golden corpus ---------------------------------------------------------------------------


def test_corpus_parses_to_expected_jsonl() -> None:
    """`monitord parse` on the real corpus prints the stored JSONL (UPDATE_GOLDEN=1 rewrites)."""
    proc = monitord("parse", str(CORPUS))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    if UPDATE:
        EXPECTED.write_bytes(proc.stdout)
    assert proc.stdout.decode().splitlines() == EXPECTED.read_text().splitlines()


def test_every_libvirt_line_of_the_corpus_is_a_record() -> None:
    """Each VIRT_* line libvirt wrote becomes one record, in order, with no parse error."""
    lines = virt_lines(CORPUS)
    records = parsed(EXPECTED)
    assert len(lines) == len(records) > 80
    for line, rec in zip(lines, records, strict=True):
        assert line.startswith(f"type={rec['type']} ".encode())
        assert f":{rec['serial']}):".encode() in line
        assert rec["virt"] == "qemu"
        assert rec["exe"] == "/usr/sbin/libvirtd"
        assert rec["subj"] is None  # no LSM on this host
        assert rec["result"] in ("success", "failed")


def test_corpus_facts_formats_md_did_not_fully_predict() -> None:
    """Real libvirt: hex names, vm-pid=0 on stops, success device records before a failed start."""
    records = parsed(EXPECTED)
    names = {r["vm"] for r in records}
    assert names == {"web 01-tëst", "db02", "broken03"}
    # libvirt hex-encodes the name with a space and non-ASCII characters.
    assert b"vm=7765622030312D74C3AB7374 " in CORPUS.read_bytes()
    stops = [r for r in records if r["op"] == "stop"]
    assert {r["reason"] for r in stops} == {"saved", "destroyed", "shutdown", "failed"}
    assert all(r["fields"]["vm-pid"] == "0" and r["result"] == "success" for r in stops)
    starts = [r for r in records if r["op"] == "start"]
    assert {r["reason"] for r in starts} == {"booted", "restored"}
    failed = [r for r in records if r["result"] == "failed"]
    assert [(r["vm"], r["op"], r["fields"]["vm-pid"]) for r in failed] == [
        ("broken03", "start", "0")
    ]
    # Everything before the failed start record of that attempt succeeded: libvirt audits
    # the devices it meant to give the guest, then the failure.
    broken = [r for r in records if r["vm"] == "broken03"]
    assert broken[-1]["result"] == "failed"
    assert [r["resrc"] or r["type"] for r in broken[:-1]] == [
        "VIRT_MACHINE_ID",
        "disk",
        "net",
        "mem",
        "vcpu",
    ]
    assert all(r["result"] == "success" for r in broken[:-1])
    # The security label comes BEFORE the device records of its start, not after.
    first_web = [r for r in records if r["vm"] == "web 01-tëst"][:2]
    assert [r["type"] for r in first_web] == ["VIRT_MACHINE_ID", "VIRT_RESOURCE"]
    # cgroup records name the machine cgroup, whose name drops the non-alphanumerics.
    cgroups = {r["fields"]["cgroup"] for r in records if r["resrc"] == "cgroup"}
    assert "/sys/fs/cgroup/unified/machine/qemu-1-web01-tst.libvirt-qemu/" in cgroups


def test_corpus_memory_values_are_kib() -> None:
    """`new-mem` equals virsh dominfo's "Max memory" in KiB (64 MiB guest: 65536, +128 MiB DIMM)."""
    records = parsed(EXPECTED)
    view = json.loads(VIRSH.read_text())["guests"]
    web = next(u for u, g in view.items() if g["name"] == "web 01-tëst")
    mems = [
        (r["reason"], int(r["fields"]["old-mem"]), int(r["fields"]["new-mem"]))
        for r in records
        if r["uuid"] == web and r["resrc"] == "mem"
    ]
    assert mems == [("start", 0, 65536), ("update", 65536, 196608), ("start", 0, 196608)]
    assert view[web]["max_memory_kib"] == mems[-1][2]


def replay_prefix(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """`monitord replay --json` over the log as it was when virsh was asked (its first lines)."""
    snapshot = json.loads(VIRSH.read_text())
    prefix = tmp_path / "prefix.log"
    lines = CORPUS.read_bytes().split(b"\n")[: snapshot["log_lines"]]
    prefix.write_bytes(b"\n".join(lines) + b"\n")
    proc = monitord("replay", "--json", str(prefix))
    assert proc.returncode == 0, proc.stderr
    return {g["uuid"]: g for g in json.loads(proc.stdout)["guests"]}


def assert_agrees_with_virsh(
    guests: dict[str, dict[str, Any]], view: dict[str, Any], failed_start: str
) -> None:
    """Every guest virsh knows has monitord's state, vCPUs, memory, disks and MACs."""
    for uuid, truth in view.items():
        got = guests[uuid]
        where = f"{truth['name']}: monitord {got} vs virsh {truth}"
        assert got["name"] == truth["name"], where
        assert got["state"] == truth["state"], where
        # Disks and MACs describe the last start (also for a stopped guest); vCPUs and
        # memory too, but virsh reports a stopped guest's config instead: compare running ones.
        assert got["disks"] == truth["disks"], where
        assert got["nics"] == truth["macs"], where
        if truth["state"] == "running":
            assert got["vcpus"] == truth["vcpus"], where
            assert got["memory_bytes"] == truth["max_memory_kib"] * 1024, where
    broken = guests[failed_start]
    assert broken["failures"] == 1
    assert broken["last_result"] == "failed"
    # The contract: "a failed record changes nothing", so a guest whose only start failed
    # stays as unknown as before (virsh: shut off). Never running.
    assert broken["state"] in ("stopped", "unknown")
    assert all(g["failures"] == 0 for u, g in guests.items() if u != failed_start)


def test_replayed_corpus_agrees_with_virsh(tmp_path: Path) -> None:
    """Replaying the real log gives the state virsh reported at that point of the log."""
    snapshot = json.loads(VIRSH.read_text())
    guests = replay_prefix(tmp_path)
    assert len(guests) == 3
    assert_agrees_with_virsh(guests, snapshot["guests"], snapshot["failed_start"])
