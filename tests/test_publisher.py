"""scripts/publisher.py: pure helpers, then upload and download against the real RabbitMQ + ZooKeeper."""
from __future__ import annotations

import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace
from urllib.parse import quote

import pytest
import requests

from pero_worker.libs.addresses import Address
from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.libs.message_size import (
    choose_limit,
    default_max_message_size,
    parse_byte_size,
    parse_size_refusal,
)
from pero_worker.libs.mq import MQError, MQSession, MQSettings, PublishOutcome
from pero_worker.libs.safe_names import is_safe_file_name
from pero_worker.tools import publisher
from pero_worker.tools.publishing import download as dl
from pero_worker.tools.publishing import upload as up
from pero_worker.tools.publishing.download_index import INDEX_FILE, LEGACY_INDEX_FILE, DownloadIndex
from pero_worker.tools.publishing.upload import summary_lines

NOW = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- pure helpers -----------------------------------------------------------------------

def make_request(results=(("page.jpg", b"image"),), logs=(), stages=("out",), request_uuid=None) -> ProcessingRequest:
    request = ProcessingRequest()
    request.uuid = request_uuid if request_uuid is not None else uuid.uuid4().hex
    request.page_uuid = uuid.uuid4().hex
    request.priority = 1
    request.start_time.FromDatetime(NOW)
    request.processing_stages.extend(stages)
    for name, content in results:
        item = request.results.add()
        item.name = name
        item.content = content
    for stage, status, text in logs:
        entry = request.logs.add()
        entry.stage = stage
        entry.status = status
        entry.log = text
        entry.host_id = "worker-1"
        entry.version = "v1"
        entry.start.FromDatetime(NOW)
        entry.end.FromDatetime(NOW + datetime.timedelta(seconds=2))
    return request


def test_build_request():
    request = up.build_request("scan.jpg", b"\xff\xd8data", ["ocr", "out"], 1, NOW)
    assert len(request.uuid) == 32 and int(request.uuid, 16) >= 0
    assert len(request.page_uuid) == 32 and request.page_uuid != request.uuid
    assert request.priority == 1
    assert request.start_time.ToDatetime(tzinfo=datetime.timezone.utc) == NOW
    assert list(request.processing_stages) == ["ocr", "out"]
    assert [(r.name, r.content) for r in request.results] == [("scan.jpg", b"\xff\xd8data")]
    assert not request.logs
    assert up.build_request("a", b"", ["out"], 0, NOW).uuid != request.uuid


HOSTILE = ["../../evil", "/abs", "/etc/passwd", "a/../../b", "..", ".", "", "CON", "nul\x00byte", "x" * 500,
           "..\\..\\win.ini", "request_info.txt", "ocr.log", "page.jpg", "page.jpg", ".hidden"]


def test_plan_request_files_makes_every_name_safe_and_distinct():
    request = make_request(results=[(name, f"content {i}".encode()) for i, name in enumerate(HOSTILE)],
                           logs=[("ocr", "OK", "fine"), ("../../stage", "FAILED", "boom"), ("ocr", "OK", "again")])
    files = dl.plan_request_files(request)
    names = [name for _original, name, _content in files]
    assert len(names) == len({n.casefold() for n in names}) == 1 + 3 + len(HOSTILE)
    assert all(is_safe_file_name(n) for n in names)
    assert names[0] == dl.INFO_FILE
    contents = [content for _o, _n, content in files[4:]]
    assert contents == [f"content {i}".encode() for i in range(len(HOSTILE))]   # nothing lost or mixed up
    info = files[0][2].decode()
    assert "status:           FAILED in ../../stage" in info
    assert "(named '../../evil' in the request)" in info


def test_render_stage_log_and_info():
    request = make_request(logs=[("ocr", "OK", "line 1\nline 2\n")])
    text = dl.render_stage_log(request.logs[0])
    assert "stage:   ocr" in text and "status:  OK" in text and "line 1\nline 2\n" in text
    assert "host_id: worker-1" in text and "version: v1" in text and "2024-05-01T12:00:02+00:00" in text
    info = dl.render_info(request, [("page.jpg", "page.jpg")])
    assert f"uuid:             {request.uuid}" in info and "status:           OK" in info
    assert "ocr: OK (version v1, host worker-1" in info


