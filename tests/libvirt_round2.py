"""The second real-libvirt capture: LXC, devices, snapshots, restarts, a guest dead with no record.

Run as root on a machine set up by ./bootstrap (libvirt 9.0 + QEMU + auditd, the LXC driver
and swtpm), with nothing else using auditd or libvirt:

    .venv/bin/python -m tests.libvirt_round2 capture tests/data/real

It starts a private auditd (with a plugin that copies its stream to a file), virtlogd and
libvirtd (tests/libvirt_stack.py, in the cgroup-v1-only mount namespace LXC needs), drives
the cases of `drive` with virsh, and writes into the directory:

- `libvirt-9.0-round2.log.1`, `libvirt-9.0-round2.log`: auditd's files as it wrote them (the
  log is rotated with SIGUSR1 in the middle; `.log.1` is the older one);
- `libvirt-9.0-round2.plugin`: what auditd fed its plugin (the log plus `type=EOE` lines);
- `libvirt-9.0-round2.golden.json`: checkpoints. Each names a point of both streams (a
  `type=USER` marker written with `auditctl -m`, so every record before it is on disk) and,
  per guest, what virsh said there (`virsh`) and what monitord must say after replaying the
  streams up to that point (`expected`: state, vm_pid, vcpus, memory_bytes, device counts),
  derived from virsh and checked against it here, at capture time.

The cases, the records they write and the virsh facts are in tests/data/real/README.md.
Nothing is faked: a case that does not behave as described fails the capture.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.libvirt_stack import (
    LXC_URI,
    RUN_DIR,
    TEST_UUID_PREFIX,
    URI,
    Guest,
    LibvirtStack,
    complete_lines,
    running_stack,
    write_hotplug_boot_disk,
)
from tests.realstack import Auditd
from tests.waiting import wait_until

STEM = "libvirt-9.0-round2"
WORK = Path("/tmp/monitord-libvirt-round2")  # fixed: image paths in the corpus stay the same
# Sockets QEMU (user libvirt-qemu) creates: libvirtd's private /var/lib/libvirt/qemu.
QEMU_DIR = "/var/lib/libvirt/qemu"
SHMEM_NAME = "monitord-shm0"
# Device lists of the guest document, and which domain XML elements libvirt audits into each.
DEVICE_XPATHS: dict[str, tuple[str, ...]] = {
    "disks": ("disk/source[@file]", "disk/source[@dev]"),
    "nics": ("interface",),
    "filesystems": ("filesystem",),
    "chardevs": ("console[@type='pty']",),  # LXC's console; no QEMU guest here has one
    "rngs": ("rng",),
    "smartcards": ("smartcard",),
    "hostdevs": ("hostdev", "redirdev"),
    "tpms": ("tpm",),
    "shmems": ("shmem",),
    "inputs": ("input[@type='evdev']",),
}


def uuid(n: int) -> str:
    return f"{TEST_UUID_PREFIX}{n:012d}"


@dataclass(frozen=True)
class Lxc:
    """A container sharing the host's root read-only; init exits on SIGTERM (`shutdown`)."""

    name: str
    uuid: str
    mac: str
    memory_kib: int = 65536

    def xml(self) -> str:
        init = "trap 'exit 0' TERM; while :; do sleep 1; done"
        return (
            f"<domain type='lxc'><name>{self.name}</name><uuid>{self.uuid}</uuid>"
            f"<memory unit='KiB'>{self.memory_kib}</memory><vcpu>1</vcpu>"
            "<os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg>"
            f"<initarg>{init}</initarg></os>"
            "<on_poweroff>destroy</on_poweroff>"
            "<devices><emulator>/usr/lib/libvirt/libvirt_lxc</emulator>"
            "<filesystem type='mount'><source dir='/'/><target dir='/'/><readonly/></filesystem>"
            f"<interface type='ethernet'><mac address='{self.mac}'/></interface>"
            "<console type='pty'/></devices></domain>\n"
        )


