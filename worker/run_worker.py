"""pero-worker entry point: `python worker/run_worker.py -z ZK [-i ID] ...` or the `pero-worker` console script.

Wiring only: configuration, logging, the per-id lock, ZooKeeper connection and
registration, then the daemon's main loop (worker/daemon.py).
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from typing import Sequence

from pero_worker.libs.config import ConfigError
from pero_worker.libs.zk import KazooException, NoAuthError, ZkConnectionError, ZooKeeper, describe_zk_error
from pero_worker.worker.daemon import EXIT_DUPLICATE, EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, WorkerDaemon
from pero_worker.worker.log_shipping import LogShipper
from pero_worker.worker.model_cache import clean_interrupted
from pero_worker.worker.registration import DuplicateWorkerError, Registration, SessionStore, close_stale_session
from pero_worker.worker.settings import WorkerConfig, parse_worker_config
from pero_worker.worker.stage_log import RequestLogCapture

log = logging.getLogger("pero_worker.worker")

ZK_CONNECT_TIMEOUT = 3.0


def setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not debug:
        # The worker reports connection trouble itself, in one line; the libraries would add tracebacks.
        logging.getLogger("kazoo").setLevel(logging.ERROR)
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        logging.getLogger("paramiko").setLevel(logging.WARNING)


class _Stop:
    """What a signal handler may touch: plain attributes, no locks."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.daemon: WorkerDaemon | None = None

    def handler(self, signum: int, _frame: object) -> None:
        self.reason = f"signal {signal.Signals(signum).name}"
        if self.daemon is not None:
            self.daemon.signalled = self.reason


def connect_zookeeper(config: WorkerConfig, stop: _Stop) -> ZooKeeper | None:
    """Connect, retrying with backoff until it works or a signal asks to stop (None)."""
    delay = 1.0
    last_error = ""
    while stop.reason is None:
        try:
            return ZooKeeper(config.connection, timeout=ZK_CONNECT_TIMEOUT).start()
        except ZkConnectionError as error:
            if str(error) != last_error:
                log.error("%s (retrying with backoff)", error)
                last_error = str(error)
        deadline = time.monotonic() + delay
        while stop.reason is None and time.monotonic() < deadline:
            time.sleep(0.1)
        delay = min(delay * 2, 15.0)
    return None


def run(config: WorkerConfig, stop: _Stop) -> int:
    capture = RequestLogCapture()
    logging.getLogger().addHandler(capture)
    shipper = None
    if config.remote_logging:
        shipper = LogShipper(config.log_queue, config.worker_id)
        logging.getLogger().addHandler(shipper)
        shipper.start()

    store = SessionStore(config.cache_dir, config.worker_id)
    try:
        store.acquire()
    except DuplicateWorkerError as error:
        log.error("refusing to start worker %s: %s", config.worker_id, error)
        return EXIT_DUPLICATE
    except OSError as error:
        log.error("cannot use the cache directory %s: %s", config.cache_dir, error.strerror or error)
        return EXIT_USAGE
    clean_interrupted(config.cache_dir)       # half-unpacked models of a killed predecessor

    zk = None
    clean_exit = False
    try:
        zk = connect_zookeeper(config, stop)
        if zk is None:
            return EXIT_OK
        stale = store.load()
        if stale is not None and stale[0] != zk.session_id:
            if close_stale_session(config.connection, stale):
                log.info("closed the ZooKeeper session left by this worker's previous run (0x%x)", stale[0])
        store.save(zk.session_credentials)
        registration = Registration(zk, config.worker_id)
        try:
            registration.register()
        except DuplicateWorkerError as error:
            log.error("refusing to start worker %s: %s", config.worker_id, error)
            return EXIT_DUPLICATE
        daemon = WorkerDaemon(config, zk, registration, store, capture, shipper)
        stop.daemon = daemon
        if stop.reason is not None:
            daemon.signalled = stop.reason
        code = daemon.run()
        clean_exit = code == EXIT_OK
        log.info("worker %s stopped", config.worker_id)
        return code
    except NoAuthError as error:   # missing or wrong credentials for a secured tree: a configuration problem
        log.error("%s", describe_zk_error(error))
        return EXIT_USAGE
    except KazooException as error:
        log.error("%s", describe_zk_error(error))
        return EXIT_UNEXPECTED
    finally:
        if zk is not None:
            zk.stop()   # closes the session: ZooKeeper deletes the `connected` node at once
            if clean_exit:
                store.clear()
        store.release(remove=clean_exit and not config.worker_id_given)
        if shipper is not None:
            shipper.stop(timeout=0.5)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_worker_config(argv)
    except ConfigError as error:
        print(f"run_worker.py: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.debug)
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop.handler)
    signal.signal(signal.SIGINT, stop.handler)
    try:
        return run(config, stop)
    except Exception:
        log.exception("worker %s failed unexpectedly", config.worker_id)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