def test_list_upload_files(tmp_path):
    (tmp_path / "b.jpg").write_bytes(b"b")
    (tmp_path / "a.jpg").write_bytes(b"a")
    (tmp_path / ".hidden").write_bytes(b"h")
    (tmp_path / "sub").mkdir()
    assert up.list_upload_files(["x.png"], str(tmp_path)) == ["x.png", str(tmp_path / "a.jpg"),
                                                                 str(tmp_path / "b.jpg")]


# --- against the real services -------------------------------------------------------------

@pytest.fixture
def env(zk, zk_root, services, unique_name):
    """Plain (no SASL) ZooKeeper chroot with the local server lists; RabbitMQ as guest on vhost pero."""
    mq = MQSession(MQSettings(servers=(Address(services.mq_host, services.mq_port),)))
    mq.open(retry_for=10)
    queues: list[str] = []

    def queue(prefix: str = "stage", create: bool = True) -> str:
        name = unique_name(prefix)
        queues.append(name)
        if create:
            mq.declare_stage_queue(name)
        return name

    def run(*args: str) -> int:
        extra = ["--idle-timeout", "0.5"] if "--download" in args else []
        return publisher.main(["-z", zk_root, "--no-progress", *extra, *args])

    yield SimpleNamespace(mq=mq, queue=queue, run=run, zk_root=zk_root)
    for name in queues:
        try:
            mq.delete_queue(name)
        except MQError:
            pass
    mq.close()


def drain(mq: MQSession, queue: str) -> list[ProcessingRequest]:
    requests = []
    while (delivery := mq.get(queue)) is not None:
        requests.append(ProcessingRequest.FromString(delivery.body))
        mq.ack(delivery.delivery_tag)
    return requests


def images(tmp_path, count: int, size: int = 1000) -> list[str]:
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"page_{i:03d}.jpg"
        path.write_bytes(os.urandom(size))
        paths.append(str(path))
    return paths


def test_upload_images(env, tmp_path, capsys):
    first, out = env.queue("ocr"), env.queue("out")
    paths = images(tmp_path, 25)
    assert env.run("--stages", first, out, "--images", *paths, "-y", "1") == 0
    assert "uploaded 25 of 25" in capsys.readouterr().out
    assert env.mq.queue_length(out) == 0
    requests = drain(env.mq, first)
    assert len(requests) == 25 and len({r.uuid for r in requests}) == 25
    by_name = {r.results[0].name: r for r in requests}
    for path in paths:
        request = by_name[os.path.basename(path)]
        with open(path, "rb") as handle:
            assert request.results[0].content == handle.read()
        assert list(request.processing_stages) == [first, out]
        assert request.priority == 1
        age = datetime.datetime.now(datetime.timezone.utc) - request.start_time.ToDatetime(
            tzinfo=datetime.timezone.utc)
        assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)


def test_upload_directory(env, tmp_path):
    first = env.queue()
    images(tmp_path, 5)
    (tmp_path / "images" / ".hidden").write_bytes(b"skip me")
    assert env.run("--stages", first, "--directory", str(tmp_path / "images")) == 0
    assert sorted(r.results[0].name for r in drain(env.mq, first)) == [f"page_{i:03d}.jpg" for i in range(5)]


def test_upload_refuses_missing_first_stage(env, tmp_path, capsys):
    missing, out = env.queue("missing", create=False), env.queue("out")
    assert env.run("--stages", missing, out, "--images", *images(tmp_path, 2)) == 1
    err = capsys.readouterr().err
    assert f"first stage queue '{missing}' does not exist" in err and "stage_config_manager.py" in err
    assert env.mq.queue_length(missing) is None and env.mq.queue_length(out) == 0


def test_unreadable_image_fails_the_run_but_not_the_others(env, tmp_path, capsys):
    first = env.queue()
    paths = images(tmp_path, 3)
    assert env.run("--stages", first, "--images", paths[0], str(tmp_path / "nothere.jpg"), paths[1]) == 1
    assert "1 unreadable file(s)" in capsys.readouterr().err
    assert len(drain(env.mq, first)) == 2


