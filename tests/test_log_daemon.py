"""The log daemon against the real broker and ZooKeeper: writes, rotates, prunes, never loses a record."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pero_worker.libs.addresses import Address
from pero_worker.libs.mq import MQSession, MQSettings
from pero_worker.libs.mq_management import ManagementClient
from pero_worker.log_daemon.rotation import parse_log_file_name

DAEMON = Path(__file__).resolve().parent.parent / "log_daemon" / "log_daemon.py"


def wait_for(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def log_queue(zk, conn_config, unique_name):
    name = unique_name("log")
    session = MQSession(MQSettings.from_zookeeper(zk, conn_config), name="test-logd")
    session.open(retry_for=10)
    assert session.declare_shared_queue(name) is None
    yield name, session
    try:
        session.delete_queue(name)
    finally:
        session.close()


def publish(session: MQSession, queue: str, lines: list[str]) -> None:
    for line in lines:
        session.publish(queue, line.encode("utf-8"))
    assert session.wait_for_confirms(timeout=10)


def start_daemon(zk_root: str, queue: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(DAEMON), "-z", zk_root, "-q", queue, "-o", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_daemon(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.stdout.read() if process.stdout else ""


def log_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if parse_log_file_name(p.name))


def lines_in(folder: Path) -> list[str]:
    """Every line of the log files, oldest file first.  The daemon may prune a file between the listing and
    the reading: a file that is gone by then has no lines any more."""
    lines = []
    for path in log_files(folder):
        try:
            lines += path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            continue
    return lines


def test_writes_rotates_and_prunes(zk_root, log_queue, tmp_path):
    queue, session = log_queue
    out = tmp_path / "logs"
    out.mkdir()
    (out / "operator-notes.txt").write_text("not a log file\n")
    period_minutes = 0.02   # 1.2 s
    daemon = start_daemon(zk_root, queue, out, "-r", str(period_minutes), "-n", "2")
    try:
        batches = [[f"batch{b} line{i} é" for i in range(50)] for b in range(4)]
        seen_files: set[str] = set()
        for batch in batches:
            publish(session, queue, batch)
            wait_for(lambda batch=batch: set(batch) <= set(lines_in(out)), 20, f"{batch[0]!r}... on disk")
            seen_files.update(p.name for p in log_files(out))
            time.sleep(period_minutes * 60 + 0.3)
        assert len(seen_files) == 4, "each batch, one period apart, must start a new file"
        files = log_files(out)
        assert len(files) == 2, "only the newest 2 files are kept"
        assert [f.read_text(encoding="utf-8").splitlines() for f in files] == batches[2:]   # the daemon is idle now
        assert (out / "operator-notes.txt").exists(), "files that are not ours are never pruned"
        assert session.queue_length(queue) == 0
    finally:
        output = stop_daemon(daemon)
    assert daemon.returncode == 0, output


def test_unwritable_folder_keeps_records_queued_then_recovers(zk_root, log_queue, tmp_path):
    queue, session = log_queue
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the log folder should be")
    out = blocker / "logs"
    daemon = start_daemon(zk_root, queue, out, "-n", "0")
    try:
        lines = [f"record {i}" for i in range(30)]
        publish(session, queue, lines)
        time.sleep(3)
        assert daemon.poll() is None, "the daemon keeps running"
        assert session.queue_length(queue) == len(lines), "records stay queued while they cannot be written"
        blocker.unlink()
        wait_for(lambda: sorted(lines_in(out)) == sorted(lines), 40, "records written after the folder came back")
        wait_for(lambda: session.queue_length(queue) == 0, 10, "records acknowledged")
    finally:
        output = stop_daemon(daemon)
    assert "cannot" in output and str(blocker) in output, output


def test_survives_a_dropped_broker_connection(zk_root, log_queue, tmp_path, services):
    queue, session = log_queue
    out = tmp_path / "logs"
    daemon = start_daemon(zk_root, queue, out)
    management = ManagementClient([Address(services.mq_host, services.mq_mgmt_port)])
    try:
        publish(session, queue, ["before"])
        wait_for(lambda: "before" in lines_in(out), 20, "first record")
        name = f"pero-logd {queue}"
        connections = wait_for(
            lambda: [c["name"] for c in management.connections()
                     if (c.get("client_properties") or {}).get("connection_name") == name],
            15, "the daemon's connection in the management API", interval=0.5)
        for connection in connections:
            management.close_connection(connection)
        publish(session, queue, ["after"])
        wait_for(lambda: "after" in lines_in(out), 30, "record after the reconnect")
        assert lines_in(out).count("before") == 1
    finally:
        output = stop_daemon(daemon)
        management.close()
    assert daemon.returncode == 0, output


def test_bad_configuration_exits_2(tmp_path):
    ini = tmp_path / "logd.ini"
    ini.write_text("[LOGD]\nzookeeper_servers = 127.0.0.1:2181\nnumber_of_files = many\n")
    result = subprocess.run([sys.executable, str(DAEMON), "-c", str(ini)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert "number_of_files" in result.stderr


def test_invalid_utf8_records_are_written_with_replacement_characters_and_nothing_stops(zk_root, log_queue, tmp_path):
    """A log record is untrusted bytes: invalid UTF-8 is written with U+FFFD, never dropped, and the records
    after it are written too."""
    queue, session = log_queue
    out = tmp_path / "logs"
    daemon = start_daemon(zk_root, queue, out, "-n", "0")
    try:
        bodies = [b"before", b"bad \xff\xfe bytes \xc3", b"\x00nul and \xed\xa0\x80 surrogate", b"after \xc3\xa9"]
        for body in bodies:
            session.publish(queue, body)
        assert session.wait_for_confirms(timeout=10)
        wait_for(lambda: "after \u00e9" in lines_in(out), 20, "the record after the invalid ones")
        assert lines_in(out) == ["before", "bad \ufffd\ufffd bytes \ufffd", "\x00nul and \ufffd\ufffd\ufffd surrogate",
                                 "after \u00e9"]
        for path in log_files(out):
            path.read_bytes().decode("utf-8")   # the files themselves are valid UTF-8
        wait_for(lambda: session.queue_length(queue) == 0, 10, "every record acknowledged")
        assert daemon.poll() is None
    finally:
        output = stop_daemon(daemon)
    assert daemon.returncode == 0, output
    assert "Traceback" not in output


def test_a_log_queue_declared_by_an_earlier_version_is_consumed_with_one_warning(zk_root, zk, conn_config, tmp_path,
                                                                                  unique_name):
    """Issue 8.3: ours declares the log queue with x-max-priority 1 now; a deployment whose log queue an earlier
    version declared without it gets 406 on that declare: the daemon says so once and keeps consuming."""
    queue = unique_name("log_legacy")
    session = MQSession(MQSettings.from_zookeeper(zk, conn_config), name="test-logd-legacy")
    session.open(retry_for=10)
    session.declare_plain_queue(queue)
    out = tmp_path / "logs"
    daemon = start_daemon(zk_root, queue, out)
    management = ManagementClient([Address("127.0.0.1", 15672)])
    try:
        publish(session, queue, ["first"])
        wait_for(lambda: "first" in lines_in(out), 20, "a record from the legacy queue")
        name = f"pero-logd {queue}"
        for connection in wait_for(
                lambda: [c["name"] for c in management.connections()
                         if (c.get("client_properties") or {}).get("connection_name") == name],
                15, "the daemon's connection", interval=0.5):
            management.close_connection(connection)   # a reconnect declares again: no second warning
        publish(session, queue, ["second"])
        wait_for(lambda: "second" in lines_in(out), 30, "a record after the reconnect")
    finally:
        output = stop_daemon(daemon)
        management.close()
        session.delete_queue(queue)
        session.close()
    assert daemon.returncode == 0, output
    assert output.count("exists with other arguments") == 1 and "406" in output and "Traceback" not in output, output


def test_broker_and_zookeeper_retries_are_at_most_1_s_apart():
    """Issue 12: the log daemon consumes again <= 2 s after the broker is back; its retry loop waits at most
    MAX_BACKOFF between attempts (it was 2 s, which alone could use the whole bound)."""
    from pero_worker.libs.backoff import Backoff
    from pero_worker.log_daemon import log_daemon
    backoff = Backoff(initial=0.2, cap=log_daemon.MAX_BACKOFF)
    assert max(backoff.delay() for _ in range(30)) <= 1.0
