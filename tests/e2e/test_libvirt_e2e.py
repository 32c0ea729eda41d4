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
import shlex
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.alertmanager import Alertmanager
from tests.conftest import DATA, ROOT, need_root, need_tool
from tests.daemonproc import MonitordProcess, free_port, monitord_cmd, wait_until
from tests.libvirt_stack import drive, running_libvirt, virsh_view
from tests.realstack import running_auditd
from tests.waiting import wait_until as wait_for

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


# -- the live stack ------------------------------------------------------------------------------


def plugin_conf(plugins: Path, wrapper: Path, command: list[str]) -> None:
    """Register `command` as an auditd plugin, from the shipped template.

    auditd passes a plugin at most 2 args and wants a root-owned binary that is
    not group/world writable: a small root-owned script execs monitord with its flags.
    """
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec {' '.join(shlex.quote(a) for a in command)} 2>>{shlex.quote(str(wrapper))}.log\n"
    )
    wrapper.chmod(0o755)
    lines = []
    for line in (
        (ROOT / "deploy" / "audit" / "plugins.d" / "monitord.conf").read_text().splitlines()
    ):
        key = line.split("=", 1)[0].strip()
        if key == "path":
            line = f"path = {wrapper}"
        elif key == "args":
            continue
        elif key == "active":
            line = "active = yes"  # the shipped conf is inactive
        lines.append(line)
    plugins.mkdir(parents=True, exist_ok=True)
    conf = plugins / "monitord.conf"
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o640)


def guest_series(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith("libvirt_audit_")}


@pytest.mark.slow
def test_monitord_follows_real_libvirt_like_virsh_sees_it(tmp_path: Path) -> None:
    """Two monitords (log file, auditd plugin) fed by real libvirtd agree with virsh and each other.

    Real operations on TCG guests (hex-named guest, hot-plug, CD-ROM media,
    managedsave/restore, destroy, ACPI shutdown, QEMU killed, a failed start):
    afterwards both daemons report what virsh reports (state, vCPUs, memory,
    disks, MACs), count and alert the failed start, and serve identical guest
    documents and guest metric series.
    """
    need_root()
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    am = Alertmanager(tmp_path / "am", need_tool("prometheus-alertmanager"))
    config = tmp_path / "monitord.toml"
    config.write_text(
        '[state]\ncheckpoint_interval = "1s"\n'
        f'[alerts]\njournal = false\nalertmanager = ["{am.url}"]\n'
        '[plugin]\nuser = "root"\n'  # tmp_path is root's alone; test_privileges tests the drop
    )
    config.chmod(0o600)
    plugin_port = free_port()
    plugin_state = tmp_path / "state-plugin"
    plugin_state.mkdir()
    audit_root = tmp_path / "auditd"
    plugin_conf(
        audit_root / "conf" / "plugins.d",
        tmp_path / "monitord-plugin.sh",
        [
            *monitord_cmd(),
            "run",
            "--config",
            str(config),
            "--source",
            "audisp",
            "--listen",
            f"127.0.0.1:{plugin_port}",
            "--state-dir",
            str(plugin_state),
        ],
    )
    with ExitStack() as cleanup:
        cleanup.callback(am.stop)
        auditd = cleanup.enter_context(running_auditd(audit_root))
        plugin = MonitordProcess(plugin_state, port=plugin_port)  # started by auditd; read only
        wait_until(lambda: plugin.get("/healthz"), timeout=30)
        follower = cleanup.enter_context(
            MonitordProcess(
                tmp_path / "state-file", ["--config", str(config), "--audit-log", str(auditd.log)]
            )
        )
        timings["monitors up"] = time.monotonic() - t0
        libvirt = cleanup.enter_context(running_libvirt())
        timings["libvirt up"] = time.monotonic() - t0
        sc = drive(libvirt)
        timings["operations done"] = time.monotonic() - t0
        virsh_times = {
            ("libvirtd ready" if k == "ready" else f"virsh {k} (total)"): v
            for k, v in libvirt.timings.items()
        }
        db = sc.guests["db"].uuid
        wait_for(lambda: f'op=stop reason=failed vm="db02" uuid={db}' in auditd.log.read_text())
        view = virsh_view(libvirt, sc.guests)
        assert {g["name"] for g in view.values()} == {"web 01-tëst", "db02"}
        assert [g["state"] for g in view.values()] == ["running", "stopped"]
        total = len(virt_lines(auditd.log))
        for daemon in (follower, plugin):
            wait_until(lambda d=daemon: d.metric("libvirt_audit_records_total") == total, 20)
        timings["caught up"] = time.monotonic() - t0

        docs = [d.guests()["guests"] for d in (follower, plugin)]
        assert docs[0] == docs[1]
        guests = {g["uuid"]: g for g in docs[0]}
        assert len(guests) == 3
        failed_start = sc.guests[sc.failed_start].uuid
        assert_agrees_with_virsh(guests, view, failed_start)

        series = [guest_series(d.metrics()) for d in (follower, plugin)]
        assert series[0] == series[1]
        for d in (follower, plugin):
            assert d.metric("libvirt_audit_operations_total", op="start", result="failed") == 1
            assert d.metric("libvirt_audit_domain_failures_total", domain="broken03") == 1
            for truth in view.values():
                name = str(truth["name"])
                running = truth["state"] == "running"
                assert d.metric("libvirt_audit_domain_running", domain=name) == running
                if running:
                    assert d.metric("libvirt_audit_domain_vcpus", domain=name) == truth["vcpus"]
                    assert (
                        d.metric("libvirt_audit_domain_memory_bytes", domain=name)
                        == int(str(truth["max_memory_kib"])) * 1024
                    )

        # The failed start is alerted by both daemons (Alertmanager keeps one copy).
        def alerted() -> list[dict[str, Any]]:
            return [
                a
                for a in am.alerts()
                if a["labels"].get("alertname") == "VirtOperationFailed"
                and a["labels"].get("domain") == "broken03"
            ]

        alerts = wait_until(alerted, timeout=20)
        assert alerts[0]["labels"]["severity"] == "critical"
        for d in (follower, plugin):
            wait_until(
                lambda d=d: d.metric("monitord_alerts_total", sink="alertmanager", outcome="sent"),
                timeout=20,
            )
        timings["checked"] = time.monotonic() - t0
        assert follower.stop() == 0
    timings["torn down"] = time.monotonic() - t0
    rounded = {k: round(v, 2) for k, v in {**timings, **virsh_times}.items()}
    print("libvirt e2e timings (s; stages since the test began):", json.dumps(rounded))
    assert timings["torn down"] < 180