def test_returned_requests_are_counted_as_not_uploaded(env):
    """A queue deleted after the start check: every request comes back RETURNED, none counts as uploaded."""
    stats = up.UploadStats()
    uploader = up.Uploader(env.mq, lambda: env.mq, f"gone_{uuid.uuid4().hex}", stats, lambda: None)
    for i in range(10):
        uploader.add(i, f"file{i}", up.build_request(f"file{i}", b"x", ["gone"], 0, NOW))
    assert uploader.finish(timeout=20)
    assert stats.confirmed == 0 and sorted(stats.returned) == sorted(f"file{i}" for i in range(10))


def close_connection_by_name(services, connection_name: str) -> None:
    """Make the broker drop one client connection (as a broker restart or network cut would)."""
    auth = (services.user, services.password)
    base = f"http://{services.mq_mgmt_address}/api/connections"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for connection in requests.get(base, auth=auth, timeout=5).json():
            if connection.get("client_properties", {}).get("connection_name") == connection_name:
                response = requests.delete(f"{base}/{quote(connection['name'], safe='')}", auth=auth, timeout=5)
                assert response.status_code in (200, 204), response.text
                return
        time.sleep(0.2)
    raise AssertionError(f"connection {connection_name} not listed by the management API")


def test_reconnect_republishes_unconfirmed_requests(env, services):
    """The broker drops the connection with requests unconfirmed: they are published again (same uuid)."""
    first = env.queue()
    stats = up.UploadStats()
    name = f"test-publisher-{uuid.uuid4().hex[:8]}"
    # As user pero: a non-administrator may close only its own connections through the management API.
    session = MQSession(MQSettings(servers=env.mq.settings.servers, username=services.user,
                                   password=services.password), name=name)
    session.open(retry_for=5)

    def reopen():
        session.open(retry_for=10)
        return session

    uploader = up.Uploader(session, reopen, first, stats, lambda: None)
    sent = []
    for i in range(5):
        request = up.build_request(f"f{i}", b"y" * 100, [first], 0, NOW)
        sent.append(request.uuid)
        uploader.add(i, f"f{i}", request)
    close_connection_by_name(services, name)
    for i in range(5, 10):                       # keeps publishing through the drop
        request = up.build_request(f"f{i}", b"y" * 100, [first], 0, NOW)
        sent.append(request.uuid)
        uploader.add(i, f"f{i}", request)
        time.sleep(0.1)
    assert uploader.finish(timeout=30)
    session.close()
    received = [r.uuid for r in drain(env.mq, first)]
    assert set(received) == set(sent)            # every request arrived; re-sends are duplicates at most
    assert stats.confirmed == 10
    assert stats.republished >= 1                # the reconnect path really ran


def index_keys(target) -> list[str]:
    index = DownloadIndex(str(target))
    try:
        return list(index)
    finally:
        index.close()


def forget_index(target) -> None:
    """What the index looks like when a crash came before the batch was committed."""
    with sqlite3.connect(target / INDEX_FILE) as db:
        db.execute("DELETE FROM downloaded")


def publish(mq: MQSession, queue: str, request: ProcessingRequest | bytes) -> None:
    body = request if isinstance(request, bytes) else request.SerializeToString()
    assert mq.publish_and_wait(queue, body) is PublishOutcome.CONFIRMED


def test_flagged_summary_counts_and_lists_pages():
    assert dl.flagged_summary([]) == ["0 page(s) flagged by the quality checks"]
    lines = dl.flagged_summary([("a_1", ["upside_down", "low_confidence"]), ("b_2", ["no_text"]),
                                ("c_3", ["low_confidence"])], limit=2)
    assert lines[0].startswith("3 page(s) flagged by the quality checks (low_confidence: 2, no_text: 1, "
                               "upside_down: 1)")
    assert lines[1:] == ["  flagged a_1: upside_down, low_confidence", "  flagged b_2: no_text", "  ... and 1 more"]


