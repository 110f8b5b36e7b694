"""The worker's presence in ZooKeeper (docs/protocol.md §4) and the refusal of duplicate ids.

A worker is "connected" while the ephemeral node `<id>/status/connected` exists;
it belongs to the worker's ZooKeeper session.  A second live process with the
same id must be refused, but a worker restarted right after a crash must not
be: its predecessor's session lives on in ZooKeeper until it times out and
would look exactly like a live duplicate.

How the two are told apart: the worker keeps its session id and password in
its cache directory (mode 0600) and holds an exclusive lock on a file next to
it for as long as it runs.  On start it takes the lock (a live process with
this id and cache directory still holds it -> refused at once), then closes the
session recorded there, if any: that session belongs to a dead predecessor, and
closing it makes ZooKeeper delete its ephemeral nodes at once.  A `connected`
node that is still owned by another session after that belongs to a process
elsewhere (another host or cache directory): a live duplicate.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
from pathlib import Path

from pero_worker.libs import zk_paths
from pero_worker.libs.zk import NodeExistsError, NoNodeError, ZooKeeper
from pero_worker.libs.zk_session import SessionFile, SessionFileBusy, close_stale_session  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


class DuplicateWorkerError(Exception):
    """Another live worker uses this id; the message says which session or lock holds it."""


class SessionStore(SessionFile):
    """The per-id lock file and saved ZooKeeper session in the cache directory (libs/zk_session.py)."""

    def __init__(self, cache_dir: Path, worker_id: str) -> None:
        super().__init__(cache_dir / ".workers", worker_id)   # dot: never a stage folder of the model cache

    def acquire(self) -> None:
        """Take the per-id lock for the life of this process (DuplicateWorkerError when held)."""
        try:
            super().acquire()
        except SessionFileBusy as error:
            raise DuplicateWorkerError(f"another worker process with this id is running on this host ({error})") \
                from None


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class Registration:
    """The worker's nodes under /pero/worker/status/<id>."""

    def __init__(self, zk: ZooKeeper, worker_id: str) -> None:
        self.zk = zk
        self.worker_id = worker_id
        self._last_status: str | None = None

    def register(self, status: str = zk_paths.STARTING) -> None:
        """Create or refresh the worker's nodes; DuplicateWorkerError when another live session owns the id."""
        wid = self.worker_id
        # Claim the id first: a live duplicate's nodes must not be touched.
        self.zk.ensure_path(zk_paths.worker_status(wid))
        self.claim_connected()
        self.zk.set_text(zk_paths.worker_status(wid), status)
        self._last_status = status
        self._create_if_missing(zk_paths.worker_queue(wid), b"")         # keep an assignment across restarts
        self._create_if_missing(zk_paths.worker_unlock_time(wid), utc_now_iso().encode())
        self.zk.set_text(zk_paths.worker_enabled(wid), "true")

    def _create_if_missing(self, path: str, value: bytes) -> None:
        with contextlib.suppress(NodeExistsError):
            self.zk.create(path, value)

    def claim_connected(self) -> None:
        path = zk_paths.worker_connected(self.worker_id)
        own = self.zk.session_id
        for _attempt in range(3):
            try:
                self.zk.create(path, b"true", ephemeral=True)
                return
            except NodeExistsError:
                pass
            owner = self.zk.ephemeral_owner(path)
            if owner == own:
                return
            if owner is None:
                # Persistent (written by a tool) or vanished meanwhile: not a live worker's claim.
                with contextlib.suppress(NoNodeError):
                    self.zk.delete(path)
                continue
            raise DuplicateWorkerError(
                f"worker id {self.worker_id!r} is in use by another live ZooKeeper session (0x{owner:x}); "
                "if that worker has just crashed on another host, its session expires within the "
                "session timeout (about 10 s): retry then")
        raise DuplicateWorkerError(f"could not claim {path}: it keeps changing")

    def set_status(self, status: str, *, force: bool = False) -> None:
        if status == self._last_status and not force:
            return
        self.zk.set_text(zk_paths.worker_status(self.worker_id), status)
        self._last_status = status

    @property
    def status(self) -> str | None:
        return self._last_status

