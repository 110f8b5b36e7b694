"""FAILTEST processor: fails every request on purpose, to test failure routing end to end."""
from __future__ import annotations

from typing import TYPE_CHECKING

from pero_worker.worker.processors import ProcessingError

if TYPE_CHECKING:
    from pero_worker.libs.message_pb2 import ProcessingRequest

FAILTEST_MESSAGE = "FAILTEST stage: this stage fails every request on purpose ([WORKER] FAILTEST = TRUE)"


class FailTestProcessor:
    def process(self, request: ProcessingRequest) -> None:
        raise ProcessingError(FAILTEST_MESSAGE)

    def close(self) -> None:
        pass
