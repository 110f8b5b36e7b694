"""Taking up a stage: read its config from ZooKeeper, fetch its model, build its processor.

Runs on the processing thread (a model download may take minutes and must not
stall the RabbitMQ thread).  The processors and the model cache are imported
lazily: they pull in pero-ocr and torch, which an idle worker must not load.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pero_worker.libs import zk_paths
from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.zk import KazooException, ZooKeeper, describe_zk_error
from pero_worker.worker import metrics as worker_metrics

log = logging.getLogger(__name__)


class StageSetupError(Exception):
    """The stage cannot be taken up; the message says why (shown to the operator).

    `transient`: a service was unreachable or a transfer broke (SFTP down, ZooKeeper connection lost,
    local disk full): trying again soon may work, and the worker does.  Otherwise the stage's
    configuration itself is wrong and it is retried only when it changes (or after a long pause).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# A stage whose configuration is wrong is tried again only after this long (or when it changes).
CONFIG_RETRY_INTERVAL = 60.0
# A transient failure (SFTP or ZooKeeper unreachable, transfer broken) is retried with a short capped backoff so
# the stage is ready within seconds of the service coming back.  The worker stays CONFIGURING for TRANSIENT_GRACE
# seconds (the watchdog leaves it alone), then reports CONFIGURATION_FAILED (the watchdog may use it elsewhere);
# the retries go on either way.
TRANSIENT_GRACE = 30.0


@dataclass(frozen=True)
class SetupRetry:
    retry_at: float
    status: str
    transient_since: float | None   # start of the current run of transient failures (None: not transient)


def setup_retry(now: float, transient: bool, transient_since: float | None, delay: float) -> SetupRetry:
    """When to try a failed stage set-up again and which status to report meanwhile (pure).

    `delay` is the next transient backoff delay; `transient_since` the start of the current run
    of transient failures, if any."""
    if not transient:
        return SetupRetry(now + CONFIG_RETRY_INTERVAL, zk_paths.CONFIGURATION_FAILED, None)
    since = now if transient_since is None else transient_since
    status = zk_paths.CONFIGURING if now - since < TRANSIENT_GRACE else zk_paths.CONFIGURATION_FAILED
    return SetupRetry(now + delay, status, since)


@dataclass(frozen=True)
class StageNodes:
    config: str
    config_path: str
    version: str


def read_stage_nodes(zk: ZooKeeper, stage: str) -> StageNodes:
    config = zk.get(zk_paths.stage_config(stage))
    if config is None:
        raise StageSetupError(f"stage {stage!r} does not exist in ZooKeeper (no {zk_paths.stage_config(stage)})")
    try:
        text = config.decode("utf-8")
    except UnicodeDecodeError:
        raise StageSetupError(f"config of stage {stage!r} is not UTF-8 text") from None
    return StageNodes(config=text,
                      config_path=zk.get_text(zk_paths.stage_config_path(stage)).strip(),
                      version=zk.get_text(zk_paths.stage_config_version(stage)).strip())


class StageLoader:
    def __init__(self, zk: ZooKeeper, connection: ConnectionConfig, cache_dir: Path, device: str) -> None:
        self.zk = zk
        self.connection = connection
        self.cache_dir = cache_dir
        self.device = device
        self._cache = None

    def _model_cache(self):
        if self._cache is None:
            from pero_worker.worker.model_cache import ModelCache  # lazy: pulls in paramiko
            self._cache = ModelCache(self.cache_dir)
        return self._cache

    def _sftp_client(self):
        from pero_worker.libs.sftp import SftpClient, SftpSettings
        return SftpClient(SftpSettings.from_zookeeper(self.zk, self.connection))

    def load(self, stage: str) -> tuple[object, str, float]:
        """(processor, version, seconds it took); StageSetupError with the reason on any failure."""
        started = time.monotonic()
        try:
            nodes = read_stage_nodes(self.zk, stage)
        except KazooException as error:
            raise StageSetupError(f"stage {stage!r}: {describe_zk_error(error)}", transient=True) from None
        from pero_worker.worker.model_cache import ModelCacheError  # lazy: pulls in paramiko
        from pero_worker.worker.processors import StageConfigError, build_processor  # lazy: may pull in pero-ocr/torch
        model_dir: Path | None = None
        try:
            if nodes.config_path:
                cached = self._model_cache().get(stage, nodes.version, nodes.config_path, self._sftp_client)
                model_dir = cached.path
                if cached.fetched:
                    worker_metrics.model_fetched(stage, cached.download_seconds, cached.unpack_seconds)
            processor = build_processor(nodes.config, model_dir, device=self.device)
        except StageConfigError as error:
            raise StageSetupError(f"stage {stage!r}: {error}") from None
        except ModelCacheError as error:
            raise StageSetupError(f"stage {stage!r}: {error}", transient=error.transient) from None
        except KazooException as error:   # the SFTP server list is read from ZooKeeper
            raise StageSetupError(f"stage {stage!r}: {describe_zk_error(error)}", transient=True) from None
        except Exception as error:   # pero-ocr and the rest: the message is what the operator needs
            raise StageSetupError(f"stage {stage!r}: {error or type(error).__name__}") from None
        return processor, nodes.version, time.monotonic() - started


def is_processing_error(error: BaseException) -> bool:
    """True for the processors' 'bad input for this request' error (vs. a crash)."""
    from pero_worker.worker.processors import ProcessingError
    return isinstance(error, ProcessingError)
