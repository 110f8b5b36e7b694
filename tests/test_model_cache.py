"""worker/model_cache.py: pure naming/pruning decisions, and real fetches from the harness SFTP server."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from pero_worker.dev import local_services
from pero_worker.libs.addresses import Address
from pero_worker.libs.sftp import SftpClient, SftpSettings
from pero_worker.worker.model_cache import (
    ModelCache,
    ModelCacheError,
    folder_name,
    parse_checksum_file,
    version_key,
    versions_to_prune,
)

# --- pure decisions -------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("ocr_cz", "ocr_cz"),
    ("2024-01-05.1", "2024-01-05.1"),
    ("Stage.v2", "Stage.v2"),
])
def test_folder_name_keeps_plain_names(name, expected):
    assert folder_name(name) == expected


@pytest.mark.parametrize("name", ["../../etc", "..", ".", "a/b", "/abs", "", "con", "x\x00y", "a~b",
                                  "ščř stage", "x" * 300, ".hidden"])
def test_folder_name_sanitises_hostile_names(name):
    result = folder_name(name)
    assert "/" not in result and "\x00" not in result
    assert result not in ("", ".", "..") and not result.startswith(".")
    assert len(result.encode()) <= 80
    assert "~" in result                       # hashed: distinct from every plain name


def test_folder_name_is_injective_on_lookalikes():
    names = ["a/b", "a_b", "a\\b", "a:b", "a?b", "A_B"]
    assert len({folder_name(n) for n in names}) == len(names)


def test_version_key_depends_on_remote_path():
    assert version_key("1", "pero/a.tar.xz") != version_key("1", "pero/b.tar.xz")
    assert version_key("1", "pero/a.tar.xz") == version_key("1", "pero/a.tar.xz")
    assert version_key("1", "") .startswith("1~")


@pytest.mark.parametrize("text,digest", [
    ("a" * 64, "a" * 64),
    ("A" * 64 + "  model.tar.xz\n", "a" * 64),
    ("0123456789abcdef" * 4 + " *model.tar.xz", "0123456789abcdef" * 4),
    ("", None), ("abc", None), ("g" * 64, None), ("a" * 63, None), ("a" * 65, None),
])
def test_parse_checksum_file_table(text, digest):
    if digest is None:
        with pytest.raises(ValueError):
            parse_checksum_file(text)
    else:
        assert parse_checksum_file(text) == digest


@pytest.mark.parametrize("entries,current,keep,pruned", [
    ([], "v1", 2, []),
    ([("v1", 1.0)], "v1", 2, []),
    ([("v1", 1.0), ("v2", 2.0)], "v2", 2, []),
    ([("v1", 1.0), ("v2", 2.0), ("v3", 3.0)], "v3", 2, ["v1"]),
    ([("v1", 1.0), ("v2", 2.0), ("v3", 3.0)], "v1", 2, ["v2"]),   # current kept even when oldest
    ([("v1", 5.0), ("v2", 2.0), ("v3", 3.0), ("v4", 4.0)], "v2", 2, ["v4", "v3"]),
    ([("v1", 1.0), ("v2", 2.0)], "v2", 1, ["v1"]),
])
def test_versions_to_prune_table(entries, current, keep, pruned):
    assert versions_to_prune(entries, current, keep) == pruned


# --- real fetches ---------------------------------------------------------------

def _archive_bytes(files: dict[str, bytes], *, symlink: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo("evil")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return buffer.getvalue()


class CountingFactory:
    def __init__(self, settings: SftpSettings) -> None:
        self.settings = settings
        self.calls = 0

    def __call__(self) -> SftpClient:
        self.calls += 1
        return SftpClient(self.settings)


@pytest.fixture
def sftp_settings(services) -> SftpSettings:
    return SftpSettings(servers=(Address(services.sftp_host, services.sftp_port),),
                        username=services.user, password=services.password, timeout=5)


@pytest.fixture
def remote(services):
    """Put files straight into the SFTP user's home (we are on the same machine); cleaned afterwards."""
    folder = f"t_{uuid.uuid4().hex[:12]}"
    base = local_services.SFTP_HOME / folder
    base.mkdir(parents=True)

    def put(name: str, data: bytes) -> str:
        (base / name).write_bytes(data)
        return f"{folder}/{name}"
    yield put
    shutil.rmtree(base, ignore_errors=True)


def test_fetch_once_then_cached(tmp_path, sftp_settings, remote):
    data = _archive_bytes({"ocr_engine.json": b"{}", "sub/weights.bin": os.urandom(50_000)})
    path = remote("model.tar.xz", data)
    factory = CountingFactory(sftp_settings)
    cache = ModelCache(tmp_path / "cache")

    first = cache.get("ocr_stage", "1", path, factory)
    assert first.fetched and first.seconds > 0 and first.bytes == len(data)
    assert (first.path / "ocr_engine.json").read_bytes() == b"{}"
    assert (first.path / "sub" / "weights.bin").stat().st_size == 50_000
    assert first.path.is_relative_to(tmp_path / "cache" / "ocr_stage")
    assert factory.calls == 1
    # No archive or part file stays behind.
    assert list((tmp_path / "cache" / "ocr_stage" / "downloads").iterdir()) == []

    second = cache.get("ocr_stage", "1", path, factory)
    assert second.path == first.path and not second.fetched and second.seconds == 0.0
    assert factory.calls == 1                         # no SFTP at all for a cached version

    # A new cache object on the same folder (worker restart) still finds it.
    third = ModelCache(tmp_path / "cache").get("ocr_stage", "1", path, factory)
    assert third.path == first.path and not third.fetched and factory.calls == 1


