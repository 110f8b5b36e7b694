"""Local cache of stage models: download once per (stage, version), verify, unpack safely, prune.

Layout under the cache root (stage and version names are untrusted text, so
every folder name is sanitised; odd names get a hash suffix so that two
different names never share a folder):

    <root>/<stage>/<version>~<key>/model/      the unpacked archive; its existence means "complete"
    <root>/<stage>/<version>~<key>/source.json where it came from (remote path, size, sha256, time)
    <root>/<stage>/downloads/<version>~<key>.archive[.part]   the download (resumable across restarts)
    <root>/<stage>/.lock                       flock: one process fills a stage's cache at a time

`<key>` hashes (version, remote path): a stage whose archive path changes
without a version bump is still fetched again.  The model folder is created by
an atomic rename (libs/archive.safe_extract), so a crash at any point leaves
either a complete model or nothing that looks like one.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pero_worker.libs import archive as archive_lib
from pero_worker.libs.safe_names import is_reserved, safe_file_name

if TYPE_CHECKING:
    from pero_worker.libs.sftp import SftpClient

log = logging.getLogger(__name__)

KEEP_VERSIONS = 2
CHECKSUM_SUFFIX = ".sha256"
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

Progress = Callable[[int, int], None]


class ModelCacheError(Exception):
    """The stage's model could not be provided; the message is for the operator.

    `transient` is True when trying again later may help (SFTP unreachable,
    transfer broken, local disk full) and False when the stage's configuration
    itself is wrong (archive missing on SFTP, checksum mismatch, unsafe or corrupt archive).
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class CachedModel:
    path: Path       # the unpacked model folder (empty for stages without a model archive)
    fetched: bool    # True when it was downloaded and unpacked by this call
    seconds: float   # time spent downloading + verifying + unpacking (0.0 when served from the cache)
    bytes: int = 0   # size of the downloaded archive
    download_seconds: float = 0.0   # of `seconds`: the SFTP download ...
    unpack_seconds: float = 0.0     # ... and the checksum + unpacking


def folder_name(name: str) -> str:
    """A folder name for an untrusted stage or version name (pure).

    Plain names ('ocr_cz', '2024-01-05.1') stay readable as they are; anything
    else is sanitised and suffixed with a hash of the original, so that
    different names can never map to the same folder.
    """
    if _PLAIN.fullmatch(name) and not is_reserved(name) and name not in (".", ".."):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{safe_file_name(name, default='_', max_bytes=60)}~{digest}"


