"""A daemon's ZooKeeper session kept on disk, so that a restart after a crash does not wait for it to expire.

A killed daemon's session lives on in ZooKeeper until its timeout, and so do its
ephemeral nodes (a worker's `connected` node, the active watchdog's election node):
a restarted worker would look like a live duplicate, a restarted watchdog would wait
seconds for its dead predecessor to be voted out.  So a daemon saves its session id
and password in a file (mode 0600) and holds an exclusive lock next to it for as long
as it runs.  On start it takes the lock (held: a live process owns this file) and
closes the session recorded there, if any: the lock being free proves its owner is
dead, and closing the session makes ZooKeeper delete its ephemeral nodes at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from pero_worker.libs.config import ConnectionConfig
from pero_worker.libs.zk import ZkConnectionError, ZooKeeper

log = logging.getLogger(__name__)


class SessionFileBusy(Exception):
    """Another live process holds this session file's lock; the message names the pid when known."""


class SessionFile:
    """`<directory>/<name>.lock` (held while the process lives) and `<name>.session` (its ZooKeeper session)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = Path(directory)
        self.lock_path = self.directory / f"{name}.lock"
        self.session_path = self.directory / f"{name}.session"
        self._lock_fd: int | None = None

    def acquire(self) -> None:
        """Take the lock for the life of this process (SessionFileBusy when another process holds it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise SessionFileBusy(f"{self.lock_path} is held by another process"
                                  + (f" (pid {holder})" if holder else "")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self, *, remove: bool = False) -> None:
        """remove=True for one-off names: nobody will look for this lock again."""
        if self._lock_fd is not None:
            if remove:
                with contextlib.suppress(OSError):
                    self.lock_path.unlink()
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> tuple[int, bytes] | None:
        try:
            text = self.session_path.read_text(encoding="ascii").split()
            return int(text[0], 16), bytes.fromhex(text[1])
        except (OSError, ValueError, IndexError):
            return None

    def save(self, credentials: tuple[int, bytes] | None) -> None:
        if credentials is None:
            return
        session_id, password = credentials
        temporary = self.session_path.with_suffix(".session.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(f"{session_id:x} {password.hex()}\n")
        os.replace(temporary, self.session_path)

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            self.session_path.unlink()


def close_stale_session(config: ConnectionConfig, credentials: tuple[int, bytes], *, timeout: float = 5.0) -> bool:
    """Close a dead predecessor's ZooKeeper session so its ephemeral nodes go now, not after the timeout.

    Returns True when the session was still alive and is now closed.  An
    expired session is simply gone: kazoo then opens (and we close) a fresh one.
    """
    session = ZooKeeper(config, timeout=timeout, client_id=credentials)
    try:
        session.start()
    except ZkConnectionError as error:
        log.debug("could not resume the previous session: %s", error)
        return False
    resumed = session.session_id == credentials[0]
    session.stop()
    return resumed


__all__ = ["SessionFile", "SessionFileBusy", "close_stale_session"]
