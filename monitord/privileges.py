"""The auditd plugin's privilege drop: root to open its files, then the `monitord` user.

auditd starts every plugin as root. `monitord run --source=audisp` needs root only
for what it opens at start-up: stdin (already open), the state directory and, when
configured, the listener (a port below 1024, a TLS key only root can read). Once those
are open, the daemon calls `drop_plugin_privileges()`: it becomes `[plugin] user` and
`group` with the user's supplementary groups (as systemd's User= does) and keeps no
capability. Going from uid 0 to a non-zero uid clears the permitted, effective and
ambient sets (capabilities(7)), and glibc applies set*id() to every thread, so the
threads already reading stdin and serving HTTP change too. no_new_privs is per thread:
it is set on the main thread, and the threads it starts later inherit it (monitord
execs nothing, so it only guards against a future exec).
A parser or HTTP bug then runs as an unprivileged user, as in laurel.

The service (monitord.service) needs none of this: systemd starts it as `monitord`.
"""

from __future__ import annotations

import argparse
import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass

from monitord.config import Config
from monitord.errors import RuntimeFailure

log = logging.getLogger("monitord")

_PR_SET_NO_NEW_PRIVS = 38


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the plugin becomes."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def plugin_serves_http(config: Config, args: argparse.Namespace | None) -> bool:
    """Whether `monitord run` opens its listener: always, except the plugin unless asked."""
    if config.source.kind != "audisp":
        return True
    return config.plugin.http or getattr(args, "listen", None) is not None


def resolve(user: str, group: str | None) -> Identity:
    """Look the user and group up (RuntimeFailure if either does not exist)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise RuntimeFailure(
            f"plugin: user {user!r} does not exist ([plugin] user); create it "
            "(systemd-sysusers with monitord's sysusers.d file) or name another"
        ) from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise RuntimeFailure(
                f"plugin: group {group!r} does not exist ([plugin] group)"
            ) from None
    groups = tuple(sorted(set(os.getgrouplist(user, gid))))
    return Identity(user, entry.pw_uid, gid, groups)


def hand_over_state_dir(path: str, who: Identity) -> None:
    """Give the state directory and the root-owned files in it to `who`.

    As StateDirectory= does for a service: a state directory that an earlier
    version (running as root) or `mkdir` made belongs to root, and the plugin must
    go on writing it after the drop. Only the directory itself and the plain files
    directly in it, and only those owned by root: nothing is followed (no symlink,
    no subdirectory), so a state directory pointed somewhere odd changes little.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        raise RuntimeFailure(
            f"plugin: cannot open state directory {path}: {err.strerror}"
        ) from None
    try:
        st = os.fstat(fd)
        if st.st_uid == 0:
            os.fchown(fd, who.uid, who.gid)
        elif st.st_uid != who.uid:
            raise RuntimeFailure(
                f"plugin: state directory {path} belongs to uid {st.st_uid}, "
                f"neither root nor {who.user}"
            )
        for name in os.listdir(fd):
            # dir_fd: relative to the directory opened above, which pathlib cannot do.
            entry = os.stat(name, dir_fd=fd, follow_symlinks=False)  # noqa: PTH116
            if stat.S_ISREG(entry.st_mode) and entry.st_uid == 0:
                os.chown(name, who.uid, who.gid, dir_fd=fd, follow_symlinks=False)
    except OSError as err:
        raise RuntimeFailure(
            f"plugin: cannot hand state directory {path} to {who.user}: {err.strerror}"
        ) from None
    finally:
        os.close(fd)


def become(who: Identity) -> None:
    """Switch every thread to `who` for good; RuntimeFailure if any step does not hold."""
    try:
        # Groups first: only root may change them, and uid is the last thing changed.
        os.setgroups(list(who.groups))
        os.setresgid(who.gid, who.gid, who.gid)
        os.setresuid(who.uid, who.uid, who.uid)
    except OSError as err:
        raise RuntimeFailure(f"plugin: cannot switch to user {who.user}: {err.strerror}") from None
    import ctypes  # only the plugin pays for it

    libc = ctypes.CDLL(None, use_errno=True)
    # No exec may gain privileges again (setuid binaries, file capabilities).
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise RuntimeFailure(f"plugin: prctl(NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    # Check what the kernel now says rather than trusting the calls.
    if os.getresuid() != (who.uid,) * 3 or os.getresgid() != (who.gid,) * 3:
        raise RuntimeFailure(f"plugin: the switch to user {who.user} did not take")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise RuntimeFailure("plugin: root could be regained after the switch")


def drop_plugin_privileges(config: Config) -> Identity | None:
    """As the auditd plugin started as root: become `[plugin] user`; otherwise nothing.

    Called once stdin, the state directory and the listener are open, before the
    alert senders start. Returns who the process became, None when it did not change.
    """
    if config.source.kind != "audisp" or os.geteuid() != 0:
        return None
    who = resolve(config.plugin.user, config.plugin.group)
    if who.uid == 0:
        log.warning("plugin: running as root with every privilege ([plugin] user = root)")
        return None
    hand_over_state_dir(config.state.dir, who)
    become(who)
    log.info("plugin: now user %s (uid %d, gid %d), no capabilities", who.user, who.uid, who.gid)
    return who
