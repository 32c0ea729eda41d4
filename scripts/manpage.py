#!/usr/bin/env python3
"""Write monitord(1) in roff to stdout, from the command line parser itself.

Generated at build time (debian/rules, scripts/install.sh) so the page lists exactly the
commands and options `monitord --help` has; the prose around them is written here.
Run from a checkout or an unpacked sdist: python3 scripts/manpage.py > monitord.1
The date is SOURCE_DATE_EPOCH's (reproducible builds), else today.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitord import __version__
from monitord.commands.cli import build_parser


def esc(text: str) -> str:
    """Escape text for roff: backslashes, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def option_line(action: argparse.Action) -> str:
    """`--flag VALUE` or `FILE` in bold/italic, as man pages set them."""
    if not action.option_strings:
        return f"\\fI{esc(action.metavar or action.dest)}\\fR"
    names = ", ".join(f"\\fB{esc(s)}\\fR" for s in action.option_strings)
    if action.nargs == 0:
        return names
    if action.choices:
        value = "|".join(str(c) for c in action.choices)
    else:
        value = str(action.metavar or action.dest.upper())
    return f"{names} \\fI{esc(value)}\\fR"


def usage(parser: argparse.ArgumentParser) -> str:
    text = parser.format_usage().removeprefix("usage: ").replace("[-h] ", "")
    return " ".join(text.split())


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:  # argparse offers no public way to list subcommands
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


SECTIONS_AFTER = r"""
.SH CONFIGURATION
\fBmonitord run\fR reads \fI/etc/monitord/monitord.toml\fR (or \fB\-\-config\fR \fIFILE\fR);
its flags override the file. The installed file lists every key with its default and
what it does. Unknown keys and bad values are errors naming the key and line:
\fBmonitord check\-config\fR \fIFILE\fR checks a file before
\fBsystemctl reload monitord\fR (SIGHUP) applies it; a bad file keeps the running configuration.
.SH RUNNING
As a service: \fBmonitord.service\fR runs \fBmonitord run\fR as the \fBmonitord\fR user,
reading the root-owned audit log through the ambient capability CAP_DAC_READ_SEARCH.
.PP
As an auditd plugin: \fI/etc/audit/plugins.d/monitord.conf\fR (set \fBactive = yes\fR,
then \fBservice auditd reload\fR) makes auditd start \fBmonitord run \-\-source=audisp\fR
as root and feed it every record on standard input. Once standard input, the state
directory and the listener are open, monitord becomes the \fB[plugin] user\fR
(\fBmonitord\fR) with no capabilities. The plugin serves HTTP only with
\fB[plugin] http = true\fR. Run monitord one way or the other, not both.
.SH SIGNALS
.TP
.B SIGTERM, SIGINT
Stop: write the state, give pending alerts \fBalerts.drain_timeout\fR, exit 0.
.TP
.B SIGHUP
Reload the configuration file (validated first).
.SH EXIT STATUS
.TP
.B 0
Success.
.TP
.B 1
Runtime failure (a file or address that cannot be used, a failed start).
.TP
.B 2
User error: a bad flag, a bad configuration, an unreadable input named on the
command line; always a one\-line message on standard error.
.SH FILES
.TP
.I /etc/monitord/monitord.toml
The configuration.
.TP
.I /var/lib/monitord/
The state: source position, guest state, counters, pending alerts, history.
.TP
.I /var/log/audit/audit.log
The audit log followed by default.
.TP
.I /etc/audit/plugins.d/monitord.conf
The auditd plugin configuration (inactive as installed).
.TP
.I /usr/share/monitord/
Prometheus alerting rules and a Grafana dashboard.
.SH SEE ALSO
.BR auditd (8),
.BR auditd\-plugins (5),
.BR systemd.exec (5),
.BR prometheus (1)
"""


def render(date: str) -> str:
    parser = build_parser()
    out = [
        f'.TH MONITORD 1 "{date}" "monitord {__version__}" "User Commands"',
        ".nh",
        ".ad l",
        ".SH NAME",
        "monitord \\- follow libvirt's audit records; serve guest state, metrics and alerts",
        ".SH SYNOPSIS",
    ]
    commands = subcommands(parser)
    for name, _, sub in commands:
        out += [".PP", f"\\fBmonitord {name}\\fR " + esc(usage(sub).split(" ", 2)[-1])]
    out += [".PP", "\\fBmonitord \\-\\-version\\fR | \\fB\\-\\-help\\fR"]
    out += [
        ".SH DESCRIPTION",
        esc(parser.description or ""),
        "It reads the VIRT_CONTROL, VIRT_RESOURCE and VIRT_MACHINE_ID records libvirt writes",
        "to the Linux audit trail (from the audit log, auditd's plugin pipe or the journal),",
        "keeps the state of every guest, serves Prometheus metrics and a JSON API over HTTP",
        "(default \\fIhttp://127.0.0.1:9781/\\fR), and raises alerts on failed operations.",
        ".SH COMMANDS",
    ]
    for name, help_text, sub in commands:
        out += [".SS " + esc(f"monitord {name}"), esc(help_text[:1].upper() + help_text[1:]) + "."]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = action.help or ""
            shown = action.default not in (None, False, argparse.SUPPRESS)
            if shown and action.option_strings and "default" not in text:
                text += f" (default {action.default})"
            out += [".TP", option_line(action), esc(text.strip())]
    out.append(SECTIONS_AFTER.strip())
    return "\n".join(out) + "\n"


def main() -> int:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    stamp = time.gmtime(int(epoch)) if epoch else time.gmtime()
    sys.stdout.write(render(time.strftime("%Y-%m-%d", stamp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
