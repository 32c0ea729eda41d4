"""scripts/install.sh staged into a temp root (DESTDIR style): what it lays down and removes.

It installs to the vendor paths systemd reads for software the administrator installed
(/usr/local/lib/systemd/system, /usr/local/lib/sysusers.d, ...), never to /etc/systemd,
/etc/sysusers.d or /etc/tmpfiles.d, which are the administrator's overrides.
"""

from __future__ import annotations

import argparse
import re
import stat
import subprocess
import sys
from pathlib import Path

from monitord.commands.cli import build_parser
from monitord.config import Config, load_config
from tests.conftest import ROOT, need_tool

SCRIPT = ROOT / "scripts" / "install.sh"
MONITORD = str(Path(sys.executable).parent / "monitord")
FILES = {
    "usr/local/lib/systemd/system/monitord.service": 0o644,
    "usr/local/lib/sysusers.d/monitord.conf": 0o644,
    "usr/local/lib/tmpfiles.d/monitord.conf": 0o644,
    "usr/local/share/monitord/prometheus/monitord.rules.yml": 0o644,
    "usr/local/share/monitord/prometheus/monitord.rules.test.yml": 0o644,
    "usr/local/share/monitord/prometheus/prometheus.yml": 0o644,
    "usr/local/share/monitord/grafana/monitord.json": 0o644,
    "usr/local/share/man/man1/monitord.1": 0o644,
    "etc/audit/plugins.d/monitord.conf": 0o640,
    "etc/monitord/monitord.toml": 0o644,
}
FILES_UNIT = "usr/local/lib/systemd/system/monitord.service"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd="/"
    )


def install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = run("install", "--root", str(root), "--monitord", MONITORD, *extra)
    assert result.returncode == 0, result.stderr
    return result


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def plugin_settings(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and line[0] != "#"
    )
    return {k.strip(): v.strip() for k, v in pairs}


