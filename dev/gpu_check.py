#!/usr/bin/env python3
"""Issue 14's GPU figures in one prepared run on a lent GPU machine, and a rehearsal of that run here.

A lent GPU machine has a Python with CUDA torch and most of the scientific stack, but not pero-ocr and a
few of its needs, nor libmagic, and it reaches no package registry; its time is counted in minutes (15 a
session, start included).  So everything it lacks is gathered here first, into one ignored folder that
travels with the working tree, and the run there is one command that cannot stop half-way for a missing
module:

  prepare   (here)  wheels of what the GPU image lacks, at the versions this checkout's .venv runs;
                    Debian's libmagic; the example pages rendered at 300 dpi          -> .gpu/
  run       (there) installs .gpu/ under /tmp, links this checkout as the pero_worker package, then runs
                    the GPU checks one after another, each under its own time limit; everything they
                    print goes to stdout and to $OUT/run.log, their RESULT lines to $OUT/results.txt
  rehearse  (here)  prepare + run on the CPU, in a bare venv holding only what the GPU image holds
                    (no pero-ocr, an older protobuf), so a missing piece shows here, not on device time

On the device tool: command `python3 dev/gpu_check.py run`, carry [".gpu"], timeout_s 600 (the run keeps
to 540 s in all, its most important steps first).

Exit codes: 0 every step passed; 1 a step failed or ran out of time (the others still ran and their
figures are reported); 2 the set-up failed (nothing was measured).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import tomllib

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CARRY = REPO / ".gpu"

# What the GPU image lacks of the stage's and its tests' imports (dev/../KINDS.md lists what it has):
# pero-ocr and its compiled needs, python-magic, kazoo (tests/conftest.py), and protobuf at the version
# our generated message code was made for (the image's may be older: gencode/runtime mismatch).
CARRIED = ("pero-ocr", "arabic-reshaper", "Levenshtein", "rapidfuzz", "shapely", "python-magic", "protobuf",
           "kazoo")
DEBS = ("libmagic1", "libmagic-mgc")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
# What the rehearsal's bare venv gets: the part of the GPU image the stage uses, plus an older protobuf.
REHEARSAL_BASE = ("torch==2.13.0", "numpy", "opencv-python-headless", "scipy", "scikit-image", "scikit-learn",
                  "lxml", "numba", "pillow", "pyyaml", "tqdm", "pytest", "fonttools", "prometheus-client",
                  "protobuf==5.29.5")
# The working tree and what it carries travel together, 64 MiB in all.
TRAVEL_LIMIT = 64 * 2**20

ENVIRONMENT_REPORT = r"""
import os, platform, sys
import torch
print(f"python {platform.python_version()} at {sys.executable}; {os.cpu_count()} cores")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"GPU: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
import google.protobuf, pero_ocr, shapely, Levenshtein
print(f"protobuf {google.protobuf.__version__} from {google.protobuf.__file__}")
print(f"pero_ocr from {pero_ocr.__file__}")
from pero_worker.worker.processors import images
from pero_worker.worker.processors.pero_ocr_stage import PeroOcrProcessor
png = open("examples/05_binary_300dpi.png", "rb").read()
assert images.image_format(png) == "png", images.content_type(png)
libmagic = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libmagic" in line})
print(f"libmagic: {', '.join(libmagic)}")
print("imports: complete")
"""


class SetupError(Exception):
    """What must be there to measure anything is not (exit 2, one line)."""


@dataclass(frozen=True)
class Step:
    """One command of the run, with the seconds it may take; `needed` steps stop the run when they fail."""
    name: str
    argv: tuple[str, ...]
    limit_s: int
    needed: bool = False


def plan(python: str, device: str, pages: Path, quick: bool) -> list[Step]:
    """The run's steps in order of importance, so that a run cut short has measured the target first.

    `quick` (the rehearsal on a CPU) runs the same commands on a few pages: it proves them, not the speed.
    """
    repeat_compare, repeat_long, runs, batch = (1, 2, 1, 4) if quick else (6, 40, 3, 16)
    shapes = ("2x1664",) if quick else ("2x1664", "32x1664", "128x1664")
    # on a CPU the batched path reads pages side by side: the rehearsal takes the GPU's parts (shared batches,
    # crop and finishing processes)
    parts = ("--page-threads", "1", "--crop-processes", "1", "--finish-processes", "1") if quick else ()
    bench = (python, "bench/ocr_throughput.py", "--device", device, "--examples", str(pages), *parts)
    throughput, doubled = (*bench, "--batch-pages", str(batch)), (*bench, "--batch-pages", str(2 * batch))
    return [
        Step("environment", (python, "-c", ENVIRONMENT_REPORT), 120, needed=True),
        # the target: pages/s of the worker's batched path on 300 dpi pages, many pages, float32 and float16
        Step("batched", (*throughput, "--modes", "batched", "--repeat", str(repeat_long), "--runs", str(runs)), 150),
        Step("batched_fp16", (*throughput, "--modes", "batched", "--repeat", str(repeat_long), "--runs", str(runs),
                              "--mixed-precision"), 120),
        # what the finishing processes bring: the same with every page finished on the processing thread
        Step("batched_finish_here", (*throughput, "--modes", "batched", "--repeat", str(repeat_compare),
                                     "--runs", str(runs), "--finish-processes", "0"), 120),
        # the same run's comparison with PageParser direct and the one-page path (slow modes: fewer pages)
        Step("compare", (*throughput, "--modes", "direct", "processor", "batched", "--repeat", str(repeat_compare),
                         "--runs", str(runs)), 240),
        # a step twice the size: more pages per network pass and per turn of the finishing processes
        Step("batched_32", (*doubled, "--modes", "batched", "--repeat", str(repeat_long), "--runs", str(runs)), 120),
        Step("tests", (python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ocr_batched.py"), 240),
        Step("profile", (python, "bench/ocr_profile.py", "--device", device, "--runs", "1", "--shapes", *shapes), 120),
    ]


def namespace_links(pyproject: Path) -> dict[str, str]:
    """{'libs': 'libs', 'training': 'pero-ocr', ...}: pero_worker's subpackages and their folders here."""
    package_dir = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-dir"]
    return {name.split(".", 1)[1]: folder for name, folder in package_dir.items() if name.startswith("pero_worker.")}


