"""The magazine/book development set of bench/cer.py: our pipeline next to Tesseract, per page and class.

For every page class of `bench/magazine.py` (book, magazine-2col, magazine-3col,
border-photo, rotated, degraded) a few pages are rendered in the held-out font;
each goes through our LAYOUT + PERO_OCR stage processors and through Tesseract
(`tesseract PAGE - --psm 1`: automatic page segmentation with orientation
detection, the fair setting for turned pages) in the same run.  Reported per
page and per class: character error rate (CER, reading order included), bag-
of-words error (order ignored), and our layout's line recall and reading-order
correctness.

Tesseract is a yardstick only, never a dependency of the suite: when the
`tesseract` command is missing the bench installs Debian's `tesseract-ocr`
(as root, with apt-get); if that is impossible its columns say n/a and the bench
says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pero_worker.bench import magazine
from pero_worker.bench.scoring import bag_of_words_error, char_errors, score_layout


def ensure_tesseract() -> str | None:
    """Path of the tesseract command, installing Debian's tesseract-ocr when missing (None: impossible)."""
    found = shutil.which("tesseract")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        print("WARNING: tesseract is not installed and cannot be installed here (needs root and apt-get); "
              "its columns are n/a", file=sys.stderr)
        return None
    print("installing tesseract-ocr with apt-get (bench yardstick only) ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=600"]     # another apt-get may hold the lock for a while
    for cmd in (["apt-get", *wait, "install", "-y", "-qq", "tesseract-ocr"],
                ["sh", "-c", f"apt-get {' '.join(wait)} update -qq && "
                             f"apt-get {' '.join(wait)} install -y -qq tesseract-ocr"]):
        if subprocess.run(cmd, env=env, capture_output=True).returncode == 0 and shutil.which("tesseract"):
            return shutil.which("tesseract")
    print("WARNING: apt-get could not install tesseract-ocr; its columns are n/a", file=sys.stderr)
    return None


