"""A seeded simulation of libvirt hosts writing audit.log: VIRT_* records and realistic noise.

Everything here is deterministic from the seed, so the demo, the daemon's
torture tests and the benchmarks can replay the same stream. Records follow
libvirt's emitting code (docs/FORMATS.md): the order of a guest start (cgroup ACLs,
security labels, one `reason=start` record per device, mem, vcpu, iothread,
then `op=start`), hot-plug, failures, migrations and LXC `op=init`.

    python -m monitord.commands.simulate mixed --lines 1000000 --seed 1 audit.log
    python -m monitord.commands.simulate virt-only --lines 100000 --seed 1 virt.log
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from monitord.audit.encoding import encode_value

GS: Final = "\x1d"  # auditd's separator between the raw record and its enrichment
UNSET: Final = 4294967295

# Names users give guests: plain ones are quoted, the rest hex (space, UTF-8, `"`).
GUEST_NAMES: Final = (
    "web01",
    "web02",
    "db-primary",
    "build-runner-3",
    "win2k22",
    "ubuntu22.04",
    "fedora-39",
    "k8s-node-a",
    "mail",
    "ci_agent_7",
    "my vm",
    "café-01",
    'say "hi"',
    "bob's=vm",
    "測試機",
    "dev box 2",
)
START_REASONS: Final = ("booted", "booted", "booted", "booted", "from-snapshot", "reboot")
STOP_REASONS: Final = ("shutdown", "shutdown", "destroyed", "failed", "crashed", "reboot")
VIRT_KINDS: Final = ("kvm", "qemu", "lxc")


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One simulated audit record: what a parser must find in `line`."""

    time: float
    serial: int
    type: str
    msg: str  # the inner text of msg='...', exactly as written
    line: bytes  # the whole audit.log line, newline included
    vm: str | None = None  # the guest's name, decoded
    uuid: str | None = None
    result: str = "success"


class AuditClock:
    """The one time and serial counter a simulated auditd hands out (shared with noise)."""

    __slots__ = ("serial", "time")

    def __init__(self, start_time: float, serial: int = 100) -> None:
        self.time = start_time
        self.serial = serial

    def tick(self, dt: float) -> tuple[str, int]:
        """Advance by dt seconds and one serial; return the `SECONDS.MMM` stamp and serial."""
        self.time += dt
        self.serial += 1
        return f"{self.time:.3f}", self.serial

    def advance(self, dt: float) -> None:
        """Let time pass without a record."""
        self.time += dt


@dataclass
class Guest:
    """A simulated domain and the devices of its current definition."""

    name: str
    uuid: str
    virt: str
    index: int
    nics: list[str]
    fss: list[str]
    hostdevs: list[tuple[str, str]]  # (bus, device)
    mem_kib: int
    vcpus: int
    disks: list[str] = field(default_factory=list)
    cdrom: str | None = None
    chardevs: list[str] = field(default_factory=list)
    rngs: list[str] = field(default_factory=list)
    tpm: tuple[str, str] | None = None  # (resrc, device)
    shmems: list[tuple[int, str]] = field(default_factory=list)  # (size, path)
    evdevs: list[str] = field(default_factory=list)
    iothreads: int = 0
    state: str = "stopped"  # stopped | running | saved | away
    pid: int = 0
    domid: int = 0
    extra: int = 0  # counter for hot-plugged device names
    isos: list[str] = field(default_factory=list)


