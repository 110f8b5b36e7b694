"""The watchdog as operators run it, against real ZooKeeper, RabbitMQ and worker processes (DUMMY stages)."""
from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from pero_worker.dev.opsplane import (
    WATCHDOG,
    Process,
    drain,
    dummy_stage_config,
    make_stage,
    publish_requests,
    start_watchdog,
    start_worker,
    wait_for,
    worker_connected,
    worker_queue,
)
from pero_worker.libs import zk_paths
from pero_worker.libs.mq import MQSession, MQSettings


class Env:
    def __init__(self, zk_root, zk, mq, folder: Path, unique_name) -> None:
        self.zk_root, self.zk, self.mq, self.folder, self.unique_name = zk_root, zk, mq, folder, unique_name
        self.processes: list[Process] = []
        self.queues: list[str] = []

    def stage(self, prefix: str, seconds: float, *, priority: int = 0) -> str:
        name = self.unique_name(prefix)
        make_stage(self.zk_root, name, dummy_stage_config(seconds), priority=priority)
        self.queues.append(name)
        return name

    def output(self) -> str:
        name = self.unique_name("out")
        make_stage(self.zk_root, name, None)
        self.queues.append(name)
        return name

    def worker(self) -> str:
        worker_id = self.unique_name("w")
        process = start_worker(self.zk_root, worker_id, self.folder)
        self.processes.append(process)
        wait_for(lambda: worker_connected(self.zk, worker_id)
                 and self.zk.get_text(zk_paths.worker_status(worker_id)) == zk_paths.IDLE,
                 30, f"worker {worker_id} registered and idle")
        return worker_id

    def watchdog(self, name: str = "wd", *extra: str) -> Process:
        process = start_watchdog(self.zk_root, self.folder, name, *extra)
        self.processes.append(process)
        return process

    def collect(self, queue: str, count: int, timeout: float) -> set[str]:
        seen: set[str] = set()

        def check():
            seen.update(r.uuid for r in drain(self.mq, queue))
            return len(seen) >= count
        wait_for(check, timeout, f"{count} requests in {queue} (got {len(seen)})", interval=0.2)
        return seen


def active(process: Process) -> bool:
    return "is now ACTIVE" in process.log()


@pytest.fixture
def env(zk_root, zk, conn_config, tmp_path, unique_name):
    mq = MQSession(MQSettings.from_zookeeper(zk, conn_config), name="test-watchdog")
    mq.open(retry_for=10)
    environment = Env(zk_root, zk, mq, tmp_path, unique_name)
    yield environment
    for process in reversed(environment.processes):
        process.stop()
    for name in environment.queues:
        try:
            mq.delete_queue(name)
        except Exception:
            if not mq.is_open:
                mq.open(retry_for=5)
    mq.close()


def dump(env: Env) -> str:
    return "\n".join(f"--- {p.log_path.name}\n{p.log()[-3000:]}" for p in env.processes)


def test_idle_worker_is_assigned_to_a_loaded_queue_within_about_a_second(env):
    stage, out = env.stage("a", 0.02), env.output()
    worker = env.worker()
    watchdog = env.watchdog()
    wait_for(lambda: active(watchdog), 20, "an active watchdog")
    ids = publish_requests(env.mq, [stage, out], 20)
    published = time.monotonic()
    wait_for(lambda: worker_queue(env.zk, worker) == stage, 10, "the worker assigned", interval=0.05)
    latency = time.monotonic() - published
    print(f"idle worker assigned after {latency:.2f} s")
    assert latency < 2.5, f"idle worker assigned after {latency:.2f} s\n{dump(env)}"
    assert env.collect(out, len(ids), 30) == set(ids)
    wait_for(lambda: env.zk.get_text(zk_paths.stage_waiting_since(stage)) == "", 5, "waiting_since cleared")
    unlock = env.zk.get_text(zk_paths.worker_unlock_time(worker))
    assert unlock.endswith("+00:00"), unlock


def test_load_shifting_from_one_stage_to_another_moves_the_workers(env):
    a, b, out = env.stage("a", 0.05), env.stage("b", 0.05), env.output()
    workers = [env.worker(), env.worker()]
    watchdog = env.watchdog()
    wait_for(lambda: active(watchdog), 20, "an active watchdog")
    first = publish_requests(env.mq, [a, out], 80)
    wait_for(lambda: all(worker_queue(env.zk, w) == a for w in workers), 10, "both workers on stage a")
    assert env.collect(out, len(first), 60) == set(first)
    second = publish_requests(env.mq, [b, out], 80)
    try:
        wait_for(lambda: all(worker_queue(env.zk, w) == b for w in workers), 15, "both workers moved to stage b")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{dump(env)}") from None
    assert env.collect(out, len(second), 60) == set(second)


