"""Guest table transitions (docs/INTERFACE.md "Guest state"; docs/FORMATS.md, the record forms)."""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

from monitord.audit.parser import parse_line
from monitord.audit.record import AuditRecord
from monitord.config import StateConfig
from monitord.state.table import GuestTable

UUID = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"
UUID2 = "8b1e3a5c-0f1d-4b7e-9a55-2f6c0c9d1a01"


class Log:
    """Builds real audit.log lines and parses them, with increasing time and serial."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t
        self.serial = 100

    def line(self, rtype: str, body: str, res: str = "success", step: float = 1.0) -> str:
        self.t += step
        self.serial += 1
        return (
            f"type={rtype} msg=audit({self.t:.3f}:{self.serial}): pid=1205 uid=0 auid=4294967295 "
            f'ses=4294967295 msg=\'{body} exe="/usr/sbin/libvirtd" hostname=? addr=? '
            f"terminal=? res={res}'"
        )

    def rec(self, rtype: str, body: str, res: str = "success", step: float = 1.0) -> AuditRecord:
        record = parse_line(self.line(rtype, body, res, step))
        assert isinstance(record, AuditRecord)
        return record

    def control(
        self, op: str, reason: str, vm: str = "web01", uuid: str = UUID, pid: int = 4242,
        res: str = "success", virt: str = "kvm",
    ) -> AuditRecord:  # fmt: skip
        pid_ = pid if op == "start" and res == "success" else 0
        body = f'virt={virt} op={op} reason={reason} vm="{vm}" uuid={uuid} vm-pid={pid_}'
        return self.rec("VIRT_CONTROL", body, res)

    def resource(
        self, resrc: str, reason: str, rest: str, vm: str = "web01", uuid: str = UUID,
        res: str = "success", virt: str = "kvm",
    ) -> AuditRecord:  # fmt: skip
        body = f'virt={virt} resrc={resrc} reason={reason} vm="{vm}" uuid={uuid} {rest}'
        return self.rec("VIRT_RESOURCE", body, res)

    def disk(self, reason: str, old: str = "?", new: str = "?", **kw: Any) -> AuditRecord:
        return self.resource("disk", reason, f'old-disk="{old}" new-disk="{new}"', **kw)

    def net(self, reason: str, old: str = "?", new: str = "?", **kw: Any) -> AuditRecord:
        return self.resource("net", reason, f'old-net="{old}" new-net="{new}"', **kw)

    def label(self, model: str, ctx: str, uuid: str = UUID, vm: str = "web01") -> AuditRecord:
        body = f'virt=kvm vm="{vm}" uuid={uuid} vm-ctx={ctx} img-ctx={ctx} model={model}'
        return self.rec("VIRT_MACHINE_ID", body)

    def start(
        self, uuid: str = UUID, vm: str = "web01", disks: tuple[str, ...] = ("/d/a",)
    ) -> list[AuditRecord]:
        """A whole successful start: resources first, then op=start."""
        out = [self.disk("start", new=d, uuid=uuid, vm=vm) for d in disks]
        out.append(self.net("start", new="52:54:00:00:00:01", uuid=uuid, vm=vm))
        out.append(self.resource("mem", "start", "old-mem=0 new-mem=65536", uuid=uuid, vm=vm))
        out.append(self.resource("vcpu", "start", "old-vcpu=0 new-vcpu=2", uuid=uuid, vm=vm))
        out.append(self.control("start", "booted", uuid=uuid, vm=vm))
        return out


def table(**kw: Any) -> GuestTable:
    return GuestTable(StateConfig(**kw), clock=lambda: 1234.5)


def feed(t: GuestTable, records: list[AuditRecord]) -> None:
    for r in records:
        t.apply(r)


def guest(t: GuestTable, uuid: str = UUID) -> dict[str, Any]:
    doc = t.guest_document(uuid)
    assert doc is not None
    return doc


def test_start_makes_running_with_resources_recorded_before_it() -> None:
    """Resources of a start phase arrive before op=start and describe the running guest."""
    log, t = Log(), table()
    feed(t, log.start(disks=("/d/b", "/d/a")))
    g = guest(t)
    assert g["state"] == "running"
    assert g["vm_pid"] == 4242
    assert g["disks"] == ["/d/a", "/d/b"]
    assert g["nics"] == ["52:54:00:00:00:01"]
    assert g["memory_bytes"] == 65536 * 1024
    assert g["vcpus"] == 2
    assert g["last_op"] == "start" and g["last_reason"] == "booted"
    assert g["started_at"] == log.t and g["stopped_at"] is None


def test_new_start_phase_resets_lists_after_stop() -> None:
    """A restart describes only the new run: old disks and memory are forgotten."""
    log, t = Log(), table()
    feed(t, log.start(disks=("/d/old",)))
    t.apply(log.control("stop", "destroyed"))
    g = guest(t)
    assert g["state"] == "stopped" and g["vm_pid"] is None and g["stopped_at"] == log.t
    assert g["disks"] == ["/d/old"]  # a stopped guest still shows its last run
    t.apply(log.disk("start", new="/d/new"))
    assert guest(t)["disks"] == ["/d/new"]
    assert guest(t)["memory_bytes"] is None
    t.apply(log.disk("start", new="/d/new2"))  # same phase: added, not reset
    t.apply(log.control("start", "restored"))
    g = guest(t)
    assert g["state"] == "running" and g["disks"] == ["/d/new", "/d/new2"]


def test_op_start_without_resources_begins_a_phase() -> None:
    """op=start of a stopped guest with no resource records first still resets its lists."""
    log, t = Log(), table()
    feed(t, log.start(disks=("/d/old",)))
    t.apply(log.control("stop", "shutdown"))
    t.apply(log.control("start", "booted"))
    assert guest(t)["disks"] == []


def test_start_for_running_guest_begins_a_new_run() -> None:
    """A start set for a guest still running (its QEMU died while libvirtd was down, so no
    stop was ever written) describes the new run only: nothing is counted twice."""
    log, t = Log(), table()
    feed(t, log.start(disks=("/d/a",)))
    feed(t, log.start(disks=("/d/a", "/d/b")))
    g = guest(t)
    assert g["state"] == "running" and g["disks"] == ["/d/a", "/d/b"]
    assert g["nics"] == ["52:54:00:00:00:01"] and g["vcpus"] == 2
    t.apply(log.control("start", "booted"))  # an op=start alone also ends the old run
    assert guest(t)["disks"] == []


def test_device_lists_are_multisets() -> None:
    """Two identical USB redirdevs are listed twice; a detach takes one away; a detach of
    something never attached changes nothing and is counted."""
    log, t = Log(), table()
    redir = "bus=usb device=555342207265646972646576"  # hex of "USB redirdev"
    t.apply(log.resource("dev", "start", redir))
    t.apply(log.resource("dev", "start", redir))
    t.apply(log.control("start", "booted"))
    assert guest(t)["hostdevs"] == ["usb:USB redirdev"] * 2
    t.apply(log.resource("dev", "attach", redir))
    assert guest(t)["hostdevs"] == ["usb:USB redirdev"] * 3
    t.apply(log.resource("dev", "detach", redir))
    assert guest(t)["hostdevs"] == ["usb:USB redirdev"] * 2
    t.apply(log.resource("rng", "detach", 'old-rng="/dev/urandom" new-rng="?"'))
    assert guest(t)["rngs"] == []
    assert t.snapshot().unmatched_detaches == {"rng": 1}


def test_guests_keyed_by_node_and_uuid() -> None:
    """The same UUID on two nodes is two guests; this host's own records have no node."""
    log, t = Log(), GuestTable(StateConfig(), clock=lambda: 1.0, host="hv0")
    feed(t, log.start())
    remote = log.line(
        "VIRT_CONTROL", f'virt=kvm op=start reason=migrated vm="web01" uuid={UUID} vm-pid=7'
    )
    record = parse_line("node=hvB " + remote)
    assert isinstance(record, AuditRecord)
    t.apply(record)
    t.apply(log.control("stop", "migrated"))
    docs = {(g["node"], g["host"]): g for g in t.document()["guests"]}
    assert docs[(None, "hv0")]["state"] == "stopped"
    assert docs[("hvB", "hvB")]["state"] == "running" and docs[("hvB", "hvB")]["vm_pid"] == 7
    assert guest(t)["node"] is None  # this host's own guest first
    assert (t.guest_document(UUID, "hvB") or {})["vm_pid"] == 7


