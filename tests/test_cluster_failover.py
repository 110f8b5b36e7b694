"""Multi-node engines (issue 12, part 2): failover through the server lists.

The pure pieces of dev/cluster.py and dev/cluster_failover.py get table tests; the tools'
failover is tested on the real broker behind two TCP proxies (dev/tcp_proxy.py), which stand
for two cluster nodes: both are cut (their connections drop) and only the second comes back,
so a tool must go through its server list to keep working.  The whole 3-node run is
`make cluster-test` (dev/cluster_failover.py); its short form is the last test here.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pero_worker.dev.cluster import NODES, Cluster, _pid_nodes, zk_mode_from_srvr
from pero_worker.dev.cluster_failover import stall_after
from pero_worker.dev.opsplane import REPO, make_stage, publish_requests, wait_for
from pero_worker.dev.tcp_proxy import TcpProxy
from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import Address, parse_address_list
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.mq import MQSession, MQSettings
from pero_worker.libs.zk import ZooKeeper

PUBLISHER = REPO / "scripts" / "publisher.py"


# --- pure pieces -------------------------------------------------------------------------------------

@pytest.mark.parametrize("samples, start, end, expected", [
    # steady output: the pause is the spacing of the results
    ([(0.0, 0), (0.5, 1), (1.0, 2), (1.5, 3)], 0.0, 1.5, 0.5),
    # a fault at 1.0, nothing new until 7.0: a 6 s pause
    ([(0.0, 0), (1.0, 5), (2.0, 5), (4.0, 5), (7.0, 6), (7.5, 7)], 1.0, 7.5, 6.0),
    # the output never grows again before `end`: the pause runs to the end
    ([(0.0, 0), (1.0, 5), (3.0, 5)], 1.0, 3.0, 2.0),
    # samples before the fault do not count as progress after it
    ([(0.0, 0), (0.9, 9), (1.2, 10), (1.4, 11)], 1.0, 1.4, 0.2),
])
def test_stall_after_is_the_longest_time_without_a_new_result_from_the_fault(samples, start, end, expected):
    assert stall_after(samples, start, end) == pytest.approx(expected)


@pytest.mark.parametrize("text, expected", [
    ("Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0.1/4\nMode: leader\nNode count: 5\n", "leader"),
    ("Zookeeper version: 3.8.0\nMode: follower\n", "follower"),
    ("This ZooKeeper instance is not currently serving requests\n", ""),
    ("", ""),
])
def test_zookeeper_mode_is_read_from_srvr(text, expected):
    assert zk_mode_from_srvr(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("<pero-cluster-1@localhost.1795950851.1362.0>", ["pero-cluster-1@localhost"]),
    ("[<pero-cluster-3@localhost.1.1520.0>, <pero-cluster-2@localhost.1.1704.0>]",
     ["pero-cluster-3@localhost", "pero-cluster-2@localhost"]),
    ("[]", []),
    ("", []),
])
def test_queue_process_ids_name_their_nodes(text, expected):
    assert _pid_nodes(text) == expected


def test_ensemble_and_cluster_stay_in_the_assigned_port_range(tmp_path):
    cluster = Cluster(tmp_path)
    ports = []
    for node in range(NODES):
        config = cluster.zk_config_text(node)
        # every node knows all three members; quorum and election ports in the range too
        assert [line for line in config.splitlines() if line.startswith("server.")] == [
            f"server.{n + 1}=127.0.0.1:{16511 + n}:{16521 + n}" for n in range(NODES)]
        env = cluster.mq_env(node)
        ports += [cluster.zk_port(node), 16511 + node, 16521 + node, cluster.amqp_port(node),
                  int(env["RABBITMQ_DIST_PORT"]), int(env["ERL_EPMD_PORT"])]
        assert env["HOME"] == str(tmp_path / "home")      # the deployment's own Erlang cookie
        assert env["RABBITMQ_NODENAME"] != "rabbit@localhost"
    assert all(16500 <= port <= 16999 for port in ports)
    assert len(set(ports)) == len(ports) - (NODES - 1)     # only the one epmd port is shared by the nodes
    assert cluster.zk_servers() == "127.0.0.1:16501,127.0.0.1:16502,127.0.0.1:16503"


@pytest.mark.parametrize("mode, expected", [
    ("all", {"ha-mode": "all"}),
    ("exactly-2", {"ha-mode": "exactly", "ha-params": 2}),
])
def test_queues_are_mirrored_with_promotion_on_shutdown_and_failure(tmp_path, mode, expected):
    policy = Cluster(tmp_path, ha_mode=mode).ha_policy()
    assert policy == {**expected, "ha-sync-mode": "automatic", "ha-promote-on-shutdown": "always",
                      "ha-promote-on-failure": "always"}


def test_every_zookeeper_server_of_the_list_is_given_to_kazoo():
    """The daemons reach the ensemble through their server list: all of it, not the first entry."""
    servers = tuple(parse_address_list("127.0.0.1:16501, 127.0.0.1:16502,127.0.0.1:16503", 2181))
    zk = ZooKeeper(ConnectionConfig(zookeeper_servers=servers, zookeeper_chroot="/pero-t"))
    try:
        assert sorted(zk.client.hosts) == [("127.0.0.1", 16501), ("127.0.0.1", 16502), ("127.0.0.1", 16503)]
        assert zk.client.chroot == "/pero-t"
    finally:
        zk.stop()


def test_a_session_skips_a_broker_that_is_gone_and_says_which_one_it_is_on(services):
    """The first broker of the list refuses (a stopped node): the session opens on the next one, and
    `connected_to` names it (the worker logs it when its connection is restored)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        gone = probe.getsockname()[1]          # nothing listens here once the socket is closed
    live = Address(services.mq_host, services.mq_port)
    session = MQSession(MQSettings(servers=(Address("127.0.0.1", gone), live), username=services.user,
                                   password=services.password), name="test-cluster-list")
    assert session.connected_to == ""
    session.open(retry_for=0)
    try:
        assert session.connected_to == f"{live.host}:{live.port}"
    finally:
        session.close()


