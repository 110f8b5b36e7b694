"""RabbitMQ management HTTP API client (queue statistics for the watchdog and operator tools).

Servers come from ZooKeeper (`/pero/worker/config/mq_monitoring_servers`); the client
tries them in order, starting with the last one that answered, so a broker node going
down costs one failed request, not an outage.  With a CA certificate it speaks HTTPS and
verifies the server against that CA.  Without a username it uses RabbitMQ's default
guest account, as the original tools did.

The management statistics lag by RabbitMQ's stats interval (5 s by default): decisions
that must react within a second also ask the AMQP side (`MQSession.queue_length`).
"""
from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import DEFAULT_PORTS, Address, parse_address

if TYPE_CHECKING:
    from pero_worker.libs.config import ConnectionConfig
    from pero_worker.libs.zk import NodeReader

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0


class ManagementError(Exception):
    """No management server answered usefully; the message says what each one said."""


class ManagementAuthError(ManagementError):
    """The management API refused our credentials (401/403): retrying will not help."""


@dataclass(frozen=True)
class QueueStats:
    name: str
    messages_ready: int = 0
    messages_unacknowledged: int = 0
    consumers: int = 0
    publish_rate: float = 0.0      # messages/s published into the queue (smoothed by RabbitMQ)
    deliver_rate: float = 0.0      # messages/s delivered to consumers (deliver + get)
    ack_rate: float = 0.0          # messages/s acknowledged


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _rate(details: Any, key: str) -> float:
    if not isinstance(details, dict):
        return 0.0
    entry = details.get(f"{key}_details")
    if isinstance(entry, dict):
        try:
            return float(entry.get("rate", 0.0))
        except (TypeError, ValueError):
            return 0.0
    return 0.0


def parse_queue(entry: dict[str, Any]) -> QueueStats:
    """One element of GET /api/queues/<vhost> (fields missing until the broker has stats are 0)."""
    stats = entry.get("message_stats") or {}
    deliver = _rate(stats, "deliver_get") or _rate(stats, "deliver")
    return QueueStats(
        name=str(entry.get("name", "")),
        messages_ready=_int(entry.get("messages_ready")),
        messages_unacknowledged=_int(entry.get("messages_unacknowledged")),
        consumers=_int(entry.get("consumers")),
        publish_rate=_rate(stats, "publish"),
        deliver_rate=deliver,
        ack_rate=_rate(stats, "ack"),
    )


class ManagementClient:
    def __init__(self, servers: list[Address] | tuple[Address, ...], *, username: str | None = None,
                 password: str | None = None, ca_cert: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if not servers:
            raise ManagementError(
                f"no RabbitMQ management servers configured ({zk_paths.MQ_MONITORING_SERVERS}); add them with "
                "scripts/server_config_manager.py --add-monitoring-servers HOST:PORT")
        self.servers = list(servers)
        self.auth = (username, password or "") if username else ("guest", "guest")
        self.ca_cert = ca_cert
        self.timeout = timeout
        self._preferred = 0
        self._http = requests.Session()

    @classmethod
    def from_zookeeper(cls, zk: NodeReader, conn: ConnectionConfig, **kwargs: Any) -> ManagementClient:
        default_port = DEFAULT_PORTS["management_tls" if conn.use_tls else "management"]
        servers = []
        for entry in zk.children(zk_paths.MQ_MONITORING_SERVERS):
            try:
                servers.append(parse_address(entry, default_port))
            except ValueError as error:
                log.warning("ignoring bad management server entry in ZooKeeper: %s", error)
        return cls(servers, username=conn.username, password=conn.password, ca_cert=conn.ca_cert, **kwargs)

    def close(self) -> None:
        self._http.close()

    def _url(self, server: Address, path: str) -> str:
        scheme = "https" if self.ca_cert else "http"
        host = f"[{server.host}]" if server.is_ipv6 else server.host
        return f"{scheme}://{host}:{server.port}{path}"

    def request(self, method: str, path: str) -> Any:
        """JSON of `path` from the first server that answers (a 404 is returned as None)."""
        failures = []
        order = self.servers[self._preferred:] + self.servers[:self._preferred]
        for server in order:
            url = self._url(server, path)
            try:
                response = self._http.request(method, url, auth=self.auth, timeout=self.timeout,
                                              verify=self.ca_cert if self.ca_cert else True)
            except requests.exceptions.SSLError as error:
                failures.append(f"{server}: TLS verification failed ({error.__class__.__name__})")
                continue
            except requests.exceptions.RequestException as error:
                failures.append(f"{server}: {error.__class__.__name__}")
                continue
            if response.status_code in (401, 403):
                raise ManagementAuthError(
                    f"management API at {server} refused user {self.auth[0]!r} ({response.status_code}); "
                    "the user needs the 'monitoring' or 'management' tag")
            if response.status_code == 404:
                self._preferred = self.servers.index(server)
                return None
            if not response.ok:
                failures.append(f"{server}: HTTP {response.status_code}")
                continue
            self._preferred = self.servers.index(server)
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                failures.append(f"{server}: answer is not JSON")
                continue
        raise ManagementError("no RabbitMQ management server answered: " + "; ".join(failures))

    def queues(self, vhost: str = "pero") -> list[QueueStats]:
        """Statistics of every queue in `vhost` (an unknown vhost gives an empty list)."""
        data = self.request("GET", f"/api/queues/{urllib.parse.quote(vhost, safe='')}")
        if data is None:
            return []
        if not isinstance(data, list):
            raise ManagementError("management API answered /api/queues with something that is not a list")
        return [parse_queue(entry) for entry in data if isinstance(entry, dict)]

    def queue(self, name: str, vhost: str = "pero") -> QueueStats | None:
        data = self.request("GET", f"/api/queues/{urllib.parse.quote(vhost, safe='')}/"
                                   f"{urllib.parse.quote(name, safe='')}")
        return parse_queue(data) if isinstance(data, dict) else None

    def broker_version(self) -> str | None:
        """RabbitMQ's version from /api/overview (any user with the management or monitoring tag)."""
        data = self.request("GET", "/api/overview")
        version = data.get("rabbitmq_version") if isinstance(data, dict) else None
        return version if isinstance(version, str) and version else None

    def connections(self) -> list[dict[str, Any]]:
        data = self.request("GET", "/api/connections")
        return data if isinstance(data, list) else []

    def close_connection(self, name: str) -> None:
        """Force-close a client connection (operators, and tests of reconnection)."""
        self.request("DELETE", f"/api/connections/{urllib.parse.quote(name, safe='')}")
