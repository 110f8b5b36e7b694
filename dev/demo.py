"""End-to-end demo: OCR the bundled sample pages through the real pipeline (`make demo`).

What it does, as an operator would by hand:
  1. starts the local services (ZooKeeper, SFTP, RabbitMQ set-up) unless they are up;
  2. creates three stages with stage_config_manager.py: a model-free layout stage, a pero-ocr
     stage whose model archive (the bundled model in pero-ocr/model/) is uploaded over SFTP,
     and an output stage;
  3. starts a worker, the watchdog (which assigns the worker to whichever stage has work)
     and the log daemon;
  4. uploads the pages in examples/ with publisher.py (its --manifest says which request uuid each
     page got) and downloads the results, matched to the pages by uuid;
  5. writes PAGE XML and plain text per page to demo-output/ and prints the character error
     rate against each page's known text;
  6. stops the processes it started (and the services, if it started them).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
STAGES = ("demo_layout", "demo_ocr", "demo_out")


def page_text(page_xml: bytes) -> str:
    """Text of a PAGE XML document: its lines in document (reading) order, one per line."""
    from lxml import etree

    root = etree.fromstring(page_xml)
    lines = []
    for element in root.iter():
        if not isinstance(element.tag, str) or etree.QName(element).localname != "TextLine":
            continue
        text = ""
        for child in element:
            if isinstance(child.tag, str) and etree.QName(child).localname == "TextEquiv":
                for unicode_node in child:
                    if isinstance(unicode_node.tag, str) and etree.QName(unicode_node).localname == "Unicode":
                        text = unicode_node.text or ""
        lines.append(text)
    return "\n".join(lines)


def character_error_rate(reference: str, hypothesis: str) -> float:
    import Levenshtein

    reference = " ".join(reference.split())
    hypothesis = " ".join(hypothesis.split())
    return Levenshtein.distance(reference, hypothesis) / max(1, len(reference))


def read_manifest(path: Path) -> dict[Path, str]:
    """publisher.py --manifest lines -> {uploaded file (resolved): request uuid}."""
    entries = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                entries[Path(entry["file"]).resolve()] = entry["uuid"]
    return entries


def results_by_uuid(results: Path) -> dict[str, Path]:
    """Downloaded request folders by the uuid their request_info.txt names (folder names are not unique
    enough: 'page.3B.tif' and 'page.tif' both start with 'page')."""
    found = {}
    if results.is_dir():
        for folder in results.iterdir():
            info = folder / "request_info.txt"
            if folder.is_dir() and not folder.is_symlink() and info.is_file():
                key, _, value = info.read_text(encoding="utf-8", errors="replace").partition("\n")[0].partition(":")
                if key.strip() == "uuid" and value.strip():
                    found[value.strip()] = folder
    return found


def match_pages(images: list[Path], manifest: dict[Path, str], folders: dict[str, Path]) -> dict[Path, Path | None]:
    """Each page's result folder, matched by the uuid it was uploaded with (None: not back yet)."""
    return {image: folders.get(manifest.get(image.resolve(), "")) for image in images}


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"demo: {what} failed (exit {result.returncode})")


