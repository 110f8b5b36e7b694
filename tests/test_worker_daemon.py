"""The worker as users run it: a real subprocess against the real ZooKeeper and RabbitMQ.

Every test works in its own ZooKeeper chroot with unique stage (queue) names;
stages are created by writing their ZooKeeper nodes and declaring their queues.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from pero_worker.libs import zk_paths
from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.mq import DEAD_LETTER_QUEUE, MQSession, MQSettings
from pero_worker.libs.zk import ZooKeeper

REPO = Path(__file__).resolve().parent.parent
RUN_WORKER = REPO / "worker" / "run_worker.py"

DUMMY_FAST = "[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\n"
FAILTEST = "[WORKER]\nFAILTEST = TRUE\n"


def dummy_config(seconds_per_byte: float) -> str:
    return f"[WORKER]\nDUMMY = TRUE\nTIME_SCALE = {seconds_per_byte!r}\n"


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Worker:
    """One `python worker/run_worker.py` process."""

    def __init__(self, zk_root: str, zk: ZooKeeper, worker_id: str, cache_dir: Path, log_path: Path,
                 extra: list[str] | None = None) -> None:
        self.zk = zk
        self.worker_id = worker_id
        self.log_path = log_path
        argv = [sys.executable, str(RUN_WORKER), "-z", zk_root, "-i", worker_id,
                "--cache-directory", str(cache_dir)] + (extra if extra is not None else ["--disable-remote-logging"])
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    @property
    def status(self) -> str:
        return self.zk.get_text(zk_paths.worker_status(self.worker_id))

    def wait_status(self, *words: str, timeout: float = 20.0) -> str:
        def check():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            return self.status if self.status in words else None
        try:
            return wait_for(check, timeout, f"status {words} of worker {self.worker_id}")
        except AssertionError as error:
            raise AssertionError(f"{error}; status is {self.status!r}; log:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit within {timeout} s; log:\n{self.log()}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def mq(zk: ZooKeeper, conn_config) -> Iterator[MQSession]:
    session = MQSession(MQSettings.from_zookeeper(zk, conn_config), name="test_worker_daemon")
    session.open(retry_for=10)
    session.created: list[str] = []  # type: ignore[attr-defined]
    yield session
    for name in session.created:  # type: ignore[attr-defined]
        try:
            session.delete_queue(name)
        except Exception:
            if not session.is_open:
                session.open(retry_for=5)
    session.close()


@pytest.fixture
def start_worker(zk_root: str, zk: ZooKeeper, tmp_path: Path, unique_name) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(worker_id: str | None = None, *, cache_dir: Path | None = None, extra: list[str] | None = None,
              root: str | None = None) -> Worker:
        worker_id = worker_id or unique_name("w")
        cache = cache_dir or (tmp_path / f"cache_{worker_id}")
        worker = Worker(root or zk_root, zk, worker_id, cache, tmp_path / f"{worker_id}_{len(workers)}.log", extra)
        workers.append(worker)
        return worker
    yield start
    for worker in workers:
        worker.stop()


def make_stage(zk: ZooKeeper, mq: MQSession, name: str, config: str | None, *, version: str = "1",
               config_path: str = "", declare: bool = True) -> None:
    if config is not None:
        zk.set_text(zk_paths.stage_config(name), config)
        zk.set_text(zk_paths.stage_config_path(name), config_path)
        zk.set_text(zk_paths.stage_config_version(name), version)
    if declare:
        mq.declare_stage_queue(name)
        mq.created.append(name)  # type: ignore[attr-defined]


def request_body(stages: list[str], *, content: bytes = b"\xff\xd8\xff\xe0 fake jpeg", request_id: str | None = None,
                 priority: int = 0) -> bytes:
    request = ProcessingRequest(uuid=request_id or uuid.uuid4().hex, page_uuid=uuid.uuid4().hex, priority=priority,
                                processing_stages=stages)
    request.start_time.GetCurrentTime()
    request.results.add(name="page.jpg", content=content)
    return request.SerializeToString()


def publish(mq: MQSession, queue: str, body: bytes, priority: int = 0) -> None:
    assert mq.publish_and_wait(queue, body, priority=priority).value == "confirmed"


def collect(mq: MQSession, queue: str, count: int, timeout: float = 20.0) -> list[ProcessingRequest]:
    """Take `count` requests from `queue` (acked)."""
    found: list[ProcessingRequest] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        delivery = mq.get(queue)
        if delivery is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(found)} of {count} requests arrived in {queue}")
            mq.pump(0.05)
            continue
        request = ProcessingRequest()
        request.ParseFromString(delivery.body)
        found.append(request)
        mq.ack(delivery.delivery_tag)
    return found


def collect_dead_letters(mq: MQSession, source_queue: str, count: int, timeout: float = 20.0) -> list:
    """Our dead letters (by source queue header); others' go back (the queue is shared by parallel runs).

    Others' letters are held unacknowledged until the end, so each get reaches the next message: one requeued
    at once goes back to the head of the queue, and the loop would read it forever behind a stale letter."""
    found, others = [], []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(found)} of {count} dead letters from {source_queue}")
            delivery = mq.get(DEAD_LETTER_QUEUE)
            if delivery is None:
                mq.pump(0.1)
            elif delivery.headers.get("source_queue") == source_queue:
                found.append(delivery)
                mq.ack(delivery.delivery_tag)
            else:
                others.append(delivery)
    finally:
        for delivery in others:
            mq.nack(delivery.delivery_tag, requeue=True)
    return found


# --- registration, status, stopping ----------------------------------------------------------

def test_registers_and_stops_on_sigterm(start_worker, zk: ZooKeeper) -> None:
    worker = start_worker()
    wid = worker.worker_id
    worker.wait_status(zk_paths.IDLE)
    assert zk.exists(zk_paths.worker_connected(wid))
    assert zk.ephemeral_owner(zk_paths.worker_connected(wid)) is not None
    assert zk.get_text(zk_paths.worker_enabled(wid)) == "true"
    assert zk.get_text(zk_paths.worker_queue(wid)) == ""
    assert zk.get_text(zk_paths.worker_unlock_time(wid)).startswith("20")
    rss_kb = int([line for line in Path(f"/proc/{worker.proc.pid}/status").read_text().splitlines()
                  if line.startswith("VmRSS:")][0].split()[1])
    assert rss_kb < 60 * 1024, f"idle worker uses {rss_kb / 1024:.0f} MB"
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(5) == 0
    assert zk.get_text(zk_paths.worker_status(wid)) == zk_paths.DEAD
    assert not zk.exists(zk_paths.worker_connected(wid))
    assert "Traceback" not in worker.log()


def test_sigint_stops_cleanly(start_worker, zk: ZooKeeper) -> None:
    worker = start_worker()
    worker.wait_status(zk_paths.IDLE)
    worker.proc.send_signal(signal.SIGINT)
    assert worker.wait_exit(5) == 0
    assert worker.status == zk_paths.DEAD
    assert "Traceback" not in worker.log()


def test_enabled_false_stops_within_two_seconds(start_worker, zk: ZooKeeper, mq: MQSession, unique_name) -> None:
    stage, out = unique_name("s"), unique_name("out")
    make_stage(zk, mq, stage, DUMMY_FAST)
    make_stage(zk, mq, out, None)
    worker = start_worker()
    zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
    worker.wait_status(zk_paths.PROCESSING)
    started = time.monotonic()
    zk.set_text(zk_paths.worker_enabled(worker.worker_id), "false")
    assert worker.wait_exit(5) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"stopping took {elapsed:.2f} s"
    assert worker.status == zk_paths.DEAD


def test_keeps_queue_assignment_across_restart(start_worker, zk: ZooKeeper, mq: MQSession, unique_name,
                                               tmp_path: Path) -> None:
    stage = unique_name("s")
    make_stage(zk, mq, stage, DUMMY_FAST)
    wid = unique_name("w")
    zk.set_text(zk_paths.worker_queue(wid), stage)     # assigned before the worker ever ran
    worker = start_worker(wid)
    worker.wait_status(zk_paths.PROCESSING)
    worker.stop()
    assert zk.get_text(zk_paths.worker_queue(wid)) == stage
    worker = start_worker(wid, cache_dir=tmp_path / f"cache_{wid}")
    worker.wait_status(zk_paths.PROCESSING)


def test_duplicate_live_id_is_refused(start_worker, zk: ZooKeeper, tmp_path: Path) -> None:
    first = start_worker()
    first.wait_status(zk_paths.IDLE)
    owner = zk.ephemeral_owner(zk_paths.worker_connected(first.worker_id))
    # another host (another cache directory): refused by the live ZooKeeper session
    second = start_worker(first.worker_id, cache_dir=tmp_path / "elsewhere")
    assert second.wait_exit(10) == 5   # ExitCode.DUPLICATE_WORKER
    assert "in use by another live ZooKeeper session" in second.log()
    # the same host and cache directory: refused by the lock file
    third = start_worker(first.worker_id, cache_dir=tmp_path / f"cache_{first.worker_id}")
    assert third.wait_exit(10) == 5
    assert "is running on this host" in third.log()
    # the first one is untouched
    assert first.proc.poll() is None
    assert first.status == zk_paths.IDLE
    assert zk.ephemeral_owner(zk_paths.worker_connected(first.worker_id)) == owner


# --- processing ----------------------------------------------------------------------------------------

def test_dummy_stage_routes_to_next_stage_with_stage_log(start_worker, zk: ZooKeeper, mq: MQSession,
                                                         unique_name) -> None:
    stage, middle, out = unique_name("s"), unique_name("mid"), unique_name("out")
    make_stage(zk, mq, stage, DUMMY_FAST, version="v7")
    make_stage(zk, mq, middle, None)
    worker = start_worker()
    zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
    worker.wait_status(zk_paths.PROCESSING)
    ids = [uuid.uuid4().hex for _ in range(5)]
    for number, request_id in enumerate(ids):
        publish(mq, stage, request_body([stage, middle, out], request_id=request_id, priority=number % 2),
                priority=number % 2)
    results = collect(mq, middle, 5)
    assert sorted(r.uuid for r in results) == sorted(ids)
    for request in results:
        assert list(request.processing_stages) == [middle, out]
        assert len(request.logs) == 1
        entry = request.logs[0]
        assert (entry.host_id, entry.stage, entry.status, entry.version) == (worker.worker_id, stage, "OK", "v7")
        assert entry.end.ToNanoseconds() >= entry.start.ToNanoseconds() > 0
        assert request.results[0].name == "page.jpg"
    assert mq.queue_length(stage) == 0
    # statistics: switch time at once, avg_msg_time within the flush interval
    assert zk_paths.decode_float(zk.get(zk_paths.stage_switch_time(stage))) > 0
    wait_for(lambda: zk.get(zk_paths.stage_avg_msg_time(stage)), 10, "avg_msg_time")
    assert zk_paths.decode_float(zk.get(zk_paths.stage_avg_msg_time(stage))) >= 0


def test_stage_switch_and_config_reload(start_worker, zk: ZooKeeper, mq: MQSession, unique_name) -> None:
    first, second, out = unique_name("a"), unique_name("b"), unique_name("out")
    make_stage(zk, mq, first, DUMMY_FAST, version="1")
    make_stage(zk, mq, second, DUMMY_FAST, version="1")
    make_stage(zk, mq, out, None)
    worker = start_worker()
    wid = worker.worker_id
    zk.set_text(zk_paths.worker_queue(wid), first)
    worker.wait_status(zk_paths.PROCESSING)
    publish(mq, first, request_body([first, out]))
    assert collect(mq, out, 1)[0].logs[0].stage == first

    zk.set_text(zk_paths.worker_queue(wid), second)
    wait_for(lambda: mq.queue_consumers(second) == 1 and mq.queue_consumers(first) == 0, 10, "switch to second")
    publish(mq, second, request_body([second, out]))
    publish(mq, first, request_body([first, out]))
    got = collect(mq, out, 1)
    assert got[0].logs[0].stage == second
    assert mq.queue_length(first) == 1      # nobody consumes the first stage any more

    zk.set_text(zk_paths.stage_config_version(second), "2")
    wait_for(lambda: "version 2" in worker.log() and worker.status == zk_paths.PROCESSING, 10, "reload of version 2")
    publish(mq, second, request_body([second, out]))
    assert collect(mq, out, 1)[0].logs[0].version == "2"

    zk.set_text(zk_paths.worker_queue(wid), "")
    worker.wait_status(zk_paths.IDLE)
    wait_for(lambda: mq.queue_consumers(second) == 0, 10, "consumer cancelled")


def test_failtest_goes_to_output_stage(start_worker, zk: ZooKeeper, mq: MQSession, unique_name) -> None:
    stage, middle, out = unique_name("f"), unique_name("mid"), unique_name("out")
    make_stage(zk, mq, stage, FAILTEST)
    make_stage(zk, mq, middle, None)
    make_stage(zk, mq, out, None)
    worker = start_worker()
    zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
    worker.wait_status(zk_paths.PROCESSING)
    publish(mq, stage, request_body([stage, middle, out]))
    request = collect(mq, out, 1)[0]
    assert list(request.processing_stages) == [out]
    entry = request.logs[0]
    assert entry.status == "FAILED" and entry.stage == stage and entry.log
    assert mq.queue_length(middle) == 0


def test_unroutable_successors(start_worker, zk: ZooKeeper, mq: MQSession, unique_name) -> None:
    stage, out = unique_name("s"), unique_name("out")
    missing, missing_out = unique_name("missing"), unique_name("missing_out")
    make_stage(zk, mq, stage, DUMMY_FAST)
    make_stage(zk, mq, out, None)
    worker = start_worker()
    zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
    worker.wait_status(zk_paths.PROCESSING)
    # the next stage's queue does not exist: output stage, with the reason in the stage log
    publish(mq, stage, request_body([stage, missing, out]))
    request = collect(mq, out, 1)[0]
    assert list(request.processing_stages) == [out]
    assert request.logs[0].status == "UNROUTABLE" and missing in request.logs[0].log
    # the output stage's queue does not exist either: dead-letter queue
    publish(mq, stage, request_body([stage, missing_out]))
    letters = collect_dead_letters(mq, stage, 1)
    assert letters[0].headers["reason"].startswith("output_unroutable")
    assert letters[0].headers["worker_id"] == worker.worker_id
    assert mq.queue_length(stage) == 0


def test_bad_requests_go_to_dead_letter_queue(start_worker, zk: ZooKeeper, mq: MQSession, unique_name) -> None:
    stage, out = unique_name("s"), unique_name("out")
    make_stage(zk, mq, stage, DUMMY_FAST)
    make_stage(zk, mq, out, None)
    worker = start_worker()
    zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
    worker.wait_status(zk_paths.PROCESSING)
    garbage = b"\xff\xfe not a protobuf \x00\x01"
    publish(mq, stage, garbage)
    publish(mq, stage, request_body([]))
    publish(mq, stage, request_body(["elsewhere", out]))
    letters = collect_dead_letters(mq, stage, 3)
    reasons = sorted(letter.headers["reason"].split(":")[0] for letter in letters)
    assert reasons == ["no_stages", "unparsable", "wrong_queue"]
    assert garbage in [letter.body for letter in letters]     # raw body kept
    assert all(letter.headers["worker_id"] == worker.worker_id for letter in letters)
    assert mq.queue_length(stage) == 0
    assert worker.status == zk_paths.PROCESSING


def test_broken_config_keeps_messages_queued(start_worker, zk: ZooKeeper, mq: MQSession, unique_name) -> None:
    stage, out = unique_name("s"), unique_name("out")
    make_stage(zk, mq, stage, "[WORKER]\nMETHOD = NO_SUCH_METHOD\n")
    make_stage(zk, mq, out, None)
    for _ in range(3):
        publish(mq, stage, request_body([stage, out]))
    worker = start_worker()
    zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
    worker.wait_status(zk_paths.CONFIGURATION_FAILED)
    time.sleep(0.5)
    assert mq.queue_length(stage) == 3 and mq.queue_consumers(stage) == 0
    assert "cannot take up stage" in worker.log()
    # fixing the config and bumping the version makes it work
    zk.set_text(zk_paths.stage_config(stage), DUMMY_FAST)
    zk.set_text(zk_paths.stage_config_version(stage), "2")
    worker.wait_status(zk_paths.PROCESSING)
    assert [r.logs[0].version for r in collect(mq, out, 3)] == ["2"] * 3


def test_missing_stage_is_configuration_failure(start_worker, zk: ZooKeeper, unique_name) -> None:
    worker = start_worker()
    zk.set_text(zk_paths.worker_queue(worker.worker_id), unique_name("nonexistent"))
    worker.wait_status(zk_paths.CONFIGURATION_FAILED)
    assert "does not exist in ZooKeeper" in worker.log()
    zk.set_text(zk_paths.worker_queue(worker.worker_id), "")
    worker.wait_status(zk_paths.IDLE)


def test_restart_after_kill9_starts_at_once_and_loses_nothing(start_worker, zk: ZooKeeper, mq: MQSession,
                                                              unique_name, tmp_path: Path) -> None:
    stage, out = unique_name("s"), unique_name("out")
    # about 0.2 s per request: requests are in flight when the worker is killed
    content = b"x" * 2000
    make_stage(zk, mq, stage, dummy_config(0.2 / len(content)))
    make_stage(zk, mq, out, None)
    wid = unique_name("w")
    cache = tmp_path / "cache"
    worker = start_worker(wid, cache_dir=cache)
    zk.set_text(zk_paths.worker_queue(wid), stage)
    worker.wait_status(zk_paths.PROCESSING)
    ids = {uuid.uuid4().hex for _ in range(12)}
    for request_id in ids:
        publish(mq, stage, request_body([stage, out], content=content, request_id=request_id))
    wait_for(lambda: (mq.queue_length(out) or 0) >= 2, 10, "first results")
    worker.proc.kill()
    worker.proc.wait()
    started = time.monotonic()
    restarted = start_worker(wid, cache_dir=cache)
    restarted.wait_status(zk_paths.PROCESSING, timeout=10)
    assert time.monotonic() - started < 5, "restart after a crash waited for the old session to expire"
    results = collect(mq, out, len(ids), timeout=30)   # at least once: duplicates possible, loss not
    extra_deadline = time.monotonic() + 1
    while time.monotonic() < extra_deadline:
        delivery = mq.get(out)
        if delivery:
            request = ProcessingRequest()
            request.ParseFromString(delivery.body)
            results.append(request)
            mq.ack(delivery.delivery_tag)
    assert {r.uuid for r in results} == ids
    assert mq.queue_length(stage) == 0


def test_log_lines_go_to_the_log_queue(start_worker, zk: ZooKeeper, mq: MQSession, unique_name) -> None:
    log_queue = unique_name("log")
    mq.declare_plain_queue(log_queue)
    mq.created.append(log_queue)  # type: ignore[attr-defined]
    worker = start_worker(extra=["-q", log_queue])
    worker.wait_status(zk_paths.IDLE)

    def lines() -> list[str]:
        found = []
        while (delivery := mq.get(log_queue)) is not None:
            found.append(delivery.body.decode("utf-8"))
            mq.ack(delivery.delivery_tag)
        return found
    got = wait_for(lines, 10, "log lines in the log queue")
    assert any(worker.worker_id in line and "started" in line for line in got)


# --- unreachable services ----------------------------------------------------------------------------------

def test_unreachable_zookeeper_retries_without_traceback(start_worker, zk: ZooKeeper, tmp_path: Path) -> None:
    worker = start_worker(root="127.0.0.1:1/nothing")
    wait_for(lambda: "cannot connect to ZooKeeper" in worker.log(), 15, "the connection error")
    assert worker.proc.poll() is None
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(5) == 0
    text = worker.log()
    assert "Traceback" not in text
    assert text.count("cannot connect to ZooKeeper") == 1   # said once, not once per retry


def test_unreachable_rabbitmq_reports_status_and_recovers(start_worker, zk: ZooKeeper, services, unique_name,
                                                          tmp_path: Path) -> None:
    for child in zk.children(zk_paths.MQ_SERVERS):
        zk.delete(f"{zk_paths.MQ_SERVERS}/{child}")
    zk.ensure_path(f"{zk_paths.MQ_SERVERS}/127.0.0.1:1")
    worker = start_worker()
    worker.wait_status(zk_paths.MQ_CONNECTION_FAILED)
    zk.delete(f"{zk_paths.MQ_SERVERS}/127.0.0.1:1")
    zk.ensure_path(f"{zk_paths.MQ_SERVERS}/{services.mq_address}")
    worker.wait_status(zk_paths.IDLE, timeout=30)
    assert "Traceback" not in worker.log()


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for argv in (["-z", "127.0.0.1:2181", "--device", "tpu"], ["-z", "127.0.0.1:2181", "-i", "a/b"], []):
        result = subprocess.run([sys.executable, str(RUN_WORKER), *argv, "--cache-directory", str(tmp_path)],
                                capture_output=True, text=True, timeout=30, cwd=REPO)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr


# --- a real pero-ocr stage: model from SFTP, as user `pero` everywhere ------------------------------------------

def test_pero_ocr_stage_fails_non_image_and_reads_image(services, zk_root: str, conn_config, unique_name,
                                                        tmp_path: Path) -> None:
    import dataclasses
    import shutil

    from ocr_model_factory import build_ocr_model, pack_model, render_page, stage_config_text

    from pero_worker.dev.local_services import SFTP_HOME, write_server_lists
    from pero_worker.libs.addresses import Address
    from pero_worker.libs.sftp import SftpClient, SftpSettings

    auth = dataclasses.replace(conn_config, username=services.user, password=services.password)
    zk = ZooKeeper(auth).start()
    write_server_lists(zk, services)
    mq = MQSession(MQSettings.from_zookeeper(zk, auth), name="test_worker_daemon ocr")
    mq.open(retry_for=10)
    stage, out = unique_name("ocr"), unique_name("out")
    remote = f"pero/{stage}/model.tar.xz"
    worker = None
    try:
        archive = pack_model(build_ocr_model(tmp_path / "model"), tmp_path / "model.tar.xz")
        with SftpClient(SftpSettings(servers=(Address(services.sftp_host, services.sftp_port),),
                                     username=services.user, password=services.password)) as sftp:
            sftp.upload(archive, remote)
        zk.set_text(zk_paths.stage_config(stage), stage_config_text())
        zk.set_text(zk_paths.stage_config_path(stage), remote)
        zk.set_text(zk_paths.stage_config_version(stage), "m1")
        for name in (stage, out):
            mq.declare_stage_queue(name)
        worker = Worker(zk_root, zk, unique_name("w"), tmp_path / "cache", tmp_path / "ocr_worker.log",
                        ["--disable-remote-logging", "-u", services.user, "--password-file",
                         str(services.password_file), "--device", "cpu"])
        worker.wait_status(zk_paths.IDLE)
        zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
        worker.wait_status(zk_paths.PROCESSING, timeout=120)
        publish(mq, stage, request_body([stage, out], content=b"%PDF-1.4 this is not an image", request_id="bad"))
        publish(mq, stage, request_body([stage, out], content=render_page(), request_id="good"))
        results = {r.uuid: r for r in collect(mq, out, 2, timeout=120)}
        bad, good = results["bad"], results["good"]
        assert bad.logs[0].status == "FAILED" and bad.logs[0].log, bad.logs[0]
        assert list(bad.processing_stages) == [out]
        assert good.logs[0].status == "OK", good.logs[0].log
        assert (good.logs[0].version, good.logs[0].host_id) == ("m1", worker.worker_id)
        names = [data.name for data in good.results]
        assert any(name.endswith("_page.xml") for name in names), names
        assert zk_paths.decode_float(zk.get(zk_paths.stage_switch_time(stage))) > 0
    finally:
        if worker is not None:
            worker.stop()
        for name in (stage, out):
            try:
                mq.delete_queue(name)
            except Exception:
                pass
        mq.close()
        shutil.rmtree(SFTP_HOME / "pero" / stage, ignore_errors=True)
        zk.delete("/pero", recursive=True)   # nodes carry the sasl:pero ACL: only we can remove them
        zk.stop()


# --- losing the services while running --------------------------------------------------------------------------

def _close_worker_connections(services, worker_id: str) -> int:
    """Close the worker's AMQP connection from the broker side (management API; needs an administrator)."""
    import requests
    base = f"http://{services.mq_mgmt_address}/api/connections"
    closed = 0
    for connection in requests.get(base, auth=(services.user, services.password), timeout=10).json():
        if connection.get("client_properties", {}).get("connection_name") == f"pero-worker {worker_id}":
            url = f"{base}/{requests.utils.quote(connection['name'], safe='')}"
            for auth in ((services.user, services.password), ("guest", "guest")):
                if requests.delete(url, auth=auth, timeout=10).status_code == 204:
                    closed += 1
                    break
            else:
                pytest.skip("no RabbitMQ administrator login to close a connection with")
    return closed


