"""Local core services for tests, `make services` and the demo: ZooKeeper, OpenSSH SFTP, RabbitMQ.

    python scripts/local_services.py start [--replace-foreign-zookeeper]
    python scripts/local_services.py stop | status | env

Everything listens on 127.0.0.1 and keeps its state under <repo>/run/ (gitignored):

  ZooKeeper  127.0.0.1:2181   own zoo.cfg (tickTime 500 ms: sessions may be 1-60 s, so tests see
                              session expiry quickly), SASL DIGEST-MD5 user `pero` accepted but not
                              required (plain clients work too), run/zookeeper/
  SFTP       127.0.0.1:2222   own sshd (own config, host keys and pid file), password login of the
                              system user `pero`, SFTP only, home run/sftp-home/pero
  RabbitMQ   127.0.0.1:5672   the machine's broker (started with `rabbitmq-server -detached` if it is
             127.0.0.1:15672  down, never stopped by us), management plugin, vhost `pero`, user `pero`

The one password (user `pero` everywhere) is generated once into run/secrets/password (0600).
After start, the server lists are written to ZooKeeper under /pero/worker/config/.

`start` is idempotent and takes well under a second when everything is already up.  A
ZooKeeper on port 2181 that we did not start is reported and used as it is, unless
--replace-foreign-zookeeper asks to stop it (by its pid) and start ours.

Python API (tests, demo):  ensure_services() -> LocalServices,  write_server_lists(zk),
stop_services(),  service_status().
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat as stat_module
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / "run"
SECRETS_DIR = RUN_DIR / "secrets"
PASSWORD_FILE = SECRETS_DIR / "password"
LOCK_FILE = RUN_DIR / ".services.lock"

HOST = "127.0.0.1"
ZK_PORT = 2181
SFTP_PORT = 2222
MQ_PORT = 5672
MQ_MGMT_PORT = 15672
USER = "pero"
VHOST = "pero"
# Marks the system user as ours, so that we never take over a real account named `pero`.
USER_COMMENT = "pero-worker local SFTP user"

ZK_DIR = RUN_DIR / "zookeeper"
ZK_CFG = ZK_DIR / "zoo.cfg"
ZK_JAAS = ZK_DIR / "jaas.conf"
ZK_PID = ZK_DIR / "zookeeper.pid"
ZK_LOG = ZK_DIR / "zookeeper.log"
ZK_JARS = ("/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar")

SSHD_DIR = RUN_DIR / "sshd"
SSHD_CONFIG = SSHD_DIR / "sshd_config"
SSHD_PID = SSHD_DIR / "sshd.pid"
SSHD_LOG = SSHD_DIR / "sshd.log"
SSHD_BIN = "/usr/sbin/sshd"
SFTP_HOME = RUN_DIR / "sftp-home" / USER
SFTP_UPLOAD_FOLDER = "pero"   # writable by the SFTP user: where model archives are uploaded

START_TIMEOUT = 60.0


class ServiceError(Exception):
    """A service could not be started or configured; the message says what to do."""


@dataclass(frozen=True)
class LocalServices:
    """Where the local services listen and how to log in (user `pero` everywhere)."""
    password: str
    zk_host: str = HOST
    zk_port: int = ZK_PORT
    mq_host: str = HOST
    mq_port: int = MQ_PORT
    mq_mgmt_port: int = MQ_MGMT_PORT
    sftp_host: str = HOST
    sftp_port: int = SFTP_PORT
    user: str = USER
    vhost: str = VHOST
    password_file: Path = PASSWORD_FILE
    zk_foreign: bool = False   # True when the ZooKeeper on zk_port is not ours (see --replace-foreign-zookeeper)

    def __repr__(self) -> str:  # never print the password
        return (f"LocalServices(zk={self.zk_address}, mq={self.mq_address}, mgmt={self.mq_mgmt_address}, "
                f"sftp={self.sftp_address}, user={self.user!r}, vhost={self.vhost!r})")

    @property
    def zk_address(self) -> str:
        return f"{self.zk_host}:{self.zk_port}"

    @property
    def mq_address(self) -> str:
        return f"{self.mq_host}:{self.mq_port}"

    @property
    def mq_mgmt_address(self) -> str:
        return f"{self.mq_host}:{self.mq_mgmt_port}"

    @property
    def sftp_address(self) -> str:
        return f"{self.sftp_host}:{self.sftp_port}"

    def env(self) -> dict[str, str]:
        """Environment for the demo and shells (`eval "$(python scripts/local_services.py env)"`).

        PERO_PASSWORD_FILE is the variable every tool reads as its password fallback
        (libs/config.py), so `-u pero` is then all a tool needs on the command line.
        """
        return {
            "PERO_ZK": self.zk_address,
            "PERO_MQ": self.mq_address,
            "PERO_MQ_MONITORING": self.mq_mgmt_address,
            "PERO_SFTP": self.sftp_address,
            "PERO_USER": self.user,
            "PERO_VHOST": self.vhost,
            "PERO_PASSWORD_FILE": str(self.password_file),
        }


def say(message: str) -> None:
    print(f"[services] {message}", file=sys.stderr, flush=True)


# --- small helpers -------------------------------------------------------------

def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check, what: str, timeout: float = START_TIMEOUT, log_hint: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            hint = f"; see {log_hint}" if log_hint else ""
            raise ServiceError(f"{what} did not come up within {timeout:.0f} s{hint}")
        time.sleep(0.2)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own unreaped child) is not alive for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def listening_pid(port: int) -> int | None:
    """Pid of the process listening on a TCP port (via `ss`), None if unknown."""
    try:
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"pid=(\d+)", out)
    return int(match.group(1)) if match else None


def terminate(pid: int, what: str, timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL one process."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if pid_alive(pid):
        say(f"{what} (pid {pid}) ignored SIGTERM, killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run(cmd: list[str], what: str, timeout: float = 120.0) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ServiceError(f"{what}: {cmd[0]} not found (run `make install`)") from None
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{what}: `{shlex.join(cmd)}` did not finish in {timeout:.0f} s") from None
    if done.returncode != 0:
        raise ServiceError(f"{what}: `{shlex.join(cmd)}` failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


@contextlib.contextmanager
def services_lock() -> Iterator[None]:
    """Serialise start/stop: several test sessions may call ensure_services() at once."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_password() -> str:
    """The services' password: generated once, then always reused."""
    with contextlib.suppress(OSError):
        password = PASSWORD_FILE.read_text().strip()
        if password:
            return password
    SECRETS_DIR.mkdir(parents=True, exist_ok=True)
    SECRETS_DIR.chmod(0o700)
    password = secrets.token_urlsafe(18)
    fd = os.open(PASSWORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    say(f"generated the services' password into {PASSWORD_FILE}")
    return password


# --- ZooKeeper -------------------------------------------------------------------

def zk_four_letter(command: str, port: int = ZK_PORT, timeout: float = 1.0) -> str:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(command.encode())
            chunks = []
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def zk_serving(port: int = ZK_PORT) -> bool:
    # `srvr` is on ZooKeeper's default 4lw whitelist, so this also recognises a foreign server.
    return zk_four_letter("srvr", port).startswith("Zookeeper version")


def zk_config_text() -> str:
    return "\n".join([
        "# Written by scripts/local_services.py; rewritten on every start.",
        "tickTime=500",
        "initLimit=10",
        "syncLimit=5",
        # 2 x tickTime would be 1 s anyway; stated so the range tests may use is explicit.
        "minSessionTimeout=1000",
        "maxSessionTimeout=60000",
        f"dataDir={ZK_DIR / 'data'}",
        f"clientPort={ZK_PORT}",
        f"clientPortAddress={HOST}",
        "admin.enableServer=false",
        "4lw.commands.whitelist=ruok,srvr,stat",
        "maxClientCnxns=200",
        # Many short test sessions: keep the transaction logs from growing without bound.
        "autopurge.snapRetainCount=3",
        "autopurge.purgeInterval=1",
        # SASL DIGEST-MD5 login is accepted (docs/protocol.md §4) but not required: plain clients still work.
        "authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider",
        "",
    ])


def zk_jaas_text(password: str) -> str:
    return ("Server {\n"
            "    org.apache.zookeeper.server.auth.DigestLoginModule required\n"
            f'    user_{USER}="{password}";\n'
            "};\n")


def zk_ours() -> int | None:
    pid = read_pid(ZK_PID)
    if pid and pid_alive(pid) and str(ZK_CFG) in cmdline(pid):
        return pid
    return None


def start_zookeeper(password: str, *, replace_foreign: bool) -> bool:
    """Start our ZooKeeper unless it runs. Returns True when the one on the port is foreign."""
    pid = zk_ours()
    if pid and zk_serving():
        return False
    if zk_serving() or port_open(ZK_PORT):
        other = listening_pid(ZK_PORT)
        if pid and other == pid:  # ours, still starting
            wait_until(zk_serving, "ZooKeeper", log_hint=str(ZK_LOG))
            return False
        desc = f"pid {other}: {cmdline(other)[:160]}" if other else "unknown process"
        if not replace_foreign:
            say(f"WARNING: a ZooKeeper we did not start answers on {HOST}:{ZK_PORT} ({desc}); using it as it is "
                "(run `start --replace-foreign-zookeeper` to replace it with ours)")
            return True
        if not other:
            raise ServiceError(f"port {ZK_PORT} is taken by a process we cannot identify; stop it first")
        say(f"stopping the foreign ZooKeeper on port {ZK_PORT} ({desc})")
        terminate(other, "foreign ZooKeeper")
        wait_until(lambda: not port_open(ZK_PORT), f"port {ZK_PORT} to be released", timeout=20)

    for jar in ZK_JARS[:1]:
        if not Path(jar).is_file():
            raise ServiceError(f"{jar} is missing: install Debian's zookeeper package (`make install`)")
    java = shutil.which("java")
    if not java:
        raise ServiceError("java not found: install Debian's zookeeper package (`make install`)")
    (ZK_DIR / "data").mkdir(parents=True, exist_ok=True)
    write_if_changed(ZK_CFG, zk_config_text())
    write_if_changed(ZK_JAAS, zk_jaas_text(password), mode=0o600)
    classpath = ":".join([str(ZK_DIR)] + [jar for jar in ZK_JARS if Path(jar).is_file()])
    cmd = [java, "-Xmx256m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
           f"-Dzookeeper.log.dir={ZK_DIR}",
           f"-Djava.security.auth.login.config={ZK_JAAS}",
           "-Dorg.slf4j.simpleLogger.showDateTime=true",
           "-cp", classpath, "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(ZK_CFG)]
    with open(ZK_LOG, "ab") as log_file:
        log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        log_file.flush()
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True)
    ZK_PID.write_text(f"{process.pid}\n")
    say(f"starting ZooKeeper on {HOST}:{ZK_PORT} (pid {process.pid}, log {ZK_LOG})")

    def ready() -> bool:
        if process.poll() is not None:
            raise ServiceError(f"ZooKeeper exited with code {process.returncode}; see {ZK_LOG}")
        return zk_four_letter("ruok") == "imok" and zk_serving()
    wait_until(ready, "ZooKeeper", log_hint=str(ZK_LOG))
    return False


def stop_zookeeper() -> None:
    pid = zk_ours()
    if not pid:
        say("ZooKeeper: not running (ours)")
        return
    say(f"stopping ZooKeeper (pid {pid})")
    terminate(pid, "ZooKeeper")
    ZK_PID.unlink(missing_ok=True)


# --- SFTP (OpenSSH) ---------------------------------------------------------------

def sshd_config_text() -> str:
    keys = "\n".join(f"HostKey {SSHD_DIR / name}" for name in ("ssh_host_ed25519_key", "ssh_host_ecdsa_key"))
    return f"""# Written by scripts/local_services.py: an SFTP-only server for the pero-worker suite.
ListenAddress {HOST}
Port {SFTP_PORT}
{keys}
PidFile {SSHD_PID}
AllowUsers {USER}
PermitRootLogin no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile none
UsePAM no
StrictModes no
PermitEmptyPasswords no
Subsystem sftp internal-sftp
ForceCommand internal-sftp
AllowTcpForwarding no
AllowAgentForwarding no
AllowStreamLocalForwarding no
PermitTunnel no
X11Forwarding no
PermitTTY no
PrintMotd no
# Many parallel test sessions connect at once.
MaxStartups 100:30:300
MaxSessions 50
LoginGraceTime 30
LogLevel INFO
"""


def ensure_sftp_user(password: str) -> None:
    """System user `pero` with home under run/ (SFTP paths like `pero/model.tar.xz` are relative to it)."""
    SFTP_HOME.mkdir(parents=True, exist_ok=True)
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        nologin = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
        say(f"creating system user {USER} (home {SFTP_HOME})")
        run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(SFTP_HOME),
             "--shell", nologin, "--comment", USER_COMMENT, USER], "useradd")
        entry = pwd.getpwnam(USER)
    if entry.pw_gecos != USER_COMMENT:
        raise ServiceError(f"a user named {USER!r} exists and was not created by this script "
                           f"(comment {entry.pw_gecos!r}); refusing to change its password")
    # Compared resolved: run/ may be a symlink shared by several checkouts, and moving the home
    # between two spellings of one folder would only make each checkout undo the other.
    home = SFTP_HOME.resolve()
    if os.path.realpath(entry.pw_dir) != str(home):
        say(f"moving {USER}'s home from {entry.pw_dir} to {home}")
        run(["usermod", "--home", str(home), USER], "usermod")
    stat = SFTP_HOME.stat()
    if (stat.st_uid, stat.st_gid) != (entry.pw_uid, entry.pw_gid):
        os.chown(SFTP_HOME, entry.pw_uid, entry.pw_gid)
    SFTP_HOME.chmod(0o755)
    ensure_upload_folder(SFTP_HOME, entry.pw_uid, entry.pw_gid)
    # The user must be able to reach its home: every folder above it needs o+x.
    for parent in SFTP_HOME.parents:
        if not parent.stat().st_mode & 0o001:
            raise ServiceError(f"{parent} is not traversable by other users, so user {USER} cannot reach "
                               f"{SFTP_HOME}: chmod o+x {parent}")
    # chpasswd rewrites /etc/shadow: only when the password changed since we last set it. The stamp
    # also records the resulting shadow hash, so a change made by anyone else (another checkout's
    # harness, an admin) is noticed and our password is set again.
    stamp = SECRETS_DIR / "sftp-user.applied"
    applied = hashlib.sha256(f"{entry.pw_uid}:{password}".encode()).hexdigest()
    with contextlib.suppress(OSError):
        if stamp.read_text().strip() == f"{applied} {_shadow_hash()}":
            return
    subprocess.run(["chpasswd"], input=f"{USER}:{password}\n", text=True, check=True, capture_output=True)
    stamp.write_text(f"{applied} {_shadow_hash()}\n")


