"""A secure deployment made by scripts/system_setup.py, used by the real tools.

One deployment per test session (a second RabbitMQ node is heavy on a 2-core
machine), on ports that do not collide with the plain services every other test
uses: ZooKeeper TLS 12281, AMQPS 25671, HTTPS management 25681, Erlang
distribution 45671, SFTP 2322, service user `perosec`.  It is stopped and
removed (engines, system account, files) at the end.

Checked here: TLS-only listeners, SASL-only ZooKeeper, no guest, the generated
files and their modes, re-running keeps secrets, passwords appear nowhere but in
the 0600 secrets, and every client gives one clear line (no traceback, no retry
storm) for a wrong password, an untrusted or expired certificate and a wrong
host name.  The end-to-end test runs a worker, the watchdog, the log daemon and
publisher.py from the generated INI files.
"""
from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from needs import require  # tests/ helper: a skip here, a failure with CI=true

from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import Address
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.mq import MQAuthenticationError, MQConnectionError, MQSession, MQSettings
from pero_worker.libs.sftp import SftpAuthError, SftpClient, SftpConnectError, SftpSettings
from pero_worker.libs.zk import ZkConnectionError, ZooKeeper
from pero_worker.tools.deploy import pki
from pero_worker.tools.deploy.layout import Layout

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "scripts" / "system_setup.py"
BASE = Path("/tmp/pero-secure-test")
USER = "perosec"
ZK_PORT, AMQPS_PORT, MGMT_PORT, SFTP_PORT = 12281, 25671, 25681, 2322
PORT_ARGS = ["--zookeeper-port", str(ZK_PORT), "--mq-port", str(AMQPS_PORT), "--management-port", str(MGMT_PORT),
             "--sftp-port", str(SFTP_PORT), "-u", USER]
PY = sys.executable



