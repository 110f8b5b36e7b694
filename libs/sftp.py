"""SFTP client (paramiko): failover over servers, atomic uploads, resumable downloads.

Model archives and publisher files travel over SFTP.  Callers see one small
API and one exception family (`SftpError`); paramiko stays inside this module.

Host keys
---------
With `known_hosts` set (an OpenSSH known_hosts file; non-standard ports are
written `[host]:port`), a server whose key is missing from the file or differs
from it is refused.  Without it every host key is accepted and its fingerprint
is logged at INFO: convenient on a trusted private network, but open to a
man-in-the-middle, so production deployments should give a known_hosts file
(option or the PERO_SFTP_KNOWN_HOSTS environment variable).

Transfers
---------
* upload: remote folders are created as needed; data goes to a hidden temporary
  name in the target folder and is renamed over the target only when complete,
  so readers never see a half-written file.
* download: data goes to '<local>.part' (with '<local>.part.json' describing the
  remote file); a later download of the same, unchanged remote file continues
  from the part's size.  The size is verified before the part is renamed to
  `local`.  A connection lost mid-transfer is retried on the next server.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import socket
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from pero_worker.libs import zk_paths
from pero_worker.libs.addresses import DEFAULT_PORTS, Address, parse_address
from pero_worker.libs.backoff import Backoff
from pero_worker.libs.config import ConnectionConfig

if TYPE_CHECKING:
    from pero_worker.libs.zk import ZooKeeper

log = logging.getLogger(__name__)

KNOWN_HOSTS_ENV = "PERO_SFTP_KNOWN_HOSTS"
Progress = Callable[[int, int], None]
_CHUNK = 256 * 1024


class SftpError(Exception):
    """An SFTP operation failed; the message says which server/file and why."""


class SftpConnectError(SftpError):
    """No SFTP server could be used (unreachable, refused, bad host key, or authentication failed)."""


class SftpAuthError(SftpConnectError):
    """Every reachable SFTP server refused our user name / password."""


class SftpNotFoundError(SftpError):
    """The remote file or folder does not exist."""


@dataclass(frozen=True)
class SftpSettings:
    servers: tuple[Address, ...]
    username: str | None
    password: str | None = field(default=None, repr=False)
    known_hosts: str | None = None
    timeout: float = 15.0

    @classmethod
    def from_zookeeper(cls, zk: ZooKeeper, conn: ConnectionConfig, *,
                       known_hosts: str | None = None) -> SftpSettings:
        """Servers from /pero/worker/config/ftp_servers children; credentials from the connection config.

        Child names are untrusted text: bad entries are logged and skipped.
        """
        servers: list[Address] = []
        for child in zk.children(zk_paths.FTP_SERVERS):
            try:
                address = parse_address(child, DEFAULT_PORTS["sftp"])
            except ValueError as error:
                log.warning("ignoring bad SFTP server entry in ZooKeeper %s: %s", zk_paths.FTP_SERVERS, error)
                continue
            if address not in servers:
                servers.append(address)
        if not servers:
            raise SftpConnectError(f"no SFTP servers configured in ZooKeeper ({zk_paths.FTP_SERVERS} has no "
                                   "valid children; add them with scripts/server_config_manager.py --add-ftp-servers)")
        return cls(servers=tuple(servers), username=conn.username, password=conn.password,
                   known_hosts=known_hosts or conn.known_hosts or os.environ.get(KNOWN_HOSTS_ENV) or None)


class _LoggingAcceptPolicy(paramiko.MissingHostKeyPolicy):
    """Accept unknown host keys (no known_hosts file given), but leave a trace of them."""

    def missing_host_key(self, client, hostname, key):  # noqa: D401 - paramiko interface
        log.info("accepting SFTP host key of %s without verification (no known_hosts file given): %s %s",
                 hostname, key.get_name(), key.fingerprint)


def _describe_connect_error(error: BaseException) -> tuple[str, bool]:
    """Operator-readable reason and whether it was an authentication failure."""
    if isinstance(error, paramiko.BadHostKeyException):
        return (f"host key mismatch (server sent {error.key.get_name()} {error.key.fingerprint}, known_hosts "
                f"expects {error.expected_key.fingerprint}: possible man-in-the-middle or re-installed server)"), False
    if isinstance(error, paramiko.AuthenticationException):
        return f"authentication failed ({error})", True
    if isinstance(error, paramiko.SSHException) and "not found in known_hosts" in str(error):
        return "host key not in the known_hosts file", False
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused (no SSH server listening?)", False
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out", False
    if isinstance(error, socket.gaierror):
        return f"cannot resolve host name ({error.strerror})", False
    if isinstance(error, OSError):
        return error.strerror or str(error), False
    return str(error) or type(error).__name__, False


def _is_missing(error: OSError) -> bool:
    return isinstance(error, FileNotFoundError) or error.errno == errno.ENOENT


class SftpClient:
    """One SFTP session on the first server of the list that works.

    Use as a context manager.  Not thread-safe: one client per thread.
    """

    def __init__(self, settings: SftpSettings, *, retries: int = 3) -> None:
        if not settings.servers:
            raise SftpConnectError("no SFTP servers given")
        self.settings = settings
        self.retries = retries
        self._ssh: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.server: Address | None = None

    # --- connection -----------------------------------------------------------

    def __enter__(self) -> SftpClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect(self) -> None:
        """Open a session on the first usable server (in list order); SftpConnectError lists every failure."""
        self.close()
        failures: list[str] = []
        auth_failures = 0
        for server in self.settings.servers:
            ssh = paramiko.SSHClient()
            if self.settings.known_hosts:
                try:
                    ssh.load_host_keys(self.settings.known_hosts)
                except OSError as error:
                    raise SftpConnectError(f"cannot read known_hosts file {self.settings.known_hosts}: "
                                           f"{error.strerror}") from None
                ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
            else:
                ssh.set_missing_host_key_policy(_LoggingAcceptPolicy())
            try:
                ssh.connect(server.host, server.port, username=self.settings.username,
                            password=self.settings.password, timeout=self.settings.timeout,
                            banner_timeout=self.settings.timeout, auth_timeout=self.settings.timeout,
                            allow_agent=False, look_for_keys=False)
                sftp = ssh.open_sftp()
            except Exception as error:  # paramiko raises socket, SSH and EOF errors
                ssh.close()
                reason, is_auth = _describe_connect_error(error)
                auth_failures += is_auth
                failures.append(f"{server}: {reason}")
                log.warning("SFTP server %s unusable: %s", server, reason)
                continue
            sftp.get_channel().settimeout(self.settings.timeout * 4)
            self._ssh, self._sftp, self.server = ssh, sftp, server
            log.debug("SFTP session open on %s as %s", server, self.settings.username)
            return
        user = self.settings.username or "(no user)"
        message = f"cannot use any SFTP server as {user}: " + "; ".join(failures)
        if auth_failures and auth_failures == len(failures):
            raise SftpAuthError(message)
        raise SftpConnectError(message)

    def close(self) -> None:
        for closable in (self._sftp, self._ssh):
            if closable is not None:
                try:
                    closable.close()
                except Exception:  # closing a dead session may fail; nothing to do about it
                    pass
        self._sftp = self._ssh = None
        self.server = None

    def _session(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self.connect()
        assert self._sftp is not None
        return self._sftp

    def _connection_alive(self) -> bool:
        transport = self._ssh.get_transport() if self._ssh is not None else None
        return transport is not None and transport.is_active()

    def _run(self, what: str, operation: Callable[[paramiko.SFTPClient], object]) -> object:
        """Run an idempotent operation, reconnecting (failover) when the connection breaks under it.

        Server-side errors (no such file, permission denied) come back as
        SftpError at once; only a dead connection is retried.
        """
        attempt = 0
        backoff = Backoff(initial=0.2, cap=1.0)   # the first reconnect is at once (failover), later ones spaced
        while True:
            attempt += 1
            if attempt > 2:
                time.sleep(backoff.delay())
            sftp = self._session()
            try:
                return operation(sftp)
            except SftpError:
                raise
            except Exception as error:
                if self._connection_alive() and isinstance(error, OSError) and not isinstance(error, socket.timeout):
                    if _is_missing(error):
                        raise SftpNotFoundError(f"{what}: no such file or folder on {self.server}") from None
                    reason = error.strerror or str(error) or type(error).__name__
                    raise SftpError(f"{what} failed on {self.server}: {reason}") from None
                server = self.server
                log.warning("SFTP connection to %s lost during %s (%s); reconnecting", server, what,
                            error or type(error).__name__)
                self.close()
                if attempt > self.retries:
                    raise SftpConnectError(f"{what}: connection to SFTP server {server} lost "
                                           f"{attempt} times ({error or type(error).__name__})") from None

    # --- simple operations ----------------------------------------------------

    def exists(self, remote: str) -> bool:
        def op(sftp: paramiko.SFTPClient) -> bool:
            try:
                sftp.stat(remote)
            except OSError as error:
                if _is_missing(error):
                    return False
                raise
            return True
        return bool(self._run(f"stat {remote}", op))

    def size(self, remote: str) -> int:
        return int(self._run(f"stat {remote}", lambda sftp: sftp.stat(remote).st_size or 0))

    def listdir(self, remote: str = ".") -> list[str]:
        return sorted(self._run(f"list {remote}", lambda sftp: sftp.listdir(remote)))  # type: ignore[arg-type]

    def remove(self, remote: str, *, missing_ok: bool = False) -> None:
        def op(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.remove(remote)
            except OSError as error:
                if missing_ok and _is_missing(error):
                    return
                raise
        self._run(f"remove {remote}", op)

    def makedirs(self, remote_dir: str) -> None:
        """mkdir -p; relative paths are relative to the login (home / chroot) folder."""
        def op(sftp: paramiko.SFTPClient) -> None:
            current = "/" if remote_dir.startswith("/") else ""
            for part in [p for p in remote_dir.split("/") if p not in ("", ".")]:
                current = posixpath.join(current, part) if current else part
                try:
                    attributes = sftp.stat(current)
                except OSError as error:
                    if not _is_missing(error):
                        raise
                    try:
                        sftp.mkdir(current)
                    except OSError:
                        if not stat.S_ISDIR(sftp.stat(current).st_mode or 0):  # lost a race: fine if it is a folder
                            raise
                    continue
                if not stat.S_ISDIR(attributes.st_mode or 0):
                    raise SftpError(f"cannot create folder {remote_dir}: {current} is a file on {self.server}")
        self._run(f"mkdir {remote_dir}", op)

    def read_bytes(self, remote: str, max_bytes: int = 1024 * 1024) -> bytes:
        """A small remote file's content (checksum files); refuses files larger than max_bytes."""
        def op(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(remote, "rb") as handle:
                data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise SftpError(f"{remote} on {self.server} is larger than {max_bytes} bytes")
            return data
        return bytes(self._run(f"read {remote}", op))  # type: ignore[arg-type]

    # --- transfers ------------------------------------------------------------

    def upload(self, local: str | os.PathLike[str], remote: str, progress: Progress | None = None) -> int:
        """Upload a file atomically (temporary name, then rename over `remote`); returns its size."""
        local = Path(local)
        try:
            total = local.stat().st_size
        except OSError as error:
            raise SftpError(f"cannot read local file {local}: {error.strerror}") from None
        remote_dir, remote_name = posixpath.split(remote)
        if not remote_name:
            raise SftpError(f"remote path {remote!r} names a folder, not a file")
        if remote_dir:
            self.makedirs(remote_dir)
        temporary = posixpath.join(remote_dir, f".{remote_name}.upload-{uuid.uuid4().hex[:12]}")

        def op(sftp: paramiko.SFTPClient) -> int:
            done = 0
            try:
                with open(local, "rb") as source, sftp.open(temporary, "wb") as target:
                    target.set_pipelined(True)
                    while True:
                        chunk = source.read(_CHUNK)
                        if not chunk:
                            break
                        target.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
                written = sftp.stat(temporary).st_size
                if written != done:
                    raise SftpError(f"upload of {remote} to {self.server} incomplete: {written} of {done} bytes")
                try:
                    sftp.posix_rename(temporary, remote)
                except OSError:
                    # Server without the posix-rename extension: plain SFTP rename refuses to overwrite.
                    try:
                        sftp.remove(remote)
                    except OSError:
                        pass
                    sftp.rename(temporary, remote)
            except BaseException:
                if self._connection_alive():
                    try:
                        sftp.remove(temporary)
                    except OSError:
                        pass
                raise
            return done
        return int(self._run(f"upload {local} -> {remote}", op))  # type: ignore[arg-type]

    def download(self, remote: str, local: str | os.PathLike[str], progress: Progress | None = None) -> int:
        """Download `remote` to `local`, resuming an earlier '<local>.part' of the same remote file.

        Returns the size.  `local` appears only complete (renamed from the part file).
        """
        local = Path(local)
        part = local.with_name(local.name + ".part")
        meta = local.with_name(local.name + ".part.json")
        local.parent.mkdir(parents=True, exist_ok=True)

        def op(sftp: paramiko.SFTPClient) -> int:
            attributes = sftp.stat(remote)
            if attributes.st_mode is not None and stat.S_ISDIR(attributes.st_mode):
                raise SftpError(f"{remote} on {self.server} is a folder, not a file")
            total = attributes.st_size or 0
            identity = {"remote": remote, "size": total, "mtime": attributes.st_mtime}
            offset = _resume_offset(part, meta, identity)
            try:
                if offset == 0:
                    meta.write_text(json.dumps(identity), encoding="utf-8")
                target = open(part, "r+b" if offset else "wb")
            except OSError as error:
                raise SftpError(f"cannot write {part}: {error.strerror}") from None
            with sftp.open(remote, "rb") as source, target:
                target.seek(offset)
                target.truncate()
                source.seek(offset)
                source.prefetch(total)
                done = offset
                if progress is not None:
                    progress(done, total)
                while done < total:
                    chunk = source.read(min(_CHUNK, total - done))
                    if not chunk:
                        break
                    _write_local(target, chunk, part)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                _write_local(target, b"", part, sync=True)
            if done != total or part.stat().st_size != total:
                raise SftpError(f"download of {remote} from {self.server} incomplete: {done} of {total} bytes "
                                "(file changed on the server?)")
            os.replace(part, local)
            meta.unlink(missing_ok=True)
            return total
        return int(self._run(f"download {remote}", op))  # type: ignore[arg-type]


def _write_local(handle, data: bytes, path: Path, *, sync: bool = False) -> None:
    """Local disk errors are ours, not the server's: report them as such (and never retry them)."""
    try:
        if data:
            handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise SftpError(f"cannot write {path}: {error.strerror}") from None


def _resume_offset(part: Path, meta: Path, identity: dict) -> int:
    """Bytes already downloaded into `part` for this very remote file (same path, size, mtime), else 0."""
    try:
        previous = json.loads(meta.read_text(encoding="utf-8"))
        size = part.stat().st_size
    except (OSError, ValueError):
        return 0
    if previous != identity or size > identity["size"]:
        return 0
    return size


def remove_partial_downloads(paths: Iterable[Path]) -> None:
    """Delete '.part' leftovers (and their descriptions) of the given local targets."""
    for path in paths:
        for leftover in (path.with_name(path.name + ".part"), path.with_name(path.name + ".part.json")):
            leftover.unlink(missing_ok=True)


__all__ = [
    "SftpSettings", "SftpClient", "SftpError", "SftpConnectError", "SftpAuthError", "SftpNotFoundError",
    "KNOWN_HOSTS_ENV", "remove_partial_downloads",
]