def test_failed_start_changes_no_state_but_counts() -> None:
    """A failed op=start leaves state and pid alone, counts a failure, and the next try resets."""
    log, t = Log(), table()
    feed(t, log.start(disks=("/d/a",)))
    t.apply(log.control("stop", "destroyed"))
    t.apply(log.disk("start", new="/d/try1"))
    t.apply(log.control("start", "booted", res="failed"))
    g = guest(t)
    assert g["state"] == "stopped" and g["failures"] == 1
    assert g["last_result"] == "failed" and g["vm_pid"] is None
    t.apply(log.disk("start", new="/d/try2"))
    assert guest(t)["disks"] == ["/d/try2"]


def test_attach_detach_update() -> None:
    """old=? adds, new=? removes, both replace; a second attach lists it twice (a multiset),
    an unknown detach is harmless."""
    log, t = Log(), table()
    feed(t, log.start(disks=("/d/a",)))
    t.apply(log.disk("attach", new="/d/b"))
    t.apply(log.disk("attach", new="/d/b"))
    t.apply(log.disk("detach", old="/d/never-attached"))
    t.apply(log.disk("update", old="/d/a", new="/d/c"))
    t.apply(log.net("detach", old="52:54:00:00:00:01"))
    g = guest(t)
    assert g["disks"] == ["/d/b", "/d/b", "/d/c"]
    assert g["nics"] == []
    t.apply(log.resource("mem", "update", "old-mem=65536 new-mem=131072"))
    t.apply(log.resource("vcpu", "update", "old-vcpu=2 new-vcpu=4"))
    t.apply(log.resource("iothread", "update", "old-iothread=0 new-iothread=3"))
    g = guest(t)
    assert (g["memory_bytes"], g["vcpus"], g["iothreads"]) == (131072 * 1024, 4, 3)


