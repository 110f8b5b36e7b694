#!/usr/bin/env python3
"""Collect the training fonts into one folder, with a manifest of what each font can draw.

Why a separate step: the training machine has no fonts installed, and the glyph
coverage of each font must be known before rendering (a missing glyph renders as
a box that would be learnt as a character). This step needs only fontTools
(Debian: python3-fonttools; run it with /usr/bin/python3), so the training
script itself does not depend on it.

    /usr/bin/python3 pero-ocr/collect_fonts.py --out .fonts

Families named in HELD_OUT_FONTS.txt are never collected: they are kept for the
held-out evaluation.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
from pathlib import Path

from fontTools.ttLib import TTCollection, TTFont  # noqa: F401  (TTCollection: .ttc files are skipped)

from pero_worker.training.charset import ASCII, CHARACTERS

DEFAULT_DIRS = ["/usr/share/fonts", "/usr/share/texmf/fonts/opentype"]
HERE = Path(__file__).resolve().parent
# Families that are not running text (scripts, symbols, small caps that would
# teach wrong lowercase labels, math).
EXCLUDED_WORDS = ("symbol", "dingbat", "math", "emoji", "caps", "chancery", "z003", "chorus",
                  "dunhill", "quotation", "slanted", "icons", "d050000l", "fallback", "music",
                  "keyboard", "initials", "display", "caption", "hairline", "thin", "prop", "cond",
                  "extralight", "mono light")
# Metric clones of families already collected (Liberation = Arimo/Tinos/Cousine; the
# TeX Gyre fonts are the URW base35 designs): they would only weigh those designs twice.
DUPLICATE_FAMILIES = ("arimo", "tinos", "cousine", "tex gyre heros", "tex gyre termes", "tex gyre cursor",
                      "tex gyre pagella", "tex gyre schola", "tex gyre bonum", "tex gyre adventor",
                      "gentium book plus")
STYLE_RANK = {"regular": 0, "roman": 0, "book": 0, "bold": 1, "italic": 2, "oblique": 2,
              "bold italic": 3, "bold oblique": 3}


def read_held_out(path: Path) -> list[str]:
    """Family names, one per line; '#' starts a comment."""
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def font_names(font: TTFont) -> tuple[str, str]:
    """(family, style) preferring the typographic names (IDs 16/17)."""
    name = font["name"]

    def get(*ids: int) -> str:
        for i in ids:
            rec = name.getDebugName(i)
            if rec:
                return rec.strip()
        return ""

    return get(16, 1), get(17, 2)


def describe(path: Path) -> dict | None:
    try:
        font = TTFont(str(path), lazy=True, fontNumber=0)
        cmap = font.getBestCmap() or {}
        family, style = font_names(font)
    except Exception as exc:  # a broken font file is simply not used
        print(f"skip {path}: {exc}", file=sys.stderr)
        return None
    covered = "".join(ch for ch in CHARACTERS if ord(ch) in cmap)
    return {"path": path, "family": family, "style": style, "covered": covered}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(".fonts"), help="folder to copy fonts into (default .fonts)")
    ap.add_argument("--dirs", nargs="*", default=DEFAULT_DIRS, help="folders searched for .ttf/.otf files")
    ap.add_argument("--held-out", type=Path, default=HERE / "HELD_OUT_FONTS.txt")
    ap.add_argument("--min-coverage", type=float, default=0.9,
                    help="least share of the charset a font must draw (all of ASCII is always required)")
    ap.add_argument("--max-styles", type=int, default=4, help="styles kept per family")
    ap.add_argument("--max-mb", type=float, default=44.0, help="size budget of the copied fonts")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    held_out = [n.lower() for n in read_held_out(args.held_out)]
    rng = random.Random(args.seed)
    families: dict[str, list[dict]] = {}
    held_out_files: list[dict] = []
    for d in args.dirs:
        for path in sorted(Path(d).rglob("*")):
            if path.suffix.lower() not in (".ttf", ".otf"):
                continue
            info = describe(path)
            if info is None or not info["family"]:
                continue
            fam = info["family"].lower()
            if any(h in fam for h in held_out):
                held_out_files.append(info)
                continue
            if fam in DUPLICATE_FAMILIES:
                continue
            if any(w in fam or w in info["style"].lower() or w in path.name.lower() for w in EXCLUDED_WORDS):
                continue
            if not set(ASCII) <= set(info["covered"]):
                continue
            if len(info["covered"]) < args.min_coverage * len(CHARACTERS):
                continue
            families.setdefault(info["family"], []).append(info)

    def plain_style(s: dict) -> str:
        return re.sub(r"^\d+ ", "", s["style"].lower())  # Latin Modern: "10 Regular"

    def rank(s: dict) -> int:
        return STYLE_RANK.get(plain_style(s), 5)

    def size(s: dict) -> int:
        return s["path"].stat().st_size

    chosen: list[dict] = []
    for fam in sorted(families):
        styles = families[fam]
        rng.shuffle(styles)
        styles.sort(key=rank)
        seen_styles: set[str] = set()
        for s in styles:
            if plain_style(s) in seen_styles:
                continue
            seen_styles.add(plain_style(s))
            chosen.append(s)
            if len(seen_styles) >= args.max_styles:
                break

    # Size budget: drop the largest files first, but keep at least one style of every family.
    budget = int(args.max_mb * 1024 * 1024)
    chosen.sort(key=lambda s: (rank(s) == 0, -size(s)))
    while sum(size(s) for s in chosen) > budget:
        for i, s in enumerate(chosen):
            if sum(1 for t in chosen if t["family"] == s["family"]) > 1:
                chosen.pop(i)
                break
        else:
            break

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    manifest = []
    for s in sorted(chosen, key=lambda s: (s["family"], s["style"])):
        name = s["path"].name
        shutil.copy2(s["path"], args.out / name)
        manifest.append({"file": name, "family": s["family"], "style": s["style"],
                         "missing": "".join(ch for ch in CHARACTERS if ch not in s["covered"])})
    (args.out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    # The held-out families go to a separate folder: evaluation only, never training.
    held_dir = args.out / "held_out"
    held_dir.mkdir()
    held_manifest = []
    for s in sorted(held_out_files, key=lambda s: (s["family"], s["style"])):
        shutil.copy2(s["path"], held_dir / s["path"].name)
        held_manifest.append({"file": s["path"].name, "family": s["family"], "style": s["style"],
                              "missing": "".join(ch for ch in CHARACTERS if ch not in s["covered"])})
    (held_dir / "manifest.json").write_text(json.dumps(held_manifest, ensure_ascii=False, indent=1),
                                            encoding="utf-8")
    print(f"held out: {len(held_manifest)} fonts -> {held_dir}")
    total = sum((args.out / m["file"]).stat().st_size for m in manifest)
    families = len({m["family"] for m in manifest})
    print(f"{len(manifest)} fonts from {families} families, {total / 1e6:.1f} MB -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
