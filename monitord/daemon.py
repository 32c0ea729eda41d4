"""`monitord run`: wire source -> parser -> state -> exporters/alerts, and run the loop.

One thread ingests (source, parser, guest table, alert hand-off, checkpoint);
the HTTP server and alert deliveries run in their own threads. Signal handlers
only set flags and wake the loop through a pipe; the loop acts on them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

from monitord import __version__
from monitord.alerts import AlertEngine
from monitord.audit.parser import ParseError
from monitord.config import Config, load_run_config
from monitord.errors import ConfigError, RuntimeFailure
from monitord.logsetup import RateLimitedLog, setup_logging
from monitord.notify import Notifier
from monitord.pipeline import Pipeline
from monitord.serve.exporter import make_registry
from monitord.serve.server import WebServer
from monitord.sources.audisp import AudispSource
from monitord.sources.base import Health, Source
from monitord.sources.file import FileSource, check_log_path
from monitord.state.checkpoint import BackgroundSave, CheckpointStore
from monitord.state.table import GuestTable
from monitord.telemetry import Telemetry

log = logging.getLogger("monitord")

TICK: Final = 1.0  # the loop wakes at least this often (alerts, watchdog, status)
EXPIRE_EVERY: Final = 60.0
STATUS_EVERY: Final = 5.0
STALL_AFTER: Final = 30.0


@dataclass
class Flags:
    """Set by signal handlers, read by the loop."""

    stop: bool = False
    reload: bool = False


class Daemon:
    """The running daemon; `run()` returns the exit code."""

    def __init__(
        self,
        config: Config,
        overrides: argparse.Namespace | None = None,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        source_factory: Callable[[Config], Source] | None = None,
    ) -> None:
        self.config = config
        self.overrides = overrides
        self.clock = clock
        self.notifier = notifier if notifier is not None else Notifier()
        self.flags = Flags()
        self.source_factory = source_factory
        self.telemetry = Telemetry(source=config.source.kind)
        self.table = GuestTable(config.state, clock=clock)
        self.store = CheckpointStore(config.state.dir)
        self._background = BackgroundSave(self.store, clock)
        self.alerts: AlertEngine | None = None
        self.source: Source | None = None
        self.web: WebServer | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._malformed = RateLimitedLog(log, interval=60.0, burst=10)
        self._last_loop = time.monotonic()
        self._dirty = False
        self._records_since_status = 0

    # -- set-up ------------------------------------------------------------------------

    def _on_parse_error(self, err: ParseError, line: bytes) -> None:
        text = line[:200].decode("utf-8", "backslashreplace")
        self._malformed.warning("malformed record (%s): %s", err.reason, text)

    def _make_source(self, config: Config) -> Source:
        if self.source_factory is not None:
            return self.source_factory(config)
        kind = config.source.kind
        stats = self.telemetry.parse
        if kind == "file":
            return FileSource(config.source, stats, self.telemetry.reopens, self._on_parse_error)
        if kind == "audisp":
            return AudispSource(config.source, stats, self.telemetry.dropped, self._on_parse_error)
        from monitord.sources.journal import JournalSource

        source: Source = JournalSource(
            config.source, stats, self._on_parse_error, reopens=self.telemetry.reopens
        )
        return source

    def _restore(self) -> dict[str, Any] | None:
        """Load the checkpoint into state, counters and alerts; return the source position."""
        if self.config.source.start != "checkpoint":
            return None
        doc = self.store.load()
        if doc is None:
            log.info("no checkpoint in %s: building state from the log's start", self.store.dir)
            return None
        try:
            self.table.restore(doc["state"])
            self.telemetry.restore(doc.get("telemetry") or {})
            if self.alerts is not None and doc.get("alerts"):
                self.alerts.restore(doc["alerts"])
        except (KeyError, TypeError, ValueError) as err:
            log.error("checkpoint %s does not fit (%s); starting fresh", self.store.path, err)
            self.table = GuestTable(self.config.state, clock=self.clock)
            self.telemetry = Telemetry(source=self.config.source.kind)
            return None
        self.telemetry.source = self.config.source.kind
        self.telemetry.checkpoint_time = doc.get("saved_at")
        source_doc = doc.get("source") or {}
        if source_doc.get("kind") != self.config.source.kind:
            log.warning(
                "checkpoint was written for source %r; keeping its state, reading %r afresh",
                source_doc.get("kind"),
                self.config.source.kind,
            )
            return None
        position = source_doc.get("position")
        return position if isinstance(position, dict) else None

    def _checkpoint_doc(self) -> dict[str, Any]:
        source = self.source
        return {
            "source": {
                "kind": self.config.source.kind,
                "position": source.position() if source is not None else None,
            },
            "state": self.table.to_json(),
            "telemetry": self.telemetry.to_json(),
            "alerts": self.alerts.to_json() if self.alerts is not None else None,
        }

    def checkpoint(self) -> None:
        """Save position and state together, now, in this thread (start-up and shutdown)."""
        self._background.wait()
        try:
            self.store.save(self._checkpoint_doc())
        except OSError as err:
            self.telemetry.checkpoint_errors += 1
            log.error("cannot write checkpoint %s: %s", self.store.path, err.strerror)
            return
        self.telemetry.checkpoint_time = self.clock()
        self._dirty = False

    def checkpoint_in_background(self) -> bool:
        """Snapshot by fork(): the child serialises and writes while ingestion goes on.

        Serialising 10,000 guests takes seconds; a forked child sees a copy-on-write
        image of the state and the position at one instant, so the ingestion thread
        pauses only for the fork. Returns False while the previous one still runs.
        """
        started = self._background.start(self._checkpoint_doc, self._in_child)
        if started:
            self._dirty = False
        return started

    def _in_child(self) -> None:
        # Only the forking thread lives on in the child: locks other threads held are void.
        self.table.after_fork()
        self.telemetry.after_fork()
        if self.alerts is not None:
            self.alerts.after_fork()

    def _reap_checkpoint(self) -> None:
        outcome = self._background.poll()
        if outcome is None:
            return
        ok, taken_at = outcome
        if ok:
            self.telemetry.checkpoint_time = taken_at
        else:
            self.telemetry.checkpoint_errors += 1
            self._dirty = True  # try again at the next interval
            log.error("the background checkpoint failed (see the error above); will retry")

    def health(self) -> tuple[bool, str]:
        """What /healthz says: the source's health, and whether the loop is alive."""
        source = self.source
        status = source.health() if source is not None else Health(False, "source not open")
        if not status.ok:
            return False, status.reason
        stalled = time.monotonic() - self._last_loop
        if stalled > STALL_AFTER:
            return False, f"ingestion loop made no progress for {stalled:.0f} s"
        return True, "ok"

    def _install_signals(self) -> None:
        def on_reload(signum: int, frame: FrameType | None) -> None:
            self.flags.reload = True

        # Until the loop runs, SIGTERM and SIGINT keep their default action: they end the
        # process even inside a blocked open() (a FIFO, a hung NFS mount), where a handler
        # that sets a flag would only run once the call returns. Nothing needs saving yet.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, on_reload)
        # A handler (doing nothing) makes a finished checkpoint child wake the loop to be reaped.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _install_stop_signals(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.flags.stop = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        if threading.current_thread() is threading.main_thread():
            self._install_signals()
        listen_host, listen_port = config.http.listen.rsplit(":", 1)
        base_url = f"http://{listen_host}:{listen_port}"
        self.alerts = AlertEngine(config.alerts, self.telemetry, base_url, clock=self.clock)
        position = self._restore()
        self.source = self._make_source(config)
        self.source.open(position)
        pipeline = Pipeline(self.table, self.telemetry, self.alerts, clock=self.clock)
        registry = make_registry(self.table, self.telemetry, __version__)
        self.web = WebServer(config.http, registry, self.table, self.health)
        self.web.start()
        self.alerts.start()
        log.info(
            "monitord %s: source %s, listening on %s, state in %s",
            __version__,
            config.source.kind,
            config.http.listen,
            config.state.dir,
        )
        if threading.current_thread() is threading.main_thread():
            self._install_stop_signals()  # from here on, a stop saves state first
        self.notifier.ready()
        try:
            self._loop(pipeline)
        finally:
            self._shutdown()
        return 0

    def _loop(self, pipeline: Pipeline) -> None:
        next_tick = next_checkpoint = next_expire = next_status = 0.0
        last_status = time.monotonic()
        ping_every = self.notifier.ping_interval
        next_ping = 0.0
        wake = [self._wake_r]
        while not self.flags.stop:
            source = self.source
            assert source is not None
            mono = time.monotonic()
            # Idle, the loop sleeps as long as the source's safety re-check: no faster wake-ups
            # unless a checkpoint, an alert tick or a watchdog ping is due.
            timeout = self.config.source.rescan_interval
            if self._dirty:
                timeout = min(timeout, max(0.0, next_checkpoint - mono))
            if self._alerts_busy():
                timeout = min(timeout, max(0.0, next_tick - mono))
            if ping_every is not None:
                timeout = min(timeout, max(0.0, next_ping - mono))
            live = source.caught_up
            records = source.poll(timeout, wake)
            self._drain_wake()
            if records:
                pipeline.apply(records, live)
                self._dirty = True
                self._records_since_status += len(records)
            self._last_loop = mono = time.monotonic()
            now = self.clock()
            if mono >= next_tick:
                next_tick = mono + TICK
                if self.alerts is not None:
                    self.alerts.tick(now)
            if source.take_switch():
                self._dirty = True
                next_checkpoint = 0.0  # checkpoint at once on rotation
            self._reap_checkpoint()
            if self._dirty and mono >= next_checkpoint:
                if self.checkpoint_in_background():
                    next_checkpoint = mono + self.config.state.checkpoint_interval
                else:
                    next_checkpoint = mono + 0.1  # the previous one is still being written
            if mono >= next_expire:
                next_expire = mono + EXPIRE_EVERY
                # Age is judged by record time, so replaying an old log forgets nothing early.
                newest = self.telemetry.last_record_time
                if newest is not None and self.table.expire(newest):
                    self._dirty = True
            if mono >= next_status:
                self._status(mono - last_status)
                last_status, next_status = mono, mono + STATUS_EVERY
            if ping_every is not None and mono >= next_ping:
                self.notifier.watchdog()
                next_ping = mono + ping_every
            if self.flags.reload:
                self.flags.reload = False
                self._reload()
            if source.finished:
                log.info("the plugin pipe was closed: stopping")
                break

    def _alerts_busy(self) -> bool:
        """Alerts firing or queued need the once-a-second tick (resolve, re-send, queue gauges)."""
        if self.alerts is None:
            return False
        return self.alerts.firing_count() > 0 or any(self.telemetry.alert_queue.values())

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _status(self, elapsed: float) -> None:
        rate = self._records_since_status / max(elapsed, 1e-3)
        self._records_since_status = 0
        last = self.telemetry.last_record_time
        lag = f"{max(0.0, self.clock() - last):.1f}s" if last is not None else "n/a"
        guests = self.table.guests_tracked
        ok, reason = self.health()
        self.notifier.status(
            f"{rate:.0f} records/s, {guests} guests, last record {lag} ago"
            + ("" if ok else f"; unhealthy: {reason}")
        )

    def _reload(self) -> None:
        """SIGHUP: validate the new config first; keep the old one if it is bad."""
        self.notifier.reloading()
        try:
            new = load_run_config(self.overrides or argparse.Namespace())
        except ConfigError as err:
            log.error("reload refused, keeping the running configuration: %s", err)
            self.notifier.ready()
            return
        old = self.config
        self.config = new
        setup_logging(new.logging, plugin=new.source.kind == "audisp")
        self.table.config = new.state  # limits apply from the next record on
        if self.alerts is not None:
            self.alerts.reconfigure(new.alerts)
        if new.source != old.source and old.source.kind == "audisp":
            # A second reader on auditd's pipe would split the stream between two queues.
            log.warning("source settings of the audisp plugin change on restart only")
        elif new.source != old.source:
            # Save where we are, then reopen the (new) source at that checkpoint.
            self.checkpoint()
            assert self.source is not None
            self.source.close()
            position = None
            if new.source.kind == old.source.kind and new.source.path == old.source.path:
                doc = self.store.load()
                position = ((doc or {}).get("source") or {}).get("position")
            self.telemetry.source = new.source.kind
            self.source = self._make_source(new)
            self.source.open(position)
        if self.web is not None:
            self.web.reload(new.http)  # TLS files and users re-read; listen on restart only
        log.info("configuration reloaded")
        self.notifier.ready()

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.checkpoint()
        if self.alerts is not None:
            self.alerts.close(self.config.alerts.drain_timeout)
            self.checkpoint()  # alerts delivered during the drain are no longer pending
        if self.web is not None:
            self.web.stop()
        if self.source is not None:
            self.source.close()
        stats = self.telemetry.parse
        log.info(
            "stopped: %d lines, %d libvirt records, %d malformed, %d guests tracked",
            stats.lines,
            stats.records,
            sum(stats.errors.values()),
            self.table.guests_tracked,
        )


def main(args: argparse.Namespace) -> int:
    """`monitord run`."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # see Daemon._install_signals
    config = load_run_config(args)
    if config.source.kind == "file":
        check_log_path(config.source.path)  # a FIFO, a symlink, ...: exit 2, not a hang
    setup_logging(config.logging, plugin=config.source.kind == "audisp")
    state_dir = Path(config.state.dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RuntimeFailure(f"cannot create state directory {state_dir}: {err.strerror}") from None
    if not os.access(state_dir, os.W_OK):
        raise RuntimeFailure(f"state directory {state_dir} is not writable")
    daemon = Daemon(config, overrides=args)
    return daemon.run()
