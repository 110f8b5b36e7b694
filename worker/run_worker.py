"""pero-worker entry point: `python worker/run_worker.py -z ZK [-i ID] ...` or the `pero-worker` console script.

Wiring only: configuration, logging, the per-id lock, ZooKeeper connection and
registration, then the daemon's main loop (worker/daemon.py).  Exit codes:
libs/exit_codes.py (5: another live worker has this id).
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from pero_worker.libs.backoff import Backoff
from pero_worker.libs.config import ConfigError
from pero_worker.libs.daemon import StopRequest, configuration_error, run_guarded, setup_logging
from pero_worker.libs.exit_codes import ExitCode
from pero_worker.libs.metrics import MetricsError, start_metrics_server
from pero_worker.libs.zk import KazooException, NoAuthError, ZkConnectionError, ZooKeeper, describe_zk_error
from pero_worker.worker import metrics as worker_metrics
from pero_worker.worker.daemon import WorkerDaemon
from pero_worker.worker.log_shipping import LogShipper
from pero_worker.worker.model_cache import clean_interrupted
from pero_worker.worker.registration import DuplicateWorkerError, Registration, SessionStore, close_stale_session
from pero_worker.worker.settings import WorkerConfig, parse_worker_config
from pero_worker.worker.stage_log import RequestLogCapture

log = logging.getLogger("pero_worker.worker")

ZK_CONNECT_TIMEOUT = 3.0


def connect_zookeeper(config: WorkerConfig, stop: StopRequest) -> ZooKeeper | None:
    """Connect, retrying with backoff until it works or a signal asks to stop (None)."""
    backoff = Backoff(initial=1.0, cap=15.0)
    last_error = ""
    while not stop.requested:
        try:
            return ZooKeeper(config.connection, timeout=ZK_CONNECT_TIMEOUT).start()
        except ZkConnectionError as error:
            if str(error) != last_error:
                log.error("%s (retrying every %.0f s at most)", error, backoff.cap)
                last_error = str(error)
        stop.wait(backoff.delay())
    return None


def start_log_handlers(config: WorkerConfig) -> tuple[RequestLogCapture, LogShipper | None]:
    """The handler that captures each request's log lines, and the one that ships lines to the log queue."""
    capture = RequestLogCapture()
    logging.getLogger().addHandler(capture)
    shipper = None
    if config.remote_logging:
        shipper = LogShipper(config.log_queue, config.worker_id)
        logging.getLogger().addHandler(shipper)
        shipper.start()
    return capture, shipper


def register(config: WorkerConfig, zk: ZooKeeper, store: SessionStore) -> Registration:
    """Close this id's stale session left by a crash, save ours, claim the id (DuplicateWorkerError)."""
    stale = store.load()
    if stale is not None and stale[0] != zk.session_id and close_stale_session(config.connection, stale):
        log.info("closed the ZooKeeper session left by this worker's previous run (0x%x)", stale[0])
    store.save(zk.session_credentials)
    registration = Registration(zk, config.worker_id)
    registration.register()
    return registration


def serve(config: WorkerConfig, stop: StopRequest, store: SessionStore, capture: RequestLogCapture,
          shipper: LogShipper | None) -> int:
    """Connect, register and run the daemon; the ZooKeeper session is closed on the way out."""
    zk = None
    clean_exit = False
    try:
        zk = connect_zookeeper(config, stop)
        if zk is None:
            return ExitCode.OK
        registration = register(config, zk, store)
        code = WorkerDaemon(config, zk, registration, store, capture, shipper, stop).run()
        clean_exit = code == ExitCode.OK
        log.info("worker %s stopped", config.worker_id)
        return code
    except DuplicateWorkerError as error:
        log.error("refusing to start worker %s: %s", config.worker_id, error)
        return ExitCode.DUPLICATE_WORKER
    except NoAuthError as error:   # ZooKeeper refuses access to the worker's nodes: fix the credentials or ACLs
        log.error("%s", describe_zk_error(error))
        return ExitCode.ACCESS_REFUSED
    except KazooException as error:
        log.error("%s", describe_zk_error(error))
        return ExitCode.FAILED
    finally:
        if zk is not None:
            zk.stop()   # closes the session: ZooKeeper deletes the `connected` node at once
            if clean_exit:
                store.clear()
        store.release(remove=clean_exit and not config.worker_id_given)


def run(config: WorkerConfig, stop: StopRequest) -> int:
    capture, shipper = start_log_handlers(config)
    store = SessionStore(config.cache_dir, config.worker_id)
    try:
        store.acquire()
    except DuplicateWorkerError as error:
        log.error("refusing to start worker %s: %s", config.worker_id, error)
        return ExitCode.DUPLICATE_WORKER
    except OSError as error:
        log.error("cannot use the cache directory %s: %s", config.cache_dir, error.strerror or error)
        return ExitCode.USAGE
    try:
        clean_interrupted(config.cache_dir)       # half-unpacked models of a killed predecessor
        return serve(config, stop, store, capture, shipper)
    finally:
        if shipper is not None:
            shipper.stop(timeout=0.5)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_worker_config(argv)
    except ConfigError as error:
        return configuration_error("run_worker.py", error)
    setup_logging("WORKER", config.debug)
    try:
        metrics = start_metrics_server(config.metrics, worker_metrics.REGISTRY)
    except MetricsError as error:
        return configuration_error("run_worker.py", error)
    worker_metrics.set_identity(config.worker_id)
    if metrics is None:
        worker_metrics.disable()
    stop = StopRequest.on_signals()
    return run_guarded(log, lambda: run(config, stop))


if __name__ == "__main__":
    sys.exit(main())
