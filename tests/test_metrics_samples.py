"""sample-config/grafana/pero-worker.json and sample-config/prometheus/prometheus.yml agree with what the daemons
export: the dashboard is valid JSON and every metric its expressions name is one the daemons serve."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from pero_worker.libs.metrics import DEFAULT_PORTS
from pero_worker.log_daemon import metrics as logd_metrics
from pero_worker.watchdog import metrics as watchdog_metrics
from pero_worker.worker import metrics as worker_metrics

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "sample-config" / "grafana" / "pero-worker.json"
PROMETHEUS = REPO / "sample-config" / "prometheus" / "prometheus.yml"
# Sample names a metric family of each type serves (prometheus_client's text format).
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",), "stateset": ("",), "info": ("_info",), "summary": ("_count", "_sum", "_created")}
METRIC = re.compile(r"\b((?:pero|process)_[a-z_]+)\b")


def exported_names(registry: CollectorRegistry) -> set[str]:
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]}


def all_exported() -> set[str]:
    return exported_names(worker_metrics.REGISTRY) | exported_names(watchdog_metrics.REGISTRY) | \
        exported_names(logd_metrics.REGISTRY)


def expressions(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["expr"]] if "expr" in node else []
        return own + [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in expressions(value)]
    return []


def test_the_dashboard_is_json_and_names_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = expressions(dashboard["panels"])
    assert len(exprs) >= 15
    exported = all_exported()
    labels = {"pero_worker_status"}   # the state label of the pero_worker_status enum, used in `by (...)`
    named = {name for expr in exprs for name in METRIC.findall(expr)}
    assert named - exported - labels == set(), f"the dashboard uses metrics nobody exports: {named - exported}"
    # Every daemon's main metrics are on the dashboard.
    for name in ("pero_worker_requests_processed_total", "pero_worker_requests_failed_total",
                 "pero_worker_processing_seconds_bucket", "pero_worker_status", "pero_worker_stage_switches_total",
                 "pero_worker_model_download_seconds_sum", "pero_worker_model_unpack_seconds_sum",
                 "pero_watchdog_leader", "pero_watchdog_moves_total", "pero_watchdog_queue_ready",
                 "pero_watchdog_drain_seconds", "pero_watchdog_planning_seconds_bucket",
                 "pero_logd_lines_written_total", "pero_logd_backlog"):
        assert name in named, f"{name} is not on the dashboard"
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))


def test_every_exported_name_check_catches_a_typo():
    assert "pero_worker_requests_processed_total" in all_exported()
    assert "pero_worker_requests_processed" not in all_exported()
    assert "pero_watchdog_leader_total" not in all_exported()


def test_the_prometheus_sample_scrapes_the_default_ports():
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {name: [t for group in job["static_configs"] for t in group["targets"]] for name, job in jobs.items()}
    assert f"127.0.0.1:{DEFAULT_PORTS['worker']}" in targets["pero-worker"]
    assert targets["pero-watchdog"] == [f"127.0.0.1:{DEFAULT_PORTS['watchdog']}"]
    assert targets["pero-log-daemon"] == [f"127.0.0.1:{DEFAULT_PORTS['log_daemon']}"]
    for name, job in jobs.items():
        if name.endswith("-tls"):
            assert job["scheme"] == "https"
            assert set(job["tls_config"]) == {"ca_file", "cert_file", "key_file"}   # mutual TLS
