"""Per-stage timing statistics shared through ZooKeeper.

`avg_msg_time` (seconds per request) lets the watchdog size stages; `switch_time`
(seconds to take up a stage) lets it weigh moving a worker.  Both are
exponential moving averages written as float.hex().  Updating ZooKeeper for
every message would cost a lock round trip per request and cap throughput, so
timings are accumulated in memory and merged every few seconds by a small
thread that never touches RabbitMQ.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from pero_worker.libs import zk_paths
from pero_worker.libs.zk import KazooException, LockTimeout, ZooKeeper

log = logging.getLogger(__name__)

# Weight of one new request in avg_msg_time: about the last 20 requests matter.
MESSAGE_ALPHA = 0.05
# Weight of one new stage switch in switch_time.
SWITCH_ALPHA = 0.3
FLUSH_INTERVAL = 5.0
FIRST_FLUSH_DELAY = 1.0
LOCK_TIMEOUT = 2.0
# A stage this process has no average for yet gets a local estimate after this many requests, without
# waiting for the first ZooKeeper merge (~1 s): a fresh fast stage otherwise drains at prefetch 4 meanwhile.
EARLY_SAMPLES = 8


def ema(old: float | None, sample_mean: float, count: int = 1, alpha: float = MESSAGE_ALPHA) -> float:
    """Exponential moving average after `count` samples whose mean is `sample_mean`.

    Merging a batch of n samples with weight 1-(1-alpha)^n is what n single
    updates with equal samples would give, so the flush interval does not
    change the result.  A missing or unusable old value is replaced outright.
    """
    if count <= 0:
        raise ValueError("count must be positive")
    if old is None or not math.isfinite(old) or old <= 0:
        return sample_mean
    weight = 1.0 - (1.0 - alpha) ** count
    return old + weight * (sample_mean - old)


def choose_prefetch(avg_msg_time: float | None, minimum: int = 0) -> int:
    """How many unacked requests one worker holds.

    Fast stages need many in flight to hide the publish/confirm round trip;
    slow OCR stages need few, or one worker hoards pages that idle workers
    could take.  Unknown stages start small; the daemon re-subscribes once it
    has measured the stage.  `minimum`: a stage that reads several requests in
    one step (BATCH_PAGES) needs two steps' worth in flight.
    """
    return max(minimum, _prefetch_for(avg_msg_time))


def _prefetch_for(avg_msg_time: float | None) -> int:
    if avg_msg_time is None or not math.isfinite(avg_msg_time) or avg_msg_time <= 0:
        return 4
    if avg_msg_time < 0.02:
        return 64
    if avg_msg_time < 0.1:
        return 32
    if avg_msg_time < 0.5:
        return 8
    if avg_msg_time < 2.0:
        return 4
    return 2


def early_estimate(samples: list[float]) -> float | None:
    """Seconds per request from a stage's first requests (pure): their median once there are EARLY_SAMPLES
    (robust to the slow first request of a stage), else None."""
    if len(samples) < EARLY_SAMPLES:
        return None
    ordered = sorted(samples[:EARLY_SAMPLES])
    middle = len(ordered) // 2
    return (ordered[middle - 1] + ordered[middle]) / 2 if len(ordered) % 2 == 0 else ordered[middle]


def prefetch_should_change(current: int, avg_msg_time: float | None, minimum: int = 0) -> bool:
    """Worth a re-subscribe only for a big difference (it costs a drain of the in-flight work)."""
    wanted = choose_prefetch(avg_msg_time, minimum)
    return wanted >= current * 4 or wanted * 4 <= current


def merge_into_zookeeper(zk: ZooKeeper, path: str, lock_path: str, sample_mean: float, count: int,
                         alpha: float, identifier: str = "") -> float:
    """Read-modify-write one average under the shared lock; returns the value written."""
    with zk.lock(lock_path, identifier, timeout=LOCK_TIMEOUT):
        old_raw = zk.get(path)
        old = zk_paths.decode_float(old_raw, default=math.nan) if old_raw else None
        new = ema(old, sample_mean, count, alpha)
        zk.set(path, zk_paths.encode_float(new))
    return new


def record_switch_time(zk: ZooKeeper, stage: str, seconds: float, identifier: str = "") -> float:
    return merge_into_zookeeper(zk, zk_paths.stage_switch_time(stage), zk_paths.stage_avg_msg_time_lock(stage),
                                seconds, 1, SWITCH_ALPHA, identifier)


class StatsReporter:
    """Accumulates per-stage request timings (any thread) and merges them into ZooKeeper periodically."""

    def __init__(self, zk: ZooKeeper, identifier: str, *, interval: float = FLUSH_INTERVAL,
                 on_average: Callable[[str, float], None] | None = None) -> None:
        self._zk = zk
        self._identifier = identifier
        self._interval = interval
        self._on_average = on_average
        self._lock = threading.Lock()
        self._sums: dict[str, tuple[float, int]] = {}
        # Stages not merged yet: their first average is written after FIRST_FLUSH_DELAY, not a full interval,
        # so a new stage's prefetch adapts quickly.
        self._known: set[str] = set()
        self._first_sample: dict[str, float] = {}
        self._early: dict[str, list[float]] = {}   # first samples of stages without an estimate yet
        self._estimated: set[str] = set()
        self._stop = threading.Event()
        self._flush_now = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self, stage: str, seconds: float) -> None:
        estimate = None
        with self._lock:
            total, count = self._sums.get(stage, (0.0, 0))
            self._sums[stage] = (total + seconds, count + 1)
            if stage not in self._known and stage not in self._first_sample:
                self._first_sample[stage] = time.monotonic()
            if stage not in self._estimated and stage not in self._known:
                samples = self._early.setdefault(stage, [])
                samples.append(seconds)
                estimate = early_estimate(samples)
                if estimate is not None:
                    self._estimated.add(stage)
                    del self._early[stage]
        if estimate is not None and self._on_average is not None:
            log.debug("stage %s: first %d requests took %.4f s each (median)", stage, EARLY_SAMPLES, estimate)
            self._on_average(stage, estimate)

    def flush_soon(self) -> None:
        self._flush_now.set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._flush_now.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def flush(self) -> None:
        with self._lock:
            sums, self._sums = self._sums, {}
            self._known.update(sums)
            self._first_sample.clear()
        for stage, (total, count) in sums.items():
            try:
                average = merge_into_zookeeper(
                    self._zk, zk_paths.stage_avg_msg_time(stage), zk_paths.stage_avg_msg_time_lock(stage),
                    total / count, count, MESSAGE_ALPHA, self._identifier)
            except (KazooException, LockTimeout) as error:
                log.warning("could not update avg_msg_time of stage %s: %s", stage, error or type(error).__name__)
                continue
            except ValueError as error:   # a stage name that is not a valid node name
                log.warning("not recording timings of stage %r: %s", stage, error)
                continue
            log.debug("stage %s: %d requests, %.4f s each; avg_msg_time now %.4f s",
                      stage, count, total / count, average)
            if self._on_average is not None:
                self._on_average(stage, average)

    def _due(self, last_flush: float) -> bool:
        now = time.monotonic()
        if now - last_flush >= self._interval:
            return True
        with self._lock:
            return any(now - first >= FIRST_FLUSH_DELAY for first in self._first_sample.values())

    def _run(self) -> None:
        last_flush = time.monotonic()
        while not self._stop.is_set():
            if self._flush_now.wait(0.25):
                self._flush_now.clear()
            elif not self._due(last_flush):
                continue
            last_flush = time.monotonic()
            self.flush()
        self.flush()
