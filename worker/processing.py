"""The processing thread: runs the stage's processor off the RabbitMQ thread.

The main thread owns the RabbitMQ connection and must keep pumping it
(heartbeats, confirms), so requests are handed to this one thread.  For cheap
processors the handoff itself would dominate, so the thread takes every
delivery waiting at once and hands the outcomes back in batches; for slow ones
each outcome is handed back as soon as it is ready.

Jobs (configure a stage, close the processor) run on the same thread, so the
processor is only ever touched by one thread and a stage is never reconfigured
while a request is in progress.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.message_size import format_size
from pero_worker.libs.mq import Delivery
from pero_worker.worker import metrics as worker_metrics
from pero_worker.worker import routing
from pero_worker.worker.routing import Route
from pero_worker.worker.stage_log import RequestLogCapture, append_stage_log, now_ns

log = logging.getLogger(__name__)

# Outcomes are handed back at least this often while a batch is being processed.
HANDOFF_INTERVAL = 0.02
# A request's StageLog status -> its failure reason in the metrics (worker/metrics.py); OK is no failure.
_FAILURE_KINDS = {routing.STATUS_FAILED: "failed", routing.STATUS_ERROR: "error"}


class Processor(Protocol):
    def process(self, request: ProcessingRequest) -> None: ...
    def close(self) -> None: ...


@dataclass
class StageContext:
    stage: str
    version: str
    processor: Processor


@dataclass
class Outcome:
    """What to do with one delivery: publish `body` along `route` (then ack), or requeue it (route None)."""
    delivery: Delivery
    generation: int
    route: Route | None
    body: bytes = b""
    priority: int = 0
    headers: dict[str, Any] | None = None
    # Kept so the main thread can re-route after a return (None for raw dead letters).
    request: ProcessingRequest | None = None
    seconds: float = 0.0


def dead_letter_headers(reason: str, source_queue: str, worker_id: str) -> dict[str, Any]:
    return {"reason": reason, "source_queue": source_queue, "worker_id": worker_id}


class ProcessingThread:
    def __init__(self, worker_id: str, capture: RequestLogCapture, on_outcomes: Callable[[list[Outcome]], None],
                 on_timing: Callable[[str, float], None], is_processing_error: Callable[[BaseException], bool]) -> None:
        self.worker_id = worker_id
        self._capture = capture
        self._on_outcomes = on_outcomes
        self._on_timing = on_timing
        self._is_processing_error = is_processing_error
        self._cond = threading.Condition()
        self._waiting: deque[tuple[Delivery, int]] = deque()
        self._jobs: deque[Callable[[], None]] = deque()
        self._busy = False
        self._stopped = False
        self.context: StageContext | None = None   # touched only by this thread (jobs and batches)
        self._thread = threading.Thread(target=self._run, name="processing", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    # --- main-thread side -------------------------------------------------------

    def submit(self, delivery: Delivery, generation: int) -> None:
        with self._cond:
            self._waiting.append((delivery, generation))
            if not self._busy:
                self._cond.notify()

    def run_job(self, job: Callable[[], None]) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()

    def take_waiting(self) -> list[Delivery]:
        """Deliveries not started yet (to requeue on a stage switch or stop)."""
        with self._cond:
            taken = [delivery for delivery, _generation in self._waiting]
            self._waiting.clear()
        return taken

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._busy and not self._waiting and not self._jobs

    # --- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopped or self._jobs or self._waiting):
                    self._cond.wait()
                if self._stopped:
                    return
                self._busy = True
                job = self._jobs.popleft() if self._jobs else None
            try:
                if job is not None:
                    job()
                else:
                    self._process_waiting()
            except Exception:  # a bug here must not kill the thread (and with it the worker)
                log.exception("internal error in the processing thread")
            finally:
                with self._cond:
                    self._busy = False

    def _next_group(self) -> list[tuple[Delivery, int]]:
        """The deliveries for one processing step: one, or as many as a batching processor reads together."""
        context = self.context
        size = max(1, int(getattr(context.processor, "batch_pages", 1))) if context is not None else 1
        with self._cond:
            if self._stopped or self._jobs:
                return []
            group = []
            while self._waiting and len(group) < size:
                group.append(self._waiting.popleft())
            return group

    def _process_waiting(self) -> None:
        """Process deliveries (so a switch can requeue the rest), handing outcomes back in batches.

        A processor that crops ahead (`crops_ahead`) keeps one begun group ahead: each turn runs that group's
        shared step (the network; a GPU stage then hands its pages' tails to its finishing processes), begins
        the next group (its pages go to the crop pool) while those tails run, and only then finishes the
        group that ran, so the network, the cropping and the tails of consecutive groups overlap."""
        ready: list[Outcome] = []
        last_handoff = time.monotonic()
        ahead: _Group | None = None
        while (group := self._next_group()) or ahead is not None:
            outcomes: list[Outcome] = []
            ran = self._run_shared(ahead.pending) if ahead is not None else None
            begun: _Group | None = None
            if len(group) > 1:
                try:
                    begun = self.begin_group(group)
                except Exception as error:   # a bug of ours: park the requests where an operator sees them
                    outcomes += self._internal_error(group, error)
            if ahead is not None and ran is not None:
                previous, ahead = ahead, None
                outcomes += self._guarded(previous.items,
                                          lambda previous=previous, ran=ran: self.conclude_group(previous, *ran))
            if len(group) == 1:
                outcomes += self._guarded(group, lambda: [self.handle(*group[0])])
            elif begun is not None:
                if self._crops_ahead() and self._has_waiting():
                    ahead = begun
                else:
                    outcomes += self._guarded(group, lambda begun=begun: self.finish_group(begun))
            ready.extend(outcomes)
            if time.monotonic() - last_handoff >= HANDOFF_INTERVAL:
                self._on_outcomes(ready)
                ready = []
                last_handoff = time.monotonic()
        if ready:
            self._on_outcomes(ready)

    def _guarded(self, group: list[tuple[Delivery, int]], step: Callable[[], list[Outcome]]) -> list[Outcome]:
        try:
            return step()
        except Exception as error:   # a bug of ours: park the requests where an operator sees them
            return self._internal_error(group, error)

    def _crops_ahead(self) -> bool:
        context = self.context
        return context is not None and bool(getattr(context.processor, "crops_ahead", False))

    def _has_waiting(self) -> bool:
        with self._cond:
            return bool(self._waiting) and not self._jobs and not self._stopped

    def _internal_error(self, group: list[tuple[Delivery, int]], error: Exception) -> list[Outcome]:
        log.exception("internal error handling requests from %s", group[0][0].queue if group else "?")
        reason = f"{routing.REASON_INTERNAL_ERROR}: {type(error).__name__}: {error}"
        for delivery, _generation in group:
            worker_metrics.request_done(delivery.queue, 0.0, "dead_letter")
        return [Outcome(delivery, generation, routing.dead_letter(reason), delivery.body, delivery.priority,
                        dead_letter_headers(reason, delivery.queue, self.worker_id))
                for delivery, generation in group]

    def _admit(self, delivery: Delivery, generation: int) -> tuple[ProcessingRequest, StageContext] | Outcome:
        """The request and the stage to process it in, or the outcome for a request that is not processed."""
        queue = delivery.queue
        request, reason = routing.parse_request(delivery.body)
        if request is not None:
            reason = routing.check_request(request.processing_stages, queue)
        if reason:
            log.warning("request from queue %s sent to the dead-letter queue: %s", queue, reason)
            worker_metrics.request_done(queue, 0.0, "dead_letter")
            return Outcome(delivery, generation, routing.dead_letter(reason), delivery.body, delivery.priority,
                           dead_letter_headers(reason, queue, self.worker_id))
        assert request is not None
        context = self.context
        if context is None or context.stage != queue:
            # Cannot happen while the daemon drains before switching; requeue rather than guess.
            return Outcome(delivery, generation, None)
        return request, context

    def _status_after(self, error: BaseException | None, request: ProcessingRequest, queue: str) -> str:
        """The StageLog status for a processing step that raised `error` (None: it did not); logs why."""
        if error is None:
            return routing.STATUS_OK
        if self._is_processing_error(error):
            log.warning("request %s failed in stage %s: %s", request.uuid or "?", queue, error)
            return routing.STATUS_FAILED
        log.error("request %s crashed the %s processor: %s: %s\n%s", request.uuid or "?", queue,
                  type(error).__name__, error, "".join(traceback.format_exception(error, limit=8)).rstrip())
        return routing.STATUS_ERROR

    def _conclude(self, delivery: Delivery, generation: int, request: ProcessingRequest, context: StageContext,
                  status: str, start_ns: int, log_text: str, seconds: float) -> Outcome:
        """Append the StageLog, record the timing and route the request on."""
        queue = delivery.queue
        append_stage_log(request, host_id=self.worker_id, stage=queue, start_ns=start_ns, end_ns=now_ns(),
                         status=status, log_text=log_text, version=context.version)
        worker_metrics.request_done(queue, seconds, _FAILURE_KINDS.get(status))
        if status == routing.STATUS_OK:
            # Failures are usually fast rejections: counting them would make a slow stage look fast.
            self._on_timing(queue, seconds)
        route = routing.plan_next(request.processing_stages, status == routing.STATUS_OK)
        del request.processing_stages[:]
        request.processing_stages.extend(route.stages)
        return Outcome(delivery, generation, route, request.SerializeToString(), request.priority, None, request,
                       seconds)

    def handle(self, delivery: Delivery, generation: int) -> Outcome:
        """Decide (and do the processing for) one delivery.  Never raises for bad input."""
        admitted = self._admit(delivery, generation)
        if isinstance(admitted, Outcome):
            return admitted
        request, context = admitted
        start_ns = now_ns()
        started = time.perf_counter()
        error: BaseException | None = None
        with self._capture.capture() as lines:
            try:
                context.processor.process(request)
            except BaseException as raised:   # a processor calling sys.exit() must not kill this thread
                error = raised
            status = self._status_after(error, request, delivery.queue)
        return self._conclude(delivery, generation, request, context, status, start_ns, lines.text(),
                              time.perf_counter() - started)

    def handle_group(self, group: list[tuple[Delivery, int]]) -> list[Outcome]:
        """Several deliveries through a batching processor: begin each (its own log), run all together,
        finish each (its own log).  A request that fails fails alone; each gets the shared step's log too."""
        return self.finish_group(self.begin_group(group))

    def begin_group(self, group: list[tuple[Delivery, int]]) -> _Group:
        """Admit and begin each delivery of a group (input read, crops started); failures conclude at once."""
        begun = _Group(group, [None] * len(group), [], now_ns(), time.perf_counter())
        for index, (delivery, generation) in enumerate(group):
            admitted = self._admit(delivery, generation)
            if isinstance(admitted, Outcome):
                begun.outcomes[index] = admitted
                continue
            request, context = admitted
            with self._capture.capture() as lines:
                try:
                    job = context.processor.begin(request)
                    begun.pending.append(_Pending(index, request, context, job, lines.text()))
                    continue
                except BaseException as error:
                    status = self._status_after(error, request, delivery.queue)
            begun.outcomes[index] = self._conclude(delivery, generation, request, context, status, begun.start_ns,
                                                   lines.text(), time.perf_counter() - begun.started)
        return begun

    def finish_group(self, begun: _Group) -> list[Outcome]:
        """Run the shared step of a begun group and finish each of its requests."""
        return self.conclude_group(begun, *self._run_shared(begun.pending))

    def conclude_group(self, begun: _Group, shared: str, shared_error: BaseException | None) -> list[Outcome]:
        """Finish each request of a group whose shared step has run (its log lines and error as given)."""
        per_request = (time.perf_counter() - begun.started) / max(1, len(begun.pending))
        for item in begun.pending:
            delivery, generation = begun.items[item.index]
            error: BaseException | None = shared_error
            with self._capture.capture() as lines:
                try:
                    if error is None:
                        item.context.processor.finish(item.job)
                except BaseException as raised:
                    error = raised
                status = self._status_after(error, item.request, delivery.queue)
            text = "\n".join(part for part in (item.log_text, shared, lines.text()) if part)
            begun.outcomes[item.index] = self._conclude(delivery, generation, item.request, item.context, status,
                                                        begun.start_ns, text, per_request)
        return begun.outcomes  # type: ignore[return-value]

    def _run_shared(self, pending: list[_Pending]) -> tuple[str, BaseException | None]:
        """The shared step of a group (the network over all pages); its log lines belong to every request.
        The processor keeps a page's own failure in its job; what escapes here fails the whole group."""
        if not pending:
            return "", None
        with self._capture.capture() as lines:
            try:
                pending[0].context.processor.run([item.job for item in pending])
            except BaseException as error:   # a crash of the shared step: every request of it gets ERROR
                return lines.text(), error
        return lines.text(), None


@dataclass
class _Group:
    items: list[tuple[Delivery, int]]
    outcomes: list[Outcome | None]
    pending: list[_Pending]
    start_ns: int
    started: float


@dataclass
class _Pending:
    index: int
    request: ProcessingRequest
    context: StageContext
    job: Any
    log_text: str


def reroute_after_return(outcome: Outcome, worker_id: str) -> Outcome:
    """The publish along outcome.route came back unroutable: the outcome for the next attempt."""
    assert outcome.route is not None
    route = routing.plan_after_return(outcome.route)
    delivery = outcome.delivery
    request = outcome.request
    if route.kind is routing.RouteKind.DEAD_LETTER:
        body = request.SerializeToString() if request is not None else delivery.body
        return Outcome(delivery, outcome.generation, route, body, outcome.priority,
                       dead_letter_headers(route.reason, delivery.queue, worker_id), request)
    assert request is not None
    if request.logs:
        entry = request.logs[-1]
        if entry.status == routing.STATUS_OK:
            entry.status = routing.STATUS_UNROUTABLE
        entry.log = (entry.log + "\n" if entry.log else "") + route.reason
    log.warning("request %s: %s", request.uuid or "?", route.reason)
    del request.processing_stages[:]
    request.processing_stages.extend(route.stages)
    return Outcome(delivery, outcome.generation, route, request.SerializeToString(), outcome.priority, None,
                   request)


def fit_to_limit(outcome: Outcome, limit: int, worker_id: str) -> Outcome:
    """The outcome to publish when the broker takes messages of at most `limit` bytes (pure).

    A successor over the limit would make the broker close the channel; the input
    would come back and fail the same way for ever.  So a request whose results
    grew too large goes to the output stage as it came in, with a failed StageLog
    that says why (its input fitted: the broker took it); only when even that is
    over the limit does the raw input go to the dead-letter queue.
    """
    if outcome.route is None or len(outcome.body) <= limit:
        return outcome
    delivery = outcome.delivery
    if outcome.route.kind is routing.RouteKind.DEAD_LETTER:
        return outcome       # the raw input (or its failure record): nothing smaller to send
    request, _reason = routing.parse_request(delivery.body)
    done = outcome.request.logs[-1] if outcome.request is not None and outcome.request.logs else None
    text = (f"the result of stage {delivery.queue!r} is {format_size(len(outcome.body))}, over the broker's "
            f"maximum message size of {format_size(limit)}; the request goes to the output stage without it")
    if request is not None and len(request.processing_stages) >= 2:
        start_ns = done.start.ToNanoseconds() if done is not None else now_ns()
        append_stage_log(request, host_id=worker_id, stage=delivery.queue, start_ns=start_ns, end_ns=now_ns(),
                         status=routing.STATUS_FAILED, log_text=text, version=done.version if done else "")
        route = routing.plan_next(request.processing_stages, False)
        del request.processing_stages[:]
        request.processing_stages.extend(route.stages)
        body = request.SerializeToString()
        if len(body) <= limit:
            log.warning("request %s: %s", request.uuid or "?", text)
            return Outcome(delivery, outcome.generation, route, body, outcome.priority, None, request,
                           outcome.seconds)
    reason = f"{routing.REASON_TOO_LARGE}: {text}, and the request with its failure record is still too large"
    log.warning("request from queue %s sent to the dead-letter queue: %s", delivery.queue, reason)
    return Outcome(delivery, outcome.generation, routing.dead_letter(reason), delivery.body, delivery.priority,
                   dead_letter_headers(reason, delivery.queue, worker_id))