def carried_pins(names: tuple[str, ...] = CARRIED) -> list[str]:
    """'name==version' of each carried package as installed in the running interpreter (this checkout's .venv)."""
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise SetupError(f"{name} is not installed in {sys.executable}; run `make install` first "
                             "(prepare carries the versions this checkout runs)") from None
    return pins


def result_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("RESULT ")]


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _checked(argv: list[str], what: str, cwd: Path | None = None) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SetupError(f"{what} failed (exit {done.returncode}): {' / '.join(tail)}")


def prepare(carry: Path, python_version: str) -> None:
    wheels, debs, pages = carry / "wheels", carry / "debs", carry / "pages300"
    for folder in (wheels, debs, pages):
        shutil.rmtree(folder, ignore_errors=True)   # one version of each: two would stop the install there
        folder.mkdir(parents=True)
    pins = carried_pins()
    print(f"wheels for CPython {python_version}: {' '.join(pins)}", flush=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    _checked([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
              python_version, "--implementation", "cp", *platforms, "-d", str(wheels), *pins], "pip download")
    print(f"Debian packages: {' '.join(DEBS)}", flush=True)
    _checked(["apt-get", "download", *DEBS], "apt-get download (run apt-get update first?)", cwd=debs)
    print("example pages at 300 dpi", flush=True)
    _checked([sys.executable, str(REPO / "examples" / "make_examples.py"), "--out", str(pages), "--dpi", "300",
              "--max-kb", "1500"], "examples/make_examples.py")
    (carry / "PYTHON").write_text(python_version + "\n")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True).stdout.split("\0")
    tree = sum((REPO / name).stat().st_size for name in listed if name and (REPO / name).is_file())
    size = _folder_size(carry)
    print(f"{carry}: {size / 2**20:.1f} MiB; with the working tree {(size + tree) / 2**20:.1f} MiB "
          f"(the device tool takes {TRAVEL_LIMIT // 2**20} MiB)")
    if size + tree > TRAVEL_LIMIT:
        raise SetupError("too much to travel; carry fewer pages")


def _install(carry: Path, site: Path) -> dict[str, str]:
    """Installs the carried set under `site`; the environment the steps run with."""
    expected = (carry / "PYTHON").read_text().strip() if (carry / "PYTHON").is_file() else None
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if expected != running:
        raise SetupError(f"{carry} was prepared for Python {expected}, this is {running}: "
                         f"run `dev/gpu_check.py prepare --python-version {running}` here")
    if not shutil.which("dpkg-deb"):
        raise SetupError("dpkg-deb is not here to unpack libmagic")
    shutil.rmtree(site, ignore_errors=True)
    packages, links, native = site / "packages", site / "links", site / "native"
    wheels = [str(path) for path in sorted((carry / "wheels").glob("*.whl"))]
    _checked([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
              "--upgrade", "--target", str(packages), *wheels], "pip install")
    for deb in sorted((carry / "debs").glob("*.deb")):
        _checked(["dpkg-deb", "-x", str(deb), str(native)], f"unpacking {deb.name}")
    (links / "pero_worker").mkdir(parents=True)
    for name, folder in namespace_links(REPO / "pyproject.toml").items():
        (links / "pero_worker" / name).symlink_to(REPO / folder)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(links), str(packages), os.environ.get("PYTHONPATH")]))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(native / "usr/lib/x86_64-linux-gnu"),
                                                            os.environ.get("LD_LIBRARY_PATH")]))
    env["MAGIC"] = str(native / "usr/lib/file/magic.mgc")
    env.pop("CI", None)   # the CUDA test may skip where there is no GPU (the rehearsal)
    return env