def test_rabbitmq_connection_loss_loses_nothing(start_worker, zk: ZooKeeper, mq: MQSession, services,
                                                unique_name) -> None:
    stage, out = unique_name("s"), unique_name("out")
    content = b"x" * 1000
    make_stage(zk, mq, stage, dummy_config(0.1 / len(content)))
    make_stage(zk, mq, out, None)
    worker = start_worker()
    zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
    worker.wait_status(zk_paths.PROCESSING)
    time.sleep(5)   # the management API lists new connections with a delay
    ids = {uuid.uuid4().hex for _ in range(40)}
    for request_id in ids:
        publish(mq, stage, request_body([stage, out], content=content, request_id=request_id))
    wait_for(lambda: (mq.queue_length(out) or 0) >= 3, 10, "first results")
    wait_for(lambda: _close_worker_connections(services, worker.worker_id), 15, "the worker's connection", 0.5)
    assert (mq.queue_length(out) or 0) < len(ids), "the connection was closed too late to test anything"
    wait_for(lambda: "RabbitMQ connection lost" in worker.log(), 10, "the worker to notice")
    results = collect(mq, out, len(ids), timeout=60)
    assert {r.uuid for r in results} == ids
    worker.wait_status(zk_paths.PROCESSING)
    assert "Traceback" not in worker.log()


