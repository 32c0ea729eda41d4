"""The `monitord` command line (docs/INTERFACE.md, "Command line")."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from monitord import __version__
from monitord.errors import RuntimeFailure, UserError


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file")
    p.add_argument("--source", choices=("file", "audisp", "journal"), help="record source")
    p.add_argument("--audit-log", metavar="PATH", help="audit log to follow (source file)")
    p.add_argument("--journal-dir", metavar="DIR", help="journal files (source journal)")
    p.add_argument("--listen", metavar="HOST:PORT", help="HTTP listener (default 127.0.0.1:9781)")
    p.add_argument("--state-dir", metavar="DIR", help="checkpoint directory")
    p.add_argument(
        "--start",
        choices=("checkpoint", "beginning", "end"),
        help="where to begin reading (default checkpoint)",
    )
    p.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (docs/INTERFACE.md: one-line message, exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """--version with the parser's path (c or python), imported only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        from monitord.audit.parser import ACCELERATOR

        print(f"monitord {__version__} (parser: {ACCELERATOR})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="monitord",
        description="Follow libvirt's VIRT_* audit records; serve guest state, metrics and alerts.",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="the daemon")
    _add_run_flags(run)

    demo = sub.add_parser("demo", help="a live demo on a bundled, realistic stream")
    demo.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:9781")
    demo.add_argument("--speed", type=float, default=1.0, metavar="X", help="time acceleration")
    demo.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    demo.add_argument("--no-table", action="store_true", help="do not draw the live table")

    parse = sub.add_parser("parse", help="print libvirt records as JSON Lines")
    parse.add_argument("files", nargs="*", metavar="FILE", help="audit logs; none or - is stdin")

    replay = sub.add_parser("replay", help="the whole pipeline over existing logs, no alerts")
    replay.add_argument("files", nargs="*", metavar="FILE", help="audit logs, oldest first")
    replay.add_argument("--json", action="store_true", help="print the /api/v1/guests document")

    status = sub.add_parser("status", help="the guest table of a running daemon")
    status.add_argument("--url", default="http://127.0.0.1:9781", help="the daemon's listener")
    status.add_argument("--json", action="store_true", help="print the /api/v1/guests document")
    status.add_argument("--ca-file", metavar="FILE", help="CA certificate(s) to verify https")
    status.add_argument("--cert", metavar="FILE", help="client certificate (PEM)")
    status.add_argument("--key", metavar="FILE", help="client certificate's key (PEM)")
    status.add_argument("--user", metavar="NAME", help="basic auth user")
    status.add_argument("--password-file", metavar="FILE", help="basic auth password")

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file", metavar="FILE")

    history = sub.add_parser(
        "history",
        help="recorded libvirt events of a guest or all guests",
        description="Recorded libvirt events, oldest first. " + _TIMES,
    )
    _add_history_flags(history)
    history.add_argument("--until", metavar="T", help="only events up to T")
    history.add_argument("--failed", action="store_true", help="only failed records")
    history.add_argument("--json", action="store_true", help='print {"events": [...]}')

    sessions = sub.add_parser(
        "sessions",
        help="each run of a guest, start to stop",
        description="Each run of a guest (start to stop): times, reasons, duration, resources "
        "at start, changes, failures; `no record` ends a run whose stop libvirt never wrote. "
        + _TIMES,
    )
    _add_history_flags(sessions)
    sessions.add_argument("--until", metavar="T", help="only runs under way before T")
    sessions.add_argument("--json", action="store_true", help='print {"sessions": [...]}')
    return parser


_TIMES = (
    "Sources: the store (--state-dir, default the configured state directory; read-only, "
    "safe while the daemon runs), a running daemon (--url) or audit logs (--from-log). "
    "Times T: epoch seconds (1700000000), ISO 8601 (2026-11-26, 2026-11-26T16:30:00Z; local "
    "time without a zone) or a time ago (-1h, 90m, 2d)."
)


def _add_history_flags(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--state-dir", metavar="DIR", help="the store (default: the configured)")
    where.add_argument("--url", metavar="URL", help="a running daemon's listener")
    where.add_argument("--from-log", nargs="+", metavar="FILE", help="audit logs, oldest first")
    p.add_argument("--config", metavar="FILE", help="config file naming the state directory")
    p.add_argument("--guest", metavar="NAME|UUID", help="one guest (every guest by default)")
    p.add_argument("--since", metavar="T", help="from T: epoch seconds, ISO 8601, or ago (-1h, 2d)")


# Each command lives in the module of its stage; importing lazily keeps `parse` fast.
COMMANDS: dict[str, str] = {
    "run": "monitord.daemon:main",
    "parse": "monitord.commands.parse:main",
    "replay": "monitord.commands.replay:main",
    "status": "monitord.commands.status:main",
    "check-config": "monitord.config:check_config_main",
    "demo": "monitord.commands.demo:main",
    "history": "monitord.commands.history:main",
    "sessions": "monitord.commands.sessions:main",
}


def _dispatch(args: argparse.Namespace) -> int:
    module_name, _, func_name = COMMANDS[args.command].partition(":")
    handler: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(module_name), func_name
    )
    return handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (0 ok, 1 runtime failure, 2 user error)."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UserError as err:
        print(f"monitord: {err}", file=sys.stderr)
        return err.exit_code
    except RuntimeFailure as err:
        print(f"monitord: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        # `monitord parse F | head`: the reader went away; that is not an error.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
