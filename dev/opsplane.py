"""Helpers for the operations-plane tests and bench: real worker and watchdog processes, DUMMY stages.

Not a test module: imported by tests/test_watchdog*.py, tests/test_worker_controller.py and
bench/scheduling.py.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pero_worker.libs import zk_paths
from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.mq import MQSession
from pero_worker.libs.zk import ZooKeeper

REPO = Path(__file__).resolve().parent.parent
RUN_WORKER = REPO / "worker" / "run_worker.py"
WATCHDOG = REPO / "watchdog" / "worker_watchdog.py"


def dummy_stage_config(seconds: float, switch_delay: float | None = None) -> str:
    """DUMMY stage taking exactly `seconds` per request (TIME_SCALE 0, TIME_DIFF_MIN = MAX)."""
    text = f"[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\nTIME_DIFF_MIN = {seconds!r}\nTIME_DIFF_MAX = {seconds!r}\n"
    if switch_delay is not None:
        text += f"SWITCH_DELAY = {switch_delay!r}\n"
    return text


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Process:
    """A child process with its output in a file (read it on failure)."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# Many workers and watchdogs on one host: each serves /metrics on a free port (logged), not its fixed default.
ANY_METRICS_PORT = ["--metrics-address", "127.0.0.1:0"]


def start_worker(zk_root: str, worker_id: str, folder: Path) -> Process:
    argv = [sys.executable, str(RUN_WORKER), "-z", zk_root, "-i", worker_id,
            "--cache-directory", str(folder / f"cache_{worker_id}"), "--disable-remote-logging", *ANY_METRICS_PORT]
    return Process(argv, folder / f"worker_{worker_id}.log")


def start_watchdog(zk_root: str, folder: Path, name: str, *extra: str) -> Process:
    argv = [sys.executable, str(WATCHDOG), "-z", zk_root, *ANY_METRICS_PORT, *extra]
    return Process(argv, folder / f"watchdog_{name}.log")


STAGE_CONFIG_MANAGER = REPO / "scripts" / "stage_config_manager.py"


def make_stage(zk_root: str, name: str, config: str | None, *, priority: int | None = None,
               extra: tuple[str, ...] = ()) -> None:
    """A stage made the way users make one: `scripts/stage_config_manager.py --name NAME [--config FILE] [-a P]`.

    `config` None makes an output stage (`--name out`, no config), exactly what a README
    deployment gets; the CLI declares the queue and writes every ZooKeeper node.  `extra`:
    more options, e.g. credentials (-u USER --password-file FILE).
    """
    argv = [sys.executable, str(STAGE_CONFIG_MANAGER), "-z", zk_root, *extra, "--name", name]
    if priority is not None:
        argv += ["-a", str(priority)]
    with tempfile.TemporaryDirectory(prefix="pero_stage_") as folder:
        if config is not None:
            path = Path(folder) / "config.ini"
            path.write_text(config, encoding="utf-8")
            argv += ["--config", str(path)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    if result.returncode != 0:
        raise AssertionError(f"stage_config_manager.py --name {name} failed ({result.returncode}): "
                             f"{result.stdout}{result.stderr}")


def request_body(stages: list[str], request_id: str | None = None) -> bytes:
    request = ProcessingRequest(uuid=request_id or uuid.uuid4().hex, page_uuid=uuid.uuid4().hex,
                                processing_stages=stages)
    request.start_time.GetCurrentTime()
    request.results.add(name="page.jpg", content=b"\xff\xd8\xff\xe0 fake jpeg")
    return request.SerializeToString()


def publish_requests(mq: MQSession, stages: list[str], count: int) -> list[str]:
    ids = [uuid.uuid4().hex for _ in range(count)]
    for request_id in ids:
        mq.publish(stages[0], request_body(stages, request_id))
    assert mq.wait_for_confirms(timeout=30), "broker did not confirm the requests"
    return ids


def drain(mq: MQSession, queue: str) -> list[ProcessingRequest]:
    """Take (and ack) everything now in `queue`."""
    found = []
    while True:
        delivery = mq.get(queue)
        if delivery is None:
            return found
        request = ProcessingRequest()
        request.ParseFromString(delivery.body)
        found.append(request)
        mq.ack(delivery.delivery_tag)


def worker_queue(zk: ZooKeeper, worker_id: str) -> str:
    return zk.get_text(zk_paths.worker_queue(worker_id))


def worker_connected(zk: ZooKeeper, worker_id: str) -> bool:
    return zk.exists(zk_paths.worker_connected(worker_id))