def test_sha256_verified(tmp_path, sftp_settings, remote):
    data = _archive_bytes({"a.txt": b"a"})
    path = remote("m.tar.xz", data)
    remote("m.tar.xz.sha256", f"{hashlib.sha256(data).hexdigest()}  m.tar.xz\n".encode())
    cache = ModelCache(tmp_path / "cache")
    model = cache.get("s", "1", path, CountingFactory(sftp_settings))
    assert (model.path / "a.txt").read_bytes() == b"a"

    bad = remote("bad.tar.xz", data)
    remote("bad.tar.xz.sha256", ("0" * 64 + "\n").encode())
    with pytest.raises(ModelCacheError, match="sha256 mismatch") as info:
        cache.get("s", "2", bad, CountingFactory(sftp_settings))
    assert not info.value.transient
    assert not cache.is_cached("s", "2", bad)

    junk = remote("junk.tar.xz", data)
    remote("junk.tar.xz.sha256", b"not a checksum")
    with pytest.raises(ModelCacheError, match="sha256"):
        cache.get("s", "3", junk, CountingFactory(sftp_settings))


def test_missing_unsafe_and_corrupt_archives(tmp_path, sftp_settings, remote):
    cache = ModelCache(tmp_path / "cache")
    folder = remote("placeholder", b"").split("/")[0]
    with pytest.raises(ModelCacheError, match="not found") as info:
        cache.get("s", "1", f"{folder}/missing.tar.xz", CountingFactory(sftp_settings))
    assert not info.value.transient

    evil = remote("evil.tar.xz", _archive_bytes({"ok.txt": b"ok"}, symlink=True))
    with pytest.raises(ModelCacheError, match="symbolic link") as info:
        cache.get("s", "2", evil, CountingFactory(sftp_settings))
    assert not info.value.transient and not cache.is_cached("s", "2", evil)

    corrupt = remote("corrupt.tar.xz", b"\xfd7zXZ\x00" + os.urandom(1000))
    with pytest.raises(ModelCacheError, match="corrupt"):
        cache.get("s", "3", corrupt, CountingFactory(sftp_settings))
    stage_dir = cache.stage_dir("s")
    # Nothing that looks like a model, no leftovers.
    assert [p.name for p in stage_dir.iterdir() if p.is_dir() and p.name != "downloads"] == []
    assert list((stage_dir / "downloads").iterdir()) == []


