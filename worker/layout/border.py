"""Scanner borders: the dark lid or bed around a page smaller than the scanner glass.

A page scanned with the lid open, or on a black backing, comes with dark bands
along some of its edges, and the page inside is usually a little turned.
Left in, a band is one huge dark component: it was classed as a picture, and
when a photograph printed to the page edge touched it, the two made one
component whose box covered the whole page (no lines found, status OK).

The border is found from each image edge inwards: for every column (top and
bottom edges) or row (left and right edges) the run of dark pixels starting at
the edge is measured on a small, smoothed copy.  The page edge is a straight
line, so a line is fitted robustly through the runs; the columns where a photo
or a dark heading continues the run are outliers and do not move it.  What
lies outside the fitted edges (plus a small seam) is painted paper white
before any analysis; a photograph inside the page stays and is found as a
picture by its content.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SMALL_SIDE = 600          # the border is measured on a copy with this many pixels on the short side
DARK = 0.45               # darker than this fraction of the paper level is border (the lid is near black)
MIN_DEPTH = 0.004         # runs shorter than this fraction of the side are no border (a dark speck on the edge)
SEAM = 0.004              # extra margin whitened inside the border (the page edge's shadow), fraction of the side


@dataclass(frozen=True)
class Border:
    """Fitted border depth along each edge: depth(t) = a * t + b in full-resolution pixels, t along the edge.

    `None` for an edge without a border."""
    top: tuple[float, float] | None = None
    bottom: tuple[float, float] | None = None
    left: tuple[float, float] | None = None
    right: tuple[float, float] | None = None

    @property
    def found(self) -> bool:
        return any(e is not None for e in (self.top, self.bottom, self.left, self.right))

    def widths(self, shape: tuple[int, int]) -> dict[str, float]:
        """Mean depth of each edge's border in pixels (0 where none), for logs and the layout facts."""
        h, w = shape
        out = {}
        for name, fit, length in (("top", self.top, w), ("bottom", self.bottom, w),
                                  ("left", self.left, h), ("right", self.right, h)):
            out[name] = 0.0 if fit is None else max(0.0, fit[0] * length / 2.0 + fit[1])
        return out


def _edge_runs(dark: np.ndarray) -> np.ndarray:
    """Length of the run of True from row 0 downwards, for every column."""
    light = ~dark
    first = np.argmax(light, axis=0)
    first[~light.any(axis=0)] = dark.shape[0]
    return first.astype(np.float64)


def fit_edge(runs: np.ndarray, min_depth: float) -> tuple[float, float] | None:
    """Robust straight-line fit (depth = a * t + b) through per-position run lengths, or None.

    Most positions along a bordered edge carry the border and nothing else, so the
    lower half of the runs (photos and dark print only make runs longer) defines the line;
    two refits on the points near the line drop the rest."""
    n = len(runs)
    if n < 8:
        return None
    t = np.arange(n, dtype=np.float64)
    if np.median(runs) < min_depth:
        return None
    keep = runs <= np.percentile(runs, 60)
    a, b = 0.0, float(np.median(runs))
    for _ in range(3):
        if keep.sum() < max(4, n // 5):
            break
        a, b = np.polyfit(t[keep], runs[keep], 1)
        resid = runs - (a * t + b)
        tol = max(2.0, 2.5 * float(np.median(np.abs(resid[keep]))))
        keep = np.abs(resid) <= tol
    if a * (n - 1) / 2.0 + b < min_depth:
        return None
    return float(a), float(b)


def find_border(gray: np.ndarray) -> Border:
    """The scanner border of a greyscale page (uint8, paper light), in its own pixel coordinates."""
    H, W = gray.shape
    f = max(1.0, min(H, W) / SMALL_SIDE)
    small = cv2.resize(gray, (max(8, int(W / f)), max(8, int(H / f))), interpolation=cv2.INTER_AREA)
    small = cv2.medianBlur(small, 5)
    paper = float(np.percentile(small, 90))
    if paper < 60:
        return Border()   # a dark page: nothing to call border
    dark = small < DARK * paper
    h, w = dark.shape
    fits = {}
    for name, view, side in (("top", dark, h), ("bottom", dark[::-1], h),
                             ("left", dark.T, w), ("right", dark.T[::-1], w)):
        fit = fit_edge(_edge_runs(view), max(2.0, MIN_DEPTH * side))
        # A run over half the page is no border but a dark page half: leave it to the analysis.
        if fit is not None and (fit[1] > side / 2 or fit[0] * len(view[0]) + fit[1] > side / 2):
            fit = None
        fits[name] = None if fit is None else (fit[0], fit[1] * f)
    return Border(**fits)


def whiten_border(gray: np.ndarray, border: Border) -> np.ndarray:
    """A copy of the page with everything outside the fitted page edges painted paper white."""
    if not border.found:
        return gray
    H, W = gray.shape
    out = gray.copy()
    paper = int(np.percentile(gray[::8, ::8], 90))
    seam = SEAM * min(H, W)
    xs = np.arange(W, dtype=np.float64)
    ys = np.arange(H, dtype=np.float64)
    if border.top is not None:
        depth = np.ceil(border.top[0] * xs + border.top[1] + seam).astype(int)
        out[np.arange(H)[:, None] < depth[None, :]] = paper
    if border.bottom is not None:
        depth = np.ceil(border.bottom[0] * xs + border.bottom[1] + seam).astype(int)
        out[np.arange(H)[::-1][:, None] < depth[None, :]] = paper
    if border.left is not None:
        depth = np.ceil(border.left[0] * ys + border.left[1] + seam).astype(int)
        out[np.arange(W)[None, :] < depth[:, None]] = paper
    if border.right is not None:
        depth = np.ceil(border.right[0] * ys + border.right[1] + seam).astype(int)
        out[np.arange(W)[::-1][None, :] < depth[:, None]] = paper
    return out

