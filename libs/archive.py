"""Safe unpacking of untrusted model archives (.tar.xz, .tar.gz, .tgz, .tar.bz2, .tar, .zip).

A stage's model archive comes from SFTP and is untrusted (docs/protocol.md §5).
Two rules keep it harmless:

* every member is judged by the pure function `check_member` (plus the
  archive-wide `check_totals` bomb limits: members, and unpacked bytes against
  `size_budget` - an absolute cap, a ratio to the archive's size and the free
  disk space - counted while the bytes stream out) and ONE bad member refuses
  the whole archive: a model is either unpacked completely or not at all;
* unpacking happens in a hidden temporary folder next to the destination that
  is renamed into place only when everything was written and synced, so a
  crash never leaves a half-unpacked folder that looks like a complete model.

We write every member ourselves instead of calling `extractall`: only plain
files and folders are ever created, with sane permissions, and the bytes really
written are counted (a member cannot lie about its size).
"""
from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Member kinds understood by check_member.
FILE = "file"
DIRECTORY = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
DEVICE = "device"
FIFO = "fifo"
OTHER = "other"

_CHUNK = 1024 * 1024


class ArchiveError(Exception):
    """The archive cannot be unpacked (corrupt, unknown format, disk error); message says why."""


class UnsafeArchiveError(ArchiveError):
    """The archive contains a member we refuse to unpack; nothing was unpacked."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Bomb limits: generous for real OCR models (a few GB, a few hundred files).

    The unpacked size is bounded three ways, checked while the bytes stream out
    (a member cannot lie about its size): an absolute cap; `max_ratio` unpacked
    bytes per archive byte (model weights compress 1-3x; a bomb of zeros 1000x;
    archives smaller than `ratio_allowance` unpacked are never refused for their
    ratio); and the free space of the destination's disk less `disk_reserve`.
    """
    max_members: int = 100_000
    max_total_bytes: int = 64 * 1024 ** 3
    max_name_length: int = 4096
    max_ratio: float = 10.0
    ratio_allowance: int = 64 * 1024 ** 2
    disk_reserve: int = 1024 ** 3


DEFAULT_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class ExtractStats:
    members: int
    bytes: int


# --- pure decisions -----------------------------------------------------------