def tap_nic(mac: str) -> str:
    """A tap NIC (libvirt opens /dev/net/tun: a `resrc=net reason=open` record first)."""
    return f"<interface type='ethernet'><mac address='{mac}'/><model type='virtio'/></interface>"


def redirdev(n: int) -> str:
    sock = f"{QEMU_DIR}/monitord-redir{n}.sock"
    return f"<redirdev bus='usb' type='unix'><source mode='bind' path='{sock}'/></redirdev>"


def make_guests(images: Path) -> dict[str, Guest]:
    """The QEMU guests of round 2 (uuids ...201-208), keyed by role."""
    smartcard = (
        "<smartcard mode='passthrough' type='unix'>"
        f"<source mode='bind' path='{QEMU_DIR}/monitord-smartcard.sock'/></smartcard>"
    )
    shmem = (
        f"<shmem name='{SHMEM_NAME}'><model type='ivshmem-plain'/><size unit='M'>1</size></shmem>"
    )
    tpm = "<tpm model='tpm-tis'><backend type='emulator' version='2.0'/></tpm>"
    return {
        "hotplug": Guest(
            name="hotplug",
            uuid=uuid(201),
            mac="52:54:00:6d:02:01",
            disk=images / "hotplug.img",
            max_memory_kib=262144,
            vcpus=1,
            max_vcpus=3,
        ),
        "devices": Guest(
            name="devices",
            uuid=uuid(202),
            mac="52:54:00:6d:02:02",
            disk=images / "devices.img",
            nic_xml=tap_nic("52:54:00:6d:02:02"),
            extra_devices=smartcard + redirdev(1) + redirdev(2) + shmem,
        ),
        "tpm": Guest(
            name="tpm",
            uuid=uuid(203),
            mac="52:54:00:6d:02:03",
            disk=images / "tpm.img",
            extra_devices=tpm,
        ),
        "saver": Guest(
            name="saver", uuid=uuid(204), mac="52:54:00:6d:02:04", disk=images / "saver.img"
        ),
        "snap": Guest(
            name="snap",
            uuid=uuid(205),
            mac="52:54:00:6d:02:05",
            disk=images / "snap.qcow2",
            disk_format="qcow2",
        ),
        "transient": Guest(
            name="transient",
            uuid=uuid(206),
            mac="52:54:00:6d:02:06",
            disk=images / "transient.img",
        ),
        "renamed": Guest(
            name="rename-old",
            uuid=uuid(207),
            mac="52:54:00:6d:02:07",
            disk=images / "renamed.img",
        ),
        "crashed": Guest(
            name="crashed", uuid=uuid(208), mac="52:54:00:6d:02:08", disk=images / "crashed.img"
        ),
    }


def make_containers() -> dict[str, Lxc]:
    return {
        "ct-shutdown": Lxc("ct-shutdown", uuid(211), "52:54:00:6d:02:11"),
        "ct-destroy": Lxc("ct-destroy", uuid(212), "52:54:00:6d:02:12"),
    }


# -- what virsh says ---------------------------------------------------------------------------


def device_counts(xml: str) -> dict[str, int]:
    """Count the devices of a live domain XML per guest-document list (see DEVICE_XPATHS)."""
    devices = ET.fromstring(xml).find("devices")
    assert devices is not None
    return {
        name: sum(len(devices.findall(path)) for path in paths)
        for name, paths in DEVICE_XPATHS.items()
    }


