"""Gathering the watchdog's view of the system (ZooKeeper + RabbitMQ) and applying its plan.

Queue depths come from two places because each has a blind spot:
- AMQP passive declares (`MQSession.queue_length`): ready counts right now, one round
  trip per stage; this is what lets idle workers be assigned within a second.
- the management HTTP API: unacknowledged counts, consumers and rates, but lagging by
  RabbitMQ's stats interval (~5 s); refreshed every `management_interval` seconds.
When one side is down the other one is used alone; with neither the round is skipped
(moving workers blind does more harm than waiting).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pero_worker.libs import zk_paths
from pero_worker.libs.backoff import Backoff
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.mq import MQConnectionError, MQError, MQSession, MQSettings
from pero_worker.libs.mq_management import ManagementClient, ManagementError, QueueStats
from pero_worker.libs.stages import classify_stage_config
from pero_worker.libs.zk import NodeReader, ZooKeeper
from pero_worker.watchdog.planning import Plan, StageView, WorkerView

log = logging.getLogger(__name__)


# --- ISO-8601 times (the ZooKeeper encoding of unlock_time and waiting_since) ----------

def parse_iso(text: str) -> float | None:
    """Epoch seconds of an ISO-8601 time; naive times are taken as UTC; None for ''/garbage."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def format_iso(epoch: float) -> str:
    """The form the original watchdog wrote: aware UTC datetime.isoformat()."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


# --- what was read ------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerRecord:
    view: WorkerView
    unlock_text: str = ""        # as stored, for display
    connected_since: float | None = None   # epoch s the `connected` node was made (the worker's uptime)


@dataclass(frozen=True)
class StageRecord:
    view: StageView
    consumers: int | None = None      # from the management API (None = unknown)
    publish_rate: float | None = None
    deliver_rate: float | None = None
    queue_exists: bool = True


@dataclass
class Snapshot:
    time: float
    workers: list[WorkerRecord] = field(default_factory=list)
    stages: dict[str, StageRecord] = field(default_factory=dict)
    depth_source: str = ""              # 'amqp+management', 'amqp', 'management' or '' (no depths)
    other_stages: dict[str, str] = field(default_factory=dict)   # never served: stage -> why (output stage ...)

    @property
    def worker_views(self) -> list[WorkerView]:
        return [record.view for record in self.workers]

    @property
    def stage_views(self) -> dict[str, StageView]:
        return {name: record.view for name, record in self.stages.items()}


def read_workers(zk: NodeReader) -> list[WorkerRecord]:
    """Every registered worker's nodes, read pipelined (one round trip's time for all, not five per worker)."""
    ids = []
    for worker_id in zk.children(zk_paths.WORKER_STATUS_ROOT):
        try:
            zk_paths.worker_status(worker_id)
        except ValueError:
            continue
        ids.append(worker_id)
    values = iter(zk.get_many([path for worker_id in ids for path in (
        zk_paths.worker_status(worker_id), zk_paths.worker_queue(worker_id), zk_paths.worker_enabled(worker_id),
        zk_paths.worker_unlock_time(worker_id))]))
    since = zk.created_many([zk_paths.worker_connected(worker_id) for worker_id in ids])
    records = []
    for worker_id, connected_since in zip(ids, since):
        status, queue, enabled, unlock_text = (_text(next(values)) for _ in range(4))
        records.append(WorkerRecord(
            WorkerView(worker_id, queue, status, (enabled or "true").lower() != "false", connected_since is not None,
                       parse_iso(unlock_text) or 0.0), unlock_text, connected_since))
    return records


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace").strip() if raw is not None else ""


def _optional_float(raw: bytes | None) -> float | None:
    if not raw:
        return None
    value = zk_paths.decode_float(raw, default=-1.0)
    return value if value >= 0 else None


def read_stage_nodes(zk: NodeReader) -> tuple[dict[str, StageView], dict[str, str]]:
    """(processing stages, other stages -> why they never get a worker).

    Every child of /pero/queue is a stage, but only one whose config names a processor
    (libs/stages.py) can be served: the output stage (empty config with our tool, no node
    with the original's) must never receive a worker.  The nodes are read pipelined.
    """
    names = []
    for name in zk.children(zk_paths.QUEUE_ROOT):
        try:
            zk_paths.stage_config(name)
        except ValueError:
            continue
        names.append(name)
    values = iter(zk.get_many([path for name in names for path in (
        zk_paths.stage_config(name), zk_paths.stage_admin_priority(name), zk_paths.stage_avg_msg_time(name),
        zk_paths.stage_switch_time(name), zk_paths.stage_waiting_since(name))]))
    stages: dict[str, StageView] = {}
    others: dict[str, str] = {}
    for name in names:
        config, priority_raw, avg_raw, switch_raw, waiting_raw = (next(values) for _ in range(5))
        kind = classify_stage_config(config)
        if not kind.processing:
            others[name] = kind.reason
            continue
        try:
            priority = zk_paths.decode_priority(priority_raw)
        except (TypeError, ValueError):
            priority = 0
        stages[name] = StageView(name=name, avg_msg_time=_optional_float(avg_raw),
                                 switch_time=_optional_float(switch_raw), admin_priority=priority,
                                 waiting_since=parse_iso(_text(waiting_raw)))
    return stages, others


class StateReader:
    """Keeps the connections the watchdog reads through and builds snapshots."""

    def __init__(self, zk: NodeReader, conn: ConnectionConfig, *, management_interval: float = 5.0,
                 vhost: str = "pero") -> None:
        self.zk = zk
        self.conn = conn
        self.vhost = vhost
        self.management_interval = management_interval
        self._session: MQSession | None = None
        self._management: ManagementClient | None = None
        self._management_stats: dict[str, QueueStats] | None = None
        self._management_read_at = -1e18
        self._mq_retry_at = 0.0
        self._mq_backoff = Backoff(initial=0.5, cap=2.0)
        self._warned: set[str] = set()
        # stage -> epoch time its queue was first seen empty (-inf: empty since before we looked)
        self._empty_since: dict[str, float] = {}
        self._seen: set[str] = set()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._management is not None:
            self._management.close()
            self._management = None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    def _recovered(self, key: str, message: str) -> None:
        if key in self._warned:
            self._warned.discard(key)
            log.info("%s", message)

    # AMQP side -------------------------------------------------------------------
    def _amqp_depths(self, names: list[str]) -> dict[str, int | None] | None:
        now = time.monotonic()
        if self._session is None or not self._session.is_open:
            if now < self._mq_retry_at:
                return None
            try:
                session = MQSession(MQSettings.from_zookeeper(self.zk, self.conn), name="pero-watchdog")
                session.open(retry_for=0)
            except MQError as error:
                self._mq_retry_at = now + self._mq_backoff.delay()
                self._warn_once("amqp", f"queue depths over AMQP unavailable ({error}); using the management API")
                return None
            self._mq_backoff.reset()
            self._session = session
        try:
            depths = {name: self._session.queue_length(name) for name in names}
        except MQConnectionError as error:
            self._session.close()
            self._session = None
            self._warn_once("amqp", f"queue depths over AMQP unavailable ({error}); using the management API")
            return None
        except MQError as error:
            self._warn_once("amqp-queue", f"queue depth read failed: {error}")
            return None
        self._recovered("amqp", "RabbitMQ connection restored: queue depths over AMQP available again")
        return depths

    # management side ---------------------------------------------------------------
    def _management_depths(self, force: bool = False) -> dict[str, QueueStats] | None:
        now = time.monotonic()
        if not force and now - self._management_read_at < self.management_interval:
            return self._management_stats
        self._management_read_at = now
        try:
            if self._management is None:
                self._management = ManagementClient.from_zookeeper(self.zk, self.conn)
            stats = {q.name: q for q in self._management.queues(self.vhost)}
        except ManagementError as error:
            if self._management is not None:
                self._management.close()
            self._management = None   # re-read the server list next time
            self._management_stats = None
            self._warn_once("management", f"management API unavailable: {error}")
            return None
        self._recovered("management", "management API available again")
        self._management_stats = stats
        return stats

    def snapshot(self, now: float, *, fresh_management: bool = False) -> Snapshot:
        stage_nodes, other_stages = read_stage_nodes(self.zk)
        workers = read_workers(self.zk)
        names = sorted(stage_nodes)
        amqp = self._amqp_depths(names) if names else {}
        management = self._management_depths(force=fresh_management)
        snapshot = Snapshot(time=now, workers=workers, other_stages=other_stages)
        sources = [label for label, present in (("amqp", amqp is not None), ("management", management is not None))
                   if present]
        snapshot.depth_source = "+".join(sources)
        for name, view in stage_nodes.items():
            stats = management.get(name) if management is not None else None
            if amqp is not None:
                ready = amqp.get(name)
                exists = ready is not None
                ready = ready or 0
            elif stats is not None:
                ready, exists = stats.messages_ready, True
            else:
                ready, exists = 0, False
            unacked = stats.messages_unacknowledged if stats is not None else 0
            if ready > 0:
                self._empty_since.pop(name, None)
                empty_for = 0.0
            else:
                since = self._empty_since.setdefault(name, now if self._seen_before(name) else -math.inf)
                empty_for = now - since
            snapshot.stages[name] = StageRecord(
                view=StageView(name, ready, unacked, view.avg_msg_time, view.switch_time, view.admin_priority,
                               view.waiting_since, empty_for),
                consumers=stats.consumers if stats is not None else None,
                publish_rate=stats.publish_rate if stats is not None else None,
                deliver_rate=stats.deliver_rate if stats is not None else None,
                queue_exists=exists,
            )
        self._seen.update(stage_nodes)
        return snapshot

    def _seen_before(self, name: str) -> bool:
        return name in self._seen


def apply_plan(zk: ZooKeeper, plan: Plan, now: float) -> None:
    """Write the moves (unlock time first, then queue, as the original did) and waiting_since changes.

    A worker whose record was removed meanwhile (worker_controller -r) is not recreated.
    """
    for move in plan.moves:
        if not zk.exists(zk_paths.worker_root(move.worker_id)):
            log.warning("worker %s disappeared before it could be moved", move.worker_id)
            continue
        zk.set_text(zk_paths.worker_unlock_time(move.worker_id),
                    format_iso(move.unlock_time or now))   # always a parseable time
        zk.set_text(zk_paths.worker_queue(move.worker_id), move.to_queue)
        log.info("worker %s: %s -> %s (%s)", move.worker_id, move.from_queue or "''", move.to_queue or "''",
                 move.reason)
    for stage, since in plan.waiting_since.items():
        if not zk.exists(zk_paths.stage_root(stage)):
            continue
        zk.set_text(zk_paths.stage_waiting_since(stage), format_iso(since) if since is not None else "")
