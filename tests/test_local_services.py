"""The local service harness (scripts/local_services.py) against the real services it starts."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import paramiko
import pytest
import requests

from pero_worker.dev import local_services
from pero_worker.dev.local_services import LocalServices, ensure_services, write_server_lists
from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import Address
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.mq import MQAuthenticationError, MQSession, MQSettings, PublishOutcome
from pero_worker.libs.zk import ZkConnectionError, ZooKeeper

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "local_services.py"   # the entry point users run


def four_letter(services: LocalServices, word: bytes) -> bytes:
    with socket.create_connection((services.zk_host, services.zk_port), timeout=5) as sock:
        sock.sendall(word)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


# --- ZooKeeper -------------------------------------------------------------------

def test_zookeeper_answers_four_letter_words(services):
    assert four_letter(services, b"srvr").startswith(b"Zookeeper version")
    if services.zk_foreign:
        pytest.skip("a foreign ZooKeeper runs on the port; ruok is not necessarily whitelisted there")
    assert four_letter(services, b"ruok") == b"imok"


def test_zk_fixture_is_chrooted_and_has_exactly_the_local_server_lists(zk, zk_root, services, _zk_admin):
    assert zk.children(zk_paths.MQ_SERVERS) == [services.mq_address]
    assert zk.children(zk_paths.MQ_MONITORING_SERVERS) == [services.mq_mgmt_address]
    assert zk.children(zk_paths.FTP_SERVERS) == [services.sftp_address]
    # The tree really lives under the chroot, not at the real root's /pero.
    chroot = "/" + zk_root.split("/", 1)[1]
    assert _zk_admin.children(f"{chroot}{zk_paths.MQ_SERVERS}") == [services.mq_address]


def test_write_server_lists_is_idempotent_and_keeps_other_entries(zk, services):
    zk.ensure_path(f"{zk_paths.MQ_SERVERS}/10.0.0.9:5672")
    write_server_lists(zk, services)
    write_server_lists(zk, services)
    assert zk.children(zk_paths.MQ_SERVERS) == sorted(["10.0.0.9:5672", services.mq_address])
    assert zk.children(zk_paths.FTP_SERVERS) == [services.sftp_address]


def test_root_server_lists_are_recorded(services, _zk_admin):
    assert services.mq_address in _zk_admin.children(zk_paths.MQ_SERVERS)
    assert services.mq_mgmt_address in _zk_admin.children(zk_paths.MQ_MONITORING_SERVERS)
    assert services.sftp_address in _zk_admin.children(zk_paths.FTP_SERVERS)


def test_sessions_of_a_killed_client_expire_within_seconds(conn_config, zk):
    """tickTime 500 ms lets clients ask for 1 s sessions: tests see expiry quickly (a default server says >= 4 s)."""
    if ensure_services().zk_foreign:
        pytest.skip("a foreign ZooKeeper runs on the port; its session limits are not ours")
    node = "/ephemeral_probe"
    child = textwrap.dedent(f"""
        import sys, time
        from pero_worker.libs.addresses import Address
        from pero_worker.libs.config import ConnectionConfig
        from pero_worker.libs.zk import ZooKeeper
        conf = ConnectionConfig(zookeeper_servers=(Address("127.0.0.1", {conn_config.zookeeper_servers[0].port}),),
                                zookeeper_chroot={conn_config.zookeeper_chroot!r})
        zk = ZooKeeper(conf, session_timeout=1.0).start()
        zk.create({node!r}, b"x", ephemeral=True)
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert zk.exists(node)
        proc.kill()  # no close: the server must notice the dead session by itself
        proc.wait(timeout=10)
        killed = time.monotonic()
        while zk.exists(node) and time.monotonic() - killed < 10:
            time.sleep(0.05)
        gone_after = time.monotonic() - killed
    finally:
        proc.kill()
        proc.wait()
    assert not zk.exists(node)
    print(f"ephemeral node gone {gone_after:.2f} s after kill")
    assert gone_after < 3.5, f"ephemeral node lived {gone_after:.1f} s after its client died"