def normalize_member_name(name: str) -> str:
    """The relative path a (valid) member lands on, '' for the archive root ('./')."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    return "/".join(parts)


def check_member(name: str, kind: str, linkname: str | None = None,
                 limits: ArchiveLimits = DEFAULT_LIMITS) -> str | None:
    """Why the member must be refused, or None when it may be unpacked.

    Only plain files and folders with relative names that stay inside the
    destination are accepted.  Links are refused outright (even ones pointing
    inside): a link unpacked first can redirect a later member out of the
    destination, and models never need them.
    """
    if not name:
        return "empty member name"
    if "\x00" in name:
        return f"member name contains a NUL byte: {name!r}"
    if len(name) > limits.max_name_length:
        return f"member name longer than {limits.max_name_length} characters: {name[:80]!r}..."
    if "\\" in name:
        return f"member name contains a backslash (ambiguous path separator): {name!r}"
    if name.startswith("/"):
        return f"absolute path: {name!r}"
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        return f"drive-qualified path: {name!r}"
    if ".." in name.split("/"):
        return f"path with '..' component: {name!r}"
    if kind == SYMLINK:
        return f"symbolic link: {name!r} -> {linkname!r}"
    if kind == HARDLINK:
        return f"hard link: {name!r} -> {linkname!r}"
    if kind == DEVICE:
        return f"device file: {name!r}"
    if kind == FIFO:
        return f"FIFO: {name!r}"
    if kind not in (FILE, DIRECTORY):
        return f"unsupported member type ({kind}): {name!r}"
    if kind == FILE and not normalize_member_name(name):
        return f"file member with an empty path: {name!r}"
    return None


@dataclass(frozen=True)
class SizeBudget:
    """How many bytes one archive may unpack to, and what sets that bound (for the refusal message)."""
    max_bytes: int
    reason: str


def size_budget(archive_bytes: int, free_bytes: int, limits: ArchiveLimits = DEFAULT_LIMITS) -> SizeBudget:
    """The unpacked-size bound of one archive: the smallest of the absolute cap, the ratio bound and the
    free disk space less the reserve (pure)."""
    by_ratio = max(limits.ratio_allowance, int(limits.max_ratio * max(archive_bytes, 0)))
    candidates = [
        SizeBudget(limits.max_total_bytes, f"the limit of {limits.max_total_bytes} bytes"),
        SizeBudget(by_ratio, f"{limits.max_ratio:g} times the {archive_bytes}-byte archive (a decompression bomb?)"),
        SizeBudget(max(free_bytes - limits.disk_reserve, 0),
                   f"the free disk space ({free_bytes} bytes, keeping {limits.disk_reserve} free)"),
    ]
    return min(candidates, key=lambda budget: budget.max_bytes)


def check_totals(member_count: int, total_bytes: int, limits: ArchiveLimits = DEFAULT_LIMITS,
                 budget: SizeBudget | None = None) -> str | None:
    """Archive-wide bomb limits, checked as members are seen and bytes are written (counts so far)."""
    if member_count > limits.max_members:
        return f"too many members (more than {limits.max_members})"
    if budget is None:
        budget = SizeBudget(limits.max_total_bytes, f"the limit of {limits.max_total_bytes} bytes")
    if total_bytes > budget.max_bytes:
        return f"unpacked size exceeds {budget.reason}"
    return None


def detect_format(header: bytes) -> str | None:
    """Archive format from the first 512 bytes: 'zip', 'tar', 'tar.gz', 'tar.xz', 'tar.bz2' or None.

    Content decides, never the file name: archives are often renamed.
    """
    if header.startswith(b"\xfd7zXZ\x00"):
        return "tar.xz"
    if header.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if header.startswith(b"BZh"):
        return "tar.bz2"
    if header.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if header[257:262] == b"ustar":
        return "tar"
    return None


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return FILE
    if member.isdir():
        return DIRECTORY
    if member.issym():
        return SYMLINK
    if member.islnk():
        return HARDLINK
    if member.ischr() or member.isblk():
        return DEVICE
    if member.isfifo():
        return FIFO
    return OTHER


def _zip_kind(info: zipfile.ZipInfo) -> str:
    """Unix type bits when the creator recorded them (many zips carry only permissions, or nothing)."""
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type == stat.S_IFLNK:
        return SYMLINK
    if file_type in (stat.S_IFCHR, stat.S_IFBLK):
        return DEVICE
    if file_type == stat.S_IFIFO:
        return FIFO
    if file_type == stat.S_IFSOCK:
        return OTHER
    return DIRECTORY if info.is_dir() or file_type == stat.S_IFDIR else FILE


# --- extraction ---------------------------------------------------------------

@dataclass
class _Member:
    name: str
    kind: str
    linkname: str | None
    size: int
    mode: int


def _file_mode(mode: int) -> int:
    """Owner can always read/write; keep only the execute bits; never setuid/setgid/sticky."""
    return 0o644 | (mode & 0o111)


class _Writer:
    """Writes accepted members under a root folder, counting the bytes really written."""

    def __init__(self, root: Path, limits: ArchiveLimits, budget: SizeBudget) -> None:
        self.root = root
        self.limits = limits
        self.budget = budget
        self.members = 0
        self.bytes = 0

    def admit(self, member: _Member) -> None:
        reason = check_member(member.name, member.kind, member.linkname, self.limits)
        if reason is None:
            self.members += 1
            reason = check_totals(self.members, self.bytes + max(member.size, 0), self.limits, self.budget)
        if reason is not None:
            raise UnsafeArchiveError(f"refusing archive: {reason}")

    def target(self, name: str) -> Path:
        relative = normalize_member_name(name)
        target = self.root / relative if relative else self.root
        # Belt and braces: check_member already guarantees this.
        if os.path.commonpath([self.root, target]) != str(self.root):
            raise UnsafeArchiveError(f"refusing archive: member {name!r} escapes the destination")
        return target

    def directory(self, member: _Member) -> None:
        target = self.target(member.name)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ArchiveError(f"cannot create folder {member.name!r}: {error.strerror or error}") from None

    def file(self, member: _Member, source: BinaryIO) -> None:
        """Copy one member; read errors (corrupt data) propagate, write errors become ArchiveError."""
        target = self.target(member.name)
        if target.is_dir():
            raise ArchiveError(f"archive member {member.name!r} is both a folder and a file")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            out = open(target, "wb")
        except OSError as error:
            raise ArchiveError(f"cannot write {member.name!r}: {error.strerror or error}") from None
        with out:
            while True:
                chunk = source.read(_CHUNK)
                if not chunk:
                    break
                self.bytes += len(chunk)
                reason = check_totals(self.members, self.bytes, self.limits, self.budget)
                if reason is not None:
                    raise UnsafeArchiveError(f"refusing archive: {reason}")
                try:
                    out.write(chunk)
                except OSError as error:
                    raise ArchiveError(f"cannot write {member.name!r}: {error.strerror or error}") from None
            try:
                out.flush()
                os.fsync(out.fileno())
                os.chmod(target, _file_mode(member.mode))
            except OSError as error:
                raise ArchiveError(f"cannot write {member.name!r}: {error.strerror or error}") from None

    def sync_directories(self) -> None:
        for folder, _dirs, _files in os.walk(self.root):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _tar_members(path: Path, writer: _Writer) -> None:
    try:
        # Stream mode ('r|*'): one pass, members checked before their data is read.
        with tarfile.open(path, mode="r|*") as archive:
            for info in archive:
                member = _Member(info.name, _tar_kind(info), info.linkname or None, info.size, info.mode)
                writer.admit(member)
                if member.kind == DIRECTORY:
                    writer.directory(member)
                else:
                    source = archive.extractfile(info)
                    if source is None:
                        raise ArchiveError(f"cannot read archive member {info.name!r}")
                    writer.file(member, source)
    except (tarfile.TarError, EOFError, OSError, ValueError, lzma.LZMAError, zlib.error) as error:
        raise ArchiveError(f"corrupt or unreadable tar archive {path.name}: {error}") from None


def _zip_members(path: Path, writer: _Writer) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            # The central directory lists everything up front: judge all members before writing any.
            declared = 0
            for index, info in enumerate(infos, start=1):
                kind = _zip_kind(info)
                reason = check_member(info.filename, kind, None, writer.limits)
                declared += info.file_size
                reason = reason or check_totals(index, declared, writer.limits, writer.budget)
                if reason is not None:
                    raise UnsafeArchiveError(f"refusing archive: {reason}")
            for info in infos:
                mode = (info.external_attr >> 16) & 0o7777 or 0o644
                member = _Member(info.filename, _zip_kind(info), None, info.file_size, mode)
                writer.admit(member)
                if member.kind == DIRECTORY:
                    writer.directory(member)
                else:
                    with archive.open(info) as source:
                        writer.file(member, source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError,
            RuntimeError, lzma.LZMAError, zlib.error) as error:
        raise ArchiveError(f"corrupt or unreadable zip archive {path.name}: {error}") from None


def _read_header(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(512)
    except OSError as error:
        raise ArchiveError(f"cannot read archive {path}: {error.strerror}") from None


def archive_format(path: str | os.PathLike[str]) -> str:
    """The archive's format by content; ArchiveError when it is not one we unpack."""
    path = Path(path)
    fmt = detect_format(_read_header(path))
    if fmt is None and tarfile.is_tarfile(path):
        fmt = "tar"  # pre-POSIX (v7) tar without the 'ustar' magic
    if fmt is None:
        raise ArchiveError(f"{path.name} is not a supported archive (tar, tar.gz, tar.xz, tar.bz2 or zip)")
    return fmt


