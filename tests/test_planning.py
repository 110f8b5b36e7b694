"""Table-driven tests of the watchdog's pure planning step (watchdog/planning.py)."""
from __future__ import annotations

import pytest

from pero_worker.libs import zk_paths
from pero_worker.watchdog.planning import Move, PlannerSettings, StageView, WorkerView, plan, residence

NOW = 1_000_000.0
S = PlannerSettings()


def W(worker_id, queue="", status=zk_paths.PROCESSING, *, locked_for=0.0, enabled=True, connected=True):  # noqa: N802
    return WorkerView(worker_id, queue, status, enabled, connected, NOW + locked_for if locked_for else 0.0)


def St(name, ready=0, t=1.0, *, unacked=0, prio=0, switch=2.0, waiting_for=None,  # noqa: N802 (short table rows)
       empty_for=float("inf")):
    since = None if waiting_for is None else NOW - waiting_for
    return StageView(name, ready, unacked, t, switch, prio, since, empty_for)


def stages(*views):
    return {v.name: v for v in views}


def moves_of(result):
    return sorted((m.worker_id, m.from_queue, m.to_queue) for m in result.moves)


# (id, workers, stages, expected moves as (worker, from, to))
CASES = [
    ("idle worker without stage goes to the loaded stage",
     [W("w1", "", zk_paths.IDLE)], [St("a", 10)], [("w1", "", "a")]),
    ("idle worker on an empty stage moves even while locked",
     [W("w1", "b", zk_paths.IDLE, locked_for=30)], [St("a", 10), St("b", 0)], [("w1", "b", "a")]),
    ("no work anywhere: nobody moves",
     [W("w1", "", zk_paths.IDLE), W("w2", "a", zk_paths.IDLE)], [St("a", 0), St("b", 0)], []),
    ("disabled stage is never served",
     [W("w1", "", zk_paths.IDLE)], [St("a", 50, prio=-1)], []),
    ("worker on a disabled stage leaves it for work",
     [W("w1", "a", locked_for=30), W("w2", "b")], [St("a", 50, prio=-1), St("b", 0), St("c", 5)],
     [("w1", "a", "c"), ("w2", "b", "c")]),
    ("worker on a disabled stage with nothing else to do is parked on ''",
     [W("w1", "a", locked_for=30)], [St("a", 50, prio=-1)], [("w1", "a", "")]),
    ("worker on a deleted stage is parked on ''",
     [W("w1", "gone")], [St("a", 0)], [("w1", "gone", "")]),
    ("dead, disconnected and disabled workers are never moved",
     [W("w1", "", zk_paths.DEAD), W("w2", "", zk_paths.IDLE, connected=False),
      W("w3", "", zk_paths.IDLE, enabled=False), W("w4", "", zk_paths.MQ_CONNECTION_FAILED)],
     [St("a", 10)], []),
    ("a worker whose configuration failed goes elsewhere, not back",
     [W("w1", "a", zk_paths.CONFIGURATION_FAILED, locked_for=30)], [St("a", 10), St("b", 10)],
     [("w1", "a", "b")]),
    ("a worker whose configuration failed with nothing else to do stays",
     [W("w1", "a", zk_paths.CONFIGURATION_FAILED)], [St("a", 10)], []),
    ("a free worker does not join a stage its colleague will drain before it has switched",
     [W("w1", "a"), W("w2", "", zk_paths.IDLE)], [St("a", 1, t=1.0, switch=2.0)], []),
    ("a free worker joins a stage whose backlog outlasts its switch",
     [W("w1", "a"), W("w2", "", zk_paths.IDLE)], [St("a", 10, t=1.0, switch=2.0)], [("w2", "", "a")]),
    ("starving stage takes a worker from a stage with several, not the only one of another",
     [W("w1", "a"), W("w2", "b"), W("w3", "b")], [St("a", 100), St("b", 100), St("c", 5)],
     [("w2", "b", "c")]),
    ("starving stage waits for unlock before its timeout",
     [W("w1", "a", locked_for=20), W("w2", "a", locked_for=20)], [St("a", 100), St("c", 5, waiting_for=3)],
     []),
    ("starving stage overrides locks after its timeout",
     [W("w1", "a", locked_for=20), W("w2", "a", locked_for=25)], [St("a", 100), St("c", 5, waiting_for=8)],
     [("w1", "a", "c")]),
    ("starving stage takes even the only worker of another stage",
     [W("w1", "a")], [St("a", 100), St("c", 5)], [("w1", "a", "c")]),
    ("starving stage does not take the only worker of a more important stage",
     [W("w1", "a")], [St("a", 100, prio=2), St("c", 5, waiting_for=60)], []),
    ("higher administrative priority is fed first",
     [W("w1", "", zk_paths.IDLE)], [St("a", 100, waiting_for=60), St("b", 1, prio=3)], [("w1", "", "b")]),
    ("longest waiting stage is fed first among equals",
     [W("w1", "", zk_paths.IDLE)], [St("a", 100, waiting_for=1), St("b", 1, waiting_for=9)], [("w1", "", "b")]),
    ("big imbalance is rebalanced",
     [W("w1", "a"), W("w2", "a"), W("w3", "a"), W("w4", "b")],
     [St("a", 100, t=0.05), St("b", 200, t=0.5)],
     [("w1", "a", "b"), ("w2", "a", "b")]),
    ("similar loads are left alone (hysteresis)",
     [W("w1", "a"), W("w2", "a"), W("w3", "a"), W("w4", "b")], [St("a", 114, t=1.0), St("b", 60, t=1.0)], []),
    ("locked workers are not rebalanced",
     [W("w1", "a", locked_for=5), W("w2", "a", locked_for=5), W("w3", "b")],
     [St("a", 10, t=0.1), St("b", 1000, t=1.0)], []),
    ("a worker on a queue that has just run empty is finishing prefetched work: neither free nor a donor",
     [W("w1", "b")], [St("a", 10), St("b", 0, t=1.0, empty_for=0.5)], []),
    ("once the queue has been empty for its settle time the worker is free",
     [W("w1", "b", locked_for=30)], [St("a", 10), St("b", 0, t=1.0, empty_for=4.0)], [("w1", "b", "a")]),
    ("settle time is at least settle_min even for fast stages",
     [W("w1", "b")], [St("a", 10), St("b", 0, t=0.01, empty_for=0.5)], []),
    ("a rebalance gain must also pay for one more switch",
     [W("w1", "a"), W("w2", "a"), W("w3", "a"), W("w4", "b")], [St("a", 35), St("b", 20, switch=3.0)], []),
    ("... and moves when it does",
     [W("w1", "a"), W("w2", "a"), W("w3", "a"), W("w4", "b")], [St("a", 35), St("b", 20, switch=1.5)],
     [("w1", "a", "b")]),
    ("a small backlog does not pay for a switch",
     [W("w1", "a"), W("w2", "a"), W("w3", "b")], [St("a", 100, t=0.01), St("b", 4, t=1.0, switch=5.0)], []),
]


