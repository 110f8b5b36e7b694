"""Download finished requests from the output stage: one folder per request, acked only once durable.

Consume the output queue and write each request to its own folder.
Every name in a request is untrusted and goes through libs/safe_names, so no
file can land outside the download folder.  Requests are acked in batches,
only after the batch is on disk (files written, folders renamed into place, the
filesystem synced, uuids committed to the on-disk index, download_index.py),
so a crash loses nothing: unacked requests come again, and a folder whose uuid
never reached the index is rewritten rather than trusted.  Requests already in
the index are skipped.  Symbolic links in the download folder are never followed.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.mq import Delivery, MQAuthenticationError, MQConnectionError, MQError
from pero_worker.libs.quality import parse_warning
from pero_worker.libs.safe_names import dedup_key, deduplicate, request_folder_name, safe_file_name
from pero_worker.tools.cli import (
    CliError,
    build_connection_config,
    connect_zookeeper,
    log,
    open_mq,
    validate_stage_name,
)
from pero_worker.tools.publishing.download_index import INDEX_FILE, DownloadIndex, DownloadIndexError  # noqa: F401
from pero_worker.tools.publishing.upload import (  # noqa: F401  (re-exported: the upload half of this tool)
    Uploader,
    UploadStats,
    build_request,
    list_upload_files,
    upload,
)

TEMP_PREFIX = ".tmp-"                    # half-written request folders (removed at start)
UNPARSABLE_FOLDER = "_unparsable"        # raw bodies that are not a ProcessingRequest
INFO_FILE = "request_info.txt"
RECONNECT_FOR = 60.0                     # download: how long to look for a broker after the connection dropped
PREFETCH = 128                           # download: deliveries in flight = largest batch made durable at once


# --- pure helpers -------------------------------------------------------------------

def _timestamp_text(timestamp) -> str:
    if not timestamp.seconds and not timestamp.nanos:
        return "-"
    return timestamp.ToDatetime(tzinfo=datetime.timezone.utc).isoformat()


def failed_stages(request: ProcessingRequest) -> list[str]:
    return [log_entry.stage for log_entry in request.logs if log_entry.status != "OK"]


def quality_flags_of(request: ProcessingRequest) -> list[str]:
    """The quality flags (libs/quality.py) of a request: from the QUALITY WARNING lines of its stage logs."""
    codes: list[str] = []
    for entry in request.logs:
        codes += [code for code in parse_warning(entry.log) if code not in codes]
    return codes


def render_info(request: ProcessingRequest, file_names: Sequence[tuple[str, str]]) -> str:
    """The request_info.txt text: identity, timing, every stage with its status, and the result files."""
    failed = failed_stages(request)
    lines = [
        f"uuid:             {request.uuid}",
        f"page_uuid:        {request.page_uuid}",
        f"priority:         {request.priority}",
        f"start_time:       {_timestamp_text(request.start_time)}",
        f"remaining_stages: {' '.join(request.processing_stages) or '-'}",
        f"status:           {'FAILED in ' + ', '.join(failed) if failed else 'OK'}",
        f"quality:          {', '.join(quality_flags_of(request)) or 'no warnings'}",
        "stages:",
    ]
    for entry in request.logs:
        lines.append(f"  {entry.stage}: {entry.status or '-'} (version {entry.version or '-'}, "
                     f"host {entry.host_id or '-'}, {_timestamp_text(entry.start)} .. {_timestamp_text(entry.end)})")
    lines.append("results:")
    for original, stored in file_names:
        lines.append(f"  {stored}" + ("" if original == stored else f"  (named {original!r} in the request)"))
    return "\n".join(lines) + "\n"


def render_stage_log(entry) -> str:
    return "\n".join([
        f"host_id: {entry.host_id}",
        f"stage:   {entry.stage}",
        f"version: {entry.version}",
        f"start:   {_timestamp_text(entry.start)}",
        f"end:     {_timestamp_text(entry.end)}",
        f"status:  {entry.status}",
        "log:",
        entry.log,
    ]).rstrip("\n") + "\n"


def plan_request_files(request: ProcessingRequest) -> list[tuple[str, str, bytes]]:
    """(original name, safe file name, content) for every file of one request folder.

    Our own files (info, stage logs) take their names first; a result that
    happens to be called the same gets a numbered name instead of overwriting them.
    """
    taken: set[str] = {INFO_FILE}
    logs = []
    for entry in request.logs:
        name = deduplicate(safe_file_name(f"{entry.stage}.log", default="stage.log"), taken)
        logs.append((name, render_stage_log(entry).encode("utf-8")))
    results = []
    for result in request.results:
        name = deduplicate(safe_file_name(result.name, default="result"), taken)
        results.append((result.name, name, result.content))
    info = render_info(request, [(original, name) for original, name, _ in results]).encode("utf-8")
    return ([(INFO_FILE, INFO_FILE, info)] + [(name, name, content) for name, content in logs] + results)


MAX_FLAGGED_LISTED = 100


def flagged_summary(flagged: Sequence[tuple[str, Sequence[str]]], limit: int = MAX_FLAGGED_LISTED) -> list[str]:
    """Summary lines for the pages the quality checks flagged: a count per flag, then the folders (pure)."""
    counts: dict[str, int] = {}
    for _folder, flags in flagged:
        for flag in flags:
            counts[flag] = counts.get(flag, 0) + 1
    if not flagged:
        return ["0 page(s) flagged by the quality checks"]
    lines = [f"{len(flagged)} page(s) flagged by the quality checks ("
             + ", ".join(f"{flag}: {n}" for flag, n in sorted(counts.items())) + "); see 'quality:' in their "
             + INFO_FILE]
    lines += [f"  flagged {folder}: {', '.join(flags)}" for folder, flags in flagged[:limit]]
    if len(flagged) > limit:
        lines.append(f"  ... and {len(flagged) - limit} more")
    return lines


# --- download -------------------------------------------------------------------------

def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux syncfs(2): flush one filesystem in one call (None elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


def make_durable(directory: str, files: Sequence[str], folders: Sequence[str]) -> None:
    """Everything written in a batch reaches the disk before its requests are acked.

    One syncfs per batch instead of an fsync per file: with several files per
    request, per-file fsyncs capped the download at ~100 requests/s on a busy disk.
    """
    if _syncfs is not None:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            if _syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in list(folders) + [directory]:
        _fsync_dir(folder)


def _inside(root: str, path: str) -> str:
    """Belt and braces: the resolved path must be directly inside `root`."""
    resolved = os.path.realpath(path)
    if os.path.dirname(resolved) != os.path.realpath(root):
        raise RuntimeError(f"refusing to write {path!r}: outside {root!r}")
    return resolved


def _write_file(folder: str, name: str, content: bytes) -> str:
    """Create a new file (never follows or replaces an existing entry); made durable later, per batch."""
    path = _inside(folder, os.path.join(folder, name))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    return path


@dataclass
class DownloadStats:
    downloaded: int = 0
    failed_requests: int = 0          # requests whose processing failed in some stage
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    unparsable: int = 0
    flagged: list[tuple[str, list[str]]] = field(default_factory=list)   # (request folder, quality flags)

    def merge(self, other: DownloadStats) -> None:
        self.downloaded += other.downloaded
        self.flagged += other.flagged
        self.failed_requests += other.failed_requests
        self.duplicates += other.duplicates
        self.unparsable += other.unparsable
        for stage, count in other.failed_by_stage.items():
            self.failed_by_stage[stage] = self.failed_by_stage.get(stage, 0) + count


def _read_info_uuid(folder: str) -> str | None:
    """The uuid in a request folder's info file; never follows a symbolic link (None then)."""
    try:
        fd = os.open(os.path.join(folder, INFO_FILE), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
            first = handle.readline()
    except OSError:
        return None
    key, _, value = first.partition(":")
    return value.strip() if key.strip() == "uuid" else None


class Downloader:
    """Writes one folder per request; `commit()` makes a batch durable, after which the caller acks it."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.realpath(directory)
        os.makedirs(self.directory, exist_ok=True)
        unparsable = os.path.join(self.directory, UNPARSABLE_FOLDER)
        if os.path.islink(unparsable):
            raise DownloadIndexError(f"{unparsable} is a symbolic link: refusing to follow it; remove it and "
                                     "run again")
        self._remove_leftovers()
        self.index = DownloadIndex(self.directory)
        self.stats = DownloadStats()
        self._reset_batch()

    def _reset_batch(self) -> None:
        self._batch_stats = DownloadStats()
        self._batch_keys: list[str] = []
        self._batch_files: list[str] = []
        self._batch_folders: list[str] = []

    @property
    def pending(self) -> int:
        """Requests handled since the last commit."""
        b = self._batch_stats
        return b.downloaded + b.duplicates + b.unparsable

    def _remove_leftovers(self) -> None:
        """Half-written folders of an earlier run: their requests were not acked and will come again."""
        for entry in os.scandir(self.directory):
            if entry.name.startswith(TEMP_PREFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)

    def _store_unparsable(self, body: bytes) -> None:
        folder = os.path.join(self.directory, UNPARSABLE_FOLDER)
        os.makedirs(folder, exist_ok=True)
        name = hashlib.sha256(body).hexdigest() + ".bin"
        target = os.path.join(folder, name)
        temp = f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        self._batch_files.append(_write_file(folder, temp, body))
        os.replace(os.path.join(folder, temp), target)
        self._batch_files[-1] = target
        self._batch_folders.append(folder)
        self._batch_stats.unparsable += 1
        log.error("message is not a ProcessingRequest; raw body kept in %s", target)

    def _place(self, temp: str, request: ProcessingRequest) -> str:
        """Rename the finished temporary folder to a free '<image>_<short uuid>' name.

        A folder that already carries this request's uuid is an earlier write that
        never reached the index (crash before commit): it is replaced, not trusted.
        """
        image = request.results[0].name if request.results else ""
        base = request_folder_name(image, request.uuid)
        taken: set[str] = set()
        name = base
        while True:
            candidate = os.path.join(self.directory, name)
            if os.path.islink(candidate):
                # Never followed (it may point anywhere): the request takes the next free name.
                log.warning("%s is a symbolic link: not followed; request %s goes to another folder",
                            candidate, request.uuid or "(no uuid)")
                taken.add(name)
                name = deduplicate(base, taken)
                continue
            final = _inside(self.directory, candidate)
            if not os.path.lexists(final):
                os.rename(temp, final)
                return final
            if request.uuid and os.path.isdir(final) and _read_info_uuid(final) == request.uuid:
                stale = os.path.join(self.directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
                os.rename(final, stale)
                os.rename(temp, final)
                shutil.rmtree(stale, ignore_errors=True)
                log.warning("replaced %s: an earlier, unconfirmed download of the same request", final)
                return final
            taken.add(name)
            name = deduplicate(base, taken)

    def store(self, body: bytes) -> None:
        try:
            request = ProcessingRequest.FromString(body)
        except (DecodeError, ValueError):
            self._store_unparsable(body)
            return
        key = dedup_key(request.uuid, body)
        if key in self.index or key in self._batch_keys:
            self._batch_stats.duplicates += 1
            log.info("skipping request %s: already downloaded", request.uuid or key)
            return
        temp = os.path.join(self.directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        os.mkdir(temp)
        try:
            names = [_write_file(temp, name, content) for _original, name, content in plan_request_files(request)]
            final = self._place(temp, request)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        self._batch_files.extend(os.path.join(final, os.path.basename(name)) for name in names)
        self._batch_folders.append(final)
        self._batch_keys.append(key)
        self._batch_stats.downloaded += 1
        flags = quality_flags_of(request)
        if flags:
            self._batch_stats.flagged.append((os.path.basename(final), flags))
        failed = failed_stages(request)
        if failed:
            self._batch_stats.failed_requests += 1
            for stage in failed:
                self._batch_stats.failed_by_stage[stage] = self._batch_stats.failed_by_stage.get(stage, 0) + 1

    def commit(self) -> None:
        """Make every request stored since the last commit durable and record it in the index."""
        if not self.pending:
            return
        make_durable(self.directory, self._batch_files, self._batch_folders)
        self.index.add_all(self._batch_keys)
        self.stats.merge(self._batch_stats)
        self._reset_batch()

    def close(self) -> None:
        self.index.close()


def download(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    queue = args.download
    try:
        validate_stage_name(queue)
    except ValueError as error:
        raise CliError(str(error), ExitCode.USAGE) from None
    try:
        downloader = Downloader(args.directory)
    except DownloadIndexError as error:
        raise CliError(f"cannot use download folder {args.directory}: {error}", ExitCode.USAGE) from None
    except OSError as error:
        raise CliError(f"cannot use download folder {args.directory}: {error}", ExitCode.USAGE) from None

    conn = build_connection_config(args)
    zk = connect_zookeeper(conn)
    try:
        session = open_mq(zk, conn, name="publisher-download")
    finally:
        zk.stop()
    failure: list[BaseException] = []
    stopping = threading.Event()
    previous_sigterm = signal.signal(signal.SIGTERM, lambda *_: stopping.set()) \
        if threading.current_thread() is threading.main_thread() else None
    last_tag = 0          # highest delivery handled (stored, skipped or kept as unparsable) but not yet acked

    def commit_and_ack() -> None:
        """Durable first, then one ack for the whole batch (deliveries are handled in order)."""
        nonlocal last_tag
        if not last_tag:
            return
        downloader.commit()
        session.ack(last_tag, multiple=True)
        bar.update(downloader.stats.downloaded + downloader.stats.duplicates + downloader.stats.unparsable
                   - bar.n)
        last_tag = 0

    bar = tqdm(unit="req", desc=f"download from {queue}", file=sys.stderr,
               disable=True if args.no_progress else None)
    try:
        if session.queue_length(queue) is None:
            raise CliError(f"queue {queue!r} does not exist", ExitCode.FAILED)
        last_message = time.monotonic()

        def on_message(delivery: Delivery) -> None:
            nonlocal last_message, last_tag
            last_message = time.monotonic()
            if failure or stopping.is_set():
                session.nack(delivery.delivery_tag, requeue=True)
                return
            try:
                downloader.store(delivery.body)
            except OSError as error:
                failure.append(error)
                session.nack(delivery.delivery_tag, requeue=True)
                return
            last_tag = delivery.delivery_tag

        def consume_until_done() -> None:
            nonlocal last_message
            session.consume(queue, on_message, prefetch=PREFETCH)
            while not failure and not stopping.is_set():
                session.pump(0.5)
                commit_and_ack()
                if not args.keep_running and time.monotonic() - last_message >= args.idle_timeout:
                    if session.queue_length(queue) == 0:
                        break
                    last_message = time.monotonic()

        def reconnect(error: MQConnectionError) -> None:
            """The broker went (a cluster node stopped): what is stored is made durable, the session reopened
            on the server list's first broker that answers.  Deliveries not acked come again and are
            recognised as already downloaded."""
            nonlocal last_tag
            downloader.commit()
            last_tag = 0
            log.warning("%s; reconnecting (requests not yet acknowledged come again and are skipped as "
                        "already downloaded)", error)
            session.open(retry_for=RECONNECT_FOR)
            log.warning("reconnected to RabbitMQ; downloading from %s again", queue)

        try:
            while True:
                try:
                    consume_until_done()
                    break
                except MQAuthenticationError:
                    raise
                except MQConnectionError as error:
                    if failure or stopping.is_set():
                        raise
                    reconnect(error)
        except KeyboardInterrupt:
            if not args.keep_running:
                raise
        # What was stored before a stop (Ctrl-C, SIGTERM, a disk error) is still committed and acked.
        commit_and_ack()
    except OSError as error:
        failure.append(error)          # commit failed: nothing of the batch is acked, it comes again
    except MQError as error:
        # The connection is gone: unacked requests go back to the queue; what was acked is on disk.
        failure.append(error)
    finally:
        bar.close()
        session.close()
        downloader.close()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)

    stats = downloader.stats
    summary = (f"downloaded {stats.downloaded} request(s) to {downloader.directory}; "
               f"{stats.failed_requests} with failed stages"
               + (f" ({', '.join(f'{s}: {n}' for s, n in sorted(stats.failed_by_stage.items()))})"
                  if stats.failed_by_stage else "")
               + f"; {stats.duplicates} duplicate(s) skipped")
    if stats.unparsable:
        summary += f"; {stats.unparsable} unparsable message(s) kept in {UNPARSABLE_FOLDER}/"
    print(summary)
    print("\n".join(flagged_summary(stats.flagged)))
    if failure:
        error = failure[0]
        if isinstance(error, MQConnectionError):
            raise CliError(f"download stopped: {error}", ExitCode.UNREACHABLE)
        raise CliError(f"download stopped: {error}", ExitCode.FAILED)
    return ExitCode.FAILED if stats.unparsable else ExitCode.OK
