"""host[:port] parsing for server lists (ZooKeeper, AMQP, SFTP, management API).

Server lists come from the command line, INI files and ZooKeeper child names,
so they are untrusted text: every entry is validated and a bad one is a
ValueError with the offending entry in the message.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DEFAULT_PORTS = {
    "zookeeper": 2181,
    "amqp": 5672,
    "amqps": 5671,
    "management": 15672,
    "management_tls": 15671,
    "sftp": 22,
}

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")


@dataclass(frozen=True, order=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return format_address(self.host, self.port)

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host


def format_address(host: str, port: int) -> str:
    """Inverse of parse_address: IPv6 hosts get brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_port(text: str, entry: str) -> int:
    if not text.isdigit():
        raise ValueError(f"invalid port in {entry!r}")
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {entry!r}")
    return port


def _check_host(host: str, entry: str) -> str:
    if not host:
        raise ValueError(f"missing host in {entry!r}")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise ValueError(f"invalid host name in {entry!r}")
    return host


def parse_address(entry: str, default_port: int) -> Address:
    """Parse 'host', 'host:port', 'ipv4:port', '[ipv6]:port', '[ipv6]' or a bare IPv6 address."""
    text = entry.strip()
    if not text:
        raise ValueError("empty server address")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {entry!r}")
        host = text[1:end]
        rest = text[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address in {entry!r}") from None
        if not rest:
            return Address(str(ipaddress.IPv6Address(host)), default_port)
        if not rest.startswith(":"):
            raise ValueError(f"unexpected text after ']' in {entry!r}")
        return Address(str(ipaddress.IPv6Address(host)), _check_port(rest[1:], entry))
    if text.count(":") > 1:
        # A bare IPv6 address without brackets: no port can be given.
        try:
            return Address(str(ipaddress.IPv6Address(text)), default_port)
        except ValueError:
            raise ValueError(f"invalid address {entry!r} (put IPv6 addresses in brackets)") from None
    if ":" in text:
        host, port_text = text.split(":", 1)
        return Address(_check_host(host, entry), _check_port(port_text, entry))
    return Address(_check_host(text, entry), default_port)


def parse_address_list(value: str | list[str] | tuple[str, ...], default_port: int) -> list[Address]:
    """Parse a comma/whitespace separated list (or a list of such strings); order kept, duplicates dropped."""
    if isinstance(value, str):
        items = [value]
    else:
        items = list(value)
    result: list[Address] = []
    for item in items:
        for part in re.split(r"[,\s]+", item.strip()):
            if not part:
                continue
            address = parse_address(part, default_port)
            if address not in result:
                result.append(address)
    return result


def zookeeper_hosts_string(addresses: list[Address]) -> str:
    """The connection string kazoo expects."""
    return ",".join(str(a) for a in addresses)
