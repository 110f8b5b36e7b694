"""Outages of the real services and how fast the daemons recover (issue 8, section 2).

The shared services are never stopped: the broker and ZooKeeper are reached through a TCP
proxy on loopback (dev/tcp_proxy.py) that the test cuts and restores, with the server
list in the test's ZooKeeper chroot pointing at the proxy; the SFTP outage uses an sshd of
this test's own, on a free port, that it stops and starts.

Starts a second sshd: run under `flock /tmp/pero-secure.lock` when several people share the services.
"""
from __future__ import annotations

import dataclasses
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from pero_worker.dev import local_services
from pero_worker.dev.local_services import write_server_lists
from pero_worker.dev.opsplane import (
    REPO,
    STAGE_CONFIG_MANAGER,
    Process,
    dummy_stage_config,
    make_stage,
    publish_requests,
    start_watchdog,
    start_worker,
    wait_for,
)
from pero_worker.dev.tcp_proxy import TcpProxy
from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import Address
from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.mq import MQSession, MQSettings
from pero_worker.libs.zk import ZooKeeper

LOG_DAEMON = REPO / "log_daemon" / "log_daemon.py"


def set_servers(zk, path: str, *addresses: str) -> None:
    zk.delete(path, recursive=True)
    for address in addresses:
        zk.ensure_path(f"{path}/{address}")


def collect(mq: MQSession, queue: str, ids: set[str], timeout: float) -> set[str]:
    seen: set[str] = set()

    def check() -> bool:
        while (delivery := mq.get(queue)) is not None:
            seen.add(ProcessingRequest.FromString(delivery.body).uuid)
            mq.ack(delivery.delivery_tag)
        return ids <= seen
    wait_for(check, timeout, f"{len(ids)} requests in {queue} (got {len(ids & seen)})", interval=0.2)
    return seen


@pytest.fixture
def real_mq(services):
    """A session on the real broker (not through the proxy): the test's own publishing and checks."""
    session = MQSession(MQSettings(servers=(Address(services.mq_host, services.mq_port),), username=services.user,
                                   password=services.password), name="test-recovery")
    session.open(retry_for=10)
    session.created = []
    yield session
    for name in session.created:
        try:
            if not session.is_open:
                session.open(retry_for=5)
            session.delete_queue(name)
        except Exception:
            pass
    session.close()


def test_worker_consumes_again_within_2_s_of_the_broker_coming_back(zk_root, zk, services, real_mq, tmp_path,
                                                                      unique_name):
    proxy = TcpProxy(services.mq_host, services.mq_port).start()
    worker = None
    try:
        set_servers(zk, zk_paths.MQ_SERVERS, proxy.address)
        stage, out = unique_name("s"), unique_name("out")
        make_stage(zk_root, stage, dummy_stage_config(0.01))
        make_stage(zk_root, out, None)
        real_mq.created += [stage, out]
        wid = unique_name("w")
        worker = start_worker(zk_root, wid, tmp_path)
        wait_for(lambda: zk.get_text(zk_paths.worker_status(wid)) == zk_paths.IDLE, 30, "worker idle")
        zk.set_text(zk_paths.worker_queue(wid), stage)
        wait_for(lambda: zk.get_text(zk_paths.worker_status(wid)) == zk_paths.PROCESSING, 30, "worker processing")
        first = set(publish_requests(real_mq, [stage, out], 20))
        collect(real_mq, out, first, 30)

        proxy.cut()
        wait_for(lambda: zk.get_text(zk_paths.worker_status(wid)) == zk_paths.MQ_CONNECTION_FAILED, 30,
                 "the worker to notice the outage")
        time.sleep(6)   # long enough for an uncapped backoff to have grown well past 2 s
        second = set(publish_requests(real_mq, [stage, out], 20))
        assert real_mq.queue_consumers(stage) == 0
        proxy.restore()
        restored = time.monotonic()
        wait_for(lambda: real_mq.queue_consumers(stage) == 1, 15, "the worker consuming again", interval=0.02)
        delay = time.monotonic() - restored
        print(f"broker back -> worker consuming: {delay:.2f} s")
        collect(real_mq, out, second, 30)
        text = worker.log()
        assert delay <= 2.0, text
        assert f"cannot connect to RabbitMQ at {proxy.address}: connection refused" in text, text
        assert "RabbitMQ connection restored" in text and "Traceback" not in text, text
    finally:
        if worker is not None:
            worker.stop()
        proxy.close()