@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    """Before the deployment fixture: a skip on a partial set-up, a failure with CI=true."""
    require(os.geteuid() == 0, "needs root (system_setup.py creates a system account and starts sshd)")
    require(bool(shutil.which("java")), "needs java (ZooKeeper): apt-get install default-jre-headless")
    require(os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"), "needs Debian's rabbitmq-server")
    require(os.path.exists("/usr/sbin/sshd"), "needs openssh-server")


class Deployment:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.config = base / "config"
        self.data = base / "data"
        self.ca = str(self.config / "certificates" / "ca.pem")
        self.known_hosts = str(self.config / "certificates" / "known_hosts")

    @property
    def password(self) -> str:
        return (self.config / "secrets" / "service.password").read_text().strip()

    @property
    def admin_password(self) -> str:
        return (self.config / "secrets" / "admin.password").read_text().strip()

    def setup(self, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([PY, str(SETUP), "-z", "127.0.0.1", "-s", "127.0.0.1", "-f", "127.0.0.1",
                               "-o", str(self.config), "-d", str(self.data), *PORT_ARGS, *extra],
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> subprocess.CompletedProcess:
        return subprocess.run([PY, str(SETUP), "--stop", "-o", str(self.config), "-d", str(self.data)],
                              capture_output=True, text=True, timeout=180)

    def zk_conn(self, **overrides) -> ConnectionConfig:
        values = dict(zookeeper_servers=(Address("127.0.0.1", ZK_PORT),), username=USER, password=self.password,
                      ca_cert=self.ca)
        values.update(overrides)
        return ConnectionConfig(**values)

    def mq_settings(self, **overrides) -> MQSettings:
        values = dict(servers=(Address("127.0.0.1", AMQPS_PORT),), username=USER, password=self.password,
                      ca_cert=self.ca)
        values.update(overrides)
        return MQSettings(**values)

    def sftp_settings(self, **overrides) -> SftpSettings:
        values = dict(servers=(Address("127.0.0.1", SFTP_PORT),), username=USER, password=self.password,
                      known_hosts=self.known_hosts, timeout=10.0)
        values.update(overrides)
        return SftpSettings(**values)

    def all_logs(self) -> str:
        texts = []
        for path in self.base.rglob("*.log"):
            texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)


def _remove_account() -> None:
    subprocess.run(["userdel", USER], capture_output=True)


def _account_exists() -> bool:
    import pwd
    try:
        pwd.getpwnam(USER)
        return True
    except KeyError:
        return False


# BASE is under /tmp (world-writable), where sshd cannot jail anyone: setup moves the jail here.
JAIL = Layout(BASE / "config", BASE / "data").fallback_sftp_root()


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    dep = Deployment(BASE)
    if (BASE / "data" / "run" / "setup.json").exists():
        dep.stop()                      # an interrupted earlier run
    _remove_account()                   # ... which may have left its account behind
    shutil.rmtree(JAIL, ignore_errors=True)
    busy = [port for port in (ZK_PORT, AMQPS_PORT, MGMT_PORT, SFTP_PORT) if _listening(port)]
    if busy:
        pytest.fail(f"ports {busy} are already in use (another secure deployment running?): stop it first")
    shutil.rmtree(BASE, ignore_errors=True)
    BASE.mkdir(parents=True)
    BASE.chmod(0o755)                   # the rabbitmq and zookeeper accounts must reach their files
    started = time.monotonic()
    done = dep.setup()
    dep.setup_output = done.stdout + done.stderr
    dep.setup_seconds = time.monotonic() - started
    try:
        assert done.returncode == 0, dep.setup_output
        yield dep
    finally:
        stopped = dep.stop()
        account_left = _account_exists()
        _remove_account()
        leftovers = [port for port in (ZK_PORT, AMQPS_PORT, MGMT_PORT, SFTP_PORT) if _listening(port)]
        shutil.rmtree(BASE, ignore_errors=True)
        shutil.rmtree(JAIL, ignore_errors=True)
        if JAIL.parent.is_dir() and not any(JAIL.parent.iterdir()):
            JAIL.parent.rmdir()
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not leftovers, f"still listening after --stop: {leftovers}"
        assert not account_left, f"--stop left the system account {USER!r} behind: {stopped.stderr}"
        assert f"system account {USER!r} removed" in stopped.stderr


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# --- what system_setup.py wrote ---------------------------------------------------------

def test_setup_output_names_every_step_and_no_secret(deployment):
    out = deployment.setup_output
    for expected in ("ZooKeeper on port 12281: started", "RabbitMQ on ports 25671/25681: started",
                     "SFTP on port 2322: started", "management API answers", "mq_servers/127.0.0.1:25671 added",
                     "ftp_servers/127.0.0.1:2322 added", "mq_monitoring_servers/127.0.0.1:25681 added"):
        assert expected in out, out
    assert deployment.password not in out and deployment.admin_password not in out
    assert "Traceback" not in out
    print(f"system_setup.py took {deployment.setup_seconds:.1f} s")


def test_secret_files_are_private_and_the_only_place_of_passwords(deployment):
    config = deployment.config
    for private in ("secrets/service.password", "secrets/admin.password", "zookeeper/jaas.conf",
                    "zookeeper/keystore.pass", "zookeeper/truststore.pass", "zookeeper/keystore.p12",
                    "certificates/ca.key", "certificates/zookeeper.key", "certificates/rabbitmq.key",
                    "rabbitmq/definitions.json"):
        mode = (config / private).stat().st_mode & 0o777
        assert mode == 0o600, f"{private} has mode {mode:o}"
    assert (config / "secrets").stat().st_mode & 0o077 == 0
    allowed = {config / "secrets" / "service.password", config / "secrets" / "admin.password",
               config / "zookeeper" / "jaas.conf"}
    secrets = [deployment.password.encode(), deployment.admin_password.encode()]
    for path in deployment.base.rglob("*"):
        if path.is_file() and path not in allowed:
            data = path.read_bytes()
            assert not any(secret in data for secret in secrets), f"a password is in {path}"


def test_ini_files_point_to_the_secret_and_the_ca(deployment):
    for name, section in (("worker", "[WORKER]"), ("watchdog", "[WATCHDOG]"), ("logd", "[LOGD]")):
        text = (deployment.config / f"{name}.ini").read_text()
        assert section in text
        assert f"zookeeper_servers = 127.0.0.1:{ZK_PORT}" in text
        assert f"password_file = {deployment.config / 'secrets' / 'service.password'}" in text
        assert f"ca_cert = {deployment.ca}" in text
        assert f"username = {USER}" in text


def test_engines_listen_only_on_tls_ports(deployment):
    zoo = (deployment.config / "zookeeper" / "zoo.cfg").read_text()
    assert "\nclientPort" not in zoo and f"secureClientPort={ZK_PORT}" in zoo
    conf = (deployment.config / "rabbitmq" / "rabbitmq.conf").read_text()
    assert "listeners.tcp = none" in conf
    # Our RabbitMQ node's sockets: AMQPS, HTTPS management and the (loopback) Erlang distribution port only.
    pid = int((deployment.data / "run" / "rabbitmq.pid").read_text().split()[0])
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in ss.splitlines() if f"pid={pid}," in line}
    assert ports == {AMQPS_PORT, MGMT_PORT, AMQPS_PORT + 20000}, ss


# --- hardening: the SFTP jail, TLS suites and versions, private ZooKeeper data ---------------------

def test_the_sftp_user_is_jailed(deployment):
    """It sees only pero/: not /, not /etc/passwd, not the generated files, and cannot write outside pero/;
    a symbolic link it plants resolves inside the jail."""
    sshd = (deployment.config / "sftp" / "sshd_config").read_text()
    assert f"ChrootDirectory {JAIL}\n" in sshd
    assert "jailed in" in deployment.setup_output
    assert JAIL.stat().st_uid == 0 and JAIL.stat().st_mode & 0o022 == 0
    with SftpClient(deployment.sftp_settings()) as client:
        assert client.listdir("/") == ["pero"] and client.listdir("..") == ["pero"]
        for outside in ("/etc/passwd", str(deployment.config / "worker.ini"),
                        str(deployment.config / "rabbitmq" / "rabbitmq.conf"),
                        str(deployment.data / "run" / "setup.json"), str(deployment.data / "zookeeper")):
            assert not client.exists(outside), outside
        sftp = client._session()
        for target in ("/planted.txt", "/tmp/planted.txt"):
            with pytest.raises(IOError):
                sftp.open(target, "w").close()
        link = f"pero/passwd_{uuid.uuid4().hex[:6]}"
        sftp.symlink("/etc/passwd", link)
        try:
            with pytest.raises(IOError):
                sftp.open(link).read()
        finally:
            sftp.remove(link)
    assert not Path("/planted.txt").exists() and not Path("/tmp/planted.txt").exists()


CBC_SHA1 = ("ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
            "DHE-RSA-AES128-SHA:DHE-RSA-AES256-SHA:AES128-SHA:AES256-SHA:@SECLEVEL=0")
TLS_PORTS = {"ZooKeeper": ZK_PORT, "AMQPS": AMQPS_PORT, "HTTPS management": MGMT_PORT}


def _handshake(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    """(TLS version, cipher suite) that the server at 127.0.0.1:port agrees to with this client context."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket:
        return tls_socket.version(), tls_socket.cipher()[0]


@pytest.mark.parametrize("service", list(TLS_PORTS))
def test_no_cbc_sha1_suite_is_accepted(deployment, service):
    weak = ssl.create_default_context(cafile=deployment.ca)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers(CBC_SHA1)
    with pytest.raises(ssl.SSLError):
        _handshake(TLS_PORTS[service], weak)
    tls12 = ssl.create_default_context(cafile=deployment.ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    version, cipher = _handshake(TLS_PORTS[service], tls12)
    assert version == "TLSv1.2" and ("GCM" in cipher or "CHACHA20" in cipher), cipher


@pytest.mark.parametrize("service", list(TLS_PORTS))
def test_tls_1_3_is_offered(deployment, service):
    modern = ssl.create_default_context(cafile=deployment.ca)
    modern.minimum_version = ssl.TLSVersion.TLSv1_3
    assert _handshake(TLS_PORTS[service], modern)[0] == "TLSv1.3"


def test_zookeeper_data_is_private(deployment):
    data = deployment.data / "zookeeper"
    with ZooKeeper(deployment.zk_conn()) as zk:        # make sure it has written something
        zk.set_text(f"{zk_paths.ROOT}/private_{uuid.uuid4().hex[:6]}", "x")
    entries = [data, *data.rglob("*")]
    assert any(path.is_file() for path in entries)
    exposed = [f"{path} {path.stat().st_mode & 0o777:o}" for path in entries if path.stat().st_mode & 0o077]
    assert not exposed, exposed


def test_plain_text_clients_are_refused(deployment):
    started = time.monotonic()
    with pytest.raises(ZkConnectionError) as zk_error:
        ZooKeeper(deployment.zk_conn(ca_cert=None), timeout=4).start()
    assert "give its CA certificate with -e/--ca-cert" in str(zk_error.value)
    with pytest.raises(MQConnectionError):
        MQSession(deployment.mq_settings(ca_cert=None)).open(retry_for=1)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{MGMT_PORT}/api/whoami", auth=(USER, deployment.password), timeout=5)
    assert time.monotonic() - started < 20


def test_anonymous_zookeeper_is_refused(deployment):
    with pytest.raises(ZkConnectionError) as error:
        ZooKeeper(deployment.zk_conn(username=None, password=None), timeout=5).start()
    assert "requires a login" in str(error.value)


def test_pero_tree_belongs_to_the_service_user(deployment):
    with ZooKeeper(deployment.zk_conn()) as zk:
        acls, _ = zk.client.get_acls(zk_paths.ROOT)
        assert [(acl.id.scheme, acl.id.id) for acl in acls] == [("sasl", USER)]
        assert zk.children(zk_paths.MQ_SERVERS) == [f"127.0.0.1:{AMQPS_PORT}"]
        assert zk.children(zk_paths.FTP_SERVERS) == [f"127.0.0.1:{SFTP_PORT}"]
    # The admin is ZooKeeper's super user; another SASL user would be refused by the ACL.
    with ZooKeeper(deployment.zk_conn(username="admin", password=deployment.admin_password)) as zk:
        assert zk.children(zk_paths.MQ_MONITORING_SERVERS) == [f"127.0.0.1:{MGMT_PORT}"]


def test_guest_cannot_log_in(deployment):
    with pytest.raises(MQAuthenticationError):
        MQSession(deployment.mq_settings(username="guest", password="guest")).open(retry_for=2)
    response = requests.get(f"https://127.0.0.1:{MGMT_PORT}/api/whoami", auth=("guest", "guest"),
                            verify=deployment.ca, timeout=10)
    assert response.status_code == 401


def test_service_user_can_use_every_engine(deployment, tmp_path):
    session = MQSession(deployment.mq_settings())
    session.open(retry_for=10)
    queue = f"secure_{uuid.uuid4().hex[:8]}"
    try:
        session.declare_stage_queue(queue)
        assert session.queue_length(queue) == 0
    finally:
        session.delete_queue(queue)
        session.close()
    response = requests.get(f"https://127.0.0.1:{MGMT_PORT}/api/queues/pero", auth=(USER, deployment.password),
                            verify=deployment.ca, timeout=10)
    assert response.status_code == 200
    with SftpClient(deployment.sftp_settings()) as client:
        source = tmp_path / "probe.bin"
        source.write_bytes(b"x" * 1000)
        client.upload(str(source), f"pero/probe_{uuid.uuid4().hex[:6]}.bin")


# --- one clear line per failure, for every client -----------------------------------------

def _one_line(text: str) -> str:
    assert "\n" not in text and "Traceback" not in text, text
    return text


def test_wrong_password_is_one_clear_error_per_client(deployment):
    started = time.monotonic()
    with pytest.raises(ZkConnectionError) as zk_error:
        ZooKeeper(deployment.zk_conn(password="wrong-password"), timeout=5).start()
    assert "refused the login" in _one_line(str(zk_error.value))
    with pytest.raises(MQAuthenticationError) as mq_error:
        MQSession(deployment.mq_settings(password="wrong-password")).open(retry_for=5)
    assert "refused" in _one_line(str(mq_error.value))
    with pytest.raises(SftpAuthError) as sftp_error:
        SftpClient(deployment.sftp_settings(password="wrong-password")).connect()
    assert "authentication failed" in _one_line(str(sftp_error.value))
    # Permanent failures are not retried: all three within a few seconds.
    assert time.monotonic() - started < 15


def test_untrusted_certificate_is_one_clear_error_per_client(deployment, tmp_path):
    other_ca = tmp_path / "other-ca.pem"
    pki.create_ca(other_ca, tmp_path / "other-ca.key", common_name="someone else")
    started = time.monotonic()
    with pytest.raises(ZkConnectionError) as zk_error:
        ZooKeeper(deployment.zk_conn(ca_cert=str(other_ca)), timeout=5).start()
    assert "not signed by the CA in" in _one_line(str(zk_error.value))
    with pytest.raises(MQConnectionError) as mq_error:
        MQSession(deployment.mq_settings(ca_cert=str(other_ca))).open(retry_for=5)
    assert "certificate verify failed" in _one_line(str(mq_error.value))
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://127.0.0.1:{MGMT_PORT}/api/whoami", verify=str(other_ca), timeout=5)
    assert time.monotonic() - started < 10


def test_wrong_host_name_is_one_clear_error_per_client(deployment):
    # The engines listen on every interface, but the certificates name only the loopback spellings.
    started = time.monotonic()
    with pytest.raises(ZkConnectionError) as zk_error:
        ZooKeeper(deployment.zk_conn(zookeeper_servers=(Address("127.0.0.2", ZK_PORT),)), timeout=5).start()
    assert "not valid for the name '127.0.0.2'" in _one_line(str(zk_error.value))
    with pytest.raises(MQConnectionError) as mq_error:
        MQSession(deployment.mq_settings(servers=(Address("127.0.0.2", AMQPS_PORT),))).open(retry_for=5)
    assert "not valid for '127.0.0.2'" in _one_line(str(mq_error.value))
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://127.0.0.2:{MGMT_PORT}/api/whoami", verify=deployment.ca, timeout=5)
    assert time.monotonic() - started < 10


def test_sftp_host_key_is_checked(deployment, tmp_path):
    wrong = tmp_path / "known_hosts"
    line = Path(deployment.known_hosts).read_text().splitlines()[0]
    label, key_type, _key = line.split()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode().split()[1]
    wrong.write_text(f"{label} {key_type} {other}\n")
    with pytest.raises(SftpConnectError) as error:
        SftpClient(deployment.sftp_settings(known_hosts=str(wrong))).connect()
    assert "host key" in _one_line(str(error.value))


class _TLSServer:
    """A TLS server presenting a given certificate: lets clients meet an expired one."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.recv(1)
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.stopped = True
        self.sock.close()


def test_expired_certificate_is_one_clear_error_per_client(deployment, tmp_path):
    ca_cert = pki.load_cert(Path(deployment.ca))
    ca_key = pki.load_key(deployment.config / "certificates" / "ca.key")
    cert, key = tmp_path / "expired.pem", tmp_path / "expired.key"
    pki.issue_server_cert(ca_cert, ca_key, ["127.0.0.1", "localhost"], cert, key, days=1,
                          not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3))
    server = _TLSServer(cert, key)
    try:
        started = time.monotonic()
        with pytest.raises(ZkConnectionError) as zk_error:
            ZooKeeper(deployment.zk_conn(zookeeper_servers=(Address("127.0.0.1", server.port),)), timeout=5).start()
        assert "certificate has expired" in _one_line(str(zk_error.value))
        with pytest.raises(MQConnectionError) as mq_error:
            MQSession(deployment.mq_settings(servers=(Address("127.0.0.1", server.port),))).open(retry_for=5)
        assert "certificate has expired" in _one_line(str(mq_error.value))
        with pytest.raises(requests.exceptions.SSLError) as http_error:
            requests.get(f"https://127.0.0.1:{server.port}/api/whoami", verify=deployment.ca, timeout=5)
        assert "certificate has expired" in str(http_error.value)
        assert time.monotonic() - started < 10
    finally:
        server.close()


# --- re-running ----------------------------------------------------------------------------

def test_rerun_keeps_secrets_certificates_and_data(deployment):
    config = deployment.config
    kept = ["secrets/service.password", "secrets/admin.password", "certificates/ca.pem", "certificates/ca.key",
            "certificates/zookeeper.pem", "certificates/rabbitmq.pem", "certificates/known_hosts",
            "rabbitmq/definitions.json", "zookeeper/keystore.p12"]
    before = {name: (config / name).read_bytes() for name in kept}
    with ZooKeeper(deployment.zk_conn()) as zk:
        marker = f"{zk_paths.ROOT}/rerun_{uuid.uuid4().hex[:6]}"
        zk.set_text(marker, "still here")
    done = deployment.setup(timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already running" in done.stderr and "password kept" in done.stderr
    assert {name: (config / name).read_bytes() for name in kept} == before
    with ZooKeeper(deployment.zk_conn()) as zk:
        assert zk.get_text(marker) == "still here"
        zk.delete(marker)


# --- the suite's daemons and tools, from the generated INI files ---------------------------

def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    handle = open(log, "ab")
    return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _model_archive(path: Path) -> None:
    with tarfile.open(path, "w:gz") as archive:
        data = b"a model file\n"
        info = tarfile.TarInfo("model/readme.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


def test_pages_flow_end_to_end_over_tls(deployment, tmp_path):
    config, ca = deployment.config, deployment.ca
    env = {**os.environ, "PERO_SFTP_KNOWN_HOSTS": deployment.known_hosts}
    env.pop("PERO_PASSWORD", None)
    stage, out = f"sec_stage_{uuid.uuid4().hex[:6]}", f"sec_out_{uuid.uuid4().hex[:6]}"
    stage_ini = tmp_path / "stage.ini"
    stage_ini.write_text("[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\nTIME_DIFF_MIN = 0.05\nTIME_DIFF_MAX = 0.05\n")
    archive = tmp_path / "model.tar.gz"
    _model_archive(archive)
    manager = [PY, "scripts/stage_config_manager.py", "--connection-config", str(config / "worker.ini"), "-e", ca]
    # The password from the INI file's password_file, then from --password-file.
    explicit = [PY, "scripts/stage_config_manager.py", "-z", f"127.0.0.1:{ZK_PORT}", "-u", USER, "-e", ca,
                "--password-file", str(config / "secrets" / "service.password")]
    for command in (manager + ["--name", stage, "-c", str(stage_ini), "--file", str(archive)],
                    explicit + ["--name", out]):
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    logs = tmp_path / "logs"
    logs.mkdir()
    worker_id = f"secure_{uuid.uuid4().hex[:8]}"
    daemons = [
        _spawn([PY, "worker/run_worker.py", "-c", str(config / "worker.ini"), "-e", ca, "-i", worker_id,
                "--cache-directory", str(tmp_path / "cache")], logs / "worker.log", env),
        _spawn([PY, "watchdog/worker_watchdog.py", "-c", str(config / "watchdog.ini"), "-e", ca],
               logs / "watchdog.log", env),
        _spawn([PY, "log_daemon/log_daemon.py", "-c", str(config / "logd.ini"), "-e", ca, "-o", str(logs / "logd")],
               logs / "logd.log", env),
    ]
    try:
        images = []
        for index in range(3):
            image = tmp_path / f"page{index}.jpg"
            image.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
            images.append(str(image))
        # The password from the environment (PERO_PASSWORD), the rest on the command line.
        upload = subprocess.run([PY, "scripts/publisher.py", "-z", f"127.0.0.1:{ZK_PORT}", "-u", USER, "-e", ca,
                                 "--stages", stage, out, "--images", *images, "--no-progress"],
                                cwd=REPO, env={**env, "PERO_PASSWORD": deployment.password}, capture_output=True,
                                text=True, timeout=120)
        assert upload.returncode == 0, upload.stdout + upload.stderr

        def downloaded() -> list[Path]:
            done = subprocess.run([PY, "scripts/publisher.py", "-c", str(config / "worker.ini"), "-e", ca,
                                   "--download", out, "--directory", str(tmp_path / "results"), "--no-progress",
                                   "--idle-timeout", "1"], cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            return [p for p in (tmp_path / "results").glob("page*") if p.is_dir()]
        results = _wait(lambda: len(downloaded()) >= 3 and downloaded(), 90, "three processed pages")
        assert len(results) == 3
        for folder in results:
            info = (folder / "request_info.txt").read_text()
            assert stage in info and "OK" in info, info
        _wait(lambda: any(p.is_file() and p.stat().st_size for p in (logs / "logd").rglob("*")), 30,
              "worker log lines written by the log daemon")
        # The stage's model came over SFTP (host key checked against the generated known_hosts).
        assert list((tmp_path / "cache").rglob("readme.txt")), "the model archive was not downloaded"
        for process in daemons:
            assert process.poll() is None, "a daemon exited early"
        # No password on any command line of this machine (daemons read it from the 0600 file).
        secret = deployment.password.encode()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    assert secret not in (proc / "cmdline").read_bytes(), f"password in the command line of {proc}"
                except OSError:
                    pass
    finally:
        for process in daemons:
            _stop(process)
        subprocess.run(manager + ["--delete", stage, "--force"], cwd=REPO, env=env, capture_output=True, timeout=60)
        subprocess.run(manager + ["--delete", out, "--force"], cwd=REPO, env=env, capture_output=True, timeout=60)
    everything = "\n".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file())
    assert deployment.password not in everything and deployment.admin_password not in everything
    assert deployment.password not in deployment.all_logs()
    assert "Traceback" not in (logs / "worker.log").read_text(), (logs / "worker.log").read_text()[-3000:]


# --- the suite's tools and daemons with a wrong password or an untrusted CA -------------------

@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("other-ca")
    pki.create_ca(folder / "ca.pem", folder / "ca.key", common_name="not the deployment's CA")
    return str(folder / "ca.pem")


# option, value, the one line that says so, the tools' exit code (ExitCode.ACCESS_REFUSED, ExitCode.UNREACHABLE)
BAD = {"wrong password": ("-p", "wrong-password", "refused the login of user 'perosec'", 4),
       "untrusted CA": ("-e", None, "TLS certificate is not signed by the CA in", 3)}


@pytest.mark.parametrize("problem", list(BAD))
@pytest.mark.parametrize("tool", [
    ["scripts/publisher.py", "-c", "{config}/worker.ini", "--download", "sec_nothing", "--directory", "{tmp}/dl"],
    ["scripts/stage_config_manager.py", "--connection-config", "{config}/worker.ini", "--list"],
], ids=["publisher", "stage_config_manager"])
def test_tools_stop_with_one_line_on_bad_credentials(deployment, other_ca, tmp_path, tool, problem):
    option, value, message, code = BAD[problem]
    argv = [part.format(config=deployment.config, tmp=tmp_path) for part in tool] + [option, value or other_ca]
    started = time.monotonic()
    done = subprocess.run([PY, *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert time.monotonic() - started < 15


def test_daemons_report_bad_credentials_clearly_and_back_off(deployment, other_ca, tmp_path):
    config = deployment.config
    daemons = {"worker": [PY, "worker/run_worker.py", "-c", f"{config}/worker.ini", "-i", "sec_probe",
                          "--cache-directory", str(tmp_path / "cache")],
               "watchdog": [PY, "watchdog/worker_watchdog.py", "-c", f"{config}/watchdog.ini"],
               "logd": [PY, "log_daemon/log_daemon.py", "-c", f"{config}/logd.ini", "-o", str(tmp_path / "logd")]}
    running = {}
    for name, argv in daemons.items():
        for problem, (option, value, _message, _code) in BAD.items():
            log = tmp_path / f"{name}-{problem.replace(' ', '_')}.log"
            argv_now = [part.replace("sec_probe", f"sec_probe_{problem[:5]}") for part in argv]
            running[(name, problem)] = (log, _spawn(argv_now + [option, value or other_ca], log, dict(os.environ)))
    time.sleep(6)
    for (name, problem), (log, process) in running.items():
        _stop(process)
        text = log.read_text(errors="replace")
        message = BAD[problem][2]
        errors = [line for line in text.splitlines() if message in line]
        assert errors, f"{name} with {problem}: {text[-2000:]}"
        assert "Traceback" not in text, f"{name} with {problem}: {text[-3000:]}"
        # Backoff, not a storm: in 6 s at most a handful of attempts.
        assert len(errors) <= 4, f"{name} with {problem} retried {len(errors)} times in 6 s"
        assert "wrong-password" not in text
