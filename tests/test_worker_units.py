"""Unit tests of the worker's pure parts: ack bookkeeping, averages, prefetch, settings, stage-log capture."""
from __future__ import annotations

import logging
import math
import threading

import pytest

from pero_worker.libs import zk_paths
from pero_worker.libs.config import ConfigError
from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.worker import stage_log, stage_setup, stats
from pero_worker.worker.acks import AckTracker
from pero_worker.worker.settings import build_config, build_parser

# --- AckTracker ------------------------------------------------------------------

@pytest.mark.parametrize("tags, settles, expected", [
    # in order: each settle acks itself
    ([1, 2, 3], [(1, True), (2, True), (3, True)], [1, 2, 3]),
    # out of order: nothing until the head is done, then one multiple ack covers all
    ([1, 2, 3], [(3, True), (2, True), (1, True)], [None, None, 3]),
    ([1, 2, 3], [(2, True), (1, True), (3, True)], [None, 2, 3]),
    # a nacked delivery is settled but never the tag we ack with
    ([1, 2, 3], [(1, False), (2, True), (3, False)], [None, 2, None]),
    ([1, 2, 3], [(3, True), (1, False), (2, False)], [None, None, 3]),
    ([1, 2], [(2, False), (1, False)], [None, None]),
    # tags need not be contiguous (other deliveries may have been handled elsewhere)
    ([5, 9, 12], [(9, True), (5, True), (12, True)], [None, 9, 12]),
])
def test_ack_tracker(tags: list[int], settles: list[tuple[int, bool]], expected: list[int | None]) -> None:
    tracker = AckTracker()
    for tag in tags:
        tracker.add(tag)
    got = [tracker.settle(tag, ack=ack) for tag, ack in settles]
    assert got == expected
    assert len(tracker) == 0


def test_ack_tracker_rejects_misuse() -> None:
    tracker = AckTracker()
    tracker.add(1)
    with pytest.raises(ValueError):
        tracker.add(1)
    with pytest.raises(ValueError):
        tracker.settle(2, ack=True)
    tracker.settle(1, ack=True)
    with pytest.raises(ValueError):
        tracker.settle(1, ack=True)


def test_ack_tracker_long_run_stays_small() -> None:
    tracker = AckTracker()
    acked = []
    for tag in range(1, 5001):
        tracker.add(tag)
        if tag % 2 == 0:   # settle pairs out of order
            acked.append(tracker.settle(tag, ack=True))
            acked.append(tracker.settle(tag - 1, ack=True))
    assert [a for a in acked if a is not None] == list(range(2, 5001, 2))
    assert len(tracker) == 0 and len(tracker._order) < 2048


def test_ack_tracker_clear() -> None:
    tracker = AckTracker()
    tracker.add(7)
    tracker.clear()
    assert len(tracker) == 0
    tracker.add(1)   # a new channel starts its tags again
    assert tracker.settle(1, ack=True) == 1


# --- averages and prefetch -----------------------------------------------------------

@pytest.mark.parametrize("old, mean, count, alpha, expected", [
    (None, 0.5, 1, 0.05, 0.5),
    (0.0, 0.5, 3, 0.05, 0.5),              # an unset (zero) average is replaced
    (math.nan, 0.5, 3, 0.05, 0.5),
    (1.0, 1.0, 10, 0.05, 1.0),
    (1.0, 0.0, 1, 0.5, 0.5),
    (1.0, 0.0, 2, 0.5, 0.25),              # a batch of 2 equals two single updates
    (2.0, 4.0, 1, 0.05, 2.1),
])
def test_ema(old, mean, count, alpha, expected) -> None:
    assert stats.ema(old, mean, count, alpha) == pytest.approx(expected)


def test_ema_batch_equals_sequence() -> None:
    single = 3.0
    for _ in range(7):
        single = stats.ema(single, 1.0, 1, 0.1)
    assert stats.ema(3.0, 1.0, 7, 0.1) == pytest.approx(single)


def test_ema_needs_samples() -> None:
    with pytest.raises(ValueError):
        stats.ema(1.0, 1.0, 0)


@pytest.mark.parametrize("avg, expected", [
    (None, 4), (0.0, 4), (math.inf, 4),
    (0.001, 64), (0.0199, 64), (0.05, 32), (0.3, 8), (1.0, 4), (5.0, 2), (60.0, 2),
])
def test_choose_prefetch(avg, expected) -> None:
    assert stats.choose_prefetch(avg) == expected


