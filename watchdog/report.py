"""Readable tables of the watchdog's view (--dry-run, worker_controller)."""
from __future__ import annotations

from collections.abc import Sequence

from pero_worker.watchdog.planning import Plan, PlannerSettings, drain_time, msg_time, switch_time, work
from pero_worker.watchdog.state import Snapshot


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def seconds(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "inf"
    return f"{value:.{digits}f}"


def workers_table(snapshot: Snapshot) -> str:
    rows = []
    for record in sorted(snapshot.workers, key=lambda r: r.view.worker_id):
        w = record.view
        locked = max(0.0, w.unlock_time - snapshot.time) if w.unlock_time else 0.0
        rows.append([w.worker_id, w.status or "?", w.queue or "''", "yes" if w.enabled else "no",
                     "yes" if w.connected else "NO", f"{locked:.1f} s" if locked else "-"])
    return format_table(["worker", "status", "queue", "enabled", "connected", "locked for"], rows)


def stages_table(snapshot: Snapshot, settings: PlannerSettings = PlannerSettings()) -> str:
    counts: dict[str, int] = {}
    for record in snapshot.workers:
        w = record.view
        if w.connected and w.enabled:
            counts[w.queue] = counts.get(w.queue, 0) + 1
    rows = []
    for name, record in sorted(snapshot.stages.items()):
        s = record.view
        load = work(s, settings)
        waiting = f"{snapshot.time - s.waiting_since:.0f} s" if s.waiting_since is not None else "-"
        rows.append([
            name, "disabled" if s.disabled else s.admin_priority,
            s.ready if record.queue_exists else "no queue", s.unacked,
            "-" if record.consumers is None else record.consumers, counts.get(name, 0),
            seconds(s.avg_msg_time, 3) + ("" if s.avg_msg_time else f" ({msg_time(s, settings):g}?)"),
            seconds(s.switch_time, 1) + ("" if s.switch_time is not None else f" ({switch_time(s, settings):g}?)"),
            seconds(load), seconds(drain_time(load, counts.get(name, 0))), waiting,
        ])
    return format_table(["stage", "priority", "ready", "unacked", "consumers", "workers", "msg time s",
                         "switch s", "work s", "drain s", "waiting"], rows)


def other_stages_table(snapshot: Snapshot) -> str:
    rows = [[name, reason] for name, reason in sorted(snapshot.other_stages.items())]
    return format_table(["stage", "why"], rows)


def moves_table(plan: Plan, now: float) -> str:
    if not plan.moves:
        return "(no moves)"
    rows = [[m.worker_id, m.from_queue or "''", m.to_queue or "''",
             f"{m.unlock_time - now:.1f} s" if m.unlock_time else "-", m.reason] for m in plan.moves]
    return format_table(["worker", "from", "to", "locked for", "reason"], rows)


def describe(snapshot: Snapshot, plan: Plan, settings: PlannerSettings = PlannerSettings()) -> str:
    parts = [
        f"queue depths from: {snapshot.depth_source or 'nowhere (broker unreachable)'}",
        "", "WORKERS", workers_table(snapshot) if snapshot.workers else "(no workers registered)",
        "", "STAGES", stages_table(snapshot, settings) if snapshot.stages else "(no stages configured)",
    ]
    if snapshot.other_stages:
        parts += ["", "NOT PROCESSING STAGES (never given a worker)", other_stages_table(snapshot)]
    parts += ["", "MOVES THE WATCHDOG WOULD MAKE", moves_table(plan, snapshot.time)]
    if plan.waiting_since:
        parts += ["", "waiting_since changes: " + ", ".join(
            f"{stage}={'now' if since is not None else 'cleared'}" for stage, since in plan.waiting_since.items())]
    return "\n".join(parts)
