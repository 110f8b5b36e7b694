"""libs/daemon.py and libs/exit_codes.py: what every daemon shares (no services)."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pero_worker.libs.daemon import StopRequest, configuration_error, run_guarded
from pero_worker.libs.exit_codes import MEANINGS, ExitCode, exit_codes_help

REPO = Path(__file__).resolve().parent.parent
DAEMONS = ["worker/run_worker.py", "watchdog/worker_watchdog.py", "log_daemon/log_daemon.py"]


def test_exit_codes_have_one_meaning_each():
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4, 5, 130]
    assert set(MEANINGS) == set(ExitCode) and len(set(MEANINGS.values())) == len(ExitCode)
    assert exit_codes_help(ExitCode.OK, ExitCode.USAGE) == "exit codes: 0 success (daemons: stopped cleanly), " \
                                                           "2 bad arguments or configuration"


def test_stop_request_keeps_the_first_reason_and_runs_callbacks():
    stop = StopRequest()
    calls = []
    stop.on_stop(lambda: calls.append("first"))
    assert not stop.requested and stop.wait(0.01) is False
    stop.stop("signal SIGTERM")
    stop.stop("disabled in ZooKeeper")
    assert stop.requested and stop.reason == "signal SIGTERM" and stop.wait(0) is True
    assert calls == ["first", "first"]
    stop.on_stop(lambda: calls.append("late"))        # registered after the stop: runs at once
    assert calls[-1] == "late"


def test_a_failing_stop_callback_does_not_hide_the_stop():
    stop = StopRequest()
    stop.on_stop(lambda: 1 / 0)
    stop.stop("test")
    assert stop.requested


def test_stop_request_on_signals():
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = StopRequest.on_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5) and stop.reason == "signal SIGTERM"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_main_guard(capsys, caplog):
    assert configuration_error("x.py", ValueError("interval must be positive")) == ExitCode.USAGE
    assert capsys.readouterr().err == "x.py: error: interval must be positive\n"
    with caplog.at_level(logging.ERROR):
        assert run_guarded(logging.getLogger("t"), lambda: 1 / 0) == ExitCode.FAILED
    assert "ZeroDivisionError" in caplog.text
    assert run_guarded(logging.getLogger("t"), lambda: ExitCode.DUPLICATE_WORKER) == 5


@pytest.mark.parametrize("daemon", DAEMONS)
def test_each_daemon_names_its_exit_codes_in_help(daemon):
    done = subprocess.run([sys.executable, daemon, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "exit codes: 0 success" in " ".join(done.stdout.split()), done.stdout