class Fleet:
    """Simulated libvirt host(s) whose guests start, stop, hot-plug, fail and migrate.

    `virt` is the domain type of every guest (`kvm`, `qemu`, `lxc`), or `mixed`
    for a host running all three. `events()` never ends; take what you need.
    """

    def __init__(
        self,
        seed: int,
        guests: int = 8,
        virt: str = "kvm",
        start_time: float = 1_700_000_000.0,
        node: str | None = None,
        enriched: bool = True,
        *,
        clock: AuditClock | None = None,
    ) -> None:
        if virt not in (*VIRT_KINDS, "mixed"):
            raise ValueError(f"virt must be kvm, qemu, lxc or mixed, not {virt!r}")
        if guests < 1:
            raise ValueError("a fleet needs at least one guest")
        self.rng = random.Random(seed)
        self.clock = clock if clock is not None else AuditClock(start_time)
        self.node = node
        self.enriched = enriched
        rng = self.rng
        self.lsm = rng.choice(("selinux", "apparmor", "none"))
        self.modular = rng.random() < 0.5
        self.daemon_pid = rng.randrange(800, 3000)
        self.next_pid = rng.randrange(4000, 9000)
        self.next_domid = 1
        pool = list(GUEST_NAMES)
        rng.shuffle(pool)
        self.guests = [
            self._make_guest(
                i,
                pool[i % len(pool)] + (f"-{i // len(pool)}" if i >= len(pool) else ""),
                VIRT_KINDS[i % 3] if virt == "mixed" else virt,
            )
            for i in range(guests)
        ]

    # -- the guests -------------------------------------------------------------------

    def _make_guest(self, index: int, name: str, virt: str) -> Guest:
        rng = self.rng
        uid = str(uuidlib.UUID(int=rng.getrandbits(128), version=4))
        safe = name.encode("utf-8").hex()[:12] if not name.isascii() or " " in name else name
        safe = safe.replace('"', "").replace("'", "")
        if virt == "lxc":
            return Guest(
                name=name,
                uuid=uid,
                virt=virt,
                index=index,
                nics=[self._mac()],
                fss=[f"/var/lib/lxc/{safe}/rootfs"],
                hostdevs=[("disk", "/dev/sdb")] if rng.random() < 0.3 else [],
                mem_kib=rng.choice((262144, 524288, 1048576)),
                vcpus=rng.choice((1, 2)),
            )
        hostdevs: list[tuple[str, str]] = []
        if rng.random() < 0.25:
            hostdevs.append(("pci", f"0000:{rng.randrange(1, 0x40):02x}:00.{rng.randrange(0, 4)}"))
        if rng.random() < 0.2:
            hostdevs.append(("usb", f"{rng.randrange(1, 4):03d}.{rng.randrange(2, 20):03d}"))
        if rng.random() < 0.3:
            hostdevs.append(("usb", "USB redirdev"))
        tpm: tuple[str, str] | None = None
        roll = rng.random()
        if roll < 0.2:
            tpm = ("tpm-emulator", f"/run/libvirt/qemu/swtpm/{index + 1}-{safe}-swtpm.sock")
        elif roll < 0.25:
            tpm = ("tpm", "/dev/tpm0")
        return Guest(
            name=name,
            uuid=uid,
            virt=virt,
            index=index,
            disks=[f"/var/lib/libvirt/images/{safe}.qcow2"]
            + ([f"/dev/vg0/{safe}-data"] if rng.random() < 0.3 else []),
            cdrom="/var/lib/libvirt/iso/debian-12.iso" if rng.random() < 0.3 else None,
            nics=[self._mac() for _ in range(rng.choice((1, 1, 1, 2)))],
            fss=["/srv/share"] if rng.random() < 0.1 else [],
            chardevs=[f"/var/lib/libvirt/qemu/channel/target/{safe}.org.qemu.guest_agent.0"]
            if rng.random() < 0.6
            else [],
            rngs=["/dev/urandom"] if rng.random() < 0.7 else [],
            hostdevs=hostdevs,
            tpm=tpm,
            shmems=[(4194304, f"/dev/shm/{safe}-shmem0")] if rng.random() < 0.1 else [],
            evdevs=["/dev/input/event3"] if rng.random() < 0.1 else [],
            mem_kib=rng.choice((65536, 1048576, 2097152, 4194304, 8388608)),
            vcpus=rng.choice((1, 2, 2, 4, 8)),
            iothreads=rng.choice((0, 0, 0, 1, 2)),
            isos=[
                "/var/lib/libvirt/iso/debian-12.iso",
                "/var/lib/libvirt/iso/virtio-win.iso",
                "/var/lib/libvirt/iso/my install.iso",
            ],
        )

    def _mac(self) -> str:
        r = self.rng
        return f"52:54:00:{r.randrange(256):02x}:{r.randrange(256):02x}:{r.randrange(256):02x}"

    # -- record writing ---------------------------------------------------------------

    def _exe(self, g: Guest) -> str:
        if not self.modular:
            return "/usr/sbin/libvirtd"
        return "/usr/sbin/virtlxcd" if g.virt == "lxc" else "/usr/sbin/virtqemud"

    def _subj(self, g: Guest) -> str:
        if self.lsm == "selinux":
            daemon = "virtd_t" if not self.modular else "virtqemud_t"
            return f" subj=system_u:system_r:{daemon}:s0-s0:c0.c1023"
        if self.lsm == "apparmor":
            return " subj=libvirtd"
        return ""

    def _record(
        self, g: Guest, rtype: str, body: str, *, ok: bool = True, dt: float = 0.0005
    ) -> SimEvent:
        stamp, serial = self.clock.tick(dt)
        result = "success" if ok else "failed"
        msg = f"{body} exe={encode_value(self._exe(g))} hostname=? addr=? terminal=? res={result}"
        head = f"node={self.node} " if self.node is not None else ""
        text = (
            f"{head}type={rtype} msg=audit({stamp}:{serial}): pid={self.daemon_pid} uid=0 "
            f"auid={UNSET} ses={UNSET}{self._subj(g)} msg='{msg}'"
        )
        if self.enriched:
            text += GS + 'UID="root" AUID="unset"'
        return SimEvent(
            time=float(stamp),
            serial=serial,
            type=rtype,
            msg=msg,
            line=(text + "\n").encode("utf-8", "surrogateescape"),
            vm=g.name,
            uuid=g.uuid,
            result=result,
        )

    def _who(self, g: Guest) -> str:
        return f"vm={encode_value(g.name)} uuid={g.uuid}"

    def _resource(
        self, g: Guest, resrc: str, reason: str, rest: str, *, ok: bool = True
    ) -> SimEvent:
        return self._record(
            g,
            "VIRT_RESOURCE",
            f"virt={g.virt} resrc={resrc} reason={reason} {self._who(g)} {rest}",
            ok=ok,
        )

    def _device(
        self, g: Guest, resrc: str, reason: str, old: str | None, new: str | None, ok: bool = True
    ) -> SimEvent:
        rest = f"old-{resrc}={encode_value(old)} new-{resrc}={encode_value(new)}"
        return self._resource(g, resrc, reason, rest, ok=ok)

    def _control(
        self, g: Guest, op: str, reason: str | None, pid: int, ok: bool = True, extra: str = ""
    ) -> SimEvent:
        why = f" reason={reason}" if reason is not None else ""
        body = f"virt={g.virt} op={op}{why} {self._who(g)} vm-pid={pid}{extra}"
        return self._record(g, "VIRT_CONTROL", body, ok=ok, dt=0.002)

    def _cgroup_path(self, g: Guest) -> str:
        drv = "lxc" if g.virt == "lxc" else "qemu"
        scope = f"machine-{drv}\\x2d{g.domid}\\x2d{g.name}.scope"
        return f"/sys/fs/cgroup/machine.slice/{scope}/"

    # -- scenarios --------------------------------------------------------------------

    def _start(self, g: Guest, reason: str, ok: bool = True) -> Iterator[SimEvent]:
        """Everything libvirt audits while starting a guest, in its order."""
        g.domid = self.next_domid
        self.next_domid += 1
        cg = f"cgroup={encode_value(self._cgroup_path(g))}"
        yield self._resource(g, "cgroup", "deny", f"{cg} class=all")
        for path, rdev in (
            ("/dev/null", "01:03"),
            ("/dev/full", "01:07"),
            ("/dev/zero", "01:05"),
            ("/dev/random", "01:08"),
            ("/dev/urandom", "01:09"),
            ("/dev/ptmx", "05:02"),
        ):
            rest = f"{cg} class=path path={encode_value(path)} rdev={rdev} acl=rw"
            yield self._resource(g, "cgroup", "allow", rest)
        if g.virt != "lxc":
            if g.virt == "kvm":
                rest = f'{cg} class=path path="/dev/kvm" rdev=0A:E8 acl=rw'
                yield self._resource(g, "cgroup", "allow", rest)
            yield self._resource(
                g, "cgroup", "allow", f"{cg} class=major category=pty maj=88 acl=rw"
            )
        # Security labels: one VIRT_MACHINE_ID per model.
        models = ["dac"] if self.lsm == "none" else [self.lsm, "dac"]
        for model in models:
            level = f"s0:c{g.index * 7 % 1024},c{(g.index * 13 + 500) % 1024}"
            vm_ctx, img_ctx = {
                "selinux": (
                    f"system_u:system_r:svirt_t:{level}",
                    f"system_u:object_r:svirt_image_t:{level}",
                ),
                "apparmor": (f"libvirt-{g.uuid}", f"libvirt-{g.uuid}"),
                "dac": ("+107:+107", "+107:+107"),
            }[model]
            body = f"virt={g.virt} {self._who(g)} vm-ctx={vm_ctx} img-ctx={img_ctx} model={model}"
            yield self._record(g, "VIRT_MACHINE_ID", body)
        # Host devices opened for each NIC (tap + vhost-net) while building the command line.
        if g.virt != "lxc":
            for mac in g.nics:
                for path, rdev in (("/dev/net/tun", "0A:C8"), ("/dev/vhost-net", "0A:EE")):
                    rest = f"net={mac} path={encode_value(path)} rdev={rdev}"
                    yield self._resource(g, "net", "open", rest)
        for disk in [*g.disks, *([g.cdrom] if g.cdrom else [])]:
            yield self._device(g, "disk", "start", None, disk)
        for fs in g.fss:
            yield self._device(g, "fs", "start", None, fs)
        for mac in g.nics:
            yield self._device(g, "net", "start", None, mac)
        for bus, dev in g.hostdevs:
            if g.virt == "lxc":
                yield self._resource(g, "hostdev", "start", f"{bus}={encode_value(dev)}")
            else:
                yield self._resource(g, "dev", "start", f"bus={bus} device={encode_value(dev)}")
        for ch in g.chardevs:
            yield self._device(g, "chardev", "start", None, ch)
        for rng_path in g.rngs:
            yield self._device(g, "rng", "start", None, rng_path)
        if g.tpm is not None:
            yield self._resource(g, g.tpm[0], "start", f"device={encode_value(g.tpm[1])}")
        for size, path in g.shmems:
            yield self._resource(g, "shmem", "start", f"size={size} path={path}")
        for path in g.evdevs:
            yield self._resource(g, "evdev", "start", f"path={path}")
        yield self._resource(g, "mem", "start", f"old-mem=0 new-mem={g.mem_kib}")
        yield self._resource(g, "vcpu", "start", f"old-vcpu=0 new-vcpu={g.vcpus}")
        if g.iothreads:
            yield self._resource(
                g, "iothread", "start", f"old-iothread=0 new-iothread={g.iothreads}"
            )
        if not ok:
            yield self._control(g, "start", reason, 0, ok=False)
            g.state = "stopped"
            return
        self.next_pid += self.rng.randrange(3, 400)
        g.pid = self.next_pid
        g.state = "running"
        yield self._control(g, "start", reason, g.pid)
        if g.virt == "lxc":
            init_pid = g.pid + self.rng.randrange(1, 5)
            ns = 4026532000 + self.rng.randrange(0, 999)
            yield self._control(g, "init", None, g.pid, extra=f" init-pid={init_pid} pid-ns={ns}")

    def _stop(self, g: Guest, reason: str) -> Iterator[SimEvent]:
        yield self._control(g, "stop", reason, 0)
        g.state = {"saved": "saved", "migrated": "away"}.get(reason, "stopped")
        g.pid = 0

    def _hotplug(self, g: Guest) -> Iterator[SimEvent]:
        rng = self.rng
        roll = rng.random()
        if g.virt == "lxc":
            roll = 0.9 if roll < 0.5 else 0.95  # LXC: memory/vcpu updates only
        if roll < 0.2:  # attach a disk (sometimes it fails)
            g.extra += 1
            disk = f"/var/lib/libvirt/images/{g.uuid[:8]}-extra{g.extra}.qcow2"
            ok = rng.random() > 0.15
            yield self._device(g, "disk", "attach", None, disk, ok=ok)
            if ok:
                g.disks.append(disk)
        elif roll < 0.3 and len(g.disks) > 1:  # detach one
            disk = g.disks.pop()
            yield self._device(g, "disk", "detach", disk, None)
        elif roll < 0.45:  # attach or detach a NIC
            if len(g.nics) > 1 and rng.random() < 0.5:
                mac = g.nics.pop()
                yield self._device(g, "net", "detach", mac, None)
            else:
                mac = self._mac()
                for path, rdev in (("/dev/net/tun", "0A:C8"), ("/dev/vhost-net", "0A:EE")):
                    rest = f"net={mac} path={encode_value(path)} rdev={rdev}"
                    yield self._resource(g, "net", "open", rest)
                ok = rng.random() > 0.1
                yield self._device(g, "net", "attach", None, mac, ok=ok)
                if ok:
                    g.nics.append(mac)
        elif roll < 0.6 and g.isos:  # change the CD: a disk update with old and new
            new = rng.choice(g.isos)
            if rng.random() < 0.15:  # a medium that cannot be opened: only a denied ACL
                cg = f"cgroup={encode_value(self._cgroup_path(g))}"
                rest = f"{cg} class=path path={encode_value(new + '.missing')} rdev=? acl=r"
                yield self._resource(g, "cgroup", "deny", rest, ok=False)
            else:
                yield self._device(g, "disk", "update", g.cdrom, new)
                g.cdrom = new
        elif roll < 0.9:  # memory hot-add (KiB)
            new_mem = g.mem_kib + rng.choice((131072, 262144, 1048576))
            yield self._resource(g, "mem", "update", f"old-mem={g.mem_kib} new-mem={new_mem}")
            g.mem_kib = new_mem
        else:  # vcpu hot-plug
            new_vcpus = max(1, g.vcpus + rng.choice((-1, 1, 2)))
            rest = f"old-vcpu={g.vcpus} new-vcpu={new_vcpus}"
            yield self._resource(g, "vcpu", "update", rest)
            g.vcpus = new_vcpus

    def _step(self) -> Iterator[SimEvent]:
        rng = self.rng
        self.clock.advance(rng.expovariate(1 / 4.0))  # idle time between operations
        g = rng.choice(self.guests)
        if g.state == "stopped":
            yield from self._start(g, rng.choice(START_REASONS), ok=rng.random() > 0.08)
        elif g.state == "saved":
            yield from self._start(g, "restored")
        elif g.state == "away":
            yield from self._start(g, "migrated")
        else:
            roll = rng.random()
            if roll < 0.55:
                yield from self._hotplug(g)
            elif roll < 0.65 and g.virt != "lxc":
                yield from self._stop(g, "migrated")
            elif roll < 0.72 and g.virt != "lxc":
                yield from self._stop(g, "saved")
            else:
                yield from self._stop(g, rng.choice(STOP_REASONS))

    def events(self) -> Iterator[SimEvent]:
        """Yield records forever: serials increase, time moves forward."""
        while True:
            yield from self._step()