def virsh_facts(stack: LibvirtStack, uuid_: str, uri: str) -> dict[str, Any] | None:
    """What virsh says about one guest (None: libvirt does not know it, e.g. a gone transient)."""
    state = stack.virsh("domstate", "--reason", uuid_, check=False, uri=uri)
    if state.returncode != 0:
        return None
    info: dict[str, str] = {}
    for line in stack.virsh("dominfo", uuid_, uri=uri).stdout.splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    facts: dict[str, Any] = {
        "name": info["Name"],
        "uuid": info["UUID"],
        "domstate": state.stdout.strip(),
        "cpus": int(info["CPU(s)"]),
        "max_memory_kib": int(info["Max memory"].split()[0]),
        "persistent": info["Persistent"] == "yes",
    }
    if facts["domstate"].startswith("running"):
        facts["devices"] = device_counts(stack.virsh("dumpxml", uuid_, uri=uri).stdout)
        if uri == LXC_URI:
            facts["pid"] = int(info["Id"])  # LXC: the domain id is the controller's pid
        else:
            pidfile = RUN_DIR / "qemu" / f"{facts['name']}.pid"
            facts["pid"] = int(pidfile.read_text().strip())
    return facts


def expected_from_virsh(facts: dict[str, Any]) -> dict[str, Any]:
    """What monitord must say about a guest virsh knows (only what virsh confirms)."""
    running = facts["domstate"].startswith("running")
    expected: dict[str, Any] = {
        "name": facts["name"],
        "uuid": facts["uuid"],
        "state": "running" if running else "stopped",
    }
    if running:
        expected["vm_pid"] = facts["pid"]
        expected["vcpus"] = facts["cpus"]
        expected["memory_bytes"] = facts["max_memory_kib"] * 1024
        expected["devices"] = facts["devices"]
    return expected


# -- the capture -------------------------------------------------------------------------------


