"""What each libvirt record form does to its guest (monitord.state.effects)."""

# ruff: noqa: E501 (one record form and its effect a line reads best)

from __future__ import annotations

import pytest

from monitord.audit.parser import parse_line
from monitord.audit.record import AuditRecord
from monitord.state.effects import (
    AmountChange,
    DeviceChange,
    Label,
    Lifecycle,
    Mention,
    effect,
    subject,
)

U = "c857b1ce-7157-4be5-ae36-29cf22a62ec8"
TAIL = 'exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? res=success'


def rec(inner: str, rtype: str = "VIRT_RESOURCE") -> AuditRecord:
    line = f"type={rtype} msg=audit(1700000000.123:42): pid=1 uid=0 msg='{inner} {TAIL}'"
    result = parse_line(line.encode())
    assert isinstance(result, AuditRecord), result
    return result


@pytest.mark.parametrize(
    ("inner", "expected"),
    [
        (f'virt=kvm resrc=disk reason=attach vm="w" uuid={U} old-disk="?" new-disk="/d.img"', DeviceChange("disks", None, "/d.img")),
        (f'virt=kvm resrc=disk reason=update vm="w" uuid={U} old-disk="/a" new-disk="/b"', DeviceChange("disks", "/a", "/b")),
        (f'virt=kvm resrc=net reason=open vm="w" uuid={U} net=52:54:00:00:00:01 path="/dev/net/tun" rdev=0A:C8', Mention("/dev/net/tun")),
        (f"virt=kvm resrc=dev reason=start vm=\"w\" uuid={U} bus=usb device=555342207265646972646576", DeviceChange("hostdevs", None, "usb:USB redirdev")),
        (f"virt=kvm resrc=dev reason=detach vm=\"w\" uuid={U} bus=pci device=\"0000:03:00.0\"", DeviceChange("hostdevs", "pci:0000:03:00.0", None)),
        (f'virt=lxc resrc=hostdev reason=start vm="w" uuid={U} disk="/dev/sdb"', DeviceChange("hostdevs", None, "disk:/dev/sdb")),
        (f'virt=lxc resrc=hostdev reason=start vm="w" uuid={U} chardev="/dev/ttyS0"', DeviceChange("hostdevs", None, "chardev:/dev/ttyS0")),
        (f'virt=kvm resrc=tpm-emulator reason=start vm="w" uuid={U} device="/run/s.sock"', DeviceChange("tpms", None, "/run/s.sock")),
        (f'virt=kvm resrc=tpm-emulator reason=start vm="w" uuid={U} device="?"', Mention(None)),
        (f'virt=kvm resrc=cgroup reason=allow vm="w" uuid={U} cgroup="/c" class=path path="/dev/kvm" rdev=0A:E8 acl=rw', Mention("/dev/kvm")),
        (f"virt=kvm resrc=mem reason=update vm=\"w\" uuid={U} old-mem=65536 new-mem=196608", AmountChange("memory_bytes", "mem", 65536, 196608, 1024)),
        (f"virt=kvm resrc=iothread reason=start vm=\"w\" uuid={U} old-iothread=0 new-iothread=?", AmountChange("iothreads", "iothread", 0, None, 1)),
        (f"virt=kvm resrc=shmem reason=start vm=\"w\" uuid={U} size=4194304 path=/dev/shm/my shm", DeviceChange("shmems", None, "/dev/shm/my shm")),
        (f"virt=kvm resrc=evdev reason=detach vm=\"w\" uuid={U} path=/dev/input/event3", DeviceChange("inputs", "/dev/input/event3", None)),
        (f"virt=kvm resrc=rng reason=detach vm=\"w\" uuid={U} old-rng=\"/dev/urandom\" new-rng=\"?\"", DeviceChange("rngs", "/dev/urandom", None)),
        (f'virt=kvm resrc=weird reason=start vm="w" uuid={U} old-weird="?" new-weird="w"', Mention("w")),
        (f"virt=kvm resrc=gpu reason=start vm=\"w\" uuid={U} x=1", Mention(None)),
    ],
)  # fmt: skip
def test_resource_effects(inner: str, expected: object) -> None:
    """Each VIRT_RESOURCE form names the list it changes, the amount it sets, or nothing."""
    assert effect(rec(inner)) == expected


def test_control_label_and_other_types() -> None:
    """VIRT_CONTROL is a lifecycle step with its pid, VIRT_MACHINE_ID a label; 2503+ nothing."""
    r = rec(f'virt=lxc op=init vm="c" uuid={U} vm-pid=10 init-pid=12 pid-ns=4', "VIRT_CONTROL")
    assert effect(r) == Lifecycle("init", None, 10)
    r = rec(
        f'virt=kvm vm="w" uuid={U} vm-ctx=+107:+107 img-ctx=+107:+107 model=dac', "VIRT_MACHINE_ID"
    )
    assert effect(r) == Label("dac", "+107:+107", "+107:+107")
    assert effect(rec(f'virt=kvm vm="w" uuid={U}', "VIRT_MIGRATE_OUT")) is None


def test_subject_names_what_an_alert_describes() -> None:
    """subject() gives the device added (or removed), the mentioned path, or the amounts."""
    assert subject(DeviceChange("disks", "/a", "/b")) == "/b"
    assert subject(DeviceChange("disks", "/a", None)) == "/a"
    assert subject(Mention("/dev/kvm")) == "/dev/kvm"
    assert subject(AmountChange("vcpus", "vcpu", 2, 4, 1)) == "vcpu 2 -> 4"
    assert subject(Lifecycle("start", "booted", 1)) is None