def test_zookeeper_outage_is_logged_as_zookeeper_and_its_end_too(zk_root, zk, services, tmp_path, unique_name):
    """The watchdog and the log daemon used to log only kazoo's text ('Connection dropped: ...'), which does not
    say which service, and nothing when ZooKeeper was back."""
    proxy = TcpProxy(services.zk_host, services.zk_port).start()
    processes: list[Process] = []
    queue = unique_name("log")
    try:
        root = f"{proxy.address}/{zk_root.split('/', 1)[1]}"
        watchdog = start_watchdog(root, tmp_path, "wd")
        logd = Process([sys.executable, str(LOG_DAEMON), "-z", root, "-q", queue, "-o", str(tmp_path / "logs")],
                       tmp_path / "logd.log")
        processes += [watchdog, logd]
        wait_for(lambda: "is now ACTIVE" in watchdog.log(), 30, "the watchdog active")
        wait_for(lambda: "consuming log queue" in logd.log(), 30, "the log daemon consuming")
        proxy.cut()
        time.sleep(3)   # shorter than the 10 s session timeout: the sessions survive
        proxy.restore()
        restored = time.monotonic()
        for process in processes:
            wait_for(lambda p=process: "ZooKeeper connection restored" in p.log(), 20,
                     f"{process.log_path.name}: ZooKeeper connection restored", interval=0.1)
        print(f"ZooKeeper back -> both daemons reconnected after {time.monotonic() - restored:.1f} s")
        for process in processes:
            text = process.log()
            assert f"ZooKeeper connection to {root} lost" in text, text
            assert "Connection dropped" not in text and "Traceback" not in text, text
            assert process.alive(), text
        assert "ZooKeeper connection restored (" in watchdog.log() and "same session" in watchdog.log()
    finally:
        for process in processes:
            process.stop()
        proxy.close()
        with MQSession(MQSettings(servers=(Address(services.mq_host, services.mq_port),), username=services.user,
                                  password=services.password)) as mq:
            mq.delete_queue(queue)


# --- SFTP: an sshd of this test's own -------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OwnSshd:
    """A second SFTP server for the same user and home as the shared one (scripts/local_services.py), on a free
    port, that this test may stop and start without disturbing anybody."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        folder.mkdir(mode=0o700, exist_ok=True)
        key = folder / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        text = local_services.sshd_config_text()
        lines = []
        for line in text.splitlines():
            if line.startswith("Port "):
                line = f"Port {self.port}"
            elif line.startswith("PidFile "):
                line = f"PidFile {folder / 'sshd.pid'}"
            elif line.startswith("HostKey "):
                continue
            lines.append(line)
        lines.append(f"HostKey {key}")
        self.config = folder / "sshd_config"
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o600)
        self.pid: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        (self.folder / "sshd.pid").unlink(missing_ok=True)
        subprocess.run([local_services.SSHD_BIN, "-f", str(self.config), "-E", str(self.folder / "sshd.log")],
                       check=True)
        self.pid = int(wait_for(lambda: (self.folder / "sshd.pid").exists()
                                and (self.folder / "sshd.pid").read_text().strip(), 10, "sshd pid file"))

        def banner() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    return sock.recv(16).startswith(b"SSH-")
            except OSError:
                return False
        wait_for(banner, 10, "the own sshd answering")

    def stop(self) -> None:
        """Only the listener this test started (its pid file); sessions it forked end with their clients."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            wait_for(lambda: not _alive(self.pid), 10, "the own sshd stopped")
            self.pid = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


@pytest.fixture
def auth_zk(conn_config, services):
    """The test's chroot as user pero: a worker given -u writes nodes only that user may read."""
    client = ZooKeeper(dataclasses.replace(conn_config, username=services.user, password=services.password)).start()
    write_server_lists(client, services)
    yield client
    client.delete("/pero", recursive=True)   # nodes carry the sasl:pero ACL: only this user can remove them
    client.stop()


@pytest.fixture
def own_sshd(tmp_path):
    sshd = OwnSshd(tmp_path / "own-sshd")
    sshd.start()
    yield sshd
    sshd.stop()


