"""The StageLog a worker appends to each request, and the log lines captured for it.

Whatever is logged while a request is processed (by the worker or by pero-ocr)
belongs in that request's StageLog, so a user sees why their page failed
without access to the worker's log files.  The capture is per thread: the
processing thread turns it on around one request, and records from any other
thread (MQ, ZooKeeper, log shipping) are not mixed in.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

from pero_worker.libs.message_pb2 import ProcessingRequest

# A request's log must not balloon the message: keep the first lines, then say how many were cut.
MAX_LOG_CHARS = 64 * 1024


class _Lines:
    __slots__ = ("lines", "chars", "dropped")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.chars = 0
        self.dropped = 0

    def add(self, line: str) -> None:
        if self.chars + len(line) > MAX_LOG_CHARS:
            self.dropped += 1
            return
        self.lines.append(line)
        self.chars += len(line) + 1

    def text(self) -> str:
        lines = list(self.lines)
        if self.dropped:
            lines.append(f"... {self.dropped} more log lines not kept")
        return "\n".join(lines)


class RequestLogCapture(logging.Handler):
    """Install once on the root logger; `capture()` collects the current thread's records."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._local = threading.local()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        lines: _Lines | None = getattr(self._local, "lines", None)
        if lines is None:
            return
        try:
            lines.add(self.format(record))
        except Exception:  # a bad log call must not break processing
            self.handleError(record)

    @contextlib.contextmanager
    def capture(self) -> Iterator[_Lines]:
        previous = getattr(self._local, "lines", None)
        lines = _Lines()
        self._local.lines = lines
        try:
            yield lines
        finally:
            self._local.lines = previous


def append_stage_log(request: ProcessingRequest, *, host_id: str, stage: str, start_ns: int, end_ns: int,
                     status: str, log_text: str, version: str) -> None:
    entry = request.logs.add()
    entry.host_id = host_id
    entry.stage = stage
    entry.start.FromNanoseconds(start_ns)
    entry.end.FromNanoseconds(end_ns)
    entry.status = status
    entry.log = log_text
    entry.version = version


def now_ns() -> int:
    return time.time_ns()