@dataclass
class Capture:
    """The running stack, the streams being written, and the checkpoints taken so far."""

    auditd: Auditd
    stack: LibvirtStack
    plugin_out: Path
    guests: dict[str, Guest]
    containers: dict[str, Lxc]
    rotated: Path | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    # Guests whose last record says running while virsh says "shut off (crashed)": uuid -> pid.
    dead_without_record: dict[str, int] = field(default_factory=dict)
    gone_transients: dict[str, str] = field(default_factory=dict)  # uuid -> name
    # Devices a guest has that libvirt did not audit (a hot-added RNG): uuid -> {list: n}.
    unaudited: dict[str, dict[str, int]] = field(default_factory=dict)

    def virsh(self, *args: str, uri: str = URI, check: bool = True) -> str:
        self.ops.append(("" if uri == URI else "[lxc] ") + " ".join(args))
        proc = self.stack.virsh(*args, uri=uri, check=check)
        return proc.stdout + proc.stderr

    def note(self, text: str) -> None:
        self.ops.append(f"# {text}")

    def xml_file(self, name: str, xml: str) -> str:
        path = self.stack.work / f"{name}.xml"
        path.write_text(xml)
        return str(path)

    def domstate(self, name: str, uri: str = URI) -> str:
        return self.stack.virsh("domstate", "--reason", name, uri=uri).stdout.strip()

    def wait_state(self, name: str, prefix: str, uri: str = URI, timeout: float = 30) -> None:
        wait_until(
            lambda: self.domstate(name, uri).startswith(prefix),
            timeout,
            0.1,
            what=f"{name} {prefix}",
        )

    def wait_booted(self, name: str) -> None:
        """Wait until the guest runs its boot sector (only then are unplug requests answered)."""

        def at_boot_sector() -> bool:
            regs = self.stack.virsh(
                "qemu-monitor-command", name, "--hmp", "info registers", check=False
            ).stdout
            return "EIP=00007c" in regs

        wait_until(at_boot_sector, 30, 0.2, what=f"{name} at its boot sector")

    # -- stream positions and checkpoints ------------------------------------------------------

    def mark(self, label: str) -> tuple[int, int]:
        """Write a marker through the kernel; return its line numbers in the log and plugin
        streams (1-based, counting the rotated file first), once both have it."""
        text = f"monitord-capture checkpoint {label}"
        self.check_audit_enabled()
        subprocess.run(["auditctl", "-m", text], check=True, capture_output=True)

        def position(path: Path, before: int) -> int | None:
            lines = path.read_bytes().split(b"\n")[:-1]  # complete lines only
            for i, line in enumerate(lines):
                if text.encode() in line:
                    return before + i + 1
            return None

        before = complete_lines(self.rotated) if self.rotated else 0
        log_line = wait_until(lambda: position(self.auditd.log, before), 10, what=text)
        plugin_line = wait_until(lambda: position(self.plugin_out, 0), 10, what=text)
        assert log_line is not None and plugin_line is not None
        return log_line, plugin_line

    def written(self) -> bytes:
        """The log stream so far (the rotated file first)."""
        return (self.rotated.read_bytes() if self.rotated else b"") + self.auditd.log.read_bytes()

    def check_audit_enabled(self) -> None:
        """Fail unless the kernel still audits: records are lost while it does not.

        Another program can switch the kernel's auditing off behind auditd's back: a
        systemd-journald starting (another test's private journald) writes
        `CONFIG_CHANGE op=set audit_enabled=0`. The capture must then be re-run.
        """
        status = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
        if "enabled 1" not in status.splitlines() or b"audit_enabled=0" in self.written():
            raise RuntimeError(
                "the kernel's auditing was switched off during the capture (records lost; "
                "see CONFIG_CHANGE audit_enabled=0 in the log): re-run it when nothing else "
                "(e.g. a systemd-journald) runs"
            )

    def checkpoint(self, label: str) -> None:
        """Record what virsh says about every guest, and what monitord must say, here."""
        log_line, plugin_line = self.mark(label)
        guests: dict[str, Any] = {}
        written = self.written()
        everyone = [(g.uuid, URI) for g in self.guests.values()]
        everyone += [(c.uuid, LXC_URI) for c in self.containers.values()]
        for uuid_, uri in everyone:
            facts = virsh_facts(self.stack, uuid_, uri)
            if facts is None:
                if uuid_ in self.gone_transients:
                    # Destroyed transient guest: virsh no longer knows it, the log says stopped.
                    guests[uuid_] = {
                        "virsh": None,
                        "expected": {
                            "name": self.gone_transients[uuid_],
                            "uuid": uuid_,
                            "state": "stopped",
                        },
                    }
                continue
            if f"uuid={uuid_}".encode() not in written:
                continue  # defined but never started yet: not in the log
            expected = expected_from_virsh(facts)
            missing = self.unaudited.get(uuid_, {})
            if missing and "devices" in expected:
                # The log cannot know these: it holds what was audited, not what virsh shows.
                devices = expected["devices"]
                expected["devices"] = {k: n - missing.get(k, 0) for k, n in devices.items()}
                expected["unaudited"] = missing
            pid = self.dead_without_record.get(uuid_)
            if pid is not None and facts["domstate"] == "shut off (crashed)":
                # No stop record was ever written: the log says running, with the dead pid.
                expected = {**expected, "state": "running", "vm_pid": pid}
                expected["no_stop_record"] = True
            guests[uuid_] = {"virsh": facts, "expected": expected}
        self.checkpoints.append(
            {"label": label, "log_line": log_line, "plugin_line": plugin_line, "guests": guests}
        )
        self.note(f"checkpoint {label}: log line {log_line}, plugin line {plugin_line}")

    def rotate(self) -> None:
        """Rotate auditd's log (SIGUSR1) and wait for the new file's DAEMON_ROTATE line."""
        self.note("kill -USR1 <auditd>  (rotation)")
        old = self.auditd.log.stat().st_ino
        self.auditd.rotate()
        rotated = self.auditd.log.with_name("audit.log.1")
        wait_until(
            lambda: rotated.exists()
            and rotated.stat().st_ino == old
            and b"type=DAEMON_ROTATE" in self.auditd.log.read_bytes(),
            10,
            what="the rotation",
        )
        self.rotated = rotated

    def qemu_pid(self, name: str) -> int:
        return int((RUN_DIR / "qemu" / f"{name}.pid").read_text().strip())