# --- tools fail over through the server list -------------------------------------------------------------

def _folders(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))]


def test_download_goes_on_through_the_server_list_when_its_broker_goes(zk_root, zk, services, tmp_path,
                                                                     unique_name):
    """publisher.py --download --keep-running used to stop (exit 3) when its broker's connection dropped;
    with two brokers in the list it must reconnect to the one still there and go on, losing nothing and
    writing nothing twice."""
    first, second = (TcpProxy(services.mq_host, services.mq_port).start() for _ in range(2))
    direct = MQSession(MQSettings(servers=(Address(services.mq_host, services.mq_port),),
                                  username=services.user, password=services.password), name="test-cluster-dl")
    out = unique_name("out")
    download = None
    try:
        for proxy in (first, second):
            zk.ensure_path(f"{zk_paths.MQ_SERVERS}/{proxy.address}")
        make_stage(zk_root, out, None)
        direct.open(retry_for=10)
        ids = publish_requests(direct, [out], 30)
        target = tmp_path / "results"
        download = subprocess.Popen(
            [sys.executable, str(PUBLISHER), "-z", zk_root, "--download", out, "--directory", str(target),
             "--keep-running", "--no-progress"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(_folders(target)) == 30, 60, "the first 30 requests downloaded")

        first.cut()           # a node stops: every connection through it drops ...
        second.cut()
        second.restore()      # ... and the other node is still there
        ids += publish_requests(direct, [out], 30)
        wait_for(lambda: len(_folders(target)) == 60 or download.poll() is not None, 60,
                 "the next 30 requests downloaded")
        assert download.poll() is None, download.communicate()[1][-2000:]
        download.send_signal(signal.SIGTERM)
        stdout, stderr = download.communicate(timeout=60)
        assert download.returncode == 0, stderr[-2000:]
        assert "reconnect" in stderr and "Traceback" not in stderr, stderr[-2000:]
        assert len(_folders(target)) == len(ids) == 60
        assert direct.queue_length(out) == 0
        print(stdout.strip())
    finally:
        if download is not None and download.poll() is None:
            download.kill()
            download.wait()
        if direct.is_open:
            direct.delete_queue(out)
        direct.close()
        for proxy in (first, second):
            proxy.close()


# --- the whole run, short -----------------------------------------------------------------------------

def test_cluster_run_short_form_loses_nothing(tmp_path):
    """dev/cluster_failover.py with fewer pages and two faults: a fresh 3+3 node deployment (about 2 min)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "dev" / "cluster_failover.py"), "--pages", "150", "--page-seconds", "0.1",
         "--faults", "zk-leader,mq-stop", "--state-dir", str(tmp_path / "cluster"), "--work-dir", str(tmp_path / "w")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "lost 0," in done.stdout
