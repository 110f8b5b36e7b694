"""Table-driven tests of the worker's routing decisions (worker/routing.py)."""
from __future__ import annotations

import pytest

from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.worker import routing
from pero_worker.worker.routing import Route, RouteKind


def _body(stages: list[str]) -> bytes:
    request = ProcessingRequest(uuid="u1", page_uuid="p1", priority=1, processing_stages=stages)
    request.results.add(name="a.jpg", content=b"\xff\xd8jpeg")
    return request.SerializeToString()


@pytest.mark.parametrize("body, parses", [
    (_body(["ocr", "out"]), True),
    (b"", True),                                # an empty message parses (and has no stages)
    (b"\xff\xff\xff\xff", False),               # truncated varint / bad wire type
    (b"\x0a\x05abc", False),                    # length-delimited field longer than the body
    (b"\x2a\x02\xc3\x28", False),              # processing_stages with invalid UTF-8
])
def test_parse_request(body: bytes, parses: bool) -> None:
    request, reason = routing.parse_request(body)
    assert (request is not None) is parses
    if parses:
        assert reason == ""
    else:
        assert reason.startswith(routing.REASON_UNPARSABLE)


@pytest.mark.parametrize("stages, queue, reason_prefix", [
    (["ocr", "out"], "ocr", ""),
    (["ocr", "layout", "out"], "ocr", ""),
    ([], "ocr", routing.REASON_NO_STAGES),
    (["layout", "out"], "ocr", routing.REASON_WRONG_QUEUE),
    (["out"], "ocr", routing.REASON_WRONG_QUEUE),
    (["ocr"], "ocr", routing.REASON_NO_OUTPUT_STAGE),
])
def test_check_request(stages: list[str], queue: str, reason_prefix: str) -> None:
    reason = routing.check_request(stages, queue)
    if reason_prefix:
        assert reason.startswith(reason_prefix + ":")
        assert queue in reason
    else:
        assert reason == ""


@pytest.mark.parametrize("stages, succeeded, expected", [
    (["a", "out"], True, Route(RouteKind.NEXT_STAGE, "out", ("out",))),
    (["a", "b", "c", "out"], True, Route(RouteKind.NEXT_STAGE, "b", ("b", "c", "out"))),
    (["a", "b", "c", "out"], False, Route(RouteKind.OUTPUT, "out", ("out",))),
    (["a", "out"], False, Route(RouteKind.OUTPUT, "out", ("out",))),
    (["a", "a", "out"], True, Route(RouteKind.NEXT_STAGE, "a", ("a", "out"))),   # same stage twice is legal
])
def test_plan_next(stages: list[str], succeeded: bool, expected: Route) -> None:
    assert routing.plan_next(stages, succeeded) == expected


def test_plan_next_needs_an_output_stage() -> None:
    with pytest.raises(ValueError):
        routing.plan_next(["a"], True)


@pytest.mark.parametrize("route, kind, queue, stages, reason_part", [
    # next stage missing -> output stage, with an explanation for the failure log
    (Route(RouteKind.NEXT_STAGE, "b", ("b", "out")), RouteKind.OUTPUT, "out", ("out",), "'b' does not exist"),
    (Route(RouteKind.NEXT_STAGE, "b", ("b", "c", "out")), RouteKind.OUTPUT, "out", ("out",), "'b'"),
    # the next stage *is* the output stage and is missing -> dead letter
    (Route(RouteKind.NEXT_STAGE, "out", ("out",)), RouteKind.DEAD_LETTER, None, (),
     routing.REASON_OUTPUT_UNROUTABLE),
    # a failed request's output stage is missing -> dead letter
    (Route(RouteKind.OUTPUT, "out", ("out",)), RouteKind.DEAD_LETTER, None, (), "'out' does not exist"),
])
def test_plan_after_return(route: Route, kind: RouteKind, queue: str | None, stages: tuple, reason_part: str) -> None:
    result = routing.plan_after_return(route)
    assert (result.kind, result.queue, result.stages) == (kind, queue, stages)
    assert reason_part in result.reason


def test_plan_after_return_of_dead_letter_is_an_error() -> None:
    with pytest.raises(ValueError):
        routing.plan_after_return(routing.dead_letter("x"))


def test_returned_chain_always_ends() -> None:
    """Following returns from any route reaches the dead-letter queue in at most two steps."""
    route = routing.plan_next(["a", "b", "c", "out"], True)
    seen = [route.kind]
    while route.kind is not RouteKind.DEAD_LETTER:
        route = routing.plan_after_return(route)
        seen.append(route.kind)
    assert seen == [RouteKind.NEXT_STAGE, RouteKind.OUTPUT, RouteKind.DEAD_LETTER]