def model_archive(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        data = b"weights " * 2000
        info = tarfile.TarInfo("weights.bin")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def test_stage_is_ready_within_5_s_of_the_sftp_server_coming_back(zk_root, auth_zk, services, real_mq, own_sshd,
                                                                    tmp_path, unique_name):
    """A temporary SFTP outage while a worker needs a model used to be a configuration failure retried only after
    60 s (the transient flag of the model-cache error was never read)."""
    zk = auth_zk
    auth = ("-u", services.user, "--password-file", str(services.password_file))
    set_servers(zk, zk_paths.FTP_SERVERS, own_sshd.address)
    stage, out = unique_name("s"), unique_name("out")
    config = tmp_path / "stage.ini"
    config.write_text(dummy_stage_config(0.01))
    created = subprocess.run([sys.executable, str(STAGE_CONFIG_MANAGER), "-z", zk_root, "-u", services.user,
                              "--password-file", str(services.password_file), "--name", stage,
                              "--config", str(config), "--file", str(model_archive(tmp_path / "model.tar.gz"))],
                             capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    make_stage(zk_root, out, None, extra=auth)
    real_mq.created += [stage, out]
    wid = unique_name("w")
    worker = Process([sys.executable, str(REPO / "worker" / "run_worker.py"), "-z", zk_root,
                      "-u", services.user, "--password-file", str(services.password_file), "-i", wid,
                      "--cache-directory", str(tmp_path / "cache"), "--disable-remote-logging"],
                     tmp_path / "worker.log")
    try:
        wait_for(lambda: zk.get_text(zk_paths.worker_status(wid)) == zk_paths.IDLE, 30, "worker idle")
        own_sshd.stop()
        zk.set_text(zk_paths.worker_queue(wid), stage)
        wait_for(lambda: "cannot take up stage" in worker.log(), 30, "the first failed attempt")
        time.sleep(6)   # long enough for an uncapped backoff to have grown well past 5 s
        assert zk.get_text(zk_paths.worker_status(wid)) == zk_paths.CONFIGURING, \
            "a transient failure is not a configuration failure (the watchdog would move the worker away)"
        own_sshd.start()
        back = time.monotonic()
        wait_for(lambda: zk.get_text(zk_paths.worker_status(wid)) == zk_paths.PROCESSING, 20,
                 "the stage ready and consumed", interval=0.02)
        delay = time.monotonic() - back
        print(f"SFTP back -> stage ready and consuming: {delay:.2f} s")
        text = worker.log()
        assert delay <= 5.0, text
        assert "connection refused" in text and "SFTP" in text and "retrying" in text, text
        assert "Traceback" not in text, text
        ids = set(publish_requests(real_mq, [stage, out], 5))
        got = collect(real_mq, out, ids, 30)
        assert ids <= got
    finally:
        worker.stop()
        shutil.rmtree(local_services.SFTP_HOME / "pero" / stage, ignore_errors=True)


def test_a_missing_model_is_still_a_configuration_failure(zk_root, auth_zk, services, real_mq, tmp_path,
                                                          unique_name):
    """Only transient failures are retried quickly: an archive missing on the server is the stage's fault."""
    zk = auth_zk
    stage = unique_name("s")
    make_stage(zk_root, stage, dummy_stage_config(0.01), extra=("-u", services.user, "--password-file",
                                                                str(services.password_file)))
    real_mq.created.append(stage)
    zk.set_text(zk_paths.stage_config_path(stage), f"pero/{stage}/{uuid.uuid4().hex}.tar.gz")
    zk.set_text(zk_paths.stage_config_version(stage), "v2")
    wid = unique_name("w")
    worker = Process([sys.executable, str(REPO / "worker" / "run_worker.py"), "-z", zk_root,
                      "-u", services.user, "--password-file", str(services.password_file), "-i", wid,
                      "--cache-directory", str(tmp_path / "cache"), "--disable-remote-logging"],
                     tmp_path / "worker.log")
    try:
        wait_for(lambda: zk.get_text(zk_paths.worker_status(wid)) == zk_paths.IDLE, 30, "worker idle")
        zk.set_text(zk_paths.worker_queue(wid), stage)
        wait_for(lambda: zk.get_text(zk_paths.worker_status(wid)) == zk_paths.CONFIGURATION_FAILED, 30,
                 "configuration failed")
        time.sleep(3)
        assert worker.log().count("cannot take up stage") == 1, "not retried every few seconds"
    finally:
        worker.stop()
