#!/usr/bin/env python3
"""Where one page's time goes in the PERO_OCR stage: decode, PAGE XML in, line crops, the line network,
turning its output into transcriptions and sparse logits, confidences, PAGE XML and logits out.

Same pages (examples/), same bundled model and the same layout-stage PAGE XML as bench/ocr_throughput.py,
run through pero-ocr's own parts one step at a time (what PageParser.process_page does, split up).  Also
the line network alone on fixed batches (N lines x W px), which shows whether bigger batches make the
network itself cheaper per pixel on this device.

Last lines: `RESULT ocr_profile_<step>_<device> <seconds> s/page` (medians over the pages and runs),
`RESULT ocr_profile_network_share_<device> <percent> %` and
`RESULT ocr_network_<N>x<W>_<device> <kpx> kpx/s` (wall clock; on a loaded machine compare within one run).
"""
from __future__ import annotations

import argparse
import configparser
import io
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STEPS = ("decode", "xml_in", "crop", "network", "to_results", "confidence", "xml_out", "logits_out")


def _timed(times: dict[str, list[float]], label: str, function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    times[label].append(time.perf_counter() - started)
    return result


def profile_pages(parser, pages, xmls, device: str, runs: int) -> dict[str, list[float]]:
    import cv2
    import numpy as np
    import torch
    from pero_ocr.core.layout import PageLayout

    engine = parser.ocr.ocr_engine
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    network = [0.0]
    original = engine.run_ocr

    def timed_run_ocr(batch):
        started = time.perf_counter()
        result = original(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        network[0] += time.perf_counter() - started
        return result
    engine.run_ocr = timed_run_ocr
    try:
        for _run in range(runs):
            for name, content in pages:
                image = _timed(times, "decode", cv2.imdecode, np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
                layout = _timed(times, "xml_in", PageLayout, file=io.BytesIO(xmls[name]))
                _timed(times, "crop", parser.line_cropper.process_page, image, layout)
                network[0] = 0.0
                started = time.perf_counter()
                parser.ocr.process_page(image, layout)
                total = time.perf_counter() - started
                times["network"].append(network[0])
                times["to_results"].append(total - network[0])   # batching, softmax, sparse logits
                _timed(times, "confidence", parser.update_confidences, layout)
                _timed(times, "xml_out", layout.to_pagexml_string)
                _timed(times, "logits_out", layout.save_logits_bytes, missing_line_logits_ok=True)
    finally:
        engine.run_ocr = original
    return times


def network_rates(engine, device: str, shapes: list[tuple[int, int]], reps: int) -> dict[str, float]:
    import torch
    rates = {}
    for count, width in shapes:
        batch = torch.rand(count, 3, engine.line_px_height, width, device=device)
        with torch.no_grad():
            engine.model(batch)
            spent = []
            for _ in range(reps):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                started = time.perf_counter()
                engine.model(batch)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                spent.append(time.perf_counter() - started)
        rates[f"{count}x{width}"] = count * width / statistics.median(spent) / 1000
    return rates


def main() -> int:
    from pero_worker.bench.networks import add_network_option, use_network

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=Path, default=REPO / "examples")
    ap.add_argument("--model-dir", type=Path, default=REPO / "pero-ocr" / "model")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--runs", type=int, default=2)
    add_network_option(ap)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    ap.add_argument("--shapes", nargs="*", default=["2x1664", "8x1664", "32x1664"],
                    help="network-only batches N x W to time (empty: skip)")
    args = ap.parse_args()

    import torch
    from pero_ocr.document_ocr.page_parser import PageParser

    from pero_worker.bench.ocr_throughput import layout_xml, load_pages

    pages = load_pages(args.examples, 1)
    xmls = layout_xml(pages)
    config = configparser.ConfigParser()
    config.read(args.model_dir / "config.ini")
    parser = PageParser(config, device=torch.device(args.device), config_path=str(args.model_dir))
    if args.threads:
        torch.set_num_threads(args.threads)
    if not use_network(parser.ocr.ocr_engine, args.network):
        return 1
    times = profile_pages(parser, pages, xmls, args.device, args.runs)
    device = args.device.replace(":", "")
    print(f"network: {args.network}, {torch.get_num_threads()} torch threads; "
          f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    medians = {step: statistics.median(values) for step, values in times.items()}
    for step, value in medians.items():
        print(f"RESULT ocr_profile_{step}_{device} {value:.4f} s/page")
    print(f"RESULT ocr_profile_network_share_{device} {100 * medians['network'] / sum(medians.values()):.1f} %")
    shapes = [tuple(int(part) for part in shape.split("x")) for shape in args.shapes]
    for shape, rate in network_rates(parser.ocr.ocr_engine, args.device, shapes, 3).items():
        print(f"RESULT ocr_network_{shape}_{device} {rate:.1f} kpx/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
