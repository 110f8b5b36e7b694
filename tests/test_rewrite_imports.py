"""dev/rewrite_imports.py: the import rewrite other branches run after merging issue 9's moves (pure)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pero_worker.dev.rewrite_imports import package_of, rewrite_line, rewrite_source

REPO = Path(__file__).resolve().parent.parent

CASES = [
    # (line, package of the file, rewritten)
    ("from ..libs import zk_paths", "pero_worker.worker", "from pero_worker.libs import zk_paths"),
    ("from . import routing, stats", "pero_worker.worker", "from pero_worker.worker import routing, stats"),
    ("from .acks import AckTracker", "pero_worker.worker", "from pero_worker.worker.acks import AckTracker"),
    ("    from ...libs.message_pb2 import Data", "pero_worker.worker.processors",
     "    from pero_worker.libs.message_pb2 import Data"),
    ("from .layout import Layout, Settings", "pero_worker.tools.deploy",
     "from pero_worker.tools.deploy.layout import Layout, Settings"),
    ("from pero_worker.scripts.cli_common import (", None, "from pero_worker.tools.cli import ("),
    ("from pero_worker.scripts.publisher_upload import summary_lines", None,
     "from pero_worker.tools.publishing.upload import summary_lines"),
    ("from pero_worker.scripts.deploy.layout import Layout", None,
     "from pero_worker.tools.deploy.layout import Layout"),
    ("from pero_worker.scripts import local_services", None, "from pero_worker.dev import local_services"),
    ("from pero_worker.scripts import stage_config_manager as scm", None,
     "from pero_worker.tools import stage_config as scm"),
    ("from pero_worker.scripts import worker_controller", None,
     "from pero_worker.tools import worker_control as worker_controller"),
    ("from opsplane import REPO, wait_for", None, "from pero_worker.dev.opsplane import REPO, wait_for"),
    ("from pero_worker.libs.daemon_logging import setup_daemon_logging", None,
     "from pero_worker.libs.daemon import setup_daemon_logging"),
    ("import tcp_proxy", None, "import pero_worker.dev.tcp_proxy as tcp_proxy"),
    ("from pero_worker.libs import zk_paths", None, "from pero_worker.libs import zk_paths"),
    ("x = 'from . import nothing'", "pero_worker.worker", "x = 'from . import nothing'"),
]


@pytest.mark.parametrize(("line", "package", "expected"), CASES)
def test_rewrite_line(line, package, expected):
    assert rewrite_line(line, package) == expected


def test_package_of_follows_pyproject_folders():
    assert package_of(REPO / "worker" / "processors" / "images.py", REPO) == "pero_worker.worker.processors"
    assert package_of(REPO / "pero-ocr" / "render_lines.py", REPO) == "pero_worker.training"
    assert package_of(REPO / "tests" / "test_x.py", REPO) is None


def test_relative_import_outside_a_package_is_refused():
    with pytest.raises(ValueError):
        rewrite_line("from . import x", None)


def test_rewrite_source_keeps_everything_else():
    text = "import os\nfrom .routing import plan\n\nVALUE = 1\n"
    expected = "import os\nfrom pero_worker.worker.routing import plan\n\nVALUE = 1\n"
    assert rewrite_source(text, "pero_worker.worker") == expected
