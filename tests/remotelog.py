"""auditd's own remote logging on loopback: a receiving auditd and audisp-remote senders.

The receiver is Debian's auditd with `local_events = no` (it never registers with
the kernel, so it runs beside any other auditd) listening on a loopback TCP port
and writing every sender's records, `node=` prefix included, to its own log: the
aggregated log a central monitord follows. Each sender is Debian's audisp-remote
reading plugin-format lines on stdin. Both need private mount namespaces: auditd
always writes /var/run/auditd.pid and audisp-remote reads a fixed config path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import need_root, need_tool
from tests.daemonproc import free_port


class Receiver:
    """An auditd accepting remote records on 127.0.0.1:`port`, writing them to `log`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.conf_dir = root / "receiver"
        self.log = root / "receiver-log" / "audit.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        need_root()
        auditd = need_tool("auditd")
        self.conf_dir.mkdir(parents=True)
        (self.conf_dir / "plugins.d").mkdir()
        run = self.root / "receiver-run"
        run.mkdir()
        self.log.parent.mkdir(mode=0o700)
        settings = {
            "local_events": "no",
            "write_logs": "yes",
            "log_file": str(self.log),
            "log_format": "RAW",
            "flush": "INCREMENTAL_ASYNC",
            "freq": "1",
            "tcp_listen_port": str(self.port),
            "tcp_max_per_addr": "8",  # the default 1 refuses a second sender from 127.0.0.1
            "tcp_client_ports": "1-65535",
            "use_libwrap": "no",
            "plugin_dir": str(self.conf_dir / "plugins.d"),
            "space_left": "2",
            "admin_space_left": "1",  # must be below space_left, else auditd exits 6
            "space_left_action": "IGNORE",
            "admin_space_left_action": "IGNORE",
            "disk_full_action": "IGNORE",
            "disk_error_action": "IGNORE",
            "max_log_file_action": "IGNORE",
        }
        # Debian's defaults with these keys set: auditd refuses a config missing some keys.
        lines, seen = [], set()
        for line in Path("/etc/audit/auditd.conf").read_text().splitlines():
            key = line.split("=", 1)[0].strip()
            if key in settings:
                seen.add(key)
                line = f"{key} = {settings[key]}"
            lines.append(line)
        lines += [f"{k} = {v}" for k, v in settings.items() if k not in seen]
        conf = self.conf_dir / "auditd.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o640)
        stderr = open(self.root / "receiver.stderr", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                "unshare", "-m", "--propagation", "private", "sh", "-c",
                'mount --bind "$1" /run && exec "$2" -n -c "$3"', "sh",
                str(run), auditd, str(self.conf_dir),
            ],
            stdout=stderr,
            stderr=stderr,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "receiving auditd did not start: "
                    + (self.root / "receiver.stderr").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.05)

    def _listening(self) -> bool:
        out = subprocess.run(
            ["ss", "-Hltn", f"sport = :{self.port}"], capture_output=True, text=True
        ).stdout
        return str(self.port) in out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def send(root: Path, name: str, port: int, lines: list[str], timeout: float = 30.0) -> None:
    """Send plugin-format lines (`node=NAME type=... msg=audit(...): ...`) through one
    audisp-remote to the receiver on `port`, and wait until it has sent them all."""
    sender = need_tool("audisp-remote")
    conf = root / f"sender-{name}.conf"
    conf.write_text(
        "".join(
            f"{k} = {v}\n"
            for k, v in {
                "remote_server": "127.0.0.1",
                "port": str(port),
                "transport": "tcp",
                "format": "managed",  # `ascii` loses everything silently
                "mode": "immediate",
                "queue_depth": "20000",
                "queue_file": str(root / f"sender-{name}.queue"),
                "network_retry_time": "1",
                "network_failure_action": "syslog",
                "remote_ending_action": "reconnect",
                "startup_failure_action": "warn_once_continue",
            }.items()
        )
    )
    conf.chmod(0o640)
    records = root / f"sender-{name}.txt"
    records.write_text("".join(line + "\n" for line in lines))
    # Through a pipe: with `< file` it loses its last records. It exits at EOF.
    script = 'mount --bind "$1" /etc/audit/audisp-remote.conf && trap "" PIPE && ' 'cat "$2" | "$3"'
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
         str(conf), str(records), sender],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "LC_ALL": "C"},
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"audisp-remote {name} failed: {proc.stderr.decode()[-2000:]}")