def test_download_counts_pages_with_quality_warnings(env, tmp_path, capsys):
    out = env.queue("out")
    warned = make_request(results=[("turned.png", b"IMG")],
                          logs=[("layout", "OK", "layout ok\n"),
                                ("ocr", "OK", "2026 WARNING x: QUALITY WARNING: upside_down, low_confidence: "
                                              "the page reads better turned\n")])
    fine = make_request(results=[("fine.png", b"IMG")], logs=[("ocr", "OK", "42 lines\n")])
    publish(env.mq, out, warned)
    publish(env.mq, out, fine)
    target = tmp_path / "download"
    assert env.run("--download", out, "--directory", str(target)) == 0   # a warning is not a failure
    summary = capsys.readouterr().out
    assert "0 with failed stages" in summary
    assert "1 page(s) flagged by the quality checks (low_confidence: 1, upside_down: 1)" in summary
    assert f"flagged turned_{warned.uuid[:8]}: upside_down, low_confidence" in summary
    info = (target / f"turned_{warned.uuid[:8]}" / dl.INFO_FILE).read_text()
    assert "quality:          upside_down, low_confidence" in info and "status:           OK" in info
    assert "quality:          no warnings" in (target / f"fine_{fine.uuid[:8]}" / dl.INFO_FILE).read_text()


def test_download_writes_folders_and_empties_the_queue(env, tmp_path, capsys):
    out = env.queue("out")
    ok = make_request(results=[("scan.jpg", b"IMG"), ("scan.jpg_page.xml", b"<xml/>")],
                      logs=[("ocr", "OK", "ocr said hi\n")])
    failed = make_request(results=[("bad.jpg", b"BAD")], logs=[("ocr", "PROCESSING_FAILED", "Traceback ...\n")])
    publish(env.mq, out, ok)
    publish(env.mq, out, failed)
    target = tmp_path / "download"
    assert env.run("--download", out, "--directory", str(target)) == 0
    summary = capsys.readouterr().out
    assert "downloaded 2 request(s)" in summary and "1 with failed stages (ocr: 1)" in summary
    assert env.mq.queue_length(out) == 0

    folder = target / f"scan_{ok.uuid[:8]}"
    assert (folder / "scan.jpg").read_bytes() == b"IMG"
    assert (folder / "scan.jpg_page.xml").read_bytes() == b"<xml/>"
    assert "ocr said hi" in (folder / "ocr.log").read_text()
    info = (folder / "request_info.txt").read_text()
    assert ok.uuid in info and ok.page_uuid in info and "ocr: OK" in info and "2024-05-01T12:00:00+00:00" in info
    bad = target / f"bad_{failed.uuid[:8]}"
    assert "status:           FAILED in ocr" in (bad / "request_info.txt").read_text()
    assert "Traceback" in (bad / "ocr.log").read_text()
    assert sorted(index_keys(target)) == sorted([ok.uuid, failed.uuid])
    assert not [p for p in os.listdir(target) if p.startswith(dl.TEMP_PREFIX)]


def test_download_never_writes_outside_the_folder(env, tmp_path):
    out = env.queue("out")
    sandbox = tmp_path / "sandbox"
    target = sandbox / "inner" / "download"
    target.mkdir(parents=True)
    hostile = [
        make_request(results=[(name, f"payload {i}".encode()) for i, name in enumerate(HOSTILE)],
                     logs=[("../../../stage", "OK", "x"), ("/etc/cron.d/x", "OK", "y")]),
        make_request(results=[("../../../../evil.jpg", b"evil image")], request_uuid="../../../../tmp/pwn"),
        make_request(results=[("/abs/path.jpg", b"abs")], request_uuid="\x00\n"),
        make_request(results=[], request_uuid=""),
    ]
    for request in hostile:
        publish(env.mq, out, request)
    before = set(os.listdir(tmp_path))
    assert env.run("--download", out, "--directory", str(target)) == 0
    assert set(os.listdir(tmp_path)) == before
    assert os.listdir(sandbox) == ["inner"] and os.listdir(sandbox / "inner") == ["download"]
    written = {}
    for root, _dirs, files in os.walk(target):
        for name in files:
            path = os.path.join(root, name)
            assert os.path.realpath(path).startswith(str(target.resolve()) + os.sep)
            assert os.path.relpath(path, target).count(os.sep) <= 1       # DIR/<request>/<file> at most
            with open(path, "rb") as handle:
                written[path] = handle.read()
    payloads = set(written.values())
    for i in range(len(HOSTILE)):
        assert f"payload {i}".encode() in payloads                       # sanitised, not dropped
    assert b"evil image" in payloads and b"abs" in payloads
    assert len([d for d in os.listdir(target) if not d.startswith(".")]) == 4