def prepare_images(images: Path, guests: dict[str, Guest]) -> None:
    images.mkdir(parents=True, exist_ok=True)
    for guest in guests.values():
        raw = guest.disk if guest.disk_format == "raw" else guest.disk.with_suffix(".raw")
        write_hotplug_boot_disk(raw)
        if guest.disk_format != "raw":
            subprocess.run(
                ["qemu-img", "convert", "-q", "-O", guest.disk_format, str(raw), str(guest.disk)],
                check=True,
            )
            raw.unlink()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "raw", str(images / "extra.img"), "1M"], check=True
    )


def drive(cap: Capture) -> None:
    """Run every case; checkpoints along the way (see tests/data/real/README.md)."""
    g = cap.guests
    images = cap.stack.images
    for role, guest in g.items():
        if role != "transient":
            cap.virsh("define", cap.xml_file(guest.name, guest.xml()))
    for ct in cap.containers.values():
        cap.virsh("define", cap.xml_file(ct.name, ct.xml()), uri=LXC_URI)

    # Hot-plug and acknowledged hot-unplug (the boot sector answers the ACPI requests).
    hp = g["hotplug"].name
    cap.virsh("start", hp)
    cap.wait_booted(hp)
    disk = cap.xml_file(
        "hp-disk",
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='{images / 'extra.img'}'/><target dev='vdb' bus='virtio'/></disk>",
    )
    nic = cap.xml_file(
        "hp-nic",
        "<interface type='user'><mac address='52:54:00:6d:02:21'/><model type='virtio'/>"
        "</interface>",
    )
    tap = cap.xml_file("hp-tap", tap_nic("52:54:00:6d:02:22"))
    dimm = cap.xml_file(
        "hp-dimm",
        "<memory model='dimm'><target><size unit='KiB'>131072</size><node>0</node></target>"
        "</memory>",
    )
    rng = cap.xml_file(
        "hp-rng", "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"
    )
    for xml in (disk, nic, tap, dimm, rng):
        cap.virsh("attach-device", hp, xml, "--live")
    cap.unaudited[g["hotplug"].uuid] = {"rngs": 1}  # libvirt 9.0 audits no RNG attach
    cap.virsh("setvcpus", hp, "3", "--live")
    cap.checkpoint("hotplugged")
    for xml in (disk, nic, tap, dimm, rng):
        cap.virsh("detach-device", hp, xml, "--live")
    cap.unaudited.pop(g["hotplug"].uuid)

    def unplugged() -> bool:
        facts = virsh_facts(cap.stack, g["hotplug"].uuid, URI)
        assert facts is not None
        devices = facts["devices"]
        return (facts["cpus"], facts["max_memory_kib"], devices["disks"], devices["nics"]) == (
            3,
            65536,
            1,
            1,
        ) and devices["rngs"] == 0

    # The guest acknowledged every unplug request (else libvirt keeps the device).
    wait_until(unplugged, 15, 0.2, what="hot-unplug acknowledged by the guest")

    # Devices: tap NIC, smartcard, two USB redirdevs (+1 attached, 1 detached), shmem, TPM.
    dv = g["devices"].name
    cap.virsh("start", dv)
    third = cap.xml_file("redir3", redirdev(3))
    cap.virsh("attach-device", dv, third, "--live")
    cap.virsh("detach-device", dv, third, "--live")
    cap.virsh("start", g["tpm"].name)

    # A transient guest: create, then destroy (libvirt forgets it).
    tr = g["transient"]
    cap.virsh("create", cap.xml_file(tr.name, tr.xml()))
    cap.checkpoint("devices")
    cap.virsh("destroy", tr.name)
    cap.gone_transients[tr.uuid] = tr.name

    # save FILE / restore FILE, and a restore from a truncated copy of the file.
    sv = g["saver"].name
    saved = images / "saver.save"
    truncated = images / "saver-truncated.save"
    cap.virsh("start", sv)
    cap.virsh("save", sv, str(saved))
    shutil.copyfile(saved, truncated)
    os.truncate(truncated, saved.stat().st_size // 2)
    cap.note(f"truncate saver-truncated.save to {saved.stat().st_size // 2} bytes")
    failed = cap.virsh("restore", str(truncated), check=False)
    assert "error" in failed.lower(), f"restoring a truncated image should fail: {failed}"
    assert cap.domstate(sv).startswith("shut off"), cap.domstate(sv)
    cap.virsh("restore", str(saved))

    # Snapshot reverts: running -> running snapshot, running -> shut-off snapshot,
    # shut off -> running snapshot.
    sn = g["snap"].name
    cap.virsh("start", sn)
    cap.wait_booted(sn)
    cap.virsh("snapshot-create-as", sn, "s-running")
    cap.virsh("destroy", sn)
    cap.virsh("snapshot-create-as", sn, "s-off")
    cap.virsh("start", sn)
    cap.virsh("snapshot-revert", sn, "s-running")
    cap.virsh("snapshot-revert", sn, "s-off")
    assert cap.domstate(sn).startswith("shut off"), cap.domstate(sn)
    cap.virsh("snapshot-revert", sn, "s-running")
    assert cap.domstate(sn).startswith("running"), cap.domstate(sn)

    # domrename (only while shut off): the next start carries the new name.
    old = g["renamed"].name
    cap.virsh("start", old)
    cap.virsh("destroy", old)
    cap.virsh("domrename", old, "rename-new")
    cap.virsh("start", "rename-new")
    cap.checkpoint("qemu")

    # LXC: start, shutdown (init exits on SIGTERM), start again; start, destroy.
    cs, cd = cap.containers["ct-shutdown"].name, cap.containers["ct-destroy"].name
    cap.virsh("start", cs, uri=LXC_URI)
    cap.virsh("shutdown", cs, "--mode", "signal", uri=LXC_URI)
    cap.wait_state(cs, "shut off", LXC_URI)
    cap.virsh("start", cs, uri=LXC_URI)
    cap.virsh("start", cd, uri=LXC_URI)
    cap.virsh("destroy", cd, uri=LXC_URI)
    cap.checkpoint("lxc")

    cap.rotate()

    # Restart 1: QEMU killed while libvirtd is down -> no stop record, "shut off (crashed)".
    cr = g["crashed"]
    cap.virsh("start", cr.name)
    pid = cap.qemu_pid(cr.name)
    cap.note("stop libvirtd (SIGTERM)")
    cap.stack.stop_libvirtd()
    cap.note(f"kill -9 {pid}  (QEMU of {cr.name}, libvirtd down)")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10)
    cap.note("start libvirtd")
    cap.stack.restart_libvirtd()
    assert cap.domstate(cr.name) == "shut off (crashed)", cap.domstate(cr.name)
    cap.dead_without_record[cr.uuid] = pid
    cap.checkpoint("crashed-while-down")

    # A start for a guest the log says is running; then restart 2: everything reconnected.
    cap.virsh("start", cr.name)
    cap.dead_without_record.pop(cr.uuid)
    cap.note("stop libvirtd (SIGTERM)")
    cap.stack.stop_libvirtd()
    cap.note("start libvirtd")
    cap.stack.restart_libvirtd()
    for name in (hp, dv, g["tpm"].name, sv, sn, "rename-new", cr.name):
        assert cap.domstate(name).startswith("running"), (name, cap.domstate(name))
    assert cap.domstate(cs, LXC_URI).startswith("running")
    # Records go on after the restarts.
    cap.virsh("destroy", g["tpm"].name)
    cap.virsh("shutdown", cs, "--mode", "signal", uri=LXC_URI)
    cap.wait_state(cs, "shut off", LXC_URI)
    cap.checkpoint("final")


