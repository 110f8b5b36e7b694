"""The downloader's de-duplication index: keys of requests completely on disk, kept in SQLite.

Why on disk: `publisher.py --download --keep-running` runs for months; a set of
every key ever downloaded grew by ~0.2 KB per request (gigabytes over millions
of pages).  SQLite (standard library) keeps the keys in a B-tree file with a
bounded page cache, so the process stays flat however many requests it sees,
and a lookup is one indexed read.

The index is also the commit record of the download folder: a batch's keys are
inserted in one transaction only after its folders are durable (WAL with
synchronous=FULL: a committed batch survives a crash), and a request folder
whose key is missing may be incomplete and is rewritten.

An index from before this format (`.pero_downloaded`, one key per line) is
imported once and kept as `.pero_downloaded.imported`.
"""
from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator

INDEX_FILE = ".pero_downloaded.sqlite3"
LEGACY_INDEX_FILE = ".pero_downloaded"
SIDE_FILES = ("-wal", "-shm", "-journal")
CACHE_KIB = 2048                   # SQLite page cache: the index's whole memory, however large the file


class DownloadIndexError(Exception):
    """The index cannot be used (a symbolic link, a corrupt file, a disk error); the message says which."""


def _refuse_symlink(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise DownloadIndexError(f"{path} is a symbolic link: refusing to follow it; remove it and run again")


class DownloadIndex:
    """Keys (request uuids, or hashes for odd ones) of the requests downloaded into one folder."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, INDEX_FILE)
        for path in [self.path, *(self.path + suffix for suffix in SIDE_FILES),
                     os.path.join(directory, LEGACY_INDEX_FILE)]:
            _refuse_symlink(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._db.execute("CREATE TABLE IF NOT EXISTS downloaded (key TEXT PRIMARY KEY) WITHOUT ROWID")
        except sqlite3.Error as error:
            raise DownloadIndexError(f"cannot open the download index {self.path}: {error}") from None
        self._import_legacy(os.path.join(directory, LEGACY_INDEX_FILE))

    def _import_legacy(self, legacy: str) -> None:
        if not os.path.isfile(legacy):
            return
        with open(legacy, encoding="utf-8", errors="replace") as handle:
            self.add_all(line.strip() for line in handle if line.strip())
        os.replace(legacy, legacy + ".imported")

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM downloaded WHERE key = ?", (key,)).fetchone() is not None

    def __iter__(self) -> Iterator[str]:
        for (key,) in self._db.execute("SELECT key FROM downloaded"):
            yield key

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM downloaded").fetchone()[0]

    def add_all(self, keys: Iterable[str]) -> None:
        """Record keys in one durable transaction (OSError when the disk refuses: nothing is recorded)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR IGNORE INTO downloaded (key) VALUES (?)", ((key,) for key in keys))
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise OSError(f"download index {self.path}: {error}") from None

    def close(self) -> None:
        self._db.close()


__all__ = ["DownloadIndex", "DownloadIndexError", "INDEX_FILE", "LEGACY_INDEX_FILE"]
