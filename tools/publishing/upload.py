"""publisher.py's upload: one persistent ProcessingRequest per image, counted only when the broker confirmed it.

Confirms are asynchronous (the broker acknowledges batches while we keep
publishing) and files are read ahead by a thread, so the rate is set by the
broker, not by round trips.  If the connection drops, the unconfirmed requests
are published again with the same uuid (the downloader removes duplicates).

Large pages: every file is checked against the broker's maximum message size
(libs/message_size.py says where that limit comes from) before it is read, and
the request again before it is sent; a file over it is refused in one line
naming the file and the limit, and the others go on.  Should the broker still
refuse a message (its limit is lower than we knew), it closes the channel: that
is noticed at once, the limit it names is learnt, the refused file is reported
and everything else is re-published.  File contents held in memory (read ahead
or waiting for a confirm) are bounded in bytes, not only in files, so a folder
of 200 MB scans does not need gigabytes.  The summary names every file that
was not uploaded, with the reason.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import queue as queue_module
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.message_size import SizeLimit, choose_limit, format_size, parse_size_refusal
from pero_worker.libs.mq import MQChannelClosedError, MQConnectionError, MQSession, PublishOutcome
from pero_worker.libs.mq_management import ManagementClient, ManagementError
from pero_worker.libs.zk import ZooKeeper
from pero_worker.tools.cli import (
    CliError,
    build_connection_config,
    connect_zookeeper,
    log,
    open_mq,
    validate_stage_name,
)

MAX_IN_FLIGHT = 1000                     # unconfirmed requests held for a re-publish
MEMORY_BUDGET = 256 * 1024 * 1024        # bytes of file contents read ahead or unconfirmed
READ_AHEAD = 16                          # batches read ahead of the publisher
READ_BATCH = 32                          # files per batch
PUMP_EVERY = 32                          # publishes between two runs of the I/O loop
GIVE_UP_AFTER = 5                        # consecutive failed reconnects


# --- requests -----------------------------------------------------------------------

class UuidSource:
    """uuid4 hex strings drawn from one os.urandom call per batch.

    uuid.uuid4() asks the kernel for 16 bytes each time; at thousands of
    requests per second (two uuids each) those system calls were a tenth of the
    upload time on a loaded machine.
    """

    def __init__(self, batch: int = 512) -> None:
        self._batch = batch
        self._pool: list[str] = []

    def __call__(self) -> str:
        if not self._pool:
            data = os.urandom(16 * self._batch)
            self._pool = [uuid.UUID(bytes=data[i:i + 16], version=4).hex for i in range(0, len(data), 16)]
        return self._pool.pop()


_new_uuid = UuidSource()


def build_request(image_name: str, content: bytes, stages: Sequence[str], priority: int,
                  now: datetime.datetime) -> ProcessingRequest:
    request = ProcessingRequest()
    request.uuid = _new_uuid()
    request.page_uuid = _new_uuid()
    request.priority = priority
    request.start_time.FromDatetime(now.astimezone(datetime.timezone.utc))
    request.processing_stages.extend(stages)
    result = request.results.add()
    result.name = image_name
    result.content = content
    return request


def list_upload_files(images: Sequence[str], directory: str | None) -> list[str]:
    files = list(images)
    if directory:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            raise CliError(f"cannot read directory {directory}: {error.strerror}", ExitCode.USAGE) from None
        files += [entry.path for entry in entries if not entry.name.startswith(".") and entry.is_file()]
    return files


def too_large_reason(size: int, limit: SizeLimit) -> str:
    return (f"{format_size(size)}, over the broker's maximum message size of {format_size(limit.limit)} "
            f"(limit from {limit.source})")


# --- reading ahead, within a memory budget --------------------------------------------

@dataclass(frozen=True)
class TooLarge:
    """A file refused by its size alone, without reading it."""
    size: int


class ByteBudget:
    """Bytes of file contents in memory; the reader waits while it is spent.

    One file larger than the whole budget still passes when nothing else is
    held, so no file can be stuck.  Only the reader takes; the uploader gives
    back when a request leaves memory (confirmed, refused, dropped).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def would_block(self, size: int) -> bool:
        with self._cond:
            return self.used > 0 and self.used + size > self.limit

    def take(self, size: int, stop: threading.Event) -> bool:
        with self._cond:
            while self.used > 0 and self.used + size > self.limit:
                if stop.is_set():
                    return False
                self._cond.wait(0.2)
            self.used += size
            return True

    def give(self, size: int) -> None:
        with self._cond:
            self.used -= size
            self._cond.notify_all()