def test_unreachable_sftp_is_transient(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = SftpSettings(servers=(Address("127.0.0.1", port),), username="pero", password="x", timeout=3)
    with pytest.raises(ModelCacheError) as info:
        ModelCache(tmp_path).get("s", "1", "pero/m.tar.xz", lambda: SftpClient(settings))
    assert info.value.transient and "refused" in str(info.value)


def test_stage_without_files_gets_empty_folder(tmp_path):
    def no_sftp() -> SftpClient:
        raise AssertionError("no SFTP needed for a stage without config_path")
    model = ModelCache(tmp_path).get("dummy_stage", "7", "", no_sftp)
    assert model.path.is_dir() and list(model.path.iterdir()) == [] and not model.fetched
    assert ModelCache(tmp_path).get("dummy_stage", "7", None, no_sftp).path == model.path


def test_prune_keeps_newest_two_versions(tmp_path, sftp_settings, remote):
    path = remote("m.tar.xz", _archive_bytes({"a": b"1"}))
    cache = ModelCache(tmp_path / "cache")
    factory = CountingFactory(sftp_settings)
    v1 = cache.get("stage", "v1", path, factory).path
    time.sleep(0.02)
    v2 = cache.get("stage", "v2", path, factory).path
    time.sleep(0.02)
    assert v1.exists() and v2.exists()
    v3 = cache.get("stage", "v3", path, factory).path
    assert v3.exists() and v2.exists() and not v1.exists()
    # Using v2 again makes it the most recent; v4 then prunes v3.
    time.sleep(0.02)
    cache.get("stage", "v2", path, factory)
    time.sleep(0.02)
    cache.get("stage", "v4", path, factory)
    assert v2.exists() and not v3.exists()
    # Other stages are untouched.
    other = cache.get("other", "v1", path, factory).path
    assert other.exists() and v2.exists()


def test_hostile_stage_names_stay_inside_the_cache(tmp_path, sftp_settings, remote):
    path = remote("m.tar.xz", _archive_bytes({"a": b"1"}))
    root = tmp_path / "cache"
    cache = ModelCache(root)
    for stage, version in [("../../escape", "../v"), ("/abs/stage", "1"), ("..", ".."), ("a/b", "c/d")]:
        model = cache.get(stage, version, path, CountingFactory(sftp_settings)).path
        assert model.resolve().is_relative_to(root.resolve())
        assert (model / "a").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


# --- decompression bombs and interrupted unpacks -----------------------------------------------

def _zeros_tar_gz(unpacked: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("weights.bin")
        info.size = unpacked
        chunk = b"\0" * (1024 * 1024)

        class Zeros(io.RawIOBase):
            left = unpacked

            def readinto(self, view) -> int:
                n = min(len(view), self.left, len(chunk))
                view[:n] = chunk[:n]
                self.left -= n
                return n

            def readable(self) -> bool:
                return True
        tar.addfile(info, io.BufferedReader(Zeros()))
    return buffer.getvalue()


def test_a_decompression_bomb_from_sftp_is_refused_and_leaves_nothing(tmp_path, sftp_settings, remote):
    """100 MiB of zeros in a ~100 KB archive: over 10:1 and over the 64 MiB allowance, refused mid-stream."""
    data = _zeros_tar_gz(100 * 1024 * 1024)
    assert len(data) < 1024 * 1024
    bomb = remote("bomb.tar.gz", data)
    cache = ModelCache(tmp_path / "cache")
    started = time.monotonic()
    with pytest.raises(ModelCacheError, match="decompression bomb") as info:
        cache.get("s", "1", bomb, CountingFactory(sftp_settings))
    assert not info.value.transient
    assert time.monotonic() - started < 60
    stage_dir = cache.stage_dir("s")
    assert [p.name for p in stage_dir.iterdir() if p.is_dir() and p.name != "downloads"] == []
    assert sum(f.stat().st_size for f in (tmp_path / "cache").rglob("*") if f.is_file()) < 1024 * 1024


KILLED_UNPACK = """
import os, signal, sys
from pero_worker.libs import archive
original = archive._Writer.file
def file(self, member, source):
    original(self, member, source)
    os.kill(os.getpid(), signal.SIGKILL)      # die with one member written: a worker killed mid-unpack
archive._Writer.file = file
archive.safe_extract(sys.argv[1], sys.argv[2])
"""


def _killed_unpack(tmp_path: Path, root: Path, stage: str = "ocr") -> Path:
    """A real process killed while unpacking into the cache layout; returns the version folder."""
    import subprocess
    import sys
    src = tmp_path / "model.tar.xz"
    src.write_bytes(_archive_bytes({"a.bin": os.urandom(1000), "b.bin": os.urandom(1000)}))
    version_dir = root / stage / version_key("v1", "pero/model.tar.xz")
    done = subprocess.run([sys.executable, "-c", KILLED_UNPACK, str(src), str(version_dir / "model")],
                          capture_output=True, timeout=60)
    assert done.returncode == -9, done.stderr
    leftovers = [p for p in version_dir.iterdir() if p.name.startswith(".model.unpack-")]
    assert leftovers and list(leftovers[0].iterdir()), "the killed unpack left no partial folder"
    return version_dir


def test_partial_unpacks_are_removed_at_start_and_complete_models_kept(tmp_path):
    from pero_worker.worker.model_cache import clean_interrupted
    root = tmp_path / "cache"
    (root / "ocr" / "v0~keep" / "model").mkdir(parents=True)
    (root / "ocr" / "v0~keep" / "model" / "weights").write_bytes(b"complete")
    version_dir = _killed_unpack(tmp_path, root)
    removed = clean_interrupted(root)
    assert version_dir in removed and not version_dir.exists()
    assert (root / "ocr" / "v0~keep" / "model" / "weights").read_bytes() == b"complete"


def test_a_stage_being_filled_by_another_process_is_left_alone(tmp_path):
    import subprocess
    import sys

    from pero_worker.worker.model_cache import clean_interrupted
    root = tmp_path / "cache"
    version_dir = _killed_unpack(tmp_path, root)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               "h = open(sys.argv[1], 'a+'); fcntl.flock(h, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True); time.sleep(60)", str(root / "ocr" / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert clean_interrupted(root) == [] and version_dir.exists()
    finally:
        holder.kill()
        holder.wait()
    assert version_dir in clean_interrupted(root)


def test_the_worker_removes_partial_unpacks_when_it_starts(tmp_path):
    import signal
    import subprocess
    import sys
    root = tmp_path / "cache"
    version_dir = _killed_unpack(tmp_path, root)
    with socket.socket() as sock:                    # no ZooKeeper there: the worker keeps trying to connect
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    repo = Path(__file__).resolve().parent.parent
    worker = subprocess.Popen([sys.executable, "worker/run_worker.py", "-z", f"127.0.0.1:{port}", "-i", "cleaner",
                               "--cache-directory", str(root), "--disable-remote-logging"], cwd=repo,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while version_dir.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not version_dir.exists(), "the worker did not remove the partial unpack at start"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            _out, err = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            _out, err = worker.communicate()
    assert "interrupted" in err and "Traceback" not in err
