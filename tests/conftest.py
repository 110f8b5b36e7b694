"""Shared fixtures: the real local services and an isolated ZooKeeper tree per test.

Several test runs share one ZooKeeper and one RabbitMQ (other developers, CI), so every
test works in its own ZooKeeper chroot (`127.0.0.1:2181/t_<hex>`) and names its queues
and stages with `unique_name(...)`.  Test-specific fixtures live in their own test files.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pero_worker.dev.local_services import LocalServices, ensure_services, write_server_lists
from pero_worker.libs.addresses import Address
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.metrics import ADDRESS_ENV
from pero_worker.libs.zk import ZooKeeper

REPO_ROOT = Path(__file__).resolve().parent.parent

# Many daemons run at once here (and other test runs on the same host): each serves /metrics on a free port of
# its own instead of its fixed default (libs/metrics.py); the daemons started by tests inherit this.
os.environ[ADDRESS_ENV] = "127.0.0.1:0"


def pytest_report_header(config: pytest.Config) -> str:
    return ("services: ZooKeeper 127.0.0.1:2181, RabbitMQ 127.0.0.1:5672/15672, SFTP 127.0.0.1:2222 "
            "(scripts/local_services.py)")


@pytest.fixture(scope="session")
def services() -> LocalServices:
    """Starts whatever local service is down (ZooKeeper, sshd, RabbitMQ setup); where they listen + credentials."""
    return ensure_services()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def _zk_admin(services: LocalServices) -> Iterator[ZooKeeper]:
    """A session on ZooKeeper's real root: creates and removes the per-test chroots."""
    zk = ZooKeeper(ConnectionConfig(zookeeper_servers=(Address(services.zk_host, services.zk_port),))).start()
    yield zk
    zk.stop()


@pytest.fixture
def zk_root(services: LocalServices, _zk_admin: ZooKeeper) -> Iterator[str]:
    """A fresh chroot, as the tools take it: '127.0.0.1:2181/t_<hex>' (pass it to `-z`). Deleted afterwards."""
    chroot = f"/t_{uuid.uuid4().hex[:12]}"
    _zk_admin.ensure_path(chroot)
    yield f"{services.zk_address}{chroot}"
    _zk_admin.delete(chroot, recursive=True)


@pytest.fixture
def conn_config(services: LocalServices, zk_root: str) -> ConnectionConfig:
    """ConnectionConfig on the test's chroot; no username/password (the ZooKeeper does not require SASL)."""
    return ConnectionConfig(
        zookeeper_servers=(Address(services.zk_host, services.zk_port),),
        zookeeper_chroot="/" + zk_root.split("/", 1)[1],
    )


@pytest.fixture
def zk(conn_config: ConnectionConfig, services: LocalServices) -> Iterator[ZooKeeper]:
    """A started ZooKeeper on the test's chroot with the local server lists written (/pero/worker/config/...)."""
    client = ZooKeeper(conn_config).start()
    write_server_lists(client, services)
    yield client
    client.stop()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """unique_name('stage') -> 'stage_1f2e3d4c5b6a': names for queues, stages, workers that no other run uses."""
    def make(prefix: str = "t") -> str:
        return f"{prefix}_{uuid.uuid4().hex[:12]}"
    return make
