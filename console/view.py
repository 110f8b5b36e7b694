"""What the console page shows, computed from one snapshot: pure functions, no I/O, table-tested.

The numbers are the watchdog's own: the work and drain time of a stage come from watchdog/planning.py
(`work`, `drain_time`), and the planned moves are `planning.plan` run on the same snapshot, so the page
shows what the watchdog would decide now, not a second opinion.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pero_worker.libs import zk_paths
from pero_worker.tools.dead_letters import DeadLetter, age_of, format_age
from pero_worker.watchdog.planning import Plan, PlannerSettings, drain_time, work
from pero_worker.watchdog.state import Snapshot

FAILED_STATUSES = frozenset({zk_paths.CONFIGURATION_FAILED, zk_paths.MQ_CONNECTION_FAILED,
                             zk_paths.ZK_CONNECTION_FAILED, zk_paths.PROCESSING_FAILED})

# One line of the log queue / log daemon files (worker/log_shipping.py): '<date> <time> <worker> <LEVEL> <logger>: text'
LOG_LINE = re.compile(r"^(\S+ \S+) (\S+) (WARNING|ERROR|CRITICAL) ([^:\s]+): (.*)$")


@dataclass(frozen=True)
class LogProblem:
    time: str
    worker_id: str
    level: str
    text: str


def parse_problems(lines: Iterable[str]) -> list[LogProblem]:
    """The WARNING/ERROR/CRITICAL lines of a log file, oldest first; other lines are skipped."""
    found = []
    for line in lines:
        match = LOG_LINE.match(line.rstrip("\n"))
        if match:
            found.append(LogProblem(match.group(1), match.group(2), match.group(3), match.group(5)[:300]))
    return found


@dataclass(frozen=True)
class StageRow:
    name: str
    priority: str
    ready: str
    unacked: int
    workers: int
    rate: str          # messages delivered per second (management API)
    eta: str           # drain time by the watchdog's model
    waiting: str


@dataclass(frozen=True)
class WorkerRow:
    worker_id: str
    status: str
    stage: str
    host: str
    uptime: str
    last_error: str
    enabled: bool
    connected: bool
    locked: str
    failed: bool


@dataclass(frozen=True)
class MoveRow:
    worker_id: str
    from_stage: str
    to_stage: str
    reason: str


@dataclass(frozen=True)
class LetterRow:
    id: str
    position: int
    reason: str
    source: str
    worker: str
    age: str


@dataclass(frozen=True)
class Extras:
    """What the console reads besides the watchdog's snapshot."""
    uptimes: dict[str, float] = field(default_factory=dict)     # worker -> epoch its `connected` node was made
    hosts: dict[str, str] = field(default_factory=dict)         # worker -> peer host of its AMQP connection
    contenders: tuple[str, ...] = ()                            # watchdog election, active first
    dead_letter_depth: int | None = None
    dead_letters: tuple[DeadLetter, ...] = ()
    problems: tuple[LogProblem, ...] = ()
    errors: tuple[str, ...] = ()                                # what could not be read this round


@dataclass(frozen=True)
class ConsoleView:
    time: float
    stages: tuple[StageRow, ...]
    other_stages: tuple[tuple[str, str], ...]
    workers: tuple[WorkerRow, ...]
    watchdog: str
    standby: tuple[str, ...]
    moves: tuple[MoveRow, ...]
    failures: tuple[str, ...]
    dead_letter_depth: str
    dead_letters: tuple[LetterRow, ...]
    processing_stages: tuple[str, ...]
    depth_source: str
    errors: tuple[str, ...]

    @property
    def updated(self) -> str:
        return datetime.fromtimestamp(self.time, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "never (no worker)"
    return format_age(seconds)


def stage_rows(snapshot: Snapshot, settings: PlannerSettings) -> list[StageRow]:
    counts: dict[str, int] = {}
    for record in snapshot.workers:
        w = record.view
        if w.connected and w.enabled and w.queue:
            counts[w.queue] = counts.get(w.queue, 0) + 1
    rows = []
    for name, record in sorted(snapshot.stages.items()):
        s = record.view
        served = counts.get(name, 0)
        rate = record.deliver_rate
        load = work(s, settings)
        rows.append(StageRow(
            name=name, priority="disabled" if s.disabled else str(s.admin_priority),
            ready=str(s.ready) if record.queue_exists else "no queue", unacked=s.unacked, workers=served,
            rate="-" if rate is None else f"{rate:.1f}/s", eta=duration(drain_time(load, served)) if load > 0 else "-",
            waiting=duration(snapshot.time - s.waiting_since) if s.waiting_since is not None else "-"))
    return rows


def worker_rows(snapshot: Snapshot, extras: Extras) -> list[WorkerRow]:
    last_problem = {p.worker_id: p for p in extras.problems}
    rows = []
    for record in sorted(snapshot.workers, key=lambda r: r.view.worker_id):
        w = record.view
        started = extras.uptimes.get(w.worker_id)
        failed = w.status in FAILED_STATUSES
        problem = last_problem.get(w.worker_id)
        last_error = f"{problem.time}: {problem.text}" if problem else (w.status if failed else "")
        locked = w.unlock_time - snapshot.time if w.unlock_time else 0.0
        rows.append(WorkerRow(
            worker_id=w.worker_id, status=w.status or "?", stage=w.queue, host=extras.hosts.get(w.worker_id, "?"),
            uptime=duration(snapshot.time - started) if started is not None and w.connected else "-",
            last_error=last_error, enabled=w.enabled, connected=w.connected,
            locked=format_age(locked) if locked > 0 else "-", failed=failed or not w.connected))
    return rows


def failure_lines(workers: Sequence[WorkerRow], extras: Extras, limit: int = 20) -> list[str]:
    """Most recent first: workers in a failed state, then the latest WARNING/ERROR log lines."""
    lines = [f"worker {w.worker_id}: {w.status}" for w in workers if w.status in FAILED_STATUSES]
    lines += [f"{p.time} {p.worker_id} {p.level}: {p.text}" for p in reversed(extras.problems)]
    return lines[:limit]


def letter_rows(letters: Iterable[DeadLetter], now: float) -> list[LetterRow]:
    return [LetterRow(letter.id, letter.position, letter.reason_word, letter.source_queue or "?",
                      letter.worker_id or "?", format_age(age_of(letter, now))) for letter in letters]


def build_view(snapshot: Snapshot, plan: Plan, extras: Extras,
               settings: PlannerSettings = PlannerSettings()) -> ConsoleView:
    workers = worker_rows(snapshot, extras)
    moves = [MoveRow(m.worker_id, m.from_queue or "-", m.to_queue or "-", m.reason) for m in plan.moves
             if m.to_queue != m.from_queue]
    depth = extras.dead_letter_depth
    return ConsoleView(
        time=snapshot.time, stages=tuple(stage_rows(snapshot, settings)),
        other_stages=tuple(sorted(snapshot.other_stages.items())), workers=tuple(workers),
        watchdog=extras.contenders[0] if extras.contenders else "", standby=tuple(extras.contenders[1:]),
        moves=tuple(moves), failures=tuple(failure_lines(workers, extras)),
        dead_letter_depth="?" if depth is None else str(depth),
        dead_letters=tuple(letter_rows(extras.dead_letters, snapshot.time)),
        processing_stages=tuple(sorted(n for n, r in snapshot.stages.items() if not r.view.disabled)),
        depth_source=snapshot.depth_source, errors=extras.errors)
