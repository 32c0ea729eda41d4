"""The journal source against real journal files built by systemd-journal-remote.

Each audit.log line of the corpus is turned into the entry journald writes for
the same kernel record (tests/journalfiles.py); the journal source must give
exactly the records the file source gives for the audit.log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitord.audit.parser import ParseStats, parse_line
from monitord.audit.record import AuditRecord
from monitord.commands.simulate import mixed_log
from monitord.config import SourceConfig, StateConfig
from monitord.sources.file import FileSource
from monitord.sources.journal import JournalOpenError, JournalSource
from monitord.state.table import GuestTable
from tests.conftest import ROOT, SAMPLES, need_root, need_tool
from tests.journalfiles import (
    Fields,
    Host,
    audit_entry,
    journalctl_sample_to_audit_line,
    raw_line,
    syslog_entry,
    write_journal,
)
from tests.realstack import Auditd, auditd_lock, auditd_pid
from tests.waiting import wait_until as wait_for

UUID = "5b1e8f0c-3d44-4a55-9e0b-6c2f0a9d1e77"
UUID2 = "0f0e1d2c-3b4a-4596-a7b8-c9d0e1f2a3b4"
HEX_NAME = "7765622030312D74657374"  # "web 01-test"
TAIL = 'exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? res='
ENRICH = '\x1dUID="root" AUID="unset"'


def synthetic_lines() -> list[str]:
    """Lines that exercise hex names, quotes, node=, enrichment, unknown types and failures."""
    who = "pid=4321 uid=0 auid=4294967295 ses=4294967295"
    return [
        f"node=virthost type=VIRT_MACHINE_ID msg=audit(1700000200.001:900): {who} "
        f"msg='virt=kvm vm={HEX_NAME} uuid={UUID} vm-ctx=+64055:+64055 img-ctx=+64055:+64055 "
        f"model=dac {TAIL}success'{ENRICH}",
        f"type=VIRT_RESOURCE msg=audit(1700000200.007:901): {who} "
        f'msg=\'virt=kvm resrc=disk reason=start vm={HEX_NAME} uuid={UUID} old-disk="?" '
        f'new-disk="/var/lib/libvirt/images/web 01.qcow2" {TAIL}success\'',
        f"type=VIRT_RESOURCE msg=audit(1700000200.010:902): {who} "
        f"msg='virt=kvm resrc=mem reason=start vm={HEX_NAME} uuid={UUID} old-mem=0 "
        f"new-mem=65536 {TAIL}success'",
        f"type=VIRT_CONTROL msg=audit(1700000200.099:903): {who} subj=unconfined "
        f"msg='virt=kvm op=start reason=booted vm={HEX_NAME} uuid={UUID} vm-pid=5151 "
        f"{TAIL}success'{ENRICH}",
        f"type=UNKNOWN[2510] msg=audit(1700000201.500:904): {who} "
        f"msg='virt=kvm op=frobnicate vm=\"web02\" uuid={UUID2} {TAIL}success'",
        f"type=VIRT_RESOURCE msg=audit(1700000202.250:905): {who} "
        f'msg=\'virt=qemu resrc=net reason=attach vm="bob\'s=vm" uuid={UUID2} old-net="?" '
        f'new-net="52:54:00:aa:bb:cc" {TAIL}success\'',
        f"type=VIRT_CONTROL msg=audit(1700000203.000:906): {who} "
        f"msg='virt=kvm op=start reason=booted vm=\"web02\" uuid={UUID2} vm-pid=0 {TAIL}failed'",
        "type=USER_LOGIN msg=audit(1700000203.100:907): pid=811 uid=0 auid=1000 ses=3 "
        'msg=\'op=login id=1000 exe="/usr/sbin/sshd" hostname=10.0.0.2 addr=10.0.0.2 '
        "terminal=/dev/pts/1 res=success'",
        f"type=VIRT_CONTROL msg=audit(1700000204.000:908): {who} "
        f"msg='virt=kvm op=stop reason=destroyed vm={HEX_NAME} uuid={UUID} vm-pid=0 "
        f"{TAIL}success'{ENRICH}",
    ]


def sample_lines() -> list[str]:
    """The bundled real samples as audit.log lines (journalctl ones get a time and serial)."""
    lines: list[str] = []
    serial = 500
    for path in sorted(SAMPLES.glob("journald-*.txt")):
        for text in path.read_text().splitlines():
            if text.startswith("#") or not text.strip():
                continue
            lines.append(journalctl_sample_to_audit_line(text, 1700000100 + serial / 8, serial))
            serial += 1
    for name in ("auditlog-enriched-apparmor.log", "auditlog-docker-not-libvirt.log"):
        lines += [t for t in (SAMPLES / name).read_text().split("\n") if t.startswith("type=")]
    return lines


def corpus() -> list[str]:
    simulated = [b.decode().rstrip("\n") for b in mixed_log(seed=7, lines=1500, virt_fraction=0.25)]
    return sample_lines() + synthetic_lines() + simulated


def entries_for(lines: list[str], host: Host, noise_every: int = 3) -> Iterator[Fields]:
    """Audit entries for the lines, with non-audit entries in between (one mimics a VIRT line)."""
    for i, line in enumerate(lines):
        entry = audit_entry(line, host)
        yield entry
        if i % noise_every == 0:
            realtime = int(entry["__REALTIME_TIMESTAMP"]) + 10
            text = raw_line(line) if i % (noise_every * 2) == 0 else f"session {i} opened"
            yield syslog_entry(text, realtime, host)


def file_records(tmp: Path, lines: list[str]) -> tuple[list[AuditRecord], ParseStats]:
    """What the file source reads from an audit.log holding these lines."""
    log = tmp / "audit.log"
    log.write_text("".join(line + "\n" for line in lines))
    src = FileSource(SourceConfig(path=str(log), start="beginning"))
    src.open(None)
    try:
        return drain(src), src.counters.parse
    finally:
        src.close()


def journal_source(path: Path, **kw: object) -> tuple[JournalSource, ParseStats, Counter[str]]:
    config = SourceConfig(kind="journal", journal_dir=str(path), **kw)  # type: ignore[arg-type]
    src = JournalSource(config)
    return src, src.counters.parse, src.counters.reopens


def drain(src: FileSource | JournalSource, timeout: float = 10.0) -> list[AuditRecord]:
    """Poll until the source has read everything that was there at open."""
    got: list[AuditRecord] = []
    deadline = time.monotonic() + timeout
    while True:
        got.extend(src.poll(timeout=0))
        if src.caught_up:
            got.extend(src.poll(timeout=0))
            return got
        assert time.monotonic() < deadline, "source did not catch up"


def collect(src: JournalSource, want: int, timeout: float) -> list[AuditRecord]:
    got: list[AuditRecord] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got.extend(src.poll(timeout=max(0.0, deadline - time.monotonic())))
    return got


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    need_tool("systemd-journal-remote")
    tmp = tmp_path_factory.mktemp("journal")
    lines = corpus()
    (tmp / "j").mkdir()
    write_journal(tmp / "j" / "remote.journal", entries_for(lines, Host()))
    return tmp, lines


def test_records_equal_file_source_and_guest_state(built: tuple[Path, list[str]]) -> None:
    """Gives exactly the records, counts and guest state the file source gives for audit.log."""
    tmp, lines = built
    raw = [raw_line(line) for line in lines]  # the kernel's text: no node=, no enrichment
    expected, file_stats = file_records(tmp, raw)
    src, stats, _ = journal_source(tmp / "j")
    src.open(None)
    got = drain(src)
    src.close()
    assert len(expected) > 100
    assert got == expected
    assert stats.records == len(got) == file_stats.records
    assert stats.ignored["not_libvirt"] == file_stats.ignored["not_libvirt"] > 0
    assert stats.errors == Counter()
    # Non-VIRT and non-audit entries are filtered by the journal's index: never read.
    virt = [line for line in raw if _is_virt(line)]
    assert stats.lines == len(virt) < len(raw)
    assert stats.bytes == sum(len(line.encode()) + 1 for line in virt)

    now = 1800000000.0
    t_file, t_journal = GuestTable(StateConfig()), GuestTable(StateConfig())
    for record in expected:
        t_file.apply(record)
    for record in got:
        t_journal.apply(record)
    assert t_journal.document(now) == t_file.document(now)
    assert len(t_file.document(now)["guests"]) >= 5


def _is_virt(line: str) -> bool:
    return line.startswith(("type=VIRT_", "type=UNKNOWN[25"))


def test_only_node_and_enrichment_differ_from_enriched_log(built: tuple[Path, list[str]]) -> None:
    """Against the original log (node=, enrichment) records differ only in those two fields."""
    tmp, lines = built
    original = [r for r in map(parse_line, lines) if isinstance(r, AuditRecord)]
    src, _, _ = journal_source(tmp / "j")
    src.open(None)
    got = drain(src)
    src.close()
    stripped = [dataclasses.replace(r, node=None, enrichment={}) for r in original]
    assert got == stripped
    assert any(r.node == "virthost" for r in original)


def test_decodes_hex_names_unknown_types_and_millisecond_times(
    built: tuple[Path, list[str]],
) -> None:
    """Hex names, `bob's` quotes, AUDIT2510 entries (auditd: UNKNOWN[2510]) and .007 times."""
    tmp, _ = built
    src, _, _ = journal_source(tmp / "j")
    src.open(None)
    by_serial = {r.serial: r for r in drain(src)}
    src.close()
    disk = by_serial[901]
    assert disk.vm == "web 01-test"
    assert disk.time == 1700000200.007
    assert disk.get("new-disk") == "/var/lib/libvirt/images/web 01.qcow2"
    assert by_serial[904].type == "UNKNOWN[2510]" and by_serial[904].type_id == 2510
    assert by_serial[904].time == 1700000201.5
    assert by_serial[905].vm == "bob's=vm"
    assert by_serial[906].result == "failed"
    assert by_serial[903].subj == "unconfined" and by_serial[903].node is None
    export = subprocess.run(
        [need_tool("journalctl"), "--file", str(tmp / "j" / "remote.journal"), "-o", "export",
         "_AUDIT_ID=904"],
        capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    assert "\nMESSAGE=AUDIT2510 pid=4321 " in export
    assert "\n_AUDIT_TYPE_NAME=AUDIT2510\n" in export


def test_malformed_entries_are_counted_and_skipped(tmp_path: Path) -> None:
    """Audit entries with no msg=, no serial or no type name are parse errors; reading goes on."""
    host = Host()
    good = synthetic_lines()[3]
    bad_msg = audit_entry(good, host)
    bad_msg["MESSAGE"] = "VIRT_CONTROL pid=1 uid=0 virt=kvm"
    no_serial = audit_entry(good, host)
    del no_serial["_AUDIT_ID"]
    no_name = audit_entry(good, host)
    no_name["MESSAGE"] = "VIRT_CONTROL"
    unbalanced = audit_entry(good, host)
    unbalanced["MESSAGE"] = "VIRT_CONTROL pid=1 msg=virt=kvm uuid=x"
    write_journal(
        tmp_path / "bad.journal",
        [bad_msg, no_serial, no_name, unbalanced, audit_entry(good, host)],
    )
    seen: list[tuple[str, bytes]] = []
    config = SourceConfig(kind="journal", journal_dir=str(tmp_path / "bad.journal"))
    src = JournalSource(config, on_error=lambda e, raw: seen.append((e.reason, raw)))
    stats = src.counters.parse
    src.open(None)
    got = drain(src)
    src.close()
    assert [r.serial for r in got] == [903]
    assert stats.errors == Counter({"no_message": 3, "bad_timestamp": 1})
    assert [reason for reason, _ in seen] == [
        "no_message", "bad_timestamp", "no_message", "no_message",
    ]  # fmt: skip
    assert seen[0][1].startswith(b"type=VIRT_CONTROL msg=audit(1700000200.099:903): pid=1")
    assert stats.lines == 5


def test_resumes_strictly_after_the_checkpointed_cursor(built: tuple[Path, list[str]]) -> None:
    """A new source opened at position() reads exactly the rest: nothing lost or repeated."""
    tmp, _ = built
    whole, _, _ = journal_source(tmp / "j")
    whole.open(None)
    everything = drain(whole)
    whole.close()

    first, _, _ = journal_source(tmp / "j")
    first.max_entries_per_poll = 37
    first.open(None)
    head = first.poll(timeout=0) + first.poll(timeout=0)
    position = first.position()
    first.close()
    assert position is not None and isinstance(position["cursor"], str)
    assert 0 < len(head) < len(everything)

    second, _, reopens = journal_source(tmp / "j")
    second.open(position)
    rest = drain(second)
    assert head + rest == everything
    assert reopens == Counter()
    final = second.position()
    second.close()

    third, _, _ = journal_source(tmp / "j")
    third.open(final)
    assert drain(third) == []
    assert third.position() == final
    third.close()


def test_vacuumed_cursor_falls_back_to_oldest_and_is_counted(
    built: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """A cursor of an entry that is gone (another journal) restarts at the oldest entry, counted."""
    tmp, _ = built
    other = write_journal(
        tmp_path / "other.journal", [audit_entry(synthetic_lines()[2], Host())] * 3
    )
    reader, _, _ = journal_source(other)
    reader.open(None)
    drain(reader)
    foreign = reader.position()
    reader.close()

    for position in (foreign, {"cursor": "s=garbage"}):
        src, stats, reopens = journal_source(tmp / "j")
        src.open(position)
        got = drain(src)
        src.close()
        assert reopens == Counter({"cursor_lost": 1})
        assert got[0].serial == 500 and stats.records == len(got)


def test_start_modes_without_checkpoint(built: tuple[Path, list[str]]) -> None:
    """`end` skips what is there; `beginning` and `checkpoint` (none saved) read from the head."""
    tmp, _ = built
    counts = {}
    for start in ("end", "beginning", "checkpoint"):
        src, _, _ = journal_source(tmp / "j", start=start)
        src.open(None)
        if start == "end":
            assert src.caught_up
        counts[start] = len(drain(src))
        src.close()
    assert counts["end"] == 0
    assert counts["beginning"] == counts["checkpoint"] > 100


def _later_lines(first_serial: int, n: int) -> list[str]:
    return [
        f"type=VIRT_CONTROL msg=audit(1800000000.{i:03d}:{first_serial + i}): pid=7 uid=0 "
        f'auid=4294967295 ses=4294967295 msg=\'virt=kvm op=start reason=booted vm="late{i}" '
        f"uuid={UUID} vm-pid={100 + i} {TAIL}success'"
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("how", "existing"),
    [("new_file", "virt"), ("append", "virt"), ("append", "no_virt"), ("append", "none")],
)
def test_follow_returns_appended_entries_promptly(tmp_path: Path, how: str, existing: str) -> None:
    """Entries written while poll() waits wake it through the reader's fd, not a timeout.

    Also when no VIRT entry (or no entry at all) existed before: a tail with no
    matching entry must not skip the first appended ones.
    """
    host = Host()
    jdir = tmp_path / "j"
    jdir.mkdir()
    if existing == "virt":
        write_journal(jdir / "a.journal", entries_for(synthetic_lines(), host))
    elif existing == "no_virt":
        write_journal(jdir / "a.journal", [syslog_entry("boot", 1700000000000000, host)] * 3)
    src, _, _ = journal_source(jdir, start="end")
    src.open(None)
    assert src.poll(timeout=0) == []
    target = jdir / ("b.journal" if how == "new_file" else "a.journal")
    later = _later_lines(2000, 5)
    writer = threading.Thread(
        target=write_journal, args=(target, [audit_entry(line, host) for line in later])
    )
    started = time.monotonic()
    writer.start()
    got = collect(src, 5, timeout=30.0)
    elapsed = time.monotonic() - started
    writer.join()
    src.close()
    assert [r.serial for r in got] == [2000, 2001, 2002, 2003, 2004]
    assert elapsed < 5.0  # a 30 s poll returned as soon as the entries were written


def test_wake_fd_interrupts_the_wait(built: tuple[Path, list[str]]) -> None:
    """A readable wake fd ends poll() at once with no records."""
    tmp, _ = built
    src, _, _ = journal_source(tmp / "j", start="end")
    src.open(None)
    r, w = os.pipe()
    try:
        os.write(w, b"x")
        started = time.monotonic()
        assert src.poll(timeout=30.0, wake_fds=[r]) == []
        assert time.monotonic() - started < 2.0
    finally:
        os.close(r)
        os.close(w)
        src.close()


def test_missing_journal_dir_is_a_user_error(tmp_path: Path) -> None:
    """A journal directory that does not exist fails open() with a one-line UserError."""
    src, _, _ = journal_source(tmp_path / "nope")
    with pytest.raises(JournalOpenError, match=r"nope: cannot open: No such file"):
        src.open(None)
    assert not src.health().ok and "No such file" in src.health().reason


_HEALTH_PROBE = r"""
import sys
from monitord.config import SourceConfig
from monitord.sources.journal import JournalSource
src = JournalSource(SourceConfig(kind="journal", journal_dir=sys.argv[1] or None))
src.open(None)
print(src.health().ok, src.health().reason)
"""


def test_health_names_permission_problems(tmp_path: Path) -> None:
    """Unreadable journal files (user not in systemd-journal/adm) make health() say why."""
    need_root()
    setpriv = need_tool("setpriv")
    top = Path(os.environ.get("TMPDIR", "/tmp")) / f"monitord-jperm-{os.getpid()}"
    top.mkdir(mode=0o755)
    try:
        write_journal(top / "system.journal", [audit_entry(synthetic_lines()[1], Host())])
        (top / "system.journal").chmod(0o640)
        # Owned by another user: root without CAP_DAC_* (below) is refused like anyone else.
        os.chown(top / "system.journal", 65534, 65534)

        def probe(where: str) -> str:
            return subprocess.run(
                # Dropping the DAC capabilities (rather than switching to another user)
                # keeps the checkout and its venv readable wherever CI clones them.
                [setpriv, "--bounding-set=-dac_override,-dac_read_search",
                 sys.executable, "-c", _HEALTH_PROBE, where],
                capture_output=True, text=True, check=True, cwd=ROOT,
            ).stdout.strip()  # fmt: skip

        out = probe(str(top))
        assert out.startswith("False journal ") and "cannot read 1 journal file(s)" in out
        assert "systemd-journal or adm group" in out
        own, _, _ = journal_source(top)
        own.open(None)
        assert own.health().ok  # root reads it
        own.close()
    finally:
        for f in top.iterdir():
            f.unlink()
        top.rmdir()


def test_position_before_any_entry_resumes_from_the_head(tmp_path: Path) -> None:
    """A checkpoint taken before any entry existed reads everything written since."""
    jdir = tmp_path / "j"
    jdir.mkdir()
    write_journal(jdir / "a.journal", [syslog_entry("hello", 1700000000000000, Host())])
    src, _, _ = journal_source(jdir, start="end")
    src.open(None)
    assert src.poll(timeout=0) == []
    position = src.position()
    src.close()
    assert position == {"cursor": None}
    write_journal(jdir / "b.journal", [audit_entry(line, Host()) for line in _later_lines(10, 2)])
    again, _, reopens = journal_source(jdir)
    again.open(position)
    assert [r.serial for r in drain(again)] == [10, 11]
    assert reopens == Counter()
    again.close()


def test_live_journald_records_kernel_audit_and_source_follows(tmp_path: Path) -> None:
    """A real journald (private mount namespace) stores injected VIRT records; poll() wakes."""
    need_root()
    unshare = need_tool("unshare")
    journald = need_tool("systemd-journald")
    auditctl = need_tool("auditctl")
    need_tool("journalctl")
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"monitord-journald-{os.getpid()}"
    root.mkdir()
    script = (
        # The mount points made first where this machine has none yet (fresh install).
        "set -e; mkdir -p /run/systemd /run/log; mount -t tmpfs tmpfs /run/systemd; "
        "if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi; "
        f"mount --bind {root} /run/log; mkdir -p /run/systemd/journal; exec {journald}"
    )
    names = [f"live{i}" for i in range(3)]
    records = [
        ("VIRT_CONTROL", f'virt=kvm op=start reason=booted vm="{n}" uuid={UUID} vm-pid={7 + i}')
        for i, n in enumerate(names)
    ]
    with auditd_lock():
        if auditd_pid() != 0:
            pytest.fail(f"an auditd (pid {auditd_pid()}) is registered: journald would get nothing")
        # unshare and sh exec into journald: one process, stopped by its pid below.
        proc = subprocess.Popen(
            [unshare, "-m", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        src: JournalSource | None = None
        try:
            wait_for(lambda: any(root.glob("journal/*/system.journal")) or proc.poll() is not None)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            src, stats, _ = journal_source(root / "journal", start="end")
            src.open(None)
            assert src.health().ok, src.health().reason
            assert src.poll(timeout=0) == []
            # Without auditd the kernel drops user records while audit is disabled.
            subprocess.run([auditctl, "-e", "1"], capture_output=True, check=True)
            injector = threading.Thread(target=Auditd(tmp_path).inject, args=(records,))
            started = time.monotonic()
            injector.start()
            got = collect(src, 3, timeout=30.0)
            elapsed = time.monotonic() - started
            injector.join()
        finally:
            subprocess.run([auditctl, "-e", "0"], capture_output=True, check=False)
            if src is not None:
                src.close()
            proc.terminate()
            proc.wait(timeout=10)
            shutil.rmtree(root, ignore_errors=True)
    assert [r.vm for r in got] == names
    assert all(r.type == "VIRT_CONTROL" and r.uuid == UUID and r.node is None for r in got)
    assert all(r.exe is not None and r.exe.startswith("/usr/bin/python3") for r in got)
    assert [r.serial for r in got] == sorted(r.serial for r in got)
    assert round(got[0].time, 3) == got[0].time and abs(got[0].time - time.time()) < 60
    assert stats.errors == Counter()
    assert elapsed < 10.0  # woken by the journal's fd long before the 30 s poll timeout


@pytest.mark.slow
def test_daemon_sigkill_restart_resumes_at_cursor_with_exact_counts(tmp_path: Path) -> None:
    """`monitord run --source journal` SIGKILLed while journal files arrive: exact final counts."""
    need_tool("systemd-journal-remote")
    from tests.daemonproc import MonitordProcess, wait_until

    rng = random.Random(5)
    jdir = tmp_path / "journal"
    jdir.mkdir()
    lines = [b.decode().rstrip("\n") for b in mixed_log(seed=11, lines=16_000, virt_fraction=0.3)]
    config = tmp_path / "monitord.toml"
    config.write_text(
        f'[source]\nkind = "journal"\njournal_dir = "{jdir}"\n'
        '[state]\ncheckpoint_interval = "0.2s"\nforget_stopped_after = "36500d"\n'
        "[alerts]\njournal = false\n"
    )
    host = Host()
    done = threading.Event()

    def writer() -> None:
        for part, start in enumerate(range(0, len(lines), 2000)):
            batch = lines[start : start + 2000]
            write_journal(jdir / f"part{part}.journal", entries_for(batch, host))
            done.wait(0.05)
        done.set()

    state = tmp_path / "state"
    d = MonitordProcess(state, ["--config", str(config)])
    d.start()
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(4):
            done.wait(rng.uniform(0.2, 0.6))
            d.kill()
            d = MonitordProcess(state, ["--config", str(config)], port=d.port)
            d.start()
        thread.join()
        raw = [raw_line(line) for line in lines]
        virt = [line for line in raw if _is_virt(line)]
        try:
            wait_until(lambda: d.metric("monitord_lines_read_total") >= len(virt), timeout=60)
        except AssertionError:
            got = d.metric("monitord_lines_read_total")
            raise AssertionError(f"read {got} of {len(virt)}: {d.log()[-3000:]}") from None
        assert d.metric("monitord_lines_read_total") == len(virt)
        records = [r for r in map(parse_line, raw) if isinstance(r, AuditRecord)]
        assert d.metric("libvirt_audit_records_total") == len(records)
        table = GuestTable(StateConfig(forget_stopped_after=36500 * 86400.0))
        for record in records:
            table.apply(record)
        expected = json.loads(json.dumps(table.document(0.0)["guests"]))
        assert d.guests()["guests"] == expected
        assert d.stop() == 0
    finally:
        done.set()
        thread.join()
        d.kill()


def test_node_from_hostname_for_a_journal_remote_collector(tmp_path: Path) -> None:
    """With node_from_hostname, each entry's _HOSTNAME is its record's node: three hosts'
    journals (as systemd-journal-remote writes them) give three hosts' guests apart."""
    lines = synthetic_lines()
    jdir = tmp_path / "remote"
    jdir.mkdir()
    for name in ("hvA", "hvB", "hvC"):
        write_journal(jdir / f"remote-{name}.journal", entries_for(lines, Host(hostname=name)))
    src, stats, _ = journal_source(jdir, node_from_hostname=True)
    src.open(None)
    got = drain(src)
    src.close()
    assert {r.node for r in got} == {"hvA", "hvB", "hvC"}
    table = GuestTable(StateConfig(), host="collector")
    table.apply_many(got)
    docs = table.document(0.0)["guests"]
    per_node = {n: [g["uuid"] for g in docs if g["node"] == n] for n in ("hvA", "hvB", "hvC")}
    assert per_node["hvA"] and per_node["hvA"] == per_node["hvB"] == per_node["hvC"]
    assert all(g["host"] == g["node"] for g in docs)
    # Without the setting, the same entries are this host's own.
    src, _, _ = journal_source(jdir)
    src.open(None)
    assert {r.node for r in drain(src)} == {None}
    src.close()