@pytest.mark.parametrize("current, avg, change", [
    (4, None, False), (4, 0.001, True), (64, 0.001, False), (64, 5.0, True), (4, 0.3, False), (8, 1.0, False),
    (32, 1.0, True),
])
def test_prefetch_should_change(current, avg, change) -> None:
    assert stats.prefetch_should_change(current, avg) is change


@pytest.mark.parametrize("avg, minimum, expected", [(5.0, 0, 2), (5.0, 16, 16), (0.001, 16, 64), (None, 8, 8)])
def test_choose_prefetch_minimum_of_a_batching_stage(avg, minimum, expected) -> None:
    assert stats.choose_prefetch(avg, minimum) == expected


def test_a_batching_stage_does_not_resubscribe_below_its_minimum() -> None:
    # BATCH_PAGES = 8: prefetch 16; a slow average (prefetch 2 otherwise) must not cause a re-subscribe loop
    assert not stats.prefetch_should_change(16, 5.0, 16)
    assert stats.prefetch_should_change(16, 5.0)


# --- settings --------------------------------------------------------------------------

def _config(argv: list[str]):
    return build_config(build_parser().parse_args(argv))


@pytest.mark.parametrize("samples,expected", [
    ([], None),
    ([0.001] * 7, None),
    ([0.001] * 8, 0.001),
    ([0.5, 0.001, 0.001, 0.001, 0.002, 0.002, 0.002, 0.002], 0.002),   # a slow first request does not count much
    ([1, 2, 3, 4, 5, 6, 7, 8, 100], 4.5),                              # only the first EARLY_SAMPLES
])
def test_early_estimate(samples, expected) -> None:
    assert stats.early_estimate(samples) == expected


def test_a_fresh_stage_gets_a_local_estimate_after_its_first_requests() -> None:
    """Issue 8.5: a fresh stage drained at prefetch 4 until the first ZooKeeper merge (~1.3 s); the worker now
    re-subscribes after its first EARLY_SAMPLES requests."""
    seen: list[tuple[str, float]] = []
    reporter = stats.StatsReporter(zk=None, identifier="w", on_average=lambda stage, avg: seen.append((stage, avg)))
    for _ in range(stats.EARLY_SAMPLES - 1):
        reporter.record("fast", 0.0005)
    assert seen == []
    reporter.record("fast", 0.0005)
    assert seen == [("fast", 0.0005)]
    assert stats.prefetch_should_change(stats.choose_prefetch(None), seen[0][1]), "prefetch 4 -> 64"
    for _ in range(50):
        reporter.record("fast", 0.0005)
    assert len(seen) == 1, "once per stage: later figures come from the ZooKeeper average"


@pytest.mark.parametrize("now,transient,since,delay,retry_at,status,new_since", [
    # a wrong configuration: retried after a minute (or when the stage changes)
    (100.0, False, None, 0.0, 160.0, zk_paths.CONFIGURATION_FAILED, None),
    (100.0, False, 90.0, 0.0, 160.0, zk_paths.CONFIGURATION_FAILED, None),
    # a service unreachable: retried after the backoff delay, CONFIGURING while the grace lasts
    (100.0, True, None, 0.25, 100.25, zk_paths.CONFIGURING, 100.0),
    (120.0, True, 100.0, 2.0, 122.0, zk_paths.CONFIGURING, 100.0),
    (130.0, True, 100.0, 2.0, 132.0, zk_paths.CONFIGURATION_FAILED, 100.0),   # 30 s: the watchdog may move it
])
def test_setup_retry(now, transient, since, delay, retry_at, status, new_since) -> None:
    assert stage_setup.setup_retry(now, transient, since, delay) == stage_setup.SetupRetry(retry_at, status, new_since)


def test_settings_defaults_and_overrides(tmp_path) -> None:
    ini = tmp_path / "worker.ini"
    ini.write_text("[WORKER]\nzookeeper_servers = zk1:2181,zk2\nlog_queue = ini_log\nusername = u\n")
    config = _config(["-c", str(ini)])
    assert [str(a) for a in config.connection.zookeeper_servers] == ["zk1:2181", "zk2:2181"]
    assert config.log_queue == "ini_log" and config.remote_logging and config.device == "auto"
    assert not config.worker_id_given and len(config.worker_id) == 32
    config = _config(["-c", str(ini), "-z", "127.0.0.1:2181/t_x", "-q", "cli_log", "-i", "w-1",
                      "--disable-remote-logging", "--device", "cuda:1", "--cache-directory", str(tmp_path), "-d"])
    assert config.connection.zookeeper_chroot == "/t_x"
    assert (config.log_queue, config.worker_id, config.worker_id_given) == ("cli_log", "w-1", True)
    assert (config.remote_logging, config.device, config.cache_dir, config.debug) == (False, "cuda:1", tmp_path, True)


