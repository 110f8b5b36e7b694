"""The whole pipeline as a user drives it: stage_config_manager.py, publisher.py, two real workers.

Requests go publisher -> stage A -> stage B -> output -> publisher --download, with both
workers moved between the stages mid-run, and every request must come back exactly once.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pero_worker.libs import zk_paths

PY = sys.executable
REQUESTS = 60


def _run(repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([PY, *args], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_stage_pipeline_with_two_workers_downloads_each_request_once(
        repo_root: Path, zk_root: str, zk, unique_name, tmp_path: Path) -> None:
    stage_a, stage_b, out = unique_name("e2e_a"), unique_name("e2e_b"), unique_name("e2e_out")
    dummy = tmp_path / "dummy.ini"
    dummy.write_text("[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\nTIME_DIFF_MIN = 0.001\nTIME_DIFF_MAX = 0.01\n")
    for stage in (stage_a, stage_b):
        _run(repo_root, "scripts/stage_config_manager.py", "-z", zk_root, "--name", stage, "--config", str(dummy))
    _run(repo_root, "scripts/stage_config_manager.py", "-z", zk_root, "--name", out)

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(REQUESTS):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(images / f"p{i:03d}.png")

    workers = []
    ids = [unique_name("e2e_w") for _ in range(2)]
    try:
        for worker_id in ids:
            workers.append(subprocess.Popen(
                [PY, "worker/run_worker.py", "-z", zk_root, "-i", worker_id,
                 "--cache-directory", str(tmp_path / worker_id), "--disable-remote-logging"],
                cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for worker_id in ids:
            _wait(lambda w=worker_id: zk.get_text(zk_paths.worker_status(w)) == zk_paths.IDLE, 60, "idle workers")

        upload = _run(repo_root, "scripts/publisher.py", "-z", zk_root, "--stages", stage_a, stage_b, out,
                      "--directory", str(images), "--no-progress")
        assert f"uploaded {REQUESTS} of {REQUESTS}" in upload.stdout

        # One worker per stage, then swap them while requests are still flowing.
        zk.set_text(zk_paths.worker_queue(ids[0]), stage_a)
        zk.set_text(zk_paths.worker_queue(ids[1]), stage_b)
        time.sleep(0.3)
        zk.set_text(zk_paths.worker_queue(ids[0]), stage_b)
        zk.set_text(zk_paths.worker_queue(ids[1]), stage_a)

        download_dir = tmp_path / "results"
        deadline = time.monotonic() + 90
        while True:
            _run(repo_root, "scripts/publisher.py", "-z", zk_root, "--download", out, "--directory",
                 str(download_dir))
            folders = [p for p in download_dir.iterdir() if p.is_dir() and not p.name.startswith("_")]
            if len(folders) >= REQUESTS or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # A second download finds nothing new: nothing is delivered twice into the folder.
        _run(repo_root, "scripts/publisher.py", "-z", zk_root, "--download", out, "--directory", str(download_dir))
    finally:
        for worker_id in ids:
            zk.set_text(zk_paths.worker_enabled(worker_id), "false")
        for proc in workers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    folders = sorted(p for p in download_dir.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert len(folders) == REQUESTS
    names = sorted(next(f.name for f in folder.iterdir() if f.suffix == ".png") for folder in folders)
    assert names == sorted(f"p{i:03d}.png" for i in range(REQUESTS))
    for folder in folders:
        assert (folder / f"{stage_a}.log").is_file() and (folder / f"{stage_b}.log").is_file()
        info = (folder / "request_info.txt").read_text()
        assert "FAILED" not in info and "ERROR" not in info
    for proc in workers:
        assert proc.returncode == 0, proc.stderr.read().decode(errors="replace")[-2000:]
