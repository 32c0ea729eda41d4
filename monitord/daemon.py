"""`monitord run`: wire source -> parser -> state -> exporters/alerts, and run the loop.

This module is the composition root: it builds each stage once, registers the
stages' own metrics with the exporter, loads the state store into them, and
runs the loop. One thread ingests (source, parser, guest table, alert hand-off)
and hands what changed to the store's commit thread every
`state.checkpoint_interval`; the HTTP server and alert deliveries run in their
own threads.
The loop sleeps in the source's poll until data arrives or a timer of the
scheduler is due. Signal handlers only set flags and wake the loop through a
pipe; the loop acts on them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

from monitord import __version__, privileges
from monitord.alerts import AlertEngine, Identity
from monitord.audit.parser import ParseError
from monitord.config import Config, load_run_config
from monitord.errors import ConfigError
from monitord.logsetup import RateLimitedLog, setup_logging
from monitord.notify import Notifier
from monitord.pipeline import Pipeline
from monitord.scheduler import Scheduler
from monitord.serve import api
from monitord.serve.exporter import make_registry
from monitord.serve.server import WebServer
from monitord.sources.audisp import AudispSource
from monitord.sources.base import Health, Source
from monitord.sources.counters import SourceCounters
from monitord.sources.file import FileSource, check_log_path
from monitord.state import liveness
from monitord.state.metrics import StoreCollector
from monitord.state.store import CommitThread, Loaded, Store, encode_event
from monitord.state.table import GuestTable

log = logging.getLogger("monitord")

EXPIRE_EVERY: Final = 60.0
STATUS_EVERY: Final = 5.0
STALL_AFTER: Final = 30.0
BUSY_RETRY: Final = 0.05  # the previous commit is still being written
COMMIT_WAIT: Final = 30.0  # at shutdown, for the commit in progress
# The scheduler's tasks.
CHECKPOINT, ALERTS, RELOAD, EXPIRE, STATUS, WATCHDOG, RESCAN, PROCESSES = (
    "checkpoint", "alerts", "reload", "expire", "status", "watchdog", "rescan", "processes",
)  # fmt: skip


@dataclass
class Flags:
    """Set by signal handlers and the commit thread, read by the loop."""

    stop: bool = False
    reload: bool = False
    commit_failed: bool = False  # set by the commit thread: retry at the next interval


class Daemon:
    """The running daemon; `run()` returns the exit code."""

    def __init__(
        self,
        config: Config,
        overrides: argparse.Namespace | None = None,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        source_factory: Callable[[Config], Source] | None = None,
        table: GuestTable | None = None,
    ) -> None:
        self.config = config
        self.overrides = overrides
        self.clock = clock
        self.notifier = notifier if notifier is not None else Notifier()
        self.flags = Flags()
        self.source_factory = source_factory
        # The stages, each built once: loading saved state fills them, never replaces
        # them, so whoever holds one (the exporter, the pipeline) keeps the live one.
        self.table = (
            table
            if table is not None
            else GuestTable(config.state, clock=clock, host=config.identity.host)
        )
        self.store: Store | None = None  # opened by run()
        self._commits: CommitThread | None = None
        self.source_counters = SourceCounters(config.source.kind)
        self.alerts = AlertEngine(config.alerts, Identity.from_config(config), clock=clock)
        self.pipeline = Pipeline(self.table, self.alerts, clock=clock, keep_applied=encode_event)
        self.scheduler = Scheduler()
        self.source: Source | None = None
        self.web: WebServer | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._malformed = RateLimitedLog(log, interval=60.0, burst=10)
        self._last_loop = time.monotonic()
        self._dirty = False
        self._records_since_status = 0
        self._last_status = time.monotonic()

    # -- set-up ------------------------------------------------------------------------

    def _on_parse_error(self, err: ParseError, line: bytes) -> None:
        text = line[:200].decode("utf-8", "backslashreplace")
        self._malformed.warning("malformed record (%s): %s", err.reason, text)

    def _make_source(self, config: Config) -> Source:
        if self.source_factory is not None:
            return self.source_factory(config)
        kind = config.source.kind
        counters = self.source_counters
        if kind == "file":
            return FileSource(config.source, counters, self._on_parse_error)
        if kind == "audisp":
            return AudispSource(
                config.source, counters.parse, counters.dropped, self._on_parse_error
            )
        from monitord.sources.journal import JournalSource

        source: Source = JournalSource(config.source, counters, self._on_parse_error)
        return source

    def _open_store(self) -> dict[str, Any] | None:
        """Open the state store, load it into the stages; return the source position."""
        state = self.config.state
        self.store, loaded = Store.open(
            state.dir,
            retention=state.history_retention,
            max_bytes=state.history_max_bytes,
            grace=state.grace,
            clock=self.clock,
        )
        if self.config.source.start != "checkpoint":
            # The saved state is replaced by what this run reads; the history stays.
            self.store.needs_full_state = True
            return None
        if loaded.origin == "fresh":
            log.info("no saved state in %s: building state from the log's start", state.dir)
            return None
        try:
            self._load(loaded)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            self.store.reject(str(err))
            self._start_fresh()
            return None
        log.info(
            "state loaded from %s: %d guests, saved at %s",
            loaded.origin, self.table.guests_tracked,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(loaded.saved_at or 0)),
        )  # fmt: skip
        if loaded.source_kind != self.config.source.kind:
            log.warning(
                "the state was saved reading source %r; keeping it, reading %r afresh",
                loaded.source_kind,
                self.config.source.kind,
            )
            return None
        return loaded.position

    def _load(self, loaded: Loaded) -> None:
        """Fill every stage from what the store loaded; ValueError and the like if it does
        not fit (the caller empties the stages again)."""
        assert self.store is not None
        telemetry = loaded.counters.get("telemetry") or {}
        if not isinstance(telemetry, Mapping):
            raise TypeError(f"telemetry is {type(telemetry).__name__}, not an object")
        # Saved by the store, so not changed: the first commit writes only what is new.
        self.table.restore({**loaded.meta, "guests": list(loaded.guests)}, saved=True)
        self.source_counters.restore(telemetry)
        self.pipeline.restore(telemetry)
        self.store.restore_counters(telemetry)
        self.alerts.counters.restore(telemetry)
        if loaded.alerts:
            self.alerts.restore(loaded.alerts)

    def _start_fresh(self) -> None:
        """Empty every stage a partial load may have filled (in place: others hold them)."""
        self.table.restore({})
        self.source_counters.restore({})
        self.pipeline.restore({})
        self.alerts.counters.restore({})

    def _telemetry_doc(self) -> dict[str, Any]:
        """Each stage's counters, flat: the store's `counters:telemetry` row."""
        assert self.store is not None
        return {
            **self.source_counters.to_json(),
            **self.pipeline.to_json(),
            **self.store.counters_json(),
            **self.alerts.counters.to_json(),
        }

    def _commit_batch(self) -> dict[str, Any]:
        """Everything that changed since the last commit, with the position it ends at.

        Taken in one go between two polls of the source: position, guests, counters,
        alerts and history describe the same instant, so a restart from this commit
        reads on from exactly where its state ends.
        """
        assert self.store is not None
        source = self.source
        full = self.store.needs_full_state
        upserted, deleted = self.table.take_changes(everything=full)
        return {
            "source_kind": self.config.source.kind,
            "position": source.position() if source is not None else None,
            "upserted": upserted,
            "deleted": deleted,
            "meta": self.table.meta_json(),
            "counters": {"telemetry": self._telemetry_doc()},
            "alerts": self.alerts.to_json(),
            "encoded": self.pipeline.take_applied(),
            "full": full,
        }

    def commit_now(self) -> None:
        """Save everything, now, in this thread (shutdown, reload)."""
        if self._commits is not None:
            self._commits.wait(COMMIT_WAIT)
        assert self.store is not None
        self.store.commit(**self._commit_batch())
        self._dirty = False

    def _commit_failed(self) -> None:
        """In the commit thread: wake the loop to schedule the retry."""
        self.flags.commit_failed = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"c")

    def _commit_in_background(self) -> bool:
        """Hand what changed to the commit thread; False while the previous one runs."""
        commits = self._commits
        assert commits is not None
        if commits.busy:
            return False
        ok = commits.submit(**self._commit_batch())
        assert ok, "only this thread submits, and the commit thread was idle"
        self._dirty = False
        return True

    def health(self) -> tuple[bool, str]:
        """What /healthz says: the source's health, and whether the loop is alive."""
        source = self.source
        status = source.health() if source is not None else Health(False, "source not open")
        if not status.ok:
            return False, status.reason
        stalled = time.monotonic() - self._last_loop
        if stalled > STALL_AFTER:
            return False, f"ingestion loop made no progress for {stalled:.0f} s"
        if self.store is not None:
            return self.store.healthy()
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
        position = self._open_store()
        assert self.store is not None
        # What was loaded (10,000 guests: a million objects) lives as long as the daemon and
        # holds no garbage cycles: out of the collector's sight, a full collection does not
        # walk it again and again (each took up to 0.6 s of the ingestion thread).
        gc.freeze()
        self._commits = CommitThread(self.store, on_failure=self._commit_failed)
        self.source = self._make_source(config)
        self.source.open(position)
        stages = (self.source_counters, self.pipeline, StoreCollector(self.store), self.alerts)
        registry = make_registry(self.table, __version__, stages)
        history = api.History(self.store.history, config.identity.host, config.state.max_events)
        self.web = WebServer(config.http, registry, self.table, self.health, history)
        if privileges.plugin_serves_http(config, self.overrides):
            self.web.start()
        # auditd starts the plugin as root: with stdin, state and listener open, become the
        # unprivileged [plugin] user before the alert senders start (monitord/privileges.py).
        privileges.drop_plugin_privileges(config)
        self.alerts.start()
        self._schedule_timers()
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
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _schedule_timers(self) -> None:
        """Every timed job of the loop; each runs only when due, none polls."""
        sched = self.scheduler
        sched.once(CHECKPOINT, self._checkpoint_task)
        sched.once(ALERTS, self._alerts_task)
        sched.once(RELOAD, self._reload)
        # The source re-checks its input at every wake-up; this is the wake-up that makes sure
        # it does so every rescan_interval, on the same grid as the other periodic tasks.
        sched.every(RESCAN, self.config.source.rescan_interval, lambda: None)
        sched.every(EXPIRE, EXPIRE_EVERY, self._expire)
        interval = self.config.state.process_check_interval
        sched.every(PROCESSES, interval, self._check_processes, first=interval)
        if self.notifier.enabled:
            sched.every(STATUS, STATUS_EVERY, self._status)
        ping_every = self.notifier.ping_interval
        if ping_every is not None:
            # Pinged by the loop itself: a stuck stage stops the pings and systemd restarts us.
            sched.every(WATCHDOG, ping_every, self.notifier.watchdog)
        self._arm_alerts()  # alerts restored from the checkpoint

    def _loop(self) -> None:
        sched = self.scheduler
        wake = [self._wake_r]
        while not self.flags.stop:
            source = self.source
            assert source is not None
            # Idle, the loop sleeps until a timer is due: the source's safety re-check, a
            # checkpoint of unsaved state, an alert to resolve or re-send, a ping.
            timeout = sched.timeout(self.config.source.rescan_interval)
            live = source.caught_up
            records = source.poll(timeout, wake)
            self._drain_wake()
            if records:
                self.pipeline.apply(records, live)
                self._records_since_status += len(records)
                self._mark_dirty()
                self._arm_alerts()
            self._last_loop = time.monotonic()
            if source.take_switch():
                self._mark_dirty()
                sched.schedule(CHECKPOINT)  # checkpoint at once on rotation
            if self.flags.reload:
                self.flags.reload = False
                sched.schedule(RELOAD)
            if self.flags.commit_failed:
                self.flags.commit_failed = False
                self._mark_dirty()  # the store kept the batch; try again in an interval
            sched.run_due()
            if source.finished:
                log.info("the plugin pipe was closed: stopping")
                break

    # -- the timers ----------------------------------------------------------------------

    def _mark_dirty(self) -> None:
        """Unsaved state: checkpoint `checkpoint_interval` after the last one (or now)."""
        self._dirty = True
        sched = self.scheduler
        if not sched.pending(CHECKPOINT):
            last = sched.last_run(CHECKPOINT)
            interval = self.config.state.checkpoint_interval
            sched.schedule_at(CHECKPOINT, 0.0 if last is None else last + interval)

    def _checkpoint_task(self) -> None:
        if self._dirty and not self._commit_in_background():
            self.scheduler.schedule(CHECKPOINT, BUSY_RETRY)

    def _arm_alerts(self) -> None:
        """Wake the loop when the alert engine has work (resolve, re-send); never otherwise."""
        due = self.alerts.next_due()
        if due is not None:
            self.scheduler.schedule(ALERTS, due - self.clock())

    def _alerts_task(self) -> None:
        self.alerts.tick(self.clock())
        self._arm_alerts()

    def _check_processes(self) -> None:
        """Report this host's running guests whose process is gone (docs/INTERFACE.md,
        `process_gone`): libvirt writes no stop for a QEMU that died while libvirtd was
        down. Only once caught up: an old log names processes long gone."""
        source = self.source
        if source is None or not source.caught_up:
            return
        for key, vm_pid, started_at in self.table.running_processes():
            gone = liveness.check(vm_pid, started_at) is liveness.Liveness.GONE
            if self.table.set_process_gone(key, vm_pid, gone) and gone:
                g = self.table.guest_document(key[1], key[0]) or {}
                log.warning(
                    "guest %s (%s) is running according to the audit log, but its process "
                    "%d is gone", g.get("name"), key[1], vm_pid,
                )  # fmt: skip
                self.alerts.process_gone(key[1], g.get("name"), g.get("virt"), vm_pid)
                self._mark_dirty()

    def _expire(self) -> None:
        # Age is judged by record time, so replaying an old log forgets nothing early.
        newest = self.pipeline.last_record_time
        if newest is not None and self.table.expire(newest):
            self._mark_dirty()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _status(self) -> None:
        mono = time.monotonic()
        rate = self._records_since_status / max(mono - self._last_status, 1e-3)
        self._records_since_status, self._last_status = 0, mono
        last = self.pipeline.last_record_time
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
        self.table.host = new.identity.host
        self.alerts.reconfigure(new.alerts, Identity.from_config(new))
        self._arm_alerts()
        if new.source != old.source and old.source.kind == "audisp":
            # A second reader on auditd's pipe would split the stream between two queues.
            log.warning("source settings of the audisp plugin change on restart only")
        elif new.source != old.source:
            # Save where we are, then reopen the (new) source there.
            self.commit_now()
            assert self.source is not None
            position = None
            if new.source.kind == old.source.kind and new.source.path == old.source.path:
                position = self.source.position()
            self.source.close()
            self.source_counters.kind = new.source.kind
            self.source = self._make_source(new)
            self.source.open(position)
        if self.web is not None:
            self.web.reload(new.http)  # TLS files and users re-read; listen on restart only
        log.info("configuration reloaded")
        self.notifier.ready()

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.commit_now()
        self.alerts.close(self.config.alerts.drain_timeout)
        self.commit_now()  # alerts delivered during the drain are no longer pending
        if self._commits is not None:
            self._commits.close(COMMIT_WAIT)
        if self.web is not None:
            self.web.stop()
        if self.source is not None:
            self.source.close()
        if self.store is not None:
            self.store.close()
        stats = self.source_counters.parse
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
    # A state directory that cannot be written does not stop the daemon: the store runs
    # from memory, retries, and /healthz says why after state.commit_grace.
    daemon = Daemon(config, overrides=args)
    return daemon.run()