def test_failed_records_change_nothing_but_count() -> None:
    """A failed attach/detach/label changes no list, but counts a failure and an event."""
    log, t = Log(), table()
    feed(t, log.start(disks=("/d/a",)))
    before = guest(t)
    t.apply(log.disk("attach", new="/d/b", res="failed"))
    t.apply(log.disk("detach", old="/d/a", res="failed"))
    t.apply(log.resource("mem", "update", "old-mem=65536 new-mem=1", res="failed"))
    after = guest(t)
    assert after["disks"] == before["disks"] and after["memory_bytes"] == before["memory_bytes"]
    assert after["failures"] == before["failures"] + 3


def test_devices_of_every_kind() -> None:
    """hostdevs, tpms, shmems, inputs, LXC hostdev and net reason=open land where they belong."""
    log, t = Log(), table()
    t.apply(log.resource("dev", "start", 'bus=pci device="0000:03:00.0"'))
    t.apply(log.resource("dev", "start", "bus=usb device=555342207265646972646576"))
    t.apply(log.resource("tpm", "start", 'device="/dev/tpm0"'))
    t.apply(log.resource("shmem", "start", "size=4194304 path=/dev/shm/my shm"))
    t.apply(log.resource("evdev", "start", "path=/dev/input/event3"))
    t.apply(log.resource("rng", "start", 'old-rng="?" new-rng="/dev/urandom"'))
    t.apply(log.resource("smartcard", "start", 'old-smartcard="?" new-smartcard="nss"'))
    t.apply(log.resource("chardev", "start", 'old-chardev="?" new-chardev="/dev/pts/3"'))
    t.apply(log.resource("fs", "start", 'old-fs="?" new-fs="/srv/share"'))
    t.apply(log.resource("net", "open", 'net=52:54:00:16:e5:9c path="/dev/net/tun" rdev=0A:C8'))
    t.apply(log.resource("hostdev", "start", 'disk="/dev/sdb"', virt="lxc"))
    t.apply(log.control("start", "booted"))
    g = guest(t)
    assert g["hostdevs"] == ["disk:/dev/sdb", "pci:0000:03:00.0", "usb:USB redirdev"]
    assert g["tpms"] == ["/dev/tpm0"]
    assert g["shmems"] == ["/dev/shm/my shm"]
    assert g["inputs"] == ["/dev/input/event3"]
    assert g["rngs"] == ["/dev/urandom"] and g["smartcards"] == ["nss"]
    assert g["chardevs"] == ["/dev/pts/3"] and g["filesystems"] == ["/srv/share"]
    assert g["nics"] == []  # reason=open names a host device opened, not a NIC assigned
    t.apply(log.resource("dev", "detach", 'bus=pci device="0000:03:00.0"'))
    assert guest(t)["hostdevs"] == ["disk:/dev/sdb", "usb:USB redirdev"]


