"""A 3-node ZooKeeper ensemble and a 3-node RabbitMQ cluster on loopback, for failover runs.

    python dev/cluster.py up [--state-dir DIR] [--ha-mode all|exactly-2]
    python dev/cluster.py status | env | down

Plain TCP, no TLS and no SASL (a development deployment: everything listens on 127.0.0.1 only;
the secure single-node deployment is scripts/system_setup.py).  Ports, all in 16500-16999:

  ZooKeeper  client 16501-16503, quorum 16511-16513, leader election 16521-16523
  RabbitMQ   AMQP 16601-16603, Erlang distribution 16701-16703, its own epmd on 16700

The RabbitMQ nodes (pero-cluster-N@localhost) have their own node names, databases, logs, config,
enabled-plugins file and a per-deployment Erlang cookie (in DIR/home), and their own epmd: the
machine's broker (rabbit@localhost on 5672) and its epmd are never touched.

Queues keep the wire format of the original system (classic, durable, x-max-priority 1): quorum
queues in RabbitMQ 3.10 have no priorities.  They are made highly available by a policy on the
vhost `pero` instead: classic mirrored queues (ha-mode all, ha-sync-mode automatic,
ha-promote-on-shutdown always, ha-promote-on-failure always).  The policy is set before any queue
exists, so every mirror is synchronised from the first message and promoting one loses nothing.

`up` is idempotent (nodes already running are kept); `down` stops only processes whose command
line or environment names the state directory.  Default state directory: $PERO_CLUSTER_DIR, else
run/cluster in the repository.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pero_worker.libs.exit_codes import ExitCode, exit_codes_help
from pero_worker.tools.deploy.native import process_mentions, read_pid

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
NODES = 3
ZK_CLIENT_PORT = 16501          # + node index (0, 1, 2)
ZK_QUORUM_PORT = 16511
ZK_ELECTION_PORT = 16521
MQ_AMQP_PORT = 16601
MQ_DIST_PORT = 16701
EPMD_PORT = 16700
VHOST = "pero"
POLICY_NAME = "pero-ha"
ZK_JARS = ("/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar")
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
EPMD = shutil.which("epmd") or "/usr/lib/erlang/erts-13.1.5/bin/epmd"


class ClusterError(Exception):
    """A node could not be started, stopped or configured; the message names it and its log."""


def say(message: str) -> None:
    print(f"cluster: {message}", flush=True)


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check, what: str, timeout: float, log_hint: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise ClusterError(f"{what} not ready after {timeout:.0f} s" + (f"; see {log_hint}" if log_hint else ""))


def zk_four_letter(port: int, command: str, timeout: float = 1.0) -> str:
    """A ZooKeeper four-letter word ('srvr', 'ruok', 'mntr'); '' when the node does not answer."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(command.encode())
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def zk_mode_from_srvr(text: str) -> str:
    """'leader', 'follower', 'standalone' or '' from a `srvr` answer ('' also for 'not currently serving')."""
    for line in text.splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return ""


