"""The daemons' /metrics scraped over HTTP while they run against the real ZooKeeper and RabbitMQ.

Each daemon gets port 0 (tests/conftest.py sets PERO_METRICS_ADDRESS) and says where it listens in its log.
"""
from __future__ import annotations

import dataclasses
import io
import re
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from pero_worker.dev.local_services import write_server_lists
from pero_worker.dev.opsplane import (
    REPO,
    Process,
    drain,
    dummy_stage_config,
    make_stage,
    publish_requests,
    start_watchdog,
    start_worker,
    wait_for,
)
from pero_worker.libs import zk_paths
from pero_worker.libs.mq import MQSession, MQSettings
from pero_worker.libs.zk import ZooKeeper

URL = re.compile(r"metrics on (https?://\S+/metrics)")
FAILTEST = "[WORKER]\nFAILTEST = TRUE\n"


def metrics_url(process: Process, timeout: float = 30.0) -> str:
    def found():
        if not process.alive():
            raise AssertionError(f"{process.argv[1]} exited ({process.proc.returncode}):\n{process.log()}")
        match = URL.search(process.log())
        return match.group(1) if match else None
    return wait_for(found, timeout, f"the metrics address in the log of {process.argv[1]}")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(url: str, name: str, **labels: str) -> float | None:
    return scrape(url).get((name, tuple(sorted(labels.items()))))


def wait_value(url: str, name: str, expected: float, timeout: float = 30.0, **labels: str) -> None:
    wait_for(lambda: value(url, name, **labels) == expected, timeout,
             f"{name}{labels} == {expected} (now {value(url, name, **labels)})", interval=0.2)


@pytest.fixture
def mq(zk, conn_config):
    session = MQSession(MQSettings.from_zookeeper(zk, conn_config), name="test-metrics")
    session.open(retry_for=10)
    session.created = []   # type: ignore[attr-defined]
    yield session
    for name in session.created:   # type: ignore[attr-defined]
        try:
            session.delete_queue(name)
        except Exception:
            if not session.is_open:
                session.open(retry_for=5)
    session.close()


@pytest.fixture
def processes():
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


def test_worker_counts_processed_and_failed_requests_per_stage(zk_root, zk, mq, tmp_path, unique_name, processes):
    good, bad, out = unique_name("good"), unique_name("bad"), unique_name("out")
    make_stage(zk_root, good, dummy_stage_config(0.0))
    make_stage(zk_root, bad, FAILTEST)
    make_stage(zk_root, out, None)
    mq.created.extend([good, bad, out])
    worker_id = unique_name("w")
    worker = start_worker(zk_root, worker_id, tmp_path)
    processes.append(worker)
    url = metrics_url(worker)
    wait_value(url, "pero_worker_status", 1, pero_worker_status=zk_paths.IDLE)
    assert value(url, "pero_worker_info", worker_id=worker_id) == 1

    zk.set_text(zk_paths.worker_queue(worker_id), good)
    publish_requests(mq, [good, out], 1)
    wait_value(url, "pero_worker_requests_processed_total", 1, stage=good)
    assert value(url, "pero_worker_requests_failed_total", stage=good, reason="failed") is None   # none yet
    assert value(url, "pero_worker_processing_seconds_count", stage=good) == 1
    assert value(url, "pero_worker_stage_switches_total", stage=good) == 1
    assert value(url, "pero_worker_stage_setup_seconds_count", stage=good) == 1
    assert value(url, "pero_worker_status", pero_worker_status=zk_paths.PROCESSING) == 1
    publish_requests(mq, [good, out], 2)
    wait_value(url, "pero_worker_requests_processed_total", 3, stage=good)

    zk.set_text(zk_paths.worker_queue(worker_id), bad)
    publish_requests(mq, [bad, out], 1)
    wait_value(url, "pero_worker_requests_failed_total", 1, stage=bad, reason="failed")
    assert value(url, "pero_worker_requests_processed_total", stage=bad) == 1
    assert value(url, "pero_worker_processing_seconds_count", stage=bad) == 0   # only successes are timed
    assert value(url, "pero_worker_stage_switches_total", stage=bad) == 1
    wait_for(lambda: len(drain(mq, out)) >= 0 and mq.queue_length(out) == 0, 10, "the output queue emptied")
    assert "Traceback" not in worker.log()


def test_watchdog_reports_leadership_moves_and_queue_depths(zk_root, zk, mq, tmp_path, unique_name, processes):
    stage, out = unique_name("s"), unique_name("out")
    make_stage(zk_root, stage, dummy_stage_config(5.0))
    make_stage(zk_root, out, None)
    mq.created.extend([stage, out])
    publish_requests(mq, [stage, out], 4)
    first = start_watchdog(zk_root, tmp_path, "first", "--state-directory", str(tmp_path / "first"))
    processes.append(first)
    first_url = metrics_url(first)
    wait_value(first_url, "pero_watchdog_leader", 1)
    wait_for(lambda: (value(first_url, "pero_watchdog_queue_ready", stage=stage) or 0) >= 3, 30,
             "the stage's queue depth")
    assert value(first_url, "pero_watchdog_stage_workers", stage=stage) == 0
    assert value(first_url, "pero_watchdog_drain_seconds", stage=stage) == float("inf")

    worker_id = unique_name("w")
    processes.append(start_worker(zk_root, worker_id, tmp_path))
    wait_value(first_url, "pero_watchdog_moves_total", 1, reason="idle_to_unserved")
    wait_value(first_url, "pero_watchdog_stage_workers", 1, stage=stage)
    # The worker prefetched the requests: the estimate is finite now (0 until the management API counts them).
    assert 0 <= value(first_url, "pero_watchdog_drain_seconds", stage=stage) < float("inf")
    assert value(first_url, "pero_watchdog_rounds_total") > 0
    assert value(first_url, "pero_watchdog_planning_seconds_count") > 0

    second = start_watchdog(zk_root, tmp_path, "second", "--state-directory", str(tmp_path / "second"))
    processes.append(second)
    second_url = metrics_url(second)
    wait_for(lambda: "standing for election" in second.log(), 30, "the second watchdog to stand")
    assert value(second_url, "pero_watchdog_leader") == 0
    assert value(second_url, "pero_watchdog_queue_ready", stage=stage) is None   # a standby shows no stale view
    assert first.stop() == 0
    wait_value(second_url, "pero_watchdog_leader", 1)
    assert "Traceback" not in first.log() + second.log()


