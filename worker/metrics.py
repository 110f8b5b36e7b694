"""The worker's Prometheus metrics (served by libs/metrics.py).

Kept off the cost of the request path.  A finished request only adds to plain
numbers of its stage's `StageTally` (about half a microsecond: no locks, no
label lookups; prometheus_client's own Counter and Histogram cost ~5 us per
request here); the collector turns them into metric families when Prometheus
scrapes.  Each tally field has one writer thread (the processing thread; the
main thread only for `too_large`), so a scrape reads values at most one request
old.  Nothing here does I/O.

Names (docs and the Grafana dashboard in sample-config/grafana/ use these):
  pero_worker_requests_processed_total{stage}          every request the worker finished (whatever the result)
  pero_worker_requests_failed_total{stage,reason}      of those, the ones that did not succeed:
      failed (the processor rejected the input), error (the processor crashed),
      dead_letter (unusable request: sent to the dead-letter queue), too_large (result over the broker's limit);
      a reason's series appears with its first failure
  pero_worker_processing_seconds{stage}                histogram of the processing time of successful requests
  pero_worker_model_download_seconds{stage}            summary (_count, _sum) of model archive downloads (SFTP)
  pero_worker_model_unpack_seconds{stage}              summary of model verification + unpacking
  pero_worker_stage_setup_seconds{stage}               summary of taking up a stage (config, model, processor)
  pero_worker_stage_switches_total{stage}              stages taken up (the label is the stage switched to)
  pero_worker_status{pero_worker_status=...}           the status the worker reports to ZooKeeper (1 for the current)
  pero_worker_info{worker_id}                          the worker's id
"""
from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Enum, Info, Summary
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

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
_BUCKET_LABELS = [str(bound) for bound in PROCESSING_BUCKETS] + ["+Inf"]


class StageTally:
    """Plain numbers of one stage's requests; see the module docstring for who writes what."""
    __slots__ = ("processed", "failures", "too_large", "buckets", "seconds")

    def __init__(self) -> None:
        self.processed = 0
        self.failures: dict[str, int] = {}
        self.too_large = 0
        self.buckets = [0] * (len(PROCESSING_BUCKETS) + 1)   # not cumulative; the last one is +Inf
        self.seconds = 0.0


class _Switch:
    enabled = True


_tallies: dict[str, StageTally] = {}
_tallies_lock = threading.Lock()


def _tally(stage: str) -> StageTally:
    found = _tallies.get(stage)
    if found is None:
        with _tallies_lock:
            found = _tallies.setdefault(stage, StageTally())
    return found


def disable() -> None:
    """Metrics off (--metrics-address off): the request path records nothing at all."""
    _Switch.enabled = False


def request_done(stage: str, seconds: float, failure: str | None) -> None:
    """One finished request (processing thread): failure None (success, timed), or one of FAILURE_REASONS."""
    if not _Switch.enabled:
        return
    tally = _tallies.get(stage) or _tally(stage)
    tally.processed += 1
    if failure is None:
        tally.buckets[bisect.bisect_left(PROCESSING_BUCKETS, seconds)] += 1
        tally.seconds += seconds
    else:
        tally.failures[failure] = tally.failures.get(failure, 0) + 1


def result_too_large(stage: str) -> None:
    """A result over the broker's limit (main thread; the request is already counted as processed)."""
    if _Switch.enabled:
        _tally(stage).too_large += 1


class RequestCollector(Collector):
    """The request counters and the processing-time histogram, made from the tallies at scrape time."""

    def collect(self) -> Iterator[Metric]:
        processed = CounterMetricFamily("pero_worker_requests_processed",
                                        "Requests the worker finished, whatever the result", labels=["stage"])
        failed = CounterMetricFamily("pero_worker_requests_failed", "Requests that did not succeed, by reason",
                                     labels=["stage", "reason"])
        seconds = HistogramMetricFamily("pero_worker_processing_seconds", "Processing time of successful requests",
                                        labels=["stage"])
        for stage, tally in list(_tallies.items()):
            processed.add_metric([stage], tally.processed)
            failures = dict(tally.failures)
            if tally.too_large:
                failures["too_large"] = tally.too_large
            for reason, count in failures.items():
                failed.add_metric([stage, reason], count)
            seconds.add_metric([stage], list(zip(_BUCKET_LABELS, itertools.accumulate(tally.buckets))),
                               tally.seconds)
        yield processed
        yield failed
        yield seconds


REGISTRY.register(RequestCollector())


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
