"""Manage the server lists every part of the suite reads from ZooKeeper.

Workers, the watchdog and the tools find RabbitMQ, its management API and the
SFTP server through the children of /pero/worker/config/{mq_servers,
mq_monitoring_servers,ftp_servers}; this tool adds, removes and lists them.
Addresses are validated and stored in one canonical form (host:port, IPv6 in
brackets) so that the same server is never listed twice under two spellings.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import DEFAULT_PORTS, parse_address_list
from pero_worker.libs.config import add_connection_arguments
from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.zk import NodeExistsError
from pero_worker.tools.cli import (
    EXIT_CODES_HELP,
    CliError,
    add_debug_argument,
    build_connection_config,
    connect_zookeeper,
    run_main,
)


@dataclass(frozen=True)
class ServerKind:
    option: str          # 'mq' -> --add-mq-servers ...
    title: str
    path: str
    port: int            # default port without TLS
    tls_port: int        # default port with TLS (-e given)


KINDS = (
    ServerKind("mq", "RabbitMQ (AMQP) servers", zk_paths.MQ_SERVERS, DEFAULT_PORTS["amqp"], DEFAULT_PORTS["amqps"]),
    ServerKind("ftp", "SFTP servers", zk_paths.FTP_SERVERS, DEFAULT_PORTS["sftp"], DEFAULT_PORTS["sftp"]),
    ServerKind("monitoring", "RabbitMQ management (monitoring) servers", zk_paths.MQ_MONITORING_SERVERS,
               DEFAULT_PORTS["management"], DEFAULT_PORTS["management_tls"]),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="server_config_manager.py",
        description="Add, remove and list the RabbitMQ, SFTP and RabbitMQ-management servers stored in "
                    "ZooKeeper. Removals run first, then additions, then listings. Without any action all "
                    "three lists are printed.",
        epilog="Addresses are HOST, HOST:PORT or [IPv6]:PORT, several per option or comma separated. "
               "Default ports: AMQP 5672 (5671 with -e), SFTP 22, management 15672 (15671 with -e). "
               + EXIT_CODES_HELP,
    )
    add_connection_arguments(parser)
    for kind in KINDS:
        group = parser.add_argument_group(kind.title)
        group.add_argument(f"--add-{kind.option}-servers", nargs="+", default=[], metavar="HOST[:PORT]",
                           help=f"add {kind.title}")
        group.add_argument(f"--rm-{kind.option}-servers", nargs="+", default=[], metavar="HOST[:PORT]",
                           help=f"remove {kind.title} ('all' removes every one)")
        group.add_argument(f"--list-{kind.option}-servers", action="store_true", help=f"list {kind.title}")
    add_debug_argument(parser)
    return parser


def canonical_addresses(entries: Sequence[str], default_port: int) -> list[str]:
    """Validated, canonical 'host:port' strings (ValueError names the bad entry)."""
    return [str(address) for address in parse_address_list(list(entries), default_port)]


def plan_removal(requested: Sequence[str], present: Sequence[str], default_port: int) -> tuple[list[str], list[str]]:
    """(children to delete, requested entries that are not configured).

    'all' selects every child.  An entry matching a child literally is taken as is,
    so a malformed child someone wrote by hand can still be removed.
    """
    if any(entry.strip().lower() == "all" for entry in requested):
        return sorted(present), []
    delete: list[str] = []
    missing: list[str] = []
    for entry in requested:
        for part in [p for p in entry.replace(",", " ").split() if p]:
            if part in present:
                name = part
            else:
                name = canonical_addresses([part], default_port)[0]
            if name in present:
                if name not in delete:
                    delete.append(name)
            else:
                missing.append(part)
    return delete, missing


def _run(args: argparse.Namespace) -> int:
    use_tls = bool(args.ca_cert)
    # Validate every address before touching ZooKeeper: all or nothing.
    additions: dict[str, list[str]] = {}
    for kind in KINDS:
        raw = getattr(args, f"add_{kind.option}_servers")
        try:
            additions[kind.option] = canonical_addresses(raw, kind.tls_port if use_tls else kind.port)
        except ValueError as error:
            raise CliError(f"--add-{kind.option}-servers: {error}", ExitCode.USAGE) from None
    removals = {kind.option: getattr(args, f"rm_{kind.option}_servers") for kind in KINDS}
    listings = {kind.option: getattr(args, f"list_{kind.option}_servers") for kind in KINDS}
    if not any(additions.values()) and not any(removals.values()) and not any(listings.values()):
        listings = {kind.option: True for kind in KINDS}

    conn = build_connection_config(args)
    zk = connect_zookeeper(conn)
    try:
        for kind in KINDS:
            if not removals[kind.option]:
                continue
            present = zk.children(kind.path)
            try:
                delete, missing = plan_removal(removals[kind.option], present,
                                               kind.tls_port if use_tls else kind.port)
            except ValueError as error:
                raise CliError(f"--rm-{kind.option}-servers: {error}", ExitCode.USAGE) from None
            for name in delete:
                zk.delete(f"{kind.path}/{name}")
                print(f"removed {kind.option} server {name}")
            for name in missing:
                print(f"{kind.option} server {name} was not configured", file=sys.stderr)
        for kind in KINDS:
            for name in additions[kind.option]:
                path = f"{kind.path}/{name}"
                try:
                    zk.create(path, b"", makepath=True)
                except NodeExistsError:
                    print(f"{kind.option} server {name} already configured")
                else:
                    print(f"added {kind.option} server {name}")
        for kind in KINDS:
            if listings[kind.option]:
                servers = zk.children(kind.path)
                print(f"{kind.title}:" + ("" if servers else " (none)"))
                for name in servers:
                    print(f"  {name}")
    finally:
        zk.stop()
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_run, build_parser(), argv)
