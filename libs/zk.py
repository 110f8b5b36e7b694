"""ZooKeeper client: connection (TLS, SASL DIGEST-MD5, chroot), small typed helpers and kazoo recipes.

Daemons use the `ZooKeeper` object and never import kazoo themselves.  kazoo runs
watch callbacks on its own thread: callbacks given to `watch_data` and
`watch_children` must only hand the event over (e.g. put it on a queue).
"""
from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from kazoo.client import KazooClient
from kazoo.exceptions import (  # re-exported: callers catch these from here
    AuthFailedError,
    BadVersionError,
    ConnectionLoss,
    KazooException,
    LockTimeout,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    SessionClosedRequireSaslError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState, KeeperState
from kazoo.recipe.cache import TreeCache, TreeEvent
from kazoo.retry import KazooRetry
from kazoo.security import make_acl

from pero_worker.libs import tls
from pero_worker.libs.addresses import zookeeper_hosts_string
from pero_worker.libs.config import ConnectionConfig

__all__ = [
    "ZooKeeper", "ZkConnectionError", "ZkLoginRefused", "NoNodeError", "NodeExistsError", "NoAuthError",
    "BadVersionError",
    "ConnectionLoss", "KazooException", "LockTimeout", "SessionExpiredError", "KazooState", "describe_zk_error",
    "CachedTree", "NodeReader",
]

log = logging.getLogger(__name__)


RECONNECT_DELAY_CAP = 0.8      # seconds between reconnection attempts at most, before jitter
RECONNECT_JITTER = 0.25        # ... so at most 0.8 * 1.25 = 1.0 s apart


class ZkConnectionError(Exception):
    """ZooKeeper could not be reached or refused us; the message is meant for the operator."""


class ZkLoginRefused(ZkConnectionError):
    """ZooKeeper refused our login (wrong password, or a login is required): ExitCode.ACCESS_REFUSED for tools."""


def describe_zk_error(error: BaseException) -> str:
    """One line that names the service: kazoo's exceptions are often bare ('ConnectionLoss', 'SessionExpiredError')."""
    if isinstance(error, NoAuthError):
        return "ZooKeeper refused access (NoAuth: give -u USER and a password, or check the node ACLs)"
    if isinstance(error, (ConnectionLoss, KazooTimeoutError)):
        return "ZooKeeper connection lost (ConnectionLoss: the request did not complete; retrying)"
    if isinstance(error, SessionExpiredError):
        return "ZooKeeper session expired (SessionExpiredError)"
    text = str(error).strip()
    return f"ZooKeeper error ({type(error).__name__}{': ' + text if text else ''})"


def _explain_start_failure(config: ConnectionConfig, error: BaseException) -> str:
    servers = zookeeper_hosts_string(list(config.zookeeper_servers))
    if isinstance(error, KazooTimeoutError):
        hint = "no server answered in time"
        if config.use_tls:
            hint += " (TLS: check the port is the secureClientPort and the CA certificate is right)"
        else:
            hint += " (if the server only accepts TLS, give its CA certificate with -e/--ca-cert)"
        return f"cannot connect to ZooKeeper at {servers}: {hint}"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake with ZooKeeper at {servers} failed: {error}"
    return f"cannot connect to ZooKeeper at {servers}: {error}"


def _translate_enforced_sasl_failure(connection, on_rejected: Callable[[], None]) -> None:
    """Make a rejected SASL login stop kazoo cleanly.

    A server with enforced SASL (sessionRequireClientSASLAuth / enforce.auth.enabled)
    answers a wrong password with SESSIONCLOSEDREQUIRESASLAUTH instead of AUTHFAILED;
    kazoo handles only the latter (state AUTH_FAILED, no reconnect) and lets the other
    kill its connection thread with a traceback.  Map one onto the other.
    """
    original = connection._authenticate_with_sasl

    def authenticate(host, timeout):
        try:
            return original(host, timeout)
        except SessionClosedRequireSaslError as error:
            on_rejected()
            raise AuthFailedError("SASL login rejected") from error
        except AuthFailedError:
            on_rejected()
            raise
    connection._authenticate_with_sasl = authenticate


def _tls_preflight(config: ConnectionConfig) -> None:
    """One TLS handshake per server before kazoo starts: a certificate problem (untrusted,
    expired, wrong host name, not a TLS port) is one clear error now instead of kazoo
    retrying it until the start timeout.  Servers that are merely unreachable are left
    to kazoo's retry policy."""
    problems = []
    for server in config.zookeeper_servers:
        try:
            tls.probe(server.host, server.port, str(config.ca_cert), service="ZooKeeper", timeout=5.0)
            return
        except tls.TLSError as error:
            problems.append(str(error))
        except OSError:
            return
    if problems:
        raise ZkConnectionError("; ".join(problems))


class ZooKeeper:
    """One ZooKeeper session.  Thread-safe (kazoo is), so one per process is enough."""

    def __init__(self, config: ConnectionConfig, *, timeout: float = 10.0, session_timeout: float = 10.0,
                 client_id: tuple[int, bytes] | None = None) -> None:
        """client_id: (session id, password) of an earlier session to resume (see `session_credentials`)."""
        self.config = config
        hosts = zookeeper_hosts_string(list(config.zookeeper_servers))
        if config.zookeeper_chroot:
            hosts += config.zookeeper_chroot
        kwargs: dict = {
            "hosts": hosts,
            "timeout": session_timeout,
            # Retry connection attempts forever with capped backoff: a daemon outlives outages.  The cap keeps
            # attempts at most ~1 s apart (kazoo multiplies each delay by a jitter of 1 ± max_jitter): a daemon
            # must be back within 2 s of ZooKeeper (issue 12); with a 5 s cap it could wait 5-7 s.
            "connection_retry": KazooRetry(max_tries=-1, delay=0.2, backoff=2, max_delay=RECONNECT_DELAY_CAP,
                                           max_jitter=RECONNECT_JITTER),
            "command_retry": KazooRetry(max_tries=3, delay=0.1, backoff=2, max_delay=2),
            "logger": logging.getLogger("kazoo.client"),
        }
        if client_id is not None:
            kwargs["client_id"] = client_id
        if config.use_tls:
            # check_hostname: kazoo's default is False, which would accept any certificate the CA signed.
            kwargs.update(use_ssl=True, verify_certs=True, check_hostname=True, ca=config.ca_cert)
        if config.username and config.password:
            kwargs["sasl_options"] = {
                "mechanism": "DIGEST-MD5",
                "username": config.username,
                "password": config.password,
            }
            # Nodes we create are readable and writable by our user only.  The session's identity
            # after a SASL login is 'sasl:<user>' (a 'digest' ACL would lock the creator out of its own nodes).
            kwargs["default_acl"] = [make_acl("sasl", config.username, all=True)]
        self.client = KazooClient(**kwargs)
        self._servers_text = hosts
        self._session_timeout = session_timeout
        self._connection_state = KazooState.LOST   # before start(): not connected
        self._started_once = False
        self._stopping = False
        self.client.add_listener(self._log_state_change)
        self._login_rejected = False
        _translate_enforced_sasl_failure(self.client._connection, self._note_login_rejected)
        self._start_timeout = timeout

    # --- lifecycle ------------------------------------------------------------

    def _log_state_change(self, state: str) -> None:
        """Outages and recoveries in the operator's words (kazoo's thread: log only, never block).

        kazoo's own messages ('Connection dropped: socket connection broken') do not say which service."""
        previous, self._connection_state = self._connection_state, state
        if state == KazooState.SUSPENDED:
            log.warning("ZooKeeper connection to %s lost; reconnecting (the session survives for %.0f s)",
                        self._servers_text, self._session_timeout)
        elif state == KazooState.LOST and previous != KazooState.LOST and self._started_once and not self._stopping:
            log.warning("ZooKeeper session at %s expired or closed", self._servers_text)
        elif state == KazooState.CONNECTED and previous == KazooState.SUSPENDED:
            log.info("ZooKeeper connection restored (%s, same session)", self._servers_text)
        elif state == KazooState.CONNECTED and self._started_once:
            log.info("ZooKeeper connection restored (%s, new session)", self._servers_text)

    def _note_login_rejected(self) -> None:
        self._login_rejected = True

    def start(self) -> ZooKeeper:
        if self.config.use_tls:
            try:
                _tls_preflight(self.config)
            except tls.TLSError as error:   # the CA file itself is unusable
                raise ZkConnectionError(str(error)) from None
        try:
            self.client.start(timeout=self._start_timeout)
        except Exception as error:  # kazoo raises a timeout, socket or SSL error
            # A rejected login can land before start() sees CONNECTED; kazoo then reports a time-out.
            auth_failed = self._login_rejected or self.client.client_state == KeeperState.AUTH_FAILED
            with contextlib.suppress(Exception):
                self.client.stop()
                self.client.close()
            if auth_failed:
                raise ZkLoginRefused(
                    f"ZooKeeper refused the login of user {self.config.username!r} (wrong password?)") from None
            raise ZkConnectionError(_explain_start_failure(self.config, error)) from None
        if self.config.username and self.config.password:
            # A wrong SASL password only shows on the first request: check now, with one clear line.
            try:
                self.client.exists("/")
            except AuthFailedError:
                self.stop()
                raise ZkLoginRefused(
                    f"ZooKeeper refused the login of user {self.config.username!r} (wrong password?)") from None
        else:
            # A server that requires SASL closes an anonymous session on its first request.
            try:
                self.client.exists("/")
            except SessionClosedRequireSaslError:
                self.stop()
                servers = zookeeper_hosts_string(list(self.config.zookeeper_servers))
                raise ZkLoginRefused(f"ZooKeeper at {servers} requires a login: give -u USER and a password "
                                        "(--password-file or PERO_PASSWORD)") from None
        self._started_once = True   # from now on, outages and recoveries are logged
        return self

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(Exception):
            self.client.stop()
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> ZooKeeper:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self.client.connected

    def add_state_listener(self, listener: Callable[[str], None]) -> None:
        """listener(state) with state one of KazooState.CONNECTED / SUSPENDED / LOST (kazoo's thread)."""
        self.client.add_listener(listener)

    @property
    def session_credentials(self) -> tuple[int, bytes] | None:
        """(session id, password): lets a restarted process resume or close its crashed predecessor's session."""
        session = self.client.client_id
        return (session[0], bytes(session[1])) if session else None

    @property
    def session_id(self) -> int | None:
        session = self.client.client_id
        return session[0] if session else None

    # --- plain node access ----------------------------------------------------

    def get(self, path: str) -> bytes | None:
        """The node's bytes, or None when it does not exist."""
        try:
            data, _stat = self.client.get(path)
        except NoNodeError:
            return None
        return data

    def get_many(self, paths: Sequence[str]) -> list[bytes | None]:
        """Several nodes' bytes (None where absent) in about one round trip: the requests are pipelined on
        the session instead of waiting for each answer (readers of every worker's nodes: watchdog, console)."""
        pending = [self.client.get_async(path) for path in paths]
        result: list[bytes | None] = []
        for request in pending:
            try:
                result.append(request.get()[0])
            except NoNodeError:
                result.append(None)
        return result

    def created_many(self, paths: Sequence[str]) -> list[float | None]:
        """Creation times (epoch s) of several nodes, None where absent; pipelined like get_many."""
        pending = [self.client.exists_async(path) for path in paths]
        result: list[float | None] = []
        for request in pending:
            stat = request.get()
            result.append(None if stat is None else stat.ctime / 1000.0)
        return result

    def get_text(self, path: str, default: str = "") -> str:
        data = self.get(path)
        return data.decode("utf-8", "replace") if data is not None else default

    def set(self, path: str, value: bytes, *, ephemeral: bool = False) -> None:
        """Write a node, creating it (and its parents) when missing."""
        try:
            self.client.set(path, value)
        except NoNodeError:
            try:
                self.client.create(path, value, makepath=True, ephemeral=ephemeral)
            except NodeExistsError:
                self.client.set(path, value)

    def set_text(self, path: str, value: str) -> None:
        self.set(path, value.encode("utf-8"))

    def create(self, path: str, value: bytes = b"", *, ephemeral: bool = False, sequence: bool = False,
               makepath: bool = True) -> str:
        return self.client.create(path, value, ephemeral=ephemeral, sequence=sequence, makepath=makepath)

    def ensure_path(self, path: str) -> None:
        self.client.ensure_path(path)

    def exists(self, path: str) -> bool:
        return self.client.exists(path) is not None

    def children(self, path: str) -> list[str]:
        try:
            return sorted(self.client.get_children(path))
        except NoNodeError:
            return []

    def delete(self, path: str, *, recursive: bool = False) -> bool:
        """Delete a node; False when it was not there."""
        try:
            self.client.delete(path, recursive=recursive)
        except NoNodeError:
            return False
        return True

    def ephemeral_owner(self, path: str) -> int | None:
        """Session id that owns an ephemeral node, or None (absent or persistent)."""
        stat = self.client.exists(path)
        if stat is None or not stat.ephemeralOwner:
            return None
        return stat.ephemeralOwner

    # --- watches and recipes --------------------------------------------------

    def watch_data(self, path: str, callback: Callable[[bytes | None], None]) -> None:
        """callback(data) now and on every change (None when deleted); runs on kazoo's thread."""
        def _on_change(data, _stat, _event=None):
            callback(data)
        self.client.DataWatch(path, _on_change)

    @contextlib.contextmanager
    def lock(self, path: str, identifier: str = "", timeout: float | None = 10.0) -> Iterator[None]:
        """Distributed lock (kazoo Lock recipe); raises LockTimeout after `timeout` seconds."""
        lock = self.client.Lock(path, identifier)
        if not lock.acquire(timeout=timeout):
            raise LockTimeout(f"could not lock {path} within {timeout} s")
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                lock.release()

    def election(self, path: str, identifier: str):
        """A kazoo Election; call .run(func) to block until elected, then run func."""
        return self.client.Election(path, identifier)


class NodeReader(Protocol):
    """What the readers of the whole tree use (watchdog/state.py): a live `ZooKeeper` or a `CachedTree`."""

    def children(self, path: str) -> list[str]: ...
    def get(self, path: str) -> bytes | None: ...
    def get_text(self, path: str, default: str = "") -> str: ...
    def get_many(self, paths: Sequence[str]) -> list[bytes | None]: ...
    def created_many(self, paths: Sequence[str]) -> list[float | None]: ...
    def exists(self, path: str) -> bool: ...


class CachedTree:
    """A read-only copy of a subtree kept current by watches (kazoo's TreeCache): reading it costs no round trip.

    For a reader that looks at every node once a second (the web console): with 100 workers that is ~750
    requests a second to ZooKeeper otherwise.  While the session is not connected every read raises
    ConnectionLoss, so the reader knows its figures would be stale instead of silently serving old ones.
    """

    def __init__(self, zk: ZooKeeper, root: str) -> None:
        self._zk = zk
        self._root = root
        self._cache = TreeCache(zk.client, root)
        self._ready = threading.Event()

    def start(self, timeout: float = 30.0) -> CachedTree:
        """Load the subtree (ZkConnectionError if that takes longer than `timeout`)."""
        self._cache.listen(self._on_event)
        self._cache.start()
        if not self._ready.wait(timeout):
            self.close()
            raise ZkConnectionError(f"could not load ZooKeeper's {self._root} within {timeout:.0f} s")
        return self

    def _on_event(self, event: Any) -> None:
        if event.event_type == TreeEvent.INITIALIZED:
            self._ready.set()

    def close(self) -> None:
        self._cache.close()

    def _node(self, path: str) -> Any:
        if not self._zk.connected:
            raise ConnectionLoss("not connected to ZooKeeper")
        return self._cache.get_data(path)

    def children(self, path: str) -> list[str]:
        if not self._zk.connected:
            raise ConnectionLoss("not connected to ZooKeeper")
        return sorted(self._cache.get_children(path) or ())

    def get(self, path: str) -> bytes | None:
        node = self._node(path)
        return None if node is None else node.data

    def get_text(self, path: str, default: str = "") -> str:
        data = self.get(path)
        return data.decode("utf-8", "replace") if data is not None else default

    def get_many(self, paths: Sequence[str]) -> list[bytes | None]:
        return [self.get(path) for path in paths]

    def created_many(self, paths: Sequence[str]) -> list[float | None]:
        nodes = [self._node(path) for path in paths]
        return [None if node is None or node.stat is None else node.stat.ctime / 1000.0 for node in nodes]

    def exists(self, path: str) -> bool:
        return self._node(path) is not None
