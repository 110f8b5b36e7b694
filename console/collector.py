"""One background thread that reads ZooKeeper and RabbitMQ about once a second and keeps the latest view.

Why a thread and not a read per request: a page then costs a template render of data in memory, whatever
the number of viewers, and ZooKeeper and the broker see one reader (the watchdog's StateReader, one
passive declare per stage) instead of one per page load.  kazoo and pika block, so the reads run in a
plain thread; the web server's event loop only swaps in the finished view.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from pero_worker.console.settings import ConsoleSettings
from pero_worker.console.view import ConsoleView, Extras, LogProblem, build_view, parse_problems
from pero_worker.libs import zk_paths
from pero_worker.libs.mq import MQError, MQSession, MQSettings
from pero_worker.libs.mq_management import ManagementClient, ManagementError
from pero_worker.libs.zk import CachedTree, KazooException, NodeReader, ZooKeeper, describe_zk_error
from pero_worker.log_daemon.rotation import parse_log_file_name
from pero_worker.tools.dead_letters import DeadLetter, DeadLetterQueue, Selection
from pero_worker.watchdog.planning import PlannerSettings, plan
from pero_worker.watchdog.settings import ELECTION_PATH
from pero_worker.watchdog.state import StateReader

log = logging.getLogger(__name__)

WORKER_CONNECTION_PREFIX = "pero-worker "   # worker/daemon.py names its AMQP connection so
SLOW_INTERVAL = 5.0                         # connections (hosts), dead-letter peek, log files
DEAD_LETTERS_SHOWN = 20
LOG_TAIL_BYTES = 256 * 1024


def newest_log_file(folder: Path) -> Path | None:
    try:
        dated = [(created, entry) for entry in folder.iterdir()
                 if (created := parse_log_file_name(entry.name)) is not None]
    except OSError:
        return None
    return max(dated)[1] if dated else None


def read_problems(folder: Path) -> list[LogProblem]:
    """WARNING and worse lines of the end of the log daemon's current file."""
    path = newest_log_file(folder)
    if path is None:
        return []
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - LOG_TAIL_BYTES))
        text = handle.read().decode("utf-8", "replace")
    lines = text.splitlines()
    if size > LOG_TAIL_BYTES:
        lines = lines[1:]   # the first line is cut
    return parse_problems(lines)