def ensure_upload_folder(home: Path, uid: int, gid: int) -> Path:
    """The writable `pero/` folder in the SFTP home: model archives go to `pero/<stage>/...` by convention,
    and the original system's stage_config_manager.py (`--remote-path pero/<stage>/...`) needs it to exist."""
    folder = home / SFTP_UPLOAD_FOLDER
    if not os.path.lexists(folder):
        folder.mkdir(mode=0o755)
    stat = folder.lstat()
    if not stat_module.S_ISDIR(stat.st_mode):
        raise ServiceError(f"{folder} should be the SFTP upload folder but is not a folder: remove it")
    if (stat.st_uid, stat.st_gid) != (uid, gid):
        os.chown(folder, uid, gid)
    if stat.st_mode & 0o777 != 0o755:
        folder.chmod(0o755)
    return folder


def _shadow_hash() -> str:
    """The user's password hash in /etc/shadow ('' when it has none or it cannot be read)."""
    try:
        with open("/etc/shadow") as shadow:
            for line in shadow:
                fields = line.split(":")
                if fields[0] == USER:
                    return fields[1] if fields[1].startswith("$") else ""
    except OSError:
        pass
    return ""


def sshd_ours() -> int | None:
    pid = read_pid(SSHD_PID)
    if pid and pid_alive(pid) and "sshd" in cmdline(pid):
        return pid
    return None


