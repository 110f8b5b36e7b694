"""libs/mq.py against the real RabbitMQ on 127.0.0.1:5672."""
from __future__ import annotations

import time
import uuid

import pytest
import requests

from pero_worker.libs.addresses import Address
from pero_worker.libs.mq import (
    MQAuthenticationError,
    MQConnectionError,
    MQError,
    MQPreconditionFailed,
    MQSession,
    MQSettings,
    PublishOutcome,
)

SETTINGS = MQSettings(servers=(Address("127.0.0.1", 5672),), username="guest", password="guest")


@pytest.fixture
def session():
    mq = MQSession(SETTINGS, name="test")
    mq.open(retry_for=5)
    yield mq
    mq.close()


@pytest.fixture
def queue(session):
    name = f"t_mq_{uuid.uuid4().hex[:8]}"
    session.declare_stage_queue(name)
    yield name
    with MQSession(SETTINGS) as cleanup:
        cleanup.delete_queue(name)


def test_async_publish_confirms_every_message_and_keeps_priority(session, queue):
    outcomes = []
    for i in range(200):
        session.publish(queue, f"m{i}".encode(), priority=i % 2, on_done=outcomes.append)
    assert session.wait_for_confirms(timeout=20)
    assert outcomes == [PublishOutcome.CONFIRMED] * 200
    assert session.queue_length(queue) == 200
    first = session.get(queue)
    assert first is not None and first.priority == 1  # x-max-priority 1: priority 1 overtakes 0
    session.ack(first.delivery_tag)


def test_publish_to_missing_queue_is_returned_not_lost_silently(session):
    assert session.publish_and_wait(f"missing_{uuid.uuid4().hex}", b"x") is PublishOutcome.RETURNED


def test_mixed_routable_and_unroutable_outcomes_are_matched_to_their_messages(session, queue):
    outcomes = {}
    for i in range(50):
        target = queue if i % 3 else f"missing_{uuid.uuid4().hex}"
        session.publish(target, b"x", on_done=lambda o, i=i: outcomes.__setitem__(i, o))
    assert session.wait_for_confirms(timeout=20)
    for i in range(50):
        expected = PublishOutcome.CONFIRMED if i % 3 else PublishOutcome.RETURNED
        assert outcomes[i] is expected, i


def test_consume_with_prefetch_and_batch_ack(session, queue):
    for i in range(30):
        session.publish(queue, str(i).encode())
    session.wait_for_confirms(timeout=10)
    received = []
    session.consume(queue, received.append, prefetch=5)
    deadline = time.monotonic() + 5
    while len(received) < 5 and time.monotonic() < deadline:
        session.pump(0.1)
    session.pump(0.2)
    assert len(received) == 5  # the prefetch bound holds while nothing is acked
    session.ack(received[-1].delivery_tag, multiple=True)
    deadline = time.monotonic() + 10
    while len(received) < 30 and time.monotonic() < deadline:
        session.pump(0.1)
        if received:
            session.ack(received[-1].delivery_tag, multiple=True)
    assert [int(d.body) for d in received] == list(range(30))
    session.cancel_consumer()
    session.pump(0.1)
    assert session.queue_length(queue) == 0


def test_consumer_keeps_receiving_after_queue_was_empty(session, queue):
    received = []
    session.consume(queue, received.append, prefetch=2)
    session.pump(0.3)
    assert received == []
    with MQSession(SETTINGS) as other:
        other.publish_and_wait(queue, b"late")
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
        session.pump(0.1)
    assert [d.body for d in received] == [b"late"]
    session.ack(received[0].delivery_tag)


def test_missing_queue_length_is_none_and_channel_survives(session, queue):
    assert session.queue_length(f"missing_{uuid.uuid4().hex}") is None
    assert session.publish_and_wait(queue, b"still works") is PublishOutcome.CONFIRMED


