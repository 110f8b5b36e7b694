"""Baseline and heights of one text line, as pero-ocr's line cropper wants them.

pero-ocr crops a line by sampling along its baseline polyline, from
``heights[0]`` pixels above it to ``heights[1]`` pixels below it, and scales
that band to the OCR model's ``line_px_height`` (times ``LINE_SCALE`` of the
LINE_CROPPER section, which adds margin).  The OCR model only reads well when
the band it was trained on and the band it gets at inference cover the
letters the same way, so both sides must compute the geometry with the same
function:

    from pero_worker.worker.layout.geometry import line_geometry
    baseline, heights = line_geometry(ink_mask)
    crop = EngineLineCropper(line_height=40, poly=2, scale=LINE_SCALE).crop(image, baseline, heights)

``ink_mask`` is a boolean array (True = ink) containing one roughly horizontal
text line (a slope of a few degrees is fine) and nothing else; the returned
coordinates are in that array's pixel frame (add the offset of the crop when
the mask was cut from a page).  The layout stage calls it on every detected
line, the model-training helper on every rendered training line.

How the geometry is defined (so that it is stable from line to line):

- the *core band* (x-height zone) is where the row profile of the ink stays
  high (see `core_band`); its bottom edge is the baseline and its height the
  x-height ``x``.  This is done on vertical slices of the line and
  a straight line is fitted through the slice baselines (robust to descenders
  and a little residual skew);
- ``heights[0]`` (up) is the 90th percentile of how far ink columns reach
  above the baseline, clamped to [1.35 x, 2.0 x]: ascenders and capitals
  set it, but a line without any still gets a normal band;
- ``heights[1]`` (down) is the 95th percentile of how far ink columns reach
  below it, clamped to [0.4 x, 0.9 x];
- the baseline runs from the leftmost to the rightmost ink column, extended by
  ``0.25 x`` on both sides so the first and last letters are not cut.
"""

from __future__ import annotations

import numpy as np

UP_RANGE = (1.35, 2.0)
DOWN_RANGE = (0.4, 0.9)
END_PAD = 0.25


def core_band(profile: np.ndarray) -> tuple[int, int] | None:
    """(top, bottom) rows (bottom exclusive) of the x-height zone of a row profile.

    Hysteresis: rows at half the typical level are surely core; the core is the run
    of rows above 30 % of it that holds most of those.  (Serif rows at the x-height and
    the baseline are much stronger than the stems between them, so a single threshold
    would split the core; ascender and descender rows stay under 30 %.)
    """
    if profile.size == 0 or profile.max() <= 0:
        return None
    nz = profile[profile > 0]
    level = np.percentile(nz, 90) if len(nz) >= 3 else nz.max()
    weak = np.flatnonzero(profile >= 0.3 * level)
    if len(weak) == 0:
        return None
    runs = np.split(weak, np.flatnonzero(np.diff(weak) > 1) + 1)
    strong = np.where(profile >= 0.5 * level, profile, 0.0)
    core = runs[int(np.argmax([strong[r].sum() for r in runs]))]
    return int(core[0]), int(core[-1]) + 1


def _robust_line_fit(xs: np.ndarray, ys: np.ndarray, ws: np.ndarray, tol: float) -> tuple[float, float]:
    """Weighted least-squares y = a + b x, refitted once without points off by more than tol."""
    def fit(mask: np.ndarray) -> tuple[float, float]:
        if mask.sum() < 2 or np.ptp(xs[mask]) < 1e-6:
            return float(np.average(ys[mask] if mask.any() else ys, weights=ws[mask] if mask.any() else ws)), 0.0
        b, a = np.polyfit(xs[mask], ys[mask], 1, w=np.sqrt(ws[mask]))
        return float(a), float(b)

    keep = np.ones(len(xs), dtype=bool)
    a, b = fit(keep)
    resid = np.abs(ys - (a + b * xs))
    keep = resid <= max(tol, 1e-6)
    if keep.sum() >= 2:
        a, b = fit(keep)
    return a, b


def line_geometry(ink_mask: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Baseline polyline (N x 2 float, x then y) and heights [up, down] of one text line.

    See the module docstring for the exact definition.  Raises ValueError for a mask without ink.
    """
    mask = np.asarray(ink_mask).astype(bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError("line_geometry needs a 2-D mask with some ink")
    cols = np.flatnonzero(mask.any(axis=0))
    xl, xr = int(cols[0]), int(cols[-1]) + 1
    band = core_band(mask.sum(axis=1).astype(np.float64))
    assert band is not None
    x_height = max(1.0, float(band[1] - band[0]))

    # Slice baselines: slices about 8 x-heights wide, enough letters in each.
    width = xr - xl
    n_slices = int(np.clip(round(width / (8.0 * x_height)), 1, 64))
    edges = np.linspace(xl, xr, n_slices + 1)
    xs, ys, ws, xh = [], [], [], []
    for s, e in zip(edges[:-1], edges[1:]):
        sub = mask[:, int(s):max(int(s) + 1, int(e))]
        ink = int(sub.sum())
        if ink == 0:
            continue
        b = core_band(sub.sum(axis=1).astype(np.float64))
        if b is None:
            continue
        xs.append((s + e) / 2.0)
        ys.append(float(b[1]))
        ws.append(float(ink))
        xh.append(float(b[1] - b[0]))
    if xs:
        xs_a, ys_a, ws_a = np.array(xs), np.array(ys), np.array(ws)
        a, slope = _robust_line_fit(xs_a, ys_a, ws_a, tol=0.2 * x_height)
        # Keep the whole-line core as the height reference unless slices agree on another.
        x_height = max(1.0, float(np.median(xh))) if len(xh) >= 3 else x_height
    else:
        a, slope = float(band[1]), 0.0
    if abs(slope) > 0.1:   # > ~6 degrees: not believable for a deskewed line
        a, slope = float(np.median(ys)) if ys else float(band[1]), 0.0

    # Per-column reach above and below the fitted baseline.
    col_idx = np.flatnonzero(mask.any(axis=0))
    tops = mask[:, col_idx].argmax(axis=0)
    bottoms = mask.shape[0] - 1 - mask[::-1, col_idx].argmax(axis=0)
    base_at = a + slope * col_idx
    up_reach = base_at - tops
    down_reach = bottoms + 1 - base_at
    up = float(np.percentile(up_reach, 90))
    down = float(np.percentile(down_reach, 95))
    up = float(np.clip(up, UP_RANGE[0] * x_height, UP_RANGE[1] * x_height))
    down = float(np.clip(down, DOWN_RANGE[0] * x_height, DOWN_RANGE[1] * x_height))

    pad = END_PAD * x_height
    x0, x1 = xl - pad, xr + pad
    baseline = np.array([[x0, a + slope * x0], [x1, a + slope * x1]], dtype=np.float64)
    return baseline, [up, down]


def line_polygon(baseline: np.ndarray, heights: list[float] | tuple[float, float]) -> np.ndarray:
    """Closed band around a baseline: the baseline moved up by heights[0] and down by heights[1]
    along its normal (upper edge left to right, then lower edge right to left)."""
    bl = np.asarray(baseline, dtype=np.float64)
    d = bl[-1] - bl[0]
    norm = np.hypot(*d)
    if norm < 1e-9:
        nvec = np.array([0.0, 1.0])
    else:
        nvec = np.array([-d[1], d[0]]) / norm     # points down for a left-to-right line
    upper = bl - nvec * heights[0]
    lower = bl + nvec * heights[1]
    return np.concatenate([upper, lower[::-1]], axis=0)