def test_zookeeper_session_expiry_restores_registration(start_worker, zk: ZooKeeper, conn_config,
                                                         tmp_path: Path) -> None:
    from pero_worker.worker.registration import SessionStore, close_stale_session
    worker = start_worker()
    wid = worker.worker_id
    worker.wait_status(zk_paths.IDLE)
    old_owner = zk.ephemeral_owner(zk_paths.worker_connected(wid))
    credentials = SessionStore(tmp_path / f"cache_{wid}", wid).load()
    assert credentials is not None and credentials[0] == old_owner
    assert close_stale_session(conn_config, credentials)      # the server ends the worker's session
    new_owner = wait_for(lambda: (owner := zk.ephemeral_owner(zk_paths.worker_connected(wid))) not in (None, old_owner)
                         and owner, 20, "re-registration with a new session")
    assert SessionStore(tmp_path / f"cache_{wid}", wid).load()[0] == new_owner
    assert worker.status == zk_paths.IDLE and worker.proc.poll() is None
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit(5) == 0
    assert worker.status == zk_paths.DEAD


def test_throughput_of_a_cheap_stage(start_worker, zk: ZooKeeper, mq: MQSession, unique_name) -> None:
    """The plumbing, not the processor: 50 KB requests through an instant DUMMY stage (target: 500/s on a quiet box)."""
    stage, out = unique_name("fast"), unique_name("out")
    make_stage(zk, mq, stage, DUMMY_FAST)
    make_stage(zk, mq, out, None)
    count = 1000
    body = request_body([stage, out], content=os.urandom(50_000))
    for number in range(count):
        mq.publish(stage, body)
        if number % 200 == 199:
            assert mq.wait_for_confirms(30)
    assert mq.wait_for_confirms(30)
    worker = start_worker()
    worker.wait_status(zk_paths.IDLE)
    started = time.monotonic()
    zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
    wait_for(lambda: mq.queue_length(out) == count, 60, "all requests processed", 0.02)
    rate = count / (time.monotonic() - started)
    print(f"\n{count} requests of 50 KB through one worker: {rate:.0f} requests/s")
    # The measured average reaches the worker about a second after its first request; on a fast
    # machine the 1000 requests may be gone by then, so wait for the re-subscription itself.
    wait_for(lambda: "re-subscribing with prefetch 64" in worker.log(), 15, "the prefetch to rise to 64")
    # Far below the target on purpose: this box is shared, but per-message confirms or acks (~100/s) would fail it.
    assert rate > 150, f"{rate:.0f} requests/s"
    mq.purge_queue(out)


