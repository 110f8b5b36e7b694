#!/usr/bin/env python3
"""How fast the web console's page is ready with 100 workers and 50 stages (target: <= 300 ms).

Real services (`make services`), the real console process (`scripts/console.py`) and a real headless
Chromium (Debian's chromium + chromium-driver through selenium).  A scratch ZooKeeper chroot gets 50 DUMMY
stages (queues declared, 0..49 messages each, measured message times) and 100 registered workers (their
`connected` nodes are ephemeral nodes of the bench's session, so they look alive; a few are in failed
states); a dead-letter queue of the bench's own holds 25 letters.  The console reads all of it once a
second, as it would in a deployment.

Measured, for each of `--loads` page loads after logging in: navigation start -> DOMContentLoaded, from the
browser's Navigation Timing (the page is rendered on the server with its data, so DOM ready is data ready).
A load counts only when the page shows all 100 workers and 50 stages; if any load did not, the bench says
so, prints no RESULT lines and exits 1.

Figures, printed last as `RESULT <name> <value> <unit>`:
  console_page_ready_median   median navigation start -> DOM ready (ms)
  console_page_ready_p90      90th percentile (ms)
  console_http_median         median time of a plain HTTP GET of the page (ms), for comparison
  console_page_bytes          size of the page's HTML (bytes)
  console_refresh_round_median  how long the console's background read of ZooKeeper and RabbitMQ takes
                              (ms, as the pages report it): it must stay under the 1 s refresh
  zk_worker_reads_sequential_median / _pipelined_median
                              the 100 workers' nodes read one round trip per node (as before issue 13)
                              and pipelined (watchdog/state.py read_workers now), interleaved, 7 rounds

Run: `.venv/bin/python bench/console.py [--loads 30] [--screenshot docs/img/console-100-workers.png]`
(about a minute; needs the local services, chromium and chromium-driver).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

from pero_worker.dev.browser import ConsoleProcess, login, start_chromium
from pero_worker.dev.local_services import ensure_services, write_server_lists
from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import Address
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.mq import MQSession, MQSettings
from pero_worker.libs.zk import ZooKeeper
from pero_worker.watchdog.state import format_iso, read_workers

STAGES = 50
WORKERS = 100
DEAD_LETTERS = 25
STATUSES = (zk_paths.PROCESSING, zk_paths.PROCESSING, zk_paths.IDLE, zk_paths.CONFIGURATION_FAILED)
DUMMY = "[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\n"


def populate(zk: ZooKeeper, mq: MQSession, tag: str) -> tuple[list[str], str]:
    stages = [f"bc_{tag}_{i:02d}" for i in range(STAGES)]
    now = time.time()
    for i, name in enumerate(stages):
        zk.set_text(zk_paths.stage_config(name), DUMMY)
        zk.set(zk_paths.stage_admin_priority(name), zk_paths.encode_priority(i % 3))
        zk.set_text(zk_paths.stage_avg_msg_time(name), float(0.5 + i / 10).hex())
        zk.set_text(zk_paths.stage_waiting_since(name), "")
        mq.declare_stage_queue(name)
        for _ in range(i):
            mq.publish(name, b"x")
    for i in range(WORKERS):
        worker = f"bw_{tag}_{i:03d}"
        zk.set_text(zk_paths.worker_status(worker), STATUSES[i % len(STATUSES)])
        zk.set_text(zk_paths.worker_queue(worker), stages[i % STAGES] if i % 5 else "")
        zk.set_text(zk_paths.worker_enabled(worker), "true")
        zk.set_text(zk_paths.worker_unlock_time(worker), format_iso(now + (i % 7) * 10))
        zk.set(zk_paths.worker_connected(worker), b"true", ephemeral=True)
    dlq = f"bc_{tag}_dead"
    mq.declare_stage_queue(dlq)
    for i in range(DEAD_LETTERS):
        mq.publish(dlq, b"\x07not a request", headers={"reason": "unparsable: bench", "source_queue": stages[i % 5],
                                                       "worker_id": f"bw_{tag}_{i:03d}"})
    if not mq.wait_for_confirms(60):
        raise RuntimeError("the broker did not confirm the bench's messages")
    return stages, dlq


def sequential_worker_reads(zk: ZooKeeper) -> None:
    """How watchdog/state.py read_workers read the tree before issue 13: one round trip per node (baseline)."""
    for worker in zk.children(zk_paths.WORKER_STATUS_ROOT):
        zk.get_text(zk_paths.worker_status(worker))
        zk.exists(zk_paths.worker_connected(worker))
        zk.get_text(zk_paths.worker_queue(worker))
        zk.get_text(zk_paths.worker_enabled(worker))
        zk.get_text(zk_paths.worker_unlock_time(worker))


def worker_reads(zk: ZooKeeper, rounds: int = 7) -> tuple[float, float]:
    """Median ms of the sequential baseline and of read_workers (pipelined), interleaved in one run."""
    sequential, pipelined = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        sequential_worker_reads(zk)
        sequential.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        read_workers(zk)
        pipelined.append((time.perf_counter() - started) * 1000)
    return statistics.median(sequential), statistics.median(pipelined)


def measure(driver, url: str, loads: int, rounds: list[float]) -> tuple[list[float], int]:
    """Page ready times of `loads` loads; appends to `rounds` the collector's read time each page reports."""
    ready, incomplete = [], 0
    for _ in range(loads):
        driver.get(url + "/")
        timing = driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return [n.domContentLoadedEventEnd - n.startTime,"
            " document.querySelectorAll('#workers tr[data-worker]').length,"
            " document.querySelectorAll('#stages tr[data-stage]').length,"
            " parseFloat(document.getElementById('updated').dataset.roundMs)];")
        if timing[1] != WORKERS or timing[2] != STAGES:
            incomplete += 1
            continue
        ready.append(float(timing[0]))
        rounds.append(float(timing[3]))
    return ready, incomplete


