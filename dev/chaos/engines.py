"""The chaos suite's own secure deployment (scripts/system_setup.py) and the faults done to its engines.

Everything here acts on the deployment this suite made (its ports, its pid files, its RabbitMQ node name),
never on the shared local services.  system_setup.py creates a system account and starts an sshd: the
Makefile runs the suite under `flock /tmp/pero-secure.lock`, as it does the other tests that call it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pero_worker.tools.deploy import native
from pero_worker.tools.deploy.layout import Layout, Settings

REPO = Path(__file__).resolve().parent.parent.parent
SETUP = REPO / "scripts" / "system_setup.py"
# The chaos suite's ports (16000-16499): ZooKeeper TLS, AMQPS, HTTPS management, SFTP, Erlang distribution.
PORTS = {"--zookeeper-port": 16181, "--mq-port": 16671, "--management-port": 16672, "--sftp-port": 16022,
         "--erlang-dist-port": 16673}
USER = "perochaos"
NODE = "pero_chaos@localhost"


class DeployError(Exception):
    """system_setup.py failed; the message carries its last lines."""


class Deployment:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.config = base / "config"
        self.data = base / "data"
        self.ca = str(self.config / "certificates" / "ca.pem")
        self.known_hosts = str(self.config / "certificates" / "known_hosts")
        self.worker_ini = str(self.config / "worker.ini")
        self.settings: Settings | None = None
        self.layout: Layout | None = None

    @property
    def zk_address(self) -> str:
        return f"127.0.0.1:{PORTS['--zookeeper-port']}"

    @property
    def password(self) -> str:
        return (self.config / "secrets" / "service.password").read_text().strip()

    def _setup(self, *extra: str, timeout: float) -> subprocess.CompletedProcess:
        ports = [str(part) for pair in PORTS.items() for part in pair]
        return subprocess.run([sys.executable, str(SETUP), "-z", "127.0.0.1", "-s", "127.0.0.1", "-f", "127.0.0.1",
                               "-o", str(self.config), "-d", str(self.data), "-u", USER, "--rabbitmq-node", NODE,
                               "--zookeeper-heap", "256", *ports, *extra],
                              capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def up(self) -> None:
        """A fresh deployment (an earlier run's leftovers are stopped and removed first)."""
        self.down()
        self.base.mkdir(parents=True)
        self.base.chmod(0o755)          # the rabbitmq and zookeeper accounts must reach their files
        done = self._setup(timeout=300)
        if done.returncode != 0:
            raise DeployError("system_setup.py failed: " + "\n".join((done.stdout + done.stderr).splitlines()[-5:]))
        saved = json.loads((self.data / "run" / "setup.json").read_text())
        saved.pop("docker", None)
        self.settings = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()
                                    if k in Settings.__dataclass_fields__})
        jail = Path(self.settings.sftp_root) if self.settings.sftp_root else None
        self.layout = Layout(self.config.resolve(), self.data.resolve(), jail)

    def down(self) -> str:
        """Stop the engines, remove the account, the files and the SFTP jail; what system_setup.py said."""
        said = ""
        if (self.data / "run" / "setup.json").exists():
            done = subprocess.run([sys.executable, str(SETUP), "--stop", "-o", str(self.config), "-d", str(self.data)],
                                  capture_output=True, text=True, timeout=180, cwd=REPO)
            said = done.stdout + done.stderr
        jail = Layout(self.config.resolve(), self.data.resolve()).fallback_sftp_root()
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(jail, ignore_errors=True)
        return said

    # --- faults --------------------------------------------------------------------

    def _require(self) -> tuple[Settings, Layout]:
        assert self.settings is not None and self.layout is not None, "up() first"
        return self.settings, self.layout

    def kill_zookeeper(self) -> int:
        _s, lay = self._require()
        pid = native.running_pid(lay, "zookeeper", str(lay.zoo_cfg))
        if pid is None:
            raise DeployError("ZooKeeper is not running")
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        return pid

    def start_zookeeper(self) -> str:
        s, lay = self._require()
        return native.start_zookeeper(s, lay)

    def rabbitmqctl(self, *args: str) -> None:
        s, lay = self._require()
        done = native.rabbitmqctl(s, lay, list(args))
        if done.returncode != 0:
            raise DeployError(f"rabbitmqctl {' '.join(args)} failed: {(done.stdout + done.stderr).strip()[-300:]}")

    def stop_rabbitmq_node(self) -> str:
        s, lay = self._require()
        return native.stop_rabbitmq(s, lay)

    def start_rabbitmq_node(self) -> str:
        s, lay = self._require()
        return native.start_rabbitmq(s, lay)

    def stop_sftp(self) -> str:
        _s, lay = self._require()
        return native.stop_sshd(lay)

    def start_sftp(self) -> str:
        s, lay = self._require()
        return native.start_sshd(s, lay)

    def amqps_up(self) -> bool:
        return native.port_open("127.0.0.1", PORTS["--mq-port"])


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
