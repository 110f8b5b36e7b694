"""The worker's Prometheus metrics (served by libs/metrics.py).

Kept off the cost of the request path: an update is an in-memory counter or
histogram bucket (a lock and an add, about a microsecond); the per-stage label
children are looked up once per stage and kept (`StageMetrics`), and nothing
here does I/O -- Prometheus reads the values when it scrapes.

Names (docs and the Grafana dashboard in sample-config/grafana/ use these):
  pero_worker_requests_processed_total{stage}          every request the worker finished (whatever the result)
  pero_worker_requests_failed_total{stage,reason}      of those, the ones that did not succeed:
      failed (the processor rejected the input), error (the processor crashed),
      dead_letter (unusable request: sent to the dead-letter queue), too_large (result over the broker's limit)
  pero_worker_processing_seconds{stage}                histogram of the processing time of successful requests
  pero_worker_model_download_seconds{stage}            summary (_count, _sum) of model archive downloads (SFTP)
  pero_worker_model_unpack_seconds{stage}              summary of model verification + unpacking
  pero_worker_stage_setup_seconds{stage}               summary of taking up a stage (config, model, processor)
  pero_worker_stage_switches_total{stage}              stages taken up (the label is the stage switched to)
  pero_worker_status{pero_worker_status=...}           the status the worker reports to ZooKeeper (1 for the current)
  pero_worker_info{worker_id}                          the worker's id
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Enum, Histogram, Info, Summary
from prometheus_client.process_collector import ProcessCollector

from pero_worker.libs import zk_paths

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)     # process_cpu_seconds_total, process_resident_memory_bytes, ...

# From a millisecond (DUMMY stages, layout post-processing) to minutes (OCR of a big page on a CPU).
# Few buckets on purpose: each is a line per stage in every scrape (50 stages: README, "Metrics").  Stage
# set-ups and model fetches are rare: a summary (count and sum: the mean) is enough and costs two lines a stage.
PROCESSING_BUCKETS = (0.001, 0.005, 0.02, 0.1, 0.5, 2.0, 10.0, 60.0, 300.0)
STATUSES = [zk_paths.STARTING, zk_paths.CONNECTING, zk_paths.IDLE, zk_paths.CONFIGURING, zk_paths.PROCESSING,
            zk_paths.PROCESSING_FAILED, zk_paths.CONFIGURATION_FAILED, zk_paths.MQ_CONNECTION_FAILED,
            zk_paths.ZK_CONNECTION_FAILED, zk_paths.DEAD]
FAILURE_REASONS = ("failed", "error", "dead_letter", "too_large")

PROCESSED = Counter("pero_worker_requests_processed", "Requests the worker finished, whatever the result",
                    ["stage"], registry=REGISTRY)
FAILED = Counter("pero_worker_requests_failed", "Requests that did not succeed, by reason", ["stage", "reason"],
                 registry=REGISTRY)
PROCESSING_SECONDS = Histogram("pero_worker_processing_seconds", "Processing time of successful requests",
                               ["stage"], buckets=PROCESSING_BUCKETS, registry=REGISTRY)
MODEL_DOWNLOAD_SECONDS = Summary("pero_worker_model_download_seconds", "Model archive download time (SFTP)",
                                 ["stage"], registry=REGISTRY)
MODEL_UNPACK_SECONDS = Summary("pero_worker_model_unpack_seconds", "Model archive verification and unpack time",
                               ["stage"], registry=REGISTRY)
STAGE_SETUP_SECONDS = Summary("pero_worker_stage_setup_seconds", "Time to take up a stage (config, model, processor)",
                              ["stage"], registry=REGISTRY)
STAGE_SWITCHES = Counter("pero_worker_stage_switches", "Stages taken up, by the stage switched to", ["stage"],
                         registry=REGISTRY)
STATUS = Enum("pero_worker_status", "The status the worker reports in ZooKeeper", states=STATUSES,
              registry=REGISTRY)
INFO = Info("pero_worker", "The worker's identity", registry=REGISTRY)


@dataclass(frozen=True)
class StageMetrics:
    """The label children of one stage, bound once: the request path only calls inc()/observe().

    A failure reason's series appears with its first failure (four zero lines per stage in every scrape
    would buy nothing: rate() and increase() treat a new series as starting from zero)."""
    stage: str
    processed: Counter
    processing_seconds: Histogram
    failed: dict[str, Counter] = field(default_factory=dict)

    def failure(self, reason: str) -> Counter:
        child = self.failed.get(reason)
        if child is None:
            child = self.failed[reason] = FAILED.labels(self.stage, reason)
        return child


_stages: dict[str, StageMetrics] = {}
_stages_lock = threading.Lock()


def for_stage(stage: str) -> StageMetrics:
    """The metrics of `stage` (made on first use; any thread)."""
    found = _stages.get(stage)
    if found is not None:
        return found
    with _stages_lock:
        found = _stages.get(stage)
        if found is None:
            found = StageMetrics(stage, PROCESSED.labels(stage), PROCESSING_SECONDS.labels(stage))
            _stages[stage] = found
    return found


class _Switch:
    enabled = True


def disable() -> None:
    """Metrics off (--metrics-address off): the request path records nothing at all."""
    _Switch.enabled = False


def request_done(stage: str, seconds: float, failure: str | None) -> None:
    """One finished request: failure None (success, timed), or one of FAILURE_REASONS."""
    if not _Switch.enabled:
        return
    metrics = for_stage(stage)
    metrics.processed.inc()
    if failure is None:
        metrics.processing_seconds.observe(seconds)
    else:
        metrics.failure(failure).inc()


def result_too_large(stage: str) -> None:
    """A result that was over the broker's limit (already counted as processed): now a failure."""
    for_stage(stage).failure("too_large").inc()


def stage_taken_up(stage: str, seconds: float) -> None:
    STAGE_SWITCHES.labels(stage).inc()
    STAGE_SETUP_SECONDS.labels(stage).observe(seconds)


def model_fetched(stage: str, download_seconds: float, unpack_seconds: float) -> None:
    MODEL_DOWNLOAD_SECONDS.labels(stage).observe(download_seconds)
    MODEL_UNPACK_SECONDS.labels(stage).observe(unpack_seconds)


def set_status(status: str) -> None:
    if status in STATUSES:
        STATUS.state(status)


def set_identity(worker_id: str) -> None:
    INFO.info({"worker_id": worker_id})
