"""Failover run on the loopback cluster (dev/cluster.py): faults of cluster members while pages flow.

    python dev/cluster_failover.py [--pages 800] [--faults zk-leader,mq-stop,mq-kill] [--keep-cluster]
    make cluster-test [CLUSTER_ARGS="..."]

What it does, with the real command-line tools and daemons only:
  1. deploys the 3-node ZooKeeper ensemble and the 3-node RabbitMQ cluster (dev/cluster.py up; reused when up),
  2. registers the three brokers (server_config_manager.py), creates two DUMMY stages and an output stage
     (stage_config_manager.py), starts three workers given all three ZooKeeper servers (worker/run_worker.py),
     places them (worker_controller.py --switch), uploads the pages (publisher.py) and downloads the results
     for the whole run (publisher.py --download --keep-running),
  3. injects the faults one after another while the pages flow, each followed by the member's restart:
       zk-leader  kill -9 of the ZooKeeper leader (found with the `srvr` four-letter word)
       mq-stop    clean stop of the RabbitMQ node that homes the stage queues (rabbitmqctl stop)
       mq-kill    kill -9 of the RabbitMQ node that holds the most client connections
     and, while the member is down, runs a tool that must find the others through its server list,
  4. stops the download, downloads what is left and prints the table
       fault -> results paused -> lost / duplicated
     plus where the queues lived before and after each RabbitMQ fault.

"Results paused" is the longest time without a newly downloaded result counted from the fault (the
download folder is counted every 0.1 s); the same gap before the first fault is the baseline.  The
run fails (exit 1) on any lost page, any worker or download that exited during the run, a tool that
failed with a member down, requests left in the stage queues, or a fault that came after the last
result (so it was not tested while pages flowed: give more --pages).
"""
from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pero_worker.dev.cluster import NODES, Cluster, ClusterError, default_state_dir
from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import parse_address_list
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.exit_codes import ExitCode, exit_codes_help
from pero_worker.libs.mq import MQError, MQSession, MQSettings
from pero_worker.libs.zk import KazooException, ZooKeeper

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
FAULTS = ("zk-leader", "mq-stop", "mq-kill")
WORKERS = 3
DUPLICATE_LINE = "skipping request"             # publisher.py --download's line for a skipped duplicate
LOCK_FILE = "/tmp/pero-cluster.lock"   # one run at a time on this machine: the ports are fixed


@dataclass
class FaultResult:
    name: str
    target: str
    at: float                        # seconds since the upload finished
    paused: float = 0.0              # longest time without a new result from the fault to the next fault
    duplicates: int = 0              # duplicates the download skipped from the fault to the next one
    took: float = 0.0                # how long the kill or stop command ran
    homes_before: str = ""
    homes_after: str = ""
    note: str = ""


