"""The README's compose commands: `system_setup.py --docker --no-start`, then the engines from
scripts/services-docker-compose.yaml with docker-compose talking to podman's Docker-compatible API socket
(there is no `docker compose` v2 plugin here; podman-compose 1.0.3 has no --env-file), `up -d` and `down`.

Own ports (17481, 17471, 17472, 17422) and compose project, so it never meets test_stack.py's deployment.
"""
from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import HOST, REPO, podman
from needs import require  # tests/ helper (conftest.py puts tests/ on the path)

BASE = Path("/tmp/pero-docker-compose-test")
PROJECT = "perocompose"
ZK_PORT, AMQPS_PORT, MGMT_PORT, SFTP_PORT = 17481, 17471, 17472, 17422
SOCKET = "/tmp/pero-docker-compose-test.sock"


@pytest.fixture()
def api_socket():
    require(bool(shutil.which("docker-compose")), "needs docker-compose (Debian's docker-compose)")
    service = subprocess.Popen([shutil.which("podman") or "podman", "system", "service", "--time=0",
                                f"unix://{SOCKET}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(SOCKET) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        yield {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}"}
    finally:
        service.terminate()
        service.wait(30)
        Path(SOCKET).unlink(missing_ok=True)


def _compose(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker-compose", "-f", str(REPO / "scripts" / "services-docker-compose.yaml"),
                           "--env-file", "config/docker.env", "-p", PROJECT, *args], cwd=BASE, env=env,
                          capture_output=True, text=True, timeout=300)


def _tls_version(port: int) -> str:
    context = ssl.create_default_context(cafile=str(BASE / "config" / "certificates" / "ca.pem"))
    with socket.create_connection((HOST, port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=HOST) as tls:
        return tls.version()


def test_compose_up_and_down(images, api_socket):
    shutil.rmtree(BASE, ignore_errors=True)
    BASE.mkdir(parents=True)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "system_setup.py"), "--docker", "--no-start",
                           "-z", HOST, "-s", HOST, "-f", HOST, "--bind", HOST, "-o", "config", "-d", "data",
                           "--zookeeper-port", str(ZK_PORT), "--mq-port", str(AMQPS_PORT), "--management-port",
                           str(MGMT_PORT), "--sftp-port", str(SFTP_PORT), "-u", "perocomp"], cwd=BASE,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        up = _compose(api_socket, "up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        deadline = time.monotonic() + 120
        versions: dict[int, str] = {}
        while time.monotonic() < deadline and len(versions) < 3:
            for port in (ZK_PORT, AMQPS_PORT, MGMT_PORT):
                try:
                    versions[port] = _tls_version(port)
                except OSError:
                    pass
            time.sleep(1)
        assert versions == {ZK_PORT: "TLSv1.3", AMQPS_PORT: "TLSv1.3", MGMT_PORT: "TLSv1.3"}, versions
        with socket.create_connection((HOST, SFTP_PORT), timeout=5) as raw:
            assert raw.recv(64).startswith(b"SSH-2.0-OpenSSH")
    finally:
        down = _compose(api_socket, "down")
        left = [n for n in podman("ps", "-a", "--format", "{{.Names}}").stdout.split() if n.startswith(PROJECT)]
        networks = [n for n in podman("network", "ls", "--format", "{{.Name}}").stdout.split()
                    if n.startswith(PROJECT)]
        for name in left:
            podman("rm", "-f", "-v", name)
        for network in networks:
            podman("network", "rm", network)
        shutil.rmtree(BASE, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not left and not networks, (left, networks)
