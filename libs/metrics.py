"""Serving Prometheus metrics (prometheus_client) from the daemons: the address, TLS, and the errors said in one line.

Why one home: the worker, the watchdog and the log daemon take the same options
(`--metrics-address`, `--metrics-cert`, `--metrics-key`; PERO_METRICS_* in the
environment; metrics_* keys in their INI section) and obey the same rules:

- loopback by default (worker 127.0.0.1:9471, watchdog :9472, log daemon :9473);
  `off` switches the server off;
- a port range `HOST:FIRST-LAST` takes the first free port of the range (several
  workers on one host share one worker.ini line), port 0 any free port (logged);
- an address off loopback in a TLS deployment (-e/--ca-cert given) must be served
  over TLS with mutual authentication: the daemon presents --metrics-cert/--metrics-key
  and accepts only scrapers whose client certificate the deployment's CA signed;
- a port in use or a certificate that does not load is one line and exit code USAGE.

The metric objects themselves live next to the code they describe (worker/metrics.py,
watchdog/metrics.py, log_daemon/metrics.py), each on its own registry.
"""
from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server

from pero_worker.libs.addresses import format_address, parse_address
from pero_worker.libs.config import ConfigError, ConnectionConfig

log = logging.getLogger(__name__)

ADDRESS_ENV = "PERO_METRICS_ADDRESS"
CERT_ENV = "PERO_METRICS_CERT"
KEY_ENV = "PERO_METRICS_KEY"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORTS = {"worker": 9471, "watchdog": 9472, "log_daemon": 9473}
OFF_WORDS = frozenset({"off", "none", "no", "false", "disabled"})

# The `*_created` series (a timestamp per counter and histogram child) would add a quarter to every scrape and
# say nothing the process start time does not: leave them out.
disable_created_metrics()


class MetricsError(Exception):
    """The metrics server cannot start; str() is one line for the operator."""


@dataclass(frozen=True)
class MetricsAddress:
    host: str
    first_port: int
    last_port: int

    def __str__(self) -> str:
        port = str(self.first_port) if self.first_port == self.last_port else f"{self.first_port}-{self.last_port}"
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"


@dataclass(frozen=True)
class MetricsConfig:
    """Where and how a daemon serves /metrics; a daemon with metrics off has None instead."""
    address: MetricsAddress
    certfile: str | None = None      # TLS: the daemon's certificate (chain) and key
    keyfile: str | None = None
    client_ca: str | None = None     # mutual TLS: scrapers must present a certificate this CA signed

    @property
    def scheme(self) -> str:
        return "https" if self.certfile else "http"


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"invalid port in metrics address {entry!r}")
    return int(text)


def parse_metrics_address(entry: str, default_port: int) -> MetricsAddress | None:
    """'HOST:PORT', 'HOST:FIRST-LAST', 'HOST', ':PORT', 'PORT', '[v6]:PORT' or 'off' (None); pure."""
    text = entry.strip()
    if not text:
        return MetricsAddress(DEFAULT_HOST, default_port, default_port)
    if text.lower() in OFF_WORDS:
        return None
    host_part, port_part = text, ""
    if text.startswith("["):
        end = text.find("]")
        host_part, rest = text[:end + 1], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected text after ']' in metrics address {entry!r}")
        port_part = rest[1:]
    elif text.count(":") == 1:
        host_part, port_part = text.split(":", 1)
    elif text.replace("-", "").isdigit():
        host_part, port_part = "", text
    host = parse_address(host_part, 1).host if host_part else DEFAULT_HOST
    if not port_part:
        return MetricsAddress(host, default_port, default_port)
    first_text, dash, last_text = port_part.partition("-")
    first = _port(first_text, entry)
    last = _port(last_text, entry) if dash else first
    if last < first or (first == 0 and last != 0):
        raise ValueError(f"invalid port range in metrics address {entry!r}")
    return MetricsAddress(host, first, last)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_metrics_arguments(parser: argparse.ArgumentParser, daemon: str) -> None:
    port = DEFAULT_PORTS[daemon]
    group = parser.add_argument_group("metrics (Prometheus)")
    group.add_argument("--metrics-address", metavar="HOST:PORT",
                       help=f"serve /metrics here: HOST:PORT, HOST:FIRST-LAST (the first free port of the range; "
                            f"several daemons on one host), port 0 (any free port, logged) or 'off' (default "
                            f"${ADDRESS_ENV}, else {DEFAULT_HOST}:{port})")
    group.add_argument("--metrics-cert", metavar="FILE",
                       help=f"serve /metrics over HTTPS with this certificate (PEM, chain); scrapers must then "
                            f"present a client certificate signed by -e/--ca-cert (default ${CERT_ENV})")
    group.add_argument("--metrics-key", metavar="FILE", help=f"the key of --metrics-cert (default ${KEY_ENV})")


