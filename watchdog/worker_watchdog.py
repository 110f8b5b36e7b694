#!/usr/bin/env python3
"""pero watchdog: moves workers between stage queues by load.

Several instances may run; a kazoo Election (ZooKeeper) makes exactly one active.  When
the active one dies its ZooKeeper session expires and a standby takes over within the
session timeout (at once when it stops cleanly).  An instance that loses its session
stops acting immediately and stands for election again.  Each instance keeps its session
in a file under its state directory (libs/zk_session.py): a watchdog restarted after a
crash closes its dead predecessor's session first, so it is active at once instead of
waiting for that session to expire.

Each round (every `interval` seconds) reads the state (state.py), asks the pure
planner (planning.py) what to do and writes the moves (the workers' `queue` and
`unlock_time` nodes) and the stages' `waiting_since`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence

from pero_worker.libs.backoff import Backoff
from pero_worker.libs.config import ConfigError
from pero_worker.libs.daemon import StopRequest, configuration_error, run_guarded, setup_logging
from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.metrics import MetricsError, start_metrics_server
from pero_worker.libs.zk import (
    KazooException,
    KazooState,
    NoAuthError,
    ZkConnectionError,
    ZkLoginRefused,
    ZooKeeper,
    describe_zk_error,
)
from pero_worker.libs.zk_session import SessionFile, SessionFileBusy, close_stale_session
from pero_worker.watchdog import metrics as watchdog_metrics
from pero_worker.watchdog import report
from pero_worker.watchdog.planning import Move, plan
from pero_worker.watchdog.settings import ELECTION_PATH, WatchdogSettings, build_parser, build_settings
from pero_worker.watchdog.state import Snapshot, StateReader, apply_plan

log = logging.getLogger("pero_worker.watchdog")

SESSION_SLOTS = 16   # watchdogs of one ZooKeeper tree on one host, each with its own session file


class Watchdog:
    def __init__(self, settings: WatchdogSettings, stop: StopRequest | None = None) -> None:
        self.settings = settings
        self.identifier = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = stop or StopRequest()
        self.stopping.on_stop(self._cancel_election)
        self.session_lost = threading.Event()
        self.suspended = threading.Event()
        self.zk: ZooKeeper | None = None
        self._election = None
        self.rounds = 0
        self.recent_moves: tuple[Move, ...] = ()   # this instance's moves still locked (anti-oscillation)
        self.stage_gauges = watchdog_metrics.StageGauges()

    # --- lifecycle ----------------------------------------------------------------
    def stop(self) -> None:
        """Safe from a signal handler: the main loop notices within one interval."""
        self.stopping.stop("stop requested")

    def _cancel_election(self) -> None:
        """A standby blocks in the election: cancel it so that a stop is noticed at once."""
        election = self._election
        if election is not None:
            try:
                election.cancel()
            except Exception:  # cancelling a finished election is harmless
                pass

    def _on_zk_state(self, state: str) -> None:
        # kazoo's thread: only flip flags.
        if state == KazooState.LOST:
            self.session_lost.set()
            self.suspended.set()
        elif state == KazooState.SUSPENDED:
            self.suspended.set()
        else:
            self.suspended.clear()

    def _connect(self) -> ZooKeeper | None:
        backoff = Backoff(initial=0.5, cap=5.0)
        last = ""
        while not self.stopping.requested:
            try:
                return ZooKeeper(self.settings.connection, session_timeout=self.settings.session_timeout).start()
            except ZkConnectionError as error:
                delay = backoff.delay()
                if str(error) != last:
                    log.error("%s; retrying every %.0f s at most", error, backoff.cap)
                    last = str(error)
                self.stopping.wait(delay)
        return None

    def _claim_session_file(self) -> SessionFile | None:
        """The first free slot of this host's watchdogs for this ZooKeeper tree (several may run here).

        A free slot whose file names a session belonged to a watchdog that died: that session is closed
        once we are connected, so its election node goes at once instead of after the session timeout.
        """
        conn = self.settings.connection
        key = hashlib.sha256(f"{sorted(map(str, conn.zookeeper_servers))}{conn.zookeeper_chroot or ''}"
                             .encode()).hexdigest()[:12]
        for slot in range(SESSION_SLOTS):
            candidate = SessionFile(self.settings.state_directory, f"watchdog-{key}-{slot}")
            try:
                candidate.acquire()
            except SessionFileBusy:
                continue
            except OSError as error:
                log.warning("cannot keep the session in %s (%s): a restart after a crash waits for the old "
                            "session to expire", self.settings.state_directory, error.strerror or error)
                return None
            return candidate
        log.warning("more than %d watchdogs run here on this ZooKeeper tree; this one keeps no session file",
                    SESSION_SLOTS)
        return None

    def _close_stale_session(self, zk: ZooKeeper, session_file: SessionFile) -> None:
        stale = session_file.load()
        if stale is not None and stale[0] != zk.session_id \
                and close_stale_session(self.settings.connection, stale, timeout=3.0):
            log.info("closed the ZooKeeper session 0x%x left by a watchdog that died here", stale[0])
        session_file.save(zk.session_credentials)

    def run(self) -> int:
        log.info("watchdog %s starting", self.identifier)
        session_file = self._claim_session_file()
        try:
            return self._run(session_file)
        finally:
            if session_file is not None:
                session_file.release()

    def _run(self, session_file: SessionFile | None) -> int:
        zk = self._connect()
        if zk is None:
            return ExitCode.OK
        self.zk = zk
        zk.add_state_listener(self._on_zk_state)
        clean = False
        try:
            if session_file is not None:
                self._close_stale_session(zk, session_file)
            backoff = Backoff(initial=0.5, cap=5.0)
            last_reason = ""
            while not self.stopping.requested:
                self.session_lost.clear()
                try:
                    if session_file is not None:
                        session_file.save(zk.session_credentials)   # a new session after an expiry
                    zk.ensure_path(ELECTION_PATH)
                    self._election = zk.election(ELECTION_PATH, self.identifier)
                    if self.stopping.requested:   # a stop between the check above and the election
                        break
                    log.info("watchdog %s standing for election", self.identifier)
                    self._election.run(self._lead)
                except Exception as error:  # connection loss, cancelled election, expired session, NoAuth
                    if self.stopping.requested:
                        break
                    reason = describe_zk_error(error) if isinstance(error, KazooException) else \
                        f"{type(error).__name__}: {error}"
                    if reason != last_reason:
                        log.warning("election interrupted (%s); standing again (every %.0f s at most)",
                                    reason, backoff.cap)
                        last_reason = reason
                    self.stopping.wait(backoff.delay())
                else:
                    backoff.reset()
                    last_reason = ""
            clean = True
        finally:
            zk.stop()   # closes the session: the election node goes at once and a standby takes over
            if clean and session_file is not None:
                session_file.clear()
        log.info("watchdog %s stopped (%s) after %d rounds as active", self.identifier,
                 self.stopping.reason or "stop requested", self.rounds)
        return ExitCode.OK

    # --- active -----------------------------------------------------------------------
    def _lead(self) -> None:
        assert self.zk is not None
        log.info("watchdog %s is now ACTIVE", self.identifier)
        watchdog_metrics.LEADER.set(1)
        reader = StateReader(self.zk, self.settings.connection, management_interval=self.settings.management_interval)
        # Two failed rounds in a row may be a hiccup; from the third on, rounds slow down (up to 5 s apart).
        backoff = Backoff(initial=self.settings.interval, cap=max(5.0, self.settings.interval))
        failures = 0
        try:
            while not self.stopping.requested and not self.session_lost.is_set():
                started = time.monotonic()
                if not self.suspended.is_set():
                    try:
                        self.round(reader)
                        failures = 0
                        backoff.reset()
                    except Exception as error:  # ZooKeeper hiccup, a node removed under us ...
                        failures += 1
                        watchdog_metrics.ROUND_FAILURES.inc()
                        reason = describe_zk_error(error) if isinstance(error, KazooException) else \
                            f"{type(error).__name__}: {error}"
                        log.error("planning round failed (%s)", reason, exc_info=self.settings.debug)
                        if failures >= 3:
                            self.stopping.wait(backoff.delay())
                elapsed = time.monotonic() - started
                self.stopping.wait(max(0.0, self.settings.interval - elapsed))
        finally:
            reader.close()
            watchdog_metrics.LEADER.set(0)
            self.stage_gauges.clear()
        if self.session_lost.is_set():
            log.warning("ZooKeeper session lost: no longer active")
        else:
            log.info("watchdog %s stepping down", self.identifier)

    def round(self, reader: StateReader) -> None:
        assert self.zk is not None
        now = time.time()
        started = time.perf_counter()
        snapshot = reader.snapshot(now)
        if not snapshot.depth_source:
            log.debug("no queue depths this round; not moving anybody")
            return
        recent = tuple(m for m in self.recent_moves if m.unlock_time > now)
        planning_started = time.perf_counter()
        result = plan(snapshot.worker_views, snapshot.stage_views, now, self.settings.planner, recent)
        watchdog_metrics.PLANNING_SECONDS.observe(time.perf_counter() - planning_started)
        if self.session_lost.is_set() or self.stopping.requested:
            return
        apply_plan(self.zk, result, now)
        self.recent_moves = recent + tuple(m for m in result.moves if m.to_queue)
        self.rounds += 1
        self._record_round(snapshot, result.moves, started)

    def _record_round(self, snapshot: Snapshot, moves: tuple[Move, ...], started: float) -> None:
        """The round's figures for /metrics (memory only: Prometheus reads them when it scrapes)."""
        for move in moves:
            watchdog_metrics.MOVES.labels(watchdog_metrics.move_kind(move.reason)).inc()
        self.stage_gauges.update(watchdog_metrics.stage_figures(snapshot.worker_views, snapshot.stage_views,
                                                                self.settings.planner))
        watchdog_metrics.ROUNDS.inc()
        watchdog_metrics.ROUND_SECONDS.observe(time.perf_counter() - started)