def add_copy_plugin(audit_root: Path, out: Path) -> None:
    """Register an auditd plugin copying its stdin to `out` (a root-owned script: auditd's rule)."""
    plugins = audit_root / "conf" / "plugins.d"
    plugins.mkdir(parents=True, exist_ok=True)
    script = audit_root / "copy-plugin.sh"
    script.write_text(f"#!/bin/sh\nexec cat >> '{out}'\n")
    script.chmod(0o755)
    conf = plugins / "copy.conf"
    conf.write_text(
        f"active = yes\ndirection = out\npath = {script}\ntype = always\nformat = string\n"
    )
    conf.chmod(0o640)


def versions() -> dict[str, str]:
    def dpkg(pkg: str) -> str:
        return subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True
        ).stdout

    return {
        pkg: dpkg(pkg)
        for pkg in (
            "libvirt-daemon",
            "libvirt-daemon-driver-lxc",
            "qemu-system-x86",
            "auditd",
            "swtpm",
        )
    }


def keep_for_debugging(tmp: Path, cap: Capture) -> None:
    """Copy what a failed capture left (logs, XML, libvirt's logs) where it can be read."""
    debug = Path(os.environ.get("ROUND2_DEBUG", "/tmp/monitord-round2-debug"))
    shutil.rmtree(debug, ignore_errors=True)
    shutil.copytree(tmp, debug, ignore_dangling_symlinks=True)
    skip = shutil.ignore_patterns("*.img", "*.qcow2", "*.save", "*.sock")
    shutil.copytree(WORK, debug / "work", ignore_dangling_symlinks=True, ignore=skip)
    print("\n".join(cap.ops), f"\n(kept in {debug})", file=sys.stderr)