def temporary_siblings(dest_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Leftover temporary folders of interrupted extractions into dest_dir (safe to delete)."""
    dest = Path(dest_dir)
    if dest.parent.is_dir():
        yield from dest.parent.glob(f".{dest.name}.unpack-*")


def is_temporary(name: str) -> bool:
    """Whether a folder name is one of safe_extract's temporary folders (pure)."""
    return name.startswith(".") and ".unpack-" in name


def safe_extract(archive_path: str | os.PathLike[str], dest_dir: str | os.PathLike[str],
                 limits: ArchiveLimits = DEFAULT_LIMITS) -> ExtractStats:
    """Unpack the archive into dest_dir (which must not exist yet), all or nothing.

    Raises UnsafeArchiveError for a refused member, ArchiveError for anything
    else that prevents unpacking; in both cases dest_dir is not created.
    """
    archive_path = Path(archive_path)
    dest = Path(dest_dir).absolute()
    if dest.exists():
        raise ArchiveError(f"destination already exists: {dest}")
    fmt = archive_format(archive_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        budget = size_budget(archive_path.stat().st_size, shutil.disk_usage(dest.parent).free, limits)
    except OSError as error:
        raise ArchiveError(f"cannot size archive {archive_path.name}: {error.strerror}") from None
    temporary = dest.parent / f".{dest.name}.unpack-{uuid.uuid4().hex[:12]}"
    temporary.mkdir()
    writer = _Writer(temporary, limits, budget)
    try:
        if fmt == "zip":
            _zip_members(archive_path, writer)
        else:
            _tar_members(archive_path, writer)
        writer.sync_directories()
        try:
            os.rename(temporary, dest)
        except OSError as error:
            raise ArchiveError(f"cannot move unpacked archive into {dest}: {error.strerror}") from None
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return ExtractStats(members=writer.members, bytes=writer.bytes)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "ArchiveError", "UnsafeArchiveError", "ArchiveLimits", "DEFAULT_LIMITS", "ExtractStats", "SizeBudget",
    "check_member", "check_totals", "detect_format", "archive_format", "normalize_member_name",
    "safe_extract", "size_budget", "temporary_siblings", "is_temporary",
    "FILE", "DIRECTORY", "SYMLINK", "HARDLINK", "DEVICE", "FIFO", "OTHER",
]
