"""Run the core engines on this host from the generated files (no Docker).

* ZooKeeper: the Debian/Apache jar under java, with our zoo.cfg and the JVM flags of java.env.
* RabbitMQ: Debian's rabbitmq-server as a separate node (own node name, Erlang
  distribution port, database and config), so it can run beside the system node.
* SFTP: OpenSSH's sshd with its own sshd_config (one user, SFTP only).

Each engine is started detached from this process (it outlives system_setup.py);
its pid is kept in data/run/<service>.pid, and `stop` only signals a pid whose
command line still mentions our config, so a recycled pid is never hit.
"""
from __future__ import annotations

import os
import pwd
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

from pero_worker.libs import tls
from pero_worker.tools.deploy import render
from pero_worker.tools.deploy.layout import Layout, Settings

ZK_JARS = ["/usr/share/java/zookeeper.jar",
           # Debian's zookeeper.jar manifest omits these, and the Netty TLS handler needs them.
           "/usr/share/java/netty-codec.jar", "/usr/share/java/netty-resolver.jar",
           "/usr/share/java/netty-transport-native-unix-common.jar",
           # A logger binding, so the server's log is not silently dropped.
           "/usr/share/java/slf4j-simple.jar"]
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
SSHD = "/usr/sbin/sshd"


class ServiceError(Exception):
    """An engine could not be started or stopped; the message says which and where its log is."""


# --- helpers -------------------------------------------------------------------------

def service_account(name: str) -> pwd.struct_passwd | None:
    """The system account an engine runs as when we are root (Debian creates them), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def process_mentions(pid: int, needle: str) -> bool:
    """Whether the live process `pid` has `needle` in its command line or environment (ours, not a reused pid)."""
    found = False
    for part in ("cmdline", "environ"):
        try:
            text = Path(f"/proc/{pid}/{part}").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
        except OSError:
            continue
        found = found or needle in text
    return found


def running_pid(lay: Layout, service: str, needle: str) -> int | None:
    pid = read_pid(lay.pid_file(service))
    if pid and process_mentions(pid, needle):
        return pid
    return None


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_tls(host: str, port: int, ca_cert: str, service: str, deadline: float, *,
                 alive=lambda: True, log_path: Path | None = None) -> None:
    """Until a TLS handshake with the CA succeeds; a certificate problem ends the wait at once."""
    last = "not listening yet"
    while time.monotonic() < deadline:
        if not alive():
            raise ServiceError(f"{service} exited during start-up; see {log_path}")
        try:
            tls.probe(host, port, ca_cert, service=service, timeout=2.0)
            return
        except tls.TLSError as error:
            if "does not speak TLS" in str(error) or "closed the connection" in str(error):
                last = str(error)
            else:
                raise ServiceError(str(error)) from None
        except (OSError, ssl.SSLError) as error:
            last = str(error)
        time.sleep(0.5)
    raise ServiceError(f"{service} did not accept TLS connections on {host}:{port} in time ({last}); "
                       f"see {log_path}")


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    for root, _dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for name in files:
            os.chown(os.path.join(root, name), uid, gid)


def _private_tree(path: Path) -> None:
    """Folders 0700 and files 0600 under `path`: an engine's data is readable by that engine only."""
    for root, _dirs, files in os.walk(path):
        os.chmod(root, 0o700)
        for name in files:
            file_path = os.path.join(root, name)
            if not os.path.islink(file_path):
                os.chmod(file_path, 0o600)


def _spawn(args: list[str], log_path: Path, *, env: dict[str, str] | None = None, user: pwd.struct_passwd | None,
           cwd: str | None = None, umask: int = -1) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        kwargs: dict = {}
        if user is not None:
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True, close_fds=True, umask=umask, **kwargs)


def _connect_host(bind: str, fallback: str) -> str:
    return fallback if not bind or bind in ("0.0.0.0", "::") else bind


