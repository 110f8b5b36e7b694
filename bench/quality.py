"""Quality flags on known pages: is every turned or textless page flagged, and no good page?

The examples/ pages as they are (must not be flagged), turned clockwise by 90, 180 and 270 degrees
(must be flagged `upside_down` / `sideways`), and pages with ink but no text (a dark scan border
with a picture; a picture alone; must be flagged `no_text`) plus a blank page (must not be
flagged) go through the LAYOUT and PERO_OCR processors with the bundled model, in-process.

    .venv/bin/python bench/quality.py

Last lines: RESULT quality_missed <n> pages (should be flagged, were not), RESULT quality_false <n>
pages (flagged, should not be), RESULT ocr_seconds_good_median / ocr_seconds_flagged_median <v> s
(time of the PERO_OCR stage: the orientation check runs only on doubtful pages). Exits 1 when a
page failed to process (no RESULT lines then).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def pages() -> list[tuple[str, np.ndarray, set[str]]]:
    """(name, BGR image, flags it must have — empty: must have none)."""
    import cv2
    out = []
    for path in sorted((REPO / "examples").glob("*.*")):
        if path.suffix.lower() not in (".jpg", ".png"):
            continue
        image = cv2.imread(str(path))
        out.append((path.stem, image, set()))
        out.append((f"{path.stem} turned 90", np.ascontiguousarray(np.rot90(image, 3)), {"sideways"}))
        out.append((f"{path.stem} turned 180", np.ascontiguousarray(image[::-1, ::-1]), {"upside_down"}))
        out.append((f"{path.stem} turned 270", np.ascontiguousarray(np.rot90(image, 1)), {"sideways"}))
    bordered = np.full((2338, 1654, 3), 232, dtype=np.uint8)
    bordered[:, :140] = 18
    cv2.rectangle(bordered, (140, 300), (1100, 1200), (70, 70, 70), -1)      # a photo touching the border
    out.append(("border and photo", bordered, {"no_text"}))
    photo = np.full((2338, 1654, 3), 240, dtype=np.uint8)
    noise = np.random.default_rng(5).integers(0, 255, (900, 1200, 1), dtype=np.uint8)
    photo[500:1400, 200:1400] = noise                                      # a noisy picture alone
    out.append(("picture only", photo, {"no_text"}))
    out.append(("blank", np.full((2338, 1654, 3), 245, dtype=np.uint8), set()))
    return out


def main() -> int:
    import cv2
    import torch

    from pero_worker.libs.message_pb2 import Data, ProcessingRequest
    from pero_worker.worker.processors import build_processor

    torch.set_num_threads(1)
    layout = build_processor("[WORKER]\nMETHOD = LAYOUT\n", None, device="cpu")
    model = REPO / "pero-ocr" / "model"
    ocr = build_processor((model / "config.ini").read_text(encoding="utf-8"), model, device="cpu")
    missed = false = failures = 0
    times: dict[bool, list[float]] = {True: [], False: []}
    from lxml import etree
    for name, image, expected in pages():
        request = ProcessingRequest(results=[Data(name="page.png", content=cv2.imencode(".png", image)[1].tobytes())])
        try:
            layout.process(request)
            started = time.perf_counter()
            ocr.process(request)
            seconds = time.perf_counter() - started
        except Exception as error:  # report and count; the bench then has no RESULT
            print(f"{name}: FAILED {type(error).__name__}: {error}")
            failures += 1
            continue
        root = etree.fromstring(request.results[1].content)
        values = {a.get("name"): a.get("value") for a in root.iter("{*}UserAttribute")}
        flags = set(filter(None, values.get("quality_flags", "").split(",")))
        ok = expected <= flags if expected else not flags
        missed += bool(expected) and not ok
        false += not expected and bool(flags)
        times[bool(flags)].append(seconds)
        print(f"{name:45s} flags {','.join(sorted(flags)) or '-':32s} expected {','.join(sorted(expected)) or '-':12s}"
              f" {'ok' if ok else 'WRONG'}  confidence {values.get('mean_confidence', '-')}  ocr {seconds:.1f} s",
              flush=True)
    if failures:
        print(f"{failures} page(s) failed: no RESULT")
        return 1
    print(f"RESULT quality_missed {missed} pages")
    print(f"RESULT quality_false {false} pages")
    for flagged, label in ((False, "good"), (True, "flagged")):
        if times[flagged]:
            print(f"RESULT ocr_seconds_{label}_median {statistics.median(times[flagged]):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
