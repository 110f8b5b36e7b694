#!/usr/bin/env python3
"""OCR throughput: pages/second through a real worker against pero-ocr's PageParser called directly.

All modes get the same pages (examples/, repeated), the same bundled model
(pero-ocr/model/) and the same device, and all start from the same PAGE XML
made beforehand by the layout stage, so the comparison isolates what the
pipeline adds around (or saves on) `PageParser.process_page`.

  direct          PageParser.process_page(image, layout) in a loop, nothing else
  processor       the worker's PERO_OCR processor in-process, one request at a time (BATCH_PAGES = 1)
  batched         the same processor with cross-page batching ([WORKER] BATCH_PAGES = --batch-pages):
                  groups of pages through begin/run/finish, as the worker's processing thread calls them
                  (with crops ahead, as on a GPU: run a group, begin the next, finish the group)
  worker          a real worker process consuming the stage queue (RabbitMQ, ZooKeeper, SFTP model
                  download); the clock runs from the end of a warm-up page to the end of the last
                  page, read from the requests' StageLogs, so model loading and warm-up are excluded
                  as they are for `direct`
                  (the stage config says BATCH_PAGES = 1: one page per step)
  worker-batched  the same with BATCH_PAGES = --batch-pages in the stage config (on a CPU the pages of a
                  step are read in parallel, PAGE_THREADS; on a GPU in shared batches)

The model's own [WORKER] keys (the bundled model asks for BATCH_PAGES = 4) are replaced by each mode's;
`--cpu-precision` sets CPU_PRECISION in every worker mode (bfloat16 against float32 on the same pages).

Every mode's PAGE XML is scored against examples/*.gt.txt (CER over the pages that have one), so a
speed-up that changes the text shows.  With `--device cuda` the GPU's utilisation is sampled during
each timed section (nvidia-smi, else torch.cuda.utilization).

Last lines: `RESULT ocr_<mode>_<device> <pages/s> pages/s` per mode, `RESULT cer_<mode>_<device> <v> %`,
`RESULT ocr_<mode>_<device>_gpu_util <v> %` on CUDA, and the ratios measured in the same run
(`ocr_worker_vs_direct`, `ocr_batched_vs_processor`, `ocr_worker_batched_vs_worker`, ...).
A mode whose requests failed says so and the bench exits 1.
The worker modes need the local services (`make services`); on a machine without RabbitMQ (e.g. a GPU
machine) `--modes direct processor batched` measures the in-process path the worker runs.
"""
from __future__ import annotations

import argparse
import configparser
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MODES = ("direct", "processor", "batched", "worker", "worker-batched")


class BenchFailure(Exception):
    """A mode did not process every page successfully: its figure is not reported."""


def load_pages(examples: Path, repeat: int) -> list[tuple[str, bytes]]:
    pages = sorted(p for p in examples.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(p.name, p.read_bytes()) for p in pages] * repeat


def layout_xml(pages: list[tuple[str, bytes]]) -> dict[str, bytes]:
    """PAGE XML per distinct page from the layout stage (outside every timed section)."""
    from pero_worker.libs.message_pb2 import Data, ProcessingRequest
    from pero_worker.worker.processors import build_processor

    layout = build_processor("[WORKER]\nMETHOD = LAYOUT\n", None)
    result = {}
    for name, content in pages:
        if name in result:
            continue
        request = ProcessingRequest(uuid=uuid.uuid4().hex, results=[Data(name=name, content=content)])
        layout.process(request)
        result[name] = next(d.content for d in request.results if d.name.endswith("_page.xml"))
    layout.close()
    return result


def page_text(xml: bytes) -> str:
    from pero_ocr.core.layout import PageLayout
    layout = PageLayout(file=io.BytesIO(xml))
    return "\n".join(line.transcription or "" for line in layout.lines_iterator())


def cer(examples: Path, texts: dict[str, str]) -> float | None:
    """CER in % over the pages with a ground truth (examples/<stem>.gt.txt)."""
    from pero_worker.bench.scoring import char_errors
    edits = length = 0
    for name, text in texts.items():
        truth = examples / (Path(name).stem + ".gt.txt")
        if truth.is_file():
            errors, size = char_errors(truth.read_text(encoding="utf-8"), text)
            edits, length = edits + errors, length + size
    return 100.0 * edits / length if length else None