def test_a_fresh_fast_stage_raises_its_prefetch_after_its_first_requests(start_worker, zk: ZooKeeper, mq: MQSession,
                                                                         unique_name) -> None:
    """Issue 8.5: with no recorded time a stage starts at prefetch 4; the first drain ran at that for the ~1.3 s
    until the first ZooKeeper merge.  The worker now estimates from its first requests."""
    stage, out = unique_name("fast"), unique_name("out")
    make_stage(zk, mq, stage, DUMMY_FAST)
    make_stage(zk, mq, out, None)
    zk.set(zk_paths.stage_avg_msg_time(stage), b"")   # fresh: as stage_config_manager.py leaves it
    for _ in range(400):
        mq.publish(stage, request_body([stage, out], content=b"x" * 1000))
    assert mq.wait_for_confirms(30)
    worker = start_worker()
    worker.wait_status(zk_paths.IDLE)
    zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
    wait_for(lambda: "re-subscribing with prefetch 64" in worker.log(), 15, "the prefetch to rise to 64")
    lines = worker.log().splitlines()
    def stamp(marker: str) -> datetime:
        return datetime.strptime(next(line for line in lines if marker in line)[:23], "%Y-%m-%d %H:%M:%S,%f")
    at_4 = (stamp("re-subscribing with prefetch 64") - stamp(f"consuming stage {stage} (prefetch 4)")).total_seconds()
    print(f"fresh stage: prefetch 4 for {at_4:.3f} s")
    assert at_4 < 0.5, "the estimate waited for the ZooKeeper merge"
    wait_for(lambda: mq.queue_length(out) == 400, 60, "all requests processed", 0.05)
    mq.purge_queue(out)


