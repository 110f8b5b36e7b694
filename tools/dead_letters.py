"""Read and act on the dead-letter queue: list, show, replay, purge, export.

Workers put there what they cannot route by the request's own stage list (docs/protocol.md §3): the body
unchanged, with the headers `reason` (a word, ': ', details), `source_queue` and `worker_id`.  Until this tool
nothing read that queue, so those requests stayed there for ever.

Never lose a message: the tool reads the queue with `basic_get` and holds what it read unacknowledged.  A
message is acked (taken off the queue) only after what replaces it is safe: the replayed copy confirmed by the
broker, the exported files written and synced, or an explicit purge.  Everything else is given back to the queue
when the scan ends, or by the broker if the tool dies.

The decisions are pure functions (which messages a selection takes, where a replay goes, how a row is shown),
tested with tables; `DeadLetterQueue` applies them through libs/mq.py.
"""
from __future__ import annotations

import argparse
import enum
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pero_worker.libs.config import ConnectionConfig, add_connection_arguments
from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.mq import DEAD_LETTER_QUEUE, Delivery, MQError, MQSession, MQSettings, PublishOutcome
from pero_worker.libs.zk import ZooKeeper
from pero_worker.tools.cli import (
    EXIT_CODES_HELP,
    CliError,
    add_debug_argument,
    build_connection_config,
    connect_zookeeper,
    open_mq,
    run_main,
    validate_stage_name,
)
from pero_worker.watchdog.report import format_table
from pero_worker.worker import routing

# --- what a dead letter is ------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter queue, as read (position counts from 1 at the head of the queue)."""
    position: int
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    message_id: str | None = None
    timestamp: float | None = None

    @property
    def id(self) -> str:
        """A stable name: the AMQP message id our publishers set, or a digest of body and headers."""
        if self.message_id:
            return self.message_id
        digest = hashlib.sha1(self.body)
        digest.update(json.dumps(self.headers_text, sort_keys=True).encode())
        return "sha1-" + digest.hexdigest()[:12]

    @property
    def headers_text(self) -> dict[str, str]:
        return {str(key): _text(value) for key, value in self.headers.items()}

    @property
    def reason(self) -> str:
        return _text(self.headers.get("reason"))

    @property
    def reason_word(self) -> str:
        """The word before ': ' (docs/protocol.md §3), '?' when the header is missing."""
        return self.reason.split(":", 1)[0].strip() or "?"

    @property
    def source_queue(self) -> str:
        return _text(self.headers.get("source_queue"))

    @property
    def worker_id(self) -> str:
        return _text(self.headers.get("worker_id"))

    def request(self) -> ProcessingRequest | None:
        request, _reason = routing.parse_request(self.body)
        return request


def from_delivery(delivery: Delivery, position: int) -> DeadLetter:
    return DeadLetter(position=position, body=delivery.body, headers=dict(delivery.headers),
                      priority=delivery.priority, message_id=delivery.message_id,
                      timestamp=float(delivery.timestamp) if delivery.timestamp else None)