def _stop_pid(pid: int, name: str, timeout: float = 20.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


# --- ZooKeeper -----------------------------------------------------------------------

def zookeeper_command(s: Settings, lay: Layout) -> list[str]:
    missing = [jar for jar in ZK_JARS[:2] if not os.path.exists(jar)]
    if missing:
        raise ServiceError(f"ZooKeeper jars not found ({', '.join(missing)}): apt-get install zookeeper, "
                           "or use --docker")
    classpath = ":".join(jar for jar in ZK_JARS if os.path.exists(jar))
    flags = render.parse_java_env(lay.java_env.read_text())
    return ["java", *flags, f"-Dzookeeper.log.dir={lay.log_dir}", "-cp", classpath, render.ZK_MAIN,
            str(lay.zoo_cfg)]


def start_zookeeper(s: Settings, lay: Layout, *, wait: float = 90.0) -> str:
    if running_pid(lay, "zookeeper", str(lay.zoo_cfg)):
        return "already running"
    user = service_account("zookeeper")
    lay.zk_data.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _chown_tree(lay.zk_data, user.pw_uid, user.pw_gid)
        for secret in (lay.jaas, lay.keystore, lay.keystore_pass, lay.truststore_pass):
            os.chown(secret, user.pw_uid, user.pw_gid)
    # Snapshots and transaction logs hold the whole tree (stage configs, server lists): private to ZooKeeper,
    # and so is whatever it writes from now on (umask).
    _private_tree(lay.zk_data)
    log_path = lay.log_file("zookeeper")
    process = _spawn(zookeeper_command(s, lay), log_path, user=user, cwd=str(lay.zk_data), umask=0o077)
    lay.run_dir.mkdir(parents=True, exist_ok=True)
    lay.pid_file("zookeeper").write_text(f"{process.pid}\n")
    host = _connect_host(s.bind_address, s.zk_host)
    wait_for_tls(host, s.zk_port, str(lay.ca_cert), "ZooKeeper", time.monotonic() + wait,
                 alive=lambda: process.poll() is None, log_path=log_path)
    return f"started (pid {process.pid})"


def stop_zookeeper(lay: Layout) -> str:
    pid = running_pid(lay, "zookeeper", str(lay.zoo_cfg))
    if pid is None:
        return "not running"
    _stop_pid(pid, "ZooKeeper")
    lay.pid_file("zookeeper").unlink(missing_ok=True)
    return f"stopped (pid {pid})"


# --- RabbitMQ ------------------------------------------------------------------------

def _rabbit_env(s: Settings, lay: Layout, user: pwd.struct_passwd | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", **render.rabbitmq_env_vars(s, lay)}
    # The Erlang cookie lives in $HOME: the rabbitmq account's, so rabbitmqctl (run the same way) matches.
    env["HOME"] = user.pw_dir if user is not None else os.environ.get("HOME", "/root")
    return env


def rabbitmqctl(s: Settings, lay: Layout, args: list[str], *, stdin: str | None = None,
                timeout: float = 120.0) -> subprocess.CompletedProcess:
    user = service_account("rabbitmq")
    kwargs: dict = {}
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return subprocess.run([RABBITMQCTL, "-n", s.rabbitmq_node, *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=_rabbit_env(s, lay, user),
                          cwd=user.pw_dir if user else None, **kwargs)


def start_rabbitmq(s: Settings, lay: Layout, *, wait: float = 120.0) -> str:
    if not os.path.exists(RABBITMQ_SERVER):
        raise ServiceError(f"{RABBITMQ_SERVER} not found: apt-get install rabbitmq-server, or use --docker")
    if running_pid(lay, "rabbitmq", str(lay.rabbitmq_env)):
        return "already running"
    user = service_account("rabbitmq")
    for folder in (lay.mq_data, lay.log_dir / "rabbitmq", lay.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _chown_tree(lay.mq_data, user.pw_uid, user.pw_gid)
        _chown_tree(lay.log_dir / "rabbitmq", user.pw_uid, user.pw_gid)
        os.chown(lay.run_dir, user.pw_uid, user.pw_gid)
        for secret in (lay.server_key("rabbitmq"), lay.definitions):
            os.chown(secret, user.pw_uid, user.pw_gid)
    log_path = lay.log_file("rabbitmq")
    process = _spawn([RABBITMQ_SERVER], log_path, env=_rabbit_env(s, lay, user), user=user,
                     cwd=user.pw_dir if user else None)
    host = _connect_host(s.bind_address, s.mq_host)
    deadline = time.monotonic() + wait
    wait_for_tls(host, s.amqps_port, str(lay.ca_cert), "RabbitMQ", deadline,
                 alive=lambda: process.poll() is None, log_path=log_path)
    # The node writes its own pid file; fall back to the launcher's pid.
    if read_pid(lay.pid_file("rabbitmq")) is None:
        lay.pid_file("rabbitmq").write_text(f"{process.pid}\n")
    done = rabbitmqctl(s, lay, ["await_startup", "--timeout", str(max(5, int(deadline - time.monotonic())))])
    if done.returncode != 0:
        raise ServiceError(f"RabbitMQ node {s.rabbitmq_node} did not finish booting: "
                           f"{_last_line(done)}; see {log_path}")
    return f"started (node {s.rabbitmq_node}, pid {read_pid(lay.pid_file('rabbitmq'))})"


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit {done.returncode}"


def stop_rabbitmq(s: Settings, lay: Layout) -> str:
    pid = running_pid(lay, "rabbitmq", str(lay.rabbitmq_env))
    if pid is None:
        return "not running"
    done = rabbitmqctl(s, lay, ["stop", str(lay.pid_file("rabbitmq"))], timeout=90)
    if done.returncode != 0:
        _stop_pid(pid, "RabbitMQ")
    lay.pid_file("rabbitmq").unlink(missing_ok=True)
    return f"stopped (node {s.rabbitmq_node})"


# --- SFTP (sshd) ---------------------------------------------------------------------

def start_sshd(s: Settings, lay: Layout, *, wait: float = 20.0) -> str:
    if not os.path.exists(SSHD):
        raise ServiceError(f"{SSHD} not found: apt-get install openssh-server, or use --docker")
    if running_pid(lay, "sshd", str(lay.sshd_config)):
        return "already running"
    if os.geteuid() != 0:
        raise ServiceError("sshd must be started as root (password logins read /etc/shadow); run as root or "
                           "use --docker")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # privilege separation directory
    check = subprocess.run([SSHD, "-t", "-f", str(lay.sshd_config)], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise ServiceError(f"sshd rejects {lay.sshd_config}: {_last_line(check)}")
    log_path = lay.log_file("sshd")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([SSHD, "-f", str(lay.sshd_config), "-E", str(log_path)], capture_output=True, text=True,
                          timeout=30, start_new_session=True)
    if done.returncode != 0:
        raise ServiceError(f"sshd did not start: {_last_line(done)}; see {log_path}")
    host = _connect_host(s.bind_address, s.sftp_host)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if port_open(host, s.sftp_port) and read_pid(lay.pid_file("sshd")):
            return f"started (pid {read_pid(lay.pid_file('sshd'))})"
        time.sleep(0.2)
    raise ServiceError(f"sshd is not listening on {host}:{s.sftp_port}; see {log_path}")


def stop_sshd(lay: Layout) -> str:
    pid = running_pid(lay, "sshd", str(lay.sshd_config))
    if pid is None:
        return "not running"
    _stop_pid(pid, "sshd")
    lay.pid_file("sshd").unlink(missing_ok=True)
    return f"stopped (pid {pid})"
