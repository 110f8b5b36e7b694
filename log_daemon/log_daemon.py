#!/usr/bin/env python3
"""pero log daemon: consumes the log queue and appends its records to rotating files.

Nothing is lost: a record is acknowledged only after it has been written and flushed
to disk.  When the folder cannot be written (permissions, disk full, folder gone) the
daemon says so, gives the unacknowledged records back to the broker (they stay queued)
and retries with backoff; a broker or ZooKeeper outage is retried the same way.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pero_worker.libs.backoff import Backoff
from pero_worker.libs.config import (
    ConfigError,
    ConnectionConfig,
    add_connection_arguments,
    connection_config,
    read_ini_section,
)
from pero_worker.libs.daemon import StopRequest, configuration_error, run_guarded, setup_logging
from pero_worker.libs.exit_codes import ExitCode, exit_codes_help
from pero_worker.libs.metrics import (
    MetricsConfig,
    MetricsError,
    add_metrics_arguments,
    metrics_config,
    start_metrics_server,
)
from pero_worker.libs.mq import (
    DEFAULT_LOG_QUEUE,
    Delivery,
    MQAuthenticationError,
    MQConnectionError,
    MQError,
    MQSession,
    MQSettings,
)
from pero_worker.libs.zk import KazooException, ZkConnectionError, ZooKeeper, describe_zk_error
from pero_worker.log_daemon import metrics as logd_metrics
from pero_worker.log_daemon.writer import LogWriteError, LogWriter

log = logging.getLogger("pero_worker.log_daemon")

DEFAULT_OUTPUT_DIR = "logs"
DEFAULT_ROTATION_MINUTES = 10080.0   # one week
DEFAULT_NUMBER_OF_FILES = 10
PREFETCH = 500                       # records in flight: written and acked in batches
MAX_BACKOFF = 1.0                    # retry at least this often: consuming <= 2 s after a service is back


@dataclass(frozen=True)
class LogDaemonSettings:
    connection: ConnectionConfig
    log_queue: str = DEFAULT_LOG_QUEUE
    output_dir: Path = Path(DEFAULT_OUTPUT_DIR)
    rotation_minutes: float = DEFAULT_ROTATION_MINUTES
    number_of_files: int = DEFAULT_NUMBER_OF_FILES
    debug: bool = False
    metrics: MetricsConfig | None = None     # where /metrics is served (libs/metrics.py); None: off


def _number(text: str | None, key: str, kind: type, default):
    if text is None or str(text).strip() == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {text!r}") from None
    if value < 0:
        raise ConfigError(f"{key} must not be negative, got {text!r}")
    return value


def build_settings(args: argparse.Namespace) -> LogDaemonSettings:
    """INI [LOGD] (or [WORKER]) values, overridden by the command line."""
    ini = read_ini_section(args.config, ("LOGD", "WORKER")) if args.config else {}
    connection = connection_config(args, ini)
    return LogDaemonSettings(
        connection=connection,
        log_queue=args.log_queue or ini.get("log_queue") or DEFAULT_LOG_QUEUE,
        output_dir=Path(args.output_dir or ini.get("output_dir") or DEFAULT_OUTPUT_DIR),
        rotation_minutes=_number(args.log_rotation_period if args.log_rotation_period is not None
                                 else ini.get("log_rotation_period"), "log_rotation_period", float,
                                 DEFAULT_ROTATION_MINUTES),
        number_of_files=_number(args.number_of_files if args.number_of_files is not None
                                else ini.get("number_of_files"), "number_of_files", int, DEFAULT_NUMBER_OF_FILES),
        debug=bool(args.debug),
        metrics=metrics_config(args, ini, connection, "log_daemon"),
    )


class LogDaemon:
    def __init__(self, settings: LogDaemonSettings, stop: StopRequest | None = None) -> None:
        self.settings = settings
        self.writer = LogWriter(settings.output_dir, period_minutes=settings.rotation_minutes,
                                keep=settings.number_of_files)
        self.stopping = stop or StopRequest()
        self.records_written = 0
        self._queue_problem: str | None = None   # said once, not at every reconnect

    def stop(self) -> None:
        self.stopping.stop("stop requested")

    def _sleep(self, seconds: float) -> None:
        self.stopping.wait(seconds)

    def run(self) -> int:
        """Run until stop(); every failure is said once and retried with a capped backoff."""
        zk: ZooKeeper | None = None
        backoff = Backoff(initial=0.2, cap=MAX_BACKOFF)
        last_problem = ""
        try:
            while not self.stopping.requested:
                try:
                    if zk is None:
                        zk = ZooKeeper(self.settings.connection).start()
                    session = self._open_session(zk)
                    try:
                        backoff.reset()
                        last_problem = ""
                        self._consume(session)
                    finally:
                        session.close()
                    continue
                except ZkConnectionError as error:
                    problem = str(error)
                except KazooException as error:   # e.g. NoAuth reading the server list, connection loss
                    problem = describe_zk_error(error)
                except MQAuthenticationError as error:
                    problem = f"{error}; fix the credentials"
                except MQError as error:           # the message names RabbitMQ and the cause
                    problem = str(error)
                except LogWriteError as error:
                    problem = f"{error}; the records stay queued"
                if self.stopping.requested:
                    break
                delay = backoff.delay()
                if problem != last_problem:
                    log.error("%s; retrying every %.0f s at most", problem, backoff.cap)
                    last_problem = problem
                self._sleep(delay)
        finally:
            try:
                self.writer.close()
            except LogWriteError as error:
                log.error("%s", error)
            if zk is not None:
                zk.stop()
        log.info("log daemon stopped (%s; %d records written)", self.stopping.reason or "stop requested",
                 self.records_written)
        return ExitCode.OK

    def _open_session(self, zk: ZooKeeper) -> MQSession:
        self.writer.check_writable()
        settings = MQSettings.from_zookeeper(zk, self.settings.connection)
        session = MQSession(settings, name=f"pero-logd {self.settings.log_queue}")
        session.open(retry_for=0)   # run() retries, with its backoff and one line per problem
        try:
            problem = session.declare_shared_queue(self.settings.log_queue)
        except MQConnectionError:
            raise
        except MQError as error:
            # Whatever else the broker refuses, a queue that exists still delivers: consume it anyway.
            problem = str(error)
        if problem and problem != self._queue_problem:
            log.warning("log queue %r: %s", self.settings.log_queue, problem)
        self._queue_problem = problem
        return session

    def _consume(self, session: MQSession) -> None:
        received: list[Delivery] = []
        session.consume(self.settings.log_queue, received.append, prefetch=PREFETCH)
        log.info("consuming log queue %r into %s", self.settings.log_queue, self.settings.output_dir)
        backlog_at = 0.0
        while not self.stopping.requested:
            session.pump(0.5)
            if time.monotonic() >= backlog_at:
                backlog_at = time.monotonic() + logd_metrics.BACKLOG_INTERVAL
                self._read_backlog(session)
            if not received:
                continue
            batch = received[:]
            received.clear()
            try:
                for delivery in batch:
                    self.writer.write(delivery.body)
                self.writer.flush()   # raises before any ack: the batch stays unacked and is redelivered
            except LogWriteError:
                logd_metrics.WRITE_FAILURES.inc()
                raise
            session.ack(batch[-1].delivery_tag, multiple=True)
            self.records_written += len(batch)
            logd_metrics.LINES_WRITTEN.inc(len(batch))
        session.cancel_consumer()

    def _read_backlog(self, session: MQSession) -> None:
        """Records still waiting in the log queue, for /metrics (the ones in our hands are not counted)."""
        length = session.queue_length(self.settings.log_queue)
        logd_metrics.BACKLOG.set(-1 if length is None else length)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="log_daemon.py",
        description="Consume worker log records from the log queue and append them to rotating files. "
                    "Records are acknowledged only once written to disk; on errors they stay queued.",
        epilog="INI file: section [LOGD] with zookeeper_servers, username, password, ca_cert, log_queue, "
               "output_dir, log_rotation_period, number_of_files, metrics_address, metrics_cert, metrics_key. "
               "Command-line options override it. "
               + exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE),
    )
    add_connection_arguments(parser)
    parser.add_argument("-q", "--log-queue", help=f"log queue to consume (default {DEFAULT_LOG_QUEUE!r})")
    parser.add_argument("-o", "--output-dir", help=f"folder for log files (default {DEFAULT_OUTPUT_DIR!r}; created)")
    parser.add_argument("-r", "--log-rotation-period", type=float, metavar="MINUTES",
                        help=f"start a new file after this many minutes, fractions allowed "
                             f"(default {DEFAULT_ROTATION_MINUTES:.0f}; 0 = never)")
    parser.add_argument("-n", "--number-of-files", type=int, metavar="N",
                        help=f"keep at most N log files (default {DEFAULT_NUMBER_OF_FILES}; 0 = keep all)")
    parser.add_argument("-d", "--debug", action="store_true", help="debug output")
    add_metrics_arguments(parser, "log_daemon")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = build_settings(parse_args(argv))
    except ConfigError as error:
        return configuration_error("log_daemon.py", error)
    setup_logging("LOGD", bool(settings.debug))
    stop = StopRequest.on_signals()
    log.info("log daemon: queue %r -> %s (rotation %g min, keep %s files)", settings.log_queue,
             settings.output_dir, settings.rotation_minutes, settings.number_of_files or "all")
    try:
        start_metrics_server(settings.metrics, logd_metrics.REGISTRY)
    except MetricsError as error:
        return configuration_error("log_daemon.py", error)
    return run_guarded(log, lambda: LogDaemon(settings, stop).run())


if __name__ == "__main__":
    sys.exit(main())
