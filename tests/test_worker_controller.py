"""scripts/worker_controller.py against live worker processes (real ZooKeeper and RabbitMQ)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pero_worker.dev.opsplane import (
    REPO,
    drain,
    dummy_stage_config,
    make_stage,
    publish_requests,
    start_worker,
    wait_for,
    worker_connected,
    worker_queue,
)
from pero_worker.libs import zk_paths
from pero_worker.libs.mq import MQSession, MQSettings

CONTROLLER = REPO / "scripts" / "worker_controller.py"


def controller(zk_root: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CONTROLLER), "-z", zk_root, *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def live(zk_root, zk, conn_config, tmp_path, unique_name):
    """One live idle worker, one DUMMY stage and an output queue."""
    mq = MQSession(MQSettings.from_zookeeper(zk, conn_config), name="test-controller")
    mq.open(retry_for=10)
    stage, out = unique_name("stage"), unique_name("out")
    make_stage(zk_root, stage, dummy_stage_config(0.01))
    make_stage(zk_root, out, None)
    worker_id = unique_name("w")
    process = start_worker(zk_root, worker_id, tmp_path)
    wait_for(lambda: worker_connected(zk, worker_id)
             and zk.get_text(zk_paths.worker_status(worker_id)) == zk_paths.IDLE, 30, "worker idle")
    yield {"mq": mq, "stage": stage, "out": out, "worker": worker_id, "process": process}
    process.stop()
    for name in (stage, out):
        mq.delete_queue(name)
    mq.close()


def test_status_lists_live_workers(zk_root, live):
    result = controller(zk_root, "-s")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith(live["worker"]))
    assert "IDLE" in row and "yes" in row
    assert "watchdog: none running" in result.stdout


def test_switch_makes_a_live_worker_process_the_stage(zk_root, zk, live):
    mq, stage, out, worker = live["mq"], live["stage"], live["out"], live["worker"]
    result = controller(zk_root, "-i", worker, stage)
    assert result.returncode == 0, result.stderr
    assert worker_queue(zk, worker) == stage
    wait_for(lambda: zk.get_text(zk_paths.worker_status(worker)) == zk_paths.PROCESSING, 20, "worker consuming")
    ids = publish_requests(mq, [stage, out], 5)
    seen: set[str] = set()
    wait_for(lambda: seen.update(r.uuid for r in drain(mq, out)) or seen >= set(ids), 20, "requests processed")
    queues = controller(zk_root, "-q")
    assert queues.returncode == 0, queues.stderr
    row = next(line for line in queues.stdout.splitlines() if line.startswith(stage))
    assert worker in row


def test_switch_to_an_unknown_stage_is_refused(zk_root, zk, live):
    result = controller(zk_root, "-i", live["worker"], "no_such_stage")
    assert result.returncode == 1
    assert "not a processing stage: no config node" in result.stderr
    assert worker_queue(zk, live["worker"]) == ""
    output = controller(zk_root, "-i", live["worker"], live["out"])   # made by stage_config_manager --name out
    assert output.returncode == 1 and "not a processing stage: empty config (output stage)" in output.stderr
    assert worker_queue(zk, live["worker"]) == ""
    assert controller(zk_root, "-i", "nobody", live["stage"]).returncode == 1


def test_shutdown_stops_a_live_worker_and_remove_deletes_its_record(zk_root, zk, live):
    worker, process = live["worker"], live["process"]
    refused = controller(zk_root, "-r", worker)
    assert refused.returncode == 1 and "connected" in refused.stderr
    assert zk.exists(zk_paths.worker_root(worker))
    result = controller(zk_root, "-d", worker, "--wait", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    assert process.proc.wait(20) == 0
    assert zk.get_text(zk_paths.worker_enabled(worker)) == "false"
    removed = controller(zk_root, "-r", worker)
    assert removed.returncode == 0, removed.stderr
    assert not zk.exists(zk_paths.worker_root(worker))
