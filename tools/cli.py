"""What every operator CLI shares: connection options, connecting, one-line errors, exit codes.

Operators run these tools by hand and from shell scripts, so a failure is one
readable line on stderr (no traceback unless --debug) and the exit code says
what kind of failure it was.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pero_worker.libs.config import ConfigError, ConnectionConfig, connection_config, read_ini_section
from pero_worker.libs.exit_codes import ExitCode, exit_codes_help
from pero_worker.libs.mq import MQAuthenticationError, MQConnectionError, MQError, MQSession, MQSettings
from pero_worker.libs.zk import KazooException, NoAuthError, ZkConnectionError, ZkLoginRefused, ZooKeeper
from pero_worker.libs.zk_paths import zookeeper_refused_character

# The codes a tool can exit with (libs/exit_codes.py has the one table of daemons and tools).
EXIT_CODES_HELP = exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.UNREACHABLE,
                                  ExitCode.ACCESS_REFUSED, ExitCode.INTERRUPTED)

# Sections of the INI file (-c) that may carry the connection settings, first match wins.
INI_SECTIONS = ("TOOLS", "WORKER", "WATCHDOG", "LOGD")

log = logging.getLogger("pero_worker.tools")

MAX_STAGE_NAME = 200   # AMQP queue names are at most 255 bytes


class CliError(Exception):
    """A failure to report as one line and an exit code."""

    def __init__(self, message: str, exit_code: int = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def validate_stage_name(name: str) -> str:
    """A stage name must work as a queue name and as one ZooKeeper node name."""
    if not name or name.strip() != name:
        raise ValueError(f"invalid stage name {name!r}: empty or surrounded by spaces")
    if len(name.encode("utf-8")) > MAX_STAGE_NAME:
        raise ValueError(f"invalid stage name {name[:40]!r}...: longer than {MAX_STAGE_NAME} bytes")
    if name in (".", "..") or "/" in name:
        raise ValueError(f"invalid stage name {name!r}: no '/', '.' or '..'")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"invalid stage name {name!r}: control characters")
    refused = zookeeper_refused_character(name)
    if refused is not None:
        raise ValueError(f"invalid stage name {name!r}: ZooKeeper does not accept the character "
                         f"U+{ord(refused):04X} in node names")
    if name.startswith("amq."):
        raise ValueError(f"invalid stage name {name!r}: names starting with 'amq.' are reserved by RabbitMQ")
    if name == "zookeeper":
        raise ValueError("invalid stage name 'zookeeper': reserved by ZooKeeper")
    return name


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="verbose logging and tracebacks on errors")


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s" if debug else "%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        # kazoo and pika are chatty about reconnects the tool already reports itself.
        for name in ("kazoo", "kazoo.client", "paramiko"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # pika logs a full traceback at ERROR for every failed connection attempt; libs/mq.py
        # turns those failures into one line of its own.
        logging.getLogger("pika").setLevel(logging.CRITICAL)


def build_connection_config(args: argparse.Namespace, ini_path: str | None = None) -> ConnectionConfig:
    """ConnectionConfig from the shared options and an optional INI file (ConfigError -> exit 2)."""
    if ini_path is None:
        ini_path = getattr(args, "config", None)
    try:
        ini = read_ini_section(ini_path, INI_SECTIONS) if ini_path else {}
        return connection_config(args, ini)
    except ConfigError as error:
        raise CliError(str(error), ExitCode.USAGE) from None


def connect_zookeeper(conn: ConnectionConfig, *, timeout: float = 10.0) -> ZooKeeper:
    try:
        return ZooKeeper(conn, timeout=timeout).start()
    except ZkLoginRefused as error:
        raise CliError(str(error), ExitCode.ACCESS_REFUSED) from None
    except ZkConnectionError as error:
        raise CliError(str(error), ExitCode.UNREACHABLE) from None


def open_mq(zk: ZooKeeper, conn: ConnectionConfig, *, retry_for: float = 10.0, name: str = "") -> MQSession:
    """An open MQSession on the brokers listed in ZooKeeper (CliError when none answers)."""
    try:
        settings = MQSettings.from_zookeeper(zk, conn)
    except MQError as error:
        raise CliError(str(error), ExitCode.USAGE) from None
    session = MQSession(settings, name=name)
    try:
        session.open(retry_for=retry_for)
    except MQAuthenticationError as error:
        raise CliError(str(error), ExitCode.ACCESS_REFUSED) from None
    except MQConnectionError as error:
        raise CliError(str(error), ExitCode.UNREACHABLE) from None
    return session


def run_main(body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None) -> int:
    """Parse arguments, run `body`, turn known failures into one line on stderr and an exit code."""
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    setup_logging(debug)
    try:
        return int(body(args))
    except CliError as error:
        if debug:
            log.exception("failed")
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return error.exit_code
    except ConfigError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except MQAuthenticationError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return ExitCode.ACCESS_REFUSED
    except MQConnectionError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    except MQError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return ExitCode.FAILED
    except NoAuthError:
        print(f"{parser.prog}: error: ZooKeeper refused access (check -u/-p and the node ACLs)", file=sys.stderr)
        return ExitCode.ACCESS_REFUSED
    except KazooException as error:
        if debug:
            log.exception("failed")
        print(f"{parser.prog}: error: ZooKeeper: {type(error).__name__} {error}".rstrip(), file=sys.stderr)
        return ExitCode.UNREACHABLE
