"""`scripts/console.py` / `pero-console`: serve the web console until Ctrl-C or SIGTERM."""
from __future__ import annotations

import argparse
import errno
import logging
import signal
import socket
from collections.abc import Sequence

import uvicorn

from pero_worker.console.app import create_app
from pero_worker.console.settings import build_parser, build_settings
from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.zk import ZkConnectionError
from pero_worker.tools.cli import CliError, connect_zookeeper, run_main

log = logging.getLogger("pero_worker.console")


def _check_port(host: str, port: int) -> None:
    """Say 'address in use' in one line before uvicorn would log it with its own words and exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            why = "in use" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
            raise CliError(f"cannot serve on {host}:{port}: {why}") from None


def _run(args: argparse.Namespace) -> int:
    settings = build_settings(args)
    _check_port(settings.host, settings.port)
    zk = connect_zookeeper(settings.connection)
    try:
        app = create_app(settings, zk)
        try:
            app.state.console.collector.load()
        except ZkConnectionError as error:
            raise CliError(str(error), ExitCode.UNREACHABLE) from None
        scheme = "https" if settings.https else "http"
        log.info("console on %s://%s:%d/ (log in as %s)", scheme, settings.host, settings.port, settings.login_user)
        config = uvicorn.Config(app, host=settings.host, port=settings.port, ssl_certfile=settings.cert,
                                ssl_keyfile=settings.key, log_level="debug" if settings.debug else "warning",
                                access_log=settings.debug, server_header=False)
        # uvicorn stops gracefully on SIGINT/SIGTERM and then re-raises the signal to the handler that was
        # installed before it: make that one a no-op, so that a stop is exit 0 like every daemon's.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda _signum, _frame: None)
        uvicorn.Server(config).run()
        log.info("console stopped")
    finally:
        zk.stop()
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_run, build_parser(), argv)