def _model_archive(folder: Path, target: Path) -> Path:
    with tarfile.open(target, "w:xz") as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=path.name)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(REPO / "demo-output"), help="where results go (default demo-output/)")
    parser.add_argument("--examples", default=str(REPO / "examples"), help="folder of page images with .gt.txt texts")
    parser.add_argument("--model", default=str(REPO / "pero-ocr" / "model"), help="pero-ocr model folder")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for all pages")
    parser.add_argument("--keep-services", action="store_true", help="leave the local services running")
    args = parser.parse_args(argv)

    from pero_worker.dev import local_services

    examples = sorted(p for p in Path(args.examples).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not examples:
        raise SystemExit(f"demo: no page images in {args.examples}")
    model = Path(args.model)
    if not (model / "config.ini").is_file():
        raise SystemExit(f"demo: no bundled model in {model} (config.ini missing)")

    services_were_up = all(state.startswith("running") for state in local_services.service_status().values())
    print("demo: starting local services ...", flush=True)
    services = local_services.ensure_services()
    zk = f"{services.zk_host}:{services.zk_port}"
    auth = ["-u", services.user, "--password-file", str(services.password_file)]

    output = Path(args.output)
    if output.exists():
        shutil.rmtree(output)
    (output / "logs").mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="pero-demo-"))
    procs: list[subprocess.Popen] = []
    try:
        layout_ini = work / "layout.ini"
        layout_ini.write_text("[WORKER]\nMETHOD = LAYOUT\n")
        archive = _model_archive(model, work / "demo_ocr_model.tar.xz")
        print("demo: creating stages (model uploaded over SFTP) ...", flush=True)
        manager = [PY, "scripts/stage_config_manager.py", "-z", zk, *auth]
        _run([*manager, "--name", STAGES[0], "--config", str(layout_ini)], "creating the layout stage")
        _run([*manager, "--name", STAGES[1], "--config", str(model / "config.ini"), "--file", str(archive),
              "--remote-path", f"pero/{STAGES[1]}"], "creating the OCR stage")
        _run([*manager, "--name", STAGES[2]], "creating the output stage")

        print("demo: starting a worker, the watchdog and the log daemon ...", flush=True)
        logs = output / "logs"
        daemon_specs = [
            ("worker", [PY, "worker/run_worker.py", "-z", zk, *auth, "-i", "demo-worker",
                        "--cache-directory", str(REPO / "run" / "demo-cache")]),
            ("watchdog", [PY, "watchdog/worker_watchdog.py", "-z", zk, *auth]),
            ("log_daemon", [PY, "log_daemon/log_daemon.py", "-z", zk, *auth, "-o", str(logs / "workers")]),
        ]
        for name, cmd in daemon_specs:
            handle = open(logs / f"{name}.stderr.log", "w")
            procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                          start_new_session=True))

        print(f"demo: uploading {len(examples)} page(s) ...", flush=True)
        manifest_path = work / "manifest.jsonl"
        _run([PY, "scripts/publisher.py", "-z", zk, *auth, "--stages", *STAGES, "--no-progress",
              "--manifest", str(manifest_path), "--images", *map(str, examples)], "uploading the pages")
        manifest = read_manifest(manifest_path)

        results = output / "results"
        deadline = time.monotonic() + args.timeout
        started = time.monotonic()
        while True:
            _run([PY, "scripts/publisher.py", "-z", zk, *auth, "--download", STAGES[2], "--directory",
                  str(results)], "downloading results")
            matched = match_pages(examples, manifest, results_by_uuid(results))
            done = [image for image, folder in matched.items() if folder is not None]
            if len(done) >= len(examples):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: only {len(done)} of {len(examples)} pages came back within "
                                 f"{args.timeout:.0f} s; see {logs}")
            time.sleep(2)
        elapsed = time.monotonic() - started

        print(f"\ndemo: {len(examples)} page(s) processed in {elapsed:.0f} s\n")
        width = max(len(image.name) for image in examples) + 2
        print(f"{'page':<{width}} {'lines':>5} {'chars':>6} {'CER':>7}  status")
        cers = []
        for image, folder in matched.items():
            xml_files = sorted(folder.glob("*_page.xml")) if folder is not None else []
            statuses = "missing"
            if folder is not None:
                info = folder / "request_info.txt"
                statuses = "ok" if "FAILED" not in info.read_text(errors="replace") else "FAILED"
            if not xml_files:
                print(f"{image.name:<{width}} {'-':>5} {'-':>6} {'-':>7}  {statuses}")
                continue
            xml = xml_files[0].read_bytes()
            text = page_text(xml)
            (output / f"{image.stem}.xml").write_bytes(xml)
            (output / f"{image.stem}.txt").write_text(text + "\n", encoding="utf-8")
            truth = image.with_suffix(".gt.txt")
            cer = character_error_rate(truth.read_text(encoding="utf-8"), text) if truth.exists() else None
            if cer is not None:
                cers.append(cer)
            cer_text = f"{100 * cer:6.2f}%" if cer is not None else "    n/a"
            print(f"{image.name:<{width}} {len(text.splitlines()):>5} {len(text):>6} {cer_text}  {statuses}")
        if cers:
            print(f"\nmean CER {100 * sum(cers) / len(cers):.2f} %")
        print(f"\nresults: {output}/<page>.xml and <page>.txt; raw downloads in {results}; logs in {logs}")
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
        if not services_were_up and not args.keep_services:
            local_services.stop_services()