def ssh_banner() -> bool:
    try:
        with socket.create_connection((HOST, SFTP_PORT), timeout=1.0) as sock:
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def start_sshd(password: str) -> None:
    if sshd_ours() and ssh_banner():
        ensure_sftp_user(password)
        return
    if port_open(SFTP_PORT):
        # Checked before touching the user: another checkout's sshd may be serving this user's home.
        other = listening_pid(SFTP_PORT)
        raise ServiceError(f"port {SFTP_PORT} is taken by another process (pid {other}: "
                           f"{cmdline(other)[:160] if other else '?'}); stop it first")
    ensure_sftp_user(password)
    if not Path(SSHD_BIN).exists():
        raise ServiceError(f"{SSHD_BIN} is missing: install openssh-server (`make install`)")
    SSHD_DIR.mkdir(parents=True, exist_ok=True)
    SSHD_DIR.chmod(0o700)
    for kind in ("ed25519", "ecdsa"):
        key = SSHD_DIR / f"ssh_host_{kind}_key"
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "pero-local-sftp", "-f", str(key)], "ssh-keygen")
    write_if_changed(SSHD_CONFIG, sshd_config_text(), mode=0o600)
    # sshd's privilege separation needs this folder (normally made by systemd).
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    run([SSHD_BIN, "-t", "-f", str(SSHD_CONFIG)], "sshd config check")
    SSHD_PID.unlink(missing_ok=True)
    run([SSHD_BIN, "-f", str(SSHD_CONFIG), "-E", str(SSHD_LOG)], "starting sshd")
    wait_until(lambda: sshd_ours() is not None and ssh_banner(), "sshd", timeout=20, log_hint=str(SSHD_LOG))
    say(f"started sshd (SFTP) on {HOST}:{SFTP_PORT} (pid {sshd_ours()}, log {SSHD_LOG})")