Item = tuple[int, str, "bytes | OSError | TooLarge"]


def _read_ahead(paths: Sequence[str], out: queue_module.Queue, stop: threading.Event, limit: SizeLimit,
                budget: ByteBudget) -> None:
    """Reader thread: lists of (index, path, bytes | OSError | TooLarge), then None.

    Batches, because handing items between threads one by one cost more (GIL
    hand-offs) than reading the files.  A batch is handed over before the
    reader waits for memory, so the two threads can never wait for each other.
    """
    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.5)
                return True
            except queue_module.Full:
                continue
        return False

    batch: list[Item] = []
    for index, path in enumerate(paths):
        if stop.is_set():
            return
        item: bytes | OSError | TooLarge
        try:
            size = os.stat(path).st_size
            if limit.too_large(size):
                item = TooLarge(size)
            else:
                if batch and budget.would_block(size):
                    if not put(batch):
                        return
                    batch = []
                if not budget.take(size, stop):
                    return
                try:
                    with open(path, "rb") as handle:
                        item = handle.read()
                except OSError:
                    budget.give(size)
                    raise
                budget.give(size - len(item))       # the file changed size since stat()
        except OSError as error:
            item = error
        batch.append((index, path, item))
        if len(batch) >= READ_BATCH:
            if not put(batch):
                return
            batch = []
    if batch and not put(batch):
        return
    put(None)


# --- publishing -----------------------------------------------------------------------

@dataclass
class UploadStats:
    confirmed: int = 0
    returned: list[str] = field(default_factory=list)
    nacked: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)
    republished: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)    # (file, why) of every file not uploaded

    def refuse(self, category: list[str], path: str, reason: str) -> None:
        category.append(path)
        self.refused.append((path, reason))


@dataclass
class _Entry:
    index: int
    path: str
    body: bytes
    priority: int
    page_uuid: str


class UploadAborted(Exception):
    """The broker cannot be reached any more; what was not confirmed is not uploaded."""