@pytest.mark.parametrize("argv", [
    ["-z", "h", "-i", "../evil"],
    ["-z", "h", "-i", "a/b"],
    ["-z", "h", "--device", "gpu"],
    ["-z", "h", "-q", " "],
    [],                                   # no ZooKeeper at all
])
def test_settings_errors(argv) -> None:
    with pytest.raises(ConfigError):
        _config(argv)


# --- stage-log capture ----------------------------------------------------------------------

def test_capture_is_per_thread() -> None:
    capture = stage_log.RequestLogCapture()
    logger = logging.getLogger("test_capture_is_per_thread")
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        other_ready, other_done = threading.Event(), threading.Event()

        def other() -> None:
            other_ready.wait()
            logger.info("from another thread")
            other_done.set()
        thread = threading.Thread(target=other)
        thread.start()
        with capture.capture() as lines:
            logger.info("inside %s", "request")
            other_ready.set()
            other_done.wait()
        logger.info("after")
        thread.join()
        text = lines.text()
        assert "inside request" in text
        assert "another thread" not in text and "after" not in text
    finally:
        logger.removeHandler(capture)


def test_capture_is_bounded() -> None:
    capture = stage_log.RequestLogCapture()
    logger = logging.getLogger("test_capture_is_bounded")
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        with capture.capture() as lines:
            for _ in range(5000):
                logger.info("x" * 100)
        text = lines.text()
        assert len(text) <= stage_log.MAX_LOG_CHARS + 200
        assert text.endswith("more log lines not kept")
    finally:
        logger.removeHandler(capture)


def test_append_stage_log() -> None:
    request = ProcessingRequest()
    stage_log.append_stage_log(request, host_id="w", stage="s", start_ns=1_500_000_000, end_ns=2_000_000_001,
                               status="OK", log_text="line", version="v3")
    entry = request.logs[0]
    assert (entry.host_id, entry.stage, entry.status, entry.log, entry.version) == ("w", "s", "OK", "line", "v3")
    assert (entry.start.seconds, entry.start.nanos, entry.end.seconds, entry.end.nanos) == (1, 500_000_000, 2, 1)


# --- log shipping buffer ------------------------------------------------------------------------

def test_log_shipper_drops_oldest_when_nothing_ships() -> None:
    from pero_worker.worker.log_shipping import LogShipper
    shipper = LogShipper("log", "w9", capacity=100)   # not started: nothing is shipped
    logger = logging.getLogger("test_log_shipper")
    logger.addHandler(shipper)
    logger.setLevel(logging.INFO)
    try:
        for number in range(250):
            logger.info("line %d", number)
    finally:
        logger.removeHandler(shipper)
    assert shipper.buffered == 100 and shipper.dropped == 150
    lines = shipper._take(1000)
    assert "line 150" in lines[0] and "line 249" in lines[-1] and " w9 INFO " in lines[0]


@pytest.mark.parametrize("argv, env, models, memory", [
    ([], {}, 0, None),
    (["--warm-models", "2"], {}, 2, None),
    ([], {"PERO_WARM_MODELS": "3", "PERO_WARM_MODELS_MEMORY": "2GiB"}, 3, 2 * 2**30),
    (["--warm-models", "1", "--warm-models-memory", "500MB"], {"PERO_WARM_MODELS": "3"}, 1, 500 * 2**20),
])
def test_warm_model_settings(monkeypatch, argv, env, models, memory) -> None:
    for name in ("PERO_WARM_MODELS", "PERO_WARM_MODELS_MEMORY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = _config(["-z", "127.0.0.1:2181", *argv])
    assert (config.warm_models, config.warm_models_memory) == (models, memory)


@pytest.mark.parametrize("argv", [["--warm-models", "two"], ["--warm-models", "-1"],
                                  ["--warm-models-memory", "lots"]])
def test_bad_warm_model_settings(argv) -> None:
    with pytest.raises(ConfigError, match="warm models"):
        _config(["-z", "127.0.0.1:2181", *argv])