class GpuSampler:
    """Mean GPU utilisation (%) while running: nvidia-smi every 0.2 s, else torch.cuda.utilization()."""

    def __init__(self, device: str) -> None:
        self.enabled = device.startswith("cuda")
        self.index = int(device.split(":", 1)[1]) if ":" in device else 0
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float | None:
        if shutil.which("nvidia-smi"):
            done = subprocess.run(["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu",
                                   "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            return float(done.stdout.strip().splitlines()[0]) if done.returncode == 0 and done.stdout.strip() else None
        import torch
        try:
            return float(torch.cuda.utilization(self.index))
        except Exception:   # no NVML: no figure rather than a wrong one
            return None

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            value = self._sample()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join(timeout=10)

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def run_direct(pages, xmls, model_dir: Path, device: str, args) -> dict:
    import torch
    from pero_ocr.core.layout import PageLayout
    from pero_ocr.document_ocr.page_parser import PageParser

    config = configparser.ConfigParser()
    config.read(model_dir / "config.ini")
    parser = PageParser(config, device=torch.device(device), config_path=str(model_dir))
    decoded = [(cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR), name) for name, content in pages]
    layouts = [PageLayout(file=io.BytesIO(xmls[name])) for _image, name in decoded]
    parser.process_page(decoded[0][0], PageLayout(file=io.BytesIO(xmls[decoded[0][1]])))  # warm-up
    _sync(device)
    texts = {}
    with GpuSampler(device) as gpu:
        started, cpu = time.perf_counter(), time.process_time()
        for (image, _name), layout in zip(decoded, layouts):
            parser.process_page(image, layout)
        _sync(device)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    for (_image, name), layout in zip(decoded, layouts):
        texts[name] = "\n".join(line.transcription or "" for line in layout.lines_iterator())
    return {"rate": len(decoded) / elapsed, "cpu": cpu / len(decoded), "texts": texts, "gpu": gpu.mean}


def _requests(pages, xmls, stages):
    from pero_worker.libs.message_pb2 import Data, ProcessingRequest
    for name, content in pages:
        yield ProcessingRequest(
            uuid=uuid.uuid4().hex, processing_stages=stages,
            results=[Data(name=name, content=content), Data(name=f"{name}_page.xml", content=xmls[name])])


def _texts(requests) -> dict[str, str]:
    texts = {}
    for request in requests:
        image = request.results[0].name
        texts[image] = page_text(next(d.content for d in request.results if d.name == f"{image}_page.xml"))
    return texts


def stage_config(model_dir: Path, args, batched: bool) -> str:
    """The model's config.ini with the mode's [WORKER] keys: one page per step, or the bench's batching."""
    from pero_worker.worker.processors import with_worker_keys
    keys = {"BATCH_PAGES": str(args.batch_pages if batched else 1)}
    if batched and args.batch_pixels:
        keys["BATCH_PIXELS"] = str(args.batch_pixels)
    if batched and args.crop_processes is not None:
        keys["CROP_PROCESSES"] = str(args.crop_processes)
    if batched and args.page_threads is not None:
        keys["PAGE_THREADS"] = str(args.page_threads)
    if batched and args.finish_processes is not None:
        keys["FINISH_PROCESSES"] = str(args.finish_processes)
    if batched and args.mixed_precision:
        keys["MIXED_PRECISION"] = "TRUE"
    if args.cpu_precision:
        keys["CPU_PRECISION"] = args.cpu_precision
    return with_worker_keys((model_dir / "config.ini").read_text(), keys)


def _process_group(processor, group) -> None:
    """What the worker's processing thread does with a group: begin each, run all, finish each."""
    jobs = [processor.begin(request) for request in group]
    processor.run(jobs)
    for job in jobs:
        processor.finish(job)


def _process_groups(processor, groups) -> None:
    """What the worker's processing thread does with consecutive groups: with crops ahead (worker/processing.py)
    a group runs, the next is begun while its tails run, then it finishes; else one group after the other."""
    if not processor.crops_ahead:
        for group in groups:
            _process_group(processor, group)
        return
    ahead = None
    for group in [*groups, None]:
        if ahead is not None:
            processor.run(ahead)
        jobs = [processor.begin(request) for request in group] if group is not None else None
        for job in ahead or ():
            processor.finish(job)
        ahead = jobs


def run_processor(pages, xmls, model_dir: Path, device: str, args, batched: bool = False) -> dict:
    from pero_worker.worker.processors import build_processor

    processor = build_processor(stage_config(model_dir, args, batched), model_dir, device=device)
    size = processor.batch_pages if batched else 1
    if batched and size < 2:
        raise BenchFailure("the processor did not take up BATCH_PAGES (see the log)")
    warm = list(_requests(pages[:size], xmls, ["ocr", "out"]))
    _process_group(processor, warm) if batched else processor.process(warm[0])   # warm-up, as for direct
    requests = list(_requests(pages, xmls, ["ocr", "out"]))
    with GpuSampler(device) as gpu:
        started, cpu = time.perf_counter(), time.process_time()
        if batched:
            _process_groups(processor, [requests[first:first + size] for first in range(0, len(requests), size)])
        else:
            for request in requests:
                processor.process(request)
        _sync(device)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    processor.close()
    return {"rate": len(requests) / elapsed, "cpu": cpu / len(requests), "texts": _texts(requests),
            "gpu": gpu.mean}


def run_batched(pages, xmls, model_dir: Path, device: str, args) -> dict:
    return run_processor(pages, xmls, model_dir, device, args, batched=True)


def run_worker_batched(pages, xmls, model_dir: Path, device: str, args) -> dict:
    return run_worker(pages, xmls, model_dir, device, args, batched=True)


def _stage_config_file(model_dir: Path, work: Path, args, batched: bool) -> Path:
    path = work / "config.ini"
    path.write_text(stage_config(model_dir, args, batched))
    return path


def _collect_worker_results(mq, out: str) -> tuple[float, list]:
    """Pages/s from the StageLogs' start and end times and the output requests; BenchFailure if any failed."""
    from pero_worker.libs.message_pb2 import ProcessingRequest
    spans, done = [], []
    while (delivery := mq.get(out)) is not None:
        request = ProcessingRequest.FromString(delivery.body)
        entry = request.logs[-1]
        mq.ack(delivery.delivery_tag)
        if entry.status != "OK":
            raise BenchFailure(f"a request failed in the worker ({entry.status}): {entry.log[-300:]}")
        spans.append((entry.start.ToNanoseconds() / 1e9, entry.end.ToNanoseconds() / 1e9))
        done.append(request)
    rate, counted, window = worker_rate(spans)
    print(f"   worker: {statistics.median(end - start for start, end in spans):.3f} s median inside the stage "
          f"per request, {window / counted:.3f} s/page wall clock over {counted} pages", flush=True)
    return rate, done


def worker_rate(spans: list[tuple[float, float]]) -> tuple[float, int, float]:
    """(pages/s, pages counted, window) from the requests' StageLog (start, end) times (pure).

    The clock runs from the end of the first processing step (the warm-up) to the last end, and counts the
    pages of the later steps.  A step's requests share their StageLog start (the worker stamps a group when it
    begins it), so the warm-up step is every request that started with the first one to end: its pages end a
    few milliseconds apart as the worker stores them one by one, and must not count inside the window.
    """
    first_start = min(spans, key=lambda span: span[1])[0]
    warm_up = [end for start, end in spans if start == first_start]
    later = [end for start, end in spans if start != first_start]
    if not later:
        raise BenchFailure("every page was read in the warm-up step: no time window to measure (use more pages)")
    window = max(later) - max(warm_up)
    if window <= 0:
        raise BenchFailure("the pages after the warm-up step ended with it: no time window to measure")
    return len(later) / window, len(later), window


def run_worker(pages, xmls, model_dir: Path, device: str, args, batched: bool = False) -> dict:
    from pero_worker.dev.local_services import ensure_services, write_server_lists
    from pero_worker.libs import zk_paths
    from pero_worker.libs.addresses import Address
    from pero_worker.libs.config import ConnectionConfig
    from pero_worker.libs.mq import MQSession, MQSettings
    from pero_worker.libs.zk import ZooKeeper

    services = ensure_services()
    chroot = f"/bench_ocr_{uuid.uuid4().hex[:8]}"
    zk_arg = f"{services.zk_host}:{services.zk_port}{chroot}"
    # Authenticated like the tools below: nodes they create belong to the SASL user.
    servers = (Address(services.zk_host, services.zk_port),)
    admin = ZooKeeper(ConnectionConfig(servers, username=services.user, password=services.password)).start()
    admin.ensure_path(chroot)
    zk = ZooKeeper(ConnectionConfig(servers, zookeeper_chroot=chroot, username=services.user,
                                    password=services.password)).start()
    write_server_lists(zk, services)
    work = Path(tempfile.mkdtemp(prefix="pero-ocr-bench-"))
    stage, out = f"bench_ocr_{uuid.uuid4().hex[:6]}", f"bench_ocr_out_{uuid.uuid4().hex[:6]}"
    archive = work / "model.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    auth = ["-u", services.user, "--password-file", str(services.password_file)]
    py = sys.executable
    for cmd in ([py, "scripts/stage_config_manager.py", "-z", zk_arg, *auth, "--name", stage,
                 "--config", str(_stage_config_file(model_dir, work, args, batched)), "--file", str(archive),
                 "--remote-path", f"pero/{stage}"],
                [py, "scripts/stage_config_manager.py", "-z", zk_arg, *auth, "--name", out]):
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    mq = MQSession(MQSettings(servers=(Address(services.mq_host, services.mq_port),),
                              username="guest", password="guest"), name="ocr-bench")
    mq.open(retry_for=10)
    worker_id = f"bench_ocr_w_{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen([py, "worker/run_worker.py", "-z", zk_arg, *auth, "-i", worker_id,
                             "--cache-directory", str(work / "cache"), "--device", device,
                             "--disable-remote-logging", "--metrics-address", "127.0.0.1:0"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for request in _requests(pages[:1] + pages, xmls, [stage, out]):   # one extra page for warm-up
            mq.publish(stage, request.SerializeToString())
        mq.wait_for_confirms(60)
        zk.set_text(zk_paths.worker_queue(worker_id), stage)
        deadline = time.monotonic() + 1800
        with GpuSampler(device) as gpu:
            # Slow polling on purpose: frequent broker round trips would take CPU from the worker
            # on a small machine; the timing itself comes from the StageLogs.
            while (mq.queue_length(out) or 0) < len(pages) + 1:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise BenchFailure("the worker did not finish the OCR pages (see its status in ZooKeeper)")
                time.sleep(0.5)
        rate, done = _collect_worker_results(mq, out)
        return {"rate": rate, "cpu": None, "texts": _texts(done), "gpu": gpu.mean}
    finally:
        zk.set_text(zk_paths.worker_enabled(worker_id), "false")
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for queue in (stage, out):
            try:
                mq.delete_queue(queue)
            except Exception:
                pass
        mq.close()
        zk.stop()
        admin.delete(chroot, recursive=True)
        admin.stop()
        shutil.rmtree(work, ignore_errors=True)


RUNNERS = {"direct": run_direct, "processor": run_processor, "batched": run_batched, "worker": run_worker,
           "worker-batched": run_worker_batched}
RATIOS = (("worker", "direct"), ("processor", "direct"), ("batched", "direct"), ("batched", "processor"),
          ("worker-batched", "worker"), ("worker-batched", "direct"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=Path, default=REPO / "examples")
    parser.add_argument("--model-dir", type=Path, default=REPO / "pero-ocr" / "model")
    parser.add_argument("--repeat", type=int, default=2, help="how many times the example pages are processed")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch-pages", type=int, default=8, help="BATCH_PAGES of the batched modes")
    parser.add_argument("--batch-pixels", type=int, help="BATCH_PIXELS of the batched modes (default: by device)")
    parser.add_argument("--crop-processes", type=int, help="CROP_PROCESSES of the batched modes (default: by device)")
    parser.add_argument("--page-threads", type=int, help="PAGE_THREADS of the batched modes (default: by device)")
    parser.add_argument("--finish-processes", type=int,
                        help="FINISH_PROCESSES of the batched modes (default: by device; 0: pages finished on the "
                             "processing thread)")
    parser.add_argument("--cpu-precision", choices=("auto", "float32", "bfloat16"),
                        help="CPU_PRECISION of every worker mode (default: the model config's, else auto)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="MIXED_PRECISION = TRUE in the batched modes (float16 autocast; CUDA only)")
    return parser


def report(results: dict[str, list[dict]], device: str, examples: Path) -> None:
    medians = {mode: statistics.median(r["rate"] for r in runs) for mode, runs in results.items()}
    print()
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for mode, rate in medians.items():
        print(f"RESULT ocr_{mode.replace('-', '_')}_{device} {rate:.3f} pages/s")
    for mode, runs in results.items():
        cpu = [r["cpu"] for r in runs if r["cpu"] is not None]
        if cpu:
            print(f"RESULT ocr_{mode.replace('-', '_')}_{device}_cpu_seconds {statistics.median(cpu):.3f} s/page")
        value = cer(examples, runs[-1]["texts"])
        if value is not None:
            print(f"RESULT cer_{mode.replace('-', '_')}_{device} {value:.2f} %")
        gpu = [r["gpu"] for r in runs if r["gpu"] is not None]
        if gpu:
            print(f"RESULT ocr_{mode.replace('-', '_')}_{device}_gpu_util {statistics.median(gpu):.1f} %")
    for mode, base in RATIOS:
        if mode in medians and base in medians:
            print(f"RESULT ocr_{mode.replace('-', '_')}_vs_{base.replace('-', '_')}_{device} "
                  f"{100 * medians[mode] / medians[base]:.1f} %")


def main() -> int:
    args = build_parser().parse_args()
    pages = load_pages(args.examples, args.repeat)
    xmls = layout_xml(pages)
    # Modes alternate within each run so that drifting machine load hits them alike.
    results: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    failed = []
    for attempt in range(args.runs):
        for mode in args.modes:
            try:
                outcome = RUNNERS[mode](pages, xmls, args.model_dir, args.device, args)
            except BenchFailure as error:
                print(f"{mode:>14} run {attempt + 1}: FAILED: {error}", flush=True)
                failed.append(mode)
                continue
            results[mode].append(outcome)
            print(f"{mode:>14} run {attempt + 1}: {len(pages)} pages, {outcome['rate']:.3f} pages/s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    report({mode: runs for mode, runs in results.items() if runs and mode not in failed},
           args.device.replace(":", ""), args.examples)
    if failed:
        print(f"FAILED modes (no figure reported): {', '.join(sorted(set(failed)))}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