def test_zookeeper_accepts_sasl_login_of_user_pero_and_rejects_a_wrong_password(services):
    if services.zk_foreign:
        pytest.skip("a foreign ZooKeeper runs on the port; it has no user pero")
    servers = (Address(services.zk_host, services.zk_port),)
    good = ZooKeeper(ConnectionConfig(zookeeper_servers=servers, username=services.user,
                                      password=services.password), timeout=10)
    with good:
        assert good.exists(zk_paths.MQ_SERVERS)
    bad = ZooKeeper(ConnectionConfig(zookeeper_servers=servers, username=services.user,
                                     password=services.password + "x"), timeout=10)
    try:
        with pytest.raises(ZkConnectionError, match="refused the login"):
            bad.start()
    finally:
        bad.stop()


# --- SFTP ------------------------------------------------------------------------

def sftp_connect(services: LocalServices, password: str) -> paramiko.Transport:
    transport = paramiko.Transport((services.sftp_host, services.sftp_port))
    transport.connect(username=services.user, password=password)
    return transport


def test_sftp_password_login_upload_and_download(services, unique_name):
    folder = unique_name("t_sftp")
    transport = sftp_connect(services, services.password)
    try:
        sftp = paramiko.SFTPClient.from_transport(transport)
        sftp.mkdir(folder)
        payload = os.urandom(100_000)
        sftp.putfo(io.BytesIO(payload), f"{folder}/model.tar.xz")
        back = io.BytesIO()
        sftp.getfo(f"{folder}/model.tar.xz", back)
        assert back.getvalue() == payload
        # Relative SFTP paths land in the user's home under run/, owned by the user.
        on_disk = local_services.SFTP_HOME / folder / "model.tar.xz"
        assert on_disk.read_bytes() == payload
        assert on_disk.stat().st_uid == local_services.pwd.getpwnam(services.user).pw_uid
        sftp.remove(f"{folder}/model.tar.xz")
        sftp.rmdir(folder)
        assert folder not in sftp.listdir(".")
    finally:
        transport.close()


def test_sftp_home_has_the_writable_pero_folder_the_original_tools_need(services, unique_name):
    """The original stage_config_manager.py uploads to `--remote-path pero/<stage>/model.tar.xz`: its client
    stats each parent folder and refuses a relative path whose top folder is missing ('Relative path is not
    supported!'), so `pero/` must exist and be the SFTP user's.  The same steps, on the wire."""
    folder = local_services.SFTP_HOME / "pero"
    entry = local_services.pwd.getpwnam(services.user)
    assert folder.is_dir() and not folder.is_symlink()
    assert (folder.stat().st_uid, folder.stat().st_mode & 0o777) == (entry.pw_uid, 0o755)
    stage = unique_name("t_stage")
    transport = sftp_connect(services, services.password)
    try:
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp.stat("pero").st_mode & 0o040000, "pero/ is a folder on the SFTP server"
        with pytest.raises(FileNotFoundError):
            sftp.stat(f"pero/{stage}")
        sftp.mkdir(f"pero/{stage}")
        sftp.putfo(io.BytesIO(b"model"), f"pero/{stage}/model.tar.xz")
        assert (folder / stage / "model.tar.xz").read_bytes() == b"model"
        sftp.remove(f"pero/{stage}/model.tar.xz")
        sftp.rmdir(f"pero/{stage}")
    finally:
        transport.close()


def test_upload_folder_is_recreated_with_the_right_owner(services, tmp_path):
    """ensure_upload_folder() creates `pero/` (0755, the user's) where it is missing and leaves it alone after."""
    home = tmp_path / "home"
    home.mkdir()
    entry = local_services.pwd.getpwnam(services.user)
    folder = local_services.ensure_upload_folder(home, entry.pw_uid, entry.pw_gid)
    assert folder == home / "pero"
    assert (folder.stat().st_uid, folder.stat().st_gid, folder.stat().st_mode & 0o777) == \
        (entry.pw_uid, entry.pw_gid, 0o755)
    (folder / "keep").write_text("x")
    assert local_services.ensure_upload_folder(home, entry.pw_uid, entry.pw_gid) == folder
    assert (folder / "keep").exists()
    (home / "pero" / "keep").unlink()
    folder.rmdir()
    (home / "pero").write_text("not a folder")
    with pytest.raises(local_services.ServiceError, match="not a folder"):
        local_services.ensure_upload_folder(home, entry.pw_uid, entry.pw_gid)