def stop_sshd() -> None:
    pid = sshd_ours()
    if not pid:
        say("sshd: not running (ours)")
        return
    say(f"stopping sshd (pid {pid})")
    terminate(pid, "sshd")
    SSHD_PID.unlink(missing_ok=True)


# --- RabbitMQ ---------------------------------------------------------------------

def mgmt_request(method: str, path: str, user: str, password: str, body: dict | None = None) -> tuple[int, object]:
    url = f"http://{HOST}:{MQ_MGMT_PORT}/api/{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as error:
        return error.code, None
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)


def rabbit_configured(password: str) -> bool:
    status, _ = mgmt_request("GET", "whoami", USER, password)
    if status != 200:
        return False
    quoted = urllib.parse.quote(VHOST, safe="")
    for user in (USER, "guest"):
        status, _ = mgmt_request("GET", f"permissions/{quoted}/{user}", "guest", "guest")
        if status != 200:
            return False
    return True


def configure_rabbit(password: str) -> None:
    """vhost `pero`, user `pero` (monitoring: the watchdog reads every queue's stats), guest kept working."""
    quoted = urllib.parse.quote(VHOST, safe="")
    full = {"configure": ".*", "write": ".*", "read": ".*"}
    status, _ = mgmt_request("GET", "whoami", "guest", "guest")
    if status == 200:
        steps = [("PUT", f"vhosts/{quoted}", {}),
                 ("PUT", f"users/{USER}", {"password": password, "tags": "monitoring,management"}),
                 ("PUT", f"permissions/{quoted}/{USER}", full),
                 ("PUT", f"permissions/{quoted}/guest", full)]
        for method, path, body in steps:
            code, detail = mgmt_request(method, path, "guest", "guest", body)
            if code not in (200, 201, 204):
                raise ServiceError(f"RabbitMQ management API {method} /api/{path} answered {code}: {detail}")
    else:
        # The guest user cannot use the HTTP API: configure through rabbitmqctl (slower).
        ctl = "rabbitmqctl"
        vhosts = run([ctl, "-q", "list_vhosts"], "rabbitmqctl").split()
        if VHOST not in vhosts:
            run([ctl, "add_vhost", VHOST], "rabbitmqctl add_vhost")
        users = [line.split()[0] for line in run([ctl, "-q", "list_users"], "rabbitmqctl").splitlines() if line]
        if USER in users:
            run([ctl, "change_password", USER, password], "rabbitmqctl change_password")
        else:
            run([ctl, "add_user", USER, password], "rabbitmqctl add_user")
        run([ctl, "set_user_tags", USER, "monitoring", "management"], "rabbitmqctl set_user_tags")
        for user in (USER, "guest"):
            run([ctl, "set_permissions", "-p", VHOST, user, ".*", ".*", ".*"], "rabbitmqctl set_permissions")
    say(f"RabbitMQ: vhost {VHOST}, user {USER} (tags monitoring, management) configured")


