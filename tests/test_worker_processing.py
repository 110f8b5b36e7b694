"""ProcessingThread.handle and re-routing: what the worker does with each kind of delivery (no services needed)."""
from __future__ import annotations

import logging

import pytest

from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.mq import Delivery
from pero_worker.worker import routing
from pero_worker.worker.processing import Outcome, ProcessingThread, StageContext, reroute_after_return
from pero_worker.worker.processors import ProcessingError, build_processor
from pero_worker.worker.routing import RouteKind
from pero_worker.worker.stage_log import RequestLogCapture

STAGE = "ocr"


class Crashing:
    """A processor with a bug (what a broken pero-ocr model might do)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def process(self, request: ProcessingRequest) -> None:
        logging.getLogger("crashing").info("about to crash")
        raise self.error

    def close(self) -> None:
        pass


def _body(stages: list[str], content: bytes = b"\xff\xd8\xff\xe0jpeg") -> bytes:
    request = ProcessingRequest(uuid="r1", priority=1, processing_stages=stages)
    request.results.add(name="a.jpg", content=content)
    return request.SerializeToString()


def _delivery(body: bytes, tag: int = 1) -> Delivery:
    return Delivery(delivery_tag=tag, body=body, priority=1, headers={}, redelivered=False, queue=STAGE)


@pytest.fixture
def capture():
    handler = RequestLogCapture()
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


def _thread(capture, processor) -> tuple[ProcessingThread, list]:
    timings: list = []
    thread = ProcessingThread("w1", capture, lambda outcomes: None, lambda stage, s: timings.append((stage, s)),
                              lambda error: isinstance(error, ProcessingError))
    thread.context = StageContext(STAGE, "v2", processor)
    return thread, timings


DUMMY = "[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\n"
FAILTEST = "[WORKER]\nFAILTEST = TRUE\n"


@pytest.mark.parametrize("body, processor, kind, queue, stages, status, log_part", [
    (_body([STAGE, "b", "out"]), DUMMY, RouteKind.NEXT_STAGE, "b", ["b", "out"], "OK", None),
    (_body([STAGE, "out"]), DUMMY, RouteKind.NEXT_STAGE, "out", ["out"], "OK", None),
    (_body([STAGE, "b", "out"]), FAILTEST, RouteKind.OUTPUT, "out", ["out"], "FAILED", "fail"),
    (_body([STAGE, "b", "out"]), Crashing(RuntimeError("model exploded")), RouteKind.OUTPUT, "out", ["out"], "ERROR",
     "model exploded"),
    (_body([STAGE, "out"]), Crashing(SystemExit(3)), RouteKind.OUTPUT, "out", ["out"], "ERROR", "SystemExit"),
])
def test_processed_requests(capture, body, processor, kind, queue, stages, status, log_part) -> None:
    if isinstance(processor, str):
        processor = build_processor(processor, None)
    thread, timings = _thread(capture, processor)
    outcome = thread.handle(_delivery(body), 5)
    assert (outcome.route.kind, outcome.route.queue, outcome.generation) == (kind, queue, 5)
    assert outcome.headers is None and outcome.priority == 1
    published = ProcessingRequest()
    published.ParseFromString(outcome.body)
    assert list(published.processing_stages) == stages
    entry = published.logs[-1]
    assert (entry.host_id, entry.stage, entry.status, entry.version) == ("w1", STAGE, status, "v2")
    if log_part:
        assert log_part.lower() in entry.log.lower()
    assert published.results[0].name == "a.jpg"
    # only successful requests count towards avg_msg_time
    assert [stage for stage, _ in timings] == ([STAGE] if status == "OK" else [])


@pytest.mark.parametrize("body, reason", [
    (b"\xff\xff\xff", "unparsable"),
    (_body([]), "no_stages"),
    (_body(["other", "out"]), "wrong_queue"),
    (_body([STAGE]), "no_output_stage"),
])
def test_dead_letters_keep_the_raw_body(capture, body, reason) -> None:
    thread, timings = _thread(capture, build_processor(DUMMY, None))
    outcome = thread.handle(_delivery(body), 0)
    assert outcome.route.kind is RouteKind.DEAD_LETTER and outcome.route.queue is None
    assert outcome.body == body
    assert outcome.headers["reason"].startswith(reason + ":")
    assert (outcome.headers["source_queue"], outcome.headers["worker_id"]) == (STAGE, "w1")
    assert timings == []


def test_without_a_context_the_request_is_requeued(capture) -> None:
    thread, _ = _thread(capture, build_processor(DUMMY, None))
    thread.context = None
    assert thread.handle(_delivery(_body([STAGE, "out"])), 0).route is None


def test_stage_log_holds_only_this_requests_lines(capture) -> None:
    thread, _ = _thread(capture, Crashing(RuntimeError("boom")))
    logging.getLogger("elsewhere").info("before the request")
    outcome = thread.handle(_delivery(_body([STAGE, "out"])), 0)
    published = ProcessingRequest()
    published.ParseFromString(outcome.body)
    text = published.logs[-1].log
    assert "about to crash" in text and "boom" in text and "before the request" not in text


def test_reroute_after_return(capture) -> None:
    thread, _ = _thread(capture, build_processor(DUMMY, None))
    first = thread.handle(_delivery(_body([STAGE, "missing", "out"])), 3)
    second = reroute_after_return(first, "w1")
    assert (second.route.kind, second.route.queue, second.generation) == (RouteKind.OUTPUT, "out", 3)
    published = ProcessingRequest()
    published.ParseFromString(second.body)
    assert list(published.processing_stages) == ["out"]
    assert published.logs[-1].status == routing.STATUS_UNROUTABLE and "'missing'" in published.logs[-1].log
    third = reroute_after_return(second, "w1")
    assert third.route.kind is RouteKind.DEAD_LETTER
    assert third.headers["reason"].startswith("output_unroutable:")
    dead = ProcessingRequest()
    dead.ParseFromString(third.body)
    assert dead.uuid == "r1" and len(dead.logs) == 1     # the processed request, with its stage log


def test_internal_errors_are_dead_lettered(capture, monkeypatch) -> None:
    handed: list[list[Outcome]] = []
    thread = ProcessingThread("w1", capture, handed.append, lambda *a: None, lambda error: False)
    thread.context = StageContext(STAGE, "1", build_processor(DUMMY, None))

    def broken(*_args):
        raise KeyError("bug")
    monkeypatch.setattr(thread, "handle", broken)
    thread.submit(_delivery(_body([STAGE, "out"]), tag=9), 0)
    thread._process_waiting()
    [[outcome]] = handed
    assert outcome.route.kind is RouteKind.DEAD_LETTER and outcome.headers["reason"].startswith("internal_error:")
    assert outcome.delivery.delivery_tag == 9


# --- groups: a processor that reads several requests in one step (BATCH_PAGES) -------------------------

class Grouping:
    """A batching processor in miniature: begin/run/finish as PeroOcrProcessor has them, recording the calls.

    begin refuses a request whose content is b"bad-input"; run fails a page whose content is b"bad-page"
    (kept in its job, as the real one does); `crash` makes run raise (a bug in the shared step)."""

    def __init__(self, batch_pages: int, crops_ahead: bool = False, crash: bool = False) -> None:
        self.batch_pages = batch_pages
        self.crops_ahead = crops_ahead
        self.crash = crash
        self.calls: list[tuple[str, list[str]]] = []

    def begin(self, request: ProcessingRequest) -> dict:
        self.calls.append(("begin", [request.uuid]))
        if request.results[0].content == b"bad-input":
            raise ProcessingError("not an image")
        logging.getLogger("grouping").info("begun %s", request.uuid)
        return {"request": request, "error": None}

    def run(self, jobs: list[dict]) -> None:
        self.calls.append(("run", [job["request"].uuid for job in jobs]))
        logging.getLogger("grouping").info("read %d pages together", len(jobs))
        if self.crash:
            raise RuntimeError("shared step exploded")
        for job in jobs:
            if job["request"].results[0].content == b"bad-page":
                job["error"] = ProcessingError("the network failed on this page")

    def finish(self, job: dict) -> None:
        self.calls.append(("finish", [job["request"].uuid]))
        if job["error"] is not None:
            raise job["error"]
        job["request"].results.add(name="a.jpg_page.xml", content=b"<PcGts/>")

    def process(self, request: ProcessingRequest) -> None:
        self.calls.append(("process", [request.uuid]))

    def close(self) -> None:
        pass


def _run_thread(capture, processor, contents: list[bytes]) -> list[Outcome]:
    import threading
    done: list[Outcome] = []
    finished = threading.Event()

    def on_outcomes(outcomes: list[Outcome]) -> None:
        done.extend(outcomes)
        if len(done) >= len(contents):
            finished.set()
    thread = ProcessingThread("w1", capture, on_outcomes, lambda stage, s: None,
                              lambda error: isinstance(error, ProcessingError))
    thread.context = StageContext(STAGE, "v2", processor)
    for tag, content in enumerate(contents, 1):   # all waiting before the thread starts: groups are full
        request = ProcessingRequest(uuid=f"r{tag}", processing_stages=[STAGE, "out"])
        request.results.add(name="a.jpg", content=content)
        thread.submit(_delivery(request.SerializeToString(), tag), 0)
    thread.start()
    assert finished.wait(10), f"only {len(done)} outcomes"
    thread.stop()
    return sorted(done, key=lambda outcome: outcome.delivery.delivery_tag)


@pytest.mark.parametrize("crops_ahead", [False, True])
def test_groups_fail_only_the_bad_requests(capture, crops_ahead) -> None:
    processor = Grouping(3, crops_ahead)
    contents = [b"ok", b"bad-input", b"ok", b"bad-page", b"ok", b"ok", b"ok"]
    outcomes = _run_thread(capture, processor, contents)
    statuses = [outcome.request.logs[-1].status for outcome in outcomes]
    assert statuses == ["OK", "FAILED", "OK", "FAILED", "OK", "OK", "OK"]
    assert all(outcome.route.queue == "out" for outcome in outcomes)
    runs = [uuids for call, uuids in processor.calls if call == "run"]
    assert runs == [["r1", "r3"], ["r4", "r5", "r6"]]
    assert ("process", ["r7"]) in processor.calls      # a lone request goes through process() (PageParser)
    logs = {outcome.request.uuid: outcome.request.logs[-1].log for outcome in outcomes}
    assert "begun r1" in logs["r1"] and "read 2 pages together" in logs["r1"] and "begun r3" not in logs["r1"]
    assert "not an image" in logs["r2"] and "read" not in logs["r2"]
    assert "the network failed on this page" in logs["r4"] and "read 3 pages together" in logs["r4"]
    order = [call for call, _uuids in processor.calls if call in ("begin", "run")]
    if crops_ahead:   # a group runs, the next is begun (cropped ahead) while its tails run, then it finishes
        calls = [call for call, _uuids in processor.calls]
        assert calls == ["begin"] * 3 + ["run"] + ["begin"] * 3 + ["finish"] * 2 + ["run"] + ["finish"] * 3 + \
            ["process"], calls
    else:
        assert order[:5] == ["begin"] * 3 + ["run", "begin"], order


def test_a_crash_of_the_shared_step_fails_its_group_with_error(capture) -> None:
    outcomes = _run_thread(capture, Grouping(2, crash=True), [b"ok", b"ok", b"ok", b"ok"])
    assert [outcome.request.logs[-1].status for outcome in outcomes] == ["ERROR"] * 4
    assert all("shared step exploded" in outcome.request.logs[-1].log for outcome in outcomes)
