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

Other threads talk to the main loop only through typed events (the frozen
dataclasses below), dispatched by type in `_handle_events`.

The stage life cycle is a small reconcile loop over one state object
(stage_state.py, pure): the `queue` node says which stage is wanted,
`config_version` which version of it; whenever what runs differs from what is
wanted, the consumer is cancelled, deliveries not started are requeued,
in-flight ones are finished (published, confirmed, acked), and only then is
the new stage configured and consumed.
"""
from __future__ import annotations

import collections
import logging
import queue as queue_module
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pero_worker.libs import zk_paths
from pero_worker.libs.backoff import Backoff
from pero_worker.libs.daemon import StopRequest
from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.message_size import SizeLimit, choose_limit, format_size, parse_size_refusal
from pero_worker.libs.mq import (
    DEAD_LETTER_QUEUE,
    Delivery,
    MQChannelClosedError,
    MQConnectionError,
    MQError,
    MQSession,
    MQSettings,
    PublishOutcome,
)
from pero_worker.libs.zk import KazooException, KazooState, ZooKeeper, describe_zk_error
from pero_worker.worker import metrics as worker_metrics
from pero_worker.worker import routing, stats
from pero_worker.worker.acks import AckTracker
from pero_worker.worker.log_shipping import LogShipper
from pero_worker.worker.processing import (
    Outcome,
    ProcessingThread,
    StageContext,
    fit_to_limit,
    reroute_after_return,
)
from pero_worker.worker.registration import DuplicateWorkerError, Registration, SessionStore
from pero_worker.worker.settings import WorkerConfig
from pero_worker.worker.stage_log import RequestLogCapture
from pero_worker.worker.stage_setup import CONFIG_RETRY_INTERVAL, StageLoader, StageSetupError, is_processing_error
from pero_worker.worker.stage_state import Action, StageState, Target
from pero_worker.worker.warm_pool import WarmPool, WarmSettings, memory_bytes

log = logging.getLogger(__name__)

PUMP_INTERVAL = 0.25
SIZE_LIMIT_FROM_REFUSAL = "the limit the broker named when it refused a message"
# A stopping worker finishes in-flight requests for at most this long; the rest are redelivered by the broker.
STOP_GRACE = 1.2


# --- events: what other threads hand to the main loop ---------------------------------------------

@dataclass(frozen=True)
class QueueAssigned:          # kazoo thread: the worker's `queue` node
    stage: str


@dataclass(frozen=True)
class VersionChanged:         # kazoo thread: a watched stage's `config_version` node
    stage: str
    version: str


@dataclass(frozen=True)
class EnabledChanged:         # kazoo thread: the worker's `enabled` node
    value: str


@dataclass(frozen=True)
class AverageMeasured:        # stats thread: a stage's new average time per request
    stage: str
    seconds: float


@dataclass(frozen=True)
class ZkStateChanged:         # kazoo thread: CONNECTED / SUSPENDED / LOST
    state: str


@dataclass(frozen=True)
class StageConfigured:        # processing thread: a set-up job finished (error '' = success)
    target: Target
    version: str | None
    error: str = ""
    seconds: float = 0.0
    transient: bool = False
    batch_pages: int = 1      # requests the processor reads in one step (cross-page batching)
    warm: bool = False        # taken from the warm-model pool: no download, no load


Event = QueueAssigned | VersionChanged | EnabledChanged | AverageMeasured | ZkStateChanged | StageConfigured


class WorkerDaemon:
    def __init__(self, config: WorkerConfig, zk: ZooKeeper, registration: Registration, store: SessionStore,
                 capture: RequestLogCapture, shipper: LogShipper | None, stop: StopRequest | None = None,
                 loader_factory: Callable[[], StageLoader] | None = None) -> None:
        self.config = config
        self.worker_id = config.worker_id
        self.zk = zk
        self.registration = registration
        self.store = store
        self.shipper = shipper
        self.stop = stop or StopRequest()
        self.loader = loader_factory() if loader_factory else StageLoader(zk, config.connection, config.cache_dir,
                                                                           config.device)
        self._events: queue_module.SimpleQueue[Event] = queue_module.SimpleQueue()
        self._handlers: dict[type, Callable] = {
            QueueAssigned: self._on_queue_assigned, VersionChanged: self._on_version_changed,
            EnabledChanged: self._on_enabled_changed, AverageMeasured: self._on_average_measured,
            ZkStateChanged: self._on_zk_state_changed, StageConfigured: self._on_stage_configured,
        }
        self._kick = threading.Event()
        self._session: MQSession | None = None
        self._generation = 0
        self._tracker = AckTracker()
        self._ack_upto: int | None = None   # every delivery up to this tag is settled; ack it (multiple)
        self._outcomes: collections.deque[list[Outcome]] = collections.deque()
        self.stats = stats.StatsReporter(zk, self.worker_id, on_average=self._on_average)
        self.processing = ProcessingThread(self.worker_id, capture, self._on_outcomes, self.stats.record,
                                           is_processing_error)
        self.stage = StageState()                  # the stage life cycle (main thread only)
        # Processors of recently left stages (processing thread only: set-up jobs run there).
        self.warm = WarmPool(WarmSettings(config.warm_models, config.warm_models_memory))
        self._watched_stages: set[str] = set()
        self._averages: dict[str, float] = {}
        self._exit_code = ExitCode.OK
        self._mq_retry_at = 0.0
        # Capped at 1 s: the worker consumes again within ~1.5 s of the broker coming back (jitter spreads
        # the reconnects of many workers after a broker restart).
        self._mq_backoff = Backoff(initial=0.2, cap=1.0)
        self._last_mq_error = ""
        self._dead_letter_problem: str | None = None
        self._zk_session_lost = False
        # The broker's max_message_size: the operator's value, else the default of the broker's version, until
        # the broker itself names its limit by refusing a message (docs/protocol.md §3).
        self._size_limit = choose_limit(config.max_message_size, None)

    # --- events from other threads -------------------------------------------------

    def post(self, event: Event) -> None:
        """Thread-safe: hand an event to the main loop and wake it."""
        self._events.put(event)
        self._wake()

    def request_stop(self, reason: str) -> None:
        """Thread-safe (a signal handler sets the StopRequest itself)."""
        self.stop.stop(reason)
        self._wake()

    def _wake(self) -> None:
        self._kick.set()
        session = self._session
        if session is not None:
            try:
                session.wake()
            except Exception:   # a session closing meanwhile: the loop wakes within PUMP_INTERVAL anyway
                pass

    def _on_outcomes(self, outcomes: list[Outcome]) -> None:   # processing thread
        self._outcomes.append(outcomes)
        self._wake()

    def _on_average(self, stage: str, average: float) -> None:  # stats thread
        self.post(AverageMeasured(stage, average))

    def _on_zk_state(self, state: str) -> None:                  # kazoo thread
        self.post(ZkStateChanged(state))

    # --- run --------------------------------------------------------------------------

    def run(self) -> int:
        self.processing.start()
        self.stats.start()
        self.zk.add_state_listener(self._on_zk_state)
        self.zk.watch_data(zk_paths.worker_queue(self.worker_id),
                           lambda data: self.post(QueueAssigned(zk_paths.decode_text(data).strip())))
        self.zk.watch_data(zk_paths.worker_enabled(self.worker_id),
                           lambda data: self.post(EnabledChanged(zk_paths.decode_text(data).strip())))
        log.info("worker %s started (cache %s, device %s)", self.worker_id, self.config.cache_dir, self.config.device)
        try:
            while True:
                self._handle_events()
                if self.stop.requested:
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
        if not self._events.empty() or self._outcomes or self.stop.requested:
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
            self._handlers[type(event)](event)

    def _on_queue_assigned(self, event: QueueAssigned) -> None:
        if event.stage != self.stage.wanted_stage:
            log.info("assigned stage %r (was %r)", event.stage or "(none)", self.stage.wanted_stage or "(none)")
        self.stage.wanted_stage = event.stage
        self._watch_stage(event.stage)

    def _on_version_changed(self, event: VersionChanged) -> None:
        self.stage.versions[event.stage] = event.version

    def _on_enabled_changed(self, event: EnabledChanged) -> None:
        if event.value.lower() == "false":
            self.stop.stop("disabled in ZooKeeper (enabled = false)")

    def _on_average_measured(self, event: AverageMeasured) -> None:
        self._averages[event.stage] = event.seconds
        if self.stage.on_average(event.stage, event.seconds):
            log.info("stage %s takes %.4f s per request: re-subscribing with prefetch %d",
                     event.stage, event.seconds, stats.choose_prefetch(event.seconds, self.stage.min_prefetch))

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
            VersionChanged(stage, zk_paths.decode_text(data).strip())))

    def _on_zk_state_changed(self, event: ZkStateChanged) -> None:
        # Runs on the main loop: kazoo's listener only posted the state (it must not block kazoo's thread).
        # libs/zk.py logs the outage and the recovery; here only what they mean for this worker.
        if event.state == KazooState.LOST:
            log.warning("the worker's registration is gone with the session; it is restored on reconnection")
            self._zk_session_lost = True
        elif event.state == KazooState.CONNECTED:
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
            self._exit_code = ExitCode.DUPLICATE_WORKER
            self.request_stop("another worker took over this id")
        except KazooException as error:
            log.warning("could not restore the registration after reconnecting: %s", error or type(error).__name__)

    # --- status ---------------------------------------------------------------------------

    def _set_status(self, status: str) -> None:
        worker_metrics.set_status(status)
        try:
            self.registration.set_status(status)
        except KazooException as error:
            log.debug("status %s not written (ZooKeeper unavailable: %s)", status, error or type(error).__name__)

    # --- RabbitMQ connection -------------------------------------------------------------------

    def _open_mq(self) -> tuple[MQSession, MQSettings, str | None]:
        settings = MQSettings.from_zookeeper(self.zk, self.config.connection)
        session = MQSession(settings, name=f"pero-worker {self.worker_id}")
        session.open(retry_for=0)
        return session, settings, session.declare_shared_queue(DEAD_LETTER_QUEUE)

    def _connect_mq(self) -> None:
        now = time.monotonic()
        if now < self._mq_retry_at:
            return
        self._set_status(zk_paths.CONNECTING)
        try:
            session, settings, problem = self._open_mq()
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
            log.info("RabbitMQ connection restored (connected to %s; servers %s)", session.connected_to,
                     ", ".join(str(server) for server in settings.servers))
        self._last_mq_error = ""
        self._mq_backoff.reset()
        self._session = session
        self._adopt_broker_version(session.broker_version)
        if self.shipper is not None:
            self.shipper.set_settings(settings)
        if self.stage.failed is not None or self.stage.configuring is not None or not self.stage.wanted_stage:
            self._set_status(self.stage.status())
        # otherwise _reconcile() sets PROCESSING once the consumer is back (no IDLE flicker for the watchdog)

    def _adopt_broker_version(self, version: str) -> None:
        """Take the default size limit of the broker's version, unless the operator or the broker said better."""
        if self.config.max_message_size is None and self._size_limit.source != SIZE_LIMIT_FROM_REFUSAL:
            self._size_limit = choose_limit(None, version)

    def _learn_size_limit(self, error: BaseException) -> None:
        """A channel closed for a too large message names the broker's real limit: check against it from now on."""
        refusal = parse_size_refusal(error.reply_text) if isinstance(error, MQChannelClosedError) else None
        if refusal is not None:
            size, limit = refusal
            self._size_limit = SizeLimit(limit, SIZE_LIMIT_FROM_REFUSAL)
            log.warning("RabbitMQ refused a message of %s (its limit is %s): results over it now go to the "
                        "output stage as failed", format_size(size), format_size(limit))

    def _mq_lost(self, error: BaseException) -> None:
        """The channel is gone: its deliveries will be redelivered; forget them and reconnect."""
        log.error("RabbitMQ connection lost: %s", error)
        self._learn_size_limit(error)
        self._last_mq_error = str(error)   # so that the reconnection is logged
        if self._session is not None:
            self._session.close()
        self._session = None
        self._generation += 1
        self._tracker.clear()
        self._ack_upto = None
        self._outcomes.clear()
        self.processing.take_waiting()
        self.stage.consuming_stopped()
        self._set_status(zk_paths.MQ_CONNECTION_FAILED)
        self._mq_retry_at = time.monotonic() + self._mq_backoff.delay()

    # --- stage life cycle ----------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Apply the stage state's next action (stopping the consumer may allow the next one at once)."""
        for _attempt in range(2):
            in_flight = bool(len(self._tracker)) or not self.processing.idle
            action = self.stage.next_action(time.monotonic(), in_flight)
            if action is Action.STOP_CONSUMING:
                self._stop_consuming()
                if self._session is None or self.stage.consuming:
                    return
                continue
            if action is Action.START_CONSUMING:
                self._start_consuming(self.stage.target().stage)
            elif action is Action.REPORT_IDLE:
                self.stage.resubscribe = False
                self._set_status(zk_paths.IDLE)
            elif action is Action.CONFIGURE:
                self._configure(self.stage.target())
            return

    def _configure(self, target: Target) -> None:
        still_failed = self.stage.begin_configure(target)
        if not still_failed:
            self._set_status(zk_paths.CONFIGURING if target.stage else zk_paths.IDLE)
        if target.stage:
            log.info("configuring stage %s (version %s)", target.stage, target.version or "-")
        self.processing.run_job(lambda: self._setup_job(target))

    def _setup_job(self, target: Target) -> None:
        """On the processing thread: retire the old processor, take or build the new one, post StageConfigured."""
        old, self.processing.context = self.processing.context, None
        # The wanted processor leaves the pool before the old one enters it: with room for one warm model,
        # A -> B -> A still finds A.
        if target.stage and self._setup_from_pool(target):
            if old is not None:
                self._retire(old)
            return
        if old is not None:
            self._retire(old)   # before loading: its memory may be needed
        if not target.stage:
            self.post(StageConfigured(target, None))
            return
        try:
            processor, version, seconds = self.loader.load(target.stage)
        except StageSetupError as error:
            self.post(StageConfigured(target, None, str(error), transient=error.transient))
            return
        except Exception as error:   # a bug must not leave the worker waiting for this job forever
            log.debug("stage set-up failed", exc_info=True)
            self.post(StageConfigured(target, None, f"{type(error).__name__}: {error}"))
            return
        self.processing.context = StageContext(target.stage, version, processor)
        self.post(StageConfigured(target, version, "", seconds, batch_pages=_batch_pages(processor)))

    def _setup_from_pool(self, target: Target) -> bool:
        """Take the stage's processor from the warm-model pool when it holds this version (processing thread)."""
        if not self.warm.settings.enabled or not target.version:
            return False
        started = time.monotonic()
        processor, stale = self.warm.take(target.stage, target.version)
        for item in stale:
            self._close_processor(target.stage, item)
        if processor is None:
            return False
        self.processing.context = StageContext(target.stage, target.version, processor)
        self.post(StageConfigured(target, target.version, "", time.monotonic() - started,
                                  batch_pages=_batch_pages(processor), warm=True))
        return True

    def _retire(self, old: StageContext) -> None:
        """The processor of the stage being left: into the warm-model pool, or closed."""
        for processor in self.warm.put(old.stage, old.version, old.processor, memory_bytes(old.processor)):
            self._close_processor(old.stage if processor is old.processor else "a warm stage", processor)
        if self.warm.settings.enabled and len(self.warm):
            log.info("warm models: %s (%.1f MiB)", ", ".join(f"{stage} {version}" for stage, version in
                                                             self.warm.kept()), self.warm.total_bytes / 2**20)

    @staticmethod
    def _close_processor(stage: str, processor: object) -> None:
        try:
            processor.close()   # type: ignore[attr-defined]
        except Exception as error:
            log.warning("closing the processor of stage %s failed: %s", stage, error)

    def _on_stage_configured(self, event: StageConfigured) -> None:
        target = event.target
        if event.error:
            self._setup_failed(target, event.error, event.transient)
            return
        self.stage.configured(target, event.version)
        if not target.stage:
            self._set_status(zk_paths.IDLE)
            return
        self.stage.min_prefetch = 2 * event.batch_pages if event.batch_pages > 1 else 0
        log.info("stage %s ready (version %s) in %.2f s%s", target.stage, event.version or "-", event.seconds,
                 " from the warm-model pool (no download, no load)" if event.warm else "")
        worker_metrics.stage_taken_up(target.stage, event.seconds)
        try:
            stats.record_switch_time(self.zk, target.stage, event.seconds, self.worker_id)
        except Exception as error:   # statistics are best effort
            log.warning("could not record the switch time of stage %s: %s", target.stage, error)

    def _setup_failed(self, target: Target, error: str, transient: bool) -> None:
        """Report a failed set-up once per series of identical failures and schedule the next attempt."""
        self._set_status(self.stage.setup_failed(target, time.monotonic(), transient))
        if not transient:
            log.error("cannot take up stage %s: %s (next attempt in %.0f s or when the stage changes)",
                      target.stage, error, CONFIG_RETRY_INTERVAL)
        elif error != self.stage.last_setup_error:
            log.warning("cannot take up stage %s yet: %s (a service is unreachable; retrying every %.1f s at most)",
                        target.stage, error, self.stage.setup_backoff.cap)
            self.stage.last_setup_error = error

    def _start_consuming(self, stage: str) -> None:
        assert self._session is not None
        average = self._averages.get(stage)
        if average is None:
            raw = self.zk.get(zk_paths.stage_avg_msg_time(stage))
            average = zk_paths.decode_float(raw) if raw else None
        prefetch = stats.choose_prefetch(average, self.stage.min_prefetch)
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
            self._setup_failed(self.stage.target(), f"cannot consume: {error}", transient=False)
            if self._session is not None and not self._session.is_open:
                self._mq_lost(error)
            return
        self.stage.consuming_started(stage, prefetch)
        log.info("consuming stage %s (prefetch %d)", stage, prefetch)
        self._set_status(zk_paths.PROCESSING)

    def _stop_consuming(self) -> None:
        """Cancel the consumer and put deliveries not started back in the queue (in-flight ones finish)."""
        assert self._session is not None
        stage = self.stage.consuming
        self.stage.consuming_stopped()
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
        fitted = fit_to_limit(outcome, self._size_limit.limit, self.worker_id)
        if fitted is not outcome:
            worker_metrics.result_too_large(outcome.delivery.queue)
        outcome = fitted
        route = outcome.route
        assert route is not None
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
        reason = self.stop.reason or "stopping"
        log.info("worker %s stopping: %s", self.worker_id, reason)
        deadline = time.monotonic() + STOP_GRACE
        session = self._session
        if session is not None:
            try:
                if self.stage.consuming:
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


def _batch_pages(processor: object) -> int:
    """How many requests the processor reads in one step (1 unless it batches across pages)."""
    value = getattr(processor, "batch_pages", 1)
    return value if isinstance(value, int) and value > 1 else 1
