"""The worker's one configuration object, built once from worker.ini [WORKER], the environment and the command line.

Keys and variables: docs/protocol.md §6, §7.
"""
from __future__ import annotations

import argparse
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pero_worker.libs.config import (
    ConfigError,
    ConnectionConfig,
    add_connection_arguments,
    connection_config,
    read_ini_section,
)
from pero_worker.libs.exit_codes import ExitCode, exit_codes_help
from pero_worker.libs.message_size import parse_byte_size
from pero_worker.libs.metrics import MetricsConfig, add_metrics_arguments, metrics_config
from pero_worker.libs.mq import DEFAULT_LOG_QUEUE

INI_SECTIONS = ("WORKER",)
MAX_MESSAGE_SIZE_ENV = "PERO_MAX_MESSAGE_SIZE"
WARM_MODELS_ENV = "PERO_WARM_MODELS"
WARM_MODELS_MEMORY_ENV = "PERO_WARM_MODELS_MEMORY"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# Worker ids become ZooKeeper node names and file names: keep them plain.
_WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")

EXIT_CODES_HELP = exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.ACCESS_REFUSED,
                                  ExitCode.DUPLICATE_WORKER)


@dataclass(frozen=True)
class WorkerConfig:
    connection: ConnectionConfig
    worker_id: str
    # True when the id came from -i / the INI file: it is reused across restarts.
    worker_id_given: bool
    cache_dir: Path
    log_queue: str
    remote_logging: bool
    debug: bool
    device: str
    # The broker's max_message_size when the operator knows it (None: the default of the broker's version,
    # corrected by the broker's own refusal; docs/protocol.md §3).
    max_message_size: int | None = None
    # Where /metrics is served (libs/metrics.py); None: metrics off.
    metrics: MetricsConfig | None = None
    # Warm-model pool (worker/warm_pool.py): processors of this many recently left stages stay loaded,
    # within this many bytes of model memory (None: no byte budget).
    warm_models: int = 0
    warm_models_memory: int | None = None


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pero-worker"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=("pero-worker: registers in ZooKeeper, waits for a stage (queue) to be assigned, "
                     "downloads that stage's config and model, and processes its requests until stopped "
                     "(SIGTERM/SIGINT, or 'enabled' set to false in ZooKeeper)."),
        epilog=EXIT_CODES_HELP,
    )
    add_connection_arguments(parser)
    group = parser.add_argument_group("worker")
    group.add_argument("-i", "--id", dest="worker_id", metavar="ID",
                       help="worker id, reused across restarts (keeps its model cache); default: a fresh uuid4 hex")
    group.add_argument("--cache-directory", metavar="DIR",
                       help=f"where models are downloaded and unpacked (default {default_cache_dir()})")
    group.add_argument("-q", "--log-queue", metavar="QUEUE",
                       help=f"RabbitMQ queue for the worker's log lines (default {DEFAULT_LOG_QUEUE!r})")
    group.add_argument("--disable-remote-logging", action="store_true",
                       help="do not send log lines to the log queue")
    group.add_argument("--device", metavar="DEVICE",
                       help="where pero-ocr runs: auto (GPU when available), cpu, cuda or cuda:N (default auto)")
    group.add_argument("--max-message-size", metavar="BYTES",
                       help=("the broker's max_message_size (e.g. 128MiB), when it is not the default of its "
                             f"version; a result over it goes to the output stage as failed (default "
                             f"${MAX_MESSAGE_SIZE_ENV}, else the version's default)"))
    group.add_argument("--warm-models", metavar="N",
                       help=("keep the models of the N stages this worker left most recently loaded, so that "
                             "switching back to one costs no download and no load (default "
                             f"${WARM_MODELS_ENV}, else 0: a stage's model is closed when the worker leaves it)"))
    group.add_argument("--warm-models-memory", metavar="BYTES",
                       help=("at most this much model memory (e.g. 2GiB) in the warm models; the least recently "
                             f"used go first (default ${WARM_MODELS_MEMORY_ENV}, else no limit beyond N)"))
    group.add_argument("-d", "--debug", action="store_true", help="verbose logging")
    add_metrics_arguments(parser, "worker")
    return parser


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def build_config(args: argparse.Namespace) -> WorkerConfig:
    """Merge INI and command line (the command line wins); ConfigError says what to fix."""
    ini = read_ini_section(args.config, INI_SECTIONS) if args.config else {}
    connection = connection_config(args, ini)

    worker_id = args.worker_id or ini.get("id") or ini.get("worker_id") or ""
    given = bool(worker_id)
    if not worker_id:
        worker_id = uuid.uuid4().hex
    if not _WORKER_ID.match(worker_id):
        raise ConfigError(f"invalid worker id {worker_id!r}: use letters, digits, '.', '_', '@' or '-' "
                          "(at most 128 characters)")

    cache = args.cache_directory or ini.get("cache_directory") or ""
    cache_dir = Path(cache).expanduser() if cache else default_cache_dir()

    log_queue = (args.log_queue or ini.get("log_queue") or DEFAULT_LOG_QUEUE).strip()
    if not log_queue:
        raise ConfigError("the log queue name is empty")

    device = (args.device or ini.get("device") or "auto").strip().lower()
    if not _DEVICE.match(device):
        raise ConfigError(f"invalid device {device!r}: use auto, cpu, cuda or cuda:N")

    remote_logging = not (args.disable_remote_logging or _truthy(ini.get("disable_remote_logging")))
    return WorkerConfig(connection=connection, worker_id=worker_id, worker_id_given=given, cache_dir=cache_dir,
                        log_queue=log_queue, remote_logging=remote_logging, debug=bool(args.debug), device=device,
                        max_message_size=_max_message_size(args, ini), warm_models=_warm_models(args, ini),
                        warm_models_memory=_warm_models_memory(args, ini),
                        metrics=metrics_config(args, ini, connection, "worker"))


def _warm_models(args: argparse.Namespace, ini: dict[str, str]) -> int:
    raw = (args.warm_models or os.environ.get(WARM_MODELS_ENV) or ini.get("warm_models") or "0").strip()
    if not raw.isdigit():
        raise ConfigError(f"warm models: {raw!r} is not a whole number >= 0")
    return int(raw)


def _warm_models_memory(args: argparse.Namespace, ini: dict[str, str]) -> int | None:
    raw = args.warm_models_memory or os.environ.get(WARM_MODELS_MEMORY_ENV) or ini.get("warm_models_memory") or ""
    if not raw.strip():
        return None
    try:
        return parse_byte_size(raw)
    except ValueError as error:
        raise ConfigError(f"warm models memory: {error}") from None


def _max_message_size(args: argparse.Namespace, ini: dict[str, str]) -> int | None:
    raw = args.max_message_size or os.environ.get(MAX_MESSAGE_SIZE_ENV) or ini.get("max_message_size") or ""
    if not raw.strip():
        return None
    try:
        return parse_byte_size(raw)
    except ValueError as error:
        raise ConfigError(f"max message size: {error}") from None


def parse_worker_config(argv: Sequence[str] | None = None) -> WorkerConfig:
    """argparse exits with 2 on bad options; a bad configuration raises ConfigError (also exit 2)."""
    args = build_parser().parse_args(argv)
    return build_config(args)
