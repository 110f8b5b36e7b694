"""Real OCR through the real pipeline: the layout stage and the bundled pero-ocr model, served by workers.

The stages are made as a user makes them (stage_config_manager.py uploads the model archive over
SFTP); the worker downloads, unpacks and loads it (the stage-archive path); a page goes in with
publisher-format requests and its text comes out in the PAGE XML.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import Levenshtein
import pytest
from needs import require, require_module  # tests/ helper: a skip here, a failure with CI=true

from pero_worker.dev.demo import page_text
from pero_worker.libs import zk_paths
from pero_worker.libs.message_pb2 import Data, ProcessingRequest
from pero_worker.libs.mq import MQSession, MQSettings

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "pero-ocr" / "model"
PAGE = REPO / "examples" / "02_two_columns_title_250dpi.jpg"

require((MODEL_DIR / "model.pt.cpu").is_file(), f"bundled model missing ({MODEL_DIR / 'model.pt.cpu'})")
require_module("pero_ocr")


def _manage(zk_root: str, services, *args: str) -> None:
    result = subprocess.run([PY, "scripts/stage_config_manager.py", "-z", zk_root, "-u", services.user,
                             "--password-file", str(services.password_file), *args],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _start_worker(zk_root: str, services, worker_id: str, cache: Path, log: Path | None = None) -> subprocess.Popen:
    """A worker process; its output goes to `log` when given (read on failure), else nowhere."""
    out = open(log, "wb") if log is not None else subprocess.DEVNULL   # noqa: SIM115  (the child keeps it)
    try:
        return subprocess.Popen([PY, "worker/run_worker.py", "-z", zk_root, "-u", services.user, "--password-file",
                                 str(services.password_file), "-i", worker_id, "--cache-directory", str(cache),
                                 "--device", "cpu", "--disable-remote-logging"],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            out.close()


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def secured(services, zk_root: str, conn_config):
    """ZooKeeper and RabbitMQ sessions as user pero (the tools create SASL-owned nodes)."""
    import dataclasses

    from pero_worker.dev.local_services import write_server_lists
    from pero_worker.libs.zk import ZooKeeper

    auth = dataclasses.replace(conn_config, username=services.user, password=services.password)
    zk = ZooKeeper(auth).start()
    write_server_lists(zk, services)
    mq = MQSession(MQSettings.from_zookeeper(zk, auth), name="test_ocr_pipeline")
    mq.open(retry_for=10)
    yield zk, mq
    mq.close()
    zk.delete("/pero", recursive=True)   # SASL-owned nodes: only the owner can remove them
    zk.stop()


def _archive(folder: Path, target: Path) -> Path:
    with tarfile.open(target, "w:xz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return target


def test_page_through_layout_and_bundled_model_stages_reads_the_words(
        services, zk_root: str, secured, unique_name, tmp_path: Path) -> None:
    zk, mq = secured
    layout, ocr, out = unique_name("layout"), unique_name("ocr"), unique_name("out")
    (tmp_path / "layout.ini").write_text("[WORKER]\nMETHOD = LAYOUT\n")
    _manage(zk_root, services, "--name", layout, "--config", str(tmp_path / "layout.ini"))
    _manage(zk_root, services, "--name", ocr, "--config", str(MODEL_DIR / "config.ini"),
            "--file", str(_archive(MODEL_DIR, tmp_path / "bundled.tar.xz")), "--remote-path", f"pero/{ocr}")
    _manage(zk_root, services, "--name", out)

    ids = [unique_name("w"), unique_name("w")]
    workers = [_start_worker(zk_root, services, worker_id, tmp_path / worker_id) for worker_id in ids]
    try:
        for worker_id, stage in zip(ids, (layout, ocr)):
            _wait(lambda w=worker_id: zk.get_text(zk_paths.worker_status(w)) == zk_paths.IDLE, 60, "idle worker")
            zk.set_text(zk_paths.worker_queue(worker_id), stage)
        request = ProcessingRequest(uuid=uuid.uuid4().hex, page_uuid=uuid.uuid4().hex,
                                    processing_stages=[layout, ocr, out],
                                    results=[Data(name=PAGE.name, content=PAGE.read_bytes())])
        mq.publish_and_wait(layout, request.SerializeToString())
        delivery = _wait(lambda: mq.get(out), 180, "the page in the output stage")
        mq.ack(delivery.delivery_tag)
    finally:
        for worker_id in ids:
            zk.set_text(zk_paths.worker_enabled(worker_id), "false")
        for proc in workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for queue in (layout, ocr, out):
            mq.delete_queue(queue)

    result = ProcessingRequest.FromString(delivery.body)
    assert [entry.status for entry in result.logs] == ["OK", "OK"], [entry.log for entry in result.logs]
    assert [entry.stage for entry in result.logs] == [layout, ocr]
    names = [data.name for data in result.results]
    assert names[0] == PAGE.name and f"{PAGE.name}_page.xml" in names and f"{PAGE.name}.logits" in names
    xml = next(data.content for data in result.results if data.name == f"{PAGE.name}_page.xml")
    text = " ".join(page_text(xml).split())
    truth = " ".join(PAGE.with_suffix(".gt.txt").read_text(encoding="utf-8").split())
    # Reading order is part of the measure: a two-column page read across the columns fails this.
    cer = Levenshtein.distance(truth, text) / len(truth)
    assert cer < 0.02, f"CER {cer:.3%}"
    for word in truth.split()[:12]:
        assert word in text


def _png(image) -> bytes:
    import cv2
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def _quality_pages() -> dict[str, bytes]:
    """A good page, the same upside down and sideways, and a page with ink but no text (border + picture)."""
    import cv2
    import numpy as np
    page = cv2.imread(str(REPO / "examples" / "05_binary_300dpi.png"))
    page = cv2.resize(page, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)   # 180 dpi: a quicker test
    inked = np.full((1500, 1100, 3), 235, dtype=np.uint8)
    inked[:, :90] = 25                                       # a dark scanner border
    cv2.circle(inked, (550, 500), 220, (90, 90, 90), -1)     # a picture; no text anywhere
    return {"good.png": _png(page), "upside_down.png": _png(np.ascontiguousarray(page[::-1, ::-1])),
            "sideways.png": _png(np.ascontiguousarray(np.rot90(page))), "inked.png": _png(inked)}


def _user_attributes(xml: bytes) -> dict[str, str]:
    from lxml import etree
    root = etree.fromstring(xml)
    return {a.get("name"): a.get("value") for a in root.iter("{*}UserAttribute")}


def test_turned_and_textless_pages_are_flagged_through_workers_and_the_download_counts_them(
        services, zk_root: str, secured, unique_name, tmp_path: Path) -> None:
    """Issue 10: never a silent OK. Status stays OK (wire-compatible), the stage log has one QUALITY WARNING
    line, the PAGE XML carries the flags, and publisher.py --download counts and lists the flagged pages."""
    zk, mq = secured
    layout, ocr, out = unique_name("layout"), unique_name("ocr"), unique_name("out")
    (tmp_path / "layout.ini").write_text("[WORKER]\nMETHOD = LAYOUT\n")
    _manage(zk_root, services, "--name", layout, "--config", str(tmp_path / "layout.ini"))
    _manage(zk_root, services, "--name", ocr, "--config", str(MODEL_DIR / "config.ini"),
            "--file", str(_archive(MODEL_DIR, tmp_path / "bundled.tar.xz")), "--remote-path", f"pero/{ocr}")
    _manage(zk_root, services, "--name", out)
    pages = _quality_pages()
    ids = [unique_name("w"), unique_name("w")]
    logs = [tmp_path / f"{worker_id}.log" for worker_id in ids]
    workers = [_start_worker(zk_root, services, worker_id, tmp_path / worker_id, log) for worker_id, log in
               zip(ids, logs)]
    try:
        for worker_id, stage in zip(ids, (layout, ocr)):
            _wait(lambda w=worker_id: zk.get_text(zk_paths.worker_status(w)) == zk_paths.IDLE, 60, "idle worker")
            zk.set_text(zk_paths.worker_queue(worker_id), stage)
        for name, content in pages.items():
            request = ProcessingRequest(uuid=uuid.uuid4().hex, page_uuid=uuid.uuid4().hex,
                                        processing_stages=[layout, ocr, out],
                                        results=[Data(name=name, content=content)])
            mq.publish_and_wait(layout, request.SerializeToString())
        try:
            _wait(lambda: mq.queue_length(out) == len(pages), 600, f"{len(pages)} pages in the output stage")
        except AssertionError as error:   # say where they are, and what the workers said
            tails = "\n".join(f"--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                              for log in logs if log.is_file())
            raise AssertionError(f"{error}; still queued: layout {mq.queue_length(layout)}, "
                                 f"ocr {mq.queue_length(ocr)}\n{tails}") from None
        download = tmp_path / "download"
        result = subprocess.run([PY, "scripts/publisher.py", "-z", zk_root, "-u", services.user, "--password-file",
                                 str(services.password_file), "--download", out, "--directory", str(download),
                                 "--idle-timeout", "1", "--no-progress"],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        for worker_id in ids:
            zk.set_text(zk_paths.worker_enabled(worker_id), "false")
        for proc in workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for queue in (layout, ocr, out):
            mq.delete_queue(queue)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    flags = {}
    for folder in download.iterdir():
        if not folder.is_dir():
            continue
        name = next(n for n in pages if (folder / n).is_file())
        info = (folder / "request_info.txt").read_text()
        assert "status:           OK" in info, info
        ocr_log = (folder / f"{ocr}.log").read_text()
        warnings = [line for line in ocr_log.splitlines() if "QUALITY WARNING: " in line]
        marks = _user_attributes((folder / f"{name}_page.xml").read_bytes())
        flags[name] = marks["quality_flags"]
        assert len(warnings) == (1 if marks["quality_flags"] else 0), ocr_log
        if warnings:
            assert warnings[0].endswith(marks["quality_warning"])
    assert flags["good.png"] == ""
    assert "upside_down" in flags["upside_down.png"].split(",")
    assert "sideways" in flags["sideways.png"].split(",")
    assert flags["inked.png"].split(",")[0] == "no_text"
    assert "3 page(s) flagged by the quality checks" in result.stdout, result.stdout
    assert result.stdout.count("  flagged ") == 3


def test_corrupt_model_archive_is_configuration_failure_and_requests_stay_queued(
        services, zk_root: str, secured, unique_name, tmp_path: Path) -> None:
    zk, mq = secured
    stage, out = unique_name("ocr_broken"), unique_name("out")
    corrupt = tmp_path / "model.tar.xz"
    corrupt.write_bytes(b"\xfd7zXZ\x00" + b"not really an xz archive" * 100)
    _manage(zk_root, services, "--name", stage, "--config", str(MODEL_DIR / "config.ini"),
            "--file", str(corrupt), "--remote-path", f"pero/{stage}")
    _manage(zk_root, services, "--name", out)
    request = ProcessingRequest(uuid=uuid.uuid4().hex, processing_stages=[stage, out],
                                results=[Data(name="p.jpg", content=PAGE.read_bytes())])
    mq.publish_and_wait(stage, request.SerializeToString())

    worker_id = unique_name("w")
    proc = _start_worker(zk_root, services, worker_id, tmp_path / "cache")
    try:
        _wait(lambda: zk.get_text(zk_paths.worker_status(worker_id)) == zk_paths.IDLE, 60, "idle worker")
        zk.set_text(zk_paths.worker_queue(worker_id), stage)
        _wait(lambda: zk.get_text(zk_paths.worker_status(worker_id)) == zk_paths.CONFIGURATION_FAILED, 60,
              "CONFIGURATION_FAILED")
        time.sleep(1.0)
        assert mq.queue_length(stage) == 1   # nothing consumed, nothing lost
        assert mq.queue_length(out) == 0
        assert proc.poll() is None           # the worker keeps running, waiting for a fixed config
    finally:
        zk.set_text(zk_paths.worker_enabled(worker_id), "false")
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        for queue in (stage, out):
            mq.delete_queue(queue)


def test_a_model_whose_engine_json_points_outside_its_folder_is_refused_by_the_worker(
        services, zk_root: str, secured, unique_name, tmp_path: Path) -> None:
    """ocr_engine.json's `checkpoint` leads out of the unpacked model; weights really lie there (so plain
    pero-ocr would load them): the worker refuses the stage (CONFIGURATION_FAILED), the request stays queued."""
    import json
    import shutil

    zk, mq = secured
    stage, out = unique_name("ocr_escape"), unique_name("out")
    model = tmp_path / "model"
    shutil.copytree(MODEL_DIR, model)
    engine = json.loads((model / "ocr_engine.json").read_text())
    engine["checkpoint"] = "../../../planted/model.pt"
    (model / "ocr_engine.json").write_text(json.dumps(engine))
    (model / "model.pt").unlink()
    (model / "model.pt.cpu").unlink()
    _manage(zk_root, services, "--name", stage, "--config", str(model / "config.ini"),
            "--file", str(_archive(model, tmp_path / "escape.tar.xz")), "--remote-path", f"pero/{stage}")
    _manage(zk_root, services, "--name", out)
    cache = tmp_path / "cache"
    planted = cache / "planted"                       # <cache>/<stage>/<version>/model/../../../planted
    planted.mkdir(parents=True)
    for name in ("model.pt", "model.pt.cpu"):
        shutil.copy(MODEL_DIR / name, planted / name)
    request = ProcessingRequest(uuid=uuid.uuid4().hex, processing_stages=[stage, out],
                                results=[Data(name="p.jpg", content=PAGE.read_bytes())])
    mq.publish_and_wait(stage, request.SerializeToString())

    worker_id = unique_name("w")
    proc = _start_worker(zk_root, services, worker_id, cache)
    try:
        _wait(lambda: zk.get_text(zk_paths.worker_status(worker_id)) == zk_paths.IDLE, 60, "idle worker")
        zk.set_text(zk_paths.worker_queue(worker_id), stage)
        _wait(lambda: zk.get_text(zk_paths.worker_status(worker_id)) == zk_paths.CONFIGURATION_FAILED, 120,
              "CONFIGURATION_FAILED")
        time.sleep(1.0)
        assert mq.queue_length(stage) == 1 and mq.queue_length(out) == 0
        assert proc.poll() is None
    finally:
        zk.set_text(zk_paths.worker_enabled(worker_id), "false")
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        for queue in (stage, out):
            mq.delete_queue(queue)
