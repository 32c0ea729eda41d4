"""`monitord replay` (golden documents) and `monitord status` against a real listener."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from monitord.commands import guesttable
from monitord.commands.cli import main
from monitord.commands.inputs import open_all
from monitord.commands.replay import replay
from monitord.config import BasicAuthUser, HttpConfig, StateConfig
from monitord.serve.exporter import make_registry
from monitord.serve.server import WebServer
from monitord.state.table import GuestTable
from tests.conftest import DATA, SAMPLES
from tests.serve.tlsfiles import TlsFiles, make_tls_files

GOLDEN = DATA / "state"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

# Every sample log with libvirt records that replay must turn into a stable document.
LOGS = sorted({*SAMPLES.glob("auditlog-*.log"), *DATA.glob("*/*.log")}, key=str)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def this_host_neutral(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with this machine's name (the `host` of its own guests) as `HOST`."""
    for g in doc["guests"]:
        if g["node"] is None:
            assert g["host"] == socket.gethostname()
            g["host"] = "HOST"
    return doc


def golden_path(log: Path) -> Path:
    return GOLDEN / f"{log.parent.name}--{log.stem}.json"


@pytest.mark.parametrize("log", LOGS, ids=lambda p: p.name)
def test_replay_json_equals_golden(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`monitord replay --json LOG` equals the stored document (UPDATE_GOLDEN=1 rewrites it)."""
    code, out, _ = run_cli(capsys, "replay", "--json", str(log))
    assert code == 0
    doc = this_host_neutral(json.loads(out))
    assert isinstance(doc.pop("generated_at"), float)
    path = golden_path(log)
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"no golden file {path.name}: run with UPDATE_GOLDEN=1")
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    assert doc == json.loads(path.read_text())


def test_lifecycle_golden_says_what_happened() -> None:
    """Spot checks on the golden document so a wrong regeneration is caught."""
    doc = json.loads(golden_path(GOLDEN / "lifecycle.log").read_text())
    by_name = {g["name"]: g for g in doc["guests"]}
    assert set(by_name) == {"web01", "db 01", "broken", "ct01"}
    web = by_name["web01"]
    assert web["state"] == "stopped" and web["last_reason"] == "shutdown"
    assert web["hostdevs"] == ["usb:USB redirdev"] and web["memory_bytes"] == 3 * 1024**3
    assert web["disks"] == [  # two attach records of one path: listed twice (a multiset)
        "/srv/iso/debian-12.iso",
        "/var/lib/libvirt/images/web01-extra.qcow2",
        "/var/lib/libvirt/images/web01-extra.qcow2",
        "/var/lib/libvirt/images/web01.qcow2",
    ]
    db = by_name["db 01"]
    assert db["state"] == "running" and db["nics"] == ["52:54:00:01:02:04"] and db["vcpus"] == 2
    broken = by_name["broken"]
    assert broken["state"] == "unknown" and broken["failures"] == 2
    assert by_name["ct01"]["hostdevs"] == ["chardev:/dev/ttyS1", "disk:/dev/sdb"]


def test_replay_several_files_in_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A log split in two files (oldest first) replays to the same document as the whole."""
    lines = (GOLDEN / "lifecycle.log").read_bytes().splitlines(keepends=True)
    # Cut in the middle of a line: each file's partial line is its own (rotation never splits).
    first, second = tmp_path / "audit.log.1", tmp_path / "audit.log"
    first.write_bytes(b"".join(lines[:30]))
    second.write_bytes(b"".join(lines[30:]))
    _, whole, _ = run_cli(capsys, "replay", "--json", str(GOLDEN / "lifecycle.log"))
    _, split, _ = run_cli(capsys, "replay", "--json", str(first), str(second))
    a, b = json.loads(whole), json.loads(split)
    a.pop("generated_at")
    b.pop("generated_at")
    assert a == b


def test_replay_table(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json, replay prints a readable table with one row per guest and a summary."""
    code, out, _ = run_cli(capsys, "replay", str(GOLDEN / "lifecycle.log"))
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split()[:3] == ["NAME", "STATE", "VCPUS"]
    assert any(r.startswith("web01") and "stopped" in r and "3 GiB" in r for r in rows)
    assert any(r.startswith("broken") and "start/booted (failed)" in r for r in rows)
    assert rows[-1].startswith("4 guests: 2 running, 1 stopped, 1 unknown")


def test_replay_unreadable_file_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreadable input fails before any output: exit 2, one line on stderr."""
    code, out, err = run_cli(
        capsys, "replay", str(GOLDEN / "lifecycle.log"), str(tmp_path / "missing.log")
    )
    assert code == 2 and out == ""
    assert (
        err.strip()
        == f"monitord: cannot read {tmp_path / 'missing.log'}: No such file or directory"
    )
    code, out, err = run_cli(capsys, "replay", str(tmp_path))
    assert code == 2 and "is a directory" in err


def test_replay_counts_malformed_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed VIRT lines are skipped and reported with a count on stderr; exit stays 0."""
    bad = tmp_path / "bad.log"
    bad.write_bytes(
        (GOLDEN / "lifecycle.log").read_bytes() + b"type=VIRT_CONTROL msg=audit(oops): x\n"
    )
    code, out, err = run_cli(capsys, "replay", "--json", str(bad))
    assert code == 0 and len(json.loads(out)["guests"]) == 4
    assert "1 malformed line(s) skipped (bad_timestamp=1)" in err


def served(doc_table: GuestTable) -> WebServer:
    web = WebServer(
        HttpConfig(listen="127.0.0.1:0"),
        make_registry(doc_table, "t"),
        doc_table,
        lambda: (True, ""),
    )
    web.start()
    return web


def replayed() -> GuestTable:
    table = GuestTable(StateConfig())
    replay(open_all([str(GOLDEN / "lifecycle.log")]), table)
    return table


def test_status_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    """`monitord status` prints the running daemon's table; --json its exact document."""
    table = replayed()
    web = served(table)
    try:
        code, out, _ = run_cli(capsys, "status", "--url", web.url)
        assert code == 0
        assert out == guesttable.render(table.document()["guests"])
        code, out, _ = run_cli(capsys, "status", "--json", "--url", web.url.removeprefix("http://"))
        doc: dict[str, Any] = json.loads(out)
        expected = table.document()
        doc.pop("generated_at")
        expected.pop("generated_at")
        assert doc == expected
    finally:
        web.stop()


def test_status_cannot_connect(capsys: pytest.CaptureFixture[str]) -> None:
    """With nothing listening, status exits 1 with one line asking whether monitord runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        code, out, err = run_cli(capsys, "status", "--url", f"http://127.0.0.1:{port}")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "is monitord running?" in err
    assert f"http://127.0.0.1:{port}" in err


def test_status_wrong_peer(capsys: pytest.CaptureFixture[str]) -> None:
    """A listener that is not monitord (404 on the API) is a clear runtime failure."""
    table = replayed()
    web = served(table)
    try:
        code, _, err = run_cli(capsys, "status", "--url", web.url + "/prefix")
        assert code == 1 and "HTTP 404" in err and "no such path" in err  # the daemon's reason
    finally:
        web.stop()


def test_status_and_history_bad_url_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A --url that is no URL is a user error (exit 2, one line) for status as for history."""
    for command in ("status", "history"):
        code, out, err = run_cli(capsys, command, "--url", "http://[not-an-address")
        assert code == 2 and out == "" and err.count("\n") == 1 and "bad URL" in err, command


def _tricky_log(path: Path) -> None:
    """A mixed log with what a cut could get wrong: long lines, malformed lines, expiry."""
    from monitord.commands.simulate import mixed_log

    lines = list(mixed_log(11, 60_000))
    long = b"type=SYSCALL msg=audit(1.000:1): " + b"x" * 200_000 + b"\n"
    bad = b"type=VIRT_CONTROL msg=audit(oops): x\n"
    for i in range(0, len(lines), 1500):
        lines.insert(i, long if i % 3000 == 0 else bad)
    path.write_bytes(b"".join(lines).rstrip(b"\n"))  # and no newline at the end


def test_replay_tricky_log_counts_and_expires(tmp_path: Path) -> None:
    """Long lines, malformed records and a last line without newline: counted, and expiry
    by record time still bounds the table."""
    log = tmp_path / "audit.log"
    _tricky_log(log)
    table = GuestTable(StateConfig(forget_stopped_after=5.0, max_guests=6, max_events=5))
    stats = replay(open_all([str(log)]), table).to_json()
    # An over-long line is an error only where it had to be held across reads.
    assert stats["errors"]["bad_timestamp"] == 20 and stats["errors"]["line_too_long"] >= 1
    assert stats["records"] and table.guests_tracked <= 6 and table.evicted


def test_table_shows_host_column_for_several_hosts() -> None:
    """A central collector's table names each guest's host; one host's table does not."""
    one = {"uuid": "u1", "name": "a", "state": "running", "host": "hv1", "failures": 0}
    two = {**one, "uuid": "u2", "host": "hv2"}
    assert "HOST" not in guesttable.render([one])
    text = guesttable.render([one, two])
    assert text.splitlines()[0].split()[:3] == ["NAME", "HOST", "STATE"]
    assert "hv2" in text


def secured_server(table: GuestTable, tls: TlsFiles, password: str) -> WebServer:
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = WebServer(
        HttpConfig(
            listen="127.0.0.1:0", tls_cert=str(tls.server_cert), tls_key=str(tls.server_key),
            client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(tls.ca),
            basic_auth_users=(BasicAuthUser("ops", hashed),),
        ),
        make_registry(table, "t"), table, lambda: (True, ""),
    )  # fmt: skip
    web.start()
    return web


def test_status_against_a_secured_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --ca-file, --cert/--key, --user and --password-file, status reads a daemon that
    wants TLS, a client certificate and basic auth; each missing piece is a one-line error
    that says which flag to give."""
    tls = make_tls_files(tmp_path / "tls")
    (tmp_path / "password").write_text("hunter2\n")
    table = replayed()
    web = secured_server(table, tls, "hunter2")
    full = ["status", "--url", web.url, "--ca-file", str(tls.ca), "--cert", str(tls.client_cert),
            "--key", str(tls.client_key), "--user", "ops",
            "--password-file", str(tmp_path / "password")]  # fmt: skip
    try:
        code, out, _ = run_cli(capsys, *full)
        assert code == 0 and out == guesttable.render(table.document()["guests"])
        code, out, err = run_cli(capsys, "status", "--url", web.url)
        assert code == 1 and out == "" and "--ca-file" in err and err.count("\n") == 1
        code, _, err = run_cli(capsys, *full[:5])  # no client certificate
        assert code == 1 and "--cert" in err and err.count("\n") == 1
        code, _, err = run_cli(capsys, *full[:9])  # no basic auth
        assert code == 1 and "HTTP 401" in err and "--password-file" in err
        (tmp_path / "wrong").write_text("nope\n")
        code, _, err = run_cli(capsys, *full[:-1], str(tmp_path / "wrong"))
        assert code == 1 and "HTTP 401" in err
    finally:
        web.stop()


def test_status_flag_errors_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Flags that cannot work together, or files that cannot be read, are user errors:
    exit 2 with one line, before any connection."""
    url = ["status", "--url", "https://127.0.0.1:1"]
    cases = [
        (["--key", "k.pem"], "--key needs --cert"),
        (["--user", "ops"], "--user and --password-file go together"),
        (["--user", "ops", "--password-file", str(tmp_path / "none")], "cannot read"),
        (["--ca-file", str(tmp_path / "none")], "cannot use --ca-file"),
        (["--cert", str(tmp_path / "none")], "cannot use --cert"),
    ]
    for flags, message in cases:
        code, out, err = run_cli(capsys, *url, *flags)
        assert code == 2 and out == "" and message in err and err.count("\n") == 1, err


def test_status_and_replay_show_hostile_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A guest named by bytes that are not UTF-8 (vm=FFFE) is shown as \\xff\\xfe by replay
    and status, in the table and in --json (valid UTF-8, no \\udcff escapes)."""
    line = (
        "type=VIRT_CONTROL msg=audit(1700000000.000:1): pid=1 uid=0 auid=4294967295 "
        "ses=4294967295 msg='virt=kvm op=start reason=booted vm=FFFE "
        'uuid=00000000-0000-0000-0000-000000000001 vm-pid=1 exe="/usr/sbin/libvirtd" '
        "hostname=? addr=? terminal=? res=success'\n"
    )
    log = tmp_path / "audit.log"
    log.write_text(line)
    code, out, _ = run_cli(capsys, "replay", "--json", str(log))
    assert code == 0 and json.loads(out)["guests"][0]["name"] == "\\xff\\xfe"
    assert "\\udcff" not in out
    code, out, _ = run_cli(capsys, "replay", str(log))
    assert code == 0 and out.startswith("NAME") and "\\xff\\xfe" in out
    out.encode("utf-8")
    table = GuestTable(StateConfig())
    replay(open_all([str(log)]), table)
    web = served(table)
    try:
        code, out, _ = run_cli(capsys, "status", "--json", "--url", web.url)
        assert code == 0 and json.loads(out)["guests"][0]["name"] == "\\xff\\xfe"
        code, out, _ = run_cli(capsys, "status", "--url", web.url)
        assert code == 0 and "\\xff\\xfe" in out
    finally:
        web.stop()
