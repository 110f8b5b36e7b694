"""libs/archive.py: the member decision table, format detection and all-or-nothing extraction."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from pero_worker.libs import archive
from pero_worker.libs.archive import (
    ArchiveError,
    ArchiveLimits,
    UnsafeArchiveError,
    check_member,
    check_totals,
    detect_format,
    safe_extract,
)

# (name, kind, linkname, refused?, word expected in the reason)
MEMBER_TABLE = [
    ("config.ini", archive.FILE, None, False, None),
    ("models/ocr/model.pt", archive.FILE, None, False, None),
    ("./config.ini", archive.FILE, None, False, None),
    ("models/", archive.DIRECTORY, None, False, None),
    ("./", archive.DIRECTORY, None, False, None),
    ("a/./b", archive.FILE, None, False, None),
    ("..foo/bar", archive.FILE, None, False, None),          # '..foo' is a normal name
    ("file..name", archive.FILE, None, False, None),
    ("", archive.FILE, None, True, "empty"),
    (".", archive.FILE, None, True, "empty path"),
    ("./", archive.FILE, None, True, "empty path"),
    ("/etc/passwd", archive.FILE, None, True, "absolute"),
    ("//server/share", archive.FILE, None, True, "absolute"),
    ("C:/Windows/x", archive.FILE, None, True, "drive"),
    ("../evil", archive.FILE, None, True, ".."),
    ("a/../../evil", archive.FILE, None, True, ".."),
    ("a/..", archive.DIRECTORY, None, True, ".."),
    ("..", archive.DIRECTORY, None, True, ".."),
    ("a\\..\\evil", archive.FILE, None, True, "backslash"),
    ("nul\x00byte", archive.FILE, None, True, "NUL"),
    ("link", archive.SYMLINK, "config.ini", True, "symbolic link"),
    ("link", archive.SYMLINK, "/etc/passwd", True, "symbolic link"),
    ("hard", archive.HARDLINK, "config.ini", True, "hard link"),
    ("dev/sda", archive.DEVICE, None, True, "device"),
    ("pipe", archive.FIFO, None, True, "FIFO"),
    ("weird", archive.OTHER, None, True, "unsupported"),
    ("x" * 5000, archive.FILE, None, True, "longer"),
]


@pytest.mark.parametrize("name,kind,linkname,refused,word", MEMBER_TABLE)
def test_check_member_table(name, kind, linkname, refused, word):
    reason = check_member(name, kind, linkname)
    if refused:
        assert reason is not None and word in reason
    else:
        assert reason is None


LIMITS = ArchiveLimits(max_members=3, max_total_bytes=100)


@pytest.mark.parametrize("count,total,refused", [
    (0, 0, False), (3, 100, False), (4, 0, True), (1, 101, True), (3, 99, False),
])
def test_check_totals_table(count, total, refused):
    assert (check_totals(count, total, LIMITS) is not None) == refused


@pytest.mark.parametrize("header,fmt", [
    (b"\xfd7zXZ\x00rest", "tar.xz"),
    (b"\x1f\x8b\x08rest", "tar.gz"),
    (b"BZh91AY", "tar.bz2"),
    (b"PK\x03\x04rest", "zip"),
    (b"PK\x05\x06" + b"\x00" * 18, "zip"),
    (b"\x00" * 257 + b"ustar\x0000", "tar"),
    (b"\x89PNG\r\n\x1a\n", None),
    (b"", None),
])
def test_detect_format_table(header, fmt):
    assert detect_format(header) == fmt


# --- helpers building real archives -------------------------------------------

def _tar(path: Path, members: list[tuple[str, bytes | None, int]], mode: str = "w:xz") -> Path:
    """members: (name, data or None for a folder, tar type)."""
    with tarfile.open(path, mode) as tar:
        for name, data, type_ in members:
            info = tarfile.TarInfo(name)
            info.type = type_
            if type_ in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "config.ini"
            if data is not None and type_ == tarfile.REGTYPE:
                info.size = len(data)
                info.mode = 0o4755 if name.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(data))
            else:
                if type_ == tarfile.DIRTYPE:
                    info.mode = 0o755
                tar.addfile(info)
    return path


GOOD = [
    ("model", None, tarfile.DIRTYPE),
    ("model/config.ini", b"[PAGE_PARSER]\n", tarfile.REGTYPE),
    ("model/weights.bin", bytes(range(256)) * 100, tarfile.REGTYPE),
    ("run.sh", b"#!/bin/sh\n", tarfile.REGTYPE),
]


@pytest.mark.parametrize("mode,name", [
    ("w:xz", "m.tar.xz"), ("w:gz", "m.tar.gz"), ("w:gz", "m.tgz"), ("w", "m.tar"), ("w:bz2", "m.tar.bz2"),
    ("w:xz", "misnamed.zip"),   # content decides, not the name
])
def test_extract_tar_formats(tmp_path, mode, name):
    src = _tar(tmp_path / name, GOOD, mode)
    dest = tmp_path / "out"
    stats = safe_extract(src, dest)
    assert (dest / "model" / "config.ini").read_bytes() == b"[PAGE_PARSER]\n"
    assert (dest / "model" / "weights.bin").read_bytes() == bytes(range(256)) * 100
    assert stats.members == 4 and stats.bytes == 14 + 25600 + 10
    mode_bits = (dest / "run.sh").stat().st_mode
    assert mode_bits & stat.S_IXUSR and not mode_bits & stat.S_ISUID     # exec kept, setuid dropped
    assert not list(archive.temporary_siblings(dest))


def test_extract_zip(tmp_path):
    src = tmp_path / "m.tar.xz"      # a zip with a misleading name
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model/", b"")
        zf.writestr("model/config.ini", b"[OCR]\n")
        zf.writestr("top.txt", b"hello" * 1000)
    dest = tmp_path / "out"
    stats = safe_extract(src, dest)
    assert (dest / "model" / "config.ini").read_bytes() == b"[OCR]\n"
    assert (dest / "top.txt").read_bytes() == b"hello" * 1000
    assert stats.bytes == 6 + 5000


@pytest.mark.parametrize("bad_member,word", [
    (("../escape.txt", b"x", tarfile.REGTYPE), ".."),
    (("/abs.txt", b"x", tarfile.REGTYPE), "absolute"),
    (("model/link", None, tarfile.SYMTYPE), "symbolic link"),
    (("model/hard", None, tarfile.LNKTYPE), "hard link"),
    (("model/dev", None, tarfile.CHRTYPE), "device"),
    (("model/fifo", None, tarfile.FIFOTYPE), "FIFO"),
])
def test_bad_tar_member_refuses_whole_archive(tmp_path, bad_member, word):
    # The bad member comes LAST: the good ones before it must not survive either.
    src = _tar(tmp_path / "bad.tar.gz", GOOD + [bad_member], "w:gz")
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=word):
        safe_extract(src, dest)
    assert not dest.exists()
    assert not list(archive.temporary_siblings(dest))
    assert not (tmp_path / "escape.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz"]


def test_zip_symlink_and_traversal_refused(tmp_path):
    src = tmp_path / "bad.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        link = zipfile.ZipInfo("link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, b"/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    src2 = tmp_path / "bad2.zip"
    with zipfile.ZipFile(src2, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr("../../evil.txt", b"evil")
    with pytest.raises(UnsafeArchiveError, match=r"\.\."):
        safe_extract(src2, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    assert not (tmp_path.parent / "evil.txt").exists()


def test_bomb_limits(tmp_path):
    many = [(f"f{i}", b"x", tarfile.REGTYPE) for i in range(5)]
    src = _tar(tmp_path / "many.tar", many, "w")
    with pytest.raises(UnsafeArchiveError, match="too many members"):
        safe_extract(src, tmp_path / "out", ArchiveLimits(max_members=4))
    big = _tar(tmp_path / "big.tar.xz", [("zeros", b"\x00" * 10_000, tarfile.REGTYPE)])
    assert big.stat().st_size < 1000    # highly compressed: a small bomb
    with pytest.raises(UnsafeArchiveError, match="exceeds"):
        safe_extract(big, tmp_path / "out2", ArchiveLimits(max_total_bytes=5_000))
    zbig = tmp_path / "big.zip"
    with zipfile.ZipFile(zbig, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros", b"\x00" * 10_000)
    with pytest.raises(UnsafeArchiveError, match="exceeds"):
        safe_extract(zbig, tmp_path / "out3", ArchiveLimits(max_total_bytes=5_000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tar.xz", "big.zip", "many.tar"]


def test_not_an_archive_and_corrupt(tmp_path):
    text = tmp_path / "model.tar.xz"
    text.write_bytes(b"this is not an archive at all" * 50)
    with pytest.raises(ArchiveError, match="not a supported archive"):
        safe_extract(text, tmp_path / "out")
    good = _tar(tmp_path / "good.tar.xz", GOOD)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.tar.xz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="corrupt"):
        safe_extract(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(archive.temporary_siblings(tmp_path / "out"))


def test_destination_must_not_exist(tmp_path):
    src = _tar(tmp_path / "m.tar.xz", GOOD)
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError, match="already exists"):
        safe_extract(src, tmp_path / "out")


# --- decompression bombs: ratio and free disk, checked while streaming ------------------------

MIB = 1024 * 1024


@pytest.mark.parametrize("archive_bytes, free, expected_bytes, word", [
    (10 * MIB, 100 * 1024 * MIB, 100 * MIB, "10 times"),                  # the ratio binds
    (1000, 100 * 1024 * MIB, 64 * MIB, "10 times"),                      # a small archive: the allowance
    (1024 * MIB, 5 * 1024 * MIB, 4 * 1024 * MIB, "free disk space"),     # the disk binds (1 GiB kept free)
    (10 * 1024 * MIB, 1024 * 1024 * MIB, 64 * 1024 * MIB, "limit of"),   # the absolute cap binds
    (10 * MIB, 512 * MIB, 0, "free disk space"),                         # less free than the reserve
])
def test_size_budget_table(archive_bytes, free, expected_bytes, word):
    budget = archive.size_budget(archive_bytes, free, archive.DEFAULT_LIMITS)
    assert budget.max_bytes == expected_bytes and word in budget.reason


def _zero_bomb(path: Path, unpacked: int) -> Path:
    """A .tar.gz of one member of `unpacked` zero bytes, written without holding it in memory."""
    class Zeros(io.RawIOBase):
        def __init__(self, size: int) -> None:
            self.left = size

        def readinto(self, buffer) -> int:
            n = min(len(buffer), self.left)
            buffer[:n] = b"\0" * n
            self.left -= n
            return n

        def readable(self) -> bool:
            return True
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("model/weights.bin")
        info.size = unpacked
        tar.addfile(info, io.BufferedReader(Zeros(unpacked)))
    return path


def test_a_bomb_is_refused_by_its_ratio_while_streaming(tmp_path):
    bomb = _zero_bomb(tmp_path / "bomb.tar.gz", 48 * MIB)
    assert bomb.stat().st_size < MIB                 # ratio over 100:1
    limits = ArchiveLimits(max_ratio=10, ratio_allowance=4 * MIB)
    with pytest.raises(UnsafeArchiveError, match="10 times the .*-byte archive"):
        safe_extract(bomb, tmp_path / "out", limits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz"]   # nothing half-unpacked left


def test_an_archive_larger_than_the_free_disk_is_refused(tmp_path):
    import os
    import shutil
    src = _tar(tmp_path / "noise.tar", [("noise.bin", os.urandom(8 * MIB), tarfile.REGTYPE)], "w")
    free = shutil.disk_usage(tmp_path).free
    limits = ArchiveLimits(disk_reserve=free - MIB)  # pretend only ~1 MiB may be used
    with pytest.raises(UnsafeArchiveError, match="free disk space"):
        safe_extract(src, tmp_path / "out", limits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise.tar"]