def test_log_daemon_counts_lines_written_and_reports_its_backlog(zk_root, zk, mq, tmp_path, unique_name, processes):
    queue = unique_name("log")
    assert mq.declare_shared_queue(queue) is None
    mq.created.append(queue)
    for number in range(7):
        mq.publish(queue, f"line {number}".encode())
    assert mq.wait_for_confirms(timeout=10)
    daemon = Process([sys.executable, str(REPO / "log_daemon" / "log_daemon.py"), "-z", zk_root, "-q", queue,
                      "-o", str(tmp_path / "logs")], tmp_path / "logd.log")
    processes.append(daemon)
    url = metrics_url(daemon)
    wait_value(url, "pero_logd_lines_written_total", 7)
    wait_value(url, "pero_logd_backlog", 0)
    mq.publish(queue, b"one more")
    assert mq.wait_for_confirms(timeout=10)
    wait_value(url, "pero_logd_lines_written_total", 8)
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()


@pytest.mark.parametrize("daemon, argv", [
    ("worker", ["worker/run_worker.py", "-i", "metrics_port_taken"]),
    ("watchdog", ["watchdog/worker_watchdog.py"]),
    ("log_daemon", ["log_daemon/log_daemon.py", "-o", "{tmp}/logs"]),
])
def test_a_metrics_port_in_use_exits_2_with_one_line(daemon, argv, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, *[arg.replace("{tmp}", str(tmp_path)) for arg in argv], "-z", "127.0.0.1:1",
                   "--metrics-address", f"127.0.0.1:{port}"]
        if daemon == "worker":
            command += ["--cache-directory", str(tmp_path / "cache")]
        if daemon == "watchdog":
            command += ["--state-directory", str(tmp_path / "state")]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"metrics address 127.0.0.1:{port}: the port is in use" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


def test_bad_metrics_address_exits_2(tmp_path: Path):
    result = subprocess.run([sys.executable, "log_daemon/log_daemon.py", "-z", "127.0.0.1:1", "--metrics-address",
                             "127.0.0.1:notaport"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "log_daemon.py: error: invalid port in metrics address '127.0.0.1:notaport'"


def _model_archive(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        data = b"weights " * 4000
        info = tarfile.TarInfo("weights.bin")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def auth_zk(conn_config, services):
    """The test's chroot as the services' user: a stage made with -u carries that user's ACL."""
    client = ZooKeeper(dataclasses.replace(conn_config, username=services.user, password=services.password)).start()
    write_server_lists(client, services)
    yield client
    client.delete("/pero", recursive=True)   # only this user may remove its nodes
    client.stop()


def test_worker_times_the_model_download_and_unpack(zk_root, mq, auth_zk, services, tmp_path, unique_name,
                                                    processes):
    zk = auth_zk
    auth = ["-u", services.user, "--password-file", str(services.password_file)]
    stage, out = unique_name("model"), unique_name("out")
    config = tmp_path / "stage.ini"
    config.write_text(dummy_stage_config(0.0))
    created = subprocess.run([sys.executable, "scripts/stage_config_manager.py", "-z", zk_root, *auth, "--name", stage,
                              "--config", str(config), "--file", str(_model_archive(tmp_path / "model.tar.gz"))],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    make_stage(zk_root, out, None, extra=tuple(auth))
    mq.created.extend([stage, out])
    worker_id = unique_name("w")
    worker = Process([sys.executable, "worker/run_worker.py", "-z", zk_root, *auth, "-i", worker_id,
                      "--cache-directory", str(tmp_path / "cache"), "--disable-remote-logging"], tmp_path / "w.log")
    processes.append(worker)
    url = metrics_url(worker)
    wait_value(url, "pero_worker_status", 1, pero_worker_status=zk_paths.IDLE)
    assert value(url, "pero_worker_model_download_seconds_count", stage=stage) is None
    zk.set_text(zk_paths.worker_queue(worker_id), stage)
    wait_value(url, "pero_worker_stage_switches_total", 1, stage=stage, timeout=60)
    assert value(url, "pero_worker_model_download_seconds_count", stage=stage) == 1
    assert value(url, "pero_worker_model_unpack_seconds_count", stage=stage) == 1
    assert value(url, "pero_worker_model_download_seconds_sum", stage=stage) > 0
    assert value(url, "pero_worker_stage_setup_seconds_sum", stage=stage) >= \
        value(url, "pero_worker_model_download_seconds_sum", stage=stage)
