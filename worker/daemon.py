"""The worker's main loop.

Threads and who owns what:
- main thread: owns the RabbitMQ session (consume, publish, ack) and all daemon
  state; it pumps the session so heartbeats and confirms flow, handles events
  and applies decisions.
- processing thread (processing.py): runs the processor and stage set-up jobs;
  hands outcomes back through a deque + session.wake().
- kazoo's thread: watch callbacks only post events here (never block it).
- stats thread (stats.py) and log-shipping thread (log_shipping.py): their own
  ZooKeeper / RabbitMQ work, never on the request path.

The stage life cycle is a small reconcile loop: the `queue` node says which
stage is wanted, `config_version` which version of it; whenever what runs
differs from what is wanted, the consumer is cancelled, deliveries not started
are requeued, in-flight ones are finished (published, confirmed, acked), and
only then is the new stage configured and consumed.
"""
from __future__ import annotations

import collections
import logging
import queue as queue_module
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..libs import zk_paths
from ..libs.mq import DEAD_LETTER_QUEUE, Delivery, MQConnectionError, MQError, MQSession, MQSettings, PublishOutcome
from ..libs.backoff import Backoff
from ..libs.zk import KazooException, KazooState, ZooKeeper, describe_zk_error
from . import routing, stats
from .acks import AckTracker
from .log_shipping import LogShipper
from .processing import Outcome, ProcessingThread, StageContext, reroute_after_return
from .registration import DuplicateWorkerError, Registration, SessionStore
from .settings import WorkerConfig
from .stage_log import RequestLogCapture
from .stage_setup import CONFIG_RETRY_INTERVAL, StageLoader, StageSetupError, is_processing_error, setup_retry

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_DUPLICATE = 3

PUMP_INTERVAL = 0.25
# A stopping worker finishes in-flight requests for at most this long; the rest are redelivered by the broker.
STOP_GRACE = 1.2
# Backoff of transient stage set-up failures (stage_setup.setup_retry decides the rest).
TRANSIENT_RETRY = dict(initial=0.25, cap=2.0)


@dataclass(frozen=True)
class Target:
    stage: str          # '' = no stage
    version: str | None  # None = not known yet