def test_ini_config_and_generated_id(zk_root: str, zk: ZooKeeper, tmp_path: Path) -> None:
    ini = tmp_path / "worker.ini"
    ini.write_text(f"[WORKER]\nzookeeper_servers = {zk_root}\nlog_queue = unused\n", encoding="utf-8")
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, str(RUN_WORKER), "-c", str(ini), "--disable-remote-logging",
                                 "--cache-directory", str(tmp_path / "cache")], stdout=log_file,
                                stderr=subprocess.STDOUT, cwd=REPO)
        try:
            worker_id = wait_for(lambda: zk.children(zk_paths.WORKER_STATUS_ROOT), 20, "registration")[0]
            assert len(worker_id) == 32 and int(worker_id, 16) >= 0
            wait_for(lambda: zk.get_text(zk_paths.worker_status(worker_id)) == zk_paths.IDLE, 20, "IDLE")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert zk.get_text(zk_paths.worker_status(worker_id)) == zk_paths.DEAD
    assert list((tmp_path / "cache" / ".workers").iterdir()) == []   # a one-off id leaves nothing behind


# --- nothing is lost while work is in flight (issue 8, section 7) -----------------------------------------------

def uuids_in(mq: MQSession, queue: str) -> list[str]:
    """Take (and ack) everything in `queue` now; the uuid of each request, duplicates kept."""
    found = []
    while (delivery := mq.get(queue)) is not None:
        request = ProcessingRequest()
        request.ParseFromString(delivery.body)
        found.append(request.uuid)
        mq.ack(delivery.delivery_tag)
    return found


