"""The Debian package for real: built with dpkg-buildpackage, checked by lintian, and installed,
run, upgraded, removed and purged in a fresh debootstrap'ed Debian 12 root.

The root lives in a private mount namespace (unshare -m) held open by one process: /proc,
/sys, /dev and /run are mounted there only, so nothing leaks to the host and everything
goes with the holder. The root shares the host's network (apt reaches the Debian mirror
over http; the daemon's listener is scraped from here). The minbase root is cached as a
tarball under .cache/debootstrap/ (gitignored) for later runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitord import __version__
from tests.conftest import ROOT, need_root, need_tool
from tests.daemonproc import free_port
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.root]

SUITE = "bookworm"
MIRROR = os.environ.get("MONITORD_TEST_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("MONITORD_TEST_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
CACHE = ROOT / ".cache" / "debootstrap" / f"{SUITE}-minbase-amd64.tar"
CACHE_MAX_AGE = 7 * 86400  # then a fresh debootstrap: the root's packages move on
OUT = ROOT / "bench" / "out" / "debian-package.json"
# Debian's tools from Debian's Python, whatever else is on PATH (pyenv, a venv).
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
UUID = "0d3b2c1e-5f4a-4b7c-9d8e-1f2a3b4c5d6e"
# A bcrypt hash in the form htpasswd -B writes ($2y$) of the password "scrape-me".
PASSWORD = "scrape-me"


def record(n: int) -> str:
    return (
        f"type=VIRT_CONTROL msg=audit(1700000000.{n % 1000:03d}:{n}): pid=1 uid=0 "
        'auid=4294967295 ses=4294967295 msg=\'virt=kvm op=start reason=booted vm="web01" '
        f'uuid={UUID} vm-pid=4242 exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? '
        "res=success'\n"
    )


def run(cmd: list[str], timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[call-overload]
    )
    assert isinstance(result, subprocess.CompletedProcess)
    return result


def ok(cmd: list[str], timeout: float = 600, **kw: object) -> str:
    result = run(cmd, timeout, **kw)
    assert result.returncode == 0, f"{cmd}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


# -- building ----------------------------------------------------------------------------


def source_files() -> list[str]:
    """The files of this source tree (a git checkout, or an unpacked sdist)."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        out = ok(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"])
        return [f for f in out.splitlines() if (ROOT / f).exists()]
    skip = {".venv", ".cache", ".git", "build", "dist", ".pybuild", "__pycache__"}
    return [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*")
        if p.is_file() and not skip.intersection(p.relative_to(ROOT).parts)
    ]


@pytest.fixture(scope="module")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """monitord_*.deb as `dpkg-buildpackage -us -uc -b` builds it in a copy of this tree."""
    need_root()
    for tool in ("dpkg-buildpackage", "dpkg-checkbuilddeps", "dh", "dh_python3", "gcc"):
        need_tool(tool)
    work = tmp_path_factory.mktemp("deb")
    src = work / "monitord"
    src.mkdir()
    for name in source_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name, follow_symlinks=False)
    env = {**os.environ, "PATH": SYSTEM_PATH}
    env.pop("PYTHONPATH", None)
    missing = run(["dpkg-checkbuilddeps"], cwd=src, env=env)
    if missing.returncode != 0:
        from tests.conftest import IN_CI

        message = f"build dependencies missing (./bootstrap setup): {missing.stderr.strip()}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    ok(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env)
    debs = sorted(work.glob(f"monitord_{__version__}_*.deb"))
    assert len(debs) == 1, sorted(p.name for p in work.iterdir())
    return debs[0]


def test_lintian_finds_no_errors_or_warnings(built_deb: Path) -> None:
    """lintian (Debian 12's) reports no error and no warning on the built package."""
    result = run([need_tool("lintian"), "--no-tag-display-limit", str(built_deb)])
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert tags == [], result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def deb_members(deb: Path) -> dict[str, tuple[str, str]]:
    """path -> (mode string, owner) of every file in the package."""
    members = {}
    for line in ok(["dpkg-deb", "-c", str(deb)]).splitlines():
        fields = line.split(None, 5)
        path = fields[5].split(" -> ")[0].removeprefix(".")
        if not fields[0].startswith("d"):
            members[path] = (fields[0], fields[1])
    return members