def _run_step(step: Step, env: dict[str, str], log: TextIO) -> tuple[str, float, str]:
    """(status, seconds, output) of one step; its output is echoed and logged as it comes.

    A reader thread owns the child's stdout (echo, log, keep) while this thread waits for the child's end
    or its limit; at the limit the child's whole process group is killed (the stage's crop processes too).
    """
    shown = step.argv[:2] + ("...",) if step.name == "environment" else step.argv
    banner = f"\n===== {step.name} (limit {step.limit_s} s): {' '.join(shown)}\n"
    sys.stdout.write(banner)
    log.write(banner)
    started = time.monotonic()
    proc = subprocess.Popen(step.argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    output: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            output.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            log.flush()
    reader = threading.Thread(target=pump, name=f"output-{step.name}", daemon=True)
    reader.start()
    try:
        status = "ok" if proc.wait(timeout=step.limit_s) == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = "timed out"
    reader.join(timeout=10)
    return status, time.monotonic() - started, "".join(output)


def step_limit(step: Step, seconds_left: float) -> int:
    """The seconds a step gets: its own limit, or what is left of the run's budget (pure); 0: skip it."""
    left = int(seconds_left)
    return step.limit_s if step.limit_s <= left else (left if left >= 30 else 0)


def run(carry: Path, site: Path, out: Path, device: str, quick: bool, budget_s: int) -> int:
    """Every step in order, within `budget_s` in all (the device call's own limit, less a margin)."""
    deadline = time.monotonic() + budget_s
    out.mkdir(parents=True, exist_ok=True)
    env = _install(carry, site)
    failed = []
    with open(out / "run.log", "w") as log, open(out / "results.txt", "w") as results:
        results.write(f"# dev/gpu_check.py run --device {device}{' --quick' if quick else ''} "
                      f"at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        for step in plan(sys.executable, device, carry / "pages300", quick):
            limit = step_limit(step, deadline - time.monotonic())
            if not limit:
                results.write(f"# {step.name}: skipped, the run's {budget_s} s are spent\n")
                failed.append(step.name)
                continue
            status, seconds, output = _run_step(dataclasses.replace(step, limit_s=limit), env, log)
            results.write(f"# {step.name}: {status} in {seconds:.0f} s\n")
            results.writelines(line + "\n" for line in result_lines(output))
            results.flush()
            if status != "ok":
                failed.append(step.name)
                if step.needed:
                    break
    print(f"\n===== results ({out / 'results.txt'})")
    print((out / "results.txt").read_text(), end="")
    if failed:
        print(f"FAILED steps: {', '.join(failed)}")
        return 1
    return 0


def rehearse(folder: Path) -> int:
    venv = folder / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"bare venv {venv}: {' '.join(REHEARSAL_BASE)}", flush=True)
        _checked([sys.executable, "-m", "venv", str(venv)], "python -m venv")
        _checked([str(python), "-m", "pip", "install", "-q", *REHEARSAL_BASE], "pip install (rehearsal venv)")
    missing = subprocess.run([str(python), "-c", "import pero_ocr"], capture_output=True).returncode != 0
    if not missing:
        raise SetupError(f"{venv} has pero_ocr: it no longer stands for the GPU image")
    version = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    prepare(folder / "carry", version)
    return subprocess.run([str(python), str(Path(__file__).resolve()), "run", "--device", "cpu", "--quick",
                           "--budget", "1200",
                           "--carry", str(folder / "carry"), "--site", str(folder / "site"),
                           "--out", str(folder / "out")]).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="gather what the GPU machine lacks into --carry (here)")
    prep.add_argument("--carry", type=Path, default=DEFAULT_CARRY)
    prep.add_argument("--python-version", default="3.12", help="the GPU image's Python (default %(default)s)")
    go = commands.add_parser("run", help="install --carry and run the GPU checks (there)")
    go.add_argument("--carry", type=Path, default=DEFAULT_CARRY)
    go.add_argument("--site", type=Path, default=Path("/tmp/pero-gpu-site"), help="where the carried set is installed")
    go.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-output")),
                    help="logs and results (default: $OUT, else ./gpu-check-output)")
    go.add_argument("--device", default="cuda")
    go.add_argument("--quick", action="store_true", help="a few pages per step: proves the commands, not the speed")
    go.add_argument("--budget", type=int, default=540,
                    help="seconds for the whole run, install included (default %(default)s: a device call's 600 "
                         "less a margin for the transfers); a step that would not fit is cut short or skipped")
    reh = commands.add_parser("rehearse", help="prepare + run --quick on the CPU in a bare venv (here)")
    reh.add_argument("--folder", type=Path, default=REPO / "run" / "gpu-rehearsal")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare":
            prepare(args.carry, args.python_version)
            return 0
        if args.command == "run":
            return run(args.carry, args.site, args.out, args.device, args.quick, args.budget)
        return rehearse(args.folder)
    except SetupError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
