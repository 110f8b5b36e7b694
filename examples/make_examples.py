#!/usr/bin/env python3
"""Generate the example pages in this folder (scan-like pages with known text).

Each page is typeset with the synthetic page renderer (bench/synth.py) in the
font family the bundled OCR model never saw in training (pero-ocr/HELD_OUT_FONTS.txt),
degraded like a scan (slight rotation, blur, noise, uneven light, JPEG or
1-bit), and saved as `<name>.jpg|png` with its ground truth `<name>.gt.txt`
(the page text in reading order, one line per text line).

    .venv/bin/python examples/make_examples.py            # rewrite all pages here
    .venv/bin/python examples/make_examples.py --out DIR  # somewhere else
    .venv/bin/python examples/make_examples.py --out DIR --dpi 300 --max-kb 1500
                                                          # every page at 300 dpi (the GPU bench's pages)

Fonts come from Debian packages (fonts-crosextra-caladea for the held-out
family); pages are kept under 300 KB each so that they can live in git.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pero_worker.bench import synth

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

MAX_BYTES = 290_000


@dataclass(frozen=True)
class Example:
    name: str
    spec: synth.PageSpec
    png: bool = False


def examples(family: str) -> list[Example]:
    common = dict(font_family=family)
    return [
        Example("01_single_column_200dpi", synth.PageSpec(
            dpi=200, font_pt=11, columns=1, language="cs", seed=101, rotation_deg=0.7, blur_sigma=0.5,
            noise_sigma=3, illumination=0.25, **common)),
        Example("02_two_columns_title_250dpi", synth.PageSpec(
            dpi=250, font_pt=10, columns=2, title=True, seed=102, rotation_deg=-0.9, blur_sigma=0.6,
            noise_sigma=3, illumination=0.3, width_in=7.0, height_in=9.5, **common)),
        Example("03_title_rule_picture_200dpi", synth.PageSpec(
            dpi=200, font_pt=12, columns=1, title=True, rule=True, picture=True, language="en", seed=103,
            rotation_deg=1.2, blur_sigma=0.5, noise_sigma=3, illumination=0.2, **common)),
        Example("04_two_columns_picture_200dpi", synth.PageSpec(
            dpi=200, font_pt=10, columns=2, title=True, rule=True, picture=True, seed=104, rotation_deg=-0.4,
            blur_sigma=0.6, noise_sigma=3, illumination=0.35, **common)),
        Example("05_binary_300dpi", synth.PageSpec(
            dpi=300, font_pt=10, columns=1, language="de", seed=105, rotation_deg=-1.5, blur_sigma=0.8,
            noise_sigma=4, illumination=0.2, binary=True, width_in=6.3, height_in=8.5, **common), png=True),
    ]


def at_dpi(example: Example, dpi: int) -> Example:
    """The same page (text, layout in inches, degradations) scanned at another resolution."""
    stem = example.name.rsplit("_", 1)[0]
    return Example(f"{stem}_{dpi}dpi", dataclasses.replace(example.spec, dpi=dpi), example.png)


def encode(image: np.ndarray, png: bool, max_bytes: int = MAX_BYTES) -> tuple[bytes, str]:
    if png:
        buf = io.BytesIO()
        Image.fromarray(image).convert("1").save(buf, format="PNG", optimize=True)
        return buf.getvalue(), ".png"
    for quality in (75, 65, 55, 45, 35, 30):
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality,
                                                cv2.IMWRITE_JPEG_OPTIMIZE, 1])
        assert ok
        if len(data) <= max_bytes:
            break
    return data.tobytes(), ".jpg"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE), help="output folder (default: this folder)")
    ap.add_argument("--dpi", type=int, help="render every page at this resolution (default: each page's own)")
    ap.add_argument("--max-kb", type=int, default=MAX_BYTES // 1000,
                    help="JPEG quality steps down until a page fits (default %(default)s kB: pages kept in git)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held_out = synth.available_families(synth.read_held_out_fonts(REPO / "pero-ocr" / "HELD_OUT_FONTS.txt"))
    if not held_out:
        print("the held-out font family (pero-ocr/HELD_OUT_FONTS.txt) is not installed; "
              "install it first (e.g. apt-get install fonts-crosextra-caladea)", file=sys.stderr)
        return 1
    for ex in examples(held_out[0]):
        if args.dpi:
            ex = at_dpi(ex, args.dpi)
        page = synth.render_page(ex.spec)
        data, ext = encode(page.image, ex.png, args.max_kb * 1000)
        for old in out.glob(ex.name + ".*"):
            if old.suffix in (".jpg", ".png"):
                old.unlink()
        (out / (ex.name + ext)).write_bytes(data)
        (out / (ex.name + ".gt.txt")).write_text(page.text + "\n", encoding="utf-8")
        print(f"{ex.name}{ext}: {page.image.shape[1]}x{page.image.shape[0]} px, {len(page.lines)} lines, "
              f"{len(data) / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
