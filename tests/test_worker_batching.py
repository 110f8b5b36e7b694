"""Cross-page batching and the warm-model pool in a real worker (subprocess, real ZooKeeper/RabbitMQ/SFTP).

- A PERO_OCR stage with `[WORKER] BATCH_PAGES = 4` reads several requests in one step; a request that is not
  an image fails alone (output stage, FAILED StageLog), the others carry PAGE XML; nothing is lost.
- With `--warm-models 1`, switching A -> B -> A takes A back from the pool: no load (DUMMY's SWITCH_DELAY is
  not paid again), the log says so, and the `switch_time` node gets the short switch.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

from test_worker_daemon import (  # noqa: F401  (fixtures)
    Worker,
    collect,
    make_stage,
    mq,
    publish,
    request_body,
    start_worker,
    wait_for,
)

from pero_worker.libs import zk_paths
from pero_worker.libs.mq import MQSession, MQSettings
from pero_worker.libs.zk import ZooKeeper


def test_switching_back_takes_the_model_from_the_warm_pool(start_worker, zk: ZooKeeper, mq: MQSession,  # noqa: F811
                                                           unique_name) -> None:
    a, b, out = unique_name("warm_a"), unique_name("warm_b"), unique_name("out")
    slow_setup = "[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\nSWITCH_DELAY = 2.0\n"
    make_stage(zk, mq, a, slow_setup)
    make_stage(zk, mq, b, "[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\n")
    make_stage(zk, mq, out, None)
    worker = start_worker(extra=["--disable-remote-logging", "--warm-models", "1"])
    wid = worker.worker_id
    for stage in (a, b, a):
        zk.set_text(zk_paths.worker_queue(wid), stage)
        wait_for(lambda stage=stage: mq.queue_consumers(stage) == 1, 30, f"consuming {stage}")
        publish(mq, stage, request_body([stage, out]))
        assert collect(mq, out, 1, timeout=30)[0].logs[0].stage == stage
    log = worker.log()
    assert log.count(f"stage {a} ready (version 1)") == 2, log
    first, second = re.findall(rf"stage {a} ready \(version 1\) in ([0-9.]+) s(.*)", log)
    assert float(first[0]) >= 2.0 and first[1] == "", first                 # built: SWITCH_DELAY paid
    assert float(second[0]) < 0.5 and "from the warm-model pool (no download, no load)" in second[1], second
    assert "from the warm-model pool" not in re.findall(rf"stage {b} ready .*", log)[0]
    # switch_time: the first switch to A paid SWITCH_DELAY; the warm one pulled the average down
    switch = zk_paths.decode_float(zk.get(zk_paths.stage_switch_time(a)))
    assert 0 < switch < 0.8 * float(first[0]), (switch, first)   # moving average: 0.7 x first + 0.3 x ~0


def test_a_batching_ocr_stage_fails_only_the_bad_page(services, zk_root: str, conn_config, unique_name,
                                                       tmp_path: Path) -> None:
    from ocr_model_factory import build_ocr_model, pack_model, render_page, stage_config_text

    from pero_worker.dev.local_services import SFTP_HOME, write_server_lists
    from pero_worker.libs.addresses import Address
    from pero_worker.libs.sftp import SftpClient, SftpSettings

    auth = dataclasses.replace(conn_config, username=services.user, password=services.password)
    zk = ZooKeeper(auth).start()
    write_server_lists(zk, services)
    session = MQSession(MQSettings.from_zookeeper(zk, auth), name="test_worker_batching")
    session.open(retry_for=10)
    stage, out = unique_name("ocrb"), unique_name("out")
    remote = f"pero/{stage}/model.tar.xz"
    worker = None
    try:
        archive = pack_model(build_ocr_model(tmp_path / "model"), tmp_path / "model.tar.xz")
        with SftpClient(SftpSettings(servers=(Address(services.sftp_host, services.sftp_port),),
                                     username=services.user, password=services.password)) as sftp:
            sftp.upload(archive, remote)
        zk.set_text(zk_paths.stage_config(stage), stage_config_text() + "\n[WORKER]\nBATCH_PAGES = 4\n")
        zk.set_text(zk_paths.stage_config_path(stage), remote)
        zk.set_text(zk_paths.stage_config_version(stage), "b1")
        for name in (stage, out):
            session.declare_stage_queue(name)
        ids = ["good0", "good1", "bad", "good2", "good3", "good4"]
        for request_id in ids:   # queued before the worker consumes: its first steps take several at once
            content = b"%PDF-1.4 not an image" if request_id == "bad" else render_page()
            publish(session, stage, request_body([stage, out], content=content, request_id=request_id))
        worker = Worker(zk_root, zk, unique_name("w"), tmp_path / "cache", tmp_path / "batch_worker.log",
                        ["--disable-remote-logging", "-u", services.user, "--password-file",
                         str(services.password_file), "--device", "cpu"])
        zk.set_text(zk_paths.worker_queue(worker.worker_id), stage)
        results = {r.uuid: r for r in collect(session, out, len(ids), timeout=180)}
        assert sorted(results) == sorted(ids)
        assert results["bad"].logs[0].status == "FAILED" and "none of its results" in results["bad"].logs[0].log
        for request_id in ids:
            if request_id == "bad":
                continue
            entry = results[request_id].logs[0]
            assert entry.status == "OK", entry.log
            assert any(d.name.endswith("_page.xml") for d in results[request_id].results)
        together = [r.logs[0].log for r in results.values() if "read " in r.logs[0].log]
        assert any("read 1 pages" not in text for text in together), together   # some step read >= 2 pages
        assert session.queue_length(stage) == 0
    finally:
        if worker is not None:
            worker.stop()
        for name in (stage, out):
            try:
                session.delete_queue(name)
            except Exception:
                pass
        session.close()
        shutil.rmtree(SFTP_HOME / "pero" / stage, ignore_errors=True)
        zk.delete("/pero", recursive=True)   # nodes carry the sasl:pero ACL: only we can remove them
        zk.stop()