def test_install_lays_down_every_file(tmp_path: Path) -> None:
    """install puts link, unit, sysusers, tmpfiles, plugin conf, config and state dir in place."""
    install(tmp_path)
    assert tree(tmp_path) == {*FILES, "usr/local/bin/monitord"}
    for name, mode in FILES.items():
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    link = tmp_path / "usr/local/bin/monitord"
    assert link.is_symlink() and str(link.readlink()) == MONITORD
    state = tmp_path / "var/lib/monitord"
    assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o750
    unit = (tmp_path / FILES_UNIT).read_text()
    assert "ExecStart=/usr/local/bin/monitord run --config /etc/monitord/monitord.toml\n" in unit
    assert load_config(tmp_path / "etc/monitord/monitord.toml") == Config()
    # Inactive unless asked for: the service is the default way to run.
    plugin = plugin_settings(tmp_path / "etc/audit/plugins.d/monitord.conf")
    assert plugin["active"] == "no"
    assert plugin["path"] == "/usr/local/bin/monitord"
    # The installed monitord runs.
    version = subprocess.run([str(link), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("monitord ")


def test_prefix_and_audisp_options(tmp_path: Path) -> None:
    """--prefix moves every vendor file and every path naming the link; --audisp activates."""
    install(tmp_path, "--prefix", "/opt/mon", "--audisp")
    assert str((tmp_path / "opt/mon/bin/monitord").readlink()) == MONITORD
    unit = (tmp_path / "opt/mon/lib/systemd/system/monitord.service").read_text()
    assert "ExecStart=/opt/mon/bin/monitord run " in unit
    assert (tmp_path / "opt/mon/lib/sysusers.d/monitord.conf").exists()
    assert (tmp_path / "opt/mon/share/man/man1/monitord.1").exists()
    plugin = plugin_settings(tmp_path / "etc/audit/plugins.d/monitord.conf")
    assert (plugin["active"], plugin["path"]) == ("yes", "/opt/mon/bin/monitord")
    assert not (tmp_path / "usr").exists()


def test_man_page_names_every_command(tmp_path: Path) -> None:
    """The installed man page is valid roff and has a section for every monitord command."""
    install(tmp_path)
    page = tmp_path / "usr/local/share/man/man1/monitord.1"
    text = page.read_text()
    commands = next(
        a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    assert "run" in commands
    for command in commands:
        assert f".SS monitord {command.replace('-', chr(92) + '-')}" in text, command
    man = subprocess.run(
        [need_tool("man"), "--warnings", "-l", "-Tutf8", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MANWIDTH": "80"},
    )
    assert man.returncode == 0, man.stderr
    assert man.stderr == ""
    plain = re.sub(r".\x08", "", man.stdout)  # overstrike bold and underline
    assert "monitord check-config" in plain


def test_old_etc_layout_is_moved_away(tmp_path: Path) -> None:
    """Files an earlier install.sh put under /etc and /opt are removed (they would override)."""
    old = {
        "etc/systemd/system/monitord.service": "# Installed by scripts/install.sh as /etc/...\n",
        "etc/sysusers.d/monitord.conf": "# installed as /etc/sysusers.d/monitord.conf.\n",
        "etc/tmpfiles.d/monitord.conf": "# installed as /etc/tmpfiles.d/monitord.conf.\n",
        "opt/monitord/.installed-by-monitord": "",
        "opt/monitord/venv/bin/python": "",
    }
    for name, text in old.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "usr/local/bin").mkdir(parents=True)
    (tmp_path / "usr/local/bin/monitord").symlink_to("/opt/monitord/venv/bin/monitord")
    # An administrator's own override is not ours: it stays.
    (tmp_path / "etc/systemd/system/other.service").write_text("[Service]\n")
    install(tmp_path)
    assert tree(tmp_path) == {*FILES, "usr/local/bin/monitord", "etc/systemd/system/other.service"}
    assert not (tmp_path / "opt/monitord").exists()


def test_auditd_2_plugin_dir(tmp_path: Path) -> None:
    """With only /etc/audisp/plugins.d (auditd 2.x), the plugin conf goes there."""
    (tmp_path / "etc/audisp/plugins.d").mkdir(parents=True)
    install(tmp_path)
    assert (tmp_path / "etc/audisp/plugins.d/monitord.conf").exists()
    assert not (tmp_path / "etc/audit").exists()


def test_existing_config_is_never_overwritten(tmp_path: Path) -> None:
    """A second install keeps the admin's config and puts the shipped one beside it as .new."""
    install(tmp_path)
    config = tmp_path / "etc/monitord/monitord.toml"
    config.write_text("[http]\nlisten = '127.0.0.1:1'\n")
    result = install(tmp_path)
    assert config.read_text() == "[http]\nlisten = '127.0.0.1:1'\n"
    assert (tmp_path / "etc/monitord/monitord.toml.new").read_text() == (
        ROOT / "deploy/monitord.toml"
    ).read_text()
    assert "kept the existing /etc/monitord/monitord.toml" in result.stdout


def test_uninstall_keeps_config_and_state_unless_purge(tmp_path: Path) -> None:
    """uninstall removes what install added but config and state; --purge removes those too."""
    install(tmp_path)
    (tmp_path / "var/lib/monitord/checkpoint.json").write_text("{}")
    result = run("uninstall", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path) == {"etc/monitord/monitord.toml", "var/lib/monitord/checkpoint.json"}
    assert "kept /etc/monitord" in result.stdout
    result = run("uninstall", "--root", str(tmp_path), "--purge")
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path) == set()
    assert not (tmp_path / "etc/monitord").exists()


def test_uninstall_leaves_foreign_files(tmp_path: Path) -> None:
    """A real (non-link) monitord in bindir and a venv dir without install's stamp are kept."""
    binary = tmp_path / "usr/local/bin/monitord"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    (tmp_path / "usr/local/lib/monitord/venv").mkdir(parents=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/monitord.service").write_text("[Service]\n")  # the admin's
    result = run("uninstall", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert binary.exists()
    assert (tmp_path / "usr/local/lib/monitord/venv").exists()
    assert (tmp_path / "etc/systemd/system/monitord.service").exists()


def test_usage_errors(tmp_path: Path) -> None:
    """Bad actions and options exit 2 with a one-line message; nothing is written."""
    for args in (
        ("frobnicate",),
        ("install", "--root", str(tmp_path), "--colour"),
        ("install", "--root", str(tmp_path / "absent")),
        ("install", "--root", str(tmp_path), "--prefix", "relative"),
        ("install", "--root", str(tmp_path), "--monitord", str(tmp_path / "nope")),
    ):
        result = run(*args)
        assert result.returncode == 2, args
        assert result.stderr.startswith("install.sh: "), result.stderr
    assert tree(tmp_path) == set()