def test_package_holds_what_operators_need(built_deb: Path) -> None:
    """The .deb has the command, vendor-path unit/sysusers/tmpfiles, conffiles, docs, man page."""
    members = deb_members(built_deb)
    for path in (
        "/usr/bin/monitord",
        "/lib/systemd/system/monitord.service",
        "/usr/lib/sysusers.d/monitord.conf",
        "/usr/lib/tmpfiles.d/monitord.conf",
        "/etc/monitord/monitord.toml",
        "/etc/audit/plugins.d/monitord.conf",
        "/usr/share/monitord/prometheus/monitord.rules.yml",
        "/usr/share/monitord/grafana/monitord.json",
        "/usr/share/man/man1/monitord.1.gz",
        "/usr/share/doc/monitord/copyright",
        "/usr/share/doc/monitord/changelog.gz",
        "/usr/lib/monitord/inotify_simple.py",
        "/usr/lib/monitord/monitord/privileges.py",
    ):
        assert path in members, path
    assert members["/etc/audit/plugins.d/monitord.conf"][0] == "-rw-r-----"
    assert any(
        re.match(r"/usr/lib/monitord/monitord/audit/_fastparse\..*\.so$", p) for p in members
    )
    # Nothing the installed program does not use: no tests, no C source, no pip metadata.
    assert not [p for p in members if re.search(r"(/tests?/|\.c$|\.dist-info/|__pycache__)", p)]
    assert all(owner == "root/root" for _, owner in members.values())
    conffiles = ok(["dpkg-deb", "--info", str(built_deb), "conffiles"]).split()
    assert sorted(conffiles) == [
        "/etc/audit/plugins.d/monitord.conf",
        "/etc/monitord/monitord.toml",
    ]
    depends = ok(["dpkg-deb", "-f", str(built_deb), "Depends"])
    # procps: /bin/kill, the unit's ExecReload (minbase has no kill).
    for dep in (
        "python3-bcrypt (>= 3.2.2)",
        "python3-prometheus-client",
        "python3-systemd",
        "procps",
    ):
        assert dep in depends
    record_result(
        deb_bytes=built_deb.stat().st_size,
        installed_kib=int(ok(["dpkg-deb", "-f", str(built_deb), "Installed-Size"])),
        files=len(members),
    )


