"""fit_to_limit: what a worker publishes when a successor is over the broker's message size limit (pure)."""
from __future__ import annotations

import pytest

from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.mq import Delivery
from pero_worker.worker import routing
from pero_worker.worker.processing import Outcome, fit_to_limit
from pero_worker.worker.stage_log import append_stage_log, now_ns


def _input(stages: list[str], image: bytes) -> bytes:
    request = ProcessingRequest(uuid="u1", page_uuid="p1", processing_stages=stages)
    request.results.add(name="page.png", content=image)
    return request.SerializeToString()


def _processed(body: bytes, extra: bytes) -> Outcome:
    """The outcome of a stage that added `extra` bytes of results and routed the request on."""
    request = ProcessingRequest()
    request.ParseFromString(body)
    request.results.add(name="page_page.xml", content=extra)
    append_stage_log(request, host_id="w1", stage="a", start_ns=now_ns(), end_ns=now_ns(), status="OK",
                     log_text="", version="v3")
    route = routing.plan_next(request.processing_stages, True)
    del request.processing_stages[:]
    request.processing_stages.extend(route.stages)
    delivery = Delivery(7, body, 1, {}, False, "a")
    return Outcome(delivery, 2, route, request.SerializeToString(), 1, None, request, 0.5)


@pytest.mark.parametrize(("image", "extra", "limit", "expected"), [
    (100, 100, 10_000, "unchanged"),         # fits: published as processed
    (100, 20_000, 10_000, "output"),         # results too large, the input fits: output stage, failed
    (9_990, 20_000, 10_000, "dead_letter"),  # not even the input with a failure record fits
])
def test_fit_to_limit(image: int, extra: int, limit: int, expected: str) -> None:
    body = _input(["a", "b", "out"], b"i" * image)
    outcome = _processed(body, b"x" * extra)
    fitted = fit_to_limit(outcome, limit, "w1")
    if expected == "unchanged":
        assert fitted is outcome
        return
    assert len(fitted.body) <= limit or fitted.route.kind is routing.RouteKind.DEAD_LETTER
    assert fitted.delivery is outcome.delivery and fitted.generation == 2
    if expected == "output":
        assert fitted.route.kind is routing.RouteKind.OUTPUT and fitted.route.queue == "out"
        request = ProcessingRequest()
        request.ParseFromString(fitted.body)
        assert list(request.processing_stages) == ["out"]
        assert [r.name for r in request.results] == ["page.png"]
        assert (request.logs[-1].status, request.logs[-1].stage, request.logs[-1].version) == ("FAILED", "a", "v3")
        assert "maximum message size" in request.logs[-1].log
        assert fitted.priority == 1
    else:
        assert fitted.route.kind is routing.RouteKind.DEAD_LETTER
        assert fitted.body == body
        assert fitted.headers["reason"].startswith(routing.REASON_TOO_LARGE)
        assert fitted.headers["source_queue"] == "a"


def test_a_dead_letter_is_never_shrunk() -> None:
    body = b"\xff not a request" * 100
    delivery = Delivery(1, body, 0, {}, False, "a")
    outcome = Outcome(delivery, 1, routing.dead_letter("unparsable: x"), body, 0, {"reason": "unparsable: x"})
    assert fit_to_limit(outcome, 10, "w1") is outcome
