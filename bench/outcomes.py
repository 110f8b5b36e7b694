"""What a bench may count: requests that came out of the pipeline with every stage log OK.

A message in the output queue is not a success: a failing stage sends its
request there too (with a failed StageLog), and a crash can duplicate one.  A
bench therefore reads the output queue, counts each uuid once and only when
every stage it went through says OK, and refuses to report a figure when any
request failed or is missing.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pero_worker.libs.message_pb2 import ProcessingRequest


@dataclass
class Outcome:
    ok: int = 0
    duplicates: int = 0
    failed: list[str] = field(default_factory=list)      # one line per failed or unreadable request
    expected: int = 0

    @property
    def missing(self) -> int:
        return max(self.expected - self.ok - len(self.failed), 0)

    @property
    def clean(self) -> bool:
        return not self.failed and self.missing == 0

    def describe(self) -> str:
        parts = [f"{self.ok} of {self.expected} request(s) OK"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.missing:
            parts.append(f"{self.missing} missing")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate(s) ignored")
        return ", ".join(parts)


def judge(bodies: Iterable[bytes], expected: int, stages: int) -> Outcome:
    """Count the output messages of a bench run (pure): a request is OK when it parses, was not seen
    before, and has `stages` stage logs that all say OK."""
    outcome = Outcome(expected=expected)
    seen: set[str] = set()
    for body in bodies:
        try:
            request = ProcessingRequest.FromString(body)
        except Exception as error:   # protobuf raises DecodeError, or ValueError on some inputs
            outcome.failed.append(f"unparsable output message ({type(error).__name__})")
            continue
        if request.uuid in seen:
            outcome.duplicates += 1
            continue
        seen.add(request.uuid)
        statuses = [(entry.stage, entry.status) for entry in request.logs]
        if len(statuses) == stages and all(status == "OK" for _stage, status in statuses):
            outcome.ok += 1
        else:
            detail = ", ".join(f"{stage}: {status or '-'}" for stage, status in statuses) or "no stage log"
            first_log = next((entry.log.strip().splitlines()[0] for entry in request.logs
                              if entry.status != "OK" and entry.log.strip()), "")
            outcome.failed.append(f"{request.uuid}: {detail}" + (f" ({first_log})" if first_log else ""))
    return outcome


__all__ = ["Outcome", "judge"]