# --- selection ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """Which dead letters an operation takes; an empty field does not filter.  `everything` must be set
    explicitly for replay/purge/export of a whole queue (no filter given)."""
    ids: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()      # reason words (unparsable, too_large ...)
    sources: frozenset[str] = frozenset()      # source queues
    workers: frozenset[str] = frozenset()
    older_than: float | None = None            # seconds; letters of unknown age never match
    everything: bool = False

    @property
    def filtered(self) -> bool:
        return bool(self.ids or self.reasons or self.sources or self.workers or self.older_than is not None)

    def matches(self, letter: DeadLetter, now: float) -> bool:
        if self.ids and letter.id not in self.ids and str(letter.position) not in self.ids:
            return False
        if self.reasons and letter.reason_word not in self.reasons:
            return False
        if self.sources and letter.source_queue not in self.sources:
            return False
        if self.workers and letter.worker_id not in self.workers:
            return False
        if self.older_than is not None:
            age = age_of(letter, now)
            if age is None or age < self.older_than:
                return False
        return True


def age_of(letter: DeadLetter, now: float) -> float | None:
    return None if letter.timestamp is None else max(0.0, now - letter.timestamp)


# --- where a replay goes ---------------------------------------------------------------------------

class ReplayRefused(ValueError):
    """The message cannot be replayed as asked; the text says why and what to do instead."""


@dataclass(frozen=True)
class ReplayTarget:
    queue: str
    body: bytes
    priority: int
    note: str = ""


def replay_target(letter: DeadLetter, to_stage: str | None = None) -> ReplayTarget:
    """Where a replayed dead letter goes and with which body (ReplayRefused when it would only come back).

    Without `to_stage` the request goes back to the queue it belongs in: its first remaining stage, which is
    the queue it came from for every reason except `wrong_queue`.  With `to_stage` it is sent to that stage:
    a stage in its list resumes there (the stages before it are dropped), another stage is put first.
    The result must pass the worker's own admission check (worker/routing.py check_request), or the worker
    would dead-letter it again.
    """
    request = letter.request()
    if request is None:
        raise ReplayRefused("the body is not a ProcessingRequest, a worker would dead-letter it again "
                            "(export it to look at it, or purge it)")
    stages = list(request.processing_stages)
    if to_stage:
        target = to_stage
        new_stages = stages[stages.index(to_stage):] if to_stage in stages else [to_stage, *stages]
    elif not stages:
        raise ReplayRefused("the request has no processing stages left; replay it --to a stage")
    else:
        target, new_stages = stages[0], stages
    problem = routing.check_request(new_stages, target)
    if problem:
        raise ReplayRefused(f"a worker would dead-letter it again ({problem})")
    note = ""
    if letter.source_queue and target != letter.source_queue:
        note = f"came from {letter.source_queue!r}"
    body = letter.body
    if new_stages != stages:
        request.ClearField("processing_stages")
        request.processing_stages.extend(new_stages)
        body = request.SerializeToString()
    return ReplayTarget(target, body, min(1, max(0, letter.priority)), note)


# --- how it is shown ---------------------------------------------------------------------------------

def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def list_rows(letters: Iterable[DeadLetter], now: float) -> list[list[str]]:
    rows = []
    for letter in letters:
        request = letter.request()
        rows.append([str(letter.position), letter.id, letter.reason_word, letter.source_queue or "?",
                     letter.worker_id or "?", format_age(age_of(letter, now)), str(len(letter.body)),
                     request.uuid if request is not None and request.uuid else "-"])
    return rows


LIST_HEADERS = ["#", "id", "reason", "source queue", "worker", "age", "bytes", "request"]


def describe_request(request: ProcessingRequest) -> list[str]:
    lines = [f"uuid: {request.uuid}", f"page_uuid: {request.page_uuid}", f"priority: {request.priority}",
             f"processing_stages: {', '.join(request.processing_stages) or '(none)'}"]
    if request.HasField("start_time"):
        lines.append(f"start_time: {request.start_time.ToJsonString()}")
    for result in request.results:
        lines.append(f"result: {result.name!r} ({len(result.content)} bytes)")
    for entry in request.logs:
        lines.append(f"log: stage {entry.stage!r} by {entry.host_id!r}: {entry.status}"
                     + (f" ({entry.log.strip().splitlines()[-1][:200]})" if entry.log.strip() else ""))
    return lines


def describe(letter: DeadLetter, now: float) -> str:
    """The text of `show`: headers, properties and the request when the body parses."""
    lines = [f"dead letter #{letter.position}  id {letter.id}",
             f"reason: {letter.reason or '(no reason header)'}",
             f"source queue: {letter.source_queue or '?'}   worker: {letter.worker_id or '?'}   "
             f"age: {format_age(age_of(letter, now))}   priority: {letter.priority}   bytes: {len(letter.body)}",
             "headers:"]
    lines += [f"  {key}: {value}" for key, value in sorted(letter.headers_text.items())]
    request, problem = routing.parse_request(letter.body)
    if request is None:
        lines.append(f"body: not a ProcessingRequest ({problem}); first bytes: {letter.body[:32]!r}")
    else:
        lines.append("request:")
        lines += ["  " + line for line in describe_request(request)]
    return "\n".join(lines)


def export_record(letter: DeadLetter, now: float) -> dict[str, Any]:
    """The JSON written next to an exported body: everything needed to understand or re-publish it."""
    request = letter.request()
    return {"id": letter.id, "position": letter.position, "reason": letter.reason,
            "source_queue": letter.source_queue, "worker_id": letter.worker_id, "priority": letter.priority,
            "published_at": letter.timestamp, "exported_at": now, "headers": letter.headers_text,
            "bytes": len(letter.body), "request": describe_request(request) if request is not None else None}


def export_name(letter: DeadLetter) -> str:
    """File stem of an exported letter: position and id, with only characters safe in any file system."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in letter.id)[:80]
    return f"{letter.position:06d}-{safe}"


