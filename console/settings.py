"""The console's one configuration object, from the INI file, the environment and the command line.

Login uses the deployment's own credentials: the user and password the INI (or -u/-p, PERO_USER,
PERO_PASSWORD) names for ZooKeeper and RabbitMQ.  A deployment without a user connects to RabbitMQ as
guest/guest, so that is the console's login there too.  HTTPS: a deployment with TLS (ca_cert) must give
the console a certificate and key (the deployment's, e.g. certificates/rabbitmq.pem from system_setup.py).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from pero_worker.libs.config import ConnectionConfig, add_connection_arguments
from pero_worker.libs.exit_codes import ExitCode, exit_codes_help
from pero_worker.libs.mq import DEAD_LETTER_QUEUE
from pero_worker.tools.cli import CliError, add_debug_argument, build_connection_config

LISTEN_ENV = "PERO_CONSOLE_LISTEN"
DEFAULT_LISTEN = "127.0.0.1:8088"
DEFAULT_REFRESH = 1.0


@dataclass(frozen=True)
class ConsoleSettings:
    connection: ConnectionConfig
    host: str = "127.0.0.1"
    port: int = 8088
    cert: str | None = None
    key: str | None = None
    refresh: float = DEFAULT_REFRESH        # seconds between two snapshots of ZooKeeper and RabbitMQ
    log_dir: Path | None = None             # the log daemon's output folder: last errors per worker
    dead_letter_queue: str = DEAD_LETTER_QUEUE
    debug: bool = False
    login_user: str = "guest"
    login_password: str = field(default="guest", repr=False)

    @property
    def https(self) -> bool:
        return self.cert is not None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="console.py",
        description="Web console for operators: live stages (depth, rate, ETA), workers (status, stage, host, "
                    "uptime, last error), the active watchdog and the moves it plans, recent failures and dead "
                    "letters; move, enable or disable a worker, replay dead letters. Log in with the deployment's "
                    "user and password (those of the INI file / -u / -p; guest/guest when it names none).",
        epilog=exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.UNREACHABLE,
                               ExitCode.ACCESS_REFUSED, ExitCode.INTERRUPTED))
    add_connection_arguments(parser)
    web = parser.add_argument_group("web server")
    web.add_argument("--listen", default=None, metavar="HOST:PORT",
                     help=f"address to serve on (default ${LISTEN_ENV} or {DEFAULT_LISTEN}; loopback unless you "
                          "mean to expose it)")
    web.add_argument("--cert", metavar="PEM", help="HTTPS certificate (required when the deployment uses TLS)")
    web.add_argument("--key", metavar="PEM", help="the certificate's private key")
    web.add_argument("--refresh", type=float, default=DEFAULT_REFRESH, metavar="SECONDS",
                     help=f"how often the background task re-reads ZooKeeper and RabbitMQ (default "
                          f"{DEFAULT_REFRESH:g})")
    web.add_argument("--log-dir", type=Path, metavar="DIR",
                     help="the log daemon's output folder: shows each worker's last error and recent failures")
    web.add_argument("--dead-letter-queue", default=DEAD_LETTER_QUEUE, metavar="QUEUE",
                     help=f"the dead-letter queue to show and replay from (default {DEAD_LETTER_QUEUE})")
    add_debug_argument(parser)
    return parser


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"--listen {text!r}: expected HOST:PORT", ExitCode.USAGE)
    return host.strip("[]") or "127.0.0.1", int(port)


def build_settings(args: argparse.Namespace) -> ConsoleSettings:
    conn = build_connection_config(args)
    host, port = parse_listen(args.listen or os.environ.get(LISTEN_ENV) or DEFAULT_LISTEN)
    if bool(args.cert) != bool(args.key):
        raise CliError("--cert and --key go together", ExitCode.USAGE)
    for path in (args.cert, args.key):
        if path and not Path(path).is_file():
            raise CliError(f"no such file: {path}", ExitCode.USAGE)
    if conn.use_tls and not args.cert:
        raise CliError("the deployment uses TLS (ca_cert): give the console --cert and --key so that logins "
                       "travel over HTTPS", ExitCode.USAGE)
    if not args.refresh > 0:
        raise CliError("--refresh must be positive", ExitCode.USAGE)
    user = conn.username or "guest"
    password = conn.password if conn.username else "guest"
    if not password:
        raise CliError(f"operators log in with the deployment's password, and user {user!r} has none here: give "
                       "--password-file, -p or PERO_PASSWORD (or the INI's password)", ExitCode.USAGE)
    return ConsoleSettings(connection=conn, host=host, port=port, cert=args.cert, key=args.key,
                           refresh=args.refresh, log_dir=args.log_dir, debug=args.debug,
                           dead_letter_queue=args.dead_letter_queue, login_user=user,
                           login_password=password or "")
