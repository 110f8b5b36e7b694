#!/usr/bin/env python3
"""pero watchdog: moves workers between stage queues by load.

Several instances may run; a kazoo Election (ZooKeeper) makes exactly one active.  When
the active one dies its ZooKeeper session expires and a standby takes over within the
session timeout (at once when it stops cleanly).  An instance that loses its session
stops acting immediately and stands for election again.

Each round (every `interval` seconds) reads the state (state.py), asks the pure
planner (planning.py) what to do and writes the moves (the workers' `queue` and
`unlock_time` nodes) and the stages' `waiting_since`.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Sequence

from pero_worker.libs.daemon_logging import setup_daemon_logging
from pero_worker.libs.config import ConfigError
from pero_worker.libs.zk import KazooState, ZkConnectionError, ZooKeeper
from pero_worker.watchdog import report
from pero_worker.watchdog.planning import Move, plan
from pero_worker.watchdog.settings import ELECTION_PATH, WatchdogSettings, build_parser, build_settings
from pero_worker.watchdog.state import StateReader, apply_plan

log = logging.getLogger("pero_worker.watchdog")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_CONNECTION = 3


class Watchdog:
    def __init__(self, settings: WatchdogSettings) -> None:
        self.settings = settings
        self.identifier = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()
        self.session_lost = threading.Event()
        self.suspended = threading.Event()
        self.zk: ZooKeeper | None = None
        self._election = None
        self.rounds = 0
        self.recent_moves: tuple[Move, ...] = ()   # this instance's moves still locked (anti-oscillation)

    # --- lifecycle ----------------------------------------------------------------
    def stop(self) -> None:
        """Safe from a signal handler: the main loop notices within one interval."""
        self.stopping.set()
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
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                return ZooKeeper(self.settings.connection, session_timeout=self.settings.session_timeout).start()
            except ZkConnectionError as error:
                log.error("%s; retrying in %.0f s", error, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        return None

    def run(self) -> int:
        zk = self._connect()
        if zk is None:
            return EXIT_OK
        self.zk = zk
        zk.add_state_listener(self._on_zk_state)
        try:
            while not self.stopping.is_set():
                self.session_lost.clear()
                try:
                    zk.ensure_path(ELECTION_PATH)
                    self._election = zk.election(ELECTION_PATH, self.identifier)
                    if self.stopping.is_set():
                        break
                    log.info("watchdog %s standing for election", self.identifier)
                    self._election.run(self._lead)
                except Exception as error:  # connection loss, cancelled election, expired session
                    if self.stopping.is_set():
                        break
                    log.warning("election interrupted (%s: %s); standing again", type(error).__name__, error)
                    self.stopping.wait(1.0)
        finally:
            zk.stop()   # closes the session: the election node goes at once and a standby takes over
        log.info("watchdog %s stopped after %d rounds as active", self.identifier, self.rounds)
        return EXIT_OK

    # --- active -----------------------------------------------------------------------
    def _lead(self) -> None:
        assert self.zk is not None
        log.info("watchdog %s is now ACTIVE", self.identifier)
        reader = StateReader(self.zk, self.settings.connection, management_interval=self.settings.management_interval)
        failures = 0
        try:
            while not self.stopping.is_set() and not self.session_lost.is_set():
                started = time.monotonic()
                if not self.suspended.is_set():
                    try:
                        self.round(reader)
                        failures = 0
                    except Exception as error:  # ZooKeeper hiccup, a node removed under us ...
                        failures += 1
                        log.error("planning round failed (%s: %s)", type(error).__name__, error,
                                  exc_info=self.settings.debug)
                        if failures >= 3:
                            self.stopping.wait(min(5.0, failures * self.settings.interval))
                elapsed = time.monotonic() - started
                self.stopping.wait(max(0.0, self.settings.interval - elapsed))
        finally:
            reader.close()
        if self.session_lost.is_set():
            log.warning("ZooKeeper session lost: no longer active")
        else:
            log.info("watchdog %s stepping down", self.identifier)

    def round(self, reader: StateReader) -> None:
        assert self.zk is not None
        now = time.time()
        snapshot = reader.snapshot(now)
        if not snapshot.depth_source:
            log.debug("no queue depths this round; not moving anybody")
            return
        recent = tuple(m for m in self.recent_moves if m.unlock_time > now)
        result = plan(snapshot.worker_views, snapshot.stage_views, now, self.settings.planner, recent)
        if self.session_lost.is_set() or self.stopping.is_set():
            return
        apply_plan(self.zk, result, now)
        self.recent_moves = recent + tuple(m for m in result.moves if m.to_queue)
        self.rounds += 1


def dry_run(settings: WatchdogSettings) -> int:
    try:
        zk = ZooKeeper(settings.connection).start()
    except ZkConnectionError as error:
        log.error("%s", error)
        return EXIT_CONNECTION
    reader = StateReader(zk, settings.connection)
    try:
        now = time.time()
        snapshot = reader.snapshot(now, fresh_management=True)
        result = plan(snapshot.worker_views, snapshot.stage_views, now, settings.planner)
        print(report.describe(snapshot, result, settings.planner))
        contenders = zk.election(ELECTION_PATH, "dry-run").contenders() if zk.exists(ELECTION_PATH) else []
        print(f"\nwatchdog instances: {', '.join(contenders) if contenders else 'none running'}"
              + (f" (active: {contenders[0]})" if contenders else ""))
    finally:
        reader.close()
        zk.stop()
    return EXIT_OK


def setup_logging(debug: bool) -> None:
    setup_daemon_logging("WATCHDOG", debug)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    try:
        settings = build_settings(args)
    except ConfigError as error:
        log.error("%s", error)
        return EXIT_CONFIG
    if settings.dry_run:
        return dry_run(settings)
    watchdog = Watchdog(settings)

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d received, stopping", signum)
        watchdog.stop()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return watchdog.run()


if __name__ == "__main__":
    sys.exit(main())
