"""Where a request goes next: pure decisions, no I/O (docs/protocol.md §3, where a request goes).

The daemon parses a delivery, asks these functions what to do, and applies the
answer (publish, then ack).  Keeping the rules here makes every case a row in
a table-driven test instead of a scenario that needs RabbitMQ.

Rules:
- a body that is not a ProcessingRequest, or a request that does not belong in
  this queue, cannot be routed by its own stage list: it goes, raw, to the
  dead-letter queue with a reason;
- a processed request loses its first stage and goes to the new first stage;
- a failed request goes straight to the last stage (the output stage);
- a successor queue that does not exist (publish returned) sends the request to
  the output stage with a failure log; an output stage that does not exist
  sends it to the dead-letter queue.  Nothing is dropped.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from pero_worker.libs.message_pb2 import ProcessingRequest

# StageLog.status words written by the worker.
STATUS_OK = "OK"
STATUS_FAILED = "FAILED"            # the processor rejected this request (ProcessingError)
STATUS_ERROR = "ERROR"              # the processor crashed on this request (unexpected exception)
STATUS_UNROUTABLE = "UNROUTABLE"    # processed, but the next stage's queue does not exist

# Dead-letter reasons (the `reason` header) start with one of these words, so tools can group them.
REASON_UNPARSABLE = "unparsable"
REASON_NO_STAGES = "no_stages"
REASON_WRONG_QUEUE = "wrong_queue"
REASON_NO_OUTPUT_STAGE = "no_output_stage"
REASON_OUTPUT_UNROUTABLE = "output_unroutable"
REASON_INTERNAL_ERROR = "internal_error"   # the worker itself failed on this request (a bug)
REASON_TOO_LARGE = "too_large"             # not even the failed request fits under the broker's size limit


class RouteKind(enum.Enum):
    NEXT_STAGE = "next_stage"     # processed: on to the following stage
    OUTPUT = "output"             # failed: straight to the output (last) stage
    DEAD_LETTER = "dead_letter"   # cannot be routed by its own stage list


@dataclass(frozen=True)
class Route:
    kind: RouteKind
    # Target queue; None for DEAD_LETTER (the daemon knows the dead-letter queue's name).
    queue: str | None
    # processing_stages the published request carries (empty for DEAD_LETTER: the body is published as is).
    stages: tuple[str, ...] = ()
    reason: str = ""


def dead_letter(reason: str) -> Route:
    return Route(RouteKind.DEAD_LETTER, None, (), reason)


def parse_request(body: bytes) -> tuple[ProcessingRequest | None, str]:
    """(request, '') or (None, reason).  Message bodies are untrusted input."""
    request = ProcessingRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError, RuntimeError) as error:
        return None, f"{REASON_UNPARSABLE}: body is not a ProcessingRequest ({error or 'decode error'})"
    return request, ""


def check_request(stages: Sequence[str], queue: str) -> str:
    """'' when a request with these remaining stages may be processed in `queue`, else the dead-letter reason.

    A request whose only stage is this queue has no output stage to go to:
    processing it would leave it nowhere to be published, so it is refused
    before any work is spent on it.
    """
    if not stages:
        return f"{REASON_NO_STAGES}: request in queue {queue!r} has no processing stages"
    if stages[0] != queue:
        return f"{REASON_WRONG_QUEUE}: request's first stage is {stages[0]!r}, not this queue {queue!r}"
    if len(stages) < 2:
        return f"{REASON_NO_OUTPUT_STAGE}: request has no stage after {queue!r} (no output stage)"
    return ""


def plan_next(stages: Sequence[str], succeeded: bool) -> Route:
    """Where a request goes after this stage (its first stage) processed it or failed on it.

    `stages` must have passed check_request (at least this stage and the output stage).
    """
    if len(stages) < 2:
        raise ValueError("plan_next needs this stage and at least one more")
    if succeeded:
        remaining = tuple(stages[1:])
        return Route(RouteKind.NEXT_STAGE, remaining[0], remaining)
    output = stages[-1]
    return Route(RouteKind.OUTPUT, output, (output,))


def plan_after_return(route: Route) -> Route:
    """The broker returned the publish for `route` (its queue does not exist): where to try next."""
    if route.kind is RouteKind.DEAD_LETTER:
        raise ValueError("the dead-letter queue is declared by the worker; it cannot be unroutable")
    output = route.stages[-1]
    if route.queue != output:
        return Route(RouteKind.OUTPUT, output, (output,),
                     f"next stage queue {route.queue!r} does not exist; sent to the output stage {output!r}")
    return dead_letter(f"{REASON_OUTPUT_UNROUTABLE}: output stage queue {output!r} does not exist")
