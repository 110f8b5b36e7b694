"""The watchdog's state gathering and plan application (watchdog/state.py) and the management API client,
against the real ZooKeeper and RabbitMQ."""
from __future__ import annotations

import math
import time
from datetime import datetime, timezone

import pytest

from pero_worker.dev.opsplane import dummy_stage_config, make_stage, publish_requests, wait_for
from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import Address
from pero_worker.libs.mq import MQSession, MQSettings
from pero_worker.libs.mq_management import ManagementAuthError, ManagementClient, ManagementError, parse_queue
from pero_worker.watchdog.planning import Move, Plan
from pero_worker.watchdog.state import StateReader, apply_plan, format_iso, parse_iso


@pytest.mark.parametrize("text,expected", [
    ("2024-01-02T03:04:05+00:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()),
    ("2024-01-02T03:04:05.250000+00:00", datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=timezone.utc).timestamp()),
    ("2024-01-02T04:04:05+01:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()),
    ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()),   # naive = UTC
    ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()),
    ("", None), ("   ", None), ("yesterday", None),
])
def test_parse_iso(text, expected):
    assert parse_iso(text) == expected


def test_format_iso_is_what_the_original_wrote_and_round_trips():
    epoch = 1_700_000_000.5
    text = format_iso(epoch)
    assert text == datetime.fromtimestamp(epoch, timezone.utc).isoformat()
    assert parse_iso(text) == epoch


def test_parse_queue_tolerates_missing_statistics():
    stats = parse_queue({"name": "q", "messages_ready": 3, "messages_unacknowledged": "x",
                         "message_stats": {"publish_details": {"rate": 2.5}, "deliver_get_details": {"rate": 1.0}}})
    assert (stats.name, stats.messages_ready, stats.messages_unacknowledged, stats.publish_rate,
            stats.deliver_rate, stats.consumers) == ("q", 3, 0, 2.5, 1.0, 0)


@pytest.fixture
def mq(zk, conn_config):
    session = MQSession(MQSettings.from_zookeeper(zk, conn_config), name="test-watchdog-state")
    session.open(retry_for=10)
    session.created = []
    yield session
    for name in session.created:
        session.delete_queue(name)
    session.close()


def test_management_client_fails_over_and_reports_queues(services, mq, unique_name):
    name = unique_name("mgmt")
    mq.declare_stage_queue(name)
    mq.created.append(name)
    for _ in range(3):
        mq.publish(name, b"x")
    assert mq.wait_for_confirms(10)
    dead = Address("127.0.0.1", 1)
    client = ManagementClient([dead, Address(services.mq_host, services.mq_mgmt_port)], timeout=2)
    try:
        stats = wait_for(lambda: next((q for q in client.queues() if q.name == name and q.messages_ready == 3), None),
                         20, "the management API to count 3 messages", interval=0.5)
        assert stats.consumers == 0 and stats.messages_unacknowledged == 0
        assert client.servers[client._preferred] != dead, "the answering server is tried first next time"
        assert client.queue(name).messages_ready == 3
        assert client.queue("no_such_queue_" + name) is None
        assert client.queues(vhost="no_such_vhost") == []
    finally:
        client.close()


def test_management_client_errors_are_clear(services):
    with pytest.raises(ManagementError, match="127.0.0.1:1"):
        ManagementClient([Address("127.0.0.1", 1)], timeout=1).queues()
    with pytest.raises(ManagementAuthError, match="refused user 'nobody'"):
        ManagementClient([Address(services.mq_host, services.mq_mgmt_port)], username="nobody",
                         password="wrong").queues()
    with pytest.raises(ManagementError, match="no RabbitMQ management servers"):
        ManagementClient([])


