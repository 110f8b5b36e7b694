#!/usr/bin/env python3
"""Pipeline throughput: preloaded requests drained through a zero-time DUMMY stage.

Only requests that come out with every stage log OK are counted (bench/outcomes.py); a run
with a failed or missing request stops the bench with exit status 1 and no RESULT line.
Everything runs as users run it: stages created with stage_config_manager.py,
requests uploaded with publisher.py, real worker processes (worker/run_worker.py)
on the local services (`make services`).  Workers start idle, the queue is
preloaded, then the workers are assigned the stage by writing their `queue`
node; the clock runs from that write until the output queue holds every request.

Figures (median of --runs runs), printed last as `RESULT <name> <value> <unit>`:
  pipeline_1_worker, pipeline_2_workers  req/s through one DUMMY stage, workers with /metrics on (the default),
                                         scraped every second while they work
  pipeline_1_worker_metrics_off, ...     the same with --metrics-address off
  pipeline_metrics_ratio                 throughput with metrics on / off: median of the ratios of runs made
                                         back to back (on and off alternate), all worker counts; per count too
  pipeline_metrics_cpu_ratio             one worker's CPU time per request, off / on (median of the pairs)
  upload_rate                            req/s of publisher.py (its own figure, excluding start-up)
  idle_worker_rss                        MB resident of an idle worker (torch not loaded)

Reference (the original system, this kind of machine, same workload): 99 req/s with one worker,
140 with two, ~350 req/s upload.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from pero_worker.bench.outcomes import judge
from pero_worker.dev.local_services import ensure_services, write_server_lists
from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import Address
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.mq import MQSession, MQSettings
from pero_worker.libs.zk import ZooKeeper

REPO = Path(__file__).resolve().parents[1]

PY = sys.executable


class BenchFailure(Exception):
    """A run saw failed, missing or unconfirmed requests: no figure may come from it."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


def make_images(folder: Path, count: int, size_kb: int) -> None:
    """Noise PNGs of about size_kb each (noise does not compress, so the size is predictable)."""
    rng = np.random.default_rng(7)
    side = int((size_kb * 1024 / 3) ** 0.5)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"page_{i:05d}.png", compress_level=1)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"command failed ({result.returncode}): {' '.join(cmd)}\n{result.stdout}\n{result.stderr}")
    return result


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def read_output(mq: MQSession, queue: str, expected: int, timeout: float = 120.0) -> list[bytes]:
    """Every message of the output queue (at least `expected`, or what came within `timeout`), acked."""
    bodies: list[bytes] = []
    last_tag = 0

    def on_message(delivery) -> None:
        nonlocal last_tag
        bodies.append(delivery.body)
        last_tag = delivery.delivery_tag

    mq.consume(queue, on_message, prefetch=256)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            mq.pump(0.2)
            if last_tag:
                mq.ack(last_tag, multiple=True)
                last_tag = 0
            if len(bodies) >= expected and mq.queue_length(queue) == 0:
                break
    finally:
        mq.cancel_consumer()
    return bodies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


MODES = {"both": (False, True), "on": (True,), "off": (False,)}
SCRAPE_INTERVAL = 1.0    # while metrics are on, each worker is scraped this often (Prometheus: every 15 s)
METRICS_URL = re.compile(r"metrics on (http://\S+/metrics)")