def test_stage_with_administrative_priority_minus_one_stays_unserved(env):
    disabled, other, out = env.stage("off", 0.01, priority=-1), env.stage("on", 0.01), env.output()
    worker = env.worker()
    watchdog = env.watchdog()
    wait_for(lambda: active(watchdog), 20, "an active watchdog")
    publish_requests(env.mq, [disabled, out], 10)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        assert worker_queue(env.zk, worker) != disabled, "a disabled stage was served"
        time.sleep(0.1)
    assert env.mq.queue_length(disabled) == 10
    assert env.zk.get_text(zk_paths.stage_waiting_since(disabled)) != "", "waiting_since records the wait"
    # The watchdog is alive and serves the stage that is not disabled.
    ids = publish_requests(env.mq, [other, out], 5)
    assert env.collect(out, 5, 20) == set(ids)
    assert worker_queue(env.zk, worker) == other


def test_killing_the_active_watchdog_hands_over_to_a_standby(env):
    stage, out = env.stage("a", 0.01), env.output()
    worker = env.worker()
    first = env.watchdog("first", "--session-timeout", "4")
    wait_for(lambda: active(first), 20, "the first watchdog active")
    second = env.watchdog("second", "--session-timeout", "4")
    wait_for(lambda: "standing for election" in second.log(), 20, "the second watchdog standing by")
    time.sleep(2)
    assert not active(second), "two active watchdogs"
    first.kill9()
    killed = time.monotonic()
    wait_for(lambda: active(second), 15, "the standby taking over", interval=0.1)
    handover = time.monotonic() - killed
    print(f"handover after kill -9: {handover:.1f} s (session timeout 4 s)")
    assert handover < 4 + 4, f"handover took {handover:.1f} s"
    ids = publish_requests(env.mq, [stage, out], 5)
    assert env.collect(out, 5, 20) == set(ids)
    assert worker_queue(env.zk, worker) == stage


def test_clean_stop_hands_over_at_once(env):
    first = env.watchdog("first")
    wait_for(lambda: active(first), 20, "the first watchdog active")
    second = env.watchdog("second")
    wait_for(lambda: "standing for election" in second.log(), 20, "the second watchdog standing by")
    assert first.stop() == 0
    stopped = time.monotonic()
    wait_for(lambda: active(second), 5, "the standby taking over")
    assert time.monotonic() - stopped < 3