@dataclass(frozen=True)
class Cluster:
    state_dir: Path
    ha_mode: str = "all"

    # --- addresses ---------------------------------------------------------------------

    @staticmethod
    def zk_port(node: int) -> int:
        return ZK_CLIENT_PORT + node

    @staticmethod
    def amqp_port(node: int) -> int:
        return MQ_AMQP_PORT + node

    @staticmethod
    def mq_node_name(node: int) -> str:
        return f"pero-cluster-{node + 1}@localhost"

    def zk_servers(self) -> str:
        """The -z value for every tool and daemon: all three servers."""
        return ",".join(f"{HOST}:{self.zk_port(n)}" for n in range(NODES))

    def mq_servers(self) -> list[str]:
        return [f"{HOST}:{self.amqp_port(n)}" for n in range(NODES)]

    # --- ZooKeeper ---------------------------------------------------------------------

    def zk_dir(self, node: int) -> Path:
        return self.state_dir / f"zk{node + 1}"

    def zk_config_text(self, node: int) -> str:
        lines = [
            "# Written by dev/cluster.py.",
            "tickTime=500", "initLimit=20", "syncLimit=5",
            "minSessionTimeout=1000", "maxSessionTimeout=60000",
            f"dataDir={self.zk_dir(node) / 'data'}",
            f"clientPort={self.zk_port(node)}", f"clientPortAddress={HOST}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,srvr,mntr,stat",
            "maxClientCnxns=200",
            "autopurge.snapRetainCount=3", "autopurge.purgeInterval=1",
        ]
        lines += [f"server.{n + 1}={HOST}:{ZK_QUORUM_PORT + n}:{ZK_ELECTION_PORT + n}" for n in range(NODES)]
        return "\n".join(lines) + "\n"

    def zk_pid(self, node: int) -> int | None:
        pid = read_pid(self.zk_dir(node) / "zookeeper.pid")
        if pid and process_mentions(pid, str(self.zk_dir(node) / "zoo.cfg")):
            return pid
        return None

    def zk_mode(self, node: int) -> str:
        return zk_mode_from_srvr(zk_four_letter(self.zk_port(node), "srvr"))

    def zk_leader(self) -> int | None:
        """The node that is leader now (asked with `srvr`), None while there is none."""
        for node in range(NODES):
            if self.zk_mode(node) == "leader":
                return node
        return None

    def start_zk_node(self, node: int) -> None:
        if self.zk_pid(node):
            return
        missing = [jar for jar in ZK_JARS[:1] if not Path(jar).is_file()]
        if missing or not shutil.which("java"):
            raise ClusterError("ZooKeeper needs java and /usr/share/java/zookeeper.jar: run ./install_dependencies.sh")
        folder = self.zk_dir(node)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        (folder / "data" / "myid").write_text(f"{node + 1}\n")
        (folder / "zoo.cfg").write_text(self.zk_config_text(node))
        classpath = ":".join(jar for jar in ZK_JARS if Path(jar).is_file())
        cmd = ["java", "-Xmx128m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
               f"-Dzookeeper.log.dir={folder}", "-Dorg.slf4j.simpleLogger.showDateTime=true",
               "-cp", classpath, "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(folder / "zoo.cfg")]
        with open(folder / "zookeeper.log", "ab") as log:
            process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, close_fds=True)
        (folder / "zookeeper.pid").write_text(f"{process.pid}\n")

    def kill_zk_node(self, node: int) -> int | None:
        """kill -9 (a crash, not a shutdown); returns the pid killed."""
        pid = self.zk_pid(node)
        if pid:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not port_open(self.zk_port(node)), f"ZooKeeper node {node + 1} to die", 20)
        return pid

    def wait_zk_serving(self, timeout: float = 120.0) -> None:
        def ready() -> bool:
            modes = [self.zk_mode(n) for n in range(NODES)]
            return modes.count("leader") == 1 and modes.count("follower") == NODES - 1
        wait_until(ready, "ZooKeeper ensemble (1 leader, 2 followers)", timeout, self.zk_dir(0) / "zookeeper.log")

    # --- RabbitMQ -----------------------------------------------------------------------

    def mq_dir(self, node: int) -> Path:
        return self.state_dir / f"rabbit{node + 1}"

    @property
    def home(self) -> Path:
        """HOME of the nodes and of rabbitmqctl: holds this deployment's Erlang cookie."""
        return self.state_dir / "home"

    def mq_env(self, node: int) -> dict[str, str]:
        folder = self.mq_dir(node)
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.mq_node_name(node),
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.amqp_port(node)),
            "RABBITMQ_DIST_PORT": str(MQ_DIST_PORT + node),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": HOST,
            "ERL_EPMD_PORT": str(EPMD_PORT),
        }

    def rabbitmqctl(self, node: int, *args: str, timeout: float = 120.0) -> str:
        done = subprocess.run([RABBITMQCTL, "-n", self.mq_node_name(node), *args], capture_output=True, text=True,
                              timeout=timeout, env=self.mq_env(node), cwd=str(self.home))
        if done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise ClusterError(f"rabbitmqctl {' '.join(args)} on {self.mq_node_name(node)} failed: "
                               f"{lines[-1].strip() if lines else done.returncode}")
        return done.stdout

    def mq_pid(self, node: int) -> int | None:
        pid = read_pid(self.mq_dir(node) / "rabbitmq.pid")
        if pid and process_mentions(pid, str(self.mq_dir(node))):
            return pid
        return None

    def epmd_pid(self) -> int | None:
        pid = read_pid(self.state_dir / "epmd.pid")
        if pid and process_mentions(pid, f"-port {EPMD_PORT}") and process_mentions(pid, str(self.state_dir)):
            return pid
        return None

    def _prepare_rabbit_files(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        for node in range(NODES):
            folder = self.mq_dir(node)
            (folder / "log").mkdir(parents=True, exist_ok=True)
            (folder / "rabbitmq-env.conf").write_text("# dev/cluster.py: settings come from the environment\n")
            (folder / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = {HOST}:{self.amqp_port(node)}\n"
                "log.console = false\nlog.file.level = info\n"
                # Without a management plugin: the machine's broker has 15672.
                "vm_memory_high_watermark.relative = 0.2\n")
            (folder / "advanced.config").write_text("[].\n")
            (folder / "enabled_plugins").write_text("[].\n")

    def start_epmd(self) -> None:
        if self.epmd_pid():
            return
        if port_open(EPMD_PORT):
            raise ClusterError(f"port {EPMD_PORT} is taken by another process (not our epmd)")
        # epmd in the foreground (not -daemon), so its pid is ours to stop; the state dir is in its environment.
        env = {**self.mq_env(0), "PERO_CLUSTER_DIR": str(self.state_dir)}
        with open(self.state_dir / "epmd.log", "ab") as log:
            process = subprocess.Popen([EPMD, "-port", str(EPMD_PORT), "-address", HOST], env=env,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, close_fds=True)
        (self.state_dir / "epmd.pid").write_text(f"{process.pid}\n")
        wait_until(lambda: port_open(EPMD_PORT), "epmd", 10)

    def start_mq_node(self, node: int) -> None:
        """Launch the node (returns at once; `await_mq_node` waits for it)."""
        if self.mq_pid(node) or port_open(self.amqp_port(node)):
            return
        folder = self.mq_dir(node)
        (folder / "rabbitmq.pid").unlink(missing_ok=True)   # left by a killed node: await_mq_node waits for a new one
        with open(folder / "log" / "console.log", "ab") as log:
            subprocess.Popen([RABBITMQ_SERVER], env=self.mq_env(node), cwd=str(self.home), stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)

    def await_mq_node(self, node: int, timeout: float = 180.0) -> None:
        log = self.mq_dir(node) / "log"
        wait_until(lambda: self.mq_pid(node) is not None, f"RabbitMQ node {node + 1}", timeout, log)
        self.rabbitmqctl(node, "await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)
        wait_until(lambda: port_open(self.amqp_port(node)), f"RabbitMQ node {node + 1} AMQP port", 60, log)

    def stop_mq_node(self, node: int) -> None:
        """A clean shutdown of the whole node (what `systemctl stop rabbitmq-server` does)."""
        if not self.mq_pid(node):
            return
        self.rabbitmqctl(node, "stop", timeout=120)
        wait_until(lambda: not self.mq_pid(node), f"RabbitMQ node {node + 1} to stop", 60)

    def kill_mq_node(self, node: int) -> int | None:
        """kill -9 of the node's Erlang VM (a crash)."""
        pid = self.mq_pid(node)
        if pid:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not port_open(self.amqp_port(node)), f"RabbitMQ node {node + 1} to die", 20)
        return pid

    def mq_running_nodes(self, ask: int) -> list[str]:
        status = json.loads(self.rabbitmqctl(ask, "cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def form_mq_cluster(self) -> None:
        """Join nodes 2 and 3 to node 1 (once), then the vhost, guest's permissions and the HA policy."""
        for node in range(1, NODES):
            if self.mq_node_name(node) in self.mq_running_nodes(0):
                continue
            say(f"joining {self.mq_node_name(node)} to {self.mq_node_name(0)}")
            self.rabbitmqctl(node, "stop_app")
            self.rabbitmqctl(node, "join_cluster", self.mq_node_name(0))
            self.rabbitmqctl(node, "start_app")
        if VHOST not in self.rabbitmqctl(0, "-q", "list_vhosts").split():
            self.rabbitmqctl(0, "add_vhost", VHOST)
        self.rabbitmqctl(0, "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
        self.rabbitmqctl(0, "set_policy", "-p", VHOST, "--apply-to", "queues", "--priority", "0",
                         POLICY_NAME, ".*", json.dumps(self.ha_policy()))

    def ha_policy(self) -> dict:
        policy: dict = {"ha-sync-mode": "automatic", "ha-promote-on-shutdown": "always",
                        "ha-promote-on-failure": "always"}
        if self.ha_mode == "all":
            policy["ha-mode"] = "all"
        else:
            policy.update({"ha-mode": "exactly", "ha-params": int(self.ha_mode.split("-", 1)[1])})
        return policy

    def queue_homes(self, ask: int) -> dict[str, dict]:
        """Each queue of the vhost: the node of its master, its mirrors and which of them are synchronised."""
        text = self.rabbitmqctl(ask, "-q", "list_queues", "-p", VHOST, "name", "pid", "slave_pids",
                                "synchronised_slave_pids", "messages")
        result = {}
        for line in text.splitlines()[1:]:
            name, pid, mirrors, synchronised, messages = (line.split("\t") + [""] * 5)[:5]
            result[name] = {"master": _pid_nodes(pid)[0] if _pid_nodes(pid) else "",
                            "mirrors": _pid_nodes(mirrors), "synchronised": _pid_nodes(synchronised),
                            "messages": int(messages) if messages.isdigit() else None}
        return result

    def connections_per_node(self, ask: int) -> dict[int, int]:
        """How many client connections each node holds (by the AMQP port they came in on)."""
        counts: dict[int, int] = {}
        for line in self.rabbitmqctl(ask, "-q", "list_connections", "port").splitlines()[1:]:
            if line.strip().isdigit():
                node = int(line) - MQ_AMQP_PORT
                counts[node] = counts.get(node, 0) + 1
        return counts

    # --- the whole set ----------------------------------------------------------------------

    def foreign_ports(self) -> list[int]:
        """Ports of this layout that something other than this deployment listens on (e.g. a deployment
        with another state directory): starting would fail half-way, so `up` refuses at once."""
        taken = []
        if not self.epmd_pid() and port_open(EPMD_PORT):
            taken.append(EPMD_PORT)
        for node in range(NODES):
            if not self.zk_pid(node):
                taken += [p for p in (self.zk_port(node), ZK_QUORUM_PORT + node, ZK_ELECTION_PORT + node)
                          if port_open(p)]
            if not self.mq_pid(node):
                taken += [p for p in (self.amqp_port(node), MQ_DIST_PORT + node) if port_open(p)]
        return taken

    def up(self) -> None:
        taken = self.foreign_ports()
        if taken:
            raise ClusterError(f"port(s) {', '.join(map(str, taken))} are in use by processes of another deployment "
                               f"(`dev/cluster.py down --state-dir DIR` stops one made with another state dir)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for node in range(NODES):
            self.start_zk_node(node)
        self._prepare_rabbit_files()
        self.start_epmd()
        for node in range(NODES):
            self.start_mq_node(node)
        self.wait_zk_serving()
        say(f"ZooKeeper ensemble serving on {self.zk_servers()} (leader: node {self.zk_leader() + 1})")
        for node in range(NODES):
            self.await_mq_node(node)
        self.form_mq_cluster()
        say(f"RabbitMQ cluster running: {', '.join(self.mq_running_nodes(0))} on {', '.join(self.mq_servers())}")

    def down(self) -> None:
        for node in range(NODES):
            pid = self.mq_pid(node)
            if pid:
                try:
                    self.stop_mq_node(node)
                except ClusterError:
                    os.kill(pid, signal.SIGKILL)
        pids = [pid for pid in [*(self.zk_pid(node) for node in range(NODES)), self.epmd_pid()] if pid]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        # Gone before returning: the next deployment (e.g. a run waiting for the lock) needs the ports.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        say("stopped")

    def status(self) -> dict[str, str]:
        result = {}
        for node in range(NODES):
            mode = self.zk_mode(node)
            result[f"zookeeper {node + 1} {HOST}:{self.zk_port(node)}"] = mode or ("starting" if self.zk_pid(node)
                                                                                  else "down")
        for node in range(NODES):
            up = port_open(self.amqp_port(node))
            result[f"rabbitmq {self.mq_node_name(node)} {HOST}:{self.amqp_port(node)}"] = \
                "running" if up else ("starting" if self.mq_pid(node) else "down")
        return result


def _alive(pid: int) -> bool:
    """Still running (a zombie child of ours counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _pid_nodes(text: str) -> list[str]:
    """Node names in rabbitmqctl's process ids: '[<rabbit@host.1.234.0>, ...]' -> ['rabbit@host', ...]."""
    return re.findall(r"<([^<>.\s]+@[^<>.\s]+)\.", text)


def default_state_dir() -> Path:
    return Path(os.environ.get("PERO_CLUSTER_DIR") or REPO / "run" / "cluster")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.INTERRUPTED),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("up", "down", "status", "env"),
                        help="up: deploy or start what is not running; down: stop every node; status: each node's "
                             "state; env: the PERO_ZK line for a shell")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where the nodes keep their data, logs and pid files "
                             "(default $PERO_CLUSTER_DIR, else run/cluster)")
    parser.add_argument("--ha-mode", choices=("all", "exactly-2"), default="all",
                        help="mirroring policy for the queues: on every node, or on two")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cluster = Cluster((args.state_dir or default_state_dir()).resolve(), ha_mode=args.ha_mode)
    try:
        if args.action == "up":
            cluster.up()
        elif args.action == "down":
            cluster.down()
        elif args.action == "status":
            for name, state in cluster.status().items():
                print(f"{name:48} {state}")
        else:
            print(f"export PERO_ZK={cluster.zk_servers()}")
    except ClusterError as error:
        print(f"cluster: ERROR: {error}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