def test_snapshot_reads_workers_stages_and_instant_depths(zk_root, zk, conn_config, mq, unique_name):
    stage, output = unique_name("s"), unique_name("out")
    make_stage(zk_root, stage, dummy_stage_config(0.1), priority=2)
    make_stage(zk_root, output, None)
    mq.created += [stage, output]
    zk.set(zk_paths.stage_avg_msg_time(stage), zk_paths.encode_float(0.25))
    zk.set(zk_paths.stage_switch_time(stage), zk_paths.encode_float(3.5))
    zk.set_text(zk_paths.worker_status("w1"), zk_paths.PROCESSING)
    zk.create(zk_paths.worker_connected("w1"), b"true", ephemeral=True)
    zk.set_text(zk_paths.worker_queue("w1"), stage)
    zk.set_text(zk_paths.worker_enabled("w1"), "true")
    zk.set_text(zk_paths.worker_unlock_time("w1"), "2030-01-01T00:00:00+00:00")
    zk.set_text(zk_paths.worker_status("dead"), zk_paths.IDLE)
    zk.set_text(zk_paths.worker_enabled("dead"), "false")
    reader = StateReader(zk, conn_config)
    try:
        first = reader.snapshot(time.time())
        assert first.depth_source == "amqp+management"
        assert set(first.stages) == {stage}, "the output stage (no config) is not scheduled"
        view = first.stages[stage].view
        assert (view.ready, view.avg_msg_time, view.switch_time, view.admin_priority) == (0, 0.25, 3.5, 2)
        assert view.empty_for == math.inf, "empty since before the watchdog looked"
        workers = {r.view.worker_id: r.view for r in first.workers}
        assert workers["w1"].connected and workers["w1"].queue == stage
        assert workers["w1"].unlock_time == parse_iso("2030-01-01T00:00:00+00:00")
        assert not workers["dead"].connected and not workers["dead"].enabled

        publish_requests(mq, [stage, output], 4)
        second = reader.snapshot(time.time())
        assert second.stages[stage].view.ready == 4, "AMQP depths are instant"
        assert second.stages[stage].view.empty_for == 0
        while (delivery := mq.get(stage)) is not None:
            mq.ack(delivery.delivery_tag)
        third = reader.snapshot(time.time())
        assert third.stages[stage].view.ready == 0
        assert 0 <= third.stages[stage].view.empty_for < 5, "emptied just now"
    finally:
        reader.close()


def test_snapshot_without_any_broker_has_no_depths(zk, conn_config, unique_name):
    stage = unique_name("s")
    zk.set_text(zk_paths.stage_config(stage), dummy_stage_config(0.1))
    for path in (zk_paths.MQ_SERVERS, zk_paths.MQ_MONITORING_SERVERS):
        zk.delete(path, recursive=True)
    reader = StateReader(zk, conn_config)
    try:
        snapshot = reader.snapshot(time.time())
        assert snapshot.depth_source == ""
    finally:
        reader.close()


def test_apply_plan_writes_moves_and_never_recreates_a_removed_worker(zk):
    zk.set_text(zk_paths.worker_queue("w1"), "")
    zk.set_text(zk_paths.stage_waiting_since("a"), "")
    now = time.time()
    plan = Plan(moves=(Move("w1", "", "a", now + 10, "test"), Move("gone", "a", "b", now + 10, "test"),
                       Move("w1", "a", "", 0.0, "park")),
                waiting_since={"a": now, "missing_stage": now})
    apply_plan(zk, Plan(moves=plan.moves[:2], waiting_since=plan.waiting_since), now)
    assert zk.get_text(zk_paths.worker_queue("w1")) == "a"
    assert parse_iso(zk.get_text(zk_paths.worker_unlock_time("w1"))) == pytest.approx(now + 10)
    assert not zk.exists(zk_paths.worker_root("gone"))
    assert parse_iso(zk.get_text(zk_paths.stage_waiting_since("a"))) == pytest.approx(now)
    assert not zk.exists(zk_paths.stage_root("missing_stage"))
    apply_plan(zk, Plan(moves=plan.moves[2:], waiting_since={"a": None}), now)
    assert zk.get_text(zk_paths.worker_queue("w1")) == ""
    assert parse_iso(zk.get_text(zk_paths.worker_unlock_time("w1"))) == pytest.approx(now), "parseable, unlocked"
    assert zk.get_text(zk_paths.stage_waiting_since("a")) == ""
