"""Page orientation (0, 90, 180 or 270 degrees) from the shape of Latin text.

Pages come in sideways or upside down (a landscape page scanned portrait, a
sheet fed the wrong way round).  Deskewing only handles a few degrees; read at
the wrong quarter turn, a page gave garbage with status OK.  Two cues decide:

1. *Axis*: letters of one line sit on one row, so the histogram of letter
   centres across the lines is peaked (few, crowded rows) while along the lines
   it is flat.  The axis whose histogram is sharper is the line direction.
2. *Up or down*: in Latin-script text many letters rise above the x-height
   (capitals, b d f h k l t, accents, i-dots) and few hang below the baseline
   (g j p q y, commas).  For every letter the median top and bottom of its
   line neighbours give the x-height band; counting letters that stick out
   above it against those that stick out below tells up from down.

Both work on component boxes only, so they cost milliseconds at any resolution.
The result is the clockwise rotation (degrees) that makes the page upright, as
PAGE XML's Page/@orientation means it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_LETTERS = 30          # fewer letter-like components: no decision (orientation 0, confidence 0)
MAX_LETTERS = 1500        # a sample this large decides as well as all of them (and costs ~0.1 s)


@dataclass(frozen=True)
class Orientation:
    degrees: int              # clockwise rotation that makes the page upright: 0, 90, 180, 270
    confidence: float         # 0..1: how clearly the cues agreed (0 = no decision possible)
    letters: int              # letter-like components the decision used


def rotate_boxes(boxes: np.ndarray, shape: tuple[int, int], degrees_cw: int) -> np.ndarray:
    """Boxes (x0, y0, x1, y1) of an H x W image rotated clockwise by 0/90/180/270 degrees."""
    H, W = shape
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    k = (degrees_cw // 90) % 4
    if k == 0:
        return boxes.copy()
    if k == 1:    # (x, y) -> (H - y, x)
        return np.stack([H - y1, x0, H - y0, x1], axis=1)
    if k == 2:    # (x, y) -> (W - x, H - y)
        return np.stack([W - x1, H - y1, W - x0, H - y0], axis=1)
    return np.stack([y0, W - x1, y1, W - x0], axis=1)   # (x, y) -> (y, W - x)


def _peakedness(values: np.ndarray, bin_size: float) -> float:
    idx = np.floor((values - values.min()) / bin_size).astype(np.int64)
    counts = np.bincount(idx)
    return float(np.dot(counts, counts)) / float(len(values)) ** 2 * len(counts)


def line_axis_score(boxes: np.ndarray, h: float) -> float:
    """> 0 when lines run horizontally, < 0 when vertically (log ratio of the two peakednesses)."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2.0
    cy = (boxes[:, 1] + boxes[:, 3]) / 2.0
    b = max(1.0, h / 3.0)
    return float(np.log(_peakedness(cy, b) / max(_peakedness(cx, b), 1e-9)))


def up_down_score(boxes: np.ndarray, h: float) -> float:
    """In [-1, 1]: > 0 when letters stick out above their line more often than below (upright text)."""
    from scipy.spatial import cKDTree

    cx = (boxes[:, 0] + boxes[:, 2]) / 2.0
    cy = (boxes[:, 1] + boxes[:, 3]) / 2.0
    tree = cKDTree(np.stack([cx, cy * 4.0], axis=1))   # neighbours: far along the line, near across it
    neigh = tree.query_ball_point(np.stack([cx, cy * 4.0], axis=1), r=4.0 * h)
    top, bottom = boxes[:, 1].astype(float), boxes[:, 3].astype(float)
    counts = np.fromiter((len(nb) for nb in neigh), dtype=np.int64, count=len(neigh))
    rows = np.flatnonzero(counts >= 4)
    if rows.size == 0:
        return 0.0
    # The neighbours' median top and bottom for all letters at once (NaN pads the shorter lists).
    index = np.full((rows.size, int(counts[rows].max())), -1, dtype=np.int64)
    for row, i in enumerate(rows):
        index[row, :counts[i]] = neigh[i]
    present = index >= 0
    t = np.nanmedian(np.where(present, top[index], np.nan), axis=1)
    bt = np.nanmedian(np.where(present, bottom[index], np.nan), axis=1)
    xh = bt - t
    ok = xh > 0
    up = int(np.count_nonzero(ok & (top[rows] < t - 0.3 * xh)))
    down = int(np.count_nonzero(ok & (bottom[rows] > bt + 0.3 * xh)))
    return (up - down) / max(up + down, 1)


def detect_orientation(boxes: np.ndarray, shape: tuple[int, int], h: float,
                       seed: int = 0) -> Orientation:
    """Clockwise quarter turn that makes the text upright, from letter-like component boxes."""
    if h <= 0:
        return Orientation(0, 0.0, 0)
    w = boxes[:, 2] - boxes[:, 0]
    ht = boxes[:, 3] - boxes[:, 1]
    big = np.maximum(w, ht)
    letters = boxes[(big >= 0.5 * h) & (big <= 2.5 * h) & (np.minimum(w, ht) >= 0.15 * h)]
    if len(letters) < MIN_LETTERS:
        return Orientation(0, 0.0, len(letters))
    if len(letters) > MAX_LETTERS:
        pick = np.random.default_rng(seed).choice(len(letters), MAX_LETTERS, replace=False)
        letters = letters[np.sort(pick)]
    axis = line_axis_score(letters, h)
    first, second = (0, 180) if axis >= 0 else (90, 270)
    # A half turn swaps every letter's top and bottom and keeps its neighbours, so the score of
    # `second` is exactly minus that of `first`: one neighbour search instead of two.
    score = up_down_score(rotate_boxes(letters, shape, first), h)
    best, best_score = (first, score) if score >= 0 else (second, -score)
    confidence = float(min(1.0, abs(axis) / 0.5) * min(1.0, abs(best_score) / 0.3))
    return Orientation(best, round(confidence, 3), len(letters))
