"""Ship the worker's log lines to the log queue (docs/protocol.md §3) without ever slowing processing down.

Records go into a bounded in-memory buffer; a separate thread with its own
RabbitMQ connection publishes them, one UTF-8 line per message.  When RabbitMQ
or the log queue is unavailable the buffer fills and the oldest lines are
dropped (and counted): logging must never block a worker or make it fail.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

from pero_worker.libs.backoff import Backoff
from pero_worker.libs.mq import MQConnectionError, MQError, MQSession, MQSettings, PublishOutcome

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000
BATCH = 200


class LogShipper(logging.Handler):
    def __init__(self, queue_name: str, worker_id: str, *, capacity: int = DEFAULT_CAPACITY,
                 level: int = logging.INFO) -> None:
        super().__init__(level)
        self.queue_name = queue_name
        self.setFormatter(logging.Formatter(
            f"%(asctime)s {worker_id} %(levelname)s %(name)s: %(message)s"))
        self._buffer: collections.deque[str] = collections.deque()
        self._capacity = capacity
        self._buffer_lock = threading.Lock()
        self._have_records = threading.Event()
        self._stop = threading.Event()
        self._settings: MQSettings | None = None
        self._settings_changed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-shipping", daemon=True)
        self._stop_deadline = 0.0
        self.dropped = 0
        self.shipped = 0

    # --- producer side (any thread; never blocks on the network) ---------------

    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is self._thread:
            return  # the shipper's own connection troubles go to the local log only
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self._buffer_lock:
            if len(self._buffer) >= self._capacity:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(line)
        self._have_records.set()

    def _take(self, limit: int) -> list[str]:
        with self._buffer_lock:
            count = min(limit, len(self._buffer))
            return [self._buffer.popleft() for _ in range(count)]

    def _put_back(self, lines: list[str]) -> None:
        with self._buffer_lock:
            for line in reversed(lines):
                if len(self._buffer) >= self._capacity:
                    self.dropped += 1
                    continue
                self._buffer.appendleft(line)

    @property
    def buffered(self) -> int:
        with self._buffer_lock:
            return len(self._buffer)

    # --- control -----------------------------------------------------------------

    def set_settings(self, settings: MQSettings) -> None:
        """Where to ship (the broker list comes from ZooKeeper, known only after start-up)."""
        self._settings = settings
        self._settings_changed.set()
        self._have_records.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Ship what can be shipped within `timeout` s, then give up on the rest."""
        self._stop_deadline = time.monotonic() + timeout
        self._stop.set()
        self._have_records.set()
        if self._thread.is_alive():
            self._thread.join(timeout + 0.5)

    # --- shipping thread -------------------------------------------------------------

    def _run(self) -> None:
        session: MQSession | None = None
        backoff = Backoff(initial=0.5, cap=5.0)
        last_complaint = 0.0
        queue_problem: str | None = None   # said once, not at every reconnect
        while True:
            if self._stop.is_set() and (session is None or not self.buffered
                                        or time.monotonic() > self._stop_deadline):
                break
            settings = self._settings
            if settings is None:
                self._have_records.wait(0.5)
                self._have_records.clear()
                continue
            if session is None or self._settings_changed.is_set():
                self._settings_changed.clear()
                if session is not None:
                    session.close()
                session = MQSession(settings, name="pero-worker log shipping")
                try:
                    session.open(retry_for=0)
                    try:
                        problem = session.declare_shared_queue(self.queue_name)
                    except MQConnectionError:
                        raise
                    except MQError as error:
                        problem = f"{error} (shipping anyway)"
                    if problem and problem != queue_problem:
                        log.warning("log queue %r: %s", self.queue_name, problem)
                    queue_problem = problem
                    backoff.reset()
                except MQError as error:
                    session = None
                    if time.monotonic() - last_complaint > 60:
                        last_complaint = time.monotonic()
                        log.warning("log shipping paused: %s (retrying; %d lines dropped so far)",
                                    error, self.dropped)
                    if self._stop.wait(backoff.delay()):
                        break
                    continue
            lines = self._take(BATCH)
            if not lines:
                self._have_records.wait(1.0)
                self._have_records.clear()
                continue
            try:
                self._publish(session, lines)
            except MQError as error:
                log.warning("log shipping interrupted: %s", error)
                self._put_back(lines)
                session.close()
                session = None
        if session is not None:
            session.close()

    def _publish(self, session: MQSession, lines: list[str]) -> None:
        failed: list[str] = []
        for line in lines:
            def _done(outcome: PublishOutcome, line: str = line) -> None:
                if outcome is not PublishOutcome.CONFIRMED:
                    failed.append(line)
            session.publish(self.queue_name, line.encode("utf-8"), on_done=_done)
        if not session.wait_for_confirms(timeout=10.0):
            raise MQConnectionError("RabbitMQ did not confirm log lines within 10 s")
        self.shipped += len(lines) - len(failed)
        if failed:
            with self._buffer_lock:
                self.dropped += len(failed)