class Scraper:
    """Scrapes every worker's /metrics every SCRAPE_INTERVAL s while a run lasts (a scrape costs the worker too)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.scrapes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_INTERVAL):
            for url in self.urls:
                try:
                    ok = requests.get(url, timeout=5).status_code == 200
                except requests.RequestException:
                    ok = False
                self.scrapes += 1
                self.failures += not ok


class Bench:
    """One run: start workers (metrics on or off), preload the stage, assign it, time the drain."""

    def __init__(self, args, zk, zk_arg, mq, stage, out, work, images, idle_rss, upload_rates) -> None:
        self.args, self.zk, self.zk_arg, self.mq = args, zk, zk_arg, mq
        self.stage, self.out, self.work, self.images = stage, out, work, images
        self.idle_rss, self.upload_rates = idle_rss, upload_rates
        self.procs: list[subprocess.Popen] = []
        self.cpu_ms: collections.defaultdict[tuple[int, bool], list[float]] = collections.defaultdict(list)

    def kill(self) -> None:
        for proc in self.procs:
            proc.kill()
        self.procs = []

    def start_workers(self, ids: list[str], metrics_on: bool) -> list[str]:
        """Start the workers; the URLs of their /metrics (empty with metrics off)."""
        env = dict(os.environ, PERO_METRICS_ADDRESS="127.0.0.1:0" if metrics_on else "off")
        for wid in ids:
            with open(self.work / f"{wid}.log", "wb") as log:
                self.procs.append(subprocess.Popen(
                    [PY, "worker/run_worker.py", "-z", self.zk_arg, "-i", wid, "--cache-directory",
                     str(self.work / wid), "--disable-remote-logging"], cwd=REPO, stdout=log,
                    stderr=subprocess.STDOUT, env=env))
        for wid in ids:
            wait_for(lambda wid=wid: self.zk.get_text(zk_paths.worker_status(wid)) == zk_paths.IDLE, 60,
                     f"worker {wid} to be idle")
        urls = []
        for wid in ids if metrics_on else []:
            match = METRICS_URL.search((self.work / f"{wid}.log").read_text(errors="replace"))
            if match is None:
                raise BenchFailure(f"worker {wid} does not say where its metrics are")
            urls.append(match.group(1))
        return urls

    def run(self, n_workers: int, attempt: int, metrics_on: bool) -> float:
        args, zk, mq, stage, out = self.args, self.zk, self.mq, self.stage, self.out
        mode = "on" if metrics_on else "off"
        ids = [f"bench_w{n_workers}_{attempt}_{mode}_{k}_{uuid.uuid4().hex[:4]}" for k in range(n_workers)]
        urls = self.start_workers(ids, metrics_on)
        time.sleep(0.5)
        self.idle_rss.extend(rss_mb(p.pid) for p in self.procs)

        up = run([PY, "scripts/publisher.py", "-z", self.zk_arg, "--stages", stage, out,
                  "--directory", str(self.images), "--no-progress"])
        match = re.search(r"uploaded (\d+) of (\d+) .*\(([\d.]+) req/s\)", up.stdout)
        if not match or match.group(1) != match.group(2):
            raise BenchFailure(f"upload incomplete: {up.stdout.strip()} {up.stderr.strip()}")
        self.upload_rates.append(float(match.group(3)))
        wait_for(lambda: mq.queue_length(stage) == args.requests, 30, "the preload to settle")

        with Scraper(urls) as scraper:
            cpu_before = sum(cpu_seconds(proc.pid) for proc in self.procs)
            started = time.monotonic()
            for wid in ids:
                zk.set_text(zk_paths.worker_queue(wid), stage)
            wait_for(lambda: mq.queue_length(out) >= args.requests, 600, "the stage to drain", interval=0.01)
            elapsed = time.monotonic() - started
            cpu_ms = (sum(cpu_seconds(proc.pid) for proc in self.procs) - cpu_before) * 1000 / args.requests
        if scraper.failures:
            raise BenchFailure(f"{scraper.failures} of {scraper.scrapes} scrapes of the workers' metrics failed")
        # Only requests whose every stage log says OK count; any failure voids the bench.
        outcome = judge(read_output(mq, out, args.requests), args.requests, stages=1)
        if not outcome.clean:
            raise BenchFailure(f"{n_workers} worker(s), run {attempt + 1}, metrics {mode}: {outcome.describe()}",
                               outcome.failed)
        rate = outcome.ok / elapsed
        self.cpu_ms[(n_workers, metrics_on)].append(cpu_ms)
        print(f"{n_workers} worker(s), run {attempt + 1}, metrics {mode}: {outcome.describe()} in {elapsed:.2f} s "
              f"= {rate:.0f} req/s, worker CPU {cpu_ms:.3f} ms/request ({scraper.scrapes} scrapes)", flush=True)
        for wid in ids:
            zk.set_text(zk_paths.worker_enabled(wid), "false")
        for proc in self.procs:
            proc.wait(timeout=30)
        self.procs = []
        mq.purge_queue(out)
        mq.purge_queue(stage)
        return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--size-kb", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--metrics", choices=sorted(MODES), default="both",
                        help="workers with /metrics on (default configuration), off, or both, interleaved in the same "
                             "run (default): pipeline_metrics_ratio = throughput on / off")
    parser.add_argument("--failing-stage", action="store_true",
                        help="use a FAILTEST stage (every request fails): shows that the bench then refuses to "
                             "report a figure and exits 1")
    args = parser.parse_args(argv)

    services = ensure_services()
    chroot = f"/bench_{uuid.uuid4().hex[:8]}"
    zk_arg = f"{services.zk_host}:{services.zk_port}{chroot}"
    conn = ConnectionConfig((Address(services.zk_host, services.zk_port),), zookeeper_chroot=chroot)
    admin = ZooKeeper(ConnectionConfig((Address(services.zk_host, services.zk_port),))).start()
    admin.ensure_path(chroot)
    zk = ZooKeeper(conn).start()
    write_server_lists(zk, services)
    stage, out = f"bench_dummy_{uuid.uuid4().hex[:6]}", f"bench_out_{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="pero-bench-"))
    (work / "dummy.ini").write_text("[WORKER]\nFAILTEST = TRUE\n" if args.failing_stage
                                    else "[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\n")
    images = work / "images"
    images.mkdir()
    make_images(images, args.requests, args.size_kb)
    run([PY, "scripts/stage_config_manager.py", "-z", zk_arg, "--name", stage, "--config", str(work / "dummy.ini")])
    run([PY, "scripts/stage_config_manager.py", "-z", zk_arg, "--name", out])
    mq = MQSession(MQSettings(servers=(Address(services.mq_host, services.mq_port),),
                              username="guest", password="guest"), name="bench")
    mq.open(retry_for=10)

    failure: BenchFailure | None = None
    upload_rates: list[float] = []
    results: dict[tuple[int, bool], list[float]] = {}
    ratios: dict[int, list[float]] = {}
    idle_rss: list[float] = []
    bench = Bench(args, zk, zk_arg, mq, stage, out, work, images, idle_rss, upload_rates)
    try:
        for n_workers in args.workers:
            for attempt in range(args.runs):
                # Metrics on and off alternate (off, on, on, off, ...): drift of the machine's load cancels out.
                order = MODES[args.metrics] if attempt % 2 == 0 else tuple(reversed(MODES[args.metrics]))
                rates = {}
                for metrics_on in order:
                    rates[metrics_on] = bench.run(n_workers, attempt, metrics_on)
                    results.setdefault((n_workers, metrics_on), []).append(rates[metrics_on])
                if len(rates) == 2:
                    ratios.setdefault(n_workers, []).append(rates[True] / rates[False])
    except BenchFailure as error:
        failure = error
    finally:
        bench.kill()
        for queue in (stage, out):
            try:
                mq.delete_queue(queue)
            except Exception:
                pass
        mq.close()
        zk.stop()
        admin.delete(chroot, recursive=True)
        admin.stop()

    if failure is not None:
        print(f"BENCH FAILED: {failure}", file=sys.stderr)
        for line in failure.details[:5]:
            print(f"  {line}", file=sys.stderr)
        if len(failure.details) > 5:
            print(f"  ... and {len(failure.details) - 5} more", file=sys.stderr)
        print("no RESULT: figures are computed only from runs in which every request succeeded", file=sys.stderr)
        return 1
    print()
    for (n_workers, metrics_on), rates in results.items():
        label = "pipeline_1_worker" if n_workers == 1 else f"pipeline_{n_workers}_workers"
        print(f"RESULT {label}{'' if metrics_on else '_metrics_off'} {statistics.median(rates):.1f} req/s")
    if ratios:
        # Each ratio compares two runs made back to back (metrics on / off); the median of all of them.
        every = [ratio for values in ratios.values() for ratio in values]
        print(f"RESULT pipeline_metrics_ratio {statistics.median(every):.3f} ratio")
        for n_workers, values in ratios.items():
            print(f"RESULT pipeline_metrics_ratio_{n_workers}_worker{'s' if n_workers > 1 else ''} "
                  f"{statistics.median(values):.3f} ratio")
    cpu_pairs = list(zip(bench.cpu_ms[(1, False)], bench.cpu_ms[(1, True)]))
    if cpu_pairs:
        # Worker CPU per request, off / on: what metrics cost the worker, much less sensitive to the machine's
        # load than wall-clock throughput (a single worker on a zero-time stage is CPU-bound).
        cpu_ratio = statistics.median(off / on for off, on in cpu_pairs)
        print(f"RESULT pipeline_metrics_cpu_ratio {cpu_ratio:.3f} ratio")
    if upload_rates:
        print(f"RESULT upload_rate {statistics.median(upload_rates):.1f} req/s")
    if idle_rss:
        print(f"RESULT idle_worker_rss {statistics.median(idle_rss):.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
