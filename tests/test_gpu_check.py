"""dev/gpu_check.py's pure parts: the run's plan, the package links, the carried pins (the run itself is
rehearsed on the CPU by `dev/gpu_check.py rehearse`, minutes of installing: not a unit test)."""
from __future__ import annotations

import importlib.metadata
import os
import sys
import time
from pathlib import Path

import pytest

from pero_worker.dev import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_the_plan_measures_the_target_first_and_fits_one_device_call():
    steps = gpu_check.plan("python3", "cuda", Path("/x/pages300"), quick=False)
    names = [step.name for step in steps]
    assert names[0] == "environment" and steps[0].needed
    assert names[1] == "batched"   # the ≥ 30 pages/s figure comes before everything that may run out of time
    assert set(names) == {"environment", "batched", "batched_fp16", "batched_finish_here", "compare", "batched_32",
                          "tests", "profile"}
    doubled = list(next(s for s in steps if s.name == "batched_32").argv)
    assert doubled[doubled.index("--batch-pages") + 1] == "32" and doubled.count("--batch-pages") == 1
    for step in steps:
        if "bench/ocr_throughput.py" in step.argv and step.name != "batched_32":
            argv = list(step.argv)
            assert argv[argv.index("--device") + 1] == "cuda"
            assert argv[argv.index("--examples") + 1] == "/x/pages300"
            assert argv[argv.index("--batch-pages") + 1] == "16"
    assert "--mixed-precision" in next(s for s in steps if s.name == "batched_fp16").argv
    assert "--mixed-precision" not in next(s for s in steps if s.name == "batched").argv
    compare = next(s for s in steps if s.name == "compare").argv
    assert compare[compare.index("--modes") + 1:compare.index("--modes") + 4] == ("direct", "processor", "batched")


@pytest.mark.parametrize("quick, repeat, runs", [(True, "2", "1"), (False, "40", "3")])
def test_quick_plan_runs_the_same_commands_on_fewer_pages(quick, repeat, runs):
    full = gpu_check.plan("py", "cpu", Path("p"), quick=False)
    steps = gpu_check.plan("py", "cpu", Path("p"), quick=quick)
    assert [s.name for s in steps] == [s.name for s in full]
    batched = list(next(s for s in steps if s.name == "batched").argv)
    assert batched[batched.index("--repeat") + 1] == repeat
    assert batched[batched.index("--runs") + 1] == runs


def test_namespace_links_follow_pyproject():
    links = gpu_check.namespace_links(REPO / "pyproject.toml")
    assert links["libs"] == "libs" and links["training"] == "pero-ocr" and links["worker"] == "worker"
    for folder in links.values():
        assert (REPO / folder).is_dir()


def test_carried_pins_are_the_installed_versions():
    pins = gpu_check.carried_pins(("protobuf", "kazoo"))
    assert pins == [f"protobuf=={importlib.metadata.version('protobuf')}",
                    f"kazoo=={importlib.metadata.version('kazoo')}"]
    with pytest.raises(gpu_check.SetupError, match="not installed"):
        gpu_check.carried_pins(("no-such-package-here",))


def test_result_lines_keep_only_results():
    text = ("warming up\nRESULT ocr_batched_cuda 31.2 pages/s\n  RESULT not at the start\n"
            "RESULT cer_batched_cuda 0.1 %\n")
    assert gpu_check.result_lines(text) == ["RESULT ocr_batched_cuda 31.2 pages/s", "RESULT cer_batched_cuda 0.1 %"]


def test_run_refuses_a_carry_made_for_another_python(tmp_path, capsys):
    (tmp_path / "carry").mkdir()
    (tmp_path / "carry" / "PYTHON").write_text("2.7\n")
    code = gpu_check.main(["run", "--carry", str(tmp_path / "carry"), "--site", str(tmp_path / "site"),
                           "--out", str(tmp_path / "out")])
    assert code == 2
    assert "prepared for Python 2.7" in capsys.readouterr().err


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie its new parent has not reaped yet (init here is slow to)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def test_a_step_past_its_limit_is_killed_with_its_children(tmp_path):
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen(['sleep', '60'])\n"
            "print(f'RESULT child {child.pid} pid', flush=True)\n"
            "time.sleep(60)\n")
    step = gpu_check.Step("slow", (sys.executable, "-c", code), limit_s=3)
    with open(tmp_path / "run.log", "w") as log:
        status, seconds, output = gpu_check._run_step(step, dict(os.environ), log)
    assert status == "timed out" and seconds < 15
    (line,) = gpu_check.result_lines(output)
    pid = int(line.split()[2])
    time.sleep(0.5)
    assert _gone(pid)
    assert line in (tmp_path / "run.log").read_text()


@pytest.mark.parametrize("code, status", [("print('RESULT x 1 y')", "ok"), ("raise SystemExit(3)", "exit 3")])
def test_a_step_reports_its_exit(tmp_path, code, status):
    with open(tmp_path / "run.log", "w") as log:
        got, _seconds, output = gpu_check._run_step(gpu_check.Step("s", (sys.executable, "-c", code), 30),
                                                    dict(os.environ), log)
    assert got == status


@pytest.mark.parametrize("limit, left, expected", [(120, 500.0, 120), (120, 120.0, 120), (120, 80.9, 80),
                                                   (120, 29.0, 0), (20, 25.0, 20), (120, -5.0, 0)])
def test_a_step_gets_what_is_left_of_the_budget(limit, left, expected):
    assert gpu_check.step_limit(gpu_check.Step("s", ("x",), limit), left) == expected