def test_sftp_rejects_a_wrong_password(services):
    with pytest.raises(paramiko.AuthenticationException):
        transport = sftp_connect(services, services.password + "x")
        transport.close()


def test_sftp_account_has_no_shell(services):
    transport = sftp_connect(services, services.password)
    try:
        channel = transport.open_session()
        channel.settimeout(10)
        channel.exec_command("id")
        channel.shutdown_write()
        output = b""
        while chunk := channel.recv(4096):  # ends at EOF; a hang fails with socket.timeout
            output += chunk
        assert b"uid=" not in output  # ForceCommand internal-sftp: the command never runs
    finally:
        transport.close()


# --- RabbitMQ --------------------------------------------------------------------

def test_rabbitmq_user_pero_can_use_vhost_pero(services, unique_name):
    settings = MQSettings(servers=(Address(services.mq_host, services.mq_port),), username=services.user,
                          password=services.password, vhost=services.vhost)
    queue = unique_name("t_services")
    with MQSession(settings, name="test_local_services") as mq:
        mq.declare_stage_queue(queue)
        try:
            assert mq.publish_and_wait(queue, b"hello", priority=1) is PublishOutcome.CONFIRMED
            delivery = mq.get(queue)
            assert delivery is not None and delivery.body == b"hello"
            mq.ack(delivery.delivery_tag)
        finally:
            mq.delete_queue(queue)


def test_rabbitmq_rejects_a_wrong_password(services):
    settings = MQSettings(servers=(Address(services.mq_host, services.mq_port),), username=services.user,
                          password=services.password + "x", vhost=services.vhost)
    with pytest.raises(MQAuthenticationError):
        MQSession(settings).open(retry_for=2)


def test_rabbitmq_guest_still_works_on_vhost_pero(services):
    settings = MQSettings(servers=(Address(services.mq_host, services.mq_port),), username="guest",
                          password="guest", vhost=services.vhost)
    with MQSession(settings) as mq:
        assert mq.queue_length(f"surely_missing_{os.getpid()}") is None


def test_management_api_serves_user_pero(services, unique_name):
    base = f"http://{services.mq_host}:{services.mq_mgmt_port}/api"
    auth = (services.user, services.password)
    whoami = requests.get(f"{base}/whoami", auth=auth, timeout=10)
    assert whoami.status_code == 200
    assert "monitoring" in whoami.json()["tags"]
    queues = requests.get(f"{base}/queues/{services.vhost}", auth=auth, timeout=10)
    assert queues.status_code == 200 and isinstance(queues.json(), list)
    assert requests.get(f"{base}/whoami", auth=(services.user, "wrong"), timeout=10).status_code == 401


# --- the harness itself ------------------------------------------------------------

def test_start_twice_is_idempotent_and_fast(services):
    zk_pid, sshd_pid = local_services.zk_ours(), local_services.sshd_ours()
    started = time.monotonic()
    again = ensure_services()
    elapsed = time.monotonic() - started
    assert again == services
    assert (local_services.zk_ours(), local_services.sshd_ours()) == (zk_pid, sshd_pid)
    assert local_services.PASSWORD_FILE.read_text().strip() == services.password
    assert oct(local_services.PASSWORD_FILE.stat().st_mode & 0o777) == "0o600"
    # Typically ~0.1 s; 2 s leaves room for a loaded machine while still ruling out any restart or rabbitmqctl.
    assert elapsed < 2.0, f"ensure_services() took {elapsed:.2f} s with everything up"


def test_cli_start_status_env(services):
    start = subprocess.run([sys.executable, str(SCRIPT), "start"], capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    assert "ready" in start.stderr
    status = subprocess.run([sys.executable, str(SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("running") == 4
    env = subprocess.run([sys.executable, str(SCRIPT), "env"], capture_output=True, text=True, timeout=60)
    exports = dict(line.removeprefix("export ").split("=", 1) for line in env.stdout.splitlines())
    assert exports["PERO_ZK"] == services.zk_address
    assert exports["PERO_SFTP"] == services.sftp_address
    assert Path(exports["PERO_PASSWORD_FILE"]).read_text().strip() == services.password
    assert services.password not in env.stdout and services.password not in repr(services)