# --- applying decisions to the queue -------------------------------------------------------------------

class Action(enum.Enum):
    KEEP = "keep"          # give it back to the queue: not selected
    KEEP_MATCHED = "keep_matched"   # selected (listed, shown, exported), and given back to the queue
    REMOVE = "remove"      # ack it now (purge, or exported and synced)
    PUBLISH = "publish"    # publish the target, ack once the broker confirmed


@dataclass(frozen=True)
class Decision:
    action: Action
    target: ReplayTarget | None = None


@dataclass
class ScanReport:
    scanned: int = 0
    matched: int = 0
    removed: int = 0
    published: int = 0
    failures: list[str] = field(default_factory=list)


class DeadLetterQueue:
    """The dead-letter queue through one MQSession (owned by the calling thread)."""

    def __init__(self, session: MQSession, queue: str = DEAD_LETTER_QUEUE) -> None:
        self.session = session
        self.queue = queue

    def depth(self) -> int | None:
        return self.session.queue_length(self.queue)

    def scan(self, decide: Callable[[DeadLetter], Decision], *, limit: int | None = None,
             progress: bool = False) -> ScanReport:
        """Read up to `limit` messages (all present at the start by default), apply `decide` to each, then
        give back every message that was not removed or replayed with a confirm."""
        report = ScanReport()
        depth = self.depth()
        if depth is None:
            raise CliError(f"queue {self.queue!r} does not exist (no worker has connected yet?)")
        total = depth if limit is None else min(depth, limit)
        bar = tqdm(total=total, unit="msg", desc="reading", disable=not progress, file=sys.stderr)
        try:
            for position in range(1, total + 1):
                delivery = self.session.get(self.queue)
                if delivery is None:
                    break
                report.scanned += 1
                bar.update(1)
                self._apply(delivery, decide(from_delivery(delivery, position)), report)
                self.session.pump(0)
            if not self.session.wait_for_confirms(timeout=60):
                report.failures.append("the broker did not confirm every replayed message within 60 s: "
                                       "those dead letters stay in the queue")
        finally:
            bar.close()
            if self.session.is_open:
                self.session.release_all()
                self.session.pump(0)
        return report

    def _apply(self, delivery: Delivery, decision: Decision, report: ScanReport) -> None:
        if decision.action is Action.KEEP:
            return
        report.matched += 1
        if decision.action is Action.KEEP_MATCHED:
            return
        if decision.action is Action.REMOVE:
            self.session.ack(delivery.delivery_tag)
            report.removed += 1
            return
        target = decision.target
        assert target is not None

        def done(outcome: PublishOutcome) -> None:
            if outcome is PublishOutcome.CONFIRMED:
                self.session.ack(delivery.delivery_tag)
                report.published += 1
            elif outcome is PublishOutcome.RETURNED:
                report.failures.append(f"queue {target.queue!r} does not exist: message kept")
            else:
                report.failures.append(f"the broker refused the message to {target.queue!r}: message kept")

        self.session.publish(target.queue, target.body, priority=target.priority, on_done=done)

    def read(self, selection: Selection, now: float, *, limit: int | None = None,
             progress: bool = False) -> tuple[list[DeadLetter], ScanReport]:
        """The selected letters among the first `limit` (all by default); every message is given back."""
        seen: list[DeadLetter] = []

        def keep(letter: DeadLetter) -> Decision:
            if not selection.matches(letter, now):
                return Decision(Action.KEEP)
            seen.append(letter)
            return Decision(Action.KEEP_MATCHED)

        report = self.scan(keep, limit=limit, progress=progress)
        return seen, report


def replay(queue: DeadLetterQueue, selection: Selection, *, to_stage: str | None, now: float,
           progress: bool = False) -> tuple[ScanReport, list[str]]:
    """Replay the selected letters; (report, one line per replayed or refused letter)."""
    lines: list[str] = []

    def decide(letter: DeadLetter) -> Decision:
        if not selection.matches(letter, now):
            return Decision(Action.KEEP)
        try:
            target = replay_target(letter, to_stage)
        except ReplayRefused as refused:
            lines.append(f"#{letter.position} {letter.id}: not replayed: {refused}")
            return Decision(Action.KEEP_MATCHED)
        lines.append(f"#{letter.position} {letter.id} -> {target.queue}" + (f" ({target.note})" if target.note
                                                                               else ""))
        return Decision(Action.PUBLISH, target)

    return queue.scan(decide, progress=progress), lines


