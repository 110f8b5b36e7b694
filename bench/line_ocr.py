"""Held-out line OCR: character error rate and invented diacritics, with and without the character prior.

Why: the bundled model invents accented letters on plain print (issue 10).  This bench
reads held-out lines through pero-ocr's own `PytorchEngineLineOCR` (CPU) and decodes each
line's logits twice, plain greedy and with the `[CHARACTER_PRIOR]` of the model's config.ini
(worker/processors/character_prior.py), so both figures come from the same network run.

Line sets, all in the held-out font family (pero-ocr/HELD_OUT_FONTS.txt, never trained on):
- `english`: real English prose, not made by our text generator: the licence texts of
  /usr/share/common-licenses (Debian base-files), cut into 20-75 character lines;
- `multilingual`: the training text generator's lines (22 European languages, accents common),
  so a prior that only helps English by hurting real accents shows up here;
each `clean` (no degradation) and `noisy` (the training degradations: blur, noise, JPEG, ...).

"Invented diacritics": letters outside ASCII in the output that are not in the reference line
at all (in `english`, where every line is ASCII, each non-ASCII letter read is one).

    .venv/bin/python bench/line_ocr.py                          # the bundled model, 300 lines per set
    .venv/bin/python bench/line_ocr.py --model-dir /tmp/run/model --lines 200

Last lines: RESULT line_cer_<set>_<variant>_<decoding> <v> %  and
RESULT invented_<set>_<variant>_<decoding> <n> count.
"""
from __future__ import annotations

import argparse
import configparser
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LICENCES = Path("/usr/share/common-licenses")


def english_lines(count: int, seed: int, folder: Path = LICENCES) -> list[str]:
    """`count` lines of real English prose (20-75 characters, cut at spaces), picked with a fixed seed."""
    words: list[str] = []
    for path in sorted(folder.glob("*")):
        if path.is_file() and not path.is_symlink():
            text = path.read_text(encoding="utf-8", errors="replace")
            words += [w for w in re.split(r"\s+", text) if w and w.isascii() and w.isprintable()
                      and not set(w) <= set("-=*_.")]
    rng = random.Random(seed)
    lines = []
    while len(lines) < count and words:
        start = rng.randrange(len(words))
        target = rng.randint(20, 75)
        line = ""
        for word in words[start:start + 40]:
            if len(line) + len(word) + 1 > target and line:
                break
            line = f"{line} {word}" if line else word
        if len(line) >= 8:
            lines.append(line)
    return lines


def invented(ref: str, hyp: str) -> int:
    """Non-ASCII letters in `hyp` that occur nowhere in `ref`."""
    return sum(1 for ch in hyp if ch.isalpha() and not ch.isascii() and ch not in ref)


def render(texts: list[str], augment: bool, seed: int) -> list[tuple[np.ndarray, str]]:
    from pero_worker.training import render_lines as R
    fonts = R.find_system_fonts(R_held_out_family())
    if not fonts:
        raise SystemExit("the held-out font family is not installed (Debian fonts-crosextra-caladea)")
    rng = random.Random(seed)
    cache = R.FontCache()
    neighbours = R.TextGenerator(random.Random(seed + 1))
    out = []
    for text in texts:
        for _ in range(5):
            try:
                font = rng.choice(fonts)
                out.append(R.render_labelled(text, font, rng, cache, neighbours, augment))
                break
            except (ValueError, OSError):
                continue
    return out


def R_held_out_family() -> str:  # noqa: N802  (reads like the constant it stands for)
    from pero_worker.training.collect_fonts import read_held_out
    return read_held_out(REPO / "pero-ocr" / "HELD_OUT_FONTS.txt")[0]


def generator_lines(count: int, seed: int) -> list[str]:
    from pero_worker.training import render_lines as R
    gen = R.TextGenerator(random.Random(seed))
    return [gen.line() for _ in range(count)]


def measure(engine, samples, decodings: dict) -> dict[str, tuple[float, int]]:
    """{decoding name: (cer, invented)} for one set of (crop, text); `decodings` maps names to penalty vectors."""
    import Levenshtein
    from scipy import sparse

    from pero_worker.worker.processors.character_prior import decode
    crops = [np.repeat(c[:, :, None], 3, axis=2) for c, _ in samples]
    _, logits, _ = engine.process_lines(crops)
    out = {}
    for name, pen in decodings.items():
        edits = chars = bad = 0
        for (_, ref), line_logits in zip(samples, logits):
            dense = line_logits.toarray() if sparse.issparse(line_logits) else np.asarray(line_logits)
            dense[dense == 0] = -80.0   # as pero-ocr's TextLine.get_dense_logits
            hyp, _ = decode(dense, engine.characters, pen)
            hyp = " ".join(hyp.split())
            edits += Levenshtein.distance(ref, hyp)
            chars += len(ref)
            bad += invented(ref, hyp)
        out[name] = (edits / max(1, chars), bad)
    return out


def main() -> int:
    import torch
    from pero_ocr.ocr_engine.pytorch_ocr_engine import PytorchEngineLineOCR

    from pero_worker.bench.networks import add_network_option, use_network
    from pero_worker.worker.processors.character_prior import PriorSettings, penalty_vector, prior_settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=REPO / "pero-ocr" / "model")
    ap.add_argument("--prior-config", type=Path, help="config.ini whose [CHARACTER_PRIOR] to use "
                    "(default: the model folder's)")
    ap.add_argument("--lines", type=int, default=300, help="lines per set")
    ap.add_argument("--seed", type=int, default=77)
    add_network_option(ap)
    ap.add_argument("--sweep", help="also decode with these ACCENTED=SYMBOL penalties, e.g. 1,2,3 (tuning)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = configparser.ConfigParser()
    config.read(args.prior_config or args.model_dir / "config.ini")
    settings = prior_settings(config)
    if settings is None:
        print("no [CHARACTER_PRIOR] in the config: 'prior' equals 'greedy'", file=sys.stderr)
    engine = PytorchEngineLineOCR(str(args.model_dir / "ocr_engine.json"), torch.device("cpu"))
    if not use_network(engine, args.network):
        return 1
    decodings = {"greedy": None, "prior": penalty_vector(engine.characters, settings) if settings else None}
    for value in (args.sweep.split(",") if args.sweep else []):
        sweep = PriorSettings(float(value), float(value))
        decodings[f"p{value}"] = penalty_vector(engine.characters, sweep)
    print(f"model {args.model_dir} ({args.network} network), prior {settings}, {args.lines} lines per set")
    results = []
    started = time.perf_counter()
    for set_name, texts in (("english", english_lines(args.lines, args.seed)),
                            ("multilingual", generator_lines(args.lines, args.seed + 1))):
        for variant, augment in (("clean", False), ("noisy", True)):
            samples = render(texts, augment, args.seed + (2 if augment else 3))
            figures = measure(engine, samples, decodings)
            for decoding, (cer, bad) in figures.items():
                print(f"{set_name:12s} {variant:5s} {decoding:6s} CER {cer:7.3%}  invented diacritics {bad:4d}"
                      f"  ({len(samples)} lines)", flush=True)
                results.append((f"{set_name}_{variant}_{decoding}", cer, bad))
    print(f"({time.perf_counter() - started:.0f} s)")
    for key, cer, bad in results:
        print(f"RESULT line_cer_{key} {100 * cer:.3f} %")
        print(f"RESULT invented_{key} {bad} count")
    return 0


if __name__ == "__main__":
    sys.exit(main())