def record_result(**values: object) -> None:
    """Keep the measured numbers for bench/RESULTS.md (bench/out is not committed)."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(OUT.read_text()) if OUT.exists() else {}
    doc.update(values)
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"debian package: {values}")


# -- the fresh Debian 12 root -------------------------------------------------------------


class DebianRoot:
    """A debootstrap'ed root in a private mount namespace; commands run in it by chroot."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.holder: subprocess.Popen[bytes] | None = None
        self.started: list[subprocess.Popen[bytes]] = []

    def enter(self) -> None:
        # One process holds the namespace; every command joins it with nsenter.
        self.holder = subprocess.Popen(
            [need_tool("unshare"), "--mount", "--propagation", "private", "sleep", "infinity"]
        )
        wait_until(self._in_own_namespace, timeout=10)
        r = str(self.path)
        self.host(["mount", "-t", "proc", "proc", f"{r}/proc"])
        self.host(["mount", "-t", "sysfs", "sysfs", f"{r}/sys"])
        self.host(["mount", "--rbind", "/dev", f"{r}/dev"])
        self.host(["mount", "-t", "tmpfs", "tmpfs", f"{r}/run"])

    def _in_own_namespace(self) -> bool:
        assert self.holder is not None
        mine = Path("/proc/self/ns/mnt").readlink()
        return Path(f"/proc/{self.holder.pid}/ns/mnt").readlink() != mine

    def host(self, cmd: list[str], timeout: float = 600) -> str:
        """A command in the namespace, outside the root (mounts)."""
        assert self.holder is not None
        return ok(["nsenter", "-t", str(self.holder.pid), "-m", *cmd], timeout)

    def argv(self, cmd: list[str]) -> list[str]:
        assert self.holder is not None
        env = ["env", "-i", "PATH=" + SYSTEM_PATH, "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"]
        return ["nsenter", "-t", str(self.holder.pid), "-m", "chroot", str(self.path), *env, *cmd]

    def run(self, cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run(self.argv(cmd), timeout, stdin=subprocess.DEVNULL)

    def __call__(self, cmd: list[str], timeout: float = 600) -> str:
        result = self.run(cmd, timeout)
        assert result.returncode == 0, f"{cmd}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.argv(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self.started.append(proc)
        return proc

    def file(self, path: str) -> Path:
        return self.path / path.lstrip("/")

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.holder is not None:
            # Every process in the namespace is gone with these: its mounts go with it.
            self.holder.send_signal(signal.SIGKILL)
            self.holder.wait()
            self.holder = None


def fresh_root(where: Path) -> Path:
    """A minbase Debian 12 root: from the cached tarball, or by debootstrap (then cached)."""
    root = where / "root"
    root.mkdir()
    if CACHE.exists() and time.time() - CACHE.stat().st_mtime < CACHE_MAX_AGE:
        with tarfile.open(CACHE) as tar:
            # Our own tarball, devices and all. Debian 12's Python 3.11.2 has no `filter`.
            if hasattr(tarfile, "fully_trusted_filter"):
                tar.extractall(root, numeric_owner=True, filter="fully_trusted")
            else:
                tar.extractall(root, numeric_owner=True)
        return root
    ok([need_tool("debootstrap"), "--variant=minbase", SUITE, str(root), MIRROR], timeout=900)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    partial = CACHE.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        tar.add(root, arcname=".")
    partial.replace(CACHE)
    return root


@pytest.fixture
def debian(tmp_path: Path) -> Iterator[DebianRoot]:
    need_root()
    for tool in ("unshare", "nsenter", "chroot", "mount"):
        need_tool(tool)
    path = fresh_root(tmp_path)
    (path / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\n"
        f"deb {SECURITY} {SUITE}-security main\n"
    )
    shutil.copy("/etc/resolv.conf", path / "etc/resolv.conf")
    # A mirror's passing hiccup is not a failure of the package.
    (path / "etc/apt/apt.conf.d/80retries").write_text('Acquire::Retries "3";\n')
    root = DebianRoot(path)
    try:
        root.enter()
        yield root
    finally:
        root.close()
        shutil.rmtree(path, ignore_errors=True)


# -- the life cycle -----------------------------------------------------------------------


def bcrypt_2y(password: str) -> str:
    """A $2y$ hash as htpasswd -B writes it (the same algorithm as $2b$)."""
    import bcrypt

    return (
        bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
        .decode()
        .replace("$2b$", "$2y$", 1)
    )


def scrape(port: int, path: str = "/metrics", auth: bool = True) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        token = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def metric(text: str, name: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def status_fields(pid: int) -> dict[str, str]:
    return dict(re.findall(r"(?m)^(\w+):\s*(.*)$", Path(f"/proc/{pid}/status").read_text()))


def daemon_pid(launcher: subprocess.Popen[bytes]) -> int:
    """The monitord process (python3) that nsenter -> chroot -> env -> setpriv became."""

    def find() -> int:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
                root = str((proc / "root").readlink())
            except OSError:
                continue
            if b"/usr/bin/monitord" in cmd and b"run" in cmd and root != "/":
                return int(proc.name)
        return 0

    return wait_until(find, timeout=20)


# As monitord.service runs it: User=, Group=, AmbientCapabilities=CAP_DAC_READ_SEARCH,
# CapabilityBoundingSet=CAP_DAC_READ_SEARCH, NoNewPrivileges=yes.
AS_THE_UNIT = [
    "setpriv", "--reuid=monitord", "--regid=monitord", "--init-groups",
    "--inh-caps=-all,+dac_read_search", "--ambient-caps=-all,+dac_read_search",
    "--bounding-set=-all,+dac_read_search", "--no-new-privs",
]  # fmt: skip
SERVICE = [*AS_THE_UNIT, "/usr/bin/monitord", "run", "--config", "/etc/monitord/monitord.toml"]


def start_service(debian: DebianRoot, port: int, log: Path) -> subprocess.Popen[bytes]:
    launcher = debian.start(SERVICE, log)
    try:
        wait_until(lambda: scrape(port, "/healthz").strip() == "ok", timeout=30, ignore=(OSError,))
    except AssertionError as err:
        raise AssertionError(f"{err}; the daemon's output:\n{log.read_text()[-3000:]}") from None
    return launcher


def stop_service(launcher: subprocess.Popen[bytes], pid: int) -> None:
    os.kill(pid, signal.SIGTERM)  # as systemctl stop: the daemon writes its state and exits 0
    assert launcher.wait(timeout=30) == 0


def repack(deb: Path, version: str, out: Path) -> Path:
    """The same package as a later version whose shipped config also changed."""
    tree = out / "tree"
    ok(["dpkg-deb", "-R", str(deb), str(tree)])
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text()))
    conf = tree / "etc/monitord/monitord.toml"
    conf.write_text(conf.read_text() + "# (a later version's default config)\n")
    sums = tree / "DEBIAN" / "md5sums"
    digest = hashlib.md5(conf.read_bytes()).hexdigest()  # dpkg's own format
    sums.write_text(
        re.sub(r"(?m)^\w+(  etc/monitord/monitord\.toml)$", rf"{digest}\1", sums.read_text())
    )
    target = out / f"monitord_{version}_amd64.deb"
    ok(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(target)])
    return target


