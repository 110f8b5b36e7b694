"""The log daemon's Prometheus metrics (served by libs/metrics.py).

Names (the Grafana dashboard in sample-config/grafana/ uses these):
  pero_logd_lines_written_total     log records written to disk and acknowledged
  pero_logd_write_failures_total    batches that could not be written (they stay queued and are retried)
  pero_logd_backlog                 records waiting in the log queue (read every BACKLOG_INTERVAL s; -1: unknown)
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.process_collector import ProcessCollector

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

# The backlog is one AMQP round trip (a passive queue declare): read it this often, not per batch.
BACKLOG_INTERVAL = 2.0

LINES_WRITTEN = Counter("pero_logd_lines_written", "Log records written to disk and acknowledged",
                        registry=REGISTRY)
WRITE_FAILURES = Counter("pero_logd_write_failures", "Batches that could not be written (they stay queued)",
                         registry=REGISTRY)
BACKLOG = Gauge("pero_logd_backlog", "Records waiting in the log queue (-1: unknown)", registry=REGISTRY)
BACKLOG.set(-1)
