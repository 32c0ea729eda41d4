"""`Alert`: what a failed libvirt record turns into, as every sink sees it."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Literal

from monitord.audit.record import AuditRecord
from monitord.audit.types import VIRT_CONTROL, VIRT_MACHINE_ID, VIRT_RESOURCE
from monitord.state.effects import effect, subject

if TYPE_CHECKING:
    from monitord.config import Config

ALERT_NAME: Final = "VirtOperationFailed"
# A running guest whose process is gone (monitord/state/liveness.py).
PROCESS_GONE_NAME: Final = "VirtGuestProcessGone"

# (node, uuid, record type, op or resrc or model): one alert per host, guest and operation.
# node is the record's node= ("" for this host's own records): the same guest failing the
# same operation on two hosts (a migration) is two alerts.
AlertKey = tuple[str, str, str, str]
Status = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Where alerts come from ([identity]): the `host` label, static labels, generatorURL base."""

    host: str
    external_url: str
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> Identity:
        return cls(config.identity.host, config.external_url, config.identity.labels)


def clean(value: str) -> str:
    """Return valid UTF-8 text: names decoded with surrogateescape would break JSON and journald."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def rfc3339(seconds: float) -> str:
    """Return `2024-01-02T03:04:05.678Z` (Alertmanager's and the webhook's time format)."""
    whole = int(seconds)
    millis = int(round((seconds - whole) * 1000))
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def alert_key(record: AuditRecord) -> AlertKey:
    """Return the identity of the operation a record reports on (failed or not)."""
    f = record.fields
    if record.type_id == VIRT_CONTROL:
        what = f.get("op")
    elif record.type_id == VIRT_RESOURCE:
        what = f.get("resrc")
    elif record.type_id == VIRT_MACHINE_ID:
        what = f.get("model")
    else:
        what = f.get("op") or f.get("resrc")
    return (record.node or "", f.get("uuid") or "", record.type, what or "")


def process_gone_key(uuid: str) -> AlertKey:
    """The key of a guest's VirtGuestProcessGone alert (only this host's own guests)."""
    return ("", uuid, PROCESS_GONE_NAME, "")


def _device(record: AuditRecord) -> str | None:
    """Return the host path, device or amount a resource record names, if it has one."""
    return subject(effect(record))


# How the description says what a resource record's `reason` was doing.
_VERBS: Final = {
    "start": "set up (at guest start) the",
    "allow": "allow access to",
    "deny": "deny access to",
}


def _what_failed(record: AuditRecord, name: str) -> tuple[str, str]:
    """Return (summary, the first sentence of the description) of a failed record."""
    op, resrc, reason = record.op, record.resrc, record.reason
    if record.type_id == VIRT_CONTROL:
        if op == "start":
            return (
                f"Guest {name} failed to start",
                f"libvirt could not start guest {name} (reason={reason}).",
            )
        return (
            f"Guest {name}: operation {op} failed",
            f"libvirt reported a failed {op} of guest {name} (reason={reason}).",
        )
    if record.type_id == VIRT_MACHINE_ID:
        model = record.get("model")
        return (
            f"Guest {name}: {model} security labelling failed",
            f"libvirt could not apply the {model} security label of guest {name} "
            f"(vm-ctx={record.get('vm-ctx')}, img-ctx={record.get('img-ctx')}).",
        )
    if record.type_id == VIRT_RESOURCE:
        device = _device(record)
        on = f" {device}" if device else ""
        verb = _VERBS.get(reason or "", reason or "change")
        return (
            f"Guest {name}: {resrc} {reason} failed",
            f"libvirt could not {verb} {resrc}{on} for guest {name} (reason={reason}).",
        )
    return (f"Guest {name}: {record.type} failed", f"libvirt reported a failed {record.type}.")


def _hint(record: AuditRecord, name: str) -> str:
    if record.type_id == VIRT_CONTROL and record.op == "start":
        return (
            f"Check libvirtd's log (journalctl -u libvirtd) and /var/log/libvirt/qemu/{name}.log, "
            f"then `virsh start {name}`."
        )
    if record.type_id == VIRT_MACHINE_ID:
        return "Check the security driver (SELinux/AppArmor denials: ausearch -m AVC,APPARMOR)."
    return "Check libvirtd's log (journalctl -u libvirtd) around that time."


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert at one moment: firing (`ends_at` None) or resolved at `ends_at`."""

    key: AlertKey
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float
    generator_url: str
    serial: int
    ends_at: float | None = None

    @property
    def status(self) -> Status:
        return "firing" if self.ends_at is None else "resolved"

    @property
    def critical(self) -> bool:
        return self.labels.get("severity") == "critical"

    def resolved(self, at: float) -> Alert:
        """Return this alert resolved at `at` (never before it started)."""
        return replace(self, ends_at=max(at, self.starts_at))

    @classmethod
    def from_record(cls, record: AuditRecord, identity: Identity) -> Alert:
        """Build the firing alert for a failed libvirt record."""
        key = alert_key(record)
        node, uuid = key[0], key[1]
        name = clean(record.vm or uuid)
        host = clean(node) if node else identity.host
        labels: dict[str, str] = {
            "alertname": ALERT_NAME,
            "severity": "critical"
            if record.type_id == VIRT_CONTROL and record.op == "start"
            else "warning",
            "host": host,
            **dict(identity.labels),
        }
        optional = {
            "virt": record.virt,
            "domain": record.vm,
            "uuid": uuid,
            "record": record.type,
            # What the record is about: op for VIRT_CONTROL, resrc for VIRT_RESOURCE,
            # model for VIRT_MACHINE_ID (an extension: the contract names no label there).
            "op": record.op,
            "resrc": record.resrc,
            "model": record.get("model") if record.type_id == VIRT_MACHINE_ID else None,
            "reason": record.reason,
        }
        for label, value in optional.items():
            if value:
                labels[label] = clean(value)
        summary, first = _what_failed(record, name)
        by = f" by {clean(record.exe)}" if record.exe else ""
        description = (
            f"{clean(first)} UUID {clean(uuid)}; audit record {record.type} "
            f"serial {record.serial} at {rfc3339(record.time)} on {host}{by}. "
            f"{_hint(record, name)}"
        )
        return cls(
            key=key,
            labels=labels,
            annotations={"summary": clean(summary), "description": description},
            starts_at=record.time,
            generator_url=guest_url(identity.external_url, uuid, node),
            serial=record.serial,
        )

    @classmethod
    def process_gone(
        cls, uuid: str, name: str | None, virt: str | None, vm_pid: int, now: float,
        identity: Identity,
    ) -> Alert:  # fmt: skip
        """Build the firing alert for a running guest whose process no longer exists."""
        label = clean(name or uuid)
        labels = {
            "alertname": PROCESS_GONE_NAME,
            "severity": "warning",
            "host": identity.host,
            **dict(identity.labels),
            "uuid": clean(uuid),
        }
        if name:
            labels["domain"] = label
        if virt:
            labels["virt"] = clean(virt)
        description = (
            f"Guest {label} (UUID {clean(uuid)}) is running according to the audit log, but its "
            f"process {vm_pid} no longer exists on {identity.host}. Its QEMU most likely died "
            "while libvirtd was not running, which libvirt never audits. Check `virsh domstate "
            f"{label} --reason` and the guest's QEMU log, then start it again."
        )
        return cls(
            key=process_gone_key(uuid),
            labels=labels,
            annotations={
                "summary": f"Guest {label}: its process is gone",
                "description": description,
            },
            starts_at=now,
            generator_url=guest_url(identity.external_url, uuid, ""),
            serial=vm_pid,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "key": list(self.key),
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "generator_url": self.generator_url,
            "serial": self.serial,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Alert:
        k = [str(part) for part in doc["key"]]
        if len(k) == 3:  # saved before keys had a node: this host's own records
            k.insert(0, "")
        return cls(
            key=(k[0], k[1], k[2], k[3]),
            labels={str(a): str(b) for a, b in doc["labels"].items()},
            annotations={str(a): str(b) for a, b in doc["annotations"].items()},
            starts_at=float(doc["starts_at"]),
            generator_url=str(doc["generator_url"]),
            serial=int(doc["serial"]),
            ends_at=None if doc.get("ends_at") is None else float(doc["ends_at"]),
        )


def guest_url(external_url: str, uuid: str, node: str) -> str:
    """Return the API URL of a guest (generatorURL): `?node=` selects among a collector's."""
    url = f"{external_url.rstrip('/')}/api/v1/guests/{urllib.parse.quote(clean(uuid), safe='')}"
    return f"{url}?{urllib.parse.urlencode({'node': clean(node)})}" if node else url


def fingerprint(labels: Mapping[str, str]) -> str:
    """Return Alertmanager's fingerprint of a label set (FNV-1a 64 over sorted pairs)."""
    h = 0xCBF29CE484222325
    for name in sorted(labels):
        for part in (name.encode(), b"\xff", labels[name].encode(), b"\xff"):
            for byte in part:
                h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"
