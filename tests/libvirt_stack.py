"""A real libvirt for tests: virtlogd + libvirtd (QEMU under TCG) audited by a private auditd.

Why the private mount namespace: on this kind of host /dev/kvm exists but the
QEMU user cannot open it, so libvirt's QEMU capability cache is declared
outdated at every lookup ("KVM was enabled when probing ..., but it is not
available now") and `virsh define` takes 40-68 s. libvirtd (and virtlogd) run
in their own mount namespace where /dev/kvm is an empty root-only file: KVM is
then consistently unusable, the cache stays valid and `define` takes ~20 ms.
A `type='kvm'` guest is refused at define time in that setup ("does not support
virt type 'kvm'"), so the failed start we audit is a guest whose disk is missing.

The same namespace gives libvirt a private qemu.conf (`namespaces = []`:
libvirt cannot move a file bind mount such as our /dev/kvm into a guest's
private /dev), and private /etc/libvirt/qemu, /var/lib/libvirt/qemu and
/var/log/libvirt, so no domain definition, save image or log outlives a run.
What remains global is cleaned up by `LibvirtStack.stop`: domains are
destroyed and undefined, QEMU processes killed by pid if libvirtd could not,
empty `machine` cgroup dirs and /run/libvirt are removed (no other libvirt
daemon may run at the same time: `start` refuses). QEMU processes of the test
guests left by a killed run are reaped by `start`, so a rerun starts clean.

Regenerate the golden corpus (root, nothing else using auditd or libvirt):
`.venv/bin/python -m tests.libvirt_stack capture tests/data/real/libvirt-9.0-qemu-7.2.log`
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from xml.sax.saxutils import escape, quoteattr

from tests.conftest import need_root, need_tool
from tests.realstack import Auditd, running_auditd
from tests.waiting import wait_until as wait_for

URI = "qemu:///system"
LXC_URI = "lxc:///system"
QEMU_USER = "libvirt-qemu"
RUN_DIR = Path("/run/libvirt")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Bind-mounted over the real paths inside libvirtd's mount namespace (see the module docstring).
PRIVATE_DIRS = {
    "etc-qemu": "/etc/libvirt/qemu",
    "var-lib-qemu": "/var/lib/libvirt/qemu",
    "log": "/var/log/libvirt",
}
# Only with `lxc=True`, mounted first: the LXC driver's definitions and state go to
# /etc/libvirt/lxc and /var/lib/libvirt/lxc, which the package does not make. Rather than
# create them on the host, libvirtd gets a copy of /etc/libvirt and an empty /var/lib/libvirt
# holding both (the PRIVATE_DIRS are mounted on top as usual).
LXC_PRIVATE_DIRS = {
    "etc-libvirt": "/etc/libvirt",
    "var-lib-libvirt": "/var/lib/libvirt",
}
READY_TIMEOUT = 60.0
TEST_UUID_PREFIX = "6c0f6f6a-8a5d-4c1e-9d1a-"  # every test guest's uuid starts so


class StackError(RuntimeError):
    """The real stack could not be started (the message says why and what to do)."""


def running_processes(*names: str) -> dict[int, str]:
    """Return {pid: exe name} of running processes whose executable is one of `names`."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = str((entry / "exe").readlink())
        except OSError:
            continue
        base = Path(exe.removesuffix(" (deleted)")).name
        if base in names:
            found[int(entry.name)] = base
    return found


