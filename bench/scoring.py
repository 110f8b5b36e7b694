"""Scores for layout and OCR results against synthetic ground truth (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _y_at(baseline: np.ndarray, x: float) -> float:
    bl = np.asarray(baseline, dtype=np.float64)
    order = np.argsort(bl[:, 0])
    return float(np.interp(x, bl[order, 0], bl[order, 1]))


def line_match_score(gt_baseline: np.ndarray, det_baseline: np.ndarray, x_height: float) -> float:
    """0 when the lines do not correspond; else the horizontal IoU of the two baselines.

    They correspond when their x-ranges overlap by at least half of the union and the
    baselines are within half an x-height of each other in the middle of the overlap.
    """
    g0, g1 = float(np.min(gt_baseline[:, 0])), float(np.max(gt_baseline[:, 0]))
    d0, d1 = float(np.min(det_baseline[:, 0])), float(np.max(det_baseline[:, 0]))
    inter = min(g1, d1) - max(g0, d0)
    union = max(g1, d1) - min(g0, d0)
    if inter <= 0 or union <= 0:
        return 0.0
    iou = inter / union
    if iou < 0.5:
        return 0.0
    xm = (min(g1, d1) + max(g0, d0)) / 2.0
    if abs(_y_at(gt_baseline, xm) - _y_at(det_baseline, xm)) > 0.5 * x_height:
        return 0.0
    return iou


def match_lines(gt: list[tuple[np.ndarray, float]], det: list[np.ndarray]) -> list[tuple[int, int]]:
    """One-to-one matching (greedy by score) of ground-truth lines (baseline, x-height) to
    detected baselines.  Returns (gt index, det index) pairs."""
    cands = []
    for i, (gb, xh) in enumerate(gt):
        gy = float(np.mean(gb[:, 1]))
        for j, db in enumerate(det):
            if abs(float(np.mean(db[:, 1])) - gy) > 4 * xh + abs(gb[-1, 1] - gb[0, 1]) + abs(db[-1, 1] - db[0, 1]):
                continue
            s = line_match_score(gb, db, xh)
            if s > 0:
                cands.append((s, i, j))
    cands.sort(reverse=True)
    used_g, used_d, pairs = set(), set(), []
    for _score, i, j in cands:
        if i in used_g or j in used_d:
            continue
        used_g.add(i)
        used_d.add(j)
        pairs.append((i, j))
    return pairs


@dataclass
class LayoutScore:
    gt_lines: int
    det_lines: int
    matched: int
    order_pairs_ok: int      # consecutive matched detections whose ground-truth order is increasing
    order_pairs: int
    baseline_error: float    # mean |dy| / x-height over matched lines

    @property
    def recall(self) -> float:
        return self.matched / self.gt_lines if self.gt_lines else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.det_lines if self.det_lines else 1.0

    @property
    def order_ok(self) -> bool:
        return self.order_pairs_ok == self.order_pairs


def score_layout(gt: list[tuple[np.ndarray, float]], det: list[np.ndarray]) -> LayoutScore:
    """Line recall/precision and reading-order agreement of detected lines (given in the
    detector's reading order) against ground-truth lines (given in true reading order)."""
    pairs = match_lines(gt, det)
    by_det = sorted(pairs, key=lambda p: p[1])
    gt_seq = [g for g, _ in by_det]
    ok = sum(1 for a, b in zip(gt_seq[:-1], gt_seq[1:]) if b > a)
    errs = []
    for g, d in pairs:
        gb, xh = gt[g]
        db = det[d]
        x0 = max(gb[:, 0].min(), db[:, 0].min())
        x1 = min(gb[:, 0].max(), db[:, 0].max())
        xm = (x0 + x1) / 2
        errs.append(abs(_y_at(gb, xm) - _y_at(db, xm)) / xh)
    return LayoutScore(gt_lines=len(gt), det_lines=len(det), matched=len(pairs),
                       order_pairs_ok=ok, order_pairs=max(0, len(gt_seq) - 1),
                       baseline_error=float(np.mean(errs)) if errs else 0.0)


def normalise_text(text: str) -> str:
    """Whitespace-normalised page text: lines stripped, inner runs of spaces collapsed, empty lines dropped."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return "\n".join(line for line in lines if line)


def char_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance, reference length) over whitespace-normalised page texts."""
    import Levenshtein

    ref = normalise_text(reference)
    hyp = normalise_text(hypothesis)
    return Levenshtein.distance(ref, hyp), len(ref)


def bag_of_words_error(reference: str, hypothesis: str) -> float:
    """1 - (words in common, as multisets) / (the larger word count): reading order does not matter,
    missing and invented words both count.  0 for two empty texts."""
    from collections import Counter

    ref = Counter(reference.split())
    hyp = Counter(hypothesis.split())
    total = max(sum(ref.values()), sum(hyp.values()))
    if total == 0:
        return 0.0
    return 1.0 - sum((ref & hyp).values()) / total
