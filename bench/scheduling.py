#!/usr/bin/env python3
"""Scheduling quality of the watchdog: a fixed mixed workload arriving in waves.

Real services (`make services`), real worker processes and one real watchdog process.
Three DUMMY stages take a fixed 0.05 s, 0.2 s and 0.5 s per request (TIME_SCALE 0,
TIME_DIFF_MIN = TIME_DIFF_MAX) and every stage set-up costs 2 s (`SWITCH_DELAY = 2`,
standing in for a model load), so each move of a worker has a real price.  Four workers
start idle; the waves below are published at their times (later waves arrive while
earlier ones are still queued, so a perfect scheduler never idles).

Figures, printed last as `RESULT <name> <value> <unit>`:
  makespan             first publish -> last request finished (StageLog end)
  lower_bound          total work / workers (ignores switching and arrivals)
  efficiency           lower_bound / makespan (target >= 0.85)
  switches             worker moves onto a stage (the 4 initial assignments included)
  idle_assign_latency  first publish -> the last of the 4 idle workers assigned
  starving_latency     worst wait of a stage that had work and no worker (new stage in a wave,
                       every worker busy elsewhere) until a worker was assigned to it

A switch is counted from the workers' `queue` nodes, polled every 20 ms.  Stages are created
with `scripts/stage_config_manager.py` exactly as the README deployment does (the output stage
with `--name out`) and results wait in the output queue until every request is done (as
they do until the downloader fetches them), so the bench measures what a deployment gets.  Only requests whose stage
logs are all OK count; if any request failed the bench says so, prints no RESULT lines and
exits 1.

Run: `.venv/bin/python bench/scheduling.py [--scale 0.5] [--policy original] [--keep]`
(about 90 s; needs the local services, started on demand like the tests do).

`--policy original` replaces the watchdog process by an in-process re-implementation of
the original system's rule, for comparison: every 10 s, from management-API counts,
priority = messages * avg_msg_time / (workers + 1) + waiting_time * (admin_priority + 1);
workers not PROCESSING go to the top queue, otherwise one unlocked worker moves from the
least to the most important queue; a moved worker is locked for 10 * avg_msg_time + 10 s.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pero_worker.dev.local_services import ensure_services, write_server_lists
from pero_worker.dev.opsplane import (
    Process,
    dummy_stage_config,
    make_stage,
    request_body,
    start_watchdog,
    start_worker,
    wait_for,
    worker_connected,
)
from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import Address
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.mq import Delivery, MQSession, MQSettings
from pero_worker.libs.zk import ZooKeeper
from pero_worker.watchdog.planning import Move, Plan
from pero_worker.watchdog.state import Snapshot, StateReader, apply_plan

REPO = Path(__file__).resolve().parents[1]

STAGE_TIMES = {"fast": 0.05, "mid": 0.2, "slow": 0.5}
SWITCH_DELAY = 2.0
WORKERS = 4
# (arrival s, stage, requests): 210 s of work in four waves.
WAVES = [
    (0.0, "fast", 800), (0.0, "mid", 100),
    (8.0, "slow", 80), (8.0, "fast", 200),
    (16.0, "mid", 150), (16.0, "slow", 40),
    (24.0, "fast", 400), (24.0, "mid", 50), (24.0, "slow", 40),
]


@dataclass
class Assignment:
    at: float          # monotonic
    worker: str
    stage: str


class QueueWatcher(threading.Thread):
    """Polls the workers' queue nodes and records every change (with its monotonic time)."""

    def __init__(self, zk: ZooKeeper, workers: list[str], interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.zk, self.workers, self.interval = zk, workers, interval
        self.current = {w: "" for w in workers}
        self.changes: list[Assignment] = []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop_event.is_set():
            for worker in self.workers:
                try:
                    stage = self.zk.get_text(zk_paths.worker_queue(worker))
                except Exception:   # ZooKeeper closed at the end of the run
                    return
                if stage != self.current[worker]:
                    with self.lock:
                        self.current[worker] = stage
                        self.changes.append(Assignment(time.monotonic(), worker, stage))
            self.stop_event.wait(self.interval)

    def serving(self, stage: str) -> bool:
        with self.lock:
            return stage in self.current.values()


def original_policy(snapshot: Snapshot, now: float) -> Plan:
    """The original watchdog's decision rule (see the module docstring), for the baseline run."""
    workers = [r.view for r in snapshot.workers if r.view.connected and r.view.enabled
               and r.view.status in (zk_paths.PROCESSING, zk_paths.IDLE)]
    stages = {name: r.view for name, r in snapshot.stages.items()}
    queue_of = {w.worker_id: w.queue for w in workers}
    unlock_of = {w.worker_id: w.unlock_time for w in workers}
    moves: list[Move] = []

    def priorities() -> list[str]:
        scores = {}
        for name, stage in stages.items():
            n = sum(1 for q in queue_of.values() if q == name)
            waiting = now - stage.waiting_since if stage.waiting_since is not None and n == 0 else 0.0
            scores[name] = ((stage.ready + stage.unacked) * (stage.avg_msg_time or 100.0) / (n + 1)
                            + waiting * (stage.admin_priority + 1))
        return sorted(scores, key=lambda name: scores[name], reverse=True) if any(scores.values()) else []

    def switch(worker_id: str, stage: str) -> None:
        unlock = now + (stages[stage].avg_msg_time or 100.0) * 10 + 10
        moves.append(Move(worker_id, queue_of[worker_id], stage, unlock, "original rule"))
        queue_of[worker_id], unlock_of[worker_id] = stage, unlock

    order = priorities()
    if not order:
        return Plan()
    # Our workers report PROCESSING whenever they consume; count a worker on an empty queue as free too
    # (the charitable reading: without it the original rule never frees anybody here).
    free = [w.worker_id for w in workers if w.status != zk_paths.PROCESSING
            or w.queue not in stages or stages[w.queue].ready + stages[w.queue].unacked == 0]
    if free:
        for worker_id in free:
            switch(worker_id, priorities()[0])
    else:
        for stage in reversed(order):
            candidates = [w for w, q in queue_of.items() if q == stage and unlock_of[w] <= now]
            if candidates:
                switch(candidates[0], order[0])
                break
    waiting = {}
    for name, stage in stages.items():
        served = any(q == name for q in queue_of.values())
        if stage.ready > 0 and not served and stage.waiting_since is None:
            waiting[name] = now
        elif served and stage.waiting_since is not None:
            waiting[name] = None
    return Plan(tuple(moves), waiting)


class OriginalWatchdog(threading.Thread):
    def __init__(self, zk: ZooKeeper, conn: ConnectionConfig, interval: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.zk, self.conn, self.interval = zk, conn, interval
        self.stop_event = threading.Event()

    def run(self) -> None:
        reader = StateReader(self.zk, self.conn, management_interval=0.0)
        reader._amqp_depths = lambda names: None   # the original read the management API only
        try:
            while not self.stop_event.is_set():
                now = time.time()
                snapshot = reader.snapshot(now)
                if snapshot.depth_source:
                    apply_plan(self.zk, original_policy(snapshot, now), now)
                self.stop_event.wait(self.interval)
        finally:
            reader.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every wave's request count")
    parser.add_argument("--keep", action="store_true", help="keep the logs folder (printed)")
    parser.add_argument("--policy", choices=("watchdog", "original"), default="watchdog",
                        help="who assigns workers: our watchdog process (default) or the original rule, in-process")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    args = parser.parse_args(argv)

    services = ensure_services()
    chroot = f"/bench_sched_{uuid.uuid4().hex[:8]}"
    root_conn = ConnectionConfig(zookeeper_servers=(Address(services.zk_host, services.zk_port),))
    admin = ZooKeeper(root_conn).start()
    admin.ensure_path(chroot)
    conn = ConnectionConfig(zookeeper_servers=root_conn.zookeeper_servers, zookeeper_chroot=chroot)
    zk = ZooKeeper(conn).start()
    write_server_lists(zk, services)
    zk_root = f"{services.zk_address}{chroot}"
    folder = Path(f"/tmp/{chroot.strip('/')}")
    folder.mkdir(parents=True, exist_ok=True)

    mq = MQSession(MQSettings.from_zookeeper(zk, conn), name="bench-scheduling")
    mq.open(retry_for=10)
    suffix = uuid.uuid4().hex[:6]
    stages = {kind: f"sched_{kind}_{suffix}" for kind in STAGE_TIMES}
    out = f"sched_out_{suffix}"
    processes: list[Process] = []
    threads: list[threading.Thread] = []
    try:
        for kind, name in stages.items():
            make_stage(zk_root, name, dummy_stage_config(STAGE_TIMES[kind], SWITCH_DELAY))
        make_stage(zk_root, out, None)
        waves = [(at, kind, max(1, round(count * args.scale))) for at, kind, count in WAVES]
        total_work = sum(count * STAGE_TIMES[kind] for _at, kind, count in waves)
        total_requests = sum(count for _at, _kind, count in waves)

        workers = [f"bench_w{i}_{suffix}" for i in range(WORKERS)]
        for worker in workers:
            processes.append(start_worker(zk_root, worker, folder))
        for worker in workers:
            wait_for(lambda w=worker: worker_connected(zk, w)
                     and zk.get_text(zk_paths.worker_status(w)) == zk_paths.IDLE, 60, f"worker {worker} idle")
        baseline = None
        if args.policy == "watchdog":
            watchdog = start_watchdog(zk_root, folder, "bench")
            processes.append(watchdog)
            wait_for(lambda: "is now ACTIVE" in watchdog.log(), 30, "the watchdog active")
        else:
            baseline = OriginalWatchdog(zk, conn)
            baseline.start()
            threads.append(baseline)
        watcher = QueueWatcher(zk, workers)
        watcher.start()
        threads.append(watcher)

        ends: dict[str, float] = {}        # uuid -> end of its last stage, requests whose stage logs are all OK
        failures: dict[str, str] = {}      # uuid -> what failed (stage: status), never counted as done

        def on_output(delivery: Delivery) -> None:
            request = ProcessingRequest.FromString(delivery.body)
            if request.uuid not in ends and request.uuid not in failures:
                bad = [f"{entry.stage}: {entry.status}" for entry in request.logs if entry.status != "OK"]
                if bad or not request.logs:
                    failures[request.uuid] = ", ".join(bad) or "no stage log"
                else:
                    ends[request.uuid] = request.logs[-1].end.ToNanoseconds() / 1e9
            mq.ack(delivery.delivery_tag)

        print(f"workload: {total_requests} requests, {total_work:.0f} s of work, {WORKERS} workers, "
              f"switch cost {SWITCH_DELAY:.0f} s", file=sys.stderr)
        t0_wall = time.time()
        t0 = time.monotonic()
        starving_probes: list[tuple[str, float]] = []
        pending = sorted(waves)
        # Results wait in the output queue, as they do in a deployment until the downloader fetches them;
        # the queue is only drained once every request has arrived (or at the end of the time allowed).
        while pending or (mq.queue_length(out) or 0) < total_requests:
            now = time.monotonic() - t0
            while pending and pending[0][0] <= now:
                _at, kind, count = pending.pop(0)
                stage = stages[kind]
                if not watcher.serving(stage):
                    starving_probes.append((stage, time.monotonic()))
                for _ in range(count):
                    mq.publish(stage, request_body([stage, out]))
                mq.wait_for_confirms(timeout=60)
                print(f"t={now:5.1f} s: {count} requests -> {kind}", file=sys.stderr)
            mq.pump(0.1)
            if now > args.timeout:
                break
        mq.consume(out, on_output, prefetch=500)
        drain_until = time.monotonic() + 30
        while len(ends) + len(failures) < total_requests and time.monotonic() < drain_until:
            mq.pump(0.1)
        if len(ends) + len(failures) < total_requests:
            print(f"bench failed: workload not finished after {args.timeout:.0f} s ({len(ends)} OK, "
                  f"{len(failures)} failed of {total_requests})", file=sys.stderr)
            return 1
        watcher.stop_event.set()
        watcher.join()
        if baseline is not None:
            baseline.stop_event.set()
            baseline.join()

        makespan = (max(ends.values()) - t0_wall) if ends else float("inf")
        lower_bound = total_work / WORKERS
        changes = watcher.changes
        switches = sum(1 for change in changes if change.stage)
        first_assignment = {}
        for change in changes:
            if change.stage and change.worker not in first_assignment:
                first_assignment[change.worker] = change.at - t0
        idle_latency = max(first_assignment.values()) if len(first_assignment) == WORKERS else float("inf")
        starving = []
        for stage, published in starving_probes:
            served = [c.at for c in changes if c.stage == stage and c.at >= published - 0.5]
            starving.append((min(served) - published) if served else float("inf"))
        per_worker = {w: sum(1 for c in changes if c.worker == w and c.stage) for w in workers}
        print(f"done: {len(ends)} requests OK, {len(failures)} failed; switches per worker {per_worker}; "
              f"starving probes {[round(s, 2) for s in starving]}", file=sys.stderr)
        results = [("makespan", f"{makespan:.1f}", "s"), ("lower_bound", f"{lower_bound:.1f}", "s"),
                   ("efficiency", f"{lower_bound / makespan:.3f}", "ratio"), ("switches", str(switches), "count"),
                   ("idle_assign_latency", f"{idle_latency:.2f}", "s"),
                   ("starving_latency", f"{max(starving) if starving else 0.0:.2f}", "s")]
        if failures:
            example = next(iter(failures.items()))
            print(f"bench failed: {len(failures)} of {total_requests} requests have a failed stage log "
                  f"(e.g. {example[0]}: {example[1]}); no RESULT lines. Figures of the OK requests only: "
                  + ", ".join(f"{name} {value} {unit}" for name, value, unit in results), file=sys.stderr)
            return 1
        for name, value, unit in results:
            print(f"RESULT {name} {value} {unit}")
        return 0
    finally:
        for thread in threads:
            thread.stop_event.set()
            thread.join()
        for process in reversed(processes):
            process.stop()
        for name in list(stages.values()) + [out]:
            try:
                if not mq.is_open:
                    mq.open(retry_for=5)
                mq.delete_queue(name)
            except Exception as error:  # cleanup must not hide the result
                print(f"cleanup: cannot delete queue {name}: {error}", file=sys.stderr)
        mq.close()
        zk.stop()
        admin.delete(chroot, recursive=True)
        admin.stop()
        if args.keep:
            print(f"logs kept in {folder}", file=sys.stderr)
        else:
            import shutil
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