def test_security_labels_replaced_per_model() -> None:
    """One label per model; a new label of the same model replaces the old one."""
    log, t = Log(), table()
    t.apply(log.label("selinux", "system_u:system_r:svirt_t:s0:c1,c2"))
    t.apply(log.label("dac", "+107:+107"))
    t.apply(log.label("selinux", "system_u:system_r:svirt_t:s0:c3,c4"))
    sec = guest(t)["security"]
    assert [s["model"] for s in sec] == ["dac", "selinux"]
    assert sec[1]["vm_ctx"] == "system_u:system_r:svirt_t:s0:c3,c4"


def test_lxc_init() -> None:
    """LXC op=init marks the container running and gives its pid."""
    log, t = Log(), table()
    body = f'virt=lxc op=init vm="ct" uuid={UUID} vm-pid=77 init-pid=78 pid-ns=1'
    t.apply(log.rec("VIRT_CONTROL", body))
    g = guest(t)
    assert g["state"] == "running" and g["vm_pid"] == 77 and g["virt"] == "lxc"


def test_unknown_state_and_rename() -> None:
    """A guest first seen by a hot-plug is `unknown`; the latest name wins."""
    log, t = Log(), table()
    t.apply(log.disk("attach", new="/d/x", vm="old-name"))
    assert guest(t)["state"] == "unknown"
    t.apply(log.disk("attach", new="/d/y", vm="new-name"))
    assert guest(t)["name"] == "new-name"


def test_changes_come_in_table_order_and_load_back_in_it() -> None:
    """take_changes gives the changed guests least recently changed first; a table restored
    from them (saved) has the same order, so eviction picks the same victims."""
    log, t = Log(), table(max_guests=3)
    uuids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(3)]
    for u in uuids:
        feed(t, log.start(uuid=u, vm=u[:8]))
    saved, gone = t.take_changes()
    assert [k for k, _ in saved] == [("", u) for u in uuids] and gone == []
    t.apply(log.disk("attach", new="/d/x", uuid=uuids[0], vm=uuids[0][:8]))
    changed, _ = t.take_changes()
    assert [k for k, _ in changed] == [("", uuids[0])]
    # A store keeps each guest's last save, in the order of the saves.
    last = dict(saved)
    for k, doc in changed:
        last.pop(k)
        last[k] = doc
    r = table(max_guests=3)
    r.restore({**t.meta_json(), "guests": list(last.values())}, saved=True)
    assert r.take_changes() == ([], [])
    assert [g.uuid for g in r.snapshot().guests] == [g.uuid for g in t.snapshot().guests]
    newcomer = "ffffffff-0000-4000-8000-000000000000"
    records = list(log.start(uuid=newcomer, vm="new"))
    for x in (t, r):
        feed(x, records)
    assert r.snapshot() == t.snapshot()  # uuids[1] evicted from both


