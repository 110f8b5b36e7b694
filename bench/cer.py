"""Measure OCR character error rate (and layout quality) of the model-free pipeline.

Renders held-out synthetic pages (a font family the OCR model never saw in
training, single and two-column, 150-300 dpi, scan-degraded) with known text,
runs the LAYOUT stage processor and then the pero-ocr stage processor on
them directly (no RabbitMQ), and compares the page text in reading order
(lines joined by newlines) with the ground truth by Levenshtein distance.
The same is done for the committed pages in examples/.

The development set (bench/devset.py, pages from bench/magazine.py: book,
2- and 3-column magazine pages, a halftone photo touching a scanner border,
pages turned by 90/180/270 degrees, bleed-through and low contrast) is run
first, with Tesseract next to us on every page in the same run: CER and
bag-of-words error per page and per class, and our layout's line recall and
reading order (`--dev-pages N` per class, `--no-tesseract`, `--dev-only`).

Layout quality is reported on its own too (it needs no model): line recall and
precision against the rendered line positions, baseline error, and whether
the lines come out in reading order.

    .venv/bin/python bench/cer.py                 # everything available
    .venv/bin/python bench/cer.py --layout-only   # no OCR model needed
    .venv/bin/python bench/cer.py --pages 30 --save-dir /tmp/cer

The last lines are machine-readable:
    RESULT layout_line_recall <v> %   RESULT layout_line_precision <v> %
    RESULT layout_reading_order <v> %  (pages whose matched lines are all in order)
    RESULT cer_heldout <v> %           RESULT cer_examples <v> %
(CER lines are printed as "n/a" when the OCR model is missing.)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from pero_worker.bench import synth
from pero_worker.bench.scoring import char_errors, score_layout
from pero_worker.worker.layout import analyze_page

REPO = Path(__file__).resolve().parent.parent

TRAINING_FAMILIES = ["DejaVu Serif", "Liberation Serif", "Caladea", "Carlito", "Liberation Sans",
                     "Nimbus Roman", "FreeSerif", "EB Garamond", "Linux Libertine O", "DejaVu Sans"]


def held_out_families() -> list[str]:
    listed = synth.read_held_out_fonts(REPO / "pero-ocr" / "HELD_OUT_FONTS.txt")
    found = synth.available_families(listed)
    if listed and not found:
        print(f"WARNING: held-out fonts {listed} are not installed; falling back", file=sys.stderr)
    if found:
        return found
    fallback = synth.available_families(["Caladea", "Liberation Serif", "DejaVu Serif"])
    return fallback[:1] or ["(default)"]


def heldout_specs(n: int, families: list[str], seed: int = 1234) -> list[synth.PageSpec]:
    """A fixed, varied set of page specs: every 2nd page two columns, dpi cycling 150/200/300."""
    rng = random.Random(seed)
    specs = []
    dpis = [150, 200, 300]
    for i in range(n):
        base = synth.PageSpec(
            dpi=dpis[i % 3],
            font_family=families[i % len(families)],
            font_pt=rng.choice([9, 10, 11, 12]) if dpis[i % 3] > 150 else rng.choice([10, 11, 12]),
            leading=rng.uniform(1.2, 1.45),
            columns=2 if i % 2 else 1,
            title=rng.random() < 0.5,
            rule=rng.random() < 0.3,
            picture=rng.random() < 0.3,
            justify=rng.random() < 0.7,
            binary=(i % 7 == 6),
            seed=seed + i)
        specs.append(synth.scanned(base, rng))
    return specs


def ground_truth_lines(page: synth.SynthPage) -> list[tuple[np.ndarray, float]]:
    return [(line.baseline, line.x_height) for line in page.lines]


# ----------------------------------------------------------------------------- OCR through the stage processors

class Pipeline:
    """LAYOUT stage processor followed by the pero-ocr stage processor, called in-process."""

    def __init__(self, model_dir: Path | None, device: str):
        from pero_worker.worker.processors import build_processor

        self.layout = build_processor("[WORKER]\nMETHOD = LAYOUT\n", None, device=device)
        self.ocr = None
        if model_dir is not None:
            config_text = (model_dir / "config.ini").read_text(encoding="utf-8")
            self.ocr = build_processor(config_text, model_dir, device=device)

    def run(self, image_bytes: bytes, name: str) -> str:
        from pero_ocr.core.layout import PageLayout

        from pero_worker.libs import message_pb2

        request = message_pb2.ProcessingRequest(uuid=name, page_uuid=name)
        request.results.add(name=name, content=image_bytes)
        self.layout.process(request)
        if self.ocr is not None:
            self.ocr.process(request)
        xml = next(r for r in request.results if r.name.endswith("_page.xml"))
        layout = PageLayout()
        layout.from_pagexml_string(xml.content.decode("utf-8"))
        return "\n".join(line.transcription or "" for line in layout.lines_iterator())

    def close(self) -> None:
        self.layout.close()
        if self.ocr is not None:
            self.ocr.close()


def find_model_dir(arg: str | None) -> Path | None:
    path = Path(arg) if arg else REPO / "pero-ocr" / "model"
    return path if (path / "config.ini").is_file() else None


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image, [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == ".jpg" else [])
    assert ok
    return buf.tobytes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=20, help="number of held-out synthetic pages (default 20)")
    ap.add_argument("--layout-only", action="store_true", help="skip OCR even when the model exists")
    ap.add_argument("--model-dir", help="pero-ocr model folder with config.ini (default pero-ocr/model)")
    ap.add_argument("--examples-dir", default=str(REPO / "examples"))
    ap.add_argument("--device", default="auto", help="torch device for OCR: auto, cpu, cuda")
    ap.add_argument("--save-dir", help="write rendered pages, PAGE XML and OCR text here for inspection")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--dev-pages", type=int, default=2,
                    help="pages per class of the magazine/book development set (bench/magazine.py; 0 = skip)")
    ap.add_argument("--no-tesseract", action="store_true",
                    help="do not run (or install) Tesseract next to our pipeline on the development set")
    ap.add_argument("--classes", help="comma-separated page classes of the development set (default: all)")
    ap.add_argument("--dev-only", action="store_true", help="only the development set (no held-out pages, "
                    "no examples)")
    args = ap.parse_args(argv)

    families = held_out_families()
    model_dir = None if args.layout_only else find_model_dir(args.model_dir)
    print(f"held-out font families: {', '.join(families)}")
    print(f"OCR model: {model_dir or 'none (layout only)'}", flush=True)
    save = Path(args.save_dir) if args.save_dir else None
    if save:
        save.mkdir(parents=True, exist_ok=True)

    pipeline = None
    if model_dir is not None:
        from pero_worker.worker.processors import StageConfigError
        try:
            pipeline = Pipeline(model_dir, args.device)
        except StageConfigError as error:
            print(f"WARNING: OCR model in {model_dir} cannot be used ({error}); measuring layout only",
                  file=sys.stderr)

    if args.dev_pages > 0:
        from pero_worker.bench.devset import print_dev_summary, run_dev_set
        from pero_worker.bench.magazine import PAGE_CLASSES

        classes = tuple(c.strip() for c in args.classes.split(",")) if args.classes else PAGE_CLASSES
        unknown = [c for c in classes if c not in PAGE_CLASSES]
        if unknown:
            print(f"cer.py: unknown page class {', '.join(unknown)} (known: {', '.join(PAGE_CLASSES)})",
                  file=sys.stderr)
            return 2
        totals, tess = run_dev_set(pipeline, args.dev_pages, families[0], args.seed, not args.no_tesseract, save,
                                   classes)
        print_dev_summary(totals, pipeline is not None, tess)
    if args.dev_only:
        if pipeline is not None:
            pipeline.close()
        return 0

    tot_gt = tot_det = tot_match = pages_in_order = 0
    base_errs = []
    edits = ref_len = 0
    t_layout = 0.0
    specs = heldout_specs(args.pages, families, args.seed)
    for i, spec in enumerate(specs):
        page = synth.render_page(spec)
        t0 = time.perf_counter()
        analysis = analyze_page(page.image)
        t_layout += time.perf_counter() - t0
        det = [line.baseline for line in analysis.lines]
        s = score_layout(ground_truth_lines(page), det)
        tot_gt += s.gt_lines
        tot_det += s.det_lines
        tot_match += s.matched
        pages_in_order += int(s.order_ok)
        base_errs.append(s.baseline_error)
        line = (f"page {i:02d} dpi={spec.dpi} cols={spec.columns} font={spec.font_family!r} "
                f"title={int(spec.title)} pic={int(spec.picture)} bin={int(spec.binary)} "
                f"lines gt={s.gt_lines} det={s.det_lines} match={s.matched} "
                f"order={'ok' if s.order_ok else f'{s.order_pairs_ok}/{s.order_pairs}'} "
                f"skew={analysis.skew_deg:+.2f}/{spec.rotation_deg:+.2f}")
        name = f"heldout_{i:02d}" + (".png" if spec.binary else ".jpg")
        if pipeline is not None:
            text = pipeline.run(encode(page.image, Path(name).suffix), name)
            e, n = char_errors(page.text, text)
            edits += e
            ref_len += n
            line += f" cer={100.0 * e / max(n, 1):.2f}%"
            if save:
                (save / (name + ".ocr.txt")).write_text(text, encoding="utf-8")
        if save:
            cv2.imwrite(str(save / name), page.image)
            (save / (name + ".gt.txt")).write_text(page.text + "\n", encoding="utf-8")
        print(line, flush=True)

    ex_edits = ex_len = 0
    examples = sorted(p for p in Path(args.examples_dir).glob("*") if p.suffix.lower() in (".jpg", ".png"))
    for img_path in examples:
        gt_path = img_path.with_suffix(".gt.txt")
        if gt_path.is_file():
            image = cv2.imdecode(np.frombuffer(img_path.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
            n_det = len(analyze_page(image).lines)
            n_gt = len([t for t in gt_path.read_text(encoding="utf-8").splitlines() if t.strip()])
            print(f"example {img_path.name}: lines det={n_det} gt={n_gt}", flush=True)
    if pipeline is not None:
        for img_path in examples:
            gt_path = img_path.with_suffix(".gt.txt")
            if not gt_path.is_file():
                continue
            text = pipeline.run(img_path.read_bytes(), img_path.name)
            e, n = char_errors(gt_path.read_text(encoding="utf-8"), text)
            ex_edits += e
            ex_len += n
            print(f"example {img_path.name}: cer={100.0 * e / max(n, 1):.2f}%", flush=True)
            if save:
                (save / (img_path.name + ".ocr.txt")).write_text(text, encoding="utf-8")
    if pipeline is not None:
        pipeline.close()

    n_pages = max(1, len(specs))
    print(f"layout: {t_layout / n_pages:.2f} s/page, mean baseline error {np.mean(base_errs):.3f} x-height")
    print(f"RESULT layout_line_recall {100.0 * tot_match / max(tot_gt, 1):.2f} %")
    print(f"RESULT layout_line_precision {100.0 * tot_match / max(tot_det, 1):.2f} %")
    print(f"RESULT layout_reading_order {100.0 * pages_in_order / n_pages:.2f} %")
    if pipeline is not None and ref_len:
        print(f"RESULT cer_heldout {100.0 * edits / ref_len:.2f} %")
    else:
        print("RESULT cer_heldout n/a %")
    if pipeline is not None and ex_len:
        print(f"RESULT cer_examples {100.0 * ex_edits / ex_len:.2f} %")
    else:
        print("RESULT cer_examples n/a %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