def tesseract_text(exe: str, image: np.ndarray, workdir: Path) -> str:
    path = workdir / "page.png"
    cv2.imwrite(str(path), image)
    out = subprocess.run([exe, str(path), "-", "--psm", "1", "-l", "eng"], capture_output=True, text=True,
                         timeout=600, env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"})
    if out.returncode != 0:
        raise RuntimeError(f"tesseract failed: {out.stderr.strip()[:200]}")
    return out.stdout


@dataclass
class ClassTotals:
    edits: int = 0
    chars: int = 0
    t_edits: int = 0
    t_chars: int = 0
    bow: list[float] = field(default_factory=list)
    t_bow: list[float] = field(default_factory=list)
    matched: int = 0
    gt_lines: int = 0
    in_order: int = 0
    pages: int = 0


def _errors(reference: str, text: str) -> tuple[int, int, float]:
    """(character edits, reference characters, bag-of-words error) of one page's text."""
    edits, chars = char_errors(reference, text)
    return edits, chars, bag_of_words_error(reference, text)


def _figures(reader: str, edits: int, chars: int, bow: float) -> str:
    return f" | {reader} cer={100.0 * edits / max(chars, 1):.2f}% bow={100.0 * bow:.2f}%"


def upright_lines(page, orientation: int) -> tuple[list[tuple[np.ndarray, float]], np.ndarray]:
    """Ground-truth baselines in the upright frame (the layout scorer compares horizontal lines)."""
    shape = page.image.shape[:2]
    return [(magazine.to_upright(ln.baseline, shape, orientation), ln.x_height) for ln in page.lines], shape


def run_dev_set(pipeline, pages_per_class: int, family: str, seed: int, use_tesseract: bool,
                save: Path | None, classes: tuple[str, ...] = magazine.PAGE_CLASSES) \
        -> tuple[dict[str, ClassTotals], bool]:
    """Run every page class; returns totals per class and whether Tesseract ran."""
    from pero_worker.worker.layout import analyze_page

    exe = ensure_tesseract() if use_tesseract else None
    totals: dict[str, ClassTotals] = {}
    with tempfile.TemporaryDirectory(prefix="pero-devset-") as tmp:
        for cls in classes:
            tot = totals.setdefault(cls, ClassTotals())
            for i in range(pages_per_class):
                spec = magazine.dev_spec(cls, i, family, seed)
                page = magazine.render_magazine(spec)
                analysis = analyze_page(page.image)
                gt, shape = upright_lines(page, spec.orientation)
                det = [magazine.to_upright(ln.baseline, shape, spec.orientation) for ln in analysis.lines]
                s = score_layout(gt, det)
                tot.pages += 1
                tot.matched += s.matched
                tot.gt_lines += s.gt_lines
                tot.in_order += int(s.order_ok)
                line = (f"dev {cls:13s} {i} dpi={spec.page.dpi} cols={spec.columns} turned={spec.orientation:3d} "
                        f"found={analysis.facts.orientation:3d} lines gt={s.gt_lines} det={s.det_lines} "
                        f"match={s.matched} order={'ok' if s.order_ok else f'{s.order_pairs_ok}/{s.order_pairs}'}")
                name = f"dev_{cls}_{i}.png"
                if pipeline is not None:
                    ok, buf = cv2.imencode(".png", page.image)
                    text = pipeline.run(buf.tobytes(), name)
                    e, n, b = _errors(page.text, text)
                    tot.edits += e
                    tot.chars += n
                    tot.bow.append(b)
                    line += _figures("ours", e, n, b)
                    if save:
                        (save / (name + ".ocr.txt")).write_text(text, encoding="utf-8")
                if exe is not None:
                    ttext = tesseract_text(exe, page.image, Path(tmp))
                    e, n, b = _errors(page.text, ttext)
                    tot.t_edits += e
                    tot.t_chars += n
                    tot.t_bow.append(b)
                    line += _figures("tesseract", e, n, b)
                    if save:
                        (save / (name + ".tesseract.txt")).write_text(ttext, encoding="utf-8")
                if save:
                    cv2.imwrite(str(save / name), page.image)
                    (save / (name + ".gt.txt")).write_text(page.text + "\n", encoding="utf-8")
                print(line, flush=True)
    return totals, exe is not None


def print_dev_summary(totals: dict[str, ClassTotals], ocr: bool, tesseract: bool) -> None:
    """Markdown table per class, then RESULT lines."""
    print("\n| page class | pages | CER ours | CER Tesseract | bag-of-words ours | bag-of-words Tesseract "
          "| line recall | reading order |")
    print("|---|---|---|---|---|---|---|---|")

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100.0 * v:.2f} %"

    for cls, t in totals.items():
        cer = t.edits / t.chars if ocr and t.chars else None
        tcer = t.t_edits / t.t_chars if tesseract and t.t_chars else None
        bow = float(np.mean(t.bow)) if ocr and t.bow else None
        tbow = float(np.mean(t.t_bow)) if tesseract and t.t_bow else None
        recall = t.matched / max(t.gt_lines, 1)
        order = t.in_order / max(t.pages, 1)
        print(f"| {cls} | {t.pages} | {pct(cer)} | {pct(tcer)} | {pct(bow)} | {pct(tbow)} | {pct(recall)} "
              f"| {pct(order)} |")
        t.summary = (cer, tcer, bow, tbow, recall, order)   # type: ignore[attr-defined]
    print()
    for cls, t in totals.items():
        cer, tcer, bow, tbow, recall, order = t.summary   # type: ignore[attr-defined]
        for name, value in (("cer", cer), ("cer_tesseract", tcer), ("bow", bow), ("bow_tesseract", tbow),
                            ("line_recall", recall), ("reading_order", order)):
            print(f"RESULT dev_{cls}_{name} {'n/a' if value is None else f'{100.0 * value:.2f}'} %")