def test_eviction_by_age_uses_record_time() -> None:
    """Stopped guests older than forget_stopped_after (by record time) are forgotten and counted."""
    log, t = Log(), table(forget_stopped_after=100.0)
    feed(t, log.start(uuid=UUID))
    t.apply(log.control("stop", "shutdown", uuid=UUID))
    stopped_at = log.t
    feed(t, log.start(uuid=UUID2, vm="db"))
    assert t.expire(stopped_at + 99) == 0
    assert t.expire(stopped_at + 101) == 1
    assert t.guest_document(UUID) is None and t.guest_document(UUID2) is not None
    assert t.guests_evicted == 1 and t.guests_tracked == 1


def test_eviction_by_max_guests_prefers_stopped() -> None:
    """Beyond max_guests the longest-stopped guest goes first, then the least recently active."""
    log, t = Log(), table(max_guests=3)
    uuids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(5)]
    for u in uuids[:3]:
        feed(t, log.start(uuid=u, vm=u[-2:]))
    t.apply(log.control("stop", "shutdown", uuid=uuids[1]))
    feed(t, log.start(uuid=uuids[3]))
    assert t.guest_document(uuids[1]) is None  # the stopped one, although not the oldest
    feed(t, log.start(uuid=uuids[4]))
    assert t.guest_document(uuids[0]) is None  # then the least recently active
    assert t.guests_tracked == 3 and t.guests_evicted == 2


def test_label_values_bounded_then_other() -> None:
    """Beyond max_label_values distinct values, new ones are counted as `other`."""
    log, t = Log(), table(max_label_values=2)
    for reason in ("booted", "restored", "weird1", "weird2"):
        t.apply(log.control("start", reason))
    ops = t.snapshot().operations
    assert ops[("kvm", "start", "booted", "success")] == 1
    assert ops[("kvm", "start", "restored", "success")] == 1
    assert ops[("kvm", "start", "other", "success")] == 2


def test_counters() -> None:
    """Records, operations, resources and labels are counted with their labels."""
    log, t = Log(), table()
    feed(t, log.start())
    t.apply(log.label("dac", "+1:+1"))
    t.apply(log.control("start", "booted", res="failed"))
    s = t.snapshot()
    assert s.records[("VIRT_RESOURCE", "kvm", "success")] == 4
    assert s.records[("VIRT_CONTROL", "kvm", "failed")] == 1
    assert s.operations[("kvm", "start", "booted", "failed")] == 1
    assert s.resources[("kvm", "disk", "start", "success")] == 1
    assert s.labels[("kvm", "dac", "success")] == 1


def test_checkpoint_round_trip_is_exact() -> None:
    """to_json -> restore gives back guests, their order, counters, failures and label bounds."""
    log, t = Log(), table(max_label_values=3)
    feed(t, log.start(disks=("/d/a", "/d/b")))
    t.apply(log.label("selinux", "a:b:c:s0"))
    t.apply(log.disk("attach", new="/d/x", res="failed"))
    t.apply(log.disk("start", new="/d/p", uuid=UUID2, vm="phase"))  # an open start phase
    for reason in ("r1", "r2", "r3", "r4"):
        t.apply(log.control("stop", reason, uuid=UUID2, vm="phase"))
    t.expire(log.t + 10 * 86400)
    doc = json.loads(json.dumps(t.to_json()))
    r = table(max_label_values=3)
    r.restore(doc)
    assert r.document() == t.document()
    assert r.guest_document(UUID) == t.guest_document(UUID)
    assert r.snapshot() == t.snapshot()
    assert json.loads(json.dumps(r.to_json())) == doc
    # Bounds and phases carry on: the 4th new reason is still `other`, the phase stays open.
    stop = log.control("stop", "r9")
    t.apply(stop)
    r.apply(stop)
    assert r.snapshot().operations == t.snapshot().operations