# -- noise: what else a real audit.log holds ---------------------------------------------

_USERS: Final = (("root", 0), ("alice", 1000), ("bob", 1001), ("ci", 1002))
_COMMANDS: Final = (
    ("/usr/bin/ls", "ls", ("ls", "-la", "/etc")),
    ("/usr/bin/cat", "cat", ("cat", "/etc/passwd")),
    ("/usr/bin/grep", "grep", ("grep", "-r", "type=VIRT_CONTROL", "/var/log/audit")),
    ("/usr/bin/sudo", "sudo", ("sudo", "virsh", "list", "--all")),
    ("/usr/bin/virsh", "virsh", ("virsh", "start", "web 01")),
    ("/usr/bin/python3.11", "python3", ("python3", "-c", "print('type=VIRT_RESOURCE')")),
    ("/usr/sbin/sshd", "sshd", ("sshd", "-D")),
)
_PATHS: Final = ("/etc/passwd", "/etc/shadow", "/var/log/audit/audit.log", "/tmp/my file")
_SERVICES: Final = ("cron", "systemd-tmpfiles-clean", "libvirtd", "apt-daily", "user@1000")
_SYSCALLS: Final = ((59, "execve"), (257, "openat"), (2, "open"), (87, "unlink"), (90, "chmod"))
_KEYS: Final = ('"exec"', '"identity"', '"audit-log"', '"VIRT_RESOURCE"', "(null)")