def test_stage_switch_with_requests_in_flight_drains_them_and_loses_none(start_worker, zk: ZooKeeper, mq: MQSession,
                                                                        unique_name) -> None:
    """The worker is moved while it holds prefetched and half-processed requests of stage a: the ones it has
    started are finished (processed by a, published, acked), the others go back to a; every request is in
    exactly one of the two places, none is half done."""
    a, b, out = unique_name("a"), unique_name("b"), unique_name("out")
    content = b"x" * 1000
    make_stage(zk, mq, a, dummy_config(0.05 / len(content)))     # 0.05 s per request: several in flight
    make_stage(zk, mq, b, DUMMY_FAST)
    make_stage(zk, mq, out, None)
    ids = {uuid.uuid4().hex for _ in range(80)}
    for request_id in ids:
        mq.publish(a, request_body([a, out], content=content, request_id=request_id))
    assert mq.wait_for_confirms(30)
    worker = start_worker()
    wid = worker.worker_id
    zk.set_text(zk_paths.worker_queue(wid), a)
    worker.wait_status(zk_paths.PROCESSING)
    wait_for(lambda: (mq.queue_length(out) or 0) >= 5, 30, "the first results")
    zk.set_text(zk_paths.worker_queue(wid), b)
    wait_for(lambda: mq.queue_consumers(b) == 1 and mq.queue_consumers(a) == 0, 15, "the switch to b")
    time.sleep(0.5)   # acks of the drained requests reach the broker
    done = uuids_in(mq, out)
    assert len(done) == len(set(done)), "no request was processed twice"
    left = set(uuids_in(mq, a))
    assert set(done) | left == ids and not set(done) & left, "every request is either done or back in stage a"
    assert 5 <= len(done) < len(ids), "the switch happened with requests in flight"
    assert mq.queue_length(a) == 0 and worker.status == zk_paths.PROCESSING
    assert "Traceback" not in worker.log()