def start_rabbitmq(password: str) -> None:
    if not port_open(MQ_PORT):
        say("RabbitMQ is not running: rabbitmq-server -detached")
        run(["rabbitmq-server", "-detached"], "starting RabbitMQ")
        wait_until(lambda: port_open(MQ_PORT), "RabbitMQ", timeout=120, log_hint="/var/log/rabbitmq/")
    if not port_open(MQ_MGMT_PORT):
        say("enabling the RabbitMQ management plugin")
        run(["rabbitmq-plugins", "enable", "rabbitmq_management"], "rabbitmq-plugins enable")
        wait_until(lambda: port_open(MQ_MGMT_PORT), "RabbitMQ management API", timeout=120)
    if not rabbit_configured(password):
        configure_rabbit(password)
        wait_until(lambda: rabbit_configured(password), "RabbitMQ user pero", timeout=20)


# --- server lists in ZooKeeper ------------------------------------------------------

def write_server_lists(zk, services: LocalServices | None = None) -> None:
    """Register the local broker, management API and SFTP server under /pero/worker/config/.

    `zk` is a started pero_worker.libs.zk.ZooKeeper, possibly on a chroot (tests).  Entries
    that others added stay: the lists are only ever extended here.
    """
    from pero_worker.libs import zk_paths  # not at module level: `status` and `stop` stay light

    services = services or LocalServices(password="")
    for parent, address in ((zk_paths.MQ_SERVERS, services.mq_address),
                            (zk_paths.MQ_MONITORING_SERVERS, services.mq_mgmt_address),
                            (zk_paths.FTP_SERVERS, services.sftp_address)):
        zk.ensure_path(f"{parent}/{address}")