def _val(text: str) -> str:
    return encode_value(text)


def noise_lines(
    rng: random.Random,
    clock: AuditClock,
    *,
    node: str | None = None,
    enriched: bool = True,
    docker_fraction: float = 0.01,
) -> list[bytes]:
    """Return the lines of one non-libvirt audit event (one or several records, one serial).

    Includes the traps a careless parser falls for: `key="VIRT_RESOURCE"` in a
    SYSCALL record, `type=VIRT_...` inside an EXECVE argument, dockerd's
    VIRT_CONTROL records without `virt=`/`uuid=`.
    """
    stamp, serial = clock.tick(rng.expovariate(1 / 0.02))
    head = f"{'node=' + node + ' ' if node is not None else ''}"
    a = f"msg=audit({stamp}:{serial}):"
    user, uid = rng.choice(_USERS)
    ses = rng.randrange(1, 60)
    pid = rng.randrange(300, 60000)
    lines: list[str] = []

    def enr(text: str) -> str:
        return GS + text if enriched else ""

    roll = rng.random()
    if roll < docker_fraction:
        # RHEL's dockerd writes VIRT_CONTROL too (not libvirt's: no virt=, no uuid=).
        cid = f"{rng.getrandbits(48):012x}"
        lines.append(
            f"{head}type=VIRT_CONTROL {a} pid={pid} uid=0 auid={UNSET} ses={UNSET} "
            f"subj=system_u:system_r:container_runtime_t:s0 msg='reason=api vm-pid={pid + 7} "
            f"hostname={cid} op={rng.choice(('start', 'stop', 'exec', 'resize'))} vm=centos:7 "
            f'user={user} auid={uid} exe=sleep  exe="/usr/bin/dockerd-current" hostname=? '
            f"addr=? terminal=? res=success'" + enr('UID="root" AUID="unset"')
        )
    elif roll < 0.55:
        exe, comm, argv = rng.choice(_COMMANDS)
        num, sname = rng.choice(_SYSCALLS)
        key = rng.choice(_KEYS)
        ok = rng.random() < 0.9
        lines.append(
            f"{head}type=SYSCALL {a} arch=c000003e syscall={num} success={'yes' if ok else 'no'} "
            f"exit={0 if ok else -13} a0=7ffd{rng.getrandbits(24):06x} a1=0 a2=0 a3=0 items=2 "
            f"ppid={pid - 1} pid={pid} auid={uid} uid={uid} gid={uid} euid={uid} suid={uid} "
            f"fsuid={uid} egid={uid} sgid={uid} fsgid={uid} tty=pts{ses % 4} ses={ses} "
            f'comm="{comm}" exe="{exe}" key={key}'
            + enr(
                f'ARCH=x86_64 SYSCALL={sname} AUID="{user}" UID="{user}" GID="{user}" '
                f'EUID="{user}" SUID="{user}" FSUID="{user}" EGID="{user}" SGID="{user}" '
                f'FSGID="{user}"'
            )
        )
        if num == 59:
            args = " ".join(f"a{i}={_val(arg)}" for i, arg in enumerate(argv))
            lines.append(f"{head}type=EXECVE {a} argc={len(argv)} {args}")
        lines.append(f"{head}type=CWD {a} cwd={_val(rng.choice(('/root', '/home/' + user)))}")
        for item, path in enumerate((exe, rng.choice(_PATHS))):
            lines.append(
                f"{head}type=PATH {a} item={item} name={_val(path)} "
                f"inode={rng.randrange(1, 1 << 20)} "
                f"dev=fd:01 mode=0100755 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL "
                f"cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0"
                + enr('OUID="root" OGID="root"')
            )
        proctitle = "\0".join(argv).encode("utf-8").hex().upper()
        lines.append(f"{head}type=PROCTITLE {a} proctitle={proctitle}")
    elif roll < 0.8:
        rtype = rng.choice(
            (
                "USER_LOGIN",
                "USER_START",
                "USER_END",
                "CRED_ACQ",
                "CRED_DISP",
                "CRED_REFR",
                "USER_AUTH",
                "USER_ACCT",
                "USER_CMD",
            )
        )
        if rtype == "USER_CMD":
            inner = (
                f'cwd="/home/{user}" cmd={"7669727368206C697374202D2D616C6C"} '
                f'exe="/usr/bin/sudo" terminal=pts/{ses % 4} res=success'
            )
        elif rtype == "USER_LOGIN":
            inner = (
                f'op=login id={uid} exe="/usr/sbin/sshd" hostname=? addr=192.0.2.{ses} '
                f"terminal=/dev/pts/{ses % 4} res=success"
            )
        else:
            inner = (
                f"op=PAM:session_open grantors=pam_selinux,pam_loginuid,pam_keyinit "
                f'acct="{user}" exe="/usr/sbin/sshd" hostname=192.0.2.{ses} addr=192.0.2.{ses} '
                f"terminal=ssh res=success"
            )
        lines.append(
            f"{head}type={rtype} {a} pid={pid} uid=0 auid={uid} ses={ses} msg='{inner}'"
            + enr(f'UID="root" AUID="{user}"')
        )
    elif roll < 0.93:
        rtype = rng.choice(("SERVICE_START", "SERVICE_STOP"))
        unit = rng.choice(_SERVICES)
        lines.append(
            f"{head}type={rtype} {a} pid=1 uid=0 auid={UNSET} ses={UNSET} "
            f'msg=\'unit={unit} comm="systemd" exe="/usr/lib/systemd/systemd" hostname=? '
            f"addr=? terminal=? res=success'" + enr('UID="root" AUID="unset"')
        )
    elif roll < 0.97:
        lines.append(
            f"{head}type=BPF {a} prog-id={rng.randrange(10, 400)} "
            f"op={rng.choice(('LOAD', 'UNLOAD'))}"
        )
    else:
        lines.append(
            f"{head}type=ANOM_PROMISCUOUS {a} dev=vnet{rng.randrange(0, 9)} "
            f"prom={rng.choice((0, 256))} old_prom=0 auid={UNSET} uid=0 gid=0 ses={UNSET}"
            + enr('AUID="unset" UID="root" GID="root"')
        )
    return [(line + "\n").encode("utf-8") for line in lines]


