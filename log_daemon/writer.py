"""Appends log records to the current log file, rotating and pruning it (decisions in rotation.py).

Every failure of the file system (folder not writable, disk full, folder removed)
surfaces as one `LogWriteError` whose message names the path and the reason: the
daemon then stops taking messages, leaves them queued, and retries later.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from pero_worker.log_daemon import rotation

log = logging.getLogger(__name__)


class LogWriteError(Exception):
    """The log folder or file cannot be written; the message says which and why."""


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_record(body: bytes) -> str:
    """One message body as text ending with exactly one newline (invalid UTF-8 is replaced, not dropped)."""
    text = body.decode("utf-8", "replace")
    return text if text.endswith("\n") else text + "\n"


class LogWriter:
    def __init__(self, directory: Path, *, period_minutes: float, keep: int,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self.directory = Path(directory)
        self.period_minutes = period_minutes
        self.keep = keep
        self.clock = clock
        self._file: TextIO | None = None
        self._name: str | None = None
        self._created: datetime | None = None

    def _fail(self, what: str, error: OSError) -> LogWriteError:
        self._discard()
        reason = error.strerror or str(error)
        return LogWriteError(f"cannot {what} in log folder {self.directory}: {reason}")

    def _discard(self) -> None:
        """Drop the open file after an error; the next write reopens (and re-checks) it."""
        handle, self._file = self._file, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass

    def _open(self, now: datetime) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            names = os.listdir(self.directory)
        except OSError as error:
            raise self._fail("list files", error) from None
        name = self._name if self._name and self._created and not rotation.is_due(
            self._created, now, self.period_minutes) else None
        if name is None:
            name = rotation.file_to_continue(names, now, self.period_minutes)
        if name is None:
            name = rotation.log_file_name(now)
        try:
            self._file = open(self.directory / name, "a", encoding="utf-8")
        except OSError as error:
            raise self._fail(f"open {name}", error) from None
        if name != self._name:
            log.info("writing logs to %s", self.directory / name)
        self._name = name
        self._created = rotation.parse_log_file_name(name)
        self._prune(names + [name])

    def _prune(self, names: list[str]) -> None:
        for old in rotation.files_to_prune(sorted(set(names)), self.keep, current=self._name):
            try:
                os.unlink(self.directory / old)
                log.info("removed old log file %s", old)
            except FileNotFoundError:
                pass
            except OSError as error:
                # Not fatal: logs keep flowing; the next rotation tries again.
                log.warning("cannot remove old log file %s: %s", self.directory / old, error.strerror)

    def write(self, body: bytes) -> None:
        """Append one record (buffered: call flush() before acknowledging it)."""
        now = self.clock()
        if self._file is not None and self._created is not None and rotation.is_due(
                self._created, now, self.period_minutes):
            self.flush()
            self._discard()
            self._name = None
        if self._file is None:
            self._open(now)
        assert self._file is not None
        try:
            self._file.write(format_record(body))
        except OSError as error:
            raise self._fail(f"write to {self._name}", error) from None

    def flush(self) -> None:
        """Push everything written so far to disk; only then may the records be acknowledged."""
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as error:
            raise self._fail(f"write to {self._name}", error) from None

    def check_writable(self) -> None:
        """Raise LogWriteError unless the folder can take a file now (used before resuming)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise self._fail("create the folder", error) from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise LogWriteError(f"cannot write to log folder {self.directory}: permission denied")

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._discard()