def version_key(version: str, remote_path: str) -> str:
    """Folder name of one cached (version, archive path) pair (pure)."""
    digest = hashlib.sha256(f"{version}\x00{remote_path}".encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{folder_name(version)}~{digest}"


def parse_checksum_file(text: str) -> str:
    """The hex digest of a `sha256sum` style file ('<hex>  <name>' or just '<hex>'); ValueError otherwise."""
    token = text.strip().split()[0] if text.strip() else ""
    if not _SHA256.fullmatch(token):
        raise ValueError("not a sha256 checksum file (expected 64 hex digits first)")
    return token.lower()


def versions_to_prune(entries: list[tuple[str, float]], current: str, keep: int = KEEP_VERSIONS) -> list[str]:
    """Which version folders to delete (pure): all but the current one and the most recently used others,
    `keep` folders in total.  entries: (folder name, last-use time)."""
    others = sorted((e for e in entries if e[0] != current), key=lambda e: e[1], reverse=True)
    return [name for name, _ in others[max(keep - 1, 0):]]


class _LoggedProgress:
    """Default download progress: a log line every 10 % (a model download can take minutes)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.next_percent = 10

    def __call__(self, done: int, total: int) -> None:
        if total <= 0:
            return
        percent = done * 100 // total
        if percent >= self.next_percent and done < total:
            log.info("downloading %s: %d %% of %d bytes", self.what, percent, total)
            self.next_percent = (percent // 10 + 1) * 10


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def clean_interrupted(root: str | os.PathLike[str]) -> list[Path]:
    """Remove what unpacking left behind when a worker was killed mid-way (run at worker start).

    A model folder appears only by an atomic rename, so a killed extraction
    leaves a hidden `.model.unpack-*` folder (possibly gigabytes) and a version
    folder without `model/`: both are deleted.  A stage whose lock another
    process holds is filling right now and is left alone.  Returns what was removed.
    """
    removed: list[Path] = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for stage_dir in root.iterdir():
        if stage_dir.name.startswith(".") or stage_dir.is_symlink() or not stage_dir.is_dir():
            continue
        with open(stage_dir / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            try:
                for version_dir in stage_dir.iterdir():
                    if version_dir.name in ("downloads", ".lock") or version_dir.is_symlink() \
                            or not version_dir.is_dir():
                        continue
                    for leftover in version_dir.iterdir():
                        if archive_lib.is_temporary(leftover.name):
                            shutil.rmtree(leftover, ignore_errors=True)
                            removed.append(leftover)
                    if not (version_dir / "model").is_dir():
                        shutil.rmtree(version_dir, ignore_errors=True)
                        removed.append(version_dir)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    for path in removed:
        log.info("removed %s, left by an unpack that was interrupted", path)
    return removed


class ModelCache:
    """Models of the stages this worker processes, kept under `root` across restarts."""

    def __init__(self, root: str | os.PathLike[str], *, keep_versions: int = KEEP_VERSIONS) -> None:
        self.root = Path(root)
        self.keep_versions = keep_versions
        self.root.mkdir(parents=True, exist_ok=True)

    def stage_dir(self, stage: str) -> Path:
        return self.root / folder_name(stage)

    def model_dir(self, stage: str, version: str, remote_path: str | None) -> Path:
        return self.stage_dir(stage) / version_key(version, remote_path or "") / "model"

    def is_cached(self, stage: str, version: str, remote_path: str | None) -> bool:
        return self.model_dir(stage, version, remote_path).is_dir()

    @contextlib.contextmanager
    def _locked(self, stage_dir: Path) -> Iterator[None]:
        stage_dir.mkdir(parents=True, exist_ok=True)
        with open(stage_dir / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get(self, stage: str, version: str, remote_path: str | None,
            sftp_factory: Callable[[], SftpClient], *, progress: Progress | None = None) -> CachedModel:
        """The unpacked model folder of (stage, version); downloads and unpacks it on first use.

        `remote_path` is the stage's `config_path` ('' or None: the stage has no
        files and gets an empty folder).  `sftp_factory()` returns an unconnected
        SftpClient; it is only called when a download is needed.  `progress(done, total)`
        follows the download (default: a log line every 10 %).  Raises ModelCacheError.
        """
        stage_dir = self.stage_dir(stage)
        key = version_key(version, remote_path or "")
        version_dir = stage_dir / key
        model_dir = version_dir / "model"
        try:
            with self._locked(stage_dir):
                if model_dir.is_dir():
                    os.utime(version_dir)          # last use: pruning keeps recently used versions
                    result = CachedModel(model_dir, fetched=False, seconds=0.0)
                elif not remote_path:
                    model_dir.mkdir(parents=True, exist_ok=True)
                    result = CachedModel(model_dir, fetched=False, seconds=0.0)
                else:
                    result = self._fetch(stage, version, remote_path, stage_dir, key, sftp_factory, progress)
                self._prune(stage_dir, key)
        except OSError as error:
            raise ModelCacheError(f"model cache {self.root}: {error.strerror or error} "
                                  f"({getattr(error, 'filename', '') or ''})", transient=True) from None
        return result

    def _fetch(self, stage: str, version: str, remote_path: str, stage_dir: Path, key: str,
               sftp_factory: Callable[[], SftpClient], progress: Progress | None) -> CachedModel:
        from pero_worker.libs.sftp import (  # lazy: paramiko
            SftpAuthError,
            SftpConnectError,
            SftpError,
            SftpNotFoundError,
        )

        started = time.monotonic()
        downloads = stage_dir / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        archive_path = downloads / f"{key}.archive"
        version_dir = stage_dir / key
        what = f"model archive {remote_path!r} of stage {stage!r} (version {version!r})"
        log.info("fetching %s", what)
        try:
            with sftp_factory() as sftp:
                expected_sha = self._remote_checksum(sftp, remote_path)
                size = sftp.download(remote_path, archive_path, progress=progress or _LoggedProgress(remote_path))
        except SftpNotFoundError:
            raise ModelCacheError(f"{what} not found on the SFTP server", transient=False) from None
        except SftpAuthError as error:   # retrying a refused login every few seconds helps nobody
            raise ModelCacheError(f"cannot fetch {what}: {error}", transient=False) from None
        except SftpConnectError as error:
            raise ModelCacheError(f"cannot fetch {what}: {error}", transient=True) from None
        except SftpError as error:
            raise ModelCacheError(f"cannot fetch {what}: {error}", transient=True) from None
        downloaded = time.monotonic()
        try:
            if expected_sha is not None:
                actual = _sha256_file(archive_path)
                if actual != expected_sha:
                    raise ModelCacheError(f"{what}: sha256 mismatch (got {actual}, {remote_path}{CHECKSUM_SUFFIX} "
                                          f"says {expected_sha})", transient=False)
            # Leftovers of an extraction interrupted by a crash.
            for leftover in archive_lib.temporary_siblings(version_dir / "model"):
                shutil.rmtree(leftover, ignore_errors=True)
            try:
                stats = archive_lib.safe_extract(archive_path, version_dir / "model")
            except archive_lib.ArchiveError as error:
                raise ModelCacheError(f"{what}: {error}", transient=False) from None
        except BaseException:
            if not (version_dir / "model").is_dir():
                shutil.rmtree(version_dir, ignore_errors=True)
            raise
        finally:
            archive_path.unlink(missing_ok=True)   # verified and unpacked, or unusable: never kept
        seconds = time.monotonic() - started
        source = {
            "stage": stage, "version": version, "remote_path": remote_path, "size": size,
            "sha256": expected_sha, "members": stats.members, "unpacked_bytes": stats.bytes,
            "fetched_at": datetime.now(timezone.utc).isoformat(), "seconds": round(seconds, 3),
        }
        (version_dir / "source.json").write_text(json.dumps(source, indent=1), encoding="utf-8")
        log.info("stage %r version %r ready: %d bytes downloaded in %.1f s, %d files unpacked in %.1f s",
                 stage, version, size, downloaded - started, stats.members, time.monotonic() - downloaded)
        return CachedModel(version_dir / "model", fetched=True, seconds=seconds, bytes=size,
                           download_seconds=downloaded - started, unpack_seconds=time.monotonic() - downloaded)

    @staticmethod
    def _remote_checksum(sftp: SftpClient, remote_path: str) -> str | None:
        from pero_worker.libs.sftp import SftpNotFoundError

        checksum_path = remote_path + CHECKSUM_SUFFIX
        try:
            text = sftp.read_bytes(checksum_path, max_bytes=4096).decode("ascii", "replace")
        except SftpNotFoundError:
            return None
        try:
            return parse_checksum_file(text)
        except ValueError as error:
            raise ModelCacheError(f"{checksum_path}: {error}", transient=False) from None

    def _prune(self, stage_dir: Path, current: str) -> None:
        entries = []
        for entry in stage_dir.iterdir():
            if entry.is_dir() and entry.name != "downloads" and not entry.name.startswith("."):
                entries.append((entry.name, entry.stat().st_mtime))
        for name in versions_to_prune(entries, current, self.keep_versions):
            log.info("pruning cached model %s", stage_dir / name)
            shutil.rmtree(stage_dir / name, ignore_errors=True)
        downloads = stage_dir / "downloads"
        if downloads.is_dir():
            for leftover in downloads.iterdir():
                # Partial downloads of versions we no longer need.
                if not leftover.name.startswith(current + "."):
                    leftover.unlink(missing_ok=True)


__all__ = ["ModelCache", "CachedModel", "ModelCacheError", "clean_interrupted", "folder_name", "version_key",
           "parse_checksum_file", "versions_to_prune", "KEEP_VERSIONS"]