# Original workers: IDLE (queue ran empty) or PROCESSING_FAILED with a stage in their queue node do not
# process it until the node is rewritten; a move to the same stage is that rewrite.
CASES += [
    ("an original worker idle on its stage with new work is woken (its queue node rewritten)",
     [W("w1", "a", zk_paths.IDLE)], [St("a", 20)], [("w1", "a", "a")]),
    ("... also while it is still locked from its last assignment",
     [W("w1", "a", zk_paths.IDLE, locked_for=30)], [St("a", 20)], [("w1", "a", "a")]),
    ("... and one whose processing thread failed",
     [W("w1", "a", zk_paths.PROCESSING_FAILED)], [St("a", 20)], [("w1", "a", "a")]),
    ("an idle worker on an empty stage is not woken",
     [W("w1", "a", zk_paths.IDLE)], [St("a", 0)], []),
    ("an idle original worker does not count as serving: a busy worker is not needed elsewhere",
     [W("w1", "a", zk_paths.IDLE), W("w2", "b")], [St("a", 20), St("b", 100)], [("w1", "a", "a")]),
    ("an idle original worker on an empty stage goes where the work is",
     [W("w1", "a", zk_paths.IDLE)], [St("a", 0), St("b", 20)], [("w1", "a", "b")]),
    ("CONNECTION_FAILED (the original's word) is never moved",
     [W("w1", "", "CONNECTION_FAILED")], [St("a", 20)], []),
]


def test_a_woken_worker_is_not_woken_again_within_the_wake_interval():
    workers = [W("w1", "a", zk_paths.IDLE, locked_for=30)]
    loads = stages(St("a", 20))
    (wake,) = plan(workers, loads, NOW, S).moves
    assert (wake.from_queue, wake.to_queue) == ("a", "a")
    assert wake.unlock_time == pytest.approx(NOW + 30), "a wake never shortens a lock"
    assert wake.wake_until == pytest.approx(NOW + S.wake_interval)
    assert plan(workers, loads, NOW + 1, S, (wake,)).moves == ()
    assert [m.to_queue for m in plan(workers, loads, NOW + S.wake_interval + 0.1, S, (wake,)).moves] == ["a"]


def test_a_wake_through_rule_1_locks_only_for_the_wake_interval():
    (move,) = plan([W("w1", "a", zk_paths.IDLE)], stages(St("a", 20, switch=5.0)), NOW, S).moves
    assert move.to_queue == "a" and move.unlock_time == pytest.approx(NOW + S.wake_interval)


def test_a_wake_blocks_no_rebalancing():
    workers = [W("w1", "a"), W("w2", "a"), W("w3", "a"), W("w4", "b")]
    loads = stages(St("a", 100, t=0.05), St("b", 200, t=0.5))
    assert len(plan(workers, loads, NOW, S, (Move("w1", "a", "a", NOW + 2, "wake", NOW + 2),)).moves) == 2


@pytest.mark.parametrize("name,workers,stage_list,expected", CASES, ids=[c[0] for c in CASES])
def test_plan_moves(name, workers, stage_list, expected):
    result = plan(workers, stages(*stage_list), NOW, S)
    assert moves_of(result) == sorted(expected)