class Uploader:
    """Publishes with a bounded window of unconfirmed requests; re-publishes them after a reconnect."""

    def __init__(self, session: MQSession, reopen: Callable[[], MQSession], queue: str,
                 stats: UploadStats, on_confirmed: Callable[[], None], *, limit: SizeLimit | None = None,
                 release: Callable[[int], None] = lambda _size: None, manifest: TextIO | None = None) -> None:
        self.session = session
        self._reopen = reopen
        self.queue = queue
        self.stats = stats
        self.limit = limit or choose_limit(None, None)
        self._on_confirmed = on_confirmed
        self._release = release
        self._manifest = manifest
        self._outstanding: dict[str, _Entry] = {}       # uuid -> entry
        self._since_pump = 0

    @property
    def unconfirmed(self) -> list[_Entry]:
        return sorted(self._outstanding.values(), key=lambda entry: entry.index)

    def _forget(self, key: str) -> _Entry | None:
        entry = self._outstanding.pop(key, None)
        if entry is not None:
            self._release(len(entry.body))
        return entry

    def _done(self, key: str, outcome: PublishOutcome) -> None:
        entry = self._forget(key)
        if entry is None:      # outcome of a publish from before a reconnect that was re-published
            return
        if outcome is PublishOutcome.CONFIRMED:
            self.stats.confirmed += 1
            if self._manifest is not None:
                self._manifest.write(json.dumps({"uuid": key, "page_uuid": entry.page_uuid, "file": entry.path})
                                     + "\n")
            self._on_confirmed()
        elif outcome is PublishOutcome.RETURNED:
            log.error("request for %s was returned: queue %r does not exist (any more)", entry.path, self.queue)
            self.stats.refuse(self.stats.returned, entry.path, f"returned: queue {self.queue!r} does not exist")
        else:
            log.error("request for %s was not accepted (nacked) by RabbitMQ", entry.path)
            self.stats.refuse(self.stats.nacked, entry.path, "nacked by RabbitMQ")

    def refuse_too_large(self, path: str, size: int) -> None:
        reason = too_large_reason(size, self.limit)
        log.error("%s: %s; not uploaded", path, reason)
        self.stats.refuse(self.stats.too_large, path, reason)

    def _publish(self, key: str, body: bytes, priority: int) -> None:
        self.session.publish(self.queue, body, priority=priority,
                             on_done=lambda outcome, key=key: self._done(key, outcome))

    def _broker_refused_size(self, refusal: tuple[int, int]) -> None:
        """The broker closed the channel for a message over its limit: learn the limit, drop what is over it."""
        size, limit = refusal
        self.limit.learn(limit, f"the broker, which refused a message of {format_size(size)}")
        for key, entry in list(self._outstanding.items()):
            if self.limit.too_large(len(entry.body)):
                self._forget(key)
                self.refuse_too_large(entry.path, len(entry.body))

    def _reconnect(self) -> None:
        self.session = self._reopen()
        for key, entry in list(self._outstanding.items()):
            self._publish(key, entry.body, entry.priority)
            self.stats.republished += 1

    def _with_reconnect(self, action: Callable[[], None]) -> None:
        """Run `action`; after a lost connection or a closed channel, reopen and re-publish everything
        unconfirmed (which covers a publish that failed).  UploadAborted after GIVE_UP_AFTER failures in a row."""
        failures = 0
        last = ""
        try:
            action()
            return
        except MQChannelClosedError as error:
            refusal = parse_size_refusal(error.reply_text)
            if refusal is not None:
                self._broker_refused_size(refusal)          # progress: the refused message is gone
            else:
                failures, last = 1, str(error)
                log.error("%s; reopening it and re-publishing %d unconfirmed request(s)", error,
                          len(self._outstanding))
        except MQConnectionError as error:
            failures, last = 1, str(error)
            log.warning("%s; reconnecting and re-publishing %d unconfirmed request(s)", error,
                        len(self._outstanding))
        while failures < GIVE_UP_AFTER:
            try:
                self._reconnect()
                return
            except MQConnectionError as error:
                failures, last = failures + 1, str(error)
        raise UploadAborted(f"RabbitMQ failed {failures} times in a row ({last}); giving up")

    def add(self, index: int, path: str, request: ProcessingRequest, held: int = 0) -> None:
        """Publish one request; `held` is what its file took from the memory budget (given back here or
        once the broker has answered)."""
        body = request.SerializeToString()
        if self.limit.too_large(len(body)):
            self.refuse_too_large(path, len(body))
            self._release(held)
            return
        self._release(held - len(body))          # from now on the body is what is held
        self._outstanding[request.uuid] = _Entry(index, path, body, request.priority, request.page_uuid)
        self._with_reconnect(lambda: self._publish(request.uuid, body, request.priority))
        self._since_pump += 1
        if self._since_pump >= PUMP_EVERY:
            self._since_pump = 0
            self._with_reconnect(lambda: self.session.pump(0))
        while len(self._outstanding) >= MAX_IN_FLIGHT:
            self._with_reconnect(lambda: self.session.pump(0.05))

    def pump(self, timeout: float) -> None:
        self._with_reconnect(lambda: self.session.pump(timeout))

    def finish(self, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while self._outstanding and time.monotonic() < deadline:
            self._with_reconnect(lambda: self.session.pump(0.2))
        return not self._outstanding


# --- the command ------------------------------------------------------------------------

def _broker_version(zk: ZooKeeper, conn: ConnectionConfig) -> str | None:
    """RabbitMQ's version from the management API, None when it cannot be read (the upload goes on)."""
    try:
        client = ManagementClient.from_zookeeper(zk, conn, timeout=3.0)
    except ManagementError as error:
        log.info("cannot ask the management API for RabbitMQ's version: %s", error)
        return None
    try:
        return client.broker_version()
    except ManagementError as error:
        log.info("cannot ask the management API for RabbitMQ's version: %s", error)
        return None
    finally:
        client.close()


def summary_lines(stats: UploadStats, unconfirmed: Sequence[str], not_sent: Sequence[str]) -> list[str]:
    """'NOT uploaded: ...' and one line per file that was not uploaded, with the reason (pure)."""
    counts = [(len(stats.unreadable), "unreadable file(s)"),
              (len(stats.too_large), "over the broker's maximum message size"),
              (len(stats.returned), "returned (queue missing)"), (len(stats.nacked), "nacked by the broker"),
              (len(unconfirmed), "never confirmed"), (len(not_sent), "not sent")]
    problems = [f"{count} {what}" for count, what in counts if count]
    if not problems:
        return []
    lines = ["NOT uploaded: " + ", ".join(problems)]
    lines += [f"  {path}: {reason}" for path, reason in stats.refused]
    lines += [f"  {path}: sent, but the broker never confirmed it" for path in unconfirmed]
    lines += [f"  {path}: not sent (the upload stopped)" for path in not_sent]
    return lines


def upload(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    stages = list(args.stages)
    for stage in stages:
        try:
            validate_stage_name(stage)
        except ValueError as error:
            raise CliError(str(error), ExitCode.USAGE) from None
    paths = list_upload_files(args.images, args.directory)
    if not paths:
        raise CliError("nothing to upload: give --images FILE ... or --directory DIR with files", ExitCode.USAGE)
    if not 0 <= args.priority <= 2**31 - 1:
        raise CliError(f"priority must be between 0 and {2**31 - 1} (the queues honour 0 and 1)", ExitCode.USAGE)
    if len(stages) < 2:
        log.warning("only one stage given: requests will stay in %r (the output stage is normally last)", stages[0])
    try:
        manifest = open(args.manifest, "a", encoding="utf-8") if args.manifest else None
    except OSError as error:
        raise CliError(f"cannot write the manifest {args.manifest}: {error.strerror}", ExitCode.USAGE) from None

    conn = build_connection_config(args)
    zk = connect_zookeeper(conn)
    try:
        session = open_mq(zk, conn, name="publisher")
        limit = choose_limit(args.max_message_size,
                             None if args.max_message_size is not None else _broker_version(zk, conn))
    finally:
        zk.stop()
    log.debug("checking files against %s (%s)", format_size(limit.limit), limit.source)

    def reopen() -> MQSession:
        session.close()
        session.open(retry_for=60.0)
        return session

    stats = UploadStats()
    stop = threading.Event()
    budget = ByteBudget(MEMORY_BUDGET)
    handled = 0                # paths[:handled] were published or refused; the rest were never sent
    interrupted = False
    aborted: UploadAborted | None = None
    uploader: Uploader | None = None
    try:
        for position, stage in enumerate(stages):
            if session.queue_length(stage) is None:
                what = "first stage" if position == 0 else "stage"
                raise CliError(f"the {what} queue {stage!r} does not exist; create it first with "
                               f"stage_config_manager.py --name {stage}", ExitCode.FAILED)
        files: queue_module.Queue = queue_module.Queue(maxsize=READ_AHEAD)
        reader = threading.Thread(target=_read_ahead, args=(paths, files, stop, limit, budget), daemon=True,
                                  name="read-ahead")
        reader.start()
        started = time.monotonic()
        with tqdm(total=len(paths), unit="req", desc=f"upload to {stages[0]}", file=sys.stderr,
                  disable=True if args.no_progress else None) as bar:
            uploader = Uploader(session, reopen, stages[0], stats, lambda: bar.update(1), limit=limit,
                                release=budget.give, manifest=manifest)
            try:
                while (batch := files.get()) is not None:
                    for index, path, content in batch:
                        if isinstance(content, OSError):
                            log.error("cannot read %s: %s", path, content.strerror)
                            stats.refuse(stats.unreadable, path, f"unreadable: {content.strerror}")
                        elif isinstance(content, TooLarge):
                            uploader.refuse_too_large(path, content.size)
                        else:
                            now = datetime.datetime.now(datetime.timezone.utc)
                            request = build_request(os.path.basename(path), content, stages, args.priority, now)
                            held = len(content)
                            del content
                            uploader.add(index, path, request, held)
                            del request
                        handled = index + 1
                uploader.finish()
            except KeyboardInterrupt:
                # Stop reading, but still collect the outcomes of what was sent, for an honest summary.
                interrupted = True
                stop.set()
                try:
                    uploader.finish(timeout=10.0)
                except UploadAborted as error:
                    aborted = error
            except UploadAborted as error:
                aborted = error
            finally:
                stop.set()
        elapsed = max(time.monotonic() - started, 1e-6)
    finally:
        session.close()
        if manifest is not None:
            manifest.close()
    unconfirmed = [entry.path for entry in uploader.unconfirmed] if uploader else []
    print(f"uploaded {stats.confirmed} of {len(paths)} request(s) to {stages[0]} in {elapsed:.1f} s "
          f"({stats.confirmed / elapsed:.0f} req/s)"
          + (f"; re-published {stats.republished} after reconnects" if stats.republished else ""))
    lines = summary_lines(stats, unconfirmed, paths[handled:])
    for line in lines:
        print(line, file=sys.stderr)
    if interrupted:
        print(f"interrupted: {len(paths) - stats.confirmed} image(s) not uploaded", file=sys.stderr)
        return ExitCode.INTERRUPTED
    if aborted is not None:
        raise CliError(str(aborted), ExitCode.UNREACHABLE)
    return ExitCode.FAILED if lines else ExitCode.OK


__all__ = ["UploadStats", "Uploader", "UploadAborted", "build_request", "list_upload_files", "upload",
           "summary_lines", "UuidSource", "ByteBudget", "TooLarge"]