def test_duplicates_are_skipped_across_restarts(env, tmp_path, capsys):
    out = env.queue("out")
    request = make_request()
    publish(env.mq, out, request)
    publish(env.mq, out, request)               # a redelivery / re-publish of the same request
    target = tmp_path / "download"
    assert env.run("--download", out, "--directory", str(target)) == 0
    first = capsys.readouterr().out
    assert "downloaded 1 request(s)" in first and "1 duplicate(s) skipped" in first
    publish(env.mq, out, request)
    assert env.run("--download", out, "--directory", str(target)) == 0
    second = capsys.readouterr().out
    assert "downloaded 0 request(s)" in second and "1 duplicate(s) skipped" in second
    assert len([d for d in os.listdir(target) if not d.startswith(".")]) == 1
    assert env.mq.queue_length(out) == 0


def test_folder_written_but_not_indexed_is_rewritten(env, tmp_path, capsys):
    """A crash after the folder was renamed into place but before its batch was committed to the index:
    the folder may be incomplete, so the redelivered request replaces it (no second copy, no stale data)."""
    out = env.queue("out")
    request = make_request(results=[("page.jpg", b"full image content")])
    target = tmp_path / "download"
    publish(env.mq, out, request)
    assert env.run("--download", out, "--directory", str(target)) == 0
    folder = target / f"page_{request.uuid[:8]}"
    (folder / "page.jpg").write_bytes(b"")                 # what an unsynced file may look like after a crash
    forget_index(target)
    publish(env.mq, out, request)
    capsys.readouterr()
    assert env.run("--download", out, "--directory", str(target)) == 0
    assert "downloaded 1 request(s)" in capsys.readouterr().out
    assert [d for d in os.listdir(target) if not d.startswith(".")] == [folder.name]
    assert (folder / "page.jpg").read_bytes() == b"full image content"
    assert index_keys(target) == [request.uuid]


def test_many_requests_in_batches(env, tmp_path, capsys):
    """More requests than one prefetch window: every one lands once, the index lists each once."""
    out = env.queue("out")
    sent = [make_request(results=[(f"p{i}.jpg", bytes([i % 256]) * 100)]) for i in range(300)]
    for request in sent:
        env.mq.publish(out, request.SerializeToString())
    assert env.mq.wait_for_confirms(timeout=30)
    target = tmp_path / "download"
    assert env.run("--download", out, "--directory", str(target)) == 0
    assert "downloaded 300 request(s)" in capsys.readouterr().out
    assert sorted(index_keys(target)) == sorted(r.uuid for r in sent)
    for i, request in enumerate(sent):
        assert (target / f"p{i}_{request.uuid[:8]}" / f"p{i}.jpg").read_bytes() == bytes([i % 256]) * 100
    assert env.mq.queue_length(out) == 0


def test_unparsable_message_is_kept_not_lost(env, tmp_path, capsys):
    out = env.queue("out")
    publish(env.mq, out, b"\xff\xff\xff not protobuf")
    target = tmp_path / "download"
    assert env.run("--download", out, "--directory", str(target)) == 1
    assert "1 unparsable message(s)" in capsys.readouterr().out
    kept = os.listdir(target / dl.UNPARSABLE_FOLDER)
    assert len(kept) == 1 and (target / dl.UNPARSABLE_FOLDER / kept[0]).read_bytes() == b"\xff\xff\xff not protobuf"
    assert env.mq.queue_length(out) == 0


