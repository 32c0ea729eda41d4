"""Build real journal files for tests: audit.log lines -> journald's audit entries -> journal.

`audit_entry` turns an audit.log line into the fields journald writes when it
reads the same record from the kernel (systemd `src/journal/journald-audit.c`,
`process_audit_string` and `map_all_fields`), and `write_journal` feeds entries
in the journal export format to the real `systemd-journal-remote`.
"""

from __future__ import annotations

import re
import subprocess
import uuid as uuidlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from monitord.audit.types import VIRT_TYPES
from tests.conftest import need_tool

Fields = dict[str, str | bytes]

_HEADER: Final = re.compile(r"(?:node=\S* )?type=(\S+) msg=audit\((\d+)\.(\d+):(\d+)\): ?")
_UNKNOWN: Final = re.compile(r"UNKNOWN\[(\d+)\]\Z")
# Names journald knows besides the VIRT ones (used by the non-VIRT entries of the tests).
OTHER_TYPES: Final = {
    "LOGIN": 1006,
    "USER_AUTH": 1100,
    "USER_ACCT": 1101,
    "CRED_ACQ": 1103,
    "USER_START": 1105,
    "USER_END": 1106,
    "CRED_DISP": 1104,
    "CRED_REFR": 1110,
    "USER_CMD": 1123,
    "USER_LOGIN": 1112,
    "SERVICE_START": 1130,
    "SERVICE_STOP": 1131,
    "SYSCALL": 1300,
    "PATH": 1302,
    "CWD": 1307,
    "EXECVE": 1309,
    "PROCTITLE": 1327,
    "BPF": 1334,
    "ANOM_PROMISCUOUS": 1700,
}
NAMES: Final = {**{v: k for k, v in VIRT_TYPES.items()}, **OTHER_TYPES}

# journald-audit.c map_fields_kernel: audit fields before msg=' that get native names.
_KERNEL_FIELDS: Final = {
    "pid": "_PID",
    "uid": "_UID",
    "ses": "_AUDIT_SESSION",
    "auid": "_AUDIT_LOGINUID",
    "subj": "_SELINUX_CONTEXT",
}
# ... and map_fields_userspace: string fields inside msg='...' that are unescaped.
_USER_STRING_FIELDS: Final = {"exe", "cmd", "acct", "cwd", "comm"}


def journald_type_name(type_id: int) -> str:
    """The name journald gives a type (`audit_type_name_alloca`: AUDIT%04i when unknown)."""
    for name, num in NAMES.items():
        if num == type_id:
            return name
    return f"AUDIT{type_id:04d}"


def _type_id(name: str) -> int:
    m = _UNKNOWN.match(name)
    return int(m.group(1)) if m else NAMES[name]


def _unescape(value: str) -> str | None:
    """journald's map_string_field: quoted -> content, hex -> bytes; anything else unmapped."""
    if value.startswith('"'):
        end = value.find('"', 1)
        return value[1:end] if end > 0 else None
    try:
        return bytes.fromhex(value).decode("utf-8", "replace")
    except ValueError:
        return None


def _map_fields(text: str, fields: Fields) -> None:
    """A small model of journald's map_all_fields (enough for tests to carry the same fields)."""
    start = text.find("msg='")
    kernel, inner = (text, "") if start < 0 else (text[:start], text[start + 5 : text.rfind("'")])
    for token in kernel.split():
        key, _, value = token.partition("=")
        if key in _KERNEL_FIELDS:
            fields.setdefault(_KERNEL_FIELDS[key], value)
        elif key and len(key) < 16:
            fields.setdefault("_AUDIT_FIELD_" + key.upper().replace("-", "_"), value)
    for token in inner.split():
        key, sep, value = token.partition("=")
        if not sep or not key or len(key) >= 16:
            continue
        name = "AUDIT_FIELD_" + key.upper().replace("-", "_")
        if key in _USER_STRING_FIELDS:
            decoded = _unescape(value)
            if decoded is not None:
                fields.setdefault(name, decoded)
            continue
        fields.setdefault(name, value)


@dataclass
class Host:
    """The identity fields journald adds to every entry, and its clocks."""

    boot_id: str = field(default_factory=lambda: uuidlib.uuid4().hex)
    machine_id: str = field(default_factory=lambda: uuidlib.uuid4().hex)
    hostname: str = "virthost"
    monotonic: int = 5_000_000
    # journald receives a record a little after its audit time.
    receive_delay_usec: int = 137

    def base(self, realtime: int) -> Fields:
        self.monotonic += 1000
        return {
            "__REALTIME_TIMESTAMP": str(realtime),
            "__MONOTONIC_TIMESTAMP": str(self.monotonic),
            "_BOOT_ID": self.boot_id,
            "_MACHINE_ID": self.machine_id,
            "_HOSTNAME": self.hostname,
        }