def _pick(cli: str | None, env: str, ini: dict[str, str], key: str) -> str:
    return cli or os.environ.get(env) or ini.get(key) or ""


def metrics_config(args: argparse.Namespace, ini: dict[str, str], connection: ConnectionConfig,
                   daemon: str) -> MetricsConfig | None:
    """Command line, then the environment, then the INI file; ConfigError says what to fix."""
    raw = args.metrics_address if args.metrics_address is not None else \
        os.environ.get(ADDRESS_ENV, ini.get("metrics_address", ""))
    try:
        address = parse_metrics_address(raw, DEFAULT_PORTS[daemon])
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if address is None:
        return None
    certfile = _pick(args.metrics_cert, CERT_ENV, ini, "metrics_cert") or None
    keyfile = _pick(args.metrics_key, KEY_ENV, ini, "metrics_key") or None
    if bool(certfile) != bool(keyfile):
        raise ConfigError("metrics TLS needs both --metrics-cert and --metrics-key")
    for path in (certfile, keyfile):
        if path and not os.path.isfile(path):
            raise ConfigError(f"metrics TLS file not found: {path}")
    if certfile and not connection.ca_cert:
        raise ConfigError("metrics over TLS authenticate scrapers by client certificate: give -e/--ca-cert (the "
                          "CA that signs the scrapers' certificates)")
    if connection.use_tls and not certfile and not is_loopback(address.host):
        raise ConfigError(f"metrics address {address} is off loopback in a TLS deployment: give --metrics-cert "
                          "and --metrics-key (scrapers then need a client certificate), or keep it on 127.0.0.1")
    return MetricsConfig(address, certfile, keyfile, connection.ca_cert if certfile else None)


class MetricsServer:
    """A running /metrics server (prometheus_client's WSGI server on its own daemon thread).

    The daemons leave it running until the process exits (closing it costs up to half a second of
    shutdown for nothing); close() is for processes that outlive it (tests, benches)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, url: str) -> None:
        self._server = server
        self._thread = thread
        self.url = url
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _bind(config: MetricsConfig, port: int, registry: CollectorRegistry) -> tuple[WSGIServer, threading.Thread]:
    if not config.certfile:
        return start_http_server(port, config.address.host, registry)
    return start_http_server(port, config.address.host, registry, certfile=config.certfile, keyfile=config.keyfile,
                             client_cafile=config.client_ca, client_auth_required=True,
                             tls_min_version=ssl.TLSVersion.TLSv1_2)


def start_metrics_server(config: MetricsConfig | None, registry: CollectorRegistry) -> MetricsServer | None:
    """Serve `registry` as configured (None: metrics off); MetricsError with one line when it cannot."""
    if config is None:
        return None
    address = config.address
    for port in range(address.first_port, address.last_port + 1):
        try:
            server, thread = _bind(config, port, registry)
        except ssl.SSLError as error:
            raise MetricsError(f"metrics TLS: cannot use {config.certfile} / {config.keyfile}: "
                               f"{getattr(error, 'reason', None) or error}") from None
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                continue
            raise MetricsError(f"metrics address {address}: {error.strerror or error}") from None
        url = f"{config.scheme}://{format_address(address.host, server.server_port)}/metrics"
        log.info("metrics on %s%s", url, " (mutual TLS)" if config.certfile else "")
        return MetricsServer(server, thread, url)
    which = "every port of the range is" if address.first_port != address.last_port else "the port is"
    raise MetricsError(f"metrics address {address}: {which} in use (another daemon on this host?); give "
                       f"this one its own with --metrics-address or ${ADDRESS_ENV} (a range FIRST-LAST takes the "
                       "first free port), or 'off'")


__all__ = ["ADDRESS_ENV", "DEFAULT_PORTS", "MetricsAddress", "MetricsConfig", "MetricsError", "MetricsServer",
           "add_metrics_arguments", "is_loopback", "metrics_config", "parse_metrics_address",
           "start_metrics_server"]
