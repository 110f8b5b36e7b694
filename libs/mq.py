"""RabbitMQ client: one connection and its channels, owned by exactly one thread.

Why not pika's plain BlockingChannel with `confirm_delivery()`: it waits for the
broker's confirm after every single publish, one network round trip per
message, which is what capped the original system at ~100 requests/s.  Here
confirms are asynchronous: `publish()` returns at once and the outcome
(confirmed, returned as unroutable, or nacked) is delivered to a callback while
the owner thread runs `pump()`.  Callers ack their input only from that
callback, which keeps the at-least-once guarantee (docs/protocol.md §3).

Thread rules: every method except `wake()` and `call_threadsafe()` must be
called from the thread that called `open()`.  Connection loss surfaces as
`MQConnectionError` from any call; the owner reopens the session and the broker
redelivers whatever was not acked (duplicates are possible, loss is not).
"""
from __future__ import annotations

import enum
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions as pex
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.adapters.utils import io_services_utils as _pika_io

from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import DEFAULT_PORTS, Address, parse_address
from pero_worker.libs.backoff import Backoff

if TYPE_CHECKING:
    from pero_worker.libs.config import ConnectionConfig
    from pero_worker.libs.zk import NodeReader

log = logging.getLogger(__name__)

# pika reads its socket 4 KB at a time and decodes at most 100 KB per I/O pass: a 50 KB
# page then costs a dozen reads and wake-ups.  Larger reads nearly double the throughput of
# a worker on page-sized messages (measured with bench/pipeline.py).
_pika_io._AsyncTransportBase._MAX_RECV_BYTES = 128 * 1024
_pika_io._AsyncTransportBase._MAX_CONSUME_BYTES = 512 * 1024

VHOST = "pero"
STAGE_QUEUE_ARGUMENTS = {"x-max-priority": 1, "x-queue-type": "classic"}
DEAD_LETTER_QUEUE = "pero_dead_letter"
DEFAULT_LOG_QUEUE = "log"


class MQError(Exception):
    """A RabbitMQ operation failed; the message is meant for the operator."""


class MQConnectionError(MQError):
    """The connection is gone or could not be opened; reopen the session."""


class MQPreconditionFailed(MQError):
    """406 PRECONDITION_FAILED: e.g. a queue declared with arguments other than those it exists with."""


class MQAuthenticationError(MQConnectionError):
    """Wrong user or password, or no access to the vhost: retrying will not help."""


class MQChannelClosedError(MQConnectionError):
    """The broker closed our publish/consume channel (e.g. a message over its size limit).

    The session is closed when this is raised: reopen it.  Unconfirmed publishes
    have no outcome and unacked deliveries go back to their queue, as after a
    lost connection; `reply_code` and `reply_text` say why the broker did it.
    """

    def __init__(self, message: str, reply_code: int, reply_text: str) -> None:
        super().__init__(message)
        self.reply_code = reply_code
        self.reply_text = reply_text


class PublishOutcome(enum.Enum):
    CONFIRMED = "confirmed"
    RETURNED = "returned"   # unroutable: the target queue does not exist
    NACKED = "nacked"       # the broker could not take the message


@dataclass(frozen=True)
class Delivery:
    delivery_tag: int
    body: bytes
    priority: int
    headers: dict[str, Any]
    redelivered: bool
    queue: str
    message_id: str | None = None   # ours: '<session token>.<seq>', unique; other publishers may set none
    timestamp: int | None = None    # AMQP timestamp property: epoch seconds of the publish (None: not set)