def test_records_without_uuid_value_are_only_counted() -> None:
    """Records without a uuid value count but create no guest (the parser makes none: uuid=?
    is bad_uuid; a record can still be built without one)."""
    log, t = Log(), table()
    record = log.rec("VIRT_CONTROL", f'virt=kvm op=start reason=booted vm="x" uuid={UUID}')
    t.apply(dataclasses.replace(record, fields={**record.fields, "uuid": None}))
    assert t.guests_tracked == 0 and sum(t.snapshot().records.values()) == 1


def test_document_sorted_and_generated_at_from_clock() -> None:
    """Guests are listed by name; generated_at comes from the injected clock."""
    log, t = Log(), table()
    feed(t, log.start(uuid=UUID, vm="zeta"))
    feed(t, log.start(uuid=UUID2, vm="alpha"))
    doc = t.document()
    assert doc["generated_at"] == 1234.5
    assert [g["name"] for g in doc["guests"]] == ["alpha", "zeta"]
    assert "events" not in doc["guests"][0]


def test_snapshots_are_consistent_while_ingesting() -> None:
    """Readers in another thread always see whole guests, and never block the writer for long."""
    log, t = Log(), table()
    records = []
    for i in range(300):
        u = f"00000000-0000-0000-0000-{i:012d}"
        records += log.start(uuid=u, vm=f"g{i}", disks=("/d/a", "/d/b"))
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            for g in t.document()["guests"]:
                if g["state"] == "running" and g["disks"] != ["/d/a", "/d/b"]:
                    bad.append(g["uuid"])

    th = threading.Thread(target=reader)
    th.start()
    feed(t, records)
    stop.set()
    th.join()
    assert not bad
    assert t.guests_tracked == 300


def test_every_resource_form_on_one_guest() -> None:
    """Every VIRT_RESOURCE form changes the list its effect names, and only that."""
    log, t = Log(), table()
    records = [
        log.resource("dev", "start", 'bus=pci device="0000:03:00.0"'),
        log.resource("dev", "start", 'device="nobus"'),
        log.resource("dev", "start", "bus=usb device=?"),
        log.resource("hostdev", "start", 'chardev="/dev/ttyS0"', virt="lxc"),
        log.resource("hostdev", "start", 'old-hostdev="?" new-hostdev="/x"', virt="lxc"),
        log.resource("redir", "attach", 'old-redir="?" new-redir="usb:spice"'),
        log.resource("tpm-emulator", "start", 'device="/run/swtpm.sock"'),
        log.resource("tpm", "detach", 'device="/dev/tpm9"'),
        log.resource("ivshmem-socket", "start", "path=/run/ivshmem.sock"),
        log.resource("evdev", "start", "path=/dev/input/event1"),
        log.resource("evdev", "detach", "path=/dev/input/event1"),
        log.resource("iothread", "start", "old-iothread=0 new-iothread=4"),
        log.resource("mem", "update", "old-mem=65536 new-mem=?"),
        log.resource("vcpu", "update", "old-vcpu=2 new-vcpu=8"),
        log.resource("net", "attach", 'old-net="?" new-net="52:54:00:00:00:09"'),
        log.resource(
            "net", "open", "net=52:54:00:00:00:09 path=2F6465762F6E65742F74756E rdev=0A:C8"
        ),
        log.resource("net", "update", 'old-net="52:54:00:00:00:09" new-net="52:54:00:00:00:0a"'),
        log.resource("cgroup", "allow", 'cgroup="/x" class=path path="/dev/null" acl=rw'),
        log.resource("weird", "start", 'old-weird="?" new-weird="w"'),
        log.resource("disk", "detach", 'old-disk="/not/there" new-disk="?"'),
        log.resource("disk", "attach", 'old-disk="?" new-disk="/d/f"', res="failed"),
        log.rec("VIRT_RESOURCE", f'virt=kvm reason=start vm="web01" uuid={UUID}'),
        log.label("selinux", "a:b:c"),
        log.label("dac", "+1:+1"),
        log.label("selinux", "a:b:d"),
    ]
    feed(t, records)
    g = guest(t)
    assert g["hostdevs"] == ["chardev:/dev/ttyS0", "nobus", "pci:0000:03:00.0", "usb:spice"]
    assert g["tpms"] == ["/run/swtpm.sock"] and g["shmems"] == ["/run/ivshmem.sock"]
    assert g["inputs"] == [] and g["nics"] == ["52:54:00:00:00:0a"] and g["disks"] == []
    assert g["filesystems"] == g["chardevs"] == g["rngs"] == g["smartcards"] == []
    assert (g["memory_bytes"], g["vcpus"], g["iothreads"]) == (None, 8, 4)
    labels = [(s["model"], s["vm_ctx"]) for s in g["security"]]
    assert labels == [("dac", "+1:+1"), ("selinux", "a:b:d")]
    assert t.snapshot().unmatched_detaches == {"tpm": 1, "disk": 1}


