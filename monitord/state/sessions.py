"""Sessions: each run of a guest, start to stop, derived from its libvirt records (pure).

What auvirt printed before it left audit-userspace: one line per run of a
guest. A session has its start and stop (times and reasons), its duration,
the resources it started with (the `reason=start` records and security labels
libvirt wrote just before `op=start`), the device and size changes during it,
and the failed records in it. It is computed from any iterable of records in
log order, so the store's history and log files give the same sessions.

How a run ends (`end`):
- `stopped`: an `op=stop` record.
- `running`: no stop yet (the open session of a running guest).
- `no_record`: a new start arrived for a guest still running. libvirt writes no
  stop when QEMU dies while libvirtd is down (docs/FORMATS.md): the run ended
  at some point before the new start; `stop` is the latest it can have ended,
  the first record of the new start.
- `failed`: a start attempt that failed (`op=start res=failed`); it never ran.

A run whose start is older than the records (history pruned, a log that
begins mid-run) has `start = null`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from monitord.audit.record import AuditRecord, to_int
from monitord.audit.types import VIRT_CONTROL, VIRT_MACHINE_ID, VIRT_RESOURCE
from monitord.state.effects import AmountChange, DeviceChange, Label, Mention, effect
from monitord.state.guest import DEVICE_LISTS

# Resource records that are plumbing around a run's real changes: the tap opened for a
# NIC (`resrc=net reason=open`) and cgroup device ACLs.
_PLUMBING: Final = ("net", "cgroup")

GuestKey = tuple[str, str | None]  # (node or "", uuid)


@dataclass(slots=True)
class Session:
    """One run of one guest (see the module docstring for `end`)."""

    uuid: str | None
    node: str | None
    name: str | None
    virt: str | None
    start: float | None
    start_reason: str | None
    vm_pid: int | None
    stop: float | None = None
    stop_reason: str | None = None
    end: str = "running"
    resources: dict[str, Any] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    # The first record of the run (its start, or the oldest record seen of it).
    first: float = 0.0

    @property
    def duration(self) -> float | None:
        if self.start is None or self.stop is None:
            return None
        return max(0.0, self.stop - self.start)

    def overlaps(self, since: float | None, until: float | None) -> bool:
        """Tell whether the run was under way at some time in [since, until]."""
        began = self.start if self.start is not None else self.first
        if until is not None and began > until:
            return False
        return since is None or self.end == "running" or (self.stop or began) >= since

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "node": self.node,
            "name": self.name,
            "virt": self.virt,
            "start": self.start,
            "start_reason": self.start_reason,
            "vm_pid": self.vm_pid,
            "stop": self.stop,
            "stop_reason": self.stop_reason,
            "end": self.end,
            "duration": self.duration,
            "resources": self.resources,
            "changes": self.changes,
            "failures": self.failures,
        }


def _failure(r: AuditRecord) -> dict[str, Any]:
    f = r.fields
    return {"time": r.time, "type": r.type, "op": f.get("op"), "resrc": f.get("resrc"),
            "reason": f.get("reason")}  # fmt: skip


def _change(r: AuditRecord) -> dict[str, Any] | None:
    """A resource record during a run as a change (None: not a change worth listing)."""
    e = effect(r)
    f = r.fields
    resrc = f.get("resrc")
    old: Any = None
    new: Any = None
    if isinstance(e, DeviceChange):
        old, new = e.removed, e.added
    elif isinstance(e, Mention) and resrc in _PLUMBING:
        return None
    elif resrc is not None:  # amounts and forms this version does not know: as written
        old, new = f.get(f"old-{resrc}"), f.get(f"new-{resrc}")
    return {"time": r.time, "resrc": resrc, "reason": f.get("reason"),
            "result": r.result, "old": old, "new": new}  # fmt: skip


def _resources(start_set: list[AuditRecord]) -> dict[str, Any]:
    """The resources a run started with, from the records libvirt wrote before `op=start`
    (what monitord.state.effects says each does, as the guest table applies it)."""
    out: dict[str, Any] = {"vcpus": None, "iothreads": None, "memory_bytes": None}
    lists: dict[str, list[str]] = {name: [] for name in DEVICE_LISTS}
    labels: dict[str | None, tuple[str | None, str | None]] = {}
    for r in start_set:
        if not r.succeeded:
            continue
        e = effect(r)
        if isinstance(e, Label):
            labels[e.model] = (e.vm_ctx, e.img_ctx)
        elif isinstance(e, AmountChange):
            if e.new is not None:
                out[e.field] = e.new * e.unit
        elif isinstance(e, DeviceChange) and e.added is not None:
            lists[e.devices].append(e.added)
    for name in DEVICE_LISTS:
        out[name] = sorted(lists[name])
    out["security"] = [
        {"model": m, "vm_ctx": v, "img_ctx": i}
        for m, (v, i) in sorted(labels.items(), key=lambda kv: kv[0] or "")
    ]
    return out


class _Guest:
    __slots__ = ("current", "orphan", "start_failures", "start_set")

    def __init__(self) -> None:
        self.current: Session | None = None
        # A run whose start is not in the records: opened by its first record.
        self.orphan: Session | None = None
        # Records since the last lifecycle record: the next start's set.
        self.start_set: list[AuditRecord] = []
        self.start_failures: list[dict[str, Any]] = []


class SessionBuilder:
    """Feed records in log order; `finish()` returns every session, oldest first."""

    def __init__(self) -> None:
        self._guests: dict[GuestKey, _Guest] = {}
        self._done: list[Session] = []

    def feed_all(self, records: Iterable[AuditRecord]) -> SessionBuilder:
        for r in records:
            self.feed(r)
        return self

    def feed(self, r: AuditRecord) -> None:
        f = r.fields
        if "uuid" not in f:
            return
        key = (r.node or "", f.get("uuid"))
        g = self._guests.get(key)
        if g is None:
            g = self._guests[key] = _Guest()
        if r.type_id == VIRT_CONTROL:
            self._control(g, r)
        elif r.type_id == VIRT_RESOURCE:
            self._resource(g, r)
        elif r.type_id == VIRT_MACHINE_ID:
            g.start_set.append(r)
            if not r.succeeded:
                g.start_failures.append(_failure(r))
        elif not r.succeeded:
            self._running(g, r).failures.append(_failure(r))

    def _session(self, r: AuditRecord, start: float | None, reason: str | None) -> Session:
        f = r.fields
        return Session(
            uuid=f.get("uuid"), node=r.node, name=f.get("vm"), virt=f.get("virt"), start=start,
            start_reason=reason, vm_pid=None, first=r.time, resources=_resources([]),
        )  # fmt: skip

    def _running(self, g: _Guest, r: AuditRecord) -> Session:
        """The run a record belongs to: the open one, else one whose start is not known."""
        if g.current is not None:
            return g.current
        if g.orphan is None:
            g.orphan = self._session(r, None, None)
        return g.orphan

    def _close(self, s: Session, end: str, stop: float | None, reason: str | None) -> None:
        s.end, s.stop, s.stop_reason = end, stop, reason
        self._done.append(s)

    def _control(self, g: _Guest, r: AuditRecord) -> None:
        f = r.fields
        op = f.get("op")
        ok = r.succeeded
        if op == "start" or (op == "init" and ok and g.current is None):
            if not ok:
                if g.current is not None:
                    g.current.failures.append(_failure(r))
                else:
                    s = self._session(r, r.time, f.get("reason"))
                    s.first = g.start_set[0].time if g.start_set else r.time
                    s.resources = _resources(g.start_set)
                    s.failures = [*g.start_failures, _failure(r)]
                    self._close(s, "failed", None, None)
                g.start_set, g.start_failures = [], []
                return
            earliest = g.start_set[0].time if g.start_set else r.time
            for old in (g.current, g.orphan):
                if old is not None:
                    self._close(old, "no_record", earliest, None)
            g.orphan = None
            s = self._session(r, r.time, f.get("reason"))
            s.first = earliest
            pid = to_int(f.get("vm-pid"))
            s.vm_pid = pid if pid else None
            s.resources = _resources(g.start_set)
            s.failures = list(g.start_failures)
            g.current = s
            g.start_set, g.start_failures = [], []
        elif op == "stop":
            run = self._running(g, r)
            if not ok:
                run.failures.append(_failure(r))
                return
            self._close(run, "stopped", r.time, f.get("reason"))
            g.current = g.orphan = None
            g.start_set, g.start_failures = [], []
        elif not ok:
            self._running(g, r).failures.append(_failure(r))

    def _resource(self, g: _Guest, r: AuditRecord) -> None:
        f = r.fields
        reason = f.get("reason")
        if f.get("resrc") == "cgroup":
            return
        if reason == "start":
            g.start_set.append(r)
            if not r.succeeded:
                g.start_failures.append(_failure(r))
            return
        run = self._running(g, r)
        if not r.succeeded:
            run.failures.append(_failure(r))
        change = _change(r)
        if change is not None:
            run.changes.append(change)

    def finish(self) -> list[Session]:
        """Every session, open ones included, by when each began (oldest first)."""
        out = list(self._done)
        for g in self._guests.values():
            for s in (g.orphan, g.current):
                if s is not None:
                    out.append(s)
        out.sort(key=lambda s: (s.first, s.start if s.start is not None else s.first))
        return out


def sessions(records: Iterable[AuditRecord]) -> list[Session]:
    """The sessions of every guest in `records` (log order), oldest first."""
    return SessionBuilder().feed_all(records).finish()
