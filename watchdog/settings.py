"""The watchdog's one configuration object, built once from INI + command line."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from pero_worker.libs import zk_paths
from pero_worker.libs.config import (
    ConfigError,
    ConnectionConfig,
    add_connection_arguments,
    connection_config,
    read_ini_section,
)
from pero_worker.libs.exit_codes import ExitCode, exit_codes_help
from pero_worker.libs.metrics import MetricsConfig, add_metrics_arguments, metrics_config
from pero_worker.watchdog.planning import PlannerSettings

# Additive node (not in the original layout): kazoo Election among watchdog instances.
ELECTION_PATH = zk_paths.WATCHDOG_ELECTION

DEFAULT_INTERVAL = 0.5            # seconds between planning rounds (AMQP depths are instant)
DEFAULT_MANAGEMENT_INTERVAL = 5.0 # RabbitMQ's stats interval: polling faster gains nothing
DEFAULT_SESSION_TIMEOUT = 10.0    # a standby takes over within this after the active one dies


STATE_DIRECTORY_ENV = "STATE_DIRECTORY"   # set by systemd's StateDirectory=


def default_state_directory() -> Path:
    """Where a watchdog keeps its session file: systemd's StateDirectory, else the XDG state folder."""
    if os.environ.get(STATE_DIRECTORY_ENV):
        return Path(os.environ[STATE_DIRECTORY_ENV].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "pero-worker"


@dataclass(frozen=True)
class WatchdogSettings:
    connection: ConnectionConfig
    state_directory: Path = field(default_factory=default_state_directory)
    interval: float = DEFAULT_INTERVAL
    management_interval: float = DEFAULT_MANAGEMENT_INTERVAL
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    dry_run: bool = False
    debug: bool = False
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    metrics: MetricsConfig | None = None     # where /metrics is served (libs/metrics.py); None: off


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker_watchdog.py",
        description="Assigns pero workers to stage queues by load. Several instances may run: one is "
                    "elected active, the others stand by and take over when it dies.",
        epilog="INI file: section [WATCHDOG] (or [WORKER]) with zookeeper_servers, username, password, "
               "ca_cert; optional interval, session_timeout, starvation_timeout, state_directory, metrics_address, "
               "metrics_cert, metrics_key. Command-line "
               "options override it. "
               + exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.UNREACHABLE,
                                 ExitCode.ACCESS_REFUSED) + " (3 and 4: --dry-run only; the daemon keeps retrying).",
    )
    add_connection_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the current state and the moves that would be made, then exit (writes nothing)")
    parser.add_argument("--interval", type=float, metavar="SECONDS",
                        help=f"seconds between planning rounds (default {DEFAULT_INTERVAL})")
    parser.add_argument("--session-timeout", type=float, metavar="SECONDS",
                        help=f"ZooKeeper session timeout: how fast a standby takes over (default "
                             f"{DEFAULT_SESSION_TIMEOUT:.0f})")
    parser.add_argument("--state-directory", metavar="DIR",
                        help="where the watchdog keeps its ZooKeeper session, so that a restart after a crash closes "
                             "the dead predecessor's session at once instead of waiting for it to expire (default "
                             "$STATE_DIRECTORY under systemd, else ~/.local/state/pero-worker)")
    parser.add_argument("-d", "--debug", action="store_true", help="debug output")
    add_metrics_arguments(parser, "watchdog")
    return parser


def _positive(value: str | float | None, key: str, default: float) -> float:
    if value is None or str(value).strip() == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{key} must be a number of seconds, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{key} must be positive, got {value!r}")
    return number


def build_settings(args: argparse.Namespace) -> WatchdogSettings:
    ini = read_ini_section(args.config, ("WATCHDOG", "WORKER")) if args.config else {}
    planner = PlannerSettings(
        starvation_timeout=_positive(ini.get("starvation_timeout"), "starvation_timeout",
                                     PlannerSettings.starvation_timeout),
    )
    connection = connection_config(args, ini)
    return WatchdogSettings(
        connection=connection,
        interval=_positive(args.interval if args.interval is not None else ini.get("interval"), "interval",
                           DEFAULT_INTERVAL),
        session_timeout=_positive(args.session_timeout if args.session_timeout is not None
                                  else ini.get("session_timeout"), "session_timeout", DEFAULT_SESSION_TIMEOUT),
        state_directory=Path(args.state_directory or ini.get("state_directory") or default_state_directory())
        .expanduser(),
        dry_run=args.dry_run,
        debug=args.debug,
        planner=planner,
        metrics=None if args.dry_run else metrics_config(args, ini, connection, "watchdog"),
    )