def test_install_run_upgrade_remove_purge(
    built_deb: Path, debian: DebianRoot, tmp_path: Path
) -> None:
    """Fresh Debian 12: apt-get install, run as the unit does, scrape, upgrade, remove, purge."""
    port = free_port()
    log = tmp_path / "monitord.log"
    shutil.copy(built_deb, debian.file("/tmp") / built_deb.name)
    deb_in_root = f"/tmp/{built_deb.name}"
    debian(["apt-get", "update", "-q"])
    # Download first: the install is timed without it.
    debian(
        [
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "--download-only",
            deb_in_root,
        ]
    )

    # The audit log as auditd leaves it: root's alone.
    audit_dir = debian.file("/var/log/audit")
    audit_dir.mkdir(mode=0o700, parents=True)
    audit_log = audit_dir / "audit.log"
    audit_log.write_text("".join(record(n) for n in range(1, 11)))
    audit_log.chmod(0o600)

    t0 = time.monotonic()
    debian(["apt-get", "install", "-y", "-q", "--no-install-recommends", deb_in_root])
    installed = time.monotonic() - t0
    conf = debian.file("/etc/monitord/monitord.toml")
    edited = conf.read_text().replace('listen = "127.0.0.1:9781"', f'listen = "127.0.0.1:{port}"')
    edited = edited.replace("#[http.basic_auth_users]", "[http.basic_auth_users]").replace(
        '#prometheus = "$2y$10$', 'prometheus = "$2y$10$'
    )
    edited = re.sub(
        r'(?m)^prometheus = "\$2y\$[^"]*"$', f'prometheus = "{bcrypt_2y(PASSWORD)}"', edited
    )
    assert 'prometheus = "$2y$' in edited
    conf.write_text(edited)
    launcher = start_service(debian, port, log)
    body = scrape(port)
    serving = time.monotonic() - t0
    assert metric(body, "libvirt_audit_records_total") == 10
    record_result(install_seconds=round(installed, 1), install_to_serving_seconds=round(serving, 1))

    assert debian(["monitord", "--version"]).startswith(f"monitord {__version__} (parser: c)")
    # Basic auth with the $2y$ hash, checked by Debian 12's python3-bcrypt (3.2.2).
    assert debian(["dpkg-query", "-W", "-f=${Version}", "python3-bcrypt"]).startswith("3.2.2")
    with pytest.raises(urllib.error.HTTPError) as denied:
        scrape(port, auth=False)
    assert denied.value.code == 401

    # The daemon runs as monitord with CAP_DAC_READ_SEARCH alone, and only that cap opens the log.
    pid = daemon_pid(launcher)
    status = status_fields(pid)
    user = debian(["getent", "passwd", "monitord"]).split(":")
    assert status["Uid"].split() == [user[2]] * 4
    assert user[5:] == ["/var/lib/monitord", "/usr/sbin/nologin\n"]
    assert int(status["CapEff"], 16) == int(status["CapAmb"], 16) == 1 << 2  # CAP_DAC_READ_SEARCH
    denied_read = debian.run([*AS_THE_UNIT[:4], "cat", "/var/log/audit/audit.log"])
    assert denied_read.returncode != 0 and "Permission denied" in denied_read.stderr
    state = debian.file("/var/lib/monitord")
    assert (state.stat().st_uid, oct(state.stat().st_mode & 0o777)) == (int(user[2]), "0o750")

    # The unit as installed passes systemd's own check.
    verify = debian.run(["systemd-analyze", "verify", "/lib/systemd/system/monitord.service"])
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    assert debian.file("/etc/systemd/system/multi-user.target.wants/monitord.service").is_symlink()
    assert "active = no" in debian.file("/etc/audit/plugins.d/monitord.conf").read_text()
    assert (debian.file("/etc/audit/plugins.d/monitord.conf").stat().st_mode & 0o777) == 0o640

    # Upgrade to a later version whose default config changed too: dpkg asks (and with no
    # terminal to answer, stops); --force-confold keeps the edit; the state carries over.
    stop_service(launcher, pid)
    kept_state = sorted(p.name for p in state.iterdir())
    assert kept_state
    later = repack(built_deb, f"{__version__}+later1", tmp_path)
    shutil.copy(later, debian.file("/tmp") / later.name)
    asked = debian.run(["dpkg", "-i", f"/tmp/{later.name}"])
    assert asked.returncode != 0
    assert "Configuration file '/etc/monitord/monitord.toml'" in asked.stdout + asked.stderr
    debian(["dpkg", "--configure", "--force-confold", "monitord"])
    assert debian(["dpkg-query", "-W", "-f=${Version} ${Status}", "monitord"]) == (
        f"{__version__}+later1 install ok installed"
    )
    assert conf.read_text() == edited
    assert (
        "a later version's default"
        in debian.file("/etc/monitord/monitord.toml.dpkg-dist").read_text()
    )
    with open(audit_log, "a") as f:
        f.write("".join(record(n) for n in range(11, 16)))
    launcher = start_service(debian, port, log)
    # Resumed from the saved position and counters: 10 + 5, nothing counted twice.
    wait_until(
        lambda: metric(scrape(port), "libvirt_audit_records_total") == 15,
        timeout=20,
        ignore=(OSError,),
    )
    stop_service(launcher, daemon_pid(launcher))

    # Remove keeps the config and the state; purge removes them (the user stays).
    debian(["apt-get", "remove", "-y", "-q", "monitord"])
    assert not debian.file("/usr/bin/monitord").exists()
    assert not debian.file("/lib/systemd/system/monitord.service").exists()
    assert conf.read_text() == edited
    assert sorted(p.name for p in state.iterdir()) == kept_state
    assert debian(["dpkg-query", "-W", "-f=${Status}", "monitord"]) == "deinstall ok config-files"
    debian(["apt-get", "purge", "-y", "-q", "monitord"])
    for gone in ("/etc/monitord", "/var/lib/monitord", "/etc/audit/plugins.d/monitord.conf",
                 "/etc/systemd/system/multi-user.target.wants/monitord.service"):  # fmt: skip
        assert not os.path.lexists(debian.file(gone)), gone
    assert debian.run(["dpkg-query", "-W", "monitord"]).returncode != 0
