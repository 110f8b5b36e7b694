"""tests/needs.py: a missing dependency skips a test on a developer machine and fails it with CI=true."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SAMPLE = '''
from needs import require


def test_needs_a_tool():
    require(False, "the frobnicator is not installed")
'''

SAMPLE_MODULE_LEVEL = '''
from needs import require_module

require_module("no_such_module_for_pero_tests")


def test_never_runs():
    pass
'''


def _run(tmp_path: Path, source: str, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                           str(tmp_path / "test_sample.py")], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)


@pytest.mark.parametrize("source", [SAMPLE, SAMPLE_MODULE_LEVEL], ids=["in a test", "at import"])
def test_missing_dependency_skips_outside_ci(tmp_path, source):
    done = _run(tmp_path, source, None)
    assert done.returncode in (0, 5) and "1 skipped" in done.stdout, done.stdout + done.stderr   # 5: none collected


@pytest.mark.parametrize("source", [SAMPLE, SAMPLE_MODULE_LEVEL], ids=["in a test", "at import"])
def test_missing_dependency_fails_in_ci(tmp_path, source):
    done = _run(tmp_path, source, "true")
    assert done.returncode in (1, 2), done.stdout + done.stderr
    assert "CI=true and a dependency is missing" in done.stdout
    assert "skipped" not in done.stdout


def test_the_end_to_end_modules_do_not_skip_silently():
    """The secure-pipeline, bundled-model and OCR-pipeline tests go through needs.py, not plain skips."""
    for name in ("test_secure_pipeline.py", "test_bundled_model.py", "test_ocr_pipeline.py"):
        text = (TESTS / name).read_text()
        assert "from needs import" in text, name
        assert "importorskip" not in text and "pytest.skip(" not in text and "skipif" not in text, name
