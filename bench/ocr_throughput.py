#!/usr/bin/env python3
"""OCR throughput: pages/second through a real worker against pero-ocr's PageParser called directly.

Both sides get the same pages (examples/, repeated), the same bundled model
(pero-ocr/model/) and the same device, and both start from the same PAGE XML
made beforehand by the layout stage, so the comparison isolates what the
pipeline adds around `PageParser.process_page`: protobuf, RabbitMQ, result
handling, the StageLog.

  direct     PageParser.process_page(image, layout) in a loop, nothing else
  processor  the worker's PERO_OCR processor in-process (what a worker calls per request)
  worker     a real worker process consuming the stage queue (RabbitMQ, ZooKeeper, SFTP model
             download); the clock runs from the end of a warm-up page to the end of the last
             page, read from the requests' StageLogs, so model loading and warm-up are excluded
             as they are for `direct`

Last lines: `RESULT ocr_direct_<device> <pages/s> pages/s`, `RESULT ocr_processor_<device> ...`,
`RESULT ocr_worker_<device> ...` and `RESULT ocr_worker_vs_direct_<device> <percent> %`.
The `worker` mode needs the local services (`make services`); `--modes direct processor`
runs anywhere pero-ocr does (e.g. on a GPU machine without RabbitMQ).
"""
from __future__ import annotations

import argparse
import configparser
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


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


def run_direct(pages, xmls, model_dir: Path, device: str) -> float:
    import torch
    from pero_ocr.core.layout import PageLayout
    from pero_ocr.document_ocr.page_parser import PageParser

    config = configparser.ConfigParser()
    config.read(model_dir / "config.ini")
    parser = PageParser(config, device=torch.device(device), config_path=str(model_dir))
    decoded = [(cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR), name) for name, content in pages]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, xml in xmls.items():
            paths[name] = Path(tmp) / f"{name}.xml"
            paths[name].write_bytes(xml)
        parser.process_page(decoded[0][0], PageLayout(file=str(paths[decoded[0][1]])))  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for image, name in decoded:
            parser.process_page(image, PageLayout(file=str(paths[name])))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return len(decoded) / (time.perf_counter() - started)


def _requests(pages, xmls, stages):
    from pero_worker.libs.message_pb2 import Data, ProcessingRequest
    for name, content in pages:
        yield ProcessingRequest(
            uuid=uuid.uuid4().hex, processing_stages=stages,
            results=[Data(name=name, content=content), Data(name=f"{name}_page.xml", content=xmls[name])])


def run_processor(pages, xmls, model_dir: Path, device: str) -> float:
    from pero_worker.worker.processors import build_processor

    processor = build_processor((model_dir / "config.ini").read_text(), model_dir, device=device)
    requests = list(_requests(pages, xmls, ["ocr", "out"]))
    processor.process(requests[0])   # warm-up, as for direct
    requests = list(_requests(pages, xmls, ["ocr", "out"]))
    started = time.perf_counter()
    for request in requests:
        processor.process(request)
    elapsed = time.perf_counter() - started
    processor.close()
    return len(requests) / elapsed


def run_worker(pages, xmls, model_dir: Path, device: str) -> float:
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
                 "--config", str(model_dir / "config.ini"), "--file", str(archive),
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

        def wait_count(count: int) -> None:
            # Slow polling on purpose: frequent broker round trips would take CPU from the worker
            # on a small machine; the timing itself comes from the StageLogs below.
            while (mq.queue_length(out) or 0) < count:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the worker did not finish the OCR pages (see its status in ZooKeeper)")
                time.sleep(0.5)
        wait_count(len(pages) + 1)
        # The clock: from the end of the first (warm-up) page to the end of the last, as the worker's
        # StageLogs record them; so len(pages) pages were processed in that window.
        from pero_worker.libs.message_pb2 import ProcessingRequest
        ends, in_stage = [], []
        while (delivery := mq.get(out)) is not None:
            entry = ProcessingRequest.FromString(delivery.body).logs[-1]
            ends.append(entry.end.ToNanoseconds() / 1e9)
            in_stage.append((entry.end.ToNanoseconds() - entry.start.ToNanoseconds()) / 1e9)
            mq.ack(delivery.delivery_tag)
        ends.sort()
        window = ends[-1] - ends[0]
        in_stage = sorted(in_stage)[:-1]   # without the slowest, i.e. the warm-up page
        print(f"   worker: {statistics.mean(in_stage):.3f} s/page inside the stage, "
              f"{window / len(pages):.3f} s/page wall clock", flush=True)
        return len(pages) / window
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=Path, default=REPO / "examples")
    parser.add_argument("--model-dir", type=Path, default=REPO / "pero-ocr" / "model")
    parser.add_argument("--repeat", type=int, default=2, help="how many times the example pages are processed")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--modes", nargs="+", default=["direct", "processor", "worker"],
                        choices=["direct", "processor", "worker"])
    args = parser.parse_args()

    pages = load_pages(args.examples, args.repeat)
    xmls = layout_xml(pages)
    runners = {"direct": run_direct, "processor": run_processor, "worker": run_worker}
    # Modes alternate within each run so that drifting machine load hits them alike.
    rates: dict[str, list[float]] = {mode: [] for mode in args.modes}
    for attempt in range(args.runs):
        for mode in args.modes:
            rate = runners[mode](pages, xmls, args.model_dir, args.device)
            rates[mode].append(rate)
            print(f"{mode:>9} run {attempt + 1}: {len(pages)} pages, {rate:.3f} pages/s", flush=True)
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    device = args.device.replace(":", "")
    print()
    for mode, rate in medians.items():
        print(f"RESULT ocr_{mode}_{device} {rate:.3f} pages/s")
    if "direct" in medians and "worker" in medians:
        print(f"RESULT ocr_worker_vs_direct_{device} {100 * medians['worker'] / medians['direct']:.1f} %")
    if "direct" in medians and "processor" in medians:
        print(f"RESULT ocr_processor_vs_direct_{device} {100 * medians['processor'] / medians['direct']:.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