def test_enabled_false_with_requests_in_flight_loses_none(start_worker, zk: ZooKeeper, mq: MQSession,
                                                         unique_name) -> None:
    """Stopping through ZooKeeper (enabled = false) while requests are in flight: the worker finishes what it
    can within its grace time, and whatever it has not acked is redelivered to the next worker."""
    stage, out = unique_name("s"), unique_name("out")
    content = b"x" * 1000
    make_stage(zk, mq, stage, dummy_config(0.1 / len(content)))
    make_stage(zk, mq, out, None)
    ids = {uuid.uuid4().hex for _ in range(40)}
    for request_id in ids:
        mq.publish(stage, request_body([stage, out], content=content, request_id=request_id))
    assert mq.wait_for_confirms(30)
    first = start_worker()
    zk.set_text(zk_paths.worker_queue(first.worker_id), stage)
    first.wait_status(zk_paths.PROCESSING)
    wait_for(lambda: (mq.queue_length(out) or 0) >= 3, 30, "the first results")
    zk.set_text(zk_paths.worker_enabled(first.worker_id), "false")
    assert first.wait_exit(10) == 0
    assert first.status == zk_paths.DEAD and "Traceback" not in first.log()
    done = set(uuids_in(mq, out))
    assert done < ids, "it was stopped with requests left"
    # At least once: a request whose result was published just before the stop may also come back.
    wait_for(lambda: (mq.queue_length(stage) or 0) >= len(ids - done), 10,
             "every request the stopped worker had not finished back in the queue")
    second = start_worker()
    zk.set_text(zk_paths.worker_queue(second.worker_id), stage)
    wait_for(lambda: done.update(uuids_in(mq, out)) or done == ids, 60, "every request processed", 0.2)


