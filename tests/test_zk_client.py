"""libs/zk.py against the real ZooKeeper: SASL login, ACLs on created nodes, watches, locks."""
from __future__ import annotations

import queue
import uuid

import pytest

from pero_worker.libs.addresses import Address
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.zk import NoAuthError, ZkConnectionError, ZooKeeper


def _config(services, **kwargs) -> ConnectionConfig:
    return ConnectionConfig((Address(services.zk_host, services.zk_port),), **kwargs)


def test_sasl_user_owns_its_nodes_and_anonymous_clients_are_refused(services):
    root = f"/t_auth_{uuid.uuid4().hex[:8]}"
    with ZooKeeper(_config(services, username=services.user, password=services.password)) as owner:
        owner.set_text(f"{root}/x", "secret")
        assert owner.get_text(f"{root}/x") == "secret"
        with ZooKeeper(_config(services)) as anonymous, pytest.raises(NoAuthError):
            anonymous.get(f"{root}/x")
        owner.delete(root, recursive=True)


def test_wrong_password_is_one_clear_error(services):
    with pytest.raises(ZkConnectionError, match="refused the login"):
        ZooKeeper(_config(services, username=services.user, password="wrong")).start()


def test_unreachable_server_is_a_clear_error():
    config = ConnectionConfig((Address("127.0.0.1", 1),))
    with pytest.raises(ZkConnectionError, match="cannot connect to ZooKeeper"):
        ZooKeeper(config, timeout=1.0).start()


def test_data_watch_reports_changes_and_lock_is_exclusive(zk):
    events: queue.Queue = queue.Queue()
    zk.watch_data("/pero/watched", events.put)
    assert events.get(timeout=5) is None
    zk.set_text("/pero/watched", "v1")
    assert events.get(timeout=5) == b"v1"
    with zk.lock("/pero/lock_a", timeout=2), ZooKeeper(zk.config).start() as other:
        from pero_worker.libs.zk import LockTimeout
        with pytest.raises(LockTimeout), other.lock("/pero/lock_a", timeout=0.5):
            pass


def test_reconnection_attempts_are_at_most_1_s_apart_so_a_long_outage_ends_within_2_s(services):
    """Issue 12: a daemon is back within 2 s of ZooKeeper.  With the earlier 5 s backoff cap, an outage of a few
    seconds left the client sleeping up to ~7 s after the server was back."""
    import time

    from pero_worker.dev.tcp_proxy import TcpProxy
    proxy = TcpProxy(services.zk_host, services.zk_port).start()
    host, port = proxy.address.rsplit(":", 1)
    client = ZooKeeper(ConnectionConfig((Address(host, int(port)),)), session_timeout=30.0).start()
    try:
        retry = client.client._conn_retry
        assert retry.max_delay * (1 + retry.max_jitter) <= 1.0 + 1e-9
        proxy.cut()
        deadline = time.monotonic() + 10
        while client.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not client.connected
        time.sleep(7)           # long enough for the backoff to have reached its cap
        proxy.restore()
        restored = time.monotonic()
        while not client.connected and time.monotonic() - restored < 10:
            time.sleep(0.02)
        took = time.monotonic() - restored
        print(f"ZooKeeper back after a 7 s outage -> reconnected in {took:.2f} s")
        assert client.connected and took <= 2.0
    finally:
        client.stop()
        proxy.close()