def test_download_missing_queue(env, tmp_path, capsys):
    assert env.run("--download", env.queue("nope", create=False), "--directory", str(tmp_path / "d")) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    [],
    ["--stages", "a", "--download", "b", "--directory", "x"],
    ["--download", "out"],
    ["--stages", "a", "--keep-running", "--images", "x"],
    ["--stages", "a/b", "--images", "x"],
    ["--stages", "a", "--images", "x", "-y", "-1"],
])
def test_usage_errors(env, args, capsys):
    assert env.run(*args) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_round_trip_and_keep_running_as_scripts(env, tmp_path, repo_root):
    """Upload straight to an output queue with the script, download it with --keep-running until Ctrl-C."""
    out = env.queue("out")
    script = str(repo_root / "scripts" / "publisher.py")
    target = tmp_path / "download"
    downloader = subprocess.Popen([sys.executable, script, "-z", env.zk_root, "--download", out,
                                   "--directory", str(target), "--keep-running", "--no-progress"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        paths = images(tmp_path, 6, size=5000)
        uploaded = subprocess.run([sys.executable, script, "-z", env.zk_root, "--stages", out, "--images", *paths],
                                  capture_output=True, text=True, timeout=60)
        assert uploaded.returncode == 0, uploaded.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if target.exists() and len([d for d in os.listdir(target) if not d.startswith(".")]) == 6:
                break
            time.sleep(0.2)
        time.sleep(1.0)    # --keep-running: still running although the queue is empty
        assert downloader.poll() is None
        downloader.send_signal(signal.SIGINT)
        stdout, stderr = downloader.communicate(timeout=30)
    finally:
        if downloader.poll() is None:
            downloader.kill()
    assert downloader.returncode == 0, stderr
    assert "downloaded 6 request(s)" in stdout
    for path in paths:
        name = os.path.basename(path)
        folders = [d for d in os.listdir(target) if d.startswith(name.rsplit(".", 1)[0] + "_")]
        assert len(folders) == 1
        with open(path, "rb") as handle:
            assert (target / folders[0] / name).read_bytes() == handle.read()


def test_make_durable_without_syncfs(tmp_path, monkeypatch):
    """The portable path (no syncfs): fsync of every file and folder must work on real files."""
    monkeypatch.setattr(dl, "_syncfs", None)
    folder = tmp_path / "req"
    folder.mkdir()
    (folder / "a").write_bytes(b"a")
    dl.make_durable(str(tmp_path), [str(folder / "a")], [str(folder)])
    with pytest.raises(FileNotFoundError):
        dl.make_durable(str(tmp_path), [str(folder / "missing")], [])


# --- symbolic links in the download folder, and the on-disk index ---------------------------

def test_a_symlink_named_like_the_request_folder_is_never_followed(env, tmp_path, capsys, caplog):
    out = env.queue("out")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "download"
    target.mkdir()
    request = make_request(results=[("page.3B.tif", b"the page")])
    planted = target / f"page.3B_{request.uuid[:8]}"
    planted.symlink_to(elsewhere)
    publish(env.mq, out, request)
    for _attempt in range(2):                 # the next run works too: nothing is stuck
        assert env.run("--download", out, "--directory", str(target)) == 0
    captured = capsys.readouterr()
    assert "downloaded 1 request(s)" in captured.out and "Traceback" not in captured.err
    warnings = [r.getMessage() for r in caplog.records if "symbolic link" in r.getMessage()]
    assert len(warnings) == 1 and str(planted) in warnings[0] and request.uuid in warnings[0]
    assert os.listdir(elsewhere) == [] and planted.is_symlink()
    stored = target / f"page.3B_{request.uuid[:8]}_2"
    assert (stored / "page.3B.tif").read_bytes() == b"the page"
    assert index_keys(target) == [request.uuid]
    assert env.mq.queue_length(out) == 0


@pytest.mark.parametrize("link", [INDEX_FILE, dl.UNPARSABLE_FOLDER, INDEX_FILE + "-wal"])
def test_a_symlinked_index_or_unparsable_folder_is_refused_at_start(env, tmp_path, capsys, link):
    out = env.queue("out")
    publish(env.mq, out, make_request())
    target = tmp_path / "download"
    target.mkdir()
    (target / link).symlink_to(tmp_path / "elsewhere")
    assert env.run("--download", out, "--directory", str(target)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "symbolic link" in lines[0] and link in lines[0]
    assert not (tmp_path / "elsewhere").exists()
    assert env.mq.queue_length(out) == 1           # the request is still queued


def test_a_legacy_text_index_is_imported(tmp_path):
    (tmp_path / LEGACY_INDEX_FILE).write_text("aaa\nbbb\n\nccc\n")
    index = DownloadIndex(str(tmp_path))
    assert sorted(index) == ["aaa", "bbb", "ccc"] and "bbb" in index and "zzz" not in index
    index.close()
    assert not (tmp_path / LEGACY_INDEX_FILE).exists()
    assert (tmp_path / (LEGACY_INDEX_FILE + ".imported")).exists()
    assert len(DownloadIndex(str(tmp_path))) == 3


def test_index_memory_stays_flat_over_many_requests(tmp_path):
    """60,000 keys in download-sized batches: Python memory must not grow with the number of keys
    (the in-memory set it replaces grew by ~0.2 KB per request: ~10 MB here)."""
    import tracemalloc

    index = DownloadIndex(str(tmp_path))
    keys = (uuid.UUID(int=i).hex for i in range(60_000))

    def batch(n: int) -> list[str]:
        return [next(keys) for _ in range(n)]

    for _ in range(40):                              # warm up: caches and statements reach their size
        index.add_all(batch(128))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    added = 0
    while added < 50_000:
        chunk = batch(128)
        assert not any(key in index for key in chunk)
        index.add_all(chunk)
        added += len(chunk)
    growth = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    index.close()
    print(f"index: {added} keys added, Python memory grew by {growth / 1024:.1f} KiB")
    assert growth < 256 * 1024, f"memory grew by {growth} bytes over {added} keys"


# --- pages over the broker's maximum message size ---------------------------------------------

@pytest.mark.parametrize("version, expected", [
    ("3.10.8", 128 * 2**20), ("3.8.0", 128 * 2**20), ("3.13.7", 128 * 2**20), ("4.0.5", 16 * 2**20),
    ("4.1.0-rc.1", 16 * 2**20), ("3.7.28", None), ("", None), ("garbage", None),
])
def test_default_max_message_size(version, expected):
    assert default_max_message_size(version) == expected


@pytest.mark.parametrize("text, expected", [
    ("PRECONDITION_FAILED - message size 209715200 is larger than configured max size 134217728",
     (209715200, 134217728)),
    ("PRECONDITION_FAILED - message size 600000000 is larger than max size 536870912", (600000000, 536870912)),
    ("PRECONDITION_FAILED - unknown delivery tag 7", None),
    ("", None),
])
def test_parse_size_refusal(text, expected):
    assert parse_size_refusal(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("134217728", 134217728), ("128MiB", 128 * 2**20), ("128 mib", 128 * 2**20), ("16M", 16 * 2**20),
    ("1GiB", 2**30), ("512k", 512 * 1024), ("0", None), ("-5", None), ("12 MB/s", None), ("", None),
])
def test_parse_byte_size(text, expected):
    if expected is None:
        with pytest.raises(ValueError):
            parse_byte_size(text)
    else:
        assert parse_byte_size(text) == expected


def test_choose_limit_prefers_the_operator_then_the_broker_version():
    assert choose_limit(1000, "3.10.8").limit == 1000
    from_version = choose_limit(None, "3.10.8")
    assert from_version.limit == 128 * 2**20 and "RabbitMQ 3.10.8" in from_version.source
    assert choose_limit(None, None).limit == 512 * 2**20


def test_summary_names_every_file_not_uploaded():
    stats = up.UploadStats(confirmed=1)
    stats.refuse(stats.too_large, "big.tif", "too large")
    stats.refuse(stats.unreadable, "gone.tif", "unreadable: No such file or directory")
    lines = summary_lines(stats, ["u.tif"], ["n.tif"])
    assert lines[0] == ("NOT uploaded: 1 unreadable file(s), 1 over the broker's maximum message size, "
                        "1 never confirmed, 1 not sent")
    assert lines[1:] == ["  big.tif: too large", "  gone.tif: unreadable: No such file or directory",
                         "  u.tif: sent, but the broker never confirmed it", "  n.tif: not sent (the upload stopped)"]
    assert summary_lines(up.UploadStats(confirmed=1), [], []) == []


def _upload_script(env, *args, extra_env=None, timeout=300):
    environment = {k: v for k, v in os.environ.items() if k != "PERO_MAX_MESSAGE_SIZE"}
    environment.update(extra_env or {})
    started = time.monotonic()
    done = subprocess.run([sys.executable, "scripts/publisher.py", "-z", env.zk_root, "--no-progress", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=environment)
    return done, time.monotonic() - started


def test_a_file_over_the_limit_is_refused_and_the_others_go_on(env, tmp_path):
    first = env.queue()
    small = images(tmp_path, 3, size=1000)
    big = tmp_path / "images" / "big_600dpi.tif"
    big.write_bytes(os.urandom(5000))
    missing = str(tmp_path / "images" / "missing.tif")
    done, _ = _upload_script(env, "--stages", first, "--max-message-size", "3000",
                             "--images", small[0], str(big), missing, small[1], small[2])
    assert done.returncode == 1, done.stderr
    assert "uploaded 3 of 5" in done.stdout
    refusal = [line for line in done.stderr.splitlines() if "big_600dpi.tif" in line and "3,000 bytes" in line]
    assert refusal and "5,000 bytes" in refusal[0] and "--max-message-size" in refusal[0]
    assert "NOT uploaded: 1 unreadable file(s), 1 over the broker's maximum message size" in done.stderr
    assert f"  {big}: " in done.stderr and f"  {missing}: unreadable" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(r.results[0].name for r in drain(env.mq, first)) == sorted(os.path.basename(p) for p in small)


def test_the_limit_comes_from_the_environment_and_the_command_line_wins(env, tmp_path):
    first = env.queue()
    paths = images(tmp_path, 2, size=5000)
    done, _ = _upload_script(env, "--stages", first, "--images", *paths,
                             extra_env={"PERO_MAX_MESSAGE_SIZE": "4KiB"})
    assert done.returncode == 1 and "uploaded 0 of 2" in done.stdout and "4,096 bytes" in done.stderr
    done, _ = _upload_script(env, "--stages", first, "--images", *paths, "--max-message-size", "1MiB",
                             extra_env={"PERO_MAX_MESSAGE_SIZE": "4KiB"})
    assert done.returncode == 0 and "uploaded 2 of 2" in done.stdout, done.stderr
    done, _ = _upload_script(env, "--stages", first, "--images", *paths, extra_env={"PERO_MAX_MESSAGE_SIZE": "lots"})
    assert done.returncode == 2 and "not a size" in done.stderr


def test_without_a_limit_given_the_brokers_is_used_before_reading(env, tmp_path):
    """A sparse file just over RabbitMQ 3.x's default (128 MiB): refused from its size, never read or sent."""
    first = env.queue()
    huge = tmp_path / "a3_colour_600dpi.tif"
    with open(huge, "wb") as handle:
        handle.truncate(128 * 2**20 + 1)
    small = images(tmp_path, 1)
    done, elapsed = _upload_script(env, "--stages", first, "--images", str(huge), *small)
    assert done.returncode == 1, done.stderr
    assert "uploaded 1 of 2" in done.stdout
    line = next(line for line in done.stderr.splitlines() if "a3_colour_600dpi.tif" in line)
    assert "134,217,729 bytes" in line and "134,217,728 bytes (128 MiB)" in line and "RabbitMQ 3." in line
    assert elapsed < 30
    assert [r.results[0].name for r in drain(env.mq, first)] == [os.path.basename(small[0])]


def test_a_refusal_by_the_broker_is_noticed_at_once_and_the_rest_go_on(env, tmp_path):
    """We claim a higher limit than the broker's (128 MiB): the broker closes the channel on the big page;
    the publisher notices at once, names the page and the broker's limit, and sends the pages after it."""
    first = env.queue()
    paths = images(tmp_path, 4, size=2000)
    huge = tmp_path / "images" / "page_001b_huge.tif"
    huge.write_bytes(b"\0" * (128 * 2**20 + 4096))
    order = [paths[0], str(huge), paths[1], paths[2], paths[3]]
    done, elapsed = _upload_script(env, "--stages", first, "--max-message-size", "300MiB", "--images", *order)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "uploaded 4 of 5" in done.stdout, done.stdout + done.stderr
    refusal = [line for line in done.stderr.splitlines() if "page_001b_huge.tif" in line and "134,217,728" in line]
    assert refusal and "the broker, which refused a message" in refusal[0], done.stderr
    assert "NOT uploaded: 1 over the broker's maximum message size" in done.stderr
    assert "Traceback" not in done.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s: the closed channel was not noticed at once"
    names = {r.results[0].name for r in drain(env.mq, first)}
    assert names == {os.path.basename(p) for p in paths}


def test_manifest_maps_uuids_to_files(env, tmp_path):
    first = env.queue()
    paths = images(tmp_path, 3)
    manifest = tmp_path / "manifest.jsonl"
    assert env.run("--stages", first, "--images", *paths, "--manifest", str(manifest)) == 0
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    by_uuid = {r.uuid: r for r in drain(env.mq, first)}
    assert sorted(entry["file"] for entry in entries) == sorted(paths)
    for entry in entries:
        request = by_uuid[entry["uuid"]]
        assert request.page_uuid == entry["page_uuid"]
        assert request.results[0].name == os.path.basename(entry["file"])