def record_server_lists(services: LocalServices) -> None:
    from pero_worker.libs.addresses import parse_address_list
    from pero_worker.libs.config import ConnectionConfig
    from pero_worker.libs.zk import ZooKeeper

    config = ConnectionConfig(zookeeper_servers=tuple(parse_address_list([services.zk_address], ZK_PORT)))
    with ZooKeeper(config, timeout=15) as zk:
        write_server_lists(zk, services)


# --- the whole set ------------------------------------------------------------------

def ensure_services(*, replace_foreign_zookeeper: bool = False) -> LocalServices:
    """Start whatever is not running (idempotent; fast when all is up) and return where it listens."""
    with services_lock():
        password = load_password()
        foreign = start_zookeeper(password, replace_foreign=replace_foreign_zookeeper)
        start_sshd(password)
        start_rabbitmq(password)
        services = LocalServices(password=password, zk_foreign=foreign)
        record_server_lists(services)
    return services


def stop_services() -> None:
    """Stop what we started (ZooKeeper, sshd); the machine's RabbitMQ keeps running."""
    with services_lock():
        stop_sshd()
        stop_zookeeper()


def service_status() -> dict[str, str]:
    zk_pid = zk_ours()
    if zk_serving():
        zk = f"running (ours, pid {zk_pid})" if zk_pid else f"running (foreign, pid {listening_pid(ZK_PORT)})"
    else:
        zk = f"starting or stuck (pid {zk_pid})" if zk_pid else "down"
    sshd_pid = sshd_ours()
    if ssh_banner():
        sftp = f"running (ours, pid {sshd_pid})" if sshd_pid else f"foreign (pid {listening_pid(SFTP_PORT)})"
    else:
        sftp = "down"
    mq = "running" if port_open(MQ_PORT) else "down"
    mgmt = "running" if port_open(MQ_MGMT_PORT) else "down"
    return {
        f"zookeeper {HOST}:{ZK_PORT}": zk,
        f"sftp {HOST}:{SFTP_PORT}": sftp,
        f"rabbitmq {HOST}:{MQ_PORT}": mq,
        f"rabbitmq-management {HOST}:{MQ_MGMT_PORT}": mgmt,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="local_services.py",
        description="Start, stop or inspect the local ZooKeeper, SFTP (OpenSSH) and RabbitMQ services "
                    "that tests, `make services` and the demo use (state under <repo>/run/).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
               "  start   start what is not running, configure users, write server lists to ZooKeeper\n"
               "  stop    stop our ZooKeeper and sshd (never the machine's RabbitMQ)\n"
               "  status  show what runs; exit code 0 only when everything is up\n"
               "  env     print shell exports: eval \"$(python scripts/local_services.py env)\"")
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument("--replace-foreign-zookeeper", action="store_true",
                        help="start: stop a ZooKeeper on port 2181 that we did not start and start ours")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            started = time.monotonic()
            services = ensure_services(replace_foreign_zookeeper=args.replace_foreign_zookeeper)
            say(f"ready in {time.monotonic() - started:.1f} s: ZooKeeper {services.zk_address}, "
                f"RabbitMQ {services.mq_address} (management {services.mq_mgmt_address}, vhost {services.vhost}), "
                f"SFTP {services.sftp_address}; user {services.user}, password in {services.password_file}")
        elif args.command == "stop":
            stop_services()
        elif args.command == "status":
            status = service_status()
            for name, state in status.items():
                print(f"{name:40} {state}")
            return 0 if all(s.startswith("running") for s in status.values()) else 3
        elif args.command == "env":
            services = LocalServices(password="")
            for key, value in services.env().items():
                print(f"export {key}={shlex.quote(value)}")
    except ServiceError as error:
        say(f"error: {error}")
        return 1
    return 0
