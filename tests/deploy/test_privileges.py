"""The auditd plugin drops root: started as root, it runs on as [plugin] user with no capability."""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitord.config import Config, PluginConfig, SourceConfig, load_config, parse_config
from monitord.errors import RuntimeFailure
from monitord.privileges import (
    drop_plugin_privileges,
    hand_over_state_dir,
    plugin_serves_http,
    resolve,
)
from tests.conftest import ROOT, need_root
from tests.daemonproc import MonitordProcess, free_port, monitord_cmd, wait_until
from tests.realstack import running_auditd

UUID = "0d3b2c1e-5f4a-4b7c-9d8e-1f2a3b4c5d6e"
USER = "nobody"  # every Debian system has it; its primary group is nogroup
RECORD = (
    "type=VIRT_CONTROL msg=audit(1700000000.{n:03d}:{n}): pid=1 uid=0 auid=4294967295 "
    'ses=4294967295 msg=\'virt=kvm op=start reason=booted vm="web01" uuid=' + UUID + " "
    'vm-pid=4242 exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? res=success\'\n'
)


def status_of(pid: int) -> list[dict[str, str]]:
    """/proc/PID/task/*/status of every thread, as key -> value."""
    threads = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        text = (task / "status").read_text()
        threads.append(dict(re.findall(r"(?m)^(\w+):\s*(.*)$", text)))
    return threads