def test_redeclare_with_other_arguments_is_a_clear_error(session, queue):
    from pero_worker.libs import mq as mq_module
    with pytest.raises(MQError, match="PRECONDITION_FAILED|inequivalent"):
        session._ops_call("redeclare", lambda ch: ch.queue_declare(queue=queue, durable=True))
    session.declare_stage_queue(queue)  # the side channel is reopened
    assert mq_module.STAGE_QUEUE_ARGUMENTS["x-max-priority"] == 1


def test_wrong_password_fails_fast_without_retry_storm():
    bad = MQSettings(servers=SETTINGS.servers, username="guest", password="wrong")
    started = time.monotonic()
    with pytest.raises(MQAuthenticationError, match="refused"):
        MQSession(bad).open(retry_for=30)
    assert time.monotonic() - started < 10


def test_unreachable_server_gives_up_after_retry_window():
    nowhere = MQSettings(servers=(Address("127.0.0.1", 1),))
    started = time.monotonic()
    with pytest.raises(MQConnectionError, match="cannot connect"):
        MQSession(nowhere).open(retry_for=1.5)
    assert time.monotonic() - started < 8


def test_wake_from_another_thread_ends_pump_early(session):
    import threading
    threading.Timer(0.2, session.wake).start()
    started = time.monotonic()
    session.pump(5)
    assert time.monotonic() - started < 2


def queue_arguments(name: str) -> dict:
    """The queue's arguments as the broker holds them (management API)."""
    response = requests.get(f"http://127.0.0.1:15672/api/queues/pero/{name}", auth=("guest", "guest"), timeout=10)
    response.raise_for_status()
    return response.json()["arguments"]


def original_declare(session: MQSession, name: str) -> None:
    """How the original's stage_config_manager.py declares every queue, `--name log` included."""
    session._ops_call("declaring like the original", lambda ch: ch.queue_declare(
        queue=name, durable=True, arguments={"x-max-priority": 1}))


def test_log_and_dead_letter_queues_are_declared_like_the_originals_queues(session):
    """Issue 8.3: the original's `stage_config_manager.py --name log` failed with 406 against our log queue."""
    name = f"t_shared_{uuid.uuid4().hex[:8]}"
    try:
        assert session.declare_shared_queue(name) is None
        assert queue_arguments(name) == {"x-max-priority": 1, "x-queue-type": "classic"}
        original_declare(session, name)                      # no 406
        assert session.declare_shared_queue(name) is None    # idempotent
        session.declare_stage_queue(name)
    finally:
        session.delete_queue(name)


def test_a_log_queue_declared_by_an_earlier_version_is_used_as_it_is(session):
    """Deployments where an earlier version of ours declared the queue without arguments: a 406 must not take
    the daemon down.  The queue is used as it is (priorities ignored) and the operator is told what to do."""
    name = f"t_legacy_{uuid.uuid4().hex[:8]}"
    session.declare_plain_queue(name)
    try:
        problem = session.declare_shared_queue(name)
        assert problem is not None and "406" in problem and "x-max-priority" in problem
        assert f"--delete {name} --keep-config" in problem
        assert queue_arguments(name) == {}
        assert session.publish_and_wait(name, b"log line") is PublishOutcome.CONFIRMED   # still usable
        assert session.queue_length(name) == 1
        with pytest.raises(MQPreconditionFailed):
            session.declare_stage_queue(name)
    finally:
        session.delete_queue(name)
    with pytest.raises(MQPreconditionFailed):   # any other 406 is still an error: nothing is hidden
        other = f"t_legacy_{uuid.uuid4().hex[:8]}"
        session.declare_plain_queue(other)
        try:
            original_declare(session, other)
        finally:
            session.delete_queue(other)


def test_the_broker_version_is_known_after_connecting(session):
    """The worker takes the default max_message_size of this version until the broker names its own."""
    from pero_worker.libs.message_size import default_max_message_size
    version = session.broker_version
    answer = requests.get("http://127.0.0.1:15672/api/overview", auth=("guest", "guest"), timeout=5).json()
    assert version == answer["rabbitmq_version"]
    assert default_max_message_size(version) is not None
    assert MQSession(SETTINGS).broker_version == ""     # not connected: unknown
