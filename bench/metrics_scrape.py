#!/usr/bin/env python3
"""Metrics scrape time: how long Prometheus waits for /metrics of a busy worker and of the active watchdog.

A server process (`--serve`, started by this script) fills the real metric modules
(worker/metrics.py, watchdog/metrics.py) with realistic label counts -- by default 50
stages: every per-stage counter, histogram and gauge has 50 children, every failure
reason and move reason is present, as after a long day of a worker that served each
stage -- and serves them with libs/metrics.py exactly as the daemons do.  This process
scrapes each one `--scrapes` times over a new HTTP connection (as Prometheus does when
keep-alive is off) and checks the answer; a scrape that fails or returns a partial page
is a failure: the bench then prints no RESULT and exits 1.

Figures, printed last as `RESULT <name> <value> <unit>` (target: <= 50 ms):
  metrics_scrape_worker     median ms of one scrape of the worker (50 stages)
  metrics_scrape_watchdog   median ms of one scrape of the watchdog (50 stages)
  metrics_scrape_worker_p95, metrics_scrape_watchdog_p95   95th percentiles
  metrics_scrape_worker_cpu, metrics_scrape_watchdog_cpu   the server's CPU time per scrape (render + gzip +
                                                           HTTP): what a scrape costs the daemon, whatever the load
  metrics_scrape_worker_bytes                              size of the worker's page
  metrics_request_cost      microseconds of metric updates per request on the worker's request path

Run: `.venv/bin/python bench/metrics_scrape.py [--stages 50] [--scrapes 200]` (a few seconds; no services).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from pero_worker.libs.metrics import MetricsAddress, MetricsConfig, start_metrics_server


def fill(stages: int) -> None:
    """Every labelled metric of the worker and the watchdog with `stages` stages' worth of children."""
    from pero_worker.watchdog import metrics as watchdog_metrics
    from pero_worker.worker import metrics as worker_metrics
    rng = random.Random(7)
    names = [f"stage_{index:02d}_ocr_layout" for index in range(stages)]
    for name in names:
        for _ in range(50):
            worker_metrics.request_done(name, rng.expovariate(2.0), None)
        for reason in worker_metrics.FAILURE_REASONS[:3]:        # worst case: every kind of failure
            worker_metrics.request_done(name, 0.0, reason)
        worker_metrics.result_too_large(name)
        worker_metrics.stage_taken_up(name, rng.uniform(0.5, 30))
        worker_metrics.model_fetched(name, rng.uniform(1, 60), rng.uniform(0.5, 10))
    worker_metrics.set_status("PROCESSING")
    worker_metrics.set_identity("bench-worker")
    watchdog_metrics.LEADER.set(1)
    figures = {name: watchdog_metrics.StageFigures(rng.randrange(10_000), rng.randrange(100), rng.randrange(8),
                                                   rng.uniform(0, 3600)) for name in names}
    watchdog_metrics.StageGauges().update(figures)
    for _prefix, kind in watchdog_metrics.MOVE_KINDS:
        watchdog_metrics.MOVES.labels(kind).inc(rng.randrange(100))
    for _ in range(100):
        watchdog_metrics.PLANNING_SECONDS.observe(rng.uniform(0.0005, 0.01))
        watchdog_metrics.ROUND_SECONDS.observe(rng.uniform(0.01, 0.2))
        watchdog_metrics.ROUNDS.inc()


def serve(stages: int) -> int:
    from pero_worker.watchdog import metrics as watchdog_metrics
    from pero_worker.worker import metrics as worker_metrics
    fill(stages)
    local = MetricsConfig(MetricsAddress("127.0.0.1", 0, 0))
    servers = [start_metrics_server(local, worker_metrics.REGISTRY),
               start_metrics_server(local, watchdog_metrics.REGISTRY)]
    print(" ".join(server.url for server in servers), flush=True)
    sys.stdin.read()      # until the bench closes our stdin
    return 0


def time_scrapes(url: str, count: int, stages: int) -> tuple[list[float], int]:
    """Milliseconds of each scrape (request sent -> whole page received, what Prometheus's scrape duration
    measures), and the page size.  Every page is parsed afterwards (not timed: Prometheus parses in Go, this
    parser in Python) and must hold every stage; RuntimeError otherwise."""
    timings = []
    size = 0
    for _ in range(count):
        started = time.perf_counter()
        response = requests.get(url, timeout=10, headers={"Connection": "close"})
        elapsed = (time.perf_counter() - started) * 1000
        shown = {sample.labels.get("stage") for family in text_string_to_metric_families(response.text)
                 for sample in family.samples} - {None}
        if response.status_code != 200 or len(shown) != stages:
            raise RuntimeError(f"scrape of {url} failed: HTTP {response.status_code}, {len(shown)} stages")
        timings.append(elapsed)
        size = len(response.content)
    return timings, size


def request_cost(stages: int, calls: int = 200_000) -> float:
    """Microseconds the worker's request path spends on metrics per request (worker/metrics.request_done),
    measured in this process."""
    from pero_worker.worker import metrics as worker_metrics
    names = [f"stage_{index:02d}_ocr_layout" for index in range(stages)]
    started = time.perf_counter()
    for call in range(calls):
        worker_metrics.request_done(names[call % stages], 0.003, None)
    return (time.perf_counter() - started) * 1e6 / calls


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat): the server's own cost of the scrapes,
    which, unlike their wall time, does not grow with the machine's load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=50, help="stages (label values) per metric (default 50)")
    parser.add_argument("--scrapes", type=int, default=200, help="scrapes of each daemon (default 200)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.stages)
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--stages", str(args.stages)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        worker_url, watchdog_url = server.stdout.readline().split()
        results = {}
        cpu: dict[str, float] = {}
        for name, url in (("worker", worker_url), ("watchdog", watchdog_url)):
            time_scrapes(url, 5, args.stages)     # warm-up
            cpu_before = cpu_seconds(server.pid)
            results[name] = time_scrapes(url, args.scrapes, args.stages)
            cpu[name] = (cpu_seconds(server.pid) - cpu_before) * 1000 / args.scrapes
    except (RuntimeError, requests.RequestException, ValueError) as error:
        print(f"BENCH FAILED: {error}; no RESULT", file=sys.stderr)
        return 1
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    for name, (timings, size) in results.items():
        ordered = sorted(timings)
        print(f"{name}: {len(timings)} scrapes of {size} bytes, median {statistics.median(timings):.2f} ms, "
              f"p95 {ordered[int(len(ordered) * 0.95) - 1]:.2f} ms, max {ordered[-1]:.2f} ms; server CPU "
              f"{cpu[name]:.2f} ms per scrape")
    print()
    for name, (timings, _size) in results.items():
        ordered = sorted(timings)
        print(f"RESULT metrics_scrape_{name} {statistics.median(timings):.2f} ms")
        print(f"RESULT metrics_scrape_{name}_p95 {ordered[int(len(ordered) * 0.95) - 1]:.2f} ms")
        print(f"RESULT metrics_scrape_{name}_cpu {cpu[name]:.2f} ms")
    print(f"RESULT metrics_scrape_worker_bytes {results['worker'][1]} bytes")
    print(f"RESULT metrics_request_cost {request_cost(args.stages):.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