def http_times(url: str, loads: int) -> tuple[list[float], int]:
    web = requests.Session()
    page = web.get(url + "/login", timeout=10).text
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    web.post(url + "/login", data={"csrf": token, "username": "guest", "password": "guest"}, timeout=10)
    times, size = [], 0
    for _ in range(loads):
        started = time.perf_counter()
        response = web.get(url + "/", timeout=10)
        times.append((time.perf_counter() - started) * 1000)
        size = len(response.content)
    return times, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=30, help="page loads to measure (default 30)")
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the page here")
    args = parser.parse_args(argv)
    services = ensure_services()
    tag = uuid.uuid4().hex[:8]
    chroot = f"/bench_console_{tag}"
    admin = ZooKeeper(ConnectionConfig(zookeeper_servers=(Address(services.zk_host, services.zk_port),))).start()
    admin.ensure_path(chroot)
    conn = ConnectionConfig(zookeeper_servers=(Address(services.zk_host, services.zk_port),), zookeeper_chroot=chroot)
    zk = ZooKeeper(conn).start()
    write_server_lists(zk, services)
    mq = MQSession(MQSettings.from_zookeeper(zk, conn), name="bench-console")
    mq.open(retry_for=10)
    stages: list[str] = []
    rounds: list[float] = []
    reads = (0.0, 0.0)
    dlq = ""
    folder = Path(tempfile.mkdtemp(prefix="bench_console_"))
    console = driver = None
    try:
        stages, dlq = populate(zk, mq, tag)
        console = ConsoleProcess(["-z", f"{services.zk_address}{chroot}", "--dead-letter-queue", dlq],
                                 folder / "console.log")
        driver = start_chromium(str(folder / "chromium"))
        login(driver, console.url, "guest", "guest")
        measure(driver, console.url, 3, [])   # warm-up: caches, the first renders
        ready, incomplete = measure(driver, console.url, args.loads, rounds)
        if args.screenshot:
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.screenshot))
        http, size = http_times(console.url, args.loads)
        console.stop()
        console = None
        reads = worker_reads(zk)
    finally:
        if driver is not None:
            driver.quit()
        if console is not None:
            console.stop()
        for name in [*stages, dlq]:
            if name:
                mq.delete_queue(name)
        mq.close()
        zk.stop()
        admin.delete(chroot, recursive=True)
        admin.stop()
    load = os.getloadavg()
    print(f"{len(ready)} page loads with {WORKERS} workers and {STAGES} stages; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if incomplete or not ready:
        print(f"FAILED: {incomplete} of {args.loads} loads did not show every worker and stage; no RESULT lines",
              file=sys.stderr)
        return 1
    ready.sort()
    p90 = ready[min(len(ready) - 1, int(round(0.9 * (len(ready) - 1))))]
    median = statistics.median(ready)
    print(f"target: page ready <= 300 ms: {'met' if median <= 300 else 'NOT met'}")
    print(f"RESULT console_page_ready_median {median:.1f} ms")
    print(f"RESULT console_page_ready_p90 {p90:.1f} ms")
    print(f"RESULT console_http_median {statistics.median(http):.1f} ms")
    print(f"RESULT console_page_bytes {size} bytes")
    print(f"RESULT console_refresh_round_median {statistics.median(rounds):.1f} ms")
    print(f"RESULT zk_worker_reads_sequential_median {reads[0]:.1f} ms")
    print(f"RESULT zk_worker_reads_pipelined_median {reads[1]:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