def test_apply_many_equals_apply() -> None:
    """A batch applied under one lock gives exactly what one apply per record gives."""
    from monitord.audit.parser import StreamParser
    from monitord.commands.simulate import mixed_log

    records = StreamParser().feed(b"".join(mixed_log(3, 20_000)))
    assert len(records) > 500
    one, many = table(max_guests=8, max_events=7), table(max_guests=8, max_events=7)
    for r in records:
        one.apply(r)
    many.apply_many(records)
    assert many.to_json() == one.to_json()
    assert many.document() == one.document()
    assert many.snapshot() == one.snapshot()


def test_snapshot_rows_are_never_changed_afterwards() -> None:
    """A snapshot keeps what it saw: later records build new rows instead of editing old ones."""
    log, t = Log(), table()
    feed(t, log.start(disks=("/d/a",)))
    before = t.snapshot().guests[0]
    t.apply(log.disk("attach", new="/d/b"))
    t.apply(log.label("dac", "+1:+1"))
    assert before.disks == ("/d/a",) and before.security == ()
    after = t.snapshot().guests[0]
    assert after.disks == ("/d/a", "/d/b") and after.security == (("dac", "+1:+1", "+1:+1"),)
    assert t.snapshot().guests[0] is after  # unchanged guests reuse their row


def test_process_gone_is_set_for_the_current_run_only_and_cleared_by_lifecycle() -> None:
    """A gone process is recorded for the run that had that pid; the next lifecycle record
    clears it; a guest on another node is never checked."""
    log, t = Log(), table()
    feed(t, log.start())
    ((key, pid, started),) = t.running_processes()
    assert key == ("", UUID) and pid == 4242 and started == guest(t)["started_at"]
    assert not t.set_process_gone(key, 999, True)  # another run's pid
    assert t.set_process_gone(key, 4242, True) and guest(t)["process_gone"] is True
    t.apply(log.control("stop", "destroyed"))
    assert guest(t)["process_gone"] is False and t.running_processes() == []
    remote = parse_line(
        "node=hvB "
        + log.line("VIRT_CONTROL", f'virt=kvm op=start reason=booted vm="x" uuid={UUID2} vm-pid=5')
    )
    assert isinstance(remote, AuditRecord)
    t.apply(remote)
    assert t.running_processes() == []