class Collector:
    """Owns the console's reading connections; `view` is the latest ConsoleView (None before the first)."""

    def __init__(self, settings: ConsoleSettings, zk: ZooKeeper) -> None:
        self.settings = settings
        self.zk = zk
        # The console reads every node once a second: it follows the tree with watches instead (load()).
        self.tree = CachedTree(zk, zk_paths.ROOT)
        self.reader = StateReader(zk, settings.connection)
        self.view: ConsoleView | None = None
        self.rounds = 0
        self._loaded = False
        self._failing = False
        self.last_round_s = 0.0   # how long the last read of ZooKeeper and RabbitMQ took (shown on the page)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-collector", daemon=True)
        self._session: MQSession | None = None
        self._management: ManagementClient | None = None
        self._slow_at = 0.0
        self._hosts: dict[str, str] = {}
        self._letters: tuple[DeadLetter, ...] = ()
        self._problems: tuple[LogProblem, ...] = ()
        self._slow_errors: tuple[str, ...] = ()

    def load(self) -> None:
        """Load ZooKeeper's tree into memory (ZkConnectionError when that fails).

        Not before the tree exists: kazoo's TreeCache would create its root, and the console writes nothing
        on its own.  Until then (an empty deployment) the reads go to ZooKeeper directly."""
        if self._loaded or not self.zk.exists(zk_paths.ROOT):
            return
        self.tree.start()
        self._loaded = True
        self.reader.close()
        self.reader = StateReader(self.tree, self.settings.connection)

    @property
    def nodes(self) -> NodeReader:
        return self.tree if self._loaded else self.zk

    def start(self) -> None:
        self.load()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.reader.close()
        self.tree.close()
        if self._session is not None:
            self._session.close()
        if self._management is not None:
            self._management.close()

    def refresh_soon(self) -> None:
        """After an action: read again now, and the slow parts too."""
        self._slow_at = 0.0
        self._wake.set()

    def wait_for_round(self, after: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.rounds <= after and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.rounds > after

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.view = self.collect(time.time())
                self.last_round_s = time.monotonic() - started
                if self._failing:
                    log.info("reading ZooKeeper and RabbitMQ works again")
                self._failing = False
            except KazooException as error:
                if not self._failing:   # once per outage, not once a second
                    log.warning("reading ZooKeeper failed: %s; the page shows the last figures read",
                                describe_zk_error(error))
                self._failing = True
            except Exception:   # the page keeps the last view; the log has the bug
                log.exception("collecting the console's view failed")
            self.rounds += 1
            self._wake.wait(max(0.0, self.settings.refresh - (time.monotonic() - started)))
            self._wake.clear()

    def collect(self, now: float) -> ConsoleView:
        self.load()
        snapshot = self.reader.snapshot(now)
        planned = plan(snapshot.worker_views, snapshot.stage_views, now, PlannerSettings())
        errors: list[str] = []
        depth = self._dead_letter_depth(errors)
        if time.monotonic() >= self._slow_at:
            self._read_slow(depth)
            self._slow_at = time.monotonic() + SLOW_INTERVAL
        uptimes = {r.view.worker_id: r.connected_since for r in snapshot.workers if r.connected_since is not None}
        contenders = self.zk.election(ELECTION_PATH, "console").contenders() if self.nodes.exists(ELECTION_PATH) \
            else []
        if not snapshot.depth_source:
            errors.append("RabbitMQ unreachable: queue depths unknown")
        extras = Extras(uptimes=uptimes, hosts=self._hosts, contenders=tuple(contenders),
                        dead_letter_depth=depth, dead_letters=self._letters, problems=self._problems,
                        errors=tuple(errors) + self._slow_errors)
        return build_view(snapshot, planned, extras)

    def _mq(self) -> MQSession:
        if self._session is None or not self._session.is_open:
            self._session = MQSession(MQSettings.from_zookeeper(self.nodes, self.settings.connection),
                                      name="pero-console")
            self._session.open(retry_for=0)
        return self._session

    def _dead_letter_depth(self, errors: list[str]) -> int | None:
        try:
            return DeadLetterQueue(self._mq(), self.settings.dead_letter_queue).depth()
        except MQError as error:
            self._session = None
            errors.append(f"dead-letter queue unreadable: {error}")
            return None

    def _read_slow(self, depth: int | None) -> None:
        errors: list[str] = []
        try:
            if self._management is None:
                self._management = ManagementClient.from_zookeeper(self.nodes, self.settings.connection)
            hosts = {}
            for entry in self._management.connections():
                name = str((entry.get("client_properties") or {}).get("connection_name") or "")
                if name.startswith(WORKER_CONNECTION_PREFIX):
                    hosts[name[len(WORKER_CONNECTION_PREFIX):]] = str(entry.get("peer_host") or "?")
            self._hosts = hosts
        except ManagementError as error:
            self._management = None
            errors.append(f"management API: {error}")
        try:
            letters: list[DeadLetter] = []
            if depth:
                queue = DeadLetterQueue(self._mq(), self.settings.dead_letter_queue)
                letters, _report = queue.read(Selection(), time.time(), limit=DEAD_LETTERS_SHOWN)
            self._letters = tuple(letters)
        except Exception as error:   # a peek that fails keeps the last list (CliError, MQError)
            errors.append(f"dead letters: {error}")
        if self.settings.log_dir is not None:
            try:
                self._problems = tuple(read_problems(self.settings.log_dir))
            except OSError as error:
                errors.append(f"log folder {self.settings.log_dir}: {error.strerror}")
        self._slow_errors = tuple(errors)