def raw_line(line: str) -> str:
    """The kernel's text of an audit.log line: no node= prefix, no enrichment."""
    line = line.rstrip("\n")
    line = line.split("\x1d", 1)[0]
    return re.sub(r"^node=\S* ", "", line)


def audit_entry(line: str, host: Host) -> Fields:
    """The journal entry journald writes for the audit record of this audit.log line."""
    text = raw_line(line)
    m = _HEADER.match(text)
    if m is None:
        raise ValueError(f"not an audit line: {line[:80]}")
    tname, sec, msec, serial = m.groups()
    type_id = _type_id(tname)
    body = text[m.end() :]
    source = int(sec) * 1_000_000 + int(msec) * 1000
    name = journald_type_name(type_id)
    fields = host.base(source + host.receive_delay_usec)
    fields.update(
        {
            "_TRANSPORT": "audit",
            "_SOURCE_REALTIME_TIMESTAMP": str(source),
            "_AUDIT_TYPE": str(type_id),
            "_AUDIT_ID": serial,
            "SYSLOG_FACILITY": "4",
            "SYSLOG_IDENTIFIER": "audit",
            "_AUDIT_TYPE_NAME": name,
            "MESSAGE": f"{name} {body}",
        }
    )
    _map_fields(body, fields)
    fields.setdefault("PRIORITY", "5")
    return fields


def syslog_entry(message: str, realtime: int, host: Host, identifier: str = "sshd") -> Fields:
    """An ordinary (non-audit) journal entry."""
    fields = host.base(realtime)
    fields.update(
        {
            "_TRANSPORT": "syslog",
            "SYSLOG_IDENTIFIER": identifier,
            "SYSLOG_FACILITY": "10",
            "PRIORITY": "6",
            "_PID": "811",
            "_UID": "0",
            "MESSAGE": message,
        }
    )
    return fields


def export_entry(fields: Mapping[str, str | bytes]) -> bytes:
    """One entry in the journal export format (binary form for values with a newline)."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    out += b"\n"
    return bytes(out)


def export_stream(entries: Iterable[Mapping[str, str | bytes]]) -> Iterator[bytes]:
    for fields in entries:
        yield export_entry(fields)


def write_journal(path: Path, entries: Iterable[Mapping[str, str | bytes]]) -> Path:
    """Write entries into a real journal file with systemd-journal-remote; return its path."""
    binary = need_tool("systemd-journal-remote")
    if path.suffix != ".journal":
        raise ValueError("systemd-journal-remote wants a *.journal output name")
    with subprocess.Popen(
        [binary, f"--output={path}", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        for chunk in export_stream(entries):
            proc.stdin.write(chunk)
        proc.stdin.close()
        err = proc.stderr.read()
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"systemd-journal-remote failed ({rc}): {err.decode()[-2000:]}")
    return path


JOURNALD_SAMPLE: Final = re.compile(r"^.*? audit\[(\d+)\]: (\S+) (.*)$")


def journalctl_sample_to_audit_line(line: str, time: float, serial: int) -> str:
    """`... audit[PID]: VIRT_RESOURCE pid=... msg='...'` (journalctl output) -> audit.log line."""
    m = JOURNALD_SAMPLE.match(line.rstrip("\n"))
    if m is None:
        raise ValueError(f"not a journalctl audit line: {line[:80]}")
    _pid, name, body = m.groups()
    return f"type={name} msg=audit({time:.3f}:{serial}): {body}"


# The start of a `sh -c` script run under `unshare -m --propagation private`: a private,
# empty journald (tmpfs over its directories, made first where this machine has none yet,
# as on a fresh install before systemd ever ran) as $J, stopped when the script exits.
PRIVATE_JOURNALD = r"""
set -e
mkdir -p /run/systemd /run/log
mount -t tmpfs tmpfs /run/systemd
mount -t tmpfs tmpfs /run/log
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
mkdir -p /run/systemd/journal
"$JOURNALD" & J=$!
trap 'kill $J; wait $J 2>/dev/null || true' EXIT
i=0; while [ ! -S /run/systemd/journal/socket ]; do
  i=$((i+1)); [ $i -lt 500 ] || { echo "journald did not start" >&2; exit 1; }; sleep 0.01
done
"""
