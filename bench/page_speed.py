"""Time and memory of layout + OCR on one big page, as a worker spends them (issue 10, big pages).

Two pages are rendered with bench/magazine.py (2 columns, title, picture, scan
degradation): an A4 page at 300 dpi (JPEG, 2481 x 3508) and an A3 greyscale page at
600 dpi (uncompressed TIFF, 7016 x 9921, ~70 MB).  Each is processed in a fresh child
process that builds the worker's LAYOUT and PERO_OCR stage processors (bundled model,
CPU unless --device), runs one warm-up request and then --runs timed ones; the child
reports the median seconds of layout, OCR and both, and its peak resident memory
(VmHWM) next to the memory it had after loading the model.

    .venv/bin/python bench/page_speed.py                 # both pages, 3 runs each
    .venv/bin/python bench/page_speed.py --runs 1 --layout-max-side 0   # layout at full resolution

Targets (issue 10): A4 300 dpi <= 2 s, A3 600 dpi <= 4 s and <= 1.5 GB peak.  A request
counts only when the layout found lines and the OCR read text; any failure ends the bench
with exit status 1 and no RESULT line.

    RESULT page_a4_300dpi_seconds <v> s      RESULT page_a4_300dpi_layout_seconds <v> s
    RESULT page_a3_600dpi_seconds <v> s      RESULT page_a3_600dpi_layout_seconds <v> s
    RESULT page_a3_600dpi_peak_rss <v> MB    RESULT page_a3_600dpi_rss_after_load <v> MB
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def render_pages(out: Path, family: str) -> dict[str, Path]:
    """The A4 300 dpi JPEG and the A3 600 dpi greyscale TIFF."""
    import random

    import cv2

    from pero_worker.bench import magazine, synth

    pages = {}
    for name, dpi, size, ext in (("a4_300dpi", 300, (8.27, 11.69), ".jpg"),
                                 ("a3_600dpi", 600, (11.69, 16.54), ".tif")):
        base = synth.PageSpec(dpi=dpi, width_in=size[0], height_in=size[1], font_family=family, font_pt=10,
                              margin_in=0.8, leading=1.25, seed=dpi)
        base = replace(synth.scanned(base, random.Random(dpi)), jpeg_quality=None)
        page = magazine.render_magazine(magazine.MagazineSpec(page=base, columns=2 if dpi == 300 else 3))
        path = out / (name + ext)
        params = [cv2.IMWRITE_JPEG_QUALITY, 85] if ext == ".jpg" else [cv2.IMWRITE_TIFF_COMPRESSION, 1]
        cv2.imwrite(str(path), page.image, params)
        print(f"{name}: {page.image.shape[1]} x {page.image.shape[0]}, {path.stat().st_size / 1e6:.1f} MB, "
              f"{len(page.lines)} lines", flush=True)
        pages[name] = path
        del page
    return pages


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss would carry the parent's peak
    across exec on Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def child(path: Path, runs: int, device: str, max_side: float) -> int:
    """Process one page like a worker does; print one JSON line with the figures."""
    from pero_ocr.core.layout import PageLayout

    from pero_worker.libs import message_pb2
    from pero_worker.worker.processors import build_processor

    model_dir = REPO / "pero-ocr" / "model"
    layout_cfg = "[WORKER]\nMETHOD = LAYOUT\n" + (f"[LAYOUT]\nMAX_WORKING_SIDE = {max_side}\n" if max_side >= 0 else "")
    layout = build_processor(layout_cfg, None, device=device)
    ocr = build_processor((model_dir / "config.ini").read_text(encoding="utf-8"), model_dir, device=device)
    data = path.read_bytes()
    after_load = rss_mb()
    times: list[tuple[float, float]] = []
    lines = chars = 0
    for r in range(runs + 1):
        request = message_pb2.ProcessingRequest(uuid=f"r{r}", page_uuid=f"r{r}")
        request.results.add(name=path.name, content=data)
        t0 = time.perf_counter()
        layout.process(request)
        t1 = time.perf_counter()
        ocr.process(request)
        t2 = time.perf_counter()
        xml = next(x for x in request.results if x.name.endswith("_page.xml")).content
        page = PageLayout()
        page.from_pagexml_string(xml.decode("utf-8"))
        lines = sum(1 for _ in page.lines_iterator())
        chars = sum(len(ln.transcription or "") for ln in page.lines_iterator())
        if lines == 0 or chars == 0:
            print(json.dumps({"error": f"run {r}: {lines} lines, {chars} characters read"}), flush=True)
            return 1
        if r > 0:                     # run 0 warms up (first-call allocations, torch kernels)
            times.append((t1 - t0, t2 - t1))
        del request, page, xml
    peak = peak_rss_mb()
    print(json.dumps({"layout": statistics.median(t[0] for t in times), "ocr": statistics.median(t[1] for t in times),
                      "total": statistics.median(t[0] + t[1] for t in times), "lines": lines, "chars": chars,
                      "after_load_mb": after_load, "peak_mb": peak}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="timed requests per page after one warm-up (default 3)")
    ap.add_argument("--device", default="cpu", help="torch device for OCR: cpu (default), cuda, auto")
    ap.add_argument("--layout-max-side", type=float, default=-1,
                    help="the LAYOUT stage's MAX_WORKING_SIDE (default: its own default; 0 = full resolution)")
    ap.add_argument("--keep", help="keep the rendered pages in this folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(Path(args.child), args.runs, args.device, args.layout_max_side)
    if not (REPO / "pero-ocr" / "model" / "config.ini").is_file():
        print("page_speed: the bundled OCR model (pero-ocr/model) is missing; run `make model` first", file=sys.stderr)
        return 1
    from pero_worker.bench.cer import held_out_families

    with tempfile.TemporaryDirectory(prefix="pero-page-speed-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        pages = render_pages(folder, held_out_families()[0])
        results = {}
        for name, path in pages.items():
            cmd = [sys.executable, __file__, "--child", str(path), "--runs", str(args.runs), "--device", args.device,
                   "--layout-max-side", str(args.layout_max_side)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            last = (out.stdout.strip().splitlines() or ["{}"])[-1]
            try:
                figures = json.loads(last)
            except json.JSONDecodeError:
                figures = {"error": f"child exited {out.returncode}: {out.stderr.strip()[-500:]}"}
            if out.returncode != 0 or "error" in figures:
                print(f"page_speed: {name} failed: {figures.get('error')}", file=sys.stderr)
                return 1
            results[name] = figures
            print(f"{name}: layout {figures['layout']:.2f} s + OCR {figures['ocr']:.2f} s = {figures['total']:.2f} s "
                  f"(median of {args.runs}), {figures['lines']} lines, {figures['chars']} characters, "
                  f"RSS {figures['after_load_mb']:.0f} MB after loading, peak {figures['peak_mb']:.0f} MB", flush=True)
    for name, f in results.items():
        print(f"RESULT page_{name}_seconds {f['total']:.2f} s")
        print(f"RESULT page_{name}_layout_seconds {f['layout']:.2f} s")
        print(f"RESULT page_{name}_peak_rss {f['peak_mb']:.0f} MB")
        print(f"RESULT page_{name}_rss_after_load {f['after_load_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
