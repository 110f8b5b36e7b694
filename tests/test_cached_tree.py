"""libs/zk.py CachedTree (the console's watch-fed copy of /pero) and get_many/created_many, on the real ZooKeeper."""
from __future__ import annotations

import time

import pytest

from pero_worker.console.collector import Collector
from pero_worker.console.settings import ConsoleSettings
from pero_worker.dev.opsplane import wait_for
from pero_worker.dev.tcp_proxy import TcpProxy
from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import Address
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.zk import CachedTree, ConnectionLoss, ZooKeeper


def test_cached_tree_follows_the_tree(zk):
    zk.set(zk_paths.worker_status("a"), b"IDLE")
    zk.set(zk_paths.worker_connected("a"), b"true", ephemeral=True)
    before = time.time()
    tree = CachedTree(zk, zk_paths.ROOT).start()
    try:
        assert tree.children(zk_paths.WORKER_STATUS_ROOT) == ["a"]
        assert tree.get_many([zk_paths.worker_status("a"), zk_paths.worker_queue("a")]) == [b"IDLE", None]
        assert tree.get_many([zk_paths.worker_status("a")]) == zk.get_many([zk_paths.worker_status("a")])
        created = tree.created_many([zk_paths.worker_connected("a"), zk_paths.worker_queue("a")])
        assert created[1] is None and abs(created[0] - before) < 60
        assert created == zk.created_many([zk_paths.worker_connected("a"), zk_paths.worker_queue("a")])
        zk.set_text(zk_paths.worker_status("a"), "PROCESSING")
        zk.set_text(zk_paths.worker_queue("b"), "ocr")
        wait_for(lambda: tree.get_text(zk_paths.worker_status("a")) == "PROCESSING", 10, "the update")
        wait_for(lambda: tree.children(zk_paths.WORKER_STATUS_ROOT) == ["a", "b"], 10, "the new worker")
        zk.delete(zk_paths.worker_connected("a"))
        wait_for(lambda: not tree.exists(zk_paths.worker_connected("a")), 10, "the deletion")
        with pytest.raises(ValueError):   # not a copy of that part of the tree: a programming error
            tree.get("/elsewhere")
    finally:
        tree.close()


def test_reads_fail_while_zookeeper_is_cut_off(services, zk, conn_config):
    proxy = TcpProxy(services.zk_host, services.zk_port).start()
    host, port = proxy.address.rsplit(":", 1)
    via_proxy = ZooKeeper(ConnectionConfig(zookeeper_servers=(Address(host, int(port)),),
                                           zookeeper_chroot=conn_config.zookeeper_chroot)).start()
    zk.set(zk_paths.worker_status("a"), b"IDLE")
    tree = CachedTree(via_proxy, zk_paths.ROOT).start()
    try:
        assert tree.get(zk_paths.worker_status("a")) == b"IDLE"
        proxy.cut()
        wait_for(lambda: not via_proxy.connected, 20, "the client to notice")
        with pytest.raises(ConnectionLoss):
            tree.get(zk_paths.worker_status("a"))
        with pytest.raises(ConnectionLoss):
            tree.children(zk_paths.WORKER_STATUS_ROOT)
        proxy.restore()
        wait_for(lambda: via_proxy.connected, 30, "the reconnection")
        assert tree.get(zk_paths.worker_status("a")) == b"IDLE"
    finally:
        tree.close()
        via_proxy.stop()
        proxy.close()


def test_the_console_writes_nothing_into_an_empty_tree(conn_config):
    """kazoo's TreeCache creates its root: the collector waits for /pero to exist before caching it."""
    zk = ZooKeeper(conn_config).start()
    collector = Collector(ConsoleSettings(connection=conn_config), zk)
    try:
        view = collector.collect(time.time())
        assert view.workers == () and not zk.exists(zk_paths.ROOT)
        zk.set_text(zk_paths.worker_status("w"), "IDLE")
        view = collector.collect(time.time())
        assert [w.worker_id for w in view.workers] == ["w"] and collector.nodes is collector.tree
    finally:
        collector.stop()
        zk.stop()