def dry_run(settings: WatchdogSettings) -> int:
    """Print the state and the moves a round would make; writes nothing."""
    try:
        zk = ZooKeeper(settings.connection).start()
    except ZkConnectionError as error:
        log.error("%s", error)
        return ExitCode.ACCESS_REFUSED if isinstance(error, ZkLoginRefused) else ExitCode.UNREACHABLE
    reader = StateReader(zk, settings.connection)
    try:
        now = time.time()
        snapshot = reader.snapshot(now, fresh_management=True)
        result = plan(snapshot.worker_views, snapshot.stage_views, now, settings.planner)
        print(report.describe(snapshot, result, settings.planner))
        contenders = zk.election(ELECTION_PATH, "dry-run").contenders() if zk.exists(ELECTION_PATH) else []
        print(f"\nwatchdog instances: {', '.join(contenders) if contenders else 'none running'}"
              + (f" (active: {contenders[0]})" if contenders else ""))
    except KazooException as error:   # e.g. NoAuth: a secured tree read without credentials
        log.error("%s", describe_zk_error(error))
        return ExitCode.ACCESS_REFUSED if isinstance(error, NoAuthError) else ExitCode.UNREACHABLE
    finally:
        reader.close()
        zk.stop()
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = build_settings(build_parser().parse_args(argv))
    except ConfigError as error:
        return configuration_error("worker_watchdog.py", error)
    setup_logging("WATCHDOG", settings.debug)
    if settings.dry_run:
        return run_guarded(log, lambda: dry_run(settings))
    try:
        start_metrics_server(settings.metrics, watchdog_metrics.REGISTRY)
    except MetricsError as error:
        return configuration_error("worker_watchdog.py", error)
    stop = StopRequest.on_signals()
    return run_guarded(log, lambda: Watchdog(settings, stop).run())


if __name__ == "__main__":
    sys.exit(main())
