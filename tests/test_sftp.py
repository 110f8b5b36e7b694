"""libs/sftp.py against the real OpenSSH server of the test harness (127.0.0.1:2222, user pero)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import uuid

import pytest

from pero_worker.dev import local_services
from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import Address
from pero_worker.libs.sftp import (
    SftpAuthError,
    SftpClient,
    SftpConnectError,
    SftpError,
    SftpNotFoundError,
    SftpSettings,
)


def _closed_port() -> int:
    """A local port nobody listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def settings(services) -> SftpSettings:
    return SftpSettings(servers=(Address(services.sftp_host, services.sftp_port),),
                        username=services.user, password=services.password, timeout=5)


@pytest.fixture
def remote_dir(services):
    """A unique folder name in the SFTP user's home; removed (from the local side) afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    shutil.rmtree(local_services.SFTP_HOME / name, ignore_errors=True)


def _payload(size: int) -> bytes:
    return os.urandom(size)


def test_settings_from_zookeeper(zk, conn_config, services):
    zk.ensure_path(f"{zk_paths.FTP_SERVERS}/not a host:99999")      # untrusted entry: skipped
    zk.ensure_path(f"{zk_paths.FTP_SERVERS}/[::1]:2200")
    settings = SftpSettings.from_zookeeper(zk, conn_config, known_hosts="/some/known_hosts")
    assert Address(services.sftp_host, services.sftp_port) in settings.servers
    assert Address("::1", 2200) in settings.servers
    assert len(settings.servers) == 2
    assert settings.known_hosts == "/some/known_hosts"
    secret = SftpSettings(servers=settings.servers, username="pero", password="s3cret-Value")
    assert "s3cret-Value" not in repr(secret) and "s3cret-Value" not in str(secret)


def test_settings_from_zookeeper_without_servers(zk, conn_config):
    zk.delete(zk_paths.FTP_SERVERS, recursive=True)
    with pytest.raises(SftpConnectError, match="no SFTP servers"):
        SftpSettings.from_zookeeper(zk, conn_config)


def test_upload_download_roundtrip(settings, remote_dir, tmp_path):
    data = _payload(700_000)
    source = tmp_path / "model.tar.xz"
    source.write_bytes(data)
    remote = f"{remote_dir}/deep/er/model.tar.xz"
    uploads: list[tuple[int, int]] = []
    downloads: list[tuple[int, int]] = []
    with SftpClient(settings) as sftp:
        assert sftp.upload(source, remote, progress=lambda d, t: uploads.append((d, t))) == len(data)
        assert sftp.exists(remote)
        assert not sftp.exists(f"{remote_dir}/nothing")
        assert sftp.size(remote) == len(data)
        # Only the final name is visible: the temporary upload name was renamed away.
        assert sftp.listdir(f"{remote_dir}/deep/er") == ["model.tar.xz"]
        target = tmp_path / "down" / "copy.bin"
        assert sftp.download(remote, target, progress=lambda d, t: downloads.append((d, t))) == len(data)
        assert target.read_bytes() == data
        assert not target.with_name("copy.bin.part").exists()
        assert not target.with_name("copy.bin.part.json").exists()
        # Overwrite with new content (posix-rename over the existing file).
        source.write_bytes(b"second version")
        sftp.upload(source, remote)
        sftp.download(remote, target)
        assert target.read_bytes() == b"second version"
        sftp.remove(remote)
        assert not sftp.exists(remote)
        sftp.remove(remote, missing_ok=True)
        with pytest.raises(SftpNotFoundError):
            sftp.remove(remote)
    assert uploads[-1] == (len(data), len(data)) and all(t == len(data) for _, t in uploads)
    assert downloads[-1] == (len(data), len(data))
    assert [d for d, _ in downloads] == sorted(d for d, _ in downloads)


def test_download_resumes_part_file(settings, remote_dir, tmp_path):
    data = _payload(1_000_000)
    source = tmp_path / "src.bin"
    source.write_bytes(data)
    remote = f"{remote_dir}/file.bin"
    target = tmp_path / "file.bin"
    with SftpClient(settings) as sftp:
        sftp.upload(source, remote)
        # A first attempt that stopped after 300 kB: part file + its description.
        attributes = sftp._session().stat(remote)
        target.with_name("file.bin.part").write_bytes(data[:300_000])
        target.with_name("file.bin.part.json").write_text(json.dumps(
            {"remote": remote, "size": len(data), "mtime": attributes.st_mtime}))
        seen: list[int] = []
        sftp.download(remote, target, progress=lambda d, t: seen.append(d))
        assert target.read_bytes() == data
        assert seen[0] == 300_000            # continued, not restarted

        # A part file of a DIFFERENT remote file (other description) is not trusted: restart from 0.
        target.unlink()
        target.with_name("file.bin.part").write_bytes(b"garbage" * 1000)
        target.with_name("file.bin.part.json").write_text(json.dumps(
            {"remote": remote, "size": 123, "mtime": 1}))
        seen.clear()
        sftp.download(remote, target, progress=lambda d, t: seen.append(d))
        assert target.read_bytes() == data
        assert seen[0] == 0


def test_download_survives_connection_loss(settings, remote_dir, tmp_path):
    data = _payload(2_000_000)
    source = tmp_path / "src.bin"
    source.write_bytes(data)
    remote = f"{remote_dir}/big.bin"
    target = tmp_path / "big.bin"
    with SftpClient(settings) as sftp:
        sftp.upload(source, remote)
        killed = []
        restarts = []

        def progress(done: int, total: int) -> None:
            if not killed and done >= 800_000:
                killed.append(done)
                sftp._ssh.get_transport().close()     # the connection dies mid-transfer
            elif killed and not restarts:
                restarts.append(done)

        assert sftp.download(remote, target, progress=progress) == len(data)
    assert target.read_bytes() == data
    assert killed and restarts
    assert restarts[0] >= 256 * 1024          # resumed from the part file, not from zero


def test_missing_remote_file(settings, remote_dir, tmp_path):
    with SftpClient(settings) as sftp:
        with pytest.raises(SftpNotFoundError, match="no such file"):
            sftp.download(f"{remote_dir}/missing.tar.xz", tmp_path / "x")
        with pytest.raises(SftpNotFoundError):
            sftp.listdir(f"{remote_dir}/missing")
    assert not (tmp_path / "x").exists()


def test_failover_to_second_server(settings):
    dead = Address("127.0.0.1", _closed_port())
    failover = SftpSettings(servers=(dead,) + settings.servers, username=settings.username,
                            password=settings.password, timeout=5)
    with SftpClient(failover) as sftp:
        assert sftp.server == settings.servers[0]
        assert sftp.listdir(".") is not None


def test_unreachable_servers_are_named(settings):
    dead1, dead2 = Address("127.0.0.1", _closed_port()), Address("127.0.0.1", _closed_port())
    bad = SftpSettings(servers=(dead1, dead2), username="pero", password="x", timeout=3)
    with pytest.raises(SftpConnectError) as info:
        SftpClient(bad).connect()
    message = str(info.value)
    assert str(dead1) in message and str(dead2) in message and "refused" in message
    assert not isinstance(info.value, SftpAuthError)


def test_wrong_password(settings):
    wrong = SftpSettings(servers=settings.servers, username=settings.username, password="not-the-password",
                         timeout=5)
    with pytest.raises(SftpAuthError, match="authentication failed"):
        SftpClient(wrong).connect()


def test_known_hosts_verification(settings, tmp_path, services):
    key_line = (local_services.SSHD_DIR / "ssh_host_ed25519_key.pub").read_text().split()
    host = f"[{services.sftp_host}]:{services.sftp_port}"
    good = tmp_path / "known_hosts"
    good.write_text(f"{host} {key_line[0]} {key_line[1]}\n")
    with SftpClient(SftpSettings(settings.servers, settings.username, settings.password,
                                 known_hosts=str(good), timeout=5)) as sftp:
        sftp.listdir(".")

    # The same host with another key: a changed (or impostor) server is refused.
    other_key = "AAAAC3NzaC1lZDI1NTE5AAAAIGQ4Ym9ndXNrZXlmb3J0ZXN0aW5nMDAwMDAwMDAw"
    changed = tmp_path / "known_hosts_changed"
    changed.write_text(f"{host} ssh-ed25519 {other_key}\n")
    with pytest.raises(SftpConnectError, match="host key"):
        SftpClient(SftpSettings(settings.servers, settings.username, settings.password,
                                known_hosts=str(changed), timeout=5)).connect()

    # A known_hosts file that does not list the server: unknown hosts are refused too.
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    with pytest.raises(SftpConnectError, match="known_hosts"):
        SftpClient(SftpSettings(settings.servers, settings.username, settings.password,
                                known_hosts=str(empty), timeout=5)).connect()


def test_upload_errors(settings, remote_dir, tmp_path):
    with SftpClient(settings) as sftp:
        with pytest.raises(SftpError, match="cannot read local file"):
            sftp.upload(tmp_path / "missing", f"{remote_dir}/x")
        source = tmp_path / "a"
        source.write_bytes(b"a")
        sftp.upload(source, f"{remote_dir}/file")
        with pytest.raises(SftpError, match="is a file"):
            sftp.upload(source, f"{remote_dir}/file/below")