def test_four_idle_workers_split_by_work():
    workers = [W(f"w{i}", "", zk_paths.IDLE) for i in range(4)]
    result = plan(workers, stages(St("a", 100), St("b", 10)), NOW, S)
    targets = sorted(m.to_queue for m in result.moves)
    assert targets == ["a", "a", "a", "b"]


def test_moved_worker_is_locked_for_the_residence_time():
    stage = St("a", 10, t=0.5, switch=3.0)
    result = plan([W("w1", "", zk_paths.IDLE)], stages(stage), NOW, S)
    (move,) = result.moves
    assert move.unlock_time == pytest.approx(NOW + S.residence_switch_factor * 3.0 + S.residence_messages * 0.5)
    assert residence(stage, S) >= S.min_residence


def test_parking_on_empty_stage_sets_no_lock():
    result = plan([W("w1", "gone")], {}, NOW, S)
    assert result.moves == (Move("w1", "gone", "", 0.0, result.moves[0].reason),)


def test_unknown_times_fall_back_to_defaults():
    unknown = StageView("a", ready=10, avg_msg_time=None, switch_time=None)
    result = plan([W("w1", "", zk_paths.IDLE)], {"a": unknown}, NOW, S)
    assert result.moves[0].unlock_time == pytest.approx(
        NOW + S.residence_switch_factor * S.default_switch_time + S.residence_messages * S.default_msg_time)


# waiting_since: (stages, workers, expected updates)
WAITING_CASES = [
    ("unserved stage with messages starts waiting",
     [St("a", 5, prio=-1)], [], {"a": NOW}),
    ("already waiting keeps its time",
     [St("a", 5, prio=-1, waiting_for=30)], [], {}),
    ("served stage stops waiting",
     [St("a", 5, waiting_for=30)], [W("w1", "a")], {"a": None}),
    ("stage assigned in this round stops waiting",
     [St("a", 5, waiting_for=30)], [W("w1", "", zk_paths.IDLE)], {"a": None}),
    ("empty stage stops waiting",
     [St("a", 0, waiting_for=30)], [], {"a": None}),
    ("starving stage that got nobody starts waiting",
     [St("a", 100), St("c", 5)], [W("w1", "a", locked_for=30)], {"c": NOW}),
    ("a worker that is not connected does not serve",
     [St("a", 5)], [W("w1", "a", connected=False)], {"a": NOW}),
]


@pytest.mark.parametrize("name,stage_list,workers,expected", WAITING_CASES, ids=[c[0] for c in WAITING_CASES])
def test_waiting_since(name, stage_list, workers, expected):
    assert plan(workers, stages(*stage_list), NOW, S).waiting_since == expected


def apply(workers, result):
    by_id = {w.worker_id: w for w in workers}
    for move in result.moves:
        w = by_id[move.worker_id]
        by_id[move.worker_id] = WorkerView(w.worker_id, move.to_queue, zk_paths.PROCESSING, True, True,
                                           move.unlock_time)
    return list(by_id.values())


@pytest.mark.parametrize("loads", [
    {"a": (100, 0.05), "b": (200, 0.5), "c": (40, 0.2)},
    {"a": (1000, 0.05), "b": (0, 0.5), "c": (400, 0.2)},
    {"a": (10, 1.0), "b": (10, 1.0), "c": (10, 1.0)},
])
def test_plan_reaches_a_fixed_point_without_thrashing(loads):
    """Re-planning an unchanged load, even after every lock has expired, moves nobody."""
    stage_map = {n: St(n, ready, t) for n, (ready, t) in loads.items()}
    workers = [W(f"w{i}", "", zk_paths.IDLE) for i in range(4)]
    for _round in range(3):
        result = plan(workers, stage_map, NOW, S)
        workers = apply(workers, result)
        workers = [WorkerView(w.worker_id, w.queue, w.status, True, True, 0.0) for w in workers]
    assert plan(workers, stage_map, NOW + 100, S).moves == ()


def test_load_shift_moves_workers_to_the_new_stage():
    workers = [W(f"w{i}", "a") for i in range(4)]
    loads = stages(St("a", 5, t=0.2), St("b", 400, t=0.2))
    result = plan(workers, loads, NOW, S)
    assert sum(1 for m in result.moves if m.to_queue == "b") >= 2


def test_no_rebalancing_against_a_recent_move():
    workers = [W("w1", "a"), W("w2", "a"), W("w3", "a"), W("w4", "b")]
    loads = stages(St("a", 100, t=0.05), St("b", 200, t=0.5))
    recent = (Move("w1", "b", "a", NOW + 5, "earlier"),)
    assert plan(workers, loads, NOW, S, recent).moves == ()
    expired = (Move("w1", "b", "a", NOW - 1, "earlier"),)
    assert len(plan(workers, loads, NOW, S, expired).moves) == 2
    other_direction = (Move("w1", "a", "b", NOW + 5, "earlier"),)
    assert len(plan(workers, loads, NOW, S, other_direction).moves) == 2
