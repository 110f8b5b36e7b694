"""Typed configuration shared by every process.

Each process builds exactly one configuration object at start-up from, in
increasing order of precedence: its INI file, environment variables (secrets
only) and the command line.  Nothing reads the INI file again later.
"""
from __future__ import annotations

import argparse
import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path

from pero_worker.libs.addresses import DEFAULT_PORTS, Address, parse_address_list

PASSWORD_ENV = "PERO_PASSWORD"
PASSWORD_FILE_ENV = "PERO_PASSWORD_FILE"
ZOOKEEPER_ENV = "PERO_ZK"      # ZooKeeper servers (and /chroot), as for -z
USER_ENV = "PERO_USER"         # user for ZooKeeper, RabbitMQ and SFTP, as for -u


class ConfigError(Exception):
    """A configuration that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class ConnectionConfig:
    """How to reach ZooKeeper and whom to authenticate as.

    The same credentials and CA serve RabbitMQ and SFTP too: their addresses
    are read from ZooKeeper, not from the file.
    """
    zookeeper_servers: tuple[Address, ...]
    # kazoo-style chroot ('host:port/chroot'): isolates test runs and tenants; None in production.
    zookeeper_chroot: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_cert: str | None = None
    # OpenSSH known_hosts file with the SFTP servers' keys: unknown or changed keys are refused.
    known_hosts: str | None = None

    @property
    def use_tls(self) -> bool:
        return self.ca_cert is not None


def add_connection_arguments(parser: argparse.ArgumentParser, *, config_required: bool = False) -> None:
    """The options every tool shares (docs/protocol.md §6, §7).

    Precedence everywhere: command line, then the environment (PERO_ZK, PERO_USER, PERO_PASSWORD,
    PERO_PASSWORD_FILE: what `scripts/local_services.py env` exports), then the INI file."""
    group = parser.add_argument_group("connection")
    group.add_argument("-c", "--config", required=config_required,
                       help="INI file; command-line options override it")
    group.add_argument("-z", "--zookeeper", action="append", default=None, metavar="HOST[:PORT]",
                       help=f"ZooKeeper server(s), comma separated or repeated (IPv6 as [addr]:port); "
                            f"default ${ZOOKEEPER_ENV}")
    group.add_argument("-l", "--zookeeper-list", metavar="FILE",
                       help="file with ZooKeeper servers, one per line")
    group.add_argument("-u", "--username", help=f"user for ZooKeeper, RabbitMQ and SFTP (default ${USER_ENV})")
    group.add_argument("-p", "--password",
                       help=f"password (prefer --password-file or the {PASSWORD_ENV} environment variable)")
    group.add_argument("--password-file", metavar="FILE",
                       help=f"read the password from this file (default ${PASSWORD_FILE_ENV})")
    group.add_argument("-e", "--ca-cert", metavar="FILE",
                       help="CA certificate: enables TLS and verifies every server against it")
    group.add_argument("--known-hosts", metavar="FILE",
                       help="known_hosts file with the SFTP servers' host keys (unknown or changed keys are refused)")


def read_ini_section(path: str | None, sections: tuple[str, ...]) -> dict[str, str]:
    """Values of the first of `sections` present in the file (empty without a file)."""
    if not path:
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, configparser.Error, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    for name in sections:
        if parser.has_section(name):
            return dict(parser.items(name))
    raise ConfigError(f"config file {path} has no [{'] or ['.join(sections)}] section")


def _read_secret_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"cannot read password file {path}: {error.strerror}") from None


def resolve_password(cli_password: str | None, cli_password_file: str | None,
                     ini: dict[str, str]) -> str | None:
    """Command line, then the environment, then the INI file."""
    if cli_password:
        return cli_password
    if cli_password_file:
        return _read_secret_file(cli_password_file)
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if os.environ.get(PASSWORD_FILE_ENV):
        return _read_secret_file(os.environ[PASSWORD_FILE_ENV])
    if ini.get("password"):
        return ini["password"]
    if ini.get("password_file"):
        return _read_secret_file(ini["password_file"])
    return None


def split_chroot(entries: list[str]) -> tuple[list[str], str | None]:
    """Take a kazoo-style '/chroot' suffix off a server list ('h1:2181,h2:2181/tenant')."""
    chroot = None
    cleaned = []
    for given in entries:
        entry = given
        if "/" in entry:
            entry, _, path = entry.partition("/")
            path = "/" + path.strip().strip("/")
            if path != "/":
                if chroot is not None and chroot != path:
                    raise ConfigError(f"conflicting ZooKeeper chroots {chroot!r} and {path!r}")
                chroot = path
        cleaned.append(entry)
    return cleaned, chroot


def _zookeeper_servers(args: argparse.Namespace, ini: dict[str, str]) -> tuple[tuple[Address, ...], str | None]:
    entries: list[str] = []
    if getattr(args, "zookeeper", None):
        entries.extend(args.zookeeper)
    if getattr(args, "zookeeper_list", None):
        try:
            lines = Path(args.zookeeper_list).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise ConfigError(f"cannot read ZooKeeper list {args.zookeeper_list}: {error.strerror}") from None
        entries.extend(line.split("#", 1)[0] for line in lines)
    if not entries and os.environ.get(ZOOKEEPER_ENV, "").strip():
        entries.append(os.environ[ZOOKEEPER_ENV])
    if not entries and ini.get("zookeeper_servers"):
        entries.append(ini["zookeeper_servers"])
    if not entries:
        raise ConfigError(f"no ZooKeeper servers: give -z HOST[:PORT], -l FILE, the {ZOOKEEPER_ENV} environment "
                          "variable or zookeeper_servers in the config file")
    entries, chroot = split_chroot(entries)
    try:
        servers = parse_address_list(entries, DEFAULT_PORTS["zookeeper"])
    except ValueError as error:
        raise ConfigError(f"bad ZooKeeper server list: {error}") from None
    if not servers:
        raise ConfigError("the ZooKeeper server list is empty")
    return tuple(servers), chroot


def connection_config(args: argparse.Namespace, ini: dict[str, str]) -> ConnectionConfig:
    """Merge the shared connection options with one INI section."""
    ca_cert = getattr(args, "ca_cert", None) or ini.get("ca_cert") or None
    if ca_cert and not os.path.isfile(ca_cert):
        raise ConfigError(f"CA certificate not found: {ca_cert}")
    servers, chroot = _zookeeper_servers(args, ini)
    # Command line, then PERO_SFTP_KNOWN_HOSTS (libs/sftp.py KNOWN_HOSTS_ENV), then the INI file: a container
    # reads an INI written on its host, whose path is not the mounted one (docker/entrypoint.sh sets the variable).
    known_hosts = (getattr(args, "known_hosts", None) or os.environ.get("PERO_SFTP_KNOWN_HOSTS")
                   or ini.get("known_hosts") or None)
    if known_hosts and not os.path.isfile(known_hosts):
        raise ConfigError(f"known_hosts file not found: {known_hosts}")
    return ConnectionConfig(
        zookeeper_servers=servers,
        zookeeper_chroot=chroot,
        username=getattr(args, "username", None) or os.environ.get(USER_ENV, "").strip() or ini.get("username") or None,
        password=resolve_password(getattr(args, "password", None), getattr(args, "password_file", None), ini),
        ca_cert=ca_cert,
        known_hosts=known_hosts,
    )


