"""Expected failures of every daemon and tool are one clear line, never a traceback (issue 8, section 5).

A ZooKeeper tree written by user pero (sasl:pero ACLs, as a secure deployment has) read without
credentials: kazoo raises NoAuthError from the first read, which used to escape as a traceback
from `worker_watchdog.py --dry-run` and the log daemon.
"""
from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time

import pytest

from pero_worker.dev.local_services import write_server_lists
from pero_worker.dev.opsplane import REPO
from pero_worker.libs import zk_paths
from pero_worker.libs.zk import ZooKeeper

TOOLS = {
    "watchdog --dry-run": ["watchdog/worker_watchdog.py", "--dry-run"],
    "stage_config_manager --list": ["scripts/stage_config_manager.py", "--list"],
    "server_config_manager --list": ["scripts/server_config_manager.py", "--list-mq-servers"],
    "worker_controller -s": ["scripts/worker_controller.py", "-s"],
    "worker_controller -q": ["scripts/worker_controller.py", "-q"],
}


@pytest.fixture
def secured_root(zk_root, conn_config, services):
    """The test's chroot filled by user pero: every node carries the sasl:pero ACL."""
    owner = ZooKeeper(dataclasses.replace(conn_config, username=services.user, password=services.password)).start()
    write_server_lists(owner, services)
    owner.set_text(zk_paths.stage_config("ocr"), "[WORKER]\nMETHOD = LAYOUT\n")
    owner.set_text(zk_paths.worker_status("w1"), zk_paths.IDLE)
    yield zk_root
    owner.delete("/pero", recursive=True)
    owner.stop()


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_tools_without_credentials_on_a_secured_tree_say_so_in_one_line(secured_root, tool):
    argv = TOOLS[tool]
    result = run([argv[0], "-z", secured_root, *argv[1:]])
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output, output
    assert result.returncode == 4, output   # ExitCode.ACCESS_REFUSED
    assert len(output.splitlines()) == 1 and "ZooKeeper refused access" in output, output


def test_worker_without_credentials_on_a_secured_tree_exits_4_in_one_line(secured_root, tmp_path):
    # Metrics off: with them on, the line saying where /metrics is served comes first.
    result = run(["worker/run_worker.py", "-z", secured_root, "-i", "w_noauth", "--cache-directory",
                  str(tmp_path / "cache"), "--disable-remote-logging", "--metrics-address", "off"])
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 4, output   # ExitCode.ACCESS_REFUSED
    assert "Traceback" not in output and len(output.splitlines()) == 1 and "NoAuth" in output, output


@pytest.mark.parametrize("daemon", ["log_daemon", "watchdog"])
def test_daemons_without_credentials_keep_running_and_say_it_once(secured_root, tmp_path, daemon):
    argv = {"log_daemon": ["log_daemon/log_daemon.py", "-z", secured_root, "-q", "nolog", "-o", str(tmp_path / "l")],
            "watchdog": ["watchdog/worker_watchdog.py", "-z", secured_root, "--state-directory", str(tmp_path)]}[daemon]
    process = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=REPO)
    try:
        time.sleep(6)
        assert process.poll() is None, "a daemon keeps going: an operator may fix the ACLs meanwhile"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    assert output.count("ZooKeeper refused access") == 1, output