def mixed_log(
    seed: int, lines: int, virt_fraction: float = 0.05, enriched: bool = True
) -> Iterator[bytes]:
    """Yield `lines` audit.log lines: libvirt records (about virt_fraction of them) in noise."""
    rng = random.Random(seed ^ 0x5EED)
    clock = AuditClock(1_700_000_000.0)
    fleet = Fleet(seed, guests=12, virt="mixed", enriched=enriched, clock=clock)
    events = fleet.events()
    emitted = virt = 0
    while emitted < lines:
        if virt < virt_fraction * (emitted + 1):
            out = [next(events).line]
            virt += 1
        else:
            out = noise_lines(rng, clock, enriched=enriched)
        yield from out[: lines - emitted]
        emitted += len(out)


def virt_only_log(seed: int, lines: int, enriched: bool = True) -> Iterator[bytes]:
    """Yield `lines` libvirt records and nothing else."""
    events = Fleet(seed, guests=12, virt="mixed", enriched=enriched).events()
    for _ in range(lines):
        yield next(events).line


def write_lines(out: BinaryIO, lines: Iterator[bytes], batch: int = 4096) -> None:
    """Write lines in batches (a million single writes are slow)."""
    buf: list[bytes] = []
    for line in lines:
        buf.append(line)
        if len(buf) >= batch:
            out.write(b"".join(buf))
            buf.clear()
    out.write(b"".join(buf))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m monitord.commands.simulate",
        description="Write a seeded, simulated audit.log.",
    )
    sub = ap.add_subparsers(dest="kind", required=True)
    for kind, text in (
        ("mixed", "libvirt records in realistic noise"),
        ("virt-only", "only libvirt records"),
    ):
        p = sub.add_parser(kind, help=text)
        p.add_argument("out", metavar="OUT", help="file to write, - for stdout")
        p.add_argument("--lines", type=int, default=100_000)
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--raw", action="store_true", help="no enrichment (auditd log_format=RAW)")
        if kind == "mixed":
            p.add_argument("--virt-fraction", type=float, default=0.05)
    args = ap.parse_args(argv)
    enriched = not args.raw
    if args.kind == "mixed":
        lines = mixed_log(args.seed, args.lines, args.virt_fraction, enriched=enriched)
    else:
        lines = virt_only_log(args.seed, args.lines, enriched=enriched)
    if args.out == "-":
        write_lines(sys.stdout.buffer, lines)
    else:
        with Path(args.out).open("wb") as out:
            write_lines(out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
