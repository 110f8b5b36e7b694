"""Which worker serves which stage: the watchdog's decision, as a pure function.

`plan(workers, stages, now, settings)` takes a snapshot of the system and returns the
moves to make and the `waiting_since` values to write.  It does no I/O and reads no
clock, so every rule below is tested directly with tables of states.

The model
---------
For a stage s with `ready + unacked` messages of `t` seconds each, the work waiting is
`W = (ready + unacked) * t * (1 + admin_priority)` (a higher administrative priority
makes a stage's work count more).  With `n` workers it drains in about `F = W / n`
seconds (infinite when work waits and nobody serves it).

Moving a worker into stage b costs `switch_time(b)` seconds during which it serves
nobody; while the existing `n` workers drain, the newcomer joins after that delay, so
b then drains in `(W + switch) / (n + 1)`.  A move from a to b is worth making only when
it shortens the longer of the two drain times by more than a margin (hysteresis): that
is what keeps the watchdog from thrashing workers between queues of similar load.

Rules, in the order they are applied:

1. Free workers (no stage, a stage that has been empty for its settle time, deleted or
   disabled, or a stage whose configuration failed on them) go, one at a time, to the
   stage that needs them most:
   first stages nobody serves (highest administrative priority, longest waiting),
   then the longest drain time; a stage that already has workers only gets another one
   when its per-worker backlog outlasts the newcomer's switch.  Free workers ignore
   their unlock time: leaving an empty queue loses nothing.  The settle time matters
   because workers prefetch: a queue reads empty while its workers still hold a second
   or two of requests, and moving them then sends those requests back to a queue that
   nobody serves any more, which pulls another worker in (ping-pong).  A worker on a deleted or
   disabled stage with nothing better to do is sent to '' so the stage stays unserved.
2. A stage with work and no worker (starving) takes a busy worker from the stage that
   misses it least (one with several workers first).  Only unlocked workers qualify
   until the stage has waited `starvation_timeout` seconds; then the unlock time is
   overridden, so a loaded queue gets a worker within that bound even when every
   worker is busy and locked elsewhere.
3. Rebalancing: the move with the largest gain in drain time is applied, repeatedly,
   while a gain exceeds the hysteresis margin (which includes one more switch cost).
   Only unlocked workers move, and never against a recent move: while a worker that
   was moved from b to a is still locked, nobody is rebalanced from a to b (the load
   estimates are noisy, and moves in both directions only pay switch costs).

Every moved worker is locked for a residence time that grows with the switch cost of
its new stage (`residence_switch_factor * switch + residence_messages * t`, at least
`min_residence`): with the default factor a worker spends at most about a fifth of its
time switching, however the load moves.

Stages with administrative priority -1 are never served.  Times are seconds since the
epoch (floats); the caller converts from and to ISO-8601.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from pero_worker.libs import zk_paths

DISABLED_PRIORITY = -1

# Workers in these states process nothing and cannot be moved usefully.  CONNECTION_FAILED is the
# original worker's word for a broker it cannot reach.
UNUSABLE_STATUSES = frozenset({
    zk_paths.DEAD, zk_paths.ZK_CONNECTION_FAILED, zk_paths.MQ_CONNECTION_FAILED, "CONNECTION_FAILED",
})

# A worker in one of these states with a stage in its queue node is not processing that stage: an original
# worker goes IDLE when its queue runs empty (or PROCESSING_FAILED when its processing thread died) and only
# looks at the queue again when its `queue` node is rewritten.  Ours are never IDLE with a stage.
STALLED_STATUSES = frozenset({zk_paths.IDLE, zk_paths.PROCESSING_FAILED})


@dataclass(frozen=True)
class WorkerView:
    """What the planner knows of one worker."""
    worker_id: str
    queue: str = ""                 # '' = no stage
    status: str = zk_paths.IDLE
    enabled: bool = True
    connected: bool = True
    unlock_time: float = 0.0        # epoch seconds before which it must not be moved (0 = never locked)


@dataclass(frozen=True)
class StageView:
    """What the planner knows of one stage (a queue that has a configuration)."""
    name: str
    ready: int = 0                  # messages waiting in the queue
    unacked: int = 0                # messages delivered, not yet acknowledged
    avg_msg_time: float | None = None   # seconds per message; None/0 = not measured yet
    switch_time: float | None = None    # seconds for a worker to take up the stage; None = not measured
    admin_priority: int = 0         # -1 = disabled
    waiting_since: float | None = None  # epoch seconds; None = not waiting
    empty_for: float = math.inf         # seconds the queue has been seen empty (ready == 0); inf = long/unknown

    @property
    def disabled(self) -> bool:
        return self.admin_priority <= DISABLED_PRIORITY


@dataclass(frozen=True)
class PlannerSettings:
    default_msg_time: float = 1.0        # used until workers have measured a stage
    default_switch_time: float = 2.0     # used until workers have measured a stage
    min_residence: float = 2.0           # seconds a moved worker stays at least
    residence_switch_factor: float = 4.0 # residence >= factor * switch time (switch overhead <= 1/(1+factor))
    residence_messages: float = 2.0      # ... + this many messages' time
    min_gain: float = 1.0                # rebalance only for a gain of at least this many seconds ...
    relative_gain: float = 0.1           # ... and at least this fraction of the longer drain time
    starvation_timeout: float = 7.0      # after this wait a starving stage overrides unlock times (< 10 s with polling)
    settle_messages: float = 4.0         # an emptied queue frees its workers after this many messages' time ...
    settle_min: float = 1.0              # ... but at least this long (prefetched requests are still in hand)
    settle_max: float = 4.0              # ... and at most this long
    wake_interval: float = 2.0           # rewrite an idle worker's queue node at most this often


@dataclass(frozen=True)
class Move:
    worker_id: str
    from_queue: str
    to_queue: str
    unlock_time: float
    reason: str
    wake_until: float = 0.0   # a wake (queue node rewritten, same stage): not woken again before this time


@dataclass(frozen=True)
class Plan:
    moves: tuple[Move, ...] = ()
    # stage -> new waiting_since (None = clear); only stages whose value changes
    waiting_since: dict[str, float | None] = field(default_factory=dict)


# --- small helpers ---------------------------------------------------------------

def msg_time(stage: StageView, settings: PlannerSettings) -> float:
    if stage.avg_msg_time and stage.avg_msg_time > 0 and math.isfinite(stage.avg_msg_time):
        return stage.avg_msg_time
    return settings.default_msg_time


def switch_time(stage: StageView, settings: PlannerSettings) -> float:
    if stage.switch_time is not None and stage.switch_time >= 0 and math.isfinite(stage.switch_time):
        return stage.switch_time
    return settings.default_switch_time


def work(stage: StageView, settings: PlannerSettings) -> float:
    """Seconds of work waiting in the stage, weighted by administrative priority."""
    weight = 1 + max(0, stage.admin_priority)
    return max(0, stage.ready + stage.unacked) * msg_time(stage, settings) * weight


def drain_time(work_s: float, workers: int) -> float:
    if work_s <= 0:
        return 0.0
    return math.inf if workers <= 0 else work_s / workers


def settle_time(stage: StageView, settings: PlannerSettings) -> float:
    """How long a queue must read empty before its workers count as free (they finish what they prefetched)."""
    return min(settings.settle_max, max(settings.settle_min, settings.settle_messages * msg_time(stage, settings)))


def residence(stage: StageView, settings: PlannerSettings) -> float:
    return max(settings.min_residence,
               settings.residence_switch_factor * switch_time(stage, settings)
               + settings.residence_messages * msg_time(stage, settings))


def is_usable(worker: WorkerView) -> bool:
    return worker.connected and worker.enabled and worker.status not in UNUSABLE_STATUSES


# --- the planner -----------------------------------------------------------------

class _Planner:
    """Mutable working state of one planning round (kept private: `plan` is the API)."""

    def __init__(self, workers: list[WorkerView], stages: dict[str, StageView], now: float,
                 settings: PlannerSettings, recent_moves: tuple[Move, ...] = ()) -> None:
        self.now = now
        # (from, to) pairs whose reverse rebalancing is blocked until the moved worker unlocks
        self.blocked = {(m.to_queue, m.from_queue) for m in recent_moves
                        if m.unlock_time > now and m.to_queue != m.from_queue}
        # workers woken (queue node rewritten) within the wake interval: not woken again yet
        self.woken = {m.worker_id for m in recent_moves if m.wake_until > now}
        self.settings = settings
        self.stages = stages
        self.workers = {w.worker_id: w for w in sorted(workers, key=lambda w: w.worker_id) if is_usable(w)}
        self.moves: list[Move] = []
        self.moved: set[str] = set()
        self.work = {name: work(stage, settings) for name, stage in stages.items()}
        self.count = {name: 0 for name in stages}
        for worker in self.workers.values():
            if self.serves(worker):
                self.count[worker.queue] += 1

    # classification ---------------------------------------------------------
    def servable(self, name: str) -> bool:
        stage = self.stages.get(name)
        return stage is not None and not stage.disabled

    def serves(self, worker: WorkerView) -> bool:
        """True when the worker counts as processing its stage.

        A worker stalled on its stage (IDLE with a stage: an original worker whose queue ran empty) counts
        only while it is locked, i.e. just assigned or woken and still taking the stage up."""
        return (self.servable(worker.queue) and worker.status != zk_paths.CONFIGURATION_FAILED
                and not (self.stalled(worker) and not self.locked(worker)))

    def stalled(self, worker: WorkerView) -> bool:
        return worker.status in STALLED_STATUSES and worker.queue != "" and self.servable(worker.queue)

    def is_free(self, worker: WorkerView) -> bool:
        if not self.serves(worker):
            return True
        stage = self.stages[worker.queue]
        return stage.ready <= 0 and stage.empty_for >= settle_time(stage, self.settings)

    def is_draining(self, worker: WorkerView) -> bool:
        """On a queue that just ran empty: finishing prefetched requests, neither free nor a donor."""
        return self.serves(worker) and not self.is_free(worker) and self.stages[worker.queue].ready <= 0

    def locked(self, worker: WorkerView) -> bool:
        return worker.unlock_time > self.now

    def demanding(self) -> list[str]:
        """Servable stages with messages ready."""
        return [name for name, stage in sorted(self.stages.items()) if not stage.disabled and stage.ready > 0]

    def waited(self, name: str) -> float:
        since = self.stages[name].waiting_since
        return 0.0 if since is None else max(0.0, self.now - since)

    def drain(self, name: str, extra: int = 0) -> float:
        return drain_time(self.work[name], self.count[name] + extra)

    def drain_with_newcomer(self, name: str) -> float:
        """Drain time once one more worker has switched in (it starts after the switch)."""
        sw = switch_time(self.stages[name], self.settings)
        return (self.work[name] + sw) / (self.count[name] + 1)

    # applying a move --------------------------------------------------------
    def move(self, worker: WorkerView, to_queue: str, reason: str) -> None:
        if self.serves(worker):
            self.count[worker.queue] -= 1
        wake_until = 0.0
        if to_queue and to_queue == worker.queue:   # a free stalled worker woken on its own stage
            wake_until = unlock = self.now + self.settings.wake_interval
        else:
            unlock = self.now + residence(self.stages[to_queue], self.settings) if to_queue else 0.0
        self.moves.append(Move(worker.worker_id, worker.queue, to_queue, unlock, reason, wake_until))
        moved = replace(worker, queue=to_queue, unlock_time=unlock, status=zk_paths.STARTING)
        self.workers[worker.worker_id] = moved
        self.moved.add(worker.worker_id)
        if to_queue:
            self.count[to_queue] += 1

    # rule 1: free workers ---------------------------------------------------
    def wants_another(self, name: str) -> bool:
        if self.count[name] == 0:
            return True
        stage = self.stages[name]
        per_worker = self.work[name] / self.count[name]
        return per_worker > switch_time(stage, self.settings) + msg_time(stage, self.settings)

    def neediest(self, candidates: list[str]) -> str | None:
        wanted = [name for name in candidates if self.wants_another(name)]
        if not wanted:
            return None

        def key(name: str) -> tuple:
            stage = self.stages[name]
            if self.count[name] == 0:
                return (1, stage.admin_priority, self.waited(name), self.work[name], name)
            return (0, 0, self.drain(name), self.work[name], name)
        return max(wanted, key=key)

    def assign_free_workers(self) -> None:
        free = [w for w in self.workers.values() if self.is_free(w)]
        # Workers with no stage first, then those on empty stages (ids keep it deterministic).
        free.sort(key=lambda w: (w.queue != "", w.worker_id))
        demanding = self.demanding()
        while free and demanding:
            target = None
            for worker in free:
                excluded = worker.queue if worker.status == zk_paths.CONFIGURATION_FAILED else None
                target = self.neediest([name for name in demanding if name != excluded])
                if target is not None:
                    break
            if target is None:
                break
            reason = "idle worker to unserved stage" if self.count[target] == 0 else "idle worker to loaded stage"
            self.move(worker, target, reason)
            free.remove(worker)
        for worker in free:
            if worker.queue and not self.servable(worker.queue):
                why = "disabled" if worker.queue in self.stages else "unknown"
                self.move(worker, "", f"stage {why}, nothing else to do")

    # rule 0: wake stalled workers -------------------------------------------
    def recently_woken(self, worker: WorkerView) -> bool:
        return worker.worker_id in self.woken

    def wake_stalled_workers(self) -> None:
        """A stalled worker still locked on a stage with work gets its queue node rewritten (same stage):
        that is how an original worker is told to look at its queue again.  (Unlocked stalled workers are
        free and rule 1 assigns them, to their own stage too, which is the same rewrite.)"""
        for worker in list(self.workers.values()):
            if (self.stalled(worker) and self.locked(worker) and self.stages[worker.queue].ready > 0
                    and not self.recently_woken(worker)):
                wake_until = self.now + self.settings.wake_interval
                unlock = max(worker.unlock_time, wake_until)   # a wake never shortens a lock
                self.moves.append(Move(worker.worker_id, worker.queue, worker.queue, unlock,
                                       "wake: idle on a stage with work (its queue node is rewritten)", wake_until))
                self.workers[worker.worker_id] = replace(worker, unlock_time=unlock, status=zk_paths.STARTING)
                self.moved.add(worker.worker_id)

    # rule 2: starving stages -----------------------------------------------
    def busy_workers(self, *, allow_locked: bool) -> list[WorkerView]:
        return [w for w in self.workers.values()
                if w.worker_id not in self.moved and self.serves(w) and not self.is_free(w)
                and not self.is_draining(w)
                and (allow_locked or not self.locked(w))]

    def donor_for(self, target: str, allow_locked: bool) -> WorkerView | None:
        target_priority = self.stages[target].admin_priority
        best = None
        best_key = None
        for worker in self.busy_workers(allow_locked=allow_locked):
            source = worker.queue
            if source == target:
                continue
            remaining = self.count[source] - 1
            if remaining == 0 and self.stages[source].admin_priority > target_priority:
                continue   # never starve a more important stage for a less important one
            key = (remaining == 0,                    # keep every stage served when possible
                   self.drain(source, extra=-1),       # the stage that misses the worker least
                   self.stages[source].admin_priority,
                   worker.unlock_time,                 # longest resident worker first
                   worker.worker_id)
            if best_key is None or key < best_key:
                best, best_key = worker, key
        return best

    def feed_starving(self) -> None:
        starving = [name for name in self.demanding() if self.count[name] == 0]
        starving.sort(key=lambda n: (-self.stages[n].admin_priority, -self.waited(n), n))
        for name in starving:
            if self.count[name] > 0:
                continue
            overdue = self.waited(name) >= self.settings.starvation_timeout
            donor = self.donor_for(name, allow_locked=False)
            if donor is None and overdue:
                donor = self.donor_for(name, allow_locked=True)
            if donor is not None:
                reason = "starving stage" + (" (unlock time overridden)" if self.locked(donor) else "")
                self.move(donor, name, reason)

    # rule 3: rebalancing -----------------------------------------------------
    def best_rebalance(self) -> tuple[float, WorkerView, str] | None:
        best = None
        by_stage: dict[str, WorkerView] = {}
        for worker in self.busy_workers(allow_locked=False):
            current = by_stage.get(worker.queue)
            if current is None or (worker.unlock_time, worker.worker_id) < (current.unlock_time, current.worker_id):
                by_stage[worker.queue] = worker
        for source, worker in sorted(by_stage.items()):
            if self.count[source] < 2:
                continue   # moving the only worker would starve the source; rule 2 handles starving stages
            source_after = self.drain(source, extra=-1)
            for target in self.demanding():
                if target == source or self.count[target] == 0 or (source, target) in self.blocked:
                    continue
                before = max(self.drain(source), self.drain(target))
                after = max(source_after, self.drain_with_newcomer(target))
                gain = before - after
                # The gain must also pay for one more switch: estimates are noisy (stale unacked counts,
                # prefetched requests returning to the queue), and moves for less oscillate.
                margin = max(self.settings.min_gain, self.settings.relative_gain * before,
                             switch_time(self.stages[target], self.settings))
                if gain > margin and (best is None or gain > best[0]):
                    best = (gain, worker, target)
        return best

    def rebalance(self) -> None:
        for _ in range(len(self.workers)):
            best = self.best_rebalance()
            if best is None:
                return
            gain, worker, target = best
            self.move(worker, target, f"rebalance, drain time -{gain:.1f} s")

    # waiting_since -------------------------------------------------------------
    def waiting_updates(self) -> dict[str, float | None]:
        updates: dict[str, float | None] = {}
        for name, stage in sorted(self.stages.items()):
            waiting = stage.ready > 0 and self.count[name] == 0
            if waiting and stage.waiting_since is None:
                updates[name] = self.now
            elif not waiting and stage.waiting_since is not None:
                updates[name] = None
        return updates


def plan(workers: list[WorkerView], stages: dict[str, StageView], now: float,
         settings: PlannerSettings = PlannerSettings(), recent_moves: tuple[Move, ...] = ()) -> Plan:
    """The moves to make now and the waiting_since values to write (see the module docstring).

    `recent_moves` are the moves of earlier rounds (only those still locked matter).
    """
    planner = _Planner(list(workers), dict(stages), now, settings, tuple(recent_moves))
    planner.wake_stalled_workers()
    planner.assign_free_workers()
    planner.feed_starving()
    planner.rebalance()
    return Plan(moves=tuple(planner.moves), waiting_since=planner.waiting_updates())