def _write_file(path: Path, data: bytes) -> None:
    """Write, fsync and rename: a file that exists is complete (the letter is acked only after that)."""
    partial = path.with_name(path.name + ".part")
    with open(partial, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def export(queue: DeadLetterQueue, selection: Selection, folder: Path, *, remove: bool, now: float,
           progress: bool = False) -> ScanReport:
    def decide(letter: DeadLetter) -> Decision:
        if not selection.matches(letter, now):
            return Decision(Action.KEEP)
        stem = export_name(letter)
        _write_file(folder / f"{stem}.bin", letter.body)
        _write_file(folder / f"{stem}.json",
                    json.dumps(export_record(letter, now), indent=2, sort_keys=True).encode() + b"\n")
        return Decision(Action.REMOVE if remove else Action.KEEP_MATCHED)

    try:
        folder.mkdir(parents=True, exist_ok=True)
        return queue.scan(decide, progress=progress)
    except OSError as error:
        # The letter being written was not acked: it goes back to the queue with every other one not yet done.
        raise CliError(f"cannot export to {folder}: {error.strerror or error}") from None


def purge(queue: DeadLetterQueue, selection: Selection, *, now: float, progress: bool = False) -> ScanReport:
    """Remove the selected letters (the whole queue: RabbitMQ's purge, when nothing narrows the selection)."""
    if not selection.filtered:
        depth = queue.depth() or 0
        queue.session.purge_queue(queue.queue)
        return ScanReport(scanned=depth, matched=depth, removed=depth)
    return queue.scan(lambda letter: Decision(Action.REMOVE if selection.matches(letter, now) else Action.KEEP),
                      progress=progress)


# --- command line -----------------------------------------------------------------------------------------

def _common_arguments() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_connection_arguments(common)
    select = common.add_argument_group("which dead letters (filters combine; each may be repeated)")
    select.add_argument("--id", action="append", default=[], metavar="ID",
                        help="a letter's id or its position (#) as `list` shows them")
    select.add_argument("--reason", action="append", default=[], metavar="WORD",
                        help="reason word: " + ", ".join(REASON_WORDS))
    select.add_argument("--source", action="append", default=[], metavar="QUEUE", help="the queue it came from")
    select.add_argument("--worker", action="append", default=[], metavar="ID", help="the worker that sent it")
    select.add_argument("--older-than", type=float, metavar="SECONDS", help="only letters at least this old")
    select.add_argument("--all", action="store_true", help="replay/purge/export every letter (no filter)")
    common.add_argument("--queue", default=DEAD_LETTER_QUEUE,
                        help=f"the dead-letter queue (default {DEAD_LETTER_QUEUE})")
    add_debug_argument(common)
    return common


REASON_WORDS = (routing.REASON_UNPARSABLE, routing.REASON_NO_STAGES, routing.REASON_WRONG_QUEUE,
                routing.REASON_NO_OUTPUT_STAGE, routing.REASON_OUTPUT_UNROUTABLE, routing.REASON_INTERNAL_ERROR,
                routing.REASON_TOO_LARGE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dead_letters.py",
        description="List, show, replay, purge and export the requests workers put in the dead-letter queue. "
                    "Messages are taken off the queue only after their replayed copy is confirmed by the broker "
                    "or their export is on disk; everything else goes back to the queue.",
        epilog=EXIT_CODES_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_arguments()
    listing = commands.add_parser("list", parents=[common], help="table: reason, source queue, worker, age")
    listing.add_argument("--limit", type=int, default=1000, help="read at most this many letters (default 1000)")
    commands.add_parser("show", parents=[common], help="headers and decoded request of the selected letter(s)")
    replaying = commands.add_parser("replay", parents=[common],
                                    help="publish the selected letters to the queue they belong in (or --to)")
    replaying.add_argument("--to", metavar="STAGE",
                           help="send them to this stage instead: a stage in the request's list resumes there, "
                                "another one is put first")
    commands.add_parser("purge", parents=[common], help="delete the selected letters (asks unless --yes)") \
        .add_argument("--yes", action="store_true", help="do not ask for confirmation")
    exporting = commands.add_parser("export", parents=[common],
                                    help="write each selected letter to DIR as <#>-<id>.bin (body) and .json")
    exporting.add_argument("directory", type=Path, metavar="DIR")
    exporting.add_argument("--remove", action="store_true", help="take exported letters off the queue")
    return parser


def selection_from(args: argparse.Namespace) -> Selection:
    if args.older_than is not None and args.older_than < 0:
        raise CliError("--older-than must not be negative", ExitCode.USAGE)
    return Selection(ids=frozenset(i.lstrip("#") for i in args.id), reasons=frozenset(args.reason),
                     sources=frozenset(args.source), workers=frozenset(args.worker), older_than=args.older_than,
                     everything=args.all)


def _require_selection(selection: Selection, command: str) -> None:
    if not selection.filtered and not selection.everything:
        raise CliError(f"{command} needs a selection (--id, --reason, --source, --worker, --older-than) or --all",
                       ExitCode.USAGE)


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise CliError("purge asks for confirmation: run it in a terminal or add --yes", ExitCode.USAGE)
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _finish(report: ScanReport, summary: str) -> int:
    for failure in report.failures:
        print(f"error: {failure}", file=sys.stderr)
    print(summary)
    return ExitCode.FAILED if report.failures else ExitCode.OK


def _command(args: argparse.Namespace, queue: DeadLetterQueue, selection: Selection) -> int:
    now = time.time()
    progress = sys.stderr.isatty()
    if args.command in ("list", "show") and queue.depth() is None:
        print(f"no dead letters: queue {queue.queue!r} does not exist yet (workers declare it when they connect)")
        return ExitCode.OK
    if args.command == "list":
        letters, report = queue.read(selection, now, limit=args.limit, progress=progress)
        print(format_table(LIST_HEADERS, list_rows(letters, now)) if letters else "no dead letters selected")
        print(f"\nselected {len(letters)} of {report.scanned} read; queue {queue.queue!r} holds {queue.depth()}")
        return ExitCode.OK
    if args.command == "show":
        if not selection.filtered:
            raise CliError("show needs --id (or another filter); `list` shows the ids", ExitCode.USAGE)
        letters, _report = queue.read(selection, now, progress=progress)
        if not letters:
            raise CliError("no dead letter matches")
        print("\n\n".join(describe(letter, now) for letter in letters))
        return ExitCode.OK
    _require_selection(selection, args.command)
    if args.command == "replay":
        if args.to:
            try:
                validate_stage_name(args.to)
            except ValueError as error:
                raise CliError(str(error), ExitCode.USAGE) from None
        report, lines = replay(queue, selection, to_stage=args.to, now=now, progress=progress)
        print("\n".join(lines) or "no dead letter matches")
        refused = report.matched - report.published
        return _finish(report, f"replayed {report.published} of {report.matched} selected"
                       + (f"; {refused} kept in the queue" if refused else ""))
    if args.command == "export":
        report = export(queue, selection, args.directory, remove=args.remove, now=now, progress=progress)
        return _finish(report, f"exported {report.matched} letters to {args.directory}"
                       + (f", {report.removed} taken off the queue" if args.remove else ""))
    what = "every dead letter" if not selection.filtered else "the selected dead letters"
    if not args.yes and not _confirm(f"delete {what} in {queue.queue!r}?"):
        print("nothing deleted")
        return ExitCode.OK
    report = purge(queue, selection, now=now, progress=progress)
    return _finish(report, f"deleted {report.removed} dead letters")


def dead_letter_line(zk: ZooKeeper, conn: ConnectionConfig) -> str:
    """The line `worker_controller.py -q` prints: how many dead letters wait (or why that is unknown)."""
    try:
        session = MQSession(MQSettings.from_zookeeper(zk, conn), name="pero-workers")
        session.open(retry_for=0)
    except MQError as error:
        return f"dead letters: unknown ({error})"
    try:
        depth = session.queue_length(DEAD_LETTER_QUEUE)
    except MQError as error:
        return f"dead letters: unknown ({error})"
    finally:
        session.close()
    if depth is None:
        return f"dead letters: none ({DEAD_LETTER_QUEUE} not declared yet)"
    hint = " (scripts/dead_letters.py list)" if depth else ""
    return f"dead letters: {depth} in {DEAD_LETTER_QUEUE}{hint}"


def _run(args: argparse.Namespace) -> int:
    selection = selection_from(args)
    conn = build_connection_config(args)
    zk = connect_zookeeper(conn)
    try:
        session = open_mq(zk, conn, name="pero-dead-letters")
    finally:
        zk.stop()
    try:
        return _command(args, DeadLetterQueue(session, args.queue), selection)
    finally:
        session.close()


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_run, build_parser(), argv)
