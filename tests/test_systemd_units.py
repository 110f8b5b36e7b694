"""sample-config/systemd: the unit files that restart killed daemons, checked by systemd's own verifier."""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pero_worker.libs.exit_codes import ExitCode

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "sample-config" / "systemd"
INSTALLED = "/opt/pero-worker/"
SCRIPTS = {"pero-worker@.service": "worker/run_worker.py", "pero-watchdog.service": "watchdog/worker_watchdog.py",
           "pero-log-daemon.service": "log_daemon/log_daemon.py"}
HARDENING = ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "ProtectKernelTunables",
             "ProtectKernelModules", "ProtectControlGroups", "RestrictSUIDSGID", "RestrictNamespaces",
             "LockPersonality", "SystemCallArchitectures", "CapabilityBoundingSet", "RestrictAddressFamilies")


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(UNITS / name)
    return parser


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_unit_restarts_its_daemon_as_an_unprivileged_user(name):
    unit = read_unit(name)
    service = unit["Service"]
    assert service["Restart"] == "always"
    assert 1 <= float(service["RestartSec"]) <= 5, "quick, but not a busy loop"
    # The exit codes a restart cannot fix (libs/exit_codes.py); "interrupted" and "unreachable" are retried.
    prevented = {ExitCode(int(code)) for code in service["RestartPreventExitStatus"].split()}
    expected = {ExitCode.USAGE, ExitCode.ACCESS_REFUSED}
    if name.startswith("pero-worker@"):
        expected.add(ExitCode.DUPLICATE_WORKER)
    assert prevented == expected
    assert int(unit["Unit"]["StartLimitBurst"]) * float(service["RestartSec"]) < \
        int(unit["Unit"]["StartLimitIntervalSec"]), "the start limit can actually be reached"
    assert service["User"] not in ("", "root", "0") and service["Group"] not in ("", "root", "0")
    for key in HARDENING:
        assert key in service, f"{name}: {key}"
    assert service["CapabilityBoundingSet"] == ""
    assert SCRIPTS[name] in service["ExecStart"]
    text = (UNITS / name).read_text()   # Environment= repeats: the parser keeps only the last one
    assert "\nEnvironment=PERO_PASSWORD_FILE=%d/service.password\n" in text and "LoadCredential" in service
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_worker_template_uses_the_instance_as_worker_id_and_keeps_the_gpus():
    service = read_unit("pero-worker@.service")["Service"]
    assert " -i %i " in service["ExecStart"] and "--cache-directory ${CACHE_DIRECTORY}" in service["ExecStart"]
    assert service["CacheDirectory"] == "pero-worker/%i"
    assert "PrivateDevices" not in service and "DevicePolicy" not in service, "CUDA needs /dev/nvidia*"
    assert "MemoryDenyWriteExecute" not in service


def test_watchdog_keeps_its_session_in_its_state_directory():
    service = read_unit("pero-watchdog.service")["Service"]
    assert service["StateDirectory"] == "pero-watchdog"
    assert "--state-directory" not in service["ExecStart"], "it defaults to $STATE_DIRECTORY"


def test_units_pass_systemd_analyze_verify(tmp_path):
    """systemd's own check, with the paths pointed at this checkout (verify needs existing executables)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing (install_dependencies.sh installs systemd)")
        pytest.skip("systemd-analyze is not installed")
    for name in SCRIPTS:
        text = (UNITS / name).read_text()
        text = text.replace(f"{INSTALLED}.venv/bin/python", sys.executable).replace(INSTALLED, f"{REPO}/")
        (tmp_path / name).write_text(text)
    (tmp_path / "pero-worker@gpu0.service").symlink_to(tmp_path / "pero-worker@.service")
    targets = [str(tmp_path / name) for name in ("pero-worker@gpu0.service", "pero-watchdog.service",
                                                 "pero-log-daemon.service")]
    result = subprocess.run([analyze, "verify", *targets], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), \
        result.stdout + result.stderr


def test_sysusers_file_creates_the_account_the_units_use():
    line = next(line for line in (UNITS / "pero-worker.sysusers.conf").read_text().splitlines()
                if line and not line.startswith("#"))
    kind, user, *_ = line.split()
    assert (kind, user) == ("u", read_unit("pero-watchdog.service")["Service"]["User"])