def test_poison_bodies_between_valid_requests_do_not_stop_the_flow(start_worker, zk: ZooKeeper, mq: MQSession,
                                                                  unique_name) -> None:
    """Unparsable bodies, requests without stages and requests for another queue, interleaved with valid ones:
    every bad one is dead-lettered with its reason, every valid one is processed, the worker keeps going."""
    stage, out = unique_name("s"), unique_name("out")
    make_stage(zk, mq, stage, DUMMY_FAST)
    make_stage(zk, mq, out, None)
    worker = start_worker()
    zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
    worker.wait_status(zk_paths.PROCESSING)
    poison = [b"\xff\xfe not a protobuf \x00", b"", b"\x0a\xff\xff\xff\xff\x0f", request_body([]),
              request_body(["elsewhere", out]), os.urandom(3000)]
    valid = []
    for _round in range(5):
        for body in poison:
            mq.publish(stage, body)
        for _ in range(6):
            request_id = uuid.uuid4().hex
            valid.append(request_id)
            mq.publish(stage, request_body([stage, out], request_id=request_id))
    assert mq.wait_for_confirms(30)
    results = collect(mq, out, len(valid), timeout=60)
    assert sorted(r.uuid for r in results) == sorted(valid)
    assert all(r.logs[-1].status == "OK" for r in results)
    letters = collect_dead_letters(mq, stage, 5 * len(poison), timeout=60)
    assert {letter.headers["reason"].split(":")[0] for letter in letters} >= {"unparsable", "no_stages", "wrong_queue"}
    assert mq.queue_length(stage) == 0
    assert worker.status == zk_paths.PROCESSING and worker.proc.poll() is None
    assert "Traceback" not in worker.log()


# --- results over the broker's message size limit ---------------------------------------------

def test_a_result_over_the_message_size_limit_goes_to_the_output_stage_failed(start_worker, zk: ZooKeeper,
                                                                               mq: MQSession, unique_name) -> None:
    """Before: the broker closed the channel, the input came back and failed again, for ever."""
    import cv2

    from pero_worker.bench import synth

    page = synth.render_page(synth.PageSpec(width_in=5.8, height_in=8.3, margin_in=0.5, dpi=100, columns=1,
                                            title=False, seed=5))
    ok, png = cv2.imencode(".png", page.image)
    assert ok
    stage, out = unique_name("layout"), unique_name("out")
    make_stage(zk, mq, stage, "[WORKER]\nMETHOD = LAYOUT\n")
    make_stage(zk, mq, out, None)
    big = request_body([stage, out], content=png.tobytes(), request_id="big")
    # The input fits; the input plus its PAGE XML (several KB for a page of text) does not.
    limit = len(big) + 1024
    worker = start_worker(extra=["--disable-remote-logging", "--max-message-size", str(limit)])
    zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
    worker.wait_status(zk_paths.PROCESSING)
    publish(mq, stage, big)
    publish(mq, stage, request_body([stage, out], content=b"\x89PNG\r\n\x1a\n not an image", request_id="small"))
    results = {request.uuid: request for request in collect(mq, out, 2)}
    failed = results["big"]
    assert [r.name for r in failed.results] == ["page.jpg"]          # as it came in, without the PAGE XML
    assert list(failed.processing_stages) == [out]
    assert failed.logs[-1].status == "FAILED" and failed.logs[-1].stage == stage
    assert "over the broker's maximum message size" in failed.logs[-1].log
    assert results["small"].logs[-1].status == "FAILED"              # the worker went on with the next one
    assert mq.queue_length(stage) == 0
    assert worker.status == zk_paths.PROCESSING
    assert "over the broker's maximum message size" in worker.log()
