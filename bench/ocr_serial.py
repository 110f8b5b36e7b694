#!/usr/bin/env python3
"""What a GPU worker's processing thread must do per page besides the network, on this CPU.

On a GPU the line network takes milliseconds a page; a worker then reads as many pages a second as its one
processing thread (begin / run / finish, under the GIL) and its helper processes allow.  This bench runs the
PERO_OCR stage's shared-batch path (the GPU's path) on the CPU with the GPU's helper processes, one of each:
lines cropped in a crop process, pages finished in a finishing process.  It measures, with the processing
thread's own CPU clock (cProfile on time.thread_time), what that thread spends per page outside the network's
forward pass, the serial part that bounds a GPU worker at 1 / that many pages a second whatever its GPU and
cores; and, in-process, the CPU time of one page's tail (PeroOcrProcessor.finish_read_page, what a finishing
process does), which divided by the finishing processes bounds it too.

    .venv/bin/python bench/ocr_serial.py [--examples DIR] [--repeat N] [--finish-processes 0]

Last lines: `RESULT ocr_processing_thread_cpu <ms> ms/page` (outside the network), `RESULT ocr_page_tail_cpu
<ms> ms/page`, `RESULT ocr_serial_bound <pages/s> pages/s` (1000 / the first).  The network runs on the CPU
here, so its own time is left out on purpose; `--finish-processes 0` shows the thread with the tails on it.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from pathlib import Path

from pero_worker.bench import ocr_throughput  # the same pages, layout and request helpers

REPO = Path(__file__).resolve().parents[1]


def _cumulative(stats: pstats.Stats, name: str) -> float:
    return sum(value[3] for key, value in stats.stats.items() if key[2] == name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=Path, default=REPO / "examples")
    ap.add_argument("--model-dir", type=Path, default=REPO / "pero-ocr" / "model")
    ap.add_argument("--repeat", type=int, default=2, help="how many times the example pages are processed")
    ap.add_argument("--batch-pages", type=int, default=5)
    ap.add_argument("--finish-processes", type=int, default=1, help="FINISH_PROCESSES (0: tails on the thread)")
    args = ap.parse_args()

    from pero_worker.worker.processors import build_processor, with_worker_keys
    pages = ocr_throughput.load_pages(args.examples, args.repeat)
    xmls = ocr_throughput.layout_xml(pages)
    keys = {"BATCH_PAGES": str(args.batch_pages), "PAGE_THREADS": "1", "CROP_PROCESSES": "1",
            "FINISH_PROCESSES": str(args.finish_processes), "CPU_PRECISION": "float32"}
    processor = build_processor(with_worker_keys((args.model_dir / "config.ini").read_text(), keys), args.model_dir,
                                device="cpu")
    size = args.batch_pages
    try:
        ocr_throughput._process_group(processor, list(ocr_throughput._requests(pages[:size], xmls, ["o", "p"])))
        requests = list(ocr_throughput._requests(pages, xmls, ["o", "p"]))
        profile = cProfile.Profile(time.thread_time)
        profile.enable()
        for first in range(0, len(requests), size):
            ocr_throughput._process_group(processor, requests[first:first + size])
        profile.disable()
        if args.finish_processes and processor._finish_pool is None:
            print("FAILED: the finishing processes stopped during the run (see the log)")
            return 1
        failed = [r for r in requests if not any(d.name.endswith("_page.xml") for d in r.results)]
        if failed:
            print(f"FAILED: {len(failed)} pages without PAGE XML")
            return 1
        stats = pstats.Stats(profile)
        total = sum(value[2] for value in stats.stats.values())
        network = _cumulative(stats, "_forward")
        thread_ms = 1000 * (total - network) / len(requests)

        alone = build_processor(with_worker_keys((args.model_dir / "config.ini").read_text(), {"BATCH_PAGES": "1"}),
                                args.model_dir, device="cpu")
        tails = []
        for request in requests[:len(pages)]:
            job = processor._read_input(request)
            lines = processor._reader.read_pages([processor._crop_here(job)])[0]
            started = time.thread_time()
            alone.finish_read_page(request, lines)
            tails.append(1000 * (time.thread_time() - started))
        alone.close()
    finally:
        processor.close()
    tail_ms = statistics.median(tails)
    print(f"{len(requests)} pages from {args.examples}, {size} a step, {args.finish_processes} finishing processes")
    for name in ("begin", "_read_input", "decode_image", "_load_layout", "finish"):
        print(f"   {name:16s} {1000 * _cumulative(stats, name) / len(requests):7.1f} ms/page on the processing thread")
    print(f"RESULT ocr_processing_thread_cpu {thread_ms:.1f} ms/page")
    print(f"RESULT ocr_page_tail_cpu {tail_ms:.1f} ms/page")
    print(f"RESULT ocr_serial_bound {1000 / thread_ms:.1f} pages/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