def test_dry_run_prints_state_and_moves_and_writes_nothing(env):
    stage, out = env.stage("a", 0.01), env.output()
    worker = env.worker()
    publish_requests(env.mq, [stage, out], 3)
    result = subprocess.run([sys.executable, str(WATCHDOG), "-z", env.zk_root, "--dry-run"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "WORKERS" in text and "STAGES" in text and "MOVES THE WATCHDOG WOULD MAKE" in text
    moves = text.split("MOVES THE WATCHDOG WOULD MAKE", 1)[1]
    assert worker in moves and stage in moves, text
    assert worker_queue(env.zk, worker) == "", "a dry run must not move anybody"
    assert env.zk.get_text(zk_paths.stage_waiting_since(stage)) == ""


def test_bad_configuration_exits_2(tmp_path):
    ini = tmp_path / "watchdog.ini"
    ini.write_text("[WATCHDOG]\nzookeeper_servers = 127.0.0.1:2181\ninterval = soon\n")
    result = subprocess.run([sys.executable, str(WATCHDOG), "-c", str(ini)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert "interval" in result.stderr


def test_starving_queue_gets_a_busy_worker_within_ten_seconds(env):
    busy, starving, out = env.stage("busy", 0.05), env.stage("starving", 0.01), env.output()
    worker = env.worker()
    watchdog = env.watchdog()
    wait_for(lambda: active(watchdog), 20, "an active watchdog")
    publish_requests(env.mq, [busy, out], 400)   # 20 s of work for the only worker
    wait_for(lambda: worker_queue(env.zk, worker) == busy, 10, "the worker on the busy stage")
    wait_for(lambda: env.zk.get_text(zk_paths.worker_status(worker)) == zk_paths.PROCESSING, 10, "processing")
    ids = publish_requests(env.mq, [starving, out], 3)
    published = time.monotonic()
    wait_for(lambda: worker_queue(env.zk, worker) == starving, 12, "the starving stage served", interval=0.05)
    latency = time.monotonic() - published
    print(f"starving stage served after {latency:.1f} s")
    assert latency <= 10, f"starving stage waited {latency:.1f} s"
    served = env.collect(out, 403, 60)
    assert set(ids) <= served


def test_the_output_stage_never_receives_a_worker_while_results_wait_there(env):
    """Issue 8.1: `stage_config_manager.py --name out` writes an empty config; results wait in its queue until
    the downloader fetches them.  The watchdog must treat it as what it is, not as a starving stage."""
    stage, out = env.stage("a", 0.01), env.output()
    worker = env.worker()
    watchdog = env.watchdog()
    wait_for(lambda: active(watchdog), 20, "an active watchdog")
    ids = publish_requests(env.mq, [stage, out], 30)
    wait_for(lambda: env.mq.queue_length(out) == 30, 30, "30 results waiting in the output queue")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert worker_queue(env.zk, worker) != out, f"a worker was sent to the output stage\n{dump(env)}"
        time.sleep(0.1)
    assert env.zk.get_text(zk_paths.worker_status(worker)) != zk_paths.CONFIGURATION_FAILED
    assert env.collect(out, 30, 10) == set(ids)
    dry = subprocess.run([sys.executable, str(WATCHDOG), "-z", env.zk_root, "--dry-run"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "NOT PROCESSING STAGES" in dry.stdout and out in dry.stdout.split("NOT PROCESSING STAGES", 1)[1]


def fake_original_worker(zk, worker_id: str, stage: str, status: str = zk_paths.IDLE) -> None:
    """The nodes an original worker keeps after its queue ran empty: status IDLE, its stage in `queue`,
    the ephemeral `connected` node of its session.  It only looks at the queue again when `queue` is rewritten."""
    zk.set_text(zk_paths.worker_status(worker_id), status)
    zk.create(zk_paths.worker_connected(worker_id), b"true", ephemeral=True)
    zk.set_text(zk_paths.worker_queue(worker_id), stage)
    zk.set_text(zk_paths.worker_enabled(worker_id), "true")
    zk.set_text(zk_paths.worker_unlock_time(worker_id), "2000-01-01T00:00:00+00:00")


def node_version(zk, path: str) -> int:
    return zk.client.exists(path).version


def test_an_idle_original_worker_is_woken_by_rewriting_its_queue_node(env):
    """Issue 8.3: an original worker that emptied its queue stays IDLE on the stage until its `queue` node is
    rewritten (the original worker reacts to every new version of the node, same value or not)."""
    stage, out = env.stage("a", 0.01), env.output()
    original = env.unique_name("orig")
    fake_original_worker(env.zk, original, stage)
    queue_node = zk_paths.worker_queue(original)
    watchdog = env.watchdog()
    wait_for(lambda: active(watchdog), 20, "an active watchdog")
    before = node_version(env.zk, queue_node)
    time.sleep(2)
    assert node_version(env.zk, queue_node) == before, "no work: the idle worker is left alone"
    publish_requests(env.mq, [stage, out], 20)
    published = time.monotonic()
    wait_for(lambda: node_version(env.zk, queue_node) > before, 10, "the queue node rewritten", interval=0.05)
    print(f"idle original worker woken {time.monotonic() - published:.2f} s after the requests arrived")
    assert env.zk.get(queue_node) == stage.encode(), "same stage, new node version"
    assert time.monotonic() - published < 3
    # It starts processing: no more rewrites while it does.
    env.zk.set_text(zk_paths.worker_status(original), zk_paths.PROCESSING)
    time.sleep(1)
    settled = node_version(env.zk, queue_node)
    time.sleep(3)
    assert node_version(env.zk, queue_node) == settled, f"a processing worker is not woken\n{dump(env)}"
    for name in (stage,):
        env.mq.purge_queue(name)


def log_time(text: str, marker: str) -> datetime:
    """UTC time of the first log line containing `marker` (daemon log format: 'YYYY-mm-dd HH:MM:SS,mmm TAG ...')."""
    line = next(line for line in text.splitlines() if marker in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_a_watchdog_restarted_after_kill9_closes_its_predecessors_session_and_is_active_at_once(env):
    """Issue 8.2: the restarted watchdog used to wait ~the session timeout for its killed predecessor's
    election node; it keeps its session in its state directory and closes it, as the worker does."""
    state = env.folder / "watchdog-state"
    first = env.watchdog("first", "--state-directory", str(state))
    wait_for(lambda: active(first), 20, "the first watchdog active")
    assert list(state.glob("watchdog-*.session")), "the session is kept on disk"
    first.kill9()
    killed = time.monotonic()
    second = env.watchdog("second", "--state-directory", str(state))
    wait_for(lambda: active(second), 15, "the restarted watchdog active", interval=0.05)
    wall = time.monotonic() - killed
    text = second.log()
    inside = (log_time(text, "is now ACTIVE") - log_time(text, "starting")).total_seconds()
    print(f"restarted watchdog active {inside:.2f} s after it started ({wall:.2f} s after the kill, "
          "session timeout 10 s)")
    assert "closed the ZooKeeper session" in text, text
    assert inside <= 1.0, text
    assert wall < 5, "waited for the old session to expire"
    assert second.stop() == 0
    assert not list(state.glob("watchdog-*.session")), "a clean stop leaves no session behind"


def test_two_watchdogs_on_one_host_keep_separate_session_files(env):
    state = env.folder / "watchdog-state"
    first = env.watchdog("first", "--state-directory", str(state))
    wait_for(lambda: active(first), 20, "the first watchdog active")
    second = env.watchdog("second", "--state-directory", str(state))
    wait_for(lambda: "standing for election" in second.log(), 20, "the second standing by")
    time.sleep(1)
    assert active(first) and not active(second), "a standby never closes the live active one's session"
    assert len(list(state.glob("watchdog-*.session"))) == 2