@dataclass
class Run:
    cluster: Cluster
    work: Path
    pages: int
    page_seconds: float
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    samples: list[tuple[float, int]] = field(default_factory=list)   # (monotonic time, requests downloaded)
    workers: list[subprocess.Popen] = field(default_factory=list)
    downloader: subprocess.Popen | None = None
    tool_failures: list[str] = field(default_factory=list)
    duplicate_times: list[float] = field(default_factory=list)      # when the download skipped a duplicate
    stop_monitor: threading.Event = field(default_factory=threading.Event)

    @property
    def stages(self) -> tuple[str, str, str]:
        return f"cf{self.run_id}_a", f"cf{self.run_id}_b", f"cf{self.run_id}_out"

    def worker_id(self, index: int) -> str:
        return f"cf{self.run_id}_w{index + 1}"

    def cli(self, script: str, *args: str, timeout: float = 180) -> str:
        done = subprocess.run([PY, script, "-z", self.cluster.zk_servers(), *args], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise ClusterError(f"{script} {' '.join(args)} exited {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()[-600:]}")
        return done.stdout

    @property
    def results(self) -> Path:
        return self.work / "results"

    def current_output(self) -> int:
        return self.samples[-1][1] if self.samples else 0


def stall_after(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """The longest time in [start, end] without the output growing, counted from `start` (pure).

    `start` is the fault: a result that arrives 0.1 s later ends a 0.1 s pause; a broker that
    needs 6 s to fail over shows as a pause of about 6 s."""
    last_growth = start
    longest = 0.0
    previous = None
    for moment, depth in samples:
        if moment < start:
            previous = depth
            continue
        if moment > end:
            break
        if previous is not None and depth > previous:
            longest = max(longest, moment - last_growth)
            last_growth = moment
        previous = depth
    return round(max(longest, min(end, samples[-1][0] if samples else end) - last_growth), 2)


# --- set-up -----------------------------------------------------------------------------------------

def prepare(run: Run) -> None:
    cluster = run.cluster
    run.cli("scripts/server_config_manager.py", "--add-mq-servers", *cluster.mq_servers())
    dummy = run.work / "dummy.ini"
    low, high = run.page_seconds * 0.75, run.page_seconds * 1.25
    dummy.write_text(f"[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\nTIME_DIFF_MIN = {low}\nTIME_DIFF_MAX = {high}\n")
    stage_a, stage_b, out = run.stages
    for stage in (stage_a, stage_b):
        run.cli("scripts/stage_config_manager.py", "--name", stage, "--config", str(dummy))
    run.cli("scripts/stage_config_manager.py", "--name", out)
    images = run.work / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    for i in range(run.pages):
        Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(images / f"p{i:04d}.png")


def start_workers(run: Run) -> None:
    for index in range(WORKERS):
        worker_id = run.worker_id(index)
        log = open(run.work / f"{worker_id}.log", "wb")   # noqa: SIM115 - the worker writes it until it ends
        run.workers.append(subprocess.Popen(
            [PY, "worker/run_worker.py", "-z", run.cluster.zk_servers(), "-i", worker_id,
             "--cache-directory", str(run.work / "cache" / worker_id), "--disable-remote-logging"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    config = ConnectionConfig(zookeeper_servers=tuple(parse_address_list(run.cluster.zk_servers(), 2181)))
    with ZooKeeper(config, timeout=30) as zk:
        deadline = time.monotonic() + 120
        while not all(zk.get_text(zk_paths.worker_status(run.worker_id(i))) == zk_paths.IDLE for i in range(WORKERS)):
            if time.monotonic() > deadline:
                raise ClusterError(f"workers not IDLE within 120 s; see {run.work}/*.log")
            for process in run.workers:
                if process.poll() is not None:
                    raise ClusterError(f"a worker exited with {process.returncode} at start; see {run.work}/*.log")
            time.sleep(0.3)
    stage_a, stage_b, _out = run.stages
    # One worker on the first stage, two on the second: the first stage sets the pace.
    for index, stage in enumerate((stage_a, stage_b, stage_b)):
        run.cli("scripts/worker_controller.py", "--switch", run.worker_id(index), stage, "--lock", "3600")


def stop_workers(run: Run) -> None:
    for index, process in enumerate(run.workers):
        if process.poll() is None:
            try:
                run.cli("scripts/worker_controller.py", "--shutdown", run.worker_id(index), timeout=60)
            except (ClusterError, subprocess.TimeoutExpired):
                process.terminate()
    for process in run.workers:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def count_downloaded(results: Path) -> int:
    """Request folders publisher.py --download has written (not its temporary or unparsable ones)."""
    try:
        return sum(1 for entry in os.scandir(results) if entry.is_dir() and not entry.name.startswith(("_", ".")))
    except FileNotFoundError:
        return 0


def monitor(run: Run) -> None:
    """Requests downloaded so far, every 0.1 s: the end-to-end progress a user sees; and when the download
    skipped a duplicate (its log has no times: the line is stamped when it shows up)."""
    log_path = run.work / "download.log"
    seen = 0
    while not run.stop_monitor.is_set():
        now = time.monotonic()
        run.samples.append((now, count_downloaded(run.results)))
        try:
            skipped = log_path.read_text(errors="replace").count(DUPLICATE_LINE)
        except OSError:
            skipped = seen
        run.duplicate_times += [now] * max(0, skipped - seen)
        seen = max(seen, skipped)
        run.stop_monitor.wait(0.1)


def start_download(run: Run) -> None:
    """publisher.py --download --keep-running for the whole run: a tool that must fail over like the workers."""
    log = open(run.work / "download.log", "w")   # noqa: SIM115 - the tool writes it until it ends
    run.downloader = subprocess.Popen(
        [PY, "scripts/publisher.py", "-z", run.cluster.zk_servers(), "--download", run.stages[2], "--directory",
         str(run.results), "--keep-running", "--no-progress"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL)


def stop_download(run: Run) -> int | None:
    """SIGTERM (the tool commits and acks what it stored, then exits 0); its exit code, None if it never ran."""
    if run.downloader is None:
        return None
    if run.downloader.poll() is None:
        run.downloader.send_signal(signal.SIGTERM)
        try:
            run.downloader.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.downloader.kill()
            run.downloader.wait()
    return run.downloader.returncode


# --- faults -------------------------------------------------------------------------------------------

def queue_homes(run: Run) -> tuple[int | None, str]:
    """The node that homes the stage queues (the masters of the first stage) and a one-line description."""
    for ask in range(NODES):
        try:
            homes = run.cluster.queue_homes(ask)
        except (ClusterError, subprocess.TimeoutExpired):
            continue
        parts = []
        master_node = None
        for name in run.stages:
            info = homes.get(name)
            if not info:
                continue
            node = info["master"].split("@")[0].rsplit("-", 1)[-1]
            synced = len(info["synchronised"])
            parts.append(f"{name.split('_')[-1]}@{node} ({synced}/{len(info['mirrors'])} mirrors in sync)")
            if name == run.stages[0] and node.isdigit():
                master_node = int(node) - 1
        return master_node, ", ".join(parts)
    return None, "unknown (no node answered)"


def inject(run: Run, name: str, started: float) -> FaultResult:
    cluster = run.cluster
    if name == "zk-leader":
        leader = cluster.zk_leader()
        if leader is None:
            raise ClusterError("no ZooKeeper leader to kill")
        result = FaultResult(name, f"ZooKeeper node {leader + 1} (leader)", time.monotonic() - started)
        cluster.kill_zk_node(leader)
        result.took = time.monotonic() - started - result.at
        killed = time.monotonic()
        new_leader = _wait_new_leader(cluster)
        result.note = f"new leader: node {new_leader + 1} after {time.monotonic() - killed:.1f} s; "
        result.note += tools_check(run, "worker_controller.py -s")
        cluster.start_zk_node(leader)
        cluster.wait_zk_serving()
        return result
    node, homes = queue_homes(run)
    connections = _connections(run)
    if name == "mq-kill" and connections:
        node = max(connections, key=lambda n: connections[n])   # where the clients are
    if node is None:
        raise ClusterError(f"cannot tell which RabbitMQ node homes the stage queues ({homes})")
    how = "rabbitmqctl stop" if name == "mq-stop" else "kill -9"
    result = FaultResult(name, f"RabbitMQ node {node + 1} ({how})", time.monotonic() - started,
                         homes_before=homes)
    result.note = "client connections per node before: " + ", ".join(
        f"node {n + 1}: {c}" for n, c in sorted(connections.items()))
    if name == "mq-stop":
        cluster.stop_mq_node(node)
    else:
        cluster.kill_mq_node(node)
    result.took = time.monotonic() - started - result.at
    result.note += "; " + tools_check(run, "stage_config_manager.py --list")
    time.sleep(max(0.0, result.at + result.took + 3 - (time.monotonic() - started)))
    result.homes_after = queue_homes(run)[1]
    cluster.start_mq_node(node)
    cluster.await_mq_node(node)
    return result


def tools_check(run: Run, command: str) -> str:
    """Run a tool while the member is down: it must find the others through its server list."""
    script, *args = command.split()
    try:
        run.cli(f"scripts/{script}", *args, timeout=60)
        return f"`{command}` with the node down: ok"
    except (ClusterError, subprocess.TimeoutExpired) as error:
        run.tool_failures.append(str(error))
        return f"`{command}` with the node down: FAILED"


def _connections(run: Run) -> dict[int, int]:
    for ask in range(NODES):
        try:
            return run.cluster.connections_per_node(ask)
        except (ClusterError, subprocess.TimeoutExpired):
            continue
    return {}


def _wait_new_leader(cluster: Cluster, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = cluster.zk_leader()
        if leader is not None:
            return leader
        time.sleep(0.05)
    raise ClusterError(f"no new ZooKeeper leader within {timeout:.0f} s")


# --- the run ----------------------------------------------------------------------------------------

def wait_done(run: Run, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.current_output() < run.pages:
        time.sleep(0.5)


def final_download(run: Run) -> tuple[int, int, list[str]]:
    """(requests downloaded, duplicates skipped, page names missing): a last publisher.py --download after the
    long-running one stopped picks up anything still in the output queue."""
    text = run.cli("scripts/publisher.py", "--download", run.stages[2], "--directory", str(run.results),
                   "--no-progress", timeout=300)
    text += (run.work / "download.log").read_text(errors="replace")
    duplicates = sum(int(n) for n in re.findall(r"(\d+) duplicate\(s\) skipped", text))
    names = set()
    failed = 0
    for folder in run.results.iterdir():
        if folder.is_dir() and not folder.name.startswith(("_", ".")):
            names.update(p.name for p in folder.iterdir() if p.suffix == ".png")
            failed += "FAILED" in (folder / "request_info.txt").read_text(errors="replace")
    missing = sorted({f"p{i:04d}.png" for i in range(run.pages)} - names)
    if failed:
        print(f"cluster-failover: {failed} request(s) came back with a FAILED stage", file=sys.stderr)
    return count_downloaded(run.results), duplicates, missing


def stage_depths(run: Run) -> dict[str, int]:
    settings = MQSettings(servers=tuple(parse_address_list(run.cluster.mq_servers(), 5672)))
    with MQSession(settings, name="cluster-failover-check") as session:
        return {stage: session.queue_length(stage) or 0 for stage in run.stages}


def print_table(run: Run, results: list[FaultResult], baseline: tuple[float, int], totals: dict[str, object]) -> None:
    """fault -> results paused -> lost / duplicated.  Loss is known only for the whole run (a page is missing at
    the end); duplicates are those the download skipped from the fault until the next one."""
    lost = totals["lost"]
    print()
    print(f"{'fault':34} {'at s':>6} {'took s':>7} {'results paused s':>17} {'lost':>5} {'dup':>4}  note")
    print(f"{'(baseline: no fault)':34} {'':>6} {'':>7} {baseline[0]:>17.2f} {'':>5} {baseline[1]:>4}")
    for r in results:
        print(f"{r.target:34} {r.at:>6.1f} {r.took:>7.1f} {r.paused:>17.2f} {lost:>5} {r.duplicates:>4}  {r.note}")
    print("(lost: pages missing at the end of the whole run; dup: duplicates the download skipped from the fault "
          "until the next one)")
    for r in results:
        if r.homes_before:
            print(f"  {r.name}: queues before: {r.homes_before}")
            print(f"  {r.name}: queues 3 s after it: {r.homes_after}")
    print("totals: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


def execute(run: Run, faults: list[str]) -> int:
    prepare(run)
    start_workers(run)
    start_download(run)
    monitor_thread = threading.Thread(target=monitor, args=(run,), daemon=True)
    monitor_thread.start()
    print(run.cli("scripts/publisher.py", "--stages", *run.stages, "--directory", str(run.work / "images"),
                  "--no-progress").strip())
    started = time.monotonic()
    results: list[FaultResult] = []
    baseline = 0.0
    for index, name in enumerate(faults):
        # Early enough that pages still flow after the last fault, even when a node's restart is slow.
        target = run.pages * (index + 1) // (len(faults) + 3)
        while run.current_output() < target and time.monotonic() - started < 600:
            time.sleep(0.1)
        if index == 0:
            baseline = stall_after(run.samples, started + 2.0, time.monotonic())
        print(f"cluster-failover: {time.strftime('%H:%M:%S')} {run.current_output()}/{run.pages} results; "
              f"injecting {name}", flush=True)
        results.append(inject(run, name, started))
    wait_done(run, timeout=600)
    finished = next((moment for moment, depth in run.samples if depth >= run.pages), time.monotonic())
    ends = [min(started + r.at, finished) for r in results[1:]] + [finished]
    late = [r.name for r in results if started + r.at >= finished]
    if late:
        print(f"cluster-failover: FAILED: {', '.join(late)} came after the last result, so it was not tested "
              "while pages flowed: give more --pages", file=sys.stderr)
    for result, end in zip(results, ends):
        result.paused = stall_after(run.samples, started + result.at, end)
    run.stop_monitor.set()
    monitor_thread.join(timeout=10)
    bounds = [started + r.at for r in results] + [float("inf")]
    exits = [p.poll() for p in run.workers]
    download_exit = run.downloader.poll() if run.downloader else None
    stop_workers(run)
    download_code = stop_download(run)
    download_note = "exited during the run" if download_exit is not None else "stopped at the end"
    downloaded, duplicates, missing = final_download(run)
    # Duplicates of the last download and the stopped long-running one's last lines count for the last fault.
    run.duplicate_times += [time.monotonic()] * max(0, duplicates - len(run.duplicate_times))
    for index, result in enumerate(results):
        result.duplicates = sum(bounds[index] <= moment < bounds[index + 1] for moment in run.duplicate_times)
    before = sum(moment < bounds[0] for moment in run.duplicate_times)
    left = stage_depths(run)
    totals = {"pages": run.pages, "downloaded": downloaded, "lost": len(missing), "duplicates": duplicates,
              "worker exits during the run": sum(code is not None for code in exits),
              "download exit code": f"{download_code} ({download_note})",
              "left in stage queues": sum(left.values()), "tool failures with a node down": len(run.tool_failures)}
    print_table(run, results, (baseline, before), totals)
    if missing:
        print(f"cluster-failover: LOST {len(missing)} page(s): {', '.join(missing[:20])}", file=sys.stderr)
    problems = (bool(missing) or bool(late) or any(code is not None for code in exits) or any(left.values())
                or download_exit is not None or download_code != 0 or bool(run.tool_failures))
    for failure in run.tool_failures:
        print(f"cluster-failover: {failure}", file=sys.stderr)
    return ExitCode.FAILED if problems else ExitCode.OK


def cleanup(run: Run) -> None:
    """Delete this run's stages and worker records (best effort: the cluster may be what failed)."""
    for stage in run.stages:
        try:
            run.cli("scripts/stage_config_manager.py", "--delete", stage, "--force", timeout=60)
        except (ClusterError, subprocess.TimeoutExpired):
            pass
    for index in range(len(run.workers)):
        try:
            run.cli("scripts/worker_controller.py", "--remove", run.worker_id(index), timeout=60)
        except (ClusterError, subprocess.TimeoutExpired):
            pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.INTERRUPTED))
    parser.add_argument("--pages", type=int, default=800, help="pages to upload (default 800)")
    parser.add_argument("--page-seconds", type=float, default=0.2,
                        help="DUMMY processing time per page and stage, +-25%% (default 0.2)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma separated, in order (default {','.join(FAULTS)})")
    parser.add_argument("--state-dir", type=Path, default=None, help="the cluster's state (see dev/cluster.py)")
    parser.add_argument("--ha-mode", choices=("all", "exactly-2"), default="all",
                        help="mirroring policy of the queues (see dev/cluster.py; default all)")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the cluster running afterwards")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep images, results and worker logs here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        print(f"cluster-failover: unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}",
              file=sys.stderr)
        return ExitCode.USAGE
    cluster = Cluster((args.state_dir or default_state_dir()).resolve(), ha_mode=args.ha_mode)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="pero-cluster-failover-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Run(cluster, work, args.pages, args.page_seconds)
    lock = open(LOCK_FILE, "w")   # noqa: SIM115 - held for the whole run
    if not _try_lock(lock):
        print(f"cluster-failover: another run holds {LOCK_FILE} (the cluster's ports are fixed); waiting",
              flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    code = ExitCode.FAILED
    try:
        cluster.up()
        code = execute(run, faults)
    except (ClusterError, KazooException, MQError, subprocess.TimeoutExpired) as error:
        print(f"cluster-failover: ERROR: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        code = ExitCode.INTERRUPTED
    finally:
        run.stop_monitor.set()
        stop_workers(run)
        stop_download(run)
        cleanup(run)
        if not args.keep_cluster:
            cluster.down()
        lock.close()
    if args.work_dir is None and code == ExitCode.OK:
        shutil.rmtree(work, ignore_errors=True)
    elif code != ExitCode.OK:
        print(f"cluster-failover: images, results, worker and download logs kept in {work}", file=sys.stderr)
    return code


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


if __name__ == "__main__":
    sys.exit(main())
