"""The watchdog's Prometheus metrics (served by libs/metrics.py).

Names (the Grafana dashboard in sample-config/grafana/ uses these):
  pero_watchdog_leader                          1 while this instance is the active watchdog, else 0
  pero_watchdog_rounds_total                    planning rounds made as the active watchdog
  pero_watchdog_round_failures_total            rounds that failed (ZooKeeper hiccup, ...)
  pero_watchdog_round_seconds                   histogram: a whole round (read state, plan, write moves)
  pero_watchdog_planning_seconds                histogram: the planner alone (planning.plan)
  pero_watchdog_moves_total{reason}             moves written, by kind of reason (MOVE_KINDS)
  pero_watchdog_queue_ready{stage}              requests waiting in the stage's queue (last round)
  pero_watchdog_queue_unacked{stage}            requests delivered to workers, not yet acknowledged
  pero_watchdog_stage_workers{stage}            usable workers assigned to the stage
  pero_watchdog_drain_seconds{stage}            estimated time to empty the stage with its workers (+Inf: none)

Stage gauges describe the last round only: a stage that disappears loses its series, and
an instance that steps down drops them all (a standby has no fresh view to report).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from pero_worker.watchdog.planning import PlannerSettings, StageView, WorkerView, drain_time, is_usable, work

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

# The planner's reasons carry figures ("rebalance, drain time -3.2 s"); a label needs a small fixed set.
MOVE_KINDS = (("wake", "wake"), ("idle worker to unserved", "idle_to_unserved"),
              ("idle worker to loaded", "idle_to_loaded"), ("starving stage (unlock", "starving_override"),
              ("starving", "starving"), ("rebalance", "rebalance"), ("stage ", "release"))
ROUND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

LEADER = Gauge("pero_watchdog_leader", "1 while this instance is the active watchdog", registry=REGISTRY)
ROUNDS = Counter("pero_watchdog_rounds", "Planning rounds made as the active watchdog", registry=REGISTRY)
ROUND_FAILURES = Counter("pero_watchdog_round_failures", "Planning rounds that failed", registry=REGISTRY)
ROUND_SECONDS = Histogram("pero_watchdog_round_seconds", "A whole round: read state, plan, write moves",
                          buckets=ROUND_BUCKETS, registry=REGISTRY)
PLANNING_SECONDS = Histogram("pero_watchdog_planning_seconds", "The planner alone", buckets=ROUND_BUCKETS,
                             registry=REGISTRY)
MOVES = Counter("pero_watchdog_moves", "Moves written, by kind of reason", ["reason"], registry=REGISTRY)
QUEUE_READY = Gauge("pero_watchdog_queue_ready", "Requests waiting in the stage's queue", ["stage"],
                    registry=REGISTRY)
QUEUE_UNACKED = Gauge("pero_watchdog_queue_unacked", "Requests delivered, not yet acknowledged", ["stage"],
                      registry=REGISTRY)
STAGE_WORKERS = Gauge("pero_watchdog_stage_workers", "Usable workers assigned to the stage", ["stage"],
                      registry=REGISTRY)
DRAIN_SECONDS = Gauge("pero_watchdog_drain_seconds", "Estimated seconds to empty the stage (+Inf: no worker)",
                      ["stage"], registry=REGISTRY)
_STAGE_GAUGES = (QUEUE_READY, QUEUE_UNACKED, STAGE_WORKERS, DRAIN_SECONDS)
LEADER.set(0)


def move_kind(reason: str) -> str:
    """The label of a planner's move reason (pure)."""
    for prefix, kind in MOVE_KINDS:
        if reason.startswith(prefix):
            return kind
    return "other"


@dataclass(frozen=True)
class StageFigures:
    ready: int
    unacked: int
    workers: int
    drain_seconds: float


def stage_figures(workers: list[WorkerView], stages: dict[str, StageView],
                  settings: PlannerSettings) -> dict[str, StageFigures]:
    """Per stage: depths, usable workers on it and the drain estimate the planner works with (pure)."""
    serving = {name: 0 for name in stages}
    for worker in workers:
        if worker.queue in serving and is_usable(worker):
            serving[worker.queue] += 1
    return {name: StageFigures(stage.ready, stage.unacked, serving[name],
                               drain_time(work(stage, settings), serving[name]))
            for name, stage in stages.items()}


class StageGauges:
    """Keeps the per-stage gauges equal to the last round's figures (stages gone are removed)."""

    def __init__(self) -> None:
        self._shown: set[str] = set()

    def update(self, figures: dict[str, StageFigures]) -> None:
        for name, figure in figures.items():
            QUEUE_READY.labels(name).set(figure.ready)
            QUEUE_UNACKED.labels(name).set(figure.unacked)
            STAGE_WORKERS.labels(name).set(figure.workers)
            DRAIN_SECONDS.labels(name).set(figure.drain_seconds if not math.isnan(figure.drain_seconds) else 0.0)
        self._drop(self._shown - set(figures))
        self._shown = set(figures)

    def clear(self) -> None:
        self._drop(self._shown)
        self._shown = set()

    @staticmethod
    def _drop(names: set[str]) -> None:
        for name in names:
            for gauge in _STAGE_GAUGES:
                try:
                    gauge.remove(name)
                except KeyError:
                    pass
