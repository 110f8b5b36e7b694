"""dev/supervisor.py: systemd's Restart= semantics as pure decisions, and the loop applying them to real processes."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from pero_worker.dev.supervisor import (
    Program,
    RestartPolicy,
    Supervisor,
    decide,
    policy_from_unit,
    unit_policy,
)

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "sample-config" / "systemd"
ALWAYS = RestartPolicy(restart="always", restart_sec=2.0, start_limit_interval=300.0, start_limit_burst=30,
                       prevent=frozenset({2, 4, 5}))
KILL = -int(signal.SIGKILL)


@pytest.mark.parametrize("policy, returncode, starts, now, restart, at, reason", [
    (ALWAYS, KILL, [0.0], 10.0, True, 12.0, "killed by SIGKILL: restarting in 2 s"),
    (ALWAYS, 0, [0.0], 10.0, True, 12.0, "exit status 0: restarting"),          # always: even a clean exit
    (ALWAYS, 1, [0.0], 10.0, True, 12.0, "exit status 1: restarting"),
    (ALWAYS, 3, [0.0], 10.0, True, 12.0, "exit status 3: restarting"),          # unreachable: try again
    (ALWAYS, 2, [0.0], 10.0, False, 0.0, "exit status 2: a restart cannot fix it"),
    (ALWAYS, 4, [0.0], 10.0, False, 0.0, "exit status 4: a restart cannot fix it"),
    (ALWAYS, 5, [0.0], 10.0, False, 0.0, "exit status 5: a restart cannot fix it"),
    # 30 starts within the 300 s before the planned start: the 31st is refused ...
    (ALWAYS, 1, [float(t) for t in range(30)], 40.0, False, 0.0, "start limit hit (30 starts within 300 s"),
    # ... but once the oldest fall out of the window, it starts again.
    (ALWAYS, 1, [float(t) for t in range(30)], 300.0, True, 302.0, "restarting in 2 s"),
    (ALWAYS, 1, [float(t) for t in range(29)], 40.0, True, 42.0, "restarting"),
    (RestartPolicy(restart="no"), 1, [0.0], 5.0, False, 0.0, "exit status 1: Restart=no"),
    (RestartPolicy(restart="on-failure"), 0, [0.0], 5.0, False, 0.0, "Restart=on-failure"),
    (RestartPolicy(restart="on-failure", restart_sec=0.5), 1, [0.0], 5.0, True, 5.5, "restarting in 0.5 s"),
    (RestartPolicy(restart="on-abnormal"), 1, [0.0], 5.0, False, 0.0, "Restart=on-abnormal"),
    (RestartPolicy(restart="on-abnormal"), KILL, [0.0], 5.0, True, 5.1, "killed by SIGKILL"),
    (RestartPolicy(restart="always", prevent=frozenset({KILL})), KILL, [0.0], 5.0, False, 0.0, "cannot fix"),
])
def test_decide(policy, returncode, starts, now, restart, at, reason):
    decision = decide(policy, returncode, starts, now)
    assert decision.restart is restart
    assert decision.at == pytest.approx(at)
    assert reason in decision.reason


@pytest.mark.parametrize("text, expected", [
    ("", RestartPolicy()),
    ("[Service]\nRestart=always\nRestartSec=2\n", RestartPolicy(restart="always", restart_sec=2.0)),
    ("[Unit]\nStartLimitIntervalSec=5min\nStartLimitBurst=3\n[Service]\nRestart=on-failure\nRestartSec=500ms\n",
     RestartPolicy(restart="on-failure", restart_sec=0.5, start_limit_interval=300.0, start_limit_burst=3)),
    ("[Service]\nRestart=always\nRestartSec=1min 30s\nRestartPreventExitStatus=2 4 SIGKILL\n",
     RestartPolicy(restart="always", restart_sec=90.0, prevent=frozenset({2, 4, KILL}))),
    ("[Install]\nRestart=always\n", RestartPolicy()),     # only [Unit] and [Service] count
])
def test_policy_from_unit(text, expected):
    assert policy_from_unit(text) == expected


@pytest.mark.parametrize("text", ["[Service]\nRestart=sometimes\n", "[Service]\nRestartSec=2fortnights\n",
                                  "[Service]\nRestartPreventExitStatus=SIGNOPE\n"])
def test_policy_from_unit_refuses_what_it_does_not_know(text):
    with pytest.raises(ValueError):
        policy_from_unit(text)


@pytest.mark.parametrize("unit", ["pero-worker@.service", "pero-watchdog.service", "pero-log-daemon.service"])
def test_the_shipped_units_restart_every_daemon_the_way_the_readme_says(unit):
    """The chaos suite supervises by these files: 1 s apart, at most 30 starts in 5 minutes, not 2/4(/5)."""
    policy = unit_policy(UNITS / unit)
    assert policy.restart == "always" and policy.restart_sec == 1.0
    assert (policy.start_limit_interval, policy.start_limit_burst) == (300.0, 30)
    assert {2, 4} <= policy.prevent


def _program(tmp_path: Path, name: str, code: str, policy: RestartPolicy) -> Program:
    return Program(name, [sys.executable, "-c", code], policy, tmp_path / f"{name}.log")


def _wait(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_killed_process_is_started_again_after_restart_sec(tmp_path):
    policy = RestartPolicy(restart="always", restart_sec=0.3, start_limit_burst=10)
    supervisor = Supervisor().add_all([_program(tmp_path, "sleeper", "import time; time.sleep(60)", policy)])
    supervisor.start()
    try:
        first = supervisor.pid("sleeper")
        assert first is not None
        killed = time.monotonic()
        assert supervisor.kill9("sleeper") == first
        _wait(lambda: supervisor.pid("sleeper") not in (None, first), 5)
        program = supervisor.programs["sleeper"]
        assert program.starts[-1] - killed >= 0.3 - 0.01
        assert program.exits[-1][1] == KILL
        assert any("killed by SIGKILL: restarting in 0.3 s" in what for _, _, what in supervisor.events)
    finally:
        supervisor.stop()
    assert supervisor.pid("sleeper") is None


def test_a_usage_error_is_not_restarted_and_a_crash_loop_hits_the_start_limit(tmp_path):
    prevent = RestartPolicy(restart="always", restart_sec=0.05, prevent=frozenset({2}))
    limited = RestartPolicy(restart="always", restart_sec=0.05, start_limit_interval=60.0, start_limit_burst=3)
    supervisor = Supervisor().add_all([_program(tmp_path, "usage", "raise SystemExit(2)", prevent),
                                       _program(tmp_path, "crash", "raise SystemExit(1)", limited)])
    supervisor.start()
    try:
        _wait(lambda: supervisor.programs["usage"].failed and supervisor.programs["crash"].failed, 20)
    finally:
        supervisor.stop()
    assert len(supervisor.programs["usage"].starts) == 1
    assert "RestartPreventExitStatus" in supervisor.programs["usage"].failed
    assert len(supervisor.programs["crash"].starts) == 3
    assert "start limit hit" in supervisor.programs["crash"].failed