def _kill_and_wait(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Guest:
    """A small TCG guest: what its libvirt XML says, and what virsh should later report."""

    name: str
    uuid: str
    mac: str
    disk: Path
    virt: str = "qemu"
    memory_kib: int = 65536
    max_memory_kib: int = 0  # > memory_kib: room for hot-plugged DIMMs
    vcpus: int = 1
    max_vcpus: int = 1
    cdrom: bool = False  # an empty IDE CD-ROM (hdc) for change-media
    scsi: bool = False  # a virtio-scsi controller: SCSI disks detach without guest help
    disk_format: str = "raw"  # qcow2 for internal snapshots
    nic_xml: str = ""  # replaces the default user-mode NIC (which has `mac`)
    extra_devices: str = ""  # more <devices> XML, as is

    def xml(self) -> str:
        """Return the domain XML."""
        memory = f"<memory unit='KiB'>{self.memory_kib}</memory>"
        cpu = ""
        if self.max_memory_kib > self.memory_kib:
            # DIMM hot-plug needs maxMemory and a NUMA cell holding the boot memory.
            memory = f"<maxMemory slots='2' unit='KiB'>{self.max_memory_kib}</maxMemory>" + memory
            cpu = (
                f"<cpu><numa><cell id='0' cpus='0-{self.max_vcpus - 1}' "
                f"memory='{self.memory_kib}' unit='KiB'/></numa></cpu>"
            )
        user_nic = f"<interface type='user'><mac address='{self.mac}'/><model type='virtio'/>"
        devices = [
            "<emulator>/usr/bin/qemu-system-x86_64</emulator>",
            f"<disk type='file' device='disk'><driver name='qemu' type='{self.disk_format}'/>"
            f"<source file={quoteattr(str(self.disk))}/><target dev='vda' bus='virtio'/></disk>",
            self.nic_xml or user_nic + "</interface>",
            "<graphics type='vnc' listen='127.0.0.1' autoport='yes'/>",
            self.extra_devices,
        ]
        if self.cdrom:
            devices.append(
                "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
                "<target dev='hdc' bus='ide'/><readonly/></disk>"
            )
        if self.scsi:
            devices.append("<controller type='scsi' index='0' model='virtio-scsi'/>")
        return (
            f"<domain type='{self.virt}'><name>{escape(self.name)}</name><uuid>{self.uuid}</uuid>"
            f"{memory}<vcpu current='{self.vcpus}'>{self.max_vcpus}</vcpu>{cpu}"
            "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
            "<features><acpi/></features>"
            "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>"
            f"<devices>{''.join(devices)}</devices></domain>\n"
        )


def write_boot_disk(path: Path, size: int = 1 << 20) -> None:
    """Write a raw disk whose boot sector powers the guest off when ACPI's power button is pressed.

    A guest without an OS ignores `virsh shutdown`; this 30-byte "OS" makes the
    real shutdown path (QEMU's guest-initiated SHUTDOWN, libvirt's
    `op=stop reason=shutdown`) testable. It enables the power-button event in
    the PIIX4 PM1 registers (I/O base 0x600 set by SeaBIOS on the i440fx `pc`
    machine), halts until an interrupt, and on PWRBTN_STS writes SLP_TYP=S5|SLP_EN.
    """
    code = bytes.fromhex(
        "ba0206"  # mov dx, 0x602    ; PM1a_EN
        "b80001"  # mov ax, 0x100    ; PWRBTN_EN
        "ef"  # out dx, ax
        "fb"  # sti              ; the BIOS timer wakes the hlt below
        "f4"  # wait: hlt
        "ba0006"  # mov dx, 0x600    ; PM1a_STS
        "ed"  # in ax, dx
        "a90001"  # test ax, 0x100   ; PWRBTN_STS
        "74f6"  # jz wait
        "ba0406"  # mov dx, 0x604    ; PM1a_CNT
        "b80020"  # mov ax, 0x2000   ; SLP_EN, SLP_TYP 0 = soft off
        "ef"  # out dx, ax
        "f4"  # hlt
        "ebfd"  # jmp $-1
    )
    sector = code.ljust(510, b"\0") + b"\x55\xaa"
    with open(path, "wb") as f:
        f.write(sector)
        f.truncate(size)


# A boot sector that acknowledges ACPI hot-unplug requests (and the power button), so
# detaching a PCI device, a DIMM or a vCPU from an OS-less guest completes as with a real OS.
# It does by polling what a guest's ACPI tables (_EJ0 methods) would do on the GPE event,
# on every BIOS timer tick (~55 ms) of an `sti; hlt` loop. Ports (QEMU i440fx `pc`, PIIX4):
# 0xae00 PCI hotplug (0xae04 slots asked to go on the bus selected at 0xae10, 0xae08 eject),
# 0x0a00 memory hotplug (0xa00 slot select, 0xa14 status bit 2 "remove requested", write 8
# ejects), 0xaf00 CPU hotplug (writing 0 there once switches QEMU from the legacy interface,
# which cannot unplug, to the modern one: 0xaf05 command 0 selects a CPU with a pending
# event, 0xaf04 status bit 1 insert / bit 2 remove; write 2 clears the insert event, 4 the
# remove event, 8 ejects), 0x600 PM1 (as in write_boot_disk). Hand-assembled (16-bit real
# mode at 0x7c00); checked with `objdump -D -b binary -mi8086`; 107 bytes.
HOTPLUG_BOOT_CODE = bytes.fromhex(
    "ba00af"  # mov dx, 0xaf00    ; CPU hotplug: out 0 -> modern interface
    "30c0"  # xor al, al
    "ee"  # out dx, al
    "ba0206"  # mov dx, 0x602     ; PM1a_EN
    "b80001"  # mov ax, 0x100     ; PWRBTN_EN
    "ef"  # out dx, ax
    "fb"  # sti               ; the BIOS timer wakes the hlt below
    "f4"  # tick: hlt
    "ba10ae"  # mov dx, 0xae10    ; PCI: select bus 0 (bsel 0)
    "6631c0"  # xor eax, eax
    "66ef"  # out dx, eax
    "b204"  # mov dl, 0x04      ; 0xae04: slots QEMU wants removed
    "66ed"  # in eax, dx
    "6685c0"  # test eax, eax
    "7404"  # jz dimms
    "b208"  # mov dl, 0x08      ; 0xae08: eject (the lowest of them; the rest next tick)
    "66ef"  # out dx, eax
    "31c9"  # dimms: xor cx, cx
    "ba000a"  # slot: mov dx, 0xa00 ; memory hotplug: select slot cl
    "88c8"  # mov al, cl
    "ee"  # out dx, al
    "b214"  # mov dl, 0x14      ; 0xa14: status
    "ec"  # in al, dx
    "a804"  # test al, 4        ; remove requested?
    "7403"  # jz next
    "b008"  # mov al, 8         ; eject
    "ee"  # out dx, al
    "41"  # next: inc cx
    "80f904"  # cmp cl, 4
    "72ea"  # jb slot
    "ba00af"  # mov dx, 0xaf00    ; CPUs: selector 0
    "30c0"  # xor al, al
    "ee"  # out dx, al
    "b205"  # mov dl, 0x05      ; command 0: select a CPU with a pending event
    "ee"  # out dx, al
    "4a"  # dec dx            ; 0xaf04: its status
    "ec"  # in al, dx
    "a802"  # test al, 2        ; inserted? clear it (else it hides later events)
    "7403"  # jz noins
    "b002"  # mov al, 2
    "ee"  # out dx, al
    "a804"  # noins: test al, 4 ; remove requested?
    "7406"  # jz power
    "b004"  # mov al, 4         ; clear the remove event
    "ee"  # out dx, al
    "b008"  # mov al, 8         ; eject
    "ee"  # out dx, al
    "ba0006"  # power: mov dx, 0x600 ; PM1a_STS
    "ed"  # in ax, dx
    "a90001"  # test ax, 0x100    ; PWRBTN_STS
    "74ad"  # jz tick
    "ba0406"  # mov dx, 0x604     ; PM1a_CNT
    "b80020"  # mov ax, 0x2000    ; SLP_EN, SLP_TYP 0 = soft off
    "ef"  # out dx, ax
    "f4"  # hlt
    "ebfd"  # jmp $-1
)


def write_hotplug_boot_disk(path: Path, size: int = 1 << 20) -> None:
    """Write a raw disk booting HOTPLUG_BOOT_CODE: unplug requests and the power button obeyed."""
    with open(path, "wb") as f:
        f.write(HOTPLUG_BOOT_CODE.ljust(510, b"\0") + b"\x55\xaa")
        f.truncate(size)


@dataclass
class LibvirtStack:
    """virtlogd + libvirtd in a private mount namespace; `work` holds images and private dirs."""

    work: Path
    # LXC: libvirt 9.0's LXC driver starts containers only on a pure cgroup v1 host, so
    # libvirtd's namespace also loses the cgroup v2 mount (/sys/fs/cgroup/unified); QEMU
    # guests are then confined by the v1 controllers instead (other cgroup records).
    lxc: bool = False
    virtlogd: subprocess.Popen[bytes] | None = None
    libvirtd: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def images(self) -> Path:
        return self.work / "images"

    def virsh(
        self, *args: str, check: bool = True, timeout: float = 120.0, uri: str = URI
    ) -> subprocess.CompletedProcess[str]:
        """Run `virsh -c URI ARGS`; raise with virsh's stderr if it fails and `check`."""
        t0 = time.monotonic()
        proc = subprocess.run(
            ["virsh", "-q", "-c", uri, *args], capture_output=True, text=True, timeout=timeout
        )
        self.timings[args[0]] = self.timings.get(args[0], 0.0) + time.monotonic() - t0
        if check and proc.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def define(self, guest: Guest) -> None:
        xml = self.work / f"{guest.uuid}.xml"
        xml.write_text(guest.xml())
        self.virsh("define", str(xml))

    @property
    def uris(self) -> tuple[str, ...]:
        return (URI, LXC_URI) if self.lxc else (URI,)

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        need_root()
        for tool in ("virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "unshare"):
            need_tool(tool)
        others = running_processes("libvirtd", "virtlogd", "virtqemud")
        if others:
            listed = ", ".join(f"{name} (pid {pid})" for pid, name in sorted(others.items()))
            raise StackError(
                f"{listed} already running: this test starts its own libvirt; stop it first"
            )
        self._reap_stale_guests()
        self._prepare_private_files()
        t0 = time.monotonic()
        self.virtlogd = self._spawn("virtlogd", "/usr/sbin/virtlogd", {"log": "/var/log/libvirt"})
        wait_for(lambda: (RUN_DIR / "virtlogd-sock").exists() or self._died(self.virtlogd), 10)
        if self._died(self.virtlogd):
            raise StackError("virtlogd exited: " + self._tail("virtlogd"))
        self._start_libvirtd()
        self.timings["ready"] = time.monotonic() - t0

    def _start_libvirtd(self) -> None:
        mounts = dict(LXC_PRIVATE_DIRS) if self.lxc else {}
        mounts.update(PRIVATE_DIRS)
        mounts["kvm-hidden"] = "/dev/kvm"
        mounts["qemu.conf"] = "/etc/libvirt/qemu.conf"
        unmount = [str(CGROUP_ROOT / "unified")] if self.lxc else []
        self.libvirtd = self._spawn("libvirtd", "/usr/sbin/libvirtd", mounts, unmount)
        deadline = time.monotonic() + READY_TIMEOUT
        while self.virsh("version", check=False, timeout=30).returncode != 0:
            if self._died(self.libvirtd) or time.monotonic() > deadline:
                raise StackError("libvirtd did not become ready: " + self._tail("libvirtd"))
            time.sleep(0.1)

    def stop_libvirtd(self) -> None:
        """Stop libvirtd alone (SIGTERM, by pid): guests and virtlogd go on running."""
        assert self.libvirtd is not None
        _kill_and_wait(self.libvirtd)

    def restart_libvirtd(self) -> float:
        """Start libvirtd again after `stop_libvirtd`; return how long until it answered."""
        assert self._died(self.libvirtd), "libvirtd is still running"
        t0 = time.monotonic()
        self._start_libvirtd()
        return time.monotonic() - t0

    @staticmethod
    def _reap_stale_guests() -> None:
        """Kill the QEMU of OUR test guests left by a run that was killed before its cleanup.

        A libvirtd started later would otherwise reconnect to them from their
        status files in /run/libvirt/qemu and the rerun would not start clean.
        Only guests with the test UUIDs are touched; their status files go too.
        """
        status_dir = RUN_DIR / "qemu"
        for status in status_dir.glob("*.xml"):
            try:
                if f"<uuid>{TEST_UUID_PREFIX}" not in status.read_text(errors="replace"):
                    continue
                pid = int(status.with_suffix(".pid").read_text().strip())
            except (OSError, ValueError):
                pid = 0
            if pid and pid in running_processes("qemu-system-x86_64"):
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda p=pid: not Path(f"/proc/{p}").exists(), 10)
            for leftover in status_dir.glob(glob.escape(status.stem) + ".*"):
                leftover.unlink(missing_ok=True)

    def _prepare_private_files(self) -> None:
        # QEMU runs as libvirt-qemu and must reach the images: every parent needs o+x.
        self.work.chmod(0o711)
        self.images.mkdir(exist_ok=True)
        self.images.chmod(0o711)
        private = self.work / "private"
        private.mkdir(exist_ok=True)
        for name in PRIVATE_DIRS:
            (private / name).mkdir(exist_ok=True)
        if self.lxc:
            etc = private / "etc-libvirt"
            shutil.rmtree(etc, ignore_errors=True)
            shutil.copytree("/etc/libvirt", etc, symlinks=True)
            for sub in (etc / "lxc", private / "var-lib-libvirt" / "qemu"):
                sub.mkdir(parents=True, exist_ok=True)
            (private / "var-lib-libvirt" / "lxc").mkdir(mode=0o700, exist_ok=True)
        qemu = pwd.getpwnam(QEMU_USER)
        var_lib = private / "var-lib-qemu"
        os.chown(var_lib, qemu.pw_uid, qemu.pw_gid)
        var_lib.chmod(0o750)
        (private / "log" / "qemu").mkdir(exist_ok=True)
        (private / "log" / "lxc").mkdir(exist_ok=True)
        hidden = private / "kvm-hidden"
        hidden.touch()
        hidden.chmod(0o600)
        conf = Path("/etc/libvirt/qemu.conf").read_text()
        (private / "qemu.conf").write_text(
            conf + "\n# monitord tests: /dev/kvm is a bind mount here\nnamespaces = [ ]\n"
        )

    def _spawn(
        self, name: str, binary: str, mounts: dict[str, str], unmount: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        private = self.work / "private"
        script = "".join(
            f"mount --bind '{private / src}' '{dst}' && " for src, dst in mounts.items()
        )
        script += "".join(f"umount '{path}' && " for path in unmount)
        log = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        # unshare without --fork execs in place: the pid we hold is the daemon's pid.
        return subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script + f"exec {binary}",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )

    @staticmethod
    def _died(proc: subprocess.Popen[bytes] | None) -> bool:
        return proc is None or proc.poll() is not None

    def _tail(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    # -- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Undefine every domain, stop the daemons by pid and remove what libvirt left behind."""
        guest_pids = self._guest_pids()
        if not self._died(self.libvirtd):
            self._remove_domains()
        if self.libvirtd is not None:
            _kill_and_wait(self.libvirtd)
        # QEMU (and LXC's controller) is daemonized by libvirtd and outlives it: kill what
        # libvirtd could not stop.
        for pid in guest_pids:
            if pid in running_processes("qemu-system-x86_64", "libvirt_lxc"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.virtlogd is not None:
            _kill_and_wait(self.virtlogd)
        for log in self._logs:
            log.close()
        self._logs.clear()
        # No other libvirt daemon ran when we started (checked): what is left is stale.
        self._remove_cgroups()
        shutil.rmtree(RUN_DIR, ignore_errors=True)

    def _remove_domains(self) -> None:
        for uri in self.uris:
            listed = self.virsh("list", "--all", "--uuid", check=False, timeout=30, uri=uri)
            for uuid in listed.stdout.split():
                self.virsh("destroy", uuid, check=False, timeout=30, uri=uri)
                flags = ("--managed-save", "--snapshots-metadata", "--nvram") if uri == URI else ()
                self.virsh("undefine", uuid, *flags, check=False, timeout=30, uri=uri)

    @staticmethod
    def _guest_pids() -> list[int]:
        pids = []
        for pidfile in [*(RUN_DIR / "qemu").glob("*.pid"), *(RUN_DIR / "lxc").glob("*.pid")]:
            try:
                pids.append(int(pidfile.read_text().strip()))
            except (OSError, ValueError):
                continue
        return pids

    @staticmethod
    def _machine_cgroups() -> Iterator[Path]:
        for top in CGROUP_ROOT.glob("*/machine*"):
            if top.is_dir():
                yield top
                yield from (p for p in top.rglob("*") if p.is_dir())

    def _remove_cgroups(self) -> None:
        # Deepest first; rmdir fails on a cgroup that still has tasks, which is what we want.
        for path in sorted(self._machine_cgroups(), key=lambda p: len(p.parts), reverse=True):
            try:
                path.rmdir()
            except OSError:
                pass


@contextmanager
def running_libvirt(work: Path | None = None, *, lxc: bool = False) -> Iterator[LibvirtStack]:
    """Start virtlogd + libvirtd (auditd must already run); clean up on every exit path."""
    need_root()
    own = work is None
    path = Path(tempfile.mkdtemp(prefix="monitord-libvirt-", dir="/tmp")) if own else work
    assert path is not None
    stack = LibvirtStack(path, lxc=lxc)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if own:
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def running_stack(
    audit_root: Path, work: Path | None = None, *, lxc: bool = False
) -> Iterator[tuple[Auditd, LibvirtStack]]:
    """A private auditd (under the shared auditd lock) and then libvirt, audited by it."""
    with ExitStack() as stack:
        auditd = stack.enter_context(running_auditd(audit_root))
        libvirt = stack.enter_context(running_libvirt(work, lxc=lxc))
        yield auditd, libvirt


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# -- the scenario ------------------------------------------------------------------------------


@dataclass
class Scenario:
    """The guests the operations ran on, and what must hold afterwards."""

    guests: dict[str, Guest]
    failed_start: str  # key into guests: its start failed (missing disk)
    log: list[str] = field(default_factory=list)  # the operations, in order


def make_guests(images: Path) -> dict[str, Guest]:
    """Three guests: a hex-named one exercising hot-plug, a plain one, and one that cannot start."""
    web = Guest(
        name="web 01-tëst",
        uuid=TEST_UUID_PREFIX + "000000000001",
        mac="52:54:00:6d:00:01",
        disk=images / "web.img",
        memory_kib=65536,
        max_memory_kib=262144,
        vcpus=1,
        max_vcpus=2,
        cdrom=True,
        scsi=True,
    )
    db = Guest(
        name="db02",
        uuid=TEST_UUID_PREFIX + "000000000002",
        mac="52:54:00:6d:00:02",
        disk=images / "db.img",
    )
    broken = Guest(
        name="broken03",
        uuid=TEST_UUID_PREFIX + "000000000003",
        mac="52:54:00:6d:00:03",
        disk=images / "missing.img",
    )
    return {"web": web, "db": db, "broken": broken}


def drive(stack: LibvirtStack) -> Scenario:
    """Run the real operations with virsh; return what was done."""
    guests = make_guests(stack.images)
    sc = Scenario(guests, failed_start="broken")
    web, db, broken = guests["web"], guests["db"], guests["broken"]
    write_boot_disk(web.disk)
    write_boot_disk(db.disk)
    extra = stack.images / "extra.img"
    media = stack.images / "media.iso"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(extra), "1M"], check=True)
    media.write_bytes(b"\0" * 65536)

    def op(*args: str) -> None:
        sc.log.append(" ".join(args))
        stack.virsh(*args)

    for guest in guests.values():
        stack.define(guest)
    op("start", web.name)
    op("start", db.name)
    sc.log.append(f"start {broken.name} (fails: disk missing)")
    failed = stack.virsh("start", broken.name, check=False)
    assert failed.returncode != 0, "starting a guest with a missing disk should fail"
    op("attach-disk", web.name, str(extra), "sda", "--targetbus", "scsi", "--live")
    op("change-media", web.name, "hdc", str(media), "--insert", "--live")
    op("setvcpus", web.name, "2", "--live")
    dimm = stack.work / "dimm.xml"
    dimm.write_text(
        "<memory model='dimm'><target><size unit='KiB'>131072</size><node>0</node></target>"
        "</memory>\n"
    )
    op("attach-device", web.name, str(dimm), "--live")
    op("setmem", web.name, "98304", "--live")  # the balloon: libvirt audits nothing here
    op("detach-disk", web.name, "sda", "--live")
    op("change-media", web.name, "hdc", "--eject", "--live")
    op("change-media", web.name, "hdc", str(media), "--insert", "--live")
    op("managedsave", web.name)
    op("start", web.name)  # restored from the managed save image
    op("destroy", db.name)
    op("start", db.name)
    _shutdown(stack, sc, db.name)
    op("start", db.name)
    _kill_qemu(stack, sc, db.name)
    op("undefine", broken.name)
    return sc


def _shutdown(stack: LibvirtStack, sc: Scenario, name: str) -> None:
    """Press the ACPI power button until the guest's boot sector has armed itself and obeys."""
    sc.log.append(f"shutdown {name}")
    deadline = time.monotonic() + 60
    while True:
        # A press before the BIOS reaches the boot sector (~1-2 s under TCG) is lost: press again.
        press = stack.virsh("shutdown", name, check=False)
        if press.returncode != 0:
            # The previous press took effect just after the last look: fine if it is off now.
            if stack.virsh("domstate", name).stdout.strip() == "shut off":
                return
            raise AssertionError(f"virsh shutdown {name} failed: {press.stderr.strip()}")
        try:
            wait_for(lambda: stack.virsh("domstate", name).stdout.strip() == "shut off", 1, 0.1)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def _kill_qemu(stack: LibvirtStack, sc: Scenario, name: str) -> None:
    """Kill the guest's QEMU behind libvirt's back (as the OOM killer would)."""
    sc.log.append(f"kill -9 <qemu of {name}>")
    pid = int((RUN_DIR / "qemu" / f"{name}.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: stack.virsh("domstate", name).stdout.strip() == "shut off", 30, 0.1)


def virsh_view(stack: LibvirtStack, guests: dict[str, Guest]) -> dict[str, dict[str, object]]:
    """What virsh says about each still-defined guest, keyed by uuid (the test's source of truth).

    `state` uses monitord's words (running/stopped); vcpus and memory are only
    meaningful for running guests (a stopped guest reports its config, not the last run).
    """
    defined = set(stack.virsh("list", "--all", "--uuid").stdout.split())
    view: dict[str, dict[str, object]] = {}
    for guest in guests.values():
        if guest.uuid not in defined:
            continue
        state = stack.virsh("domstate", guest.uuid).stdout.strip()
        info: dict[str, str] = {}
        for line in stack.virsh("dominfo", guest.uuid).stdout.splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
        disks = sorted(
            line.split(None, 1)[1].strip()
            for line in stack.virsh("domblklist", guest.uuid).stdout.splitlines()
            if line.strip() and line.split(None, 1)[1].strip() != "-"
        )
        macs = sorted(
            line.split()[-1]
            for line in stack.virsh("domiflist", guest.uuid).stdout.splitlines()
            if line.strip()
        )
        view[guest.uuid] = {
            "name": info["Name"],
            "virsh_state": state,
            "state": {"running": "running", "shut off": "stopped"}.get(state, state),
            "vcpus": int(info["CPU(s)"]),
            "max_memory_kib": int(info["Max memory"].split()[0]),
            "disks": disks,
            "macs": macs,
        }
    return view


def complete_lines(path: Path) -> int:
    """Count the newline-terminated lines of an audit log (0x1D is not a line break)."""
    return path.read_bytes().count(b"\n")


def capture(out: Path) -> None:
    """Run the scenario on the real stack and copy auditd's log to `out`."""
    # A fixed work dir keeps the image paths in the corpus the same from one capture to the next.
    work = Path("/tmp/monitord-libvirt-capture")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="monitord-capture-") as tmp:
        with running_stack(Path(tmp), work) as (auditd, libvirt):
            t1 = time.monotonic()
            sc = drive(libvirt)
            t2 = time.monotonic()
            versions = libvirt.virsh("version").stdout
            db = sc.guests["db"].uuid
            wait_for(lambda: f'op=stop reason=failed vm="db02" uuid={db}' in auditd.log.read_text())
            # virsh's view at this point of the log: what replaying its first `log_lines` must give.
            snapshot = {
                "log_lines": complete_lines(auditd.log),
                "failed_start": sc.guests[sc.failed_start].uuid,
                "guests": virsh_view(libvirt, sc.guests),
            }
        # auditd has stopped: its log is complete.
        shutil.copyfile(auditd.log, out)
    out.with_suffix(".virsh.json").write_text(
        json.dumps(snapshot, indent=2, ensure_ascii=False) + "\n"
    )
    shutil.rmtree(work, ignore_errors=True)
    print(versions)
    print(
        f"stack up in {t1 - t0:.1f} s (libvirtd ready {libvirt.timings['ready']:.1f} s), "
        f"operations {t2 - t1:.1f} s, teardown {time.monotonic() - t2:.1f} s"
    )
    print("\n".join(sc.log))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.libvirt_stack")
    sub = p.add_subparsers(dest="cmd", required=True)
    cap = sub.add_parser("capture", help="capture a real audit.log of the scenario")
    cap.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "capture":
        capture(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