class WorkerDaemon:
    def __init__(self, config: WorkerConfig, zk: ZooKeeper, registration: Registration, store: SessionStore,
                 capture: RequestLogCapture, shipper: LogShipper | None,
                 loader_factory: Callable[[], StageLoader] | None = None) -> None:
        self.config = config
        self.worker_id = config.worker_id
        self.zk = zk
        self.registration = registration
        self.store = store
        self.shipper = shipper
        self.loader = loader_factory() if loader_factory else StageLoader(zk, config.connection, config.cache_dir,
                                                                           config.device)
        self._events: queue_module.SimpleQueue[tuple[Any, ...]] = queue_module.SimpleQueue()
        self._kick = threading.Event()
        self._session: MQSession | None = None
        self._generation = 0
        self._tracker = AckTracker()
        self._ack_upto: int | None = None   # every delivery up to this tag is settled; ack it (multiple)
        self._outcomes: collections.deque[list[Outcome]] = collections.deque()
        self.stats = stats.StatsReporter(zk, self.worker_id, on_average=self._on_average)
        self.processing = ProcessingThread(self.worker_id, capture, self._on_outcomes, self.stats.record,
                                           is_processing_error)
        # desired state (from ZooKeeper watches)
        self._wanted_stage = ""
        self._versions: dict[str, str] = {}
        self._watched_stages: set[str] = set()
        self._stop_reason: str | None = None
        self._exit_code = EXIT_OK
        # actual state
        self._active: Target | None = None          # what the processing thread is configured for
        self._configuring: Target | None = None
        self._failed: Target | None = None
        self._retry_at = 0.0                    # when to try the failed target again
        self._failed_transient = False          # failing transiently, still within TRANSIENT_GRACE
        self._transient_since: float | None = None
        self._last_setup_error = ""
        self._setup_backoff = Backoff(**TRANSIENT_RETRY)
        self._consuming: str | None = None
        self._prefetch = 0
        self._resubscribe = False
        self._averages: dict[str, float] = {}
        self._mq_retry_at = 0.0
        # Capped at 1 s: the worker consumes again within ~1.5 s of the broker coming back (jitter spreads
        # the reconnects of many workers after a broker restart).
        self._mq_backoff = Backoff(initial=0.2, cap=1.0)
        self._last_mq_error = ""
        self._dead_letter_problem: str | None = None
        self._zk_session_lost = False
        # Set by signal handlers (a plain assignment: no locks in a handler); checked every loop.
        self.signalled: str | None = None

    # --- events from other threads -------------------------------------------------

    def post(self, *event: Any) -> None:
        """Thread-safe: hand an event to the main loop and wake it."""
        self._events.put(event)
        self._kick.set()
        session = self._session
        if session is not None:
            try:
                session.wake()
            except Exception:
                pass

    def request_stop(self, reason: str) -> None:
        """Thread-safe (not for signal handlers: set `signalled` there)."""
        self.post("stop", reason)

    def _on_outcomes(self, outcomes: list[Outcome]) -> None:   # processing thread
        self._outcomes.append(outcomes)
        self._kick.set()
        session = self._session
        if session is not None:
            try:
                session.wake()
            except Exception:
                pass

    def _on_average(self, stage: str, average: float) -> None:  # stats thread
        self.post("average", stage, average)

    def _on_zk_state(self, state: str) -> None:                  # kazoo thread
        self.post("zk_state", state)

    # --- run --------------------------------------------------------------------------

    def run(self) -> int:
        self.processing.start()
        self.stats.start()
        self.zk.add_state_listener(self._on_zk_state)
        self.zk.watch_data(zk_paths.worker_queue(self.worker_id),
                           lambda data: self.post("queue", zk_paths.decode_text(data).strip()))
        self.zk.watch_data(zk_paths.worker_enabled(self.worker_id),
                           lambda data: self.post("enabled", zk_paths.decode_text(data).strip()))
        log.info("worker %s started (cache %s, device %s)", self.worker_id, self.config.cache_dir, self.config.device)
        try:
            while True:
                self._handle_events()
                if self.signalled and self._stop_reason is None:
                    self._stop_reason = self.signalled
                if self._stop_reason is not None:
                    break
                if self._session is None:
                    self._connect_mq()
                if self._session is not None:
                    self._handle_outcomes()
                    self._reconcile()
                self._wait(PUMP_INTERVAL)
                self._handle_outcomes()
                self._flush_acks()
        finally:
            self._shutdown()
        return self._exit_code

    def _wait(self, timeout: float) -> None:
        """Pump RabbitMQ (or sleep without a connection) until something happens or `timeout` passes."""
        if not self._events.empty() or self._outcomes or self.signalled:
            timeout = 0.0
        if self._session is None:
            if timeout:
                self._kick.wait(timeout)
            self._kick.clear()
            return
        try:
            self._session.pump(timeout)
        except MQError as error:
            self._mq_lost(error)

    # --- events -------------------------------------------------------------------------

    def _handle_events(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue_module.Empty:
                return
            kind = event[0]
            if kind == "stop":
                if self._stop_reason is None:
                    self._stop_reason = event[1]
            elif kind == "queue":
                if event[1] != self._wanted_stage:
                    log.info("assigned stage %r (was %r)", event[1] or "(none)", self._wanted_stage or "(none)")
                self._wanted_stage = event[1]
                self._watch_stage(event[1])
            elif kind == "version":
                self._versions[event[1]] = event[2]
            elif kind == "enabled":
                if event[1].lower() == "false" and self._stop_reason is None:
                    self._stop_reason = "disabled in ZooKeeper (enabled = false)"
            elif kind == "average":
                self._averages[event[1]] = event[2]
                if (event[1] == self._consuming and not self._resubscribe
                        and stats.prefetch_should_change(self._prefetch, event[2])):
                    log.info("stage %s takes %.4f s per request: re-subscribing with prefetch %d",
                             event[1], event[2], stats.choose_prefetch(event[2]))
                    self._resubscribe = True
            elif kind == "zk_state":
                self._zk_state(event[1])
            elif kind == "configured":
                self._configured(*event[1:])

    def _watch_stage(self, stage: str) -> None:
        if not stage or stage in self._watched_stages:
            return
        try:
            path = zk_paths.stage_config_version(stage)
        except ValueError as error:
            log.error("assigned stage name is unusable: %s", error)
            return
        self._watched_stages.add(stage)
        self.zk.watch_data(path, lambda data, stage=stage: self.post(
            "version", stage, zk_paths.decode_text(data).strip()))

    def _zk_state(self, state: str) -> None:
        # Runs on the main loop: kazoo's listener only posted the state (it must not block kazoo's thread).
        # libs/zk.py logs the outage and the recovery; here only what they mean for this worker.
        if state == KazooState.LOST:
            log.warning("the worker's registration is gone with the session; it is restored on reconnection")
            self._zk_session_lost = True
        elif state == KazooState.CONNECTED:
            self._after_zk_reconnect()

    def _after_zk_reconnect(self) -> None:
        """Renew what a new session lost (the ephemeral node) and rewrite the status a suspension may have missed."""
        lost, self._zk_session_lost = self._zk_session_lost, False
        try:
            self.store.save(self.zk.session_credentials)
            if lost:
                self.registration.register(self.registration.status or zk_paths.STARTING)
                log.info("ZooKeeper session renewed; registration restored")
            else:
                self.registration.set_status(self.registration.status or zk_paths.STARTING, force=True)
        except DuplicateWorkerError as error:
            log.error("%s", error)
            self._exit_code = EXIT_DUPLICATE
            self.request_stop("another worker took over this id")
        except KazooException as error:
            log.warning("could not restore the registration after reconnecting: %s", error or type(error).__name__)

    # --- status ---------------------------------------------------------------------------

    def _set_status(self, status: str) -> None:
        try:
            self.registration.set_status(status)
        except KazooException as error:
            log.debug("status %s not written (ZooKeeper unavailable: %s)", status, error or type(error).__name__)

    # --- RabbitMQ connection -------------------------------------------------------------------

    def _connect_mq(self) -> None:
        now = time.monotonic()
        if now < self._mq_retry_at:
            return
        self._set_status(zk_paths.CONNECTING)
        try:
            settings = MQSettings.from_zookeeper(self.zk, self.config.connection)
            session = MQSession(settings, name=f"pero-worker {self.worker_id}")
            session.open(retry_for=0)
            problem = session.declare_shared_queue(DEAD_LETTER_QUEUE)
        except (MQError, KazooException) as error:
            text = describe_zk_error(error) if isinstance(error, KazooException) else str(error)
            if text != self._last_mq_error:
                log.error("%s (retrying every %.1f s at most)", text, self._mq_backoff.cap)
                self._last_mq_error = text
            self._set_status(zk_paths.MQ_CONNECTION_FAILED)
            self._mq_retry_at = now + self._mq_backoff.delay()
            return
        if problem and problem != self._dead_letter_problem:
            log.warning("dead-letter queue: %s", problem)
        self._dead_letter_problem = problem
        if self._last_mq_error:
            log.info("RabbitMQ connection restored (%s)", ", ".join(str(server) for server in settings.servers))
        self._last_mq_error = ""
        self._mq_backoff.reset()
        self._session = session
        if self.shipper is not None:
            self.shipper.set_settings(settings)
        if self._failed is not None or self._configuring is not None or not self._wanted_stage:
            self._set_status(self._steady_status())
        # otherwise _reconcile() sets PROCESSING once the consumer is back (no IDLE flicker for the watchdog)

    def _mq_lost(self, error: BaseException) -> None:
        """The channel is gone: its deliveries will be redelivered; forget them and reconnect."""
        log.error("RabbitMQ connection lost: %s", error)
        self._last_mq_error = str(error)   # so that the reconnection is logged
        if self._session is not None:
            self._session.close()
        self._session = None
        self._generation += 1
        self._tracker.clear()
        self._ack_upto = None
        self._outcomes.clear()
        self.processing.take_waiting()
        self._consuming = None
        self._set_status(zk_paths.MQ_CONNECTION_FAILED)
        self._mq_retry_at = time.monotonic() + self._mq_backoff.delay()

    # --- stage life cycle ----------------------------------------------------------------------------

    def _target(self) -> Target:
        stage = self._wanted_stage
        return Target(stage, self._versions.get(stage) if stage else None)

    def _matches(self, active: Target | None, target: Target) -> bool:
        if active is None:
            return target.stage == ""
        return active.stage == target.stage and (target.version is None or active.version == target.version)

    def _steady_status(self) -> str:
        if self._failed is not None:
            return zk_paths.CONFIGURING if self._failed_transient else zk_paths.CONFIGURATION_FAILED
        if self._configuring is not None:
            return zk_paths.CONFIGURING
        return zk_paths.PROCESSING if self._consuming else zk_paths.IDLE

    def _reconcile(self) -> None:
        target = self._target()
        if self._configuring is not None:
            return  # a set-up job is running; its result comes as an outcome event
        matches = self._matches(self._active, target)
        if self._consuming and (not matches or self._resubscribe):
            self._stop_consuming()
        if self._consuming:
            return
        if len(self._tracker) or not self.processing.idle:
            return  # still finishing in-flight requests of the previous stage
        if matches:
            self._resubscribe = False
            if target.stage:
                self._start_consuming(target.stage)
            else:
                self._set_status(zk_paths.IDLE)
            return
        if self._failed is not None and self._failed == target and time.monotonic() < self._retry_at:
            return
        self._configure(target)

    def _configure(self, target: Target) -> None:
        if self._failed != target:   # a new target: a new series of attempts
            self._setup_backoff.reset()
            self._transient_since = None
            self._last_setup_error = ""
        # A retry after the transient grace keeps reporting CONFIGURATION_FAILED (no flicker every attempt).
        still_failed = self._failed == target and self._transient_since is not None and not self._failed_transient
        self._configuring = target
        self._failed = None
        if not still_failed:
            self._set_status(zk_paths.CONFIGURING if target.stage else zk_paths.IDLE)
        if target.stage:
            log.info("configuring stage %s (version %s)", target.stage, target.version or "-")

        def job() -> None:    # on the processing thread
            old, self.processing.context = self.processing.context, None
            if old is not None:
                try:
                    old.processor.close()
                except Exception as error:
                    log.warning("closing the processor of stage %s failed: %s", old.stage, error)
            if not target.stage:
                self.post("configured", target, None, "", 0.0)
                return
            try:
                processor, version, seconds = self.loader.load(target.stage)
            except StageSetupError as error:
                self.post("configured", target, None, str(error), 0.0, error.transient)
                return
            except Exception as error:   # a bug must not leave the worker waiting for this job forever
                log.debug("stage set-up failed", exc_info=True)
                self.post("configured", target, None, f"{type(error).__name__}: {error}", 0.0)
                return
            self.processing.context = StageContext(target.stage, version, processor)
            self.post("configured", target, version, "", seconds)
        self.processing.run_job(job)

    def _configured(self, target: Target, version: str | None, error: str, seconds: float,
                    transient: bool = False) -> None:
        self._configuring = None
        if error:
            self._active = None
            self._failed = target
            self._set_status(self._setup_failed(error, transient))
            return
        self._transient_since = None
        self._setup_backoff.reset()
        self._last_setup_error = ""
        if not target.stage:
            self._active = None
            self._set_status(zk_paths.IDLE)
            return
        self._active = Target(target.stage, version)
        log.info("stage %s ready (version %s) in %.2f s", target.stage, version or "-", seconds)
        try:
            stats.record_switch_time(self.zk, target.stage, seconds, self.worker_id)
        except Exception as error:   # statistics are best effort
            log.warning("could not record the switch time of stage %s: %s", target.stage, error)

    def _setup_failed(self, error: str, transient: bool) -> str:
        """Schedule the next attempt at a stage whose set-up failed; returns the status to report."""
        stage = self._failed.stage if self._failed else "?"
        decision = setup_retry(time.monotonic(), transient, self._transient_since,
                               self._setup_backoff.delay() if transient else 0.0)
        self._retry_at = decision.retry_at
        self._transient_since = decision.transient_since
        self._failed_transient = transient and decision.status == zk_paths.CONFIGURING
        if not transient:
            log.error("cannot take up stage %s: %s (next attempt in %.0f s or when the stage changes)",
                      stage, error, CONFIG_RETRY_INTERVAL)
        elif error != self._last_setup_error:
            log.warning("cannot take up stage %s yet: %s (a service is unreachable; retrying every %.1f s at most)",
                        stage, error, self._setup_backoff.cap)
            self._last_setup_error = error
        return decision.status

    def _start_consuming(self, stage: str) -> None:
        assert self._session is not None
        average = self._averages.get(stage)
        if average is None:
            raw = self.zk.get(zk_paths.stage_avg_msg_time(stage))
            average = zk_paths.decode_float(raw) if raw else None
        prefetch = stats.choose_prefetch(average)
        generation = self._generation
        tracker = self._tracker

        def on_message(delivery: Delivery) -> None:
            tracker.add(delivery.delivery_tag)
            self.processing.submit(delivery, generation)
        try:
            self._session.declare_stage_queue(stage)
            self._session.consume(stage, on_message, prefetch=prefetch)
        except MQConnectionError as error:
            self._mq_lost(error)
            return
        except MQError as error:
            self._failed = self._target()
            self._active = None
            self._set_status(self._setup_failed(f"cannot consume: {error}", transient=False))
            if self._session is not None and not self._session.is_open:
                self._mq_lost(error)
            return
        self._consuming = stage
        self._prefetch = prefetch
        log.info("consuming stage %s (prefetch %d)", stage, prefetch)
        self._set_status(zk_paths.PROCESSING)

    def _stop_consuming(self) -> None:
        """Cancel the consumer and put deliveries not started back in the queue (in-flight ones finish)."""
        assert self._session is not None
        stage, self._consuming = self._consuming, None
        try:
            self._session.cancel_consumer()
            for delivery in self.processing.take_waiting():
                self._session.nack(delivery.delivery_tag, requeue=True)
                self._settle(delivery.delivery_tag, ack=False)
        except MQError as error:
            self._mq_lost(error)
            return
        log.info("stopped consuming stage %s", stage)
        self.stats.flush_soon()

    # --- outcomes: publish, then ack ----------------------------------------------------------------------

    def _handle_outcomes(self) -> None:
        while self._outcomes:
            batch = self._outcomes.popleft()
            for outcome in batch:
                if outcome.generation != self._generation or self._session is None:
                    continue   # from a channel that is gone: the broker redelivers that input
                try:
                    if outcome.route is None:
                        self._session.nack(outcome.delivery.delivery_tag, requeue=True)
                        self._settle(outcome.delivery.delivery_tag, ack=False)
                    else:
                        self._publish(outcome)
                except MQError as error:
                    self._mq_lost(error)
                    return
    def _publish(self, outcome: Outcome) -> None:
        assert self._session is not None and outcome.route is not None
        route = outcome.route
        queue = DEAD_LETTER_QUEUE if route.kind is routing.RouteKind.DEAD_LETTER else route.queue
        assert queue is not None
        generation = self._generation
        self._session.publish(queue, outcome.body, priority=outcome.priority, headers=outcome.headers,
                              on_done=lambda result: self._published(outcome, generation, result))

    def _published(self, outcome: Outcome, generation: int, result: PublishOutcome) -> None:
        """Runs inside pump(): the broker's answer to one successor publish."""
        if generation != self._generation or self._session is None:
            return
        tag = outcome.delivery.delivery_tag
        if result is PublishOutcome.CONFIRMED:
            self._settle(tag, ack=True)
        elif result is PublishOutcome.RETURNED and outcome.route is not None \
                and outcome.route.kind is not routing.RouteKind.DEAD_LETTER:
            self._publish(reroute_after_return(outcome, self.worker_id))
        else:
            # Nacked by the broker (or the dead-letter queue vanished): give the input back to the queue.
            log.warning("RabbitMQ %s the successor of a request from %s; requeueing the request",
                        result.value, outcome.delivery.queue)
            self._session.nack(tag, requeue=True)
            self._settle(tag, ack=False)

    def _settle(self, tag: int, *, ack: bool) -> None:
        upto = self._tracker.settle(tag, ack=ack)
        if upto is not None:
            # One ack frame per loop pass instead of one per request (see _flush_acks).
            self._ack_upto = upto

    def _flush_acks(self) -> None:
        upto, self._ack_upto = self._ack_upto, None
        if upto is not None and self._session is not None:
            try:
                self._session.ack(upto, multiple=True)
            except MQError as error:
                self._mq_lost(error)

    # --- shutdown ---------------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        reason = self._stop_reason or "stopping"
        log.info("worker %s stopping: %s", self.worker_id, reason)
        deadline = time.monotonic() + STOP_GRACE
        session = self._session
        if session is not None:
            try:
                if self._consuming:
                    self._stop_consuming()
                while self._session is not None and (len(self._tracker) or self._outcomes
                                                     or not self.processing.idle):
                    if time.monotonic() >= deadline:
                        log.warning("%d requests still in progress; RabbitMQ will redeliver them",
                                    len(self._tracker))
                        break
                    self._handle_outcomes()
                    self._flush_acks()
                    if self._session is not None:
                        self._session.pump(0.05)
                self._flush_acks()
            except MQError as error:
                log.debug("RabbitMQ error while stopping: %s", error)
            if self._session is not None:
                self._session.close()
            self._session = None
        self.processing.stop()
        self.stats.stop(timeout=0.5)
        self._set_status(zk_paths.DEAD)
