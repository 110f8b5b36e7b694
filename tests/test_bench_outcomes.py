"""Benches count only requests whose stage logs are all OK (bench/outcomes.py), and refuse otherwise."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pero_worker.bench.outcomes import judge
from pero_worker.libs.message_pb2 import ProcessingRequest, StageLog

REPO = Path(__file__).resolve().parent.parent


def _body(uuid: str, *statuses: str, log: str = "") -> bytes:
    request = ProcessingRequest(uuid=uuid, logs=[StageLog(stage=f"s{i}", status=status, log=log)
                                                 for i, status in enumerate(statuses)])
    return request.SerializeToString()


def test_only_requests_with_every_stage_ok_count():
    bodies = [_body("a", "OK", "OK"), _body("b", "OK", "PROCESSING_FAILED", log="boom\nmore"), _body("a", "OK", "OK"),
              _body("c", "OK"), b"\xff\xff not protobuf"]
    outcome = judge(bodies, expected=4, stages=2)
    assert outcome.ok == 1 and outcome.duplicates == 1 and not outcome.clean
    assert outcome.failed[0] == "b: s0: OK, s1: PROCESSING_FAILED (boom)"
    assert outcome.failed[1] == "c: s0: OK"                          # a stage is missing from its logs
    assert outcome.failed[2].startswith("unparsable output message")
    assert outcome.describe() == "1 of 4 request(s) OK, 3 failed, 1 duplicate(s) ignored"


def test_missing_requests_are_not_clean():
    outcome = judge([_body("a", "OK")], expected=3, stages=1)
    assert outcome.ok == 1 and outcome.missing == 2 and not outcome.clean
    assert judge([_body("a", "OK"), _body("b", "OK")], expected=2, stages=1).clean


def test_pipeline_bench_refuses_to_report_when_requests_fail(services):
    """Real workers on a FAILTEST stage: every request reaches the output queue, none is OK."""
    done = subprocess.run([sys.executable, "bench/pipeline.py", "--requests", "20", "--runs", "1", "--workers", "1",
                           "--size-kb", "5", "--failing-stage"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "RESULT" not in done.stdout
    assert "BENCH FAILED" in done.stderr and "0 of 20 request(s) OK, 20 failed" in done.stderr
    assert "FAILTEST" in done.stderr or "FAILED" in done.stderr
