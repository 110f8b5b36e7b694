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
  pipeline_1_worker, pipeline_2_workers  req/s through one DUMMY stage
  upload_rate                            req/s of publisher.py (its own figure, excluding start-up)
  idle_worker_rss                        MB resident of an idle worker (torch not loaded)

Reference (the original system, this kind of machine, same workload): 99 req/s with one worker,
140 with two, ~350 req/s upload.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
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


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--size-kb", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
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
    results: dict[int, list[float]] = {}
    idle_rss: list[float] = []
    procs: list[subprocess.Popen] = []
    try:
        for n_workers in args.workers:
            for attempt in range(args.runs):
                ids = [f"bench_w{n_workers}_{attempt}_{k}_{uuid.uuid4().hex[:4]}" for k in range(n_workers)]
                procs = [subprocess.Popen(
                    [PY, "worker/run_worker.py", "-z", zk_arg, "-i", wid, "--cache-directory", str(work / wid),
                     "--disable-remote-logging"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for wid in ids]
                for wid in ids:
                    wait_for(lambda wid=wid: zk.get_text(zk_paths.worker_status(wid)) == zk_paths.IDLE, 60,
                             f"worker {wid} to be idle")
                time.sleep(0.5)
                idle_rss.extend(rss_mb(p.pid) for p in procs)

                up = run([PY, "scripts/publisher.py", "-z", zk_arg, "--stages", stage, out,
                          "--directory", str(images), "--no-progress"])
                match = re.search(r"uploaded (\d+) of (\d+) .*\(([\d.]+) req/s\)", up.stdout)
                if not match or match.group(1) != match.group(2):
                    raise BenchFailure(f"upload incomplete: {up.stdout.strip()} {up.stderr.strip()}")
                upload_rates.append(float(match.group(3)))
                wait_for(lambda: mq.queue_length(stage) == args.requests, 30, "the preload to settle")

                started = time.monotonic()
                for wid in ids:
                    zk.set_text(zk_paths.worker_queue(wid), stage)
                wait_for(lambda: mq.queue_length(out) >= args.requests, 600, "the stage to drain", interval=0.01)
                elapsed = time.monotonic() - started
                # Only requests whose every stage log says OK count; any failure voids the bench.
                outcome = judge(read_output(mq, out, args.requests), args.requests, stages=1)
                if not outcome.clean:
                    raise BenchFailure(f"{n_workers} worker(s), run {attempt + 1}: {outcome.describe()}",
                                       outcome.failed)
                rate = outcome.ok / elapsed
                results.setdefault(n_workers, []).append(rate)
                print(f"{n_workers} worker(s), run {attempt + 1}: {outcome.describe()} in {elapsed:.2f} s "
                      f"= {rate:.0f} req/s", flush=True)

                for wid in ids:
                    zk.set_text(zk_paths.worker_enabled(wid), "false")
                for proc in procs:
                    proc.wait(timeout=30)
                procs = []
                mq.purge_queue(out)
                mq.purge_queue(stage)
    except BenchFailure as error:
        failure = error
    finally:
        for proc in procs:
            proc.kill()
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
    for n_workers, rates in results.items():
        label = "pipeline_1_worker" if n_workers == 1 else f"pipeline_{n_workers}_workers"
        print(f"RESULT {label} {statistics.median(rates):.1f} req/s")
    if upload_rates:
        print(f"RESULT upload_rate {statistics.median(upload_rates):.1f} req/s")
    if idle_rss:
        print(f"RESULT idle_worker_rss {statistics.median(idle_rss):.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