@dataclass(frozen=True)
class MQSettings:
    servers: tuple[Address, ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_cert: str | None = None
    vhost: str = VHOST
    heartbeat: int = 30

    @classmethod
    def from_zookeeper(cls, zk: NodeReader, conn: ConnectionConfig, **overrides: Any) -> MQSettings:
        """Broker addresses come from ZooKeeper; credentials and CA from the process config."""
        default_port = DEFAULT_PORTS["amqps" if conn.use_tls else "amqp"]
        servers = []
        for entry in zk.children(zk_paths.MQ_SERVERS):
            try:
                servers.append(parse_address(entry, default_port))
            except ValueError as error:
                log.warning("ignoring bad RabbitMQ server entry in ZooKeeper: %s", error)
        if not servers:
            raise MQError(
                f"no RabbitMQ servers are configured in ZooKeeper ({zk_paths.MQ_SERVERS}); "
                "add them with scripts/server_config_manager.py --add-mq-servers HOST:PORT")
        return cls(servers=tuple(servers), username=conn.username, password=conn.password,
                   ca_cert=conn.ca_cert, **overrides)


def _connection_parameters(settings: MQSettings, name: str) -> list[pika.ConnectionParameters]:
    credentials = (pika.PlainCredentials(settings.username, settings.password or "")
                   if settings.username else pika.PlainCredentials("guest", "guest"))
    result = []
    for server in settings.servers:
        ssl_options = None
        if settings.ca_cert:
            context = ssl.create_default_context(cafile=settings.ca_cert)
            ssl_options = pika.SSLOptions(context, server_hostname=server.host)
        result.append(pika.ConnectionParameters(
            host=server.host, port=server.port, virtual_host=settings.vhost, credentials=credentials,
            heartbeat=settings.heartbeat, blocked_connection_timeout=60, ssl_options=ssl_options,
            connection_attempts=1, socket_timeout=5, stack_timeout=15,
            client_properties={"connection_name": name or "pero-worker"},
        ))
    return result


def _root_cause(error: BaseException, depth: int = 0) -> BaseException:
    """The innermost exception pika wrapped: AMQPConnectionError(args[0]) -> connector phase error (.exception)
    or workflow failure (.exceptions, the last attempt) -> the socket or TLS error that really happened."""
    if depth > 8:
        return error
    inner: object = None
    if isinstance(error, pex.AMQPConnectionError) and error.args and isinstance(error.args[0], BaseException):
        inner = error.args[0]
    elif isinstance(getattr(error, "exception", None), BaseException):
        inner = error.exception
    elif getattr(error, "exceptions", None):
        inner = error.exceptions[-1]
    return _root_cause(inner, depth + 1) if isinstance(inner, BaseException) else error


def _describe(error: BaseException) -> str:
    """One line naming the cause, e.g. 'connection refused (ConnectionRefusedError)' (pika's own text for a
    refused connection is 'AMQPConnectorSocketConnectError: ' with the reason lost)."""
    cause = _root_cause(error)
    if isinstance(cause, (socket.timeout, TimeoutError)):
        return f"timed out ({type(cause).__name__})"
    if isinstance(cause, ssl.SSLError):
        return f"TLS error: {cause.reason or cause}"
    if isinstance(cause, OSError) and cause.strerror:
        return f"{cause.strerror[:1].lower()}{cause.strerror[1:]} ({type(cause).__name__})"
    text = str(cause).strip()
    if cause is not error and not text:
        text = str(error).strip()
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _is_permanent(error: BaseException) -> bool:
    """Failures that a retry cannot fix: bad credentials, no vhost access, an untrusted certificate."""
    if isinstance(error, (pex.ProbableAuthenticationError, pex.AuthenticationError, pex.ProbableAccessDeniedError)):
        return True
    inner = error.args[0] if isinstance(error, pex.AMQPConnectionError) and error.args else error
    if isinstance(inner, ssl.SSLCertVerificationError):
        return True
    return isinstance(inner, pex.ConnectionClosedByBroker) and inner.reply_code in (403, 530)


class MQSession:
    """One AMQP connection with a publish/consume channel and a side channel for queue operations."""

    def __init__(self, settings: MQSettings, *, name: str = "") -> None:
        self.settings = settings
        self.name = name
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._ops_channel: BlockingChannel | None = None
        self._publish_seq = 0
        self._session_token = uuid.uuid4().hex[:12]
        self._pending: dict[int, Callable[[PublishOutcome], None] | None] = {}
        self._returned: set[int] = set()
        self._completed: list[tuple[Callable[[PublishOutcome], None] | None, PublishOutcome]] = []
        self._wakeup_scheduled = False
        self._consumer_tag: str | None = None
        self._consumer_queue: str | None = None
        self._channel_closed: pex.ChannelClosedByBroker | None = None

    # --- lifecycle ------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._connection is not None and self._connection.is_open

    def open(self, *, retry_for: float | None = None) -> None:
        """Connect to the first broker that answers, retrying with backoff for `retry_for` s (None = forever)."""
        self.close()
        deadline = None if retry_for is None else time.monotonic() + retry_for
        backoff = Backoff(initial=0.25, cap=5.0)
        servers = ", ".join(str(s) for s in self.settings.servers)
        while True:
            try:
                self._connection = BlockingConnection(_connection_parameters(self.settings, self.name))
                self._setup_channel()
                log.debug("connected to RabbitMQ %s", servers)
                return
            except pex.AMQPError as error:
                self.close()
                reason = _describe(error)
                if _is_permanent(error):
                    raise MQAuthenticationError(
                        f"RabbitMQ at {servers} refused us (user {self.settings.username or 'guest'!r}, "
                        f"vhost {self.settings.vhost!r}): {reason}") from None
                delay = backoff.delay()
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise MQConnectionError(f"cannot connect to RabbitMQ at {servers}: {reason}") from None
                log.warning("cannot connect to RabbitMQ at %s (%s); retrying in %.1f s", servers, reason, delay)
                time.sleep(delay)
            except (OSError, ssl.SSLError, ValueError) as error:
                self.close()
                raise MQConnectionError(f"cannot connect to RabbitMQ at {servers}: {error}") from None

    @property
    def connected_to(self) -> str:
        """'host:port' of the broker of the server list this session is connected to ('' when not connected):
        on a cluster, which node took over after a failover."""
        connection = self._connection
        params = getattr(getattr(connection, "_impl", None), "params", None) if connection is not None else None
        return f"{params.host}:{params.port}" if params is not None else ""

    @property
    def broker_version(self) -> str:
        """The version the broker announced when the connection opened ('' when unknown or not connected)."""
        connection = self._connection
        if connection is None:
            return ""
        properties = getattr(connection._impl, "server_properties", None) or {}   # pika keeps them on the impl
        version = properties.get("version", "")
        return version.decode("utf-8", "replace") if isinstance(version, bytes) else str(version or "")

    def _setup_channel(self) -> None:
        assert self._connection is not None
        self._channel = self._connection.channel()
        impl = self._channel._impl  # pika's async channel: the only way to get asynchronous confirms
        impl.confirm_delivery(ack_nack_callback=self._on_confirm_frame)
        impl.add_on_return_callback(self._on_return_frame)
        impl.add_on_close_callback(self._on_channel_close)
        self._channel_closed = None
        self._publish_seq = 0
        self._pending.clear()
        self._returned.clear()
        self._consumer_tag = None
        self._consumer_queue = None

    def close(self) -> None:
        """Close quietly; unconfirmed publishes are forgotten (their inputs were not acked)."""
        connection, self._connection = self._connection, None
        self._channel = None
        self._ops_channel = None
        self._pending.clear()
        self._completed.clear()
        self._consumer_tag = None
        self._channel_closed = None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # closing a broken connection may raise anything
                pass

    def __enter__(self) -> MQSession:
        if not self.is_open:
            self.open(retry_for=0)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _require_open(self) -> tuple[BlockingConnection, BlockingChannel]:
        if self._connection is None or self._channel is None or not self._connection.is_open:
            raise MQConnectionError("not connected to RabbitMQ")
        return self._connection, self._channel

    def _on_channel_close(self, _channel: Any, reason: Exception) -> None:
        # Runs inside pika's I/O loop: only record; pump() and publish() raise it.
        if isinstance(reason, pex.ChannelClosedByBroker):
            self._channel_closed = reason

    def _raise_if_channel_closed(self) -> None:
        """The broker closed the main channel: say so at once (with its reason) instead of waiting for confirms."""
        reason = self._channel_closed
        if reason is None:
            return
        self.close()
        raise MQChannelClosedError(f"RabbitMQ closed the channel: {reason.reply_code} {reason.reply_text}",
                                   reason.reply_code, reason.reply_text)

    def _translate(self, error: BaseException, what: str) -> MQError:
        if self._channel_closed is not None:
            try:
                self._raise_if_channel_closed()
            except MQChannelClosedError as closed:
                return closed
        if isinstance(error, pex.ChannelClosedByBroker):
            # A closed main channel leaves consumers and confirms in an unknown state: start over.
            self.close()
            return MQError(f"RabbitMQ refused {what}: {error.reply_code} {error.reply_text}")
        self.close()
        return MQConnectionError(f"lost connection to RabbitMQ during {what}: {_describe(error)}")

    # --- queues (side channel, so a 404/406 never kills the consumer) ---------

    def _ops(self) -> BlockingChannel:
        connection, _ = self._require_open()
        if self._ops_channel is None or not self._ops_channel.is_open:
            self._ops_channel = connection.channel()
        return self._ops_channel

    def _ops_call(self, what: str, fn: Callable[[BlockingChannel], Any]) -> Any:
        try:
            return fn(self._ops())
        except pex.ChannelClosedByBroker as error:
            self._ops_channel = None
            kind = MQPreconditionFailed if error.reply_code == 406 else MQError
            raise kind(f"RabbitMQ refused {what}: {error.reply_code} {error.reply_text}") from None
        except pex.AMQPError as error:
            raise self._translate(error, what) from None

    def declare_stage_queue(self, name: str) -> None:
        """Durable priority queue with the arguments every tool uses (a different declare fails)."""
        self._ops_call(f"declaring queue {name!r}", lambda ch: ch.queue_declare(
            queue=name, durable=True, arguments=STAGE_QUEUE_ARGUMENTS))

    def declare_shared_queue(self, name: str) -> str | None:
        """The log and dead-letter queues: declared like every stage queue (x-max-priority 1), as the original
        system declares all its queues, so that its tools can declare them too.

        Versions of this suite before issue 8 declared these two without arguments; against such a queue
        the declare fails with 406 (inequivalent arg 'x-max-priority').  That queue still works (priorities
        are just ignored), so it is used as it is and a warning text is returned (None when all is well):
        the daemon keeps running, and the operator re-creates the queue when convenient.
        """
        try:
            self.declare_stage_queue(name)
            return None
        except MQPreconditionFailed as error:
            if self._inspect(name) is None:
                raise
            return (f"queue {name!r} exists with other arguments than x-max-priority 1 ({error}); using it as it "
                    f"is. It was declared by an earlier pero-worker; the original system's tools cannot declare "
                    f"it until it is re-created: once it is empty, delete it (stage_config_manager.py --delete "
                    f"{name} --keep-config) and restart this daemon")

    def declare_plain_queue(self, name: str) -> None:
        """Durable queue without arguments: how versions before issue 8 declared the log and dead-letter
        queues (tests use it to reproduce such a deployment)."""
        self._ops_call(f"declaring queue {name!r}", lambda ch: ch.queue_declare(queue=name, durable=True))

    def _inspect(self, name: str) -> Any | None:
        """Passive declare: the queue's current counters, or None when it does not exist."""
        try:
            return self._ops().queue_declare(queue=name, passive=True).method
        except pex.ChannelClosedByBroker as error:
            self._ops_channel = None
            if error.reply_code == 404:
                return None
            raise MQError(f"RabbitMQ refused inspecting queue {name!r}: {error.reply_text}") from None
        except pex.AMQPError as error:
            raise self._translate(error, f"inspecting queue {name!r}") from None

    def queue_length(self, name: str) -> int | None:
        """Ready messages in a queue right now (no management-API lag); None when it does not exist."""
        counters = self._inspect(name)
        return None if counters is None else counters.message_count

    def queue_consumers(self, name: str) -> int | None:
        counters = self._inspect(name)
        return None if counters is None else counters.consumer_count

    def delete_queue(self, name: str) -> None:
        self._ops_call(f"deleting queue {name!r}", lambda ch: ch.queue_delete(queue=name))

    def purge_queue(self, name: str) -> None:
        self._ops_call(f"purging queue {name!r}", lambda ch: ch.queue_purge(queue=name))

    # --- publishing -----------------------------------------------------------

    def publish(self, queue: str, body: bytes, *, priority: int = 0, headers: dict[str, Any] | None = None,
                on_done: Callable[[PublishOutcome], None] | None = None) -> None:
        """Persistent, mandatory publish to the default exchange; `on_done(outcome)` runs during pump()."""
        self._raise_if_channel_closed()
        _connection, channel = self._require_open()
        self._publish_seq += 1
        seq = self._publish_seq
        # The timestamp lets operator tools tell a message's age (e.g. how long a dead letter has waited).
        properties = pika.BasicProperties(
            delivery_mode=2, priority=max(0, int(priority)), headers=headers or None,
            message_id=f"{self._session_token}.{seq}", timestamp=int(time.time()))
        self._pending[seq] = on_done
        try:
            channel._impl.basic_publish(exchange="", routing_key=queue, body=body,
                                        properties=properties, mandatory=True)
        except pex.AMQPError as error:
            raise self._translate(error, f"publishing to {queue!r}") from None

    def publish_and_wait(self, queue: str, body: bytes, *, priority: int = 0,
                         headers: dict[str, Any] | None = None, timeout: float = 30.0) -> PublishOutcome:
        result: list[PublishOutcome] = []
        self.publish(queue, body, priority=priority, headers=headers, on_done=result.append)
        deadline = time.monotonic() + timeout
        while not result:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MQError(f"RabbitMQ did not confirm a message to {queue!r} within {timeout:.0f} s")
            self.pump(min(remaining, 1.0))
        return result[0]

    def wait_for_confirms(self, timeout: float | None = None) -> bool:
        """Pump until every publish has an outcome; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending or self._completed:
            if not self._pending:
                self._run_completed()
                break
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.pump(min(remaining, 1.0))
        return True

    def _on_confirm_frame(self, frame: Any) -> None:
        # Runs inside pika's I/O loop: only record; callbacks run later in pump().
        method = frame.method
        outcome = PublishOutcome.CONFIRMED if isinstance(method, pika.spec.Basic.Ack) else PublishOutcome.NACKED
        if method.multiple:
            seqs = [seq for seq in self._pending if seq <= method.delivery_tag]
        else:
            seqs = [method.delivery_tag] if method.delivery_tag in self._pending else []
        for seq in seqs:
            callback = self._pending.pop(seq)
            result = outcome
            if seq in self._returned:
                self._returned.discard(seq)
                result = PublishOutcome.RETURNED
            self._completed.append((callback, result))
        self._schedule_wakeup()

    def _on_return_frame(self, _channel: Any, _method: Any, properties: Any, _body: bytes) -> None:
        token, _, seq_text = (properties.message_id or "").partition(".")
        if token == self._session_token and seq_text.isdigit():
            self._returned.add(int(seq_text))

    def _schedule_wakeup(self) -> None:
        # A zero-delay timer makes process_data_events return as soon as the current I/O batch is handled.
        if not self._wakeup_scheduled and self._connection is not None:
            self._wakeup_scheduled = True
            self._connection.call_later(0, self._clear_wakeup)

    def _clear_wakeup(self) -> None:
        self._wakeup_scheduled = False

    def _run_completed(self) -> None:
        while self._completed:
            batch, self._completed = self._completed, []
            for callback, outcome in batch:
                if callback is not None:
                    callback(outcome)

    # --- consuming ------------------------------------------------------------

    def consume(self, queue: str, on_message: Callable[[Delivery], None], *, prefetch: int) -> None:
        """Start consuming `queue` with at most `prefetch` unacked deliveries; replaces any current consumer."""
        _connection, channel = self._require_open()
        if self._consumer_tag is not None:
            self.cancel_consumer()

        def _deliver(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            on_message(Delivery(
                delivery_tag=method.delivery_tag, body=body, priority=properties.priority or 0,
                headers=dict(properties.headers or {}), redelivered=bool(method.redelivered), queue=queue))
        try:
            channel.basic_qos(prefetch_count=max(1, int(prefetch)))
            self._consumer_tag = channel.basic_consume(queue=queue, on_message_callback=_deliver)
            self._consumer_queue = queue
        except pex.ChannelClosedByBroker as error:
            self.close()
            if error.reply_code == 404:
                raise MQError(f"queue {queue!r} does not exist") from None
            raise MQError(f"RabbitMQ refused consuming {queue!r}: {error.reply_text}") from None
        except pex.AMQPError as error:
            raise self._translate(error, f"consuming {queue!r}") from None

    @property
    def consuming(self) -> str | None:
        return self._consumer_queue

    def cancel_consumer(self) -> None:
        """Stop new deliveries; deliveries already received stay ours until acked or nacked."""
        if self._consumer_tag is None or self._channel is None:
            self._consumer_tag = None
            self._consumer_queue = None
            return
        tag, self._consumer_tag, self._consumer_queue = self._consumer_tag, None, None
        try:
            self._channel.basic_cancel(tag)
        except pex.AMQPError as error:
            raise self._translate(error, "cancelling the consumer") from None

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        _connection, channel = self._require_open()
        try:
            channel.basic_ack(delivery_tag=delivery_tag, multiple=multiple)
        except pex.AMQPError as error:
            raise self._translate(error, "acknowledging a message") from None

    def nack(self, delivery_tag: int, *, requeue: bool = True, multiple: bool = False) -> None:
        _connection, channel = self._require_open()
        try:
            channel.basic_nack(delivery_tag=delivery_tag, requeue=requeue, multiple=multiple)
        except pex.AMQPError as error:
            raise self._translate(error, "rejecting a message") from None

    def get(self, queue: str) -> Delivery | None:
        """Fetch one message without a consumer (tools and tests); ack it with ack()."""
        _connection, channel = self._require_open()
        try:
            method, properties, body = channel.basic_get(queue=queue, auto_ack=False)
        except pex.ChannelClosedByBroker as error:
            self.close()
            raise MQError(f"RabbitMQ refused reading {queue!r}: {error.reply_code} {error.reply_text}") from None
        except pex.AMQPError as error:
            raise self._translate(error, f"reading {queue!r}") from None
        if method is None:
            return None
        return Delivery(delivery_tag=method.delivery_tag, body=body, priority=properties.priority or 0,
                        headers=dict(properties.headers or {}), redelivered=bool(method.redelivered),
                        queue=queue, message_id=properties.message_id, timestamp=properties.timestamp)

    def release_all(self) -> None:
        """Give every delivery not yet acked back to its queue (tools that looked at messages without taking them)."""
        self.nack(0, requeue=True, multiple=True)

    # --- the I/O loop -----------------------------------------------------------

    def pump(self, timeout: float) -> None:
        """Run network I/O and callbacks for up to `timeout` seconds; returns early when something happened."""
        connection, _channel = self._require_open()
        if self._completed:
            timeout = 0
        try:
            connection.process_data_events(time_limit=max(0.0, timeout))
        except pex.AMQPError as error:
            raise self._translate(error, "waiting for messages") from None
        self._run_completed()
        self._raise_if_channel_closed()

    def wake(self) -> None:
        """Thread-safe: make a pump() in progress return."""
        self.call_threadsafe(lambda: None)

    def call_threadsafe(self, fn: Callable[[], None]) -> None:
        """Thread-safe: run `fn` on the owner thread during its next pump()."""
        connection = self._connection
        if connection is None:
            raise MQConnectionError("not connected to RabbitMQ")
        try:
            connection.add_callback_threadsafe(fn)
        except pex.AMQPError as error:
            raise MQConnectionError(f"RabbitMQ connection is closed: {_describe(error)}") from None
