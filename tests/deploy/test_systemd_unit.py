"""The shipped unit, sysusers/tmpfiles entries and auditd plugin conf, checked by real tools."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monitord.commands.cli import build_parser
from tests.conftest import ROOT, need_tool

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "monitord.service"
PLUGIN = DEPLOY / "audit" / "plugins.d" / "monitord.conf"
INSTALLED_BINARY = "/usr/bin/monitord"  # where the Debian package installs monitord
# `systemd-analyze security` exposure (0-10) the unit must stay at or below; README states it.
EXPOSURE_LIMIT = 2.0


def monitord_executable() -> str:
    path = Path(sys.executable).parent / "monitord"
    found = str(path) if path.exists() else shutil.which("monitord")
    if found is None:
        pytest.fail("the monitord console script is not installed (pip install -e .)")
    return found


def unit_for_test(tmp_path: Path, text: str | None = None) -> Path:
    """A copy of the unit whose ExecStart is this checkout's monitord (verify wants it to exist)."""
    text = UNIT.read_text() if text is None else text
    assert f"ExecStart={INSTALLED_BINARY} " in text
    path = tmp_path / "monitord.service"
    path.write_text(
        text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={monitord_executable()} ")
    )
    return path


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need_tool("systemd-analyze"), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, SYSTEMD_LOG_COLOR="0"),
    )


def settings(text: str) -> dict[str, list[str]]:
    """Unit or plugin-conf assignments, key -> values in order (keys may repeat)."""
    result: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        result.setdefault(key.strip(), []).append(value.strip())
    return result


def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit and prints nothing at all on stderr."""
    result = verify(unit_for_test(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_verify_check_catches_a_typo(tmp_path: Path) -> None:
    """The check above can fail: a misspelt setting only warns (rc 0), and that is caught."""
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    result = verify(unit_for_test(tmp_path, broken))
    assert "ProtectSytem" in result.stderr


def test_security_exposure_is_below_the_stated_limit(tmp_path: Path) -> None:
    """systemd-analyze security --offline rates the unit at or below EXPOSURE_LIMIT ("OK")."""
    tool = need_tool("systemd-analyze")
    unit = unit_for_test(tmp_path)
    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    m = re.search(r"Overall exposure level for monitord\.service: (\d+\.\d+) (\w+)", result.stdout)
    assert m, result.stdout
    assert float(m.group(1)) <= EXPOSURE_LIMIT, result.stdout
    assert m.group(2) in ("OK", "SAFE", "PERFECT"), result.stdout
    # The same limit through systemd's own gate (its scale is 0-100).
    gated = subprocess.run(
        [tool, "security", "--offline=true", f"--threshold={int(EXPOSURE_LIMIT * 10)}", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gated.returncode == 0, gated.stdout


def test_unit_has_the_service_contract() -> None:
    """notify + watchdog, reload by SIGHUP, restart on failure, own user, state dir, hardening."""
    s = settings(UNIT.read_text())
    expected = {
        "Type": "notify",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "30s",
        "Restart": "on-failure",
        "StateDirectory": "monitord",
        "User": "monitord",
        "AmbientCapabilities": "CAP_DAC_READ_SEARCH",
        "CapabilityBoundingSet": "CAP_DAC_READ_SEARCH",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
        "ReadOnlyPaths": "-/var/log/audit",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], key
    assert s["SystemCallFilter"][0] == "@system-service"
    exec_start = shlex.split(s["ExecStart"][0])
    assert exec_start[0] == INSTALLED_BINARY
    # The arguments are ones `monitord run` accepts.
    args = build_parser().parse_args(exec_start[1:])
    assert args.command == "run"


def test_sysusers_and_tmpfiles_create_user_and_state_dir(tmp_path: Path) -> None:
    """systemd-sysusers creates the monitord user and systemd-tmpfiles its 0750 state dir."""
    sysusers, tmpfiles = need_tool("systemd-sysusers"), need_tool("systemd-tmpfiles")
    (tmp_path / "etc/sysusers.d").mkdir(parents=True)
    (tmp_path / "etc/tmpfiles.d").mkdir(parents=True)
    shutil.copy(DEPLOY / "systemd/monitord.sysusers", tmp_path / "etc/sysusers.d/monitord.conf")
    shutil.copy(DEPLOY / "systemd/monitord.tmpfiles", tmp_path / "etc/tmpfiles.d/monitord.conf")
    for tool in (sysusers, tmpfiles):
        extra = ["--create"] if tool == tmpfiles else []
        result = subprocess.run(
            [tool, f"--root={tmp_path}", *extra], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
    entry = next(
        line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
        if line.startswith("monitord:")
    )
    assert entry[5:] == ["/var/lib/monitord", "/usr/sbin/nologin"]
    state = (tmp_path / "var/lib/monitord").stat()
    assert (state.st_uid, oct(state.st_mode & 0o7777)) == (int(entry[2]), "0o750")


def test_plugin_conf_is_what_auditd_accepts() -> None:
    """The plugin conf has auditd's keys and at most 2 args (auditd's limit)."""
    s = {k: v[0] for k, v in settings(PLUGIN.read_text()).items()}
    assert s == {
        "active": "no",  # installed inactive: the service is the default way to run
        "direction": "out",
        "path": INSTALLED_BINARY,
        "type": "always",
        "args": "run --source=audisp",
        "format": "string",
    }
    args = s["args"].split()
    assert len(args) <= 2  # auditd-plugins(5): "there is a limit of 2 args"
    parsed = build_parser().parse_args(args)
    assert (parsed.command, parsed.source) == ("run", "audisp")


_MDWE_CODE = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)
import mmap
try:  # prove W^X is enforced: a writable+executable mapping must be refused
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("MDWE is not enforced")
except PermissionError:
    pass
import importlib, pkgutil, monitord, inotify_simple, systemd.daemon, systemd.journal
for mod in pkgutil.walk_packages(monitord.__path__, "monitord."):
    if not mod.name.endswith("__main__"):
        importlib.import_module(mod.name)
inotify_simple.INotify().close()
import prometheus_client
prometheus_client.generate_latest()
print("ok")
"""


def test_runs_under_memory_deny_write_execute() -> None:
    """All monitord modules import and inotify works with W^X enforced (MemoryDenyWriteExecute)."""
    result = subprocess.run(
        [sys.executable, "-c", _MDWE_CODE], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    if result.returncode == 77:
        pytest.skip(f"kernel without PR_SET_MDWE ({os.uname().release})")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
