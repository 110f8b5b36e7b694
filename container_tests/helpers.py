"""Shared by the container tests: the engine, the host's address, the figures printed at the end."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENGINE = shutil.which("podman") or ""
IMAGES = ["pero-zookeeper", "pero-rabbitmq", "pero-sftp", "pero-python", "pero-watchdog", "pero-logd",
          "pero-worker"]
# Measured figures; test_stack.py prints them (FIGURE lines) when its deployment is torn down.
FIGURES: dict[str, str] = {}


def _host_address() -> str:
    """A non-loopback IPv4 address of this machine: both the host's tools and containers on a bridge network
    reach published ports there (127.0.0.1 is a different host inside a container)."""
    done = subprocess.run(["hostname", "-I"], capture_output=True, text=True)
    for word in done.stdout.split():
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", word) and not word.startswith("127."):
            return word
    return "127.0.0.1"


HOST = _host_address()


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)


def lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


