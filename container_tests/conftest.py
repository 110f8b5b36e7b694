"""Fixtures of the container tests (make docker-test): the images, built once per run (cached)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from helpers import ENGINE, FIGURES, IMAGES, REPO, podman

sys.path.insert(0, str(REPO / "tests"))
from needs import require  # noqa: E402  (tests/ helper: a skip here, a failure with CI=true)


@pytest.fixture(scope="session")
def images() -> None:
    require(os.geteuid() == 0, "needs root (podman as root, system_setup.py hands files to the containers' users)")
    require(bool(ENGINE), "needs podman: dev/container_engine.sh (make docker-test does it)")
    started = time.monotonic()
    done = subprocess.run(["bash", "dev/build_images.sh"], cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"dev/build_images.sh:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    FIGURES["build (all images, as found)"] = f"{time.monotonic() - started:.1f} s"
    for image in IMAGES:
        size = podman("image", "inspect", "--format", "{{.Size}}", f"{image}:latest").stdout.strip()
        FIGURES[f"size {image}"] = f"{int(size) / 1e6:.0f} MB"