def assert_unprivileged(pid: int, uid: int, gid: int) -> None:
    threads = status_of(pid)
    assert len(threads) >= 2  # the stdin reader and the HTTP server run in threads of their own
    for status in threads:
        assert status["Uid"].split() == [str(uid)] * 4, status
        assert status["Gid"].split() == [str(gid)] * 4, status
        assert status["Groups"].split() == [str(g) for g in os.getgrouplist(USER, gid)], status
        for key in ("CapEff", "CapPrm", "CapAmb", "CapInh"):
            assert int(status[key], 16) == 0, (key, status)
    assert threads[0]["NoNewPrivs"] == "1"  # the main thread; later threads inherit it


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory the dropped user can reach (pytest's tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="monitord-priv-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def privileged_port() -> int:
    """A free TCP port below 1024: only root may bind it."""
    for port in range(980, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.fail("no free port between 980 and 999")


def plugin_config(where: Path, extra: str = "") -> Path:
    config = where / "monitord.toml"
    config.write_text(f'[plugin]\nuser = "{USER}"\n{extra}[alerts]\njournal = false\n')
    config.chmod(0o644)
    return config


def test_plugin_becomes_the_user_and_keeps_no_capability(world_dir: Path) -> None:
    """As root: binds a port below 1024, takes over a root-owned state dir, then runs as nobody."""
    need_root()
    state = world_dir / "state"
    state.mkdir()
    old = state / "left-by-root"
    old.write_text("{}")
    old.chmod(0o600)
    (state / "sub").mkdir()  # not followed: only the directory and its plain files change hands
    port = privileged_port()
    r, w = os.pipe()
    d = MonitordProcess(
        state, ["--config", str(plugin_config(world_dir)), "--source", "audisp"], port, stdin=r
    )
    try:
        d.start()
        os.close(r)
        os.write(w, "".join(RECORD.format(n=n) for n in range(5)).encode())
        wait_until(lambda: d.metric("libvirt_audit_records_total") == 5)
        assert d.proc is not None
        nobody = pwd.getpwnam(USER)
        assert_unprivileged(d.proc.pid, nobody.pw_uid, nobody.pw_gid)
        assert "plugin: now user nobody" in d.log()
    finally:
        os.close(w)  # EOF: the plugin stops by itself and writes its state as nobody
    assert d.proc is not None
    assert d.proc.wait(timeout=20) == 0, d.log()
    for path in (state, old, *state.iterdir()):
        if path.name != "sub":
            assert path.stat().st_uid == nobody.pw_uid, path
    assert (state / "sub").stat().st_uid == 0


def test_plugin_serves_http_only_when_configured(world_dir: Path) -> None:
    """Without `[plugin] http = true` or --listen, the plugin opens no port; with it, it does."""
    need_root()
    port = free_port()
    listen = f'[http]\nlisten = "127.0.0.1:{port}"\n'
    for http, listening in (("", False), ("http = true\n", True)):
        config = plugin_config(world_dir, http + listen)
        state = world_dir / f"state-{listening}"
        proc = subprocess.Popen(
            [*monitord_cmd(), "run", "--config", str(config), "--source", "audisp",
             "--state-dir", str(state)],
            stdin=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )  # fmt: skip
        try:
            # Once it runs as nobody it is past the point where it would have listened.
            wait_until(lambda p=proc: status_of(p.pid)[0]["Uid"].split()[0] != "0", timeout=20)
            with socket.socket() as s:
                s.settimeout(5)
                assert (s.connect_ex(("127.0.0.1", port)) == 0) is listening
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.wait(timeout=20) == 0


def test_missing_user_is_a_clear_failure(world_dir: Path) -> None:
    """A [plugin] user that does not exist: exit 1 with one line naming it, never on as root."""
    need_root()
    config = world_dir / "monitord.toml"
    config.write_text('[plugin]\nuser = "no-such-monitord-user"\n[alerts]\njournal = false\n')
    result = subprocess.run(
        [*monitord_cmd(), "run", "--config", str(config), "--source", "audisp",
         "--state-dir", str(world_dir / "state")],
        input=b"",
        capture_output=True,
        timeout=30,
        cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    err = result.stderr.decode()
    assert "Traceback" not in err
    assert "user 'no-such-monitord-user' does not exist" in err


def test_plugin_started_by_auditd_drops_root(world_dir: Path) -> None:
    """A real auditd starts the plugin as root (its plugins.d); the running plugin is nobody."""
    need_root()
    port = free_port()
    state = world_dir / "state"
    # Everything in the config: auditd passes a plugin at most two arguments.
    config = plugin_config(
        world_dir,
        f'http = true\n[source]\nkind = "audisp"\n[state]\ndir = "{state}"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n',
    )
    with running_auditd(world_dir / "auditd") as auditd:
        plugin = auditd.plugins / "monitord.conf"
        plugin.write_text(
            f"active = yes\ndirection = out\npath = {monitord_cmd()[0]}\ntype = always\n"
            f"args = run --config={config}\nformat = string\n"
        )
        plugin.chmod(0o640)
        auditd.stop()
        auditd.start()  # plugins are read at start-up
        assert auditd.proc is not None
        d = MonitordProcess(state, port=port)  # started by auditd; only read here
        wait_until(lambda: d.get("/healthz"), timeout=30)
        children = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _ppid(p) == auditd.proc.pid
        ]
        assert len(children) == 1, children
        nobody = pwd.getpwnam(USER)
        assert_unprivileged(children[0], nobody.pw_uid, nobody.pw_gid)


def _ppid(proc: Path) -> int:
    try:
        m = re.search(r"(?m)^PPid:\s*(\d+)", (proc / "status").read_text())
    except OSError:  # gone meanwhile
        return -1
    return int(m.group(1)) if m else -1


# -- the pieces, without a process -------------------------------------------------------


def test_plugin_keys_are_documented_and_default() -> None:
    """deploy/monitord.toml documents [plugin] user, group, http; the defaults are the service's."""
    text = (ROOT / "deploy" / "monitord.toml").read_text()
    for key in ("user", "group", "http"):
        assert re.search(rf"(?m)^#?{key} = ", text.split("[plugin]", 1)[1]), key
    assert load_config(ROOT / "deploy" / "monitord.toml").plugin == PluginConfig()
    assert PluginConfig() == PluginConfig(user="monitord", group=None, http=False)
    config = parse_config('[plugin]\nuser = "nobody"\ngroup = "adm"\nhttp = true\n')
    assert config.plugin == PluginConfig("nobody", "adm", True)


def test_listener_rule() -> None:
    """Every source but audisp listens; the plugin only with [plugin] http or --listen."""
    file_source, plugin = Config(), Config(source=SourceConfig(kind="audisp"))
    assert plugin_serves_http(file_source, None)
    assert not plugin_serves_http(plugin, None)
    assert not plugin_serves_http(plugin, argparse.Namespace(listen=None))
    assert plugin_serves_http(plugin, argparse.Namespace(listen="127.0.0.1:1"))
    assert plugin_serves_http(Config(source=plugin.source, plugin=PluginConfig(http=True)), None)


def test_nothing_to_drop_outside_the_plugin() -> None:
    """The file and journal sources never change user (the unit starts them as monitord)."""
    before = os.getresuid()
    assert drop_plugin_privileges(Config()) is None
    assert drop_plugin_privileges(Config(source=SourceConfig(kind="journal"))) is None
    assert os.getresuid() == before


def test_resolve_names_the_missing_user_or_group() -> None:
    """Unknown user or group: RuntimeFailure naming it; a known user gets its groups."""
    with pytest.raises(RuntimeFailure, match="user 'no-such-user-x' does not exist"):
        resolve("no-such-user-x", None)
    with pytest.raises(RuntimeFailure, match="group 'no-such-group-x' does not exist"):
        resolve(USER, "no-such-group-x")
    who = resolve(USER, None)
    entry = pwd.getpwnam(USER)
    assert (who.uid, who.gid) == (entry.pw_uid, entry.pw_gid)
    assert entry.pw_gid in who.groups


def test_state_dir_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    """A state dir owned by a third user is not taken over: RuntimeFailure naming it."""
    need_root()
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 12345, 12345)
    with pytest.raises(RuntimeFailure, match="belongs to uid 12345"):
        hand_over_state_dir(str(state), resolve(USER, None))


def test_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    """The state dir is opened without following a symlink (nothing is chowned through one)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(RuntimeFailure, match="cannot open state directory"):
        hand_over_state_dir(str(tmp_path / "link"), resolve(USER, None))