def capture(out_dir: Path) -> None:
    """Run the cases on a real stack; write the streams and the golden checkpoints."""
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    swtpm_logs = Path("/var/log/swtpm")  # swtpm's logs: libvirt makes the dir, we remove it
    had_swtpm_logs = swtpm_logs.exists()
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="monitord-round2-") as tmp:
            audit_root = Path(tmp) / "auditd"
            plugin_out = Path(tmp) / "plugin.out"
            add_copy_plugin(audit_root, plugin_out)
            with running_stack(audit_root, WORK, lxc=True) as (auditd, stack):
                t1 = time.monotonic()
                guests = make_guests(stack.images)
                cap = Capture(auditd, stack, plugin_out, guests, make_containers())
                prepare_images(stack.images, guests)
                try:
                    drive(cap)
                except BaseException:
                    keep_for_debugging(Path(tmp), cap)
                    raise
                t2 = time.monotonic()
                libvirt_version = stack.virsh("version").stdout
            # auditd has stopped: its files are complete (teardown records come after `final`).
            assert cap.rotated is not None
            streams = {
                f"{STEM}.log.1": cap.rotated,
                f"{STEM}.log": auditd.log,
                f"{STEM}.plugin": plugin_out,
            }
            if any(b"audit_enabled=0" in path.read_bytes() for path in streams.values()):
                raise RuntimeError("auditing was switched off during the capture: re-run it")
            for name, path in streams.items():
                shutil.copyfile(path, out_dir / name)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
        (Path("/dev/shm") / SHMEM_NAME).unlink(missing_ok=True)
        if not had_swtpm_logs:
            shutil.rmtree(swtpm_logs, ignore_errors=True)
    golden = {
        "captured_with": versions(),
        "streams": {"log": [f"{STEM}.log.1", f"{STEM}.log"], "plugin": f"{STEM}.plugin"},
        "operations": cap.ops,
        "checkpoints": cap.checkpoints,
    }
    (out_dir / f"{STEM}.golden.json").write_text(
        json.dumps(golden, indent=1, ensure_ascii=False) + "\n"
    )
    print(libvirt_version)
    print(
        f"stack up {t1 - t0:.1f} s, cases {t2 - t1:.1f} s, "
        f"teardown {time.monotonic() - t2:.1f} s, {len(cap.checkpoints)} checkpoints"
    )
    print("\n".join(cap.ops))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.libvirt_round2")
    sub = p.add_subparsers(dest="cmd", required=True)
    cap = sub.add_parser("capture", help="capture the round-2 corpus into DIR")
    cap.add_argument("dir", type=Path)
    args = p.parse_args(argv)
    capture(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
