"""Skew estimation and the deskewing transform.

The skew is found from the bottoms of the text components: on a page rotated
by the right angle, the bottoms of letters pile up on a few rows (the
baselines), so the histogram of their rotated y coordinates is as peaked as it
can be.  We maximise the sum of squared histogram counts over the angle,
coarse then fine.  Using points instead of rotating the whole image makes the
search cost a few milliseconds and independent of the resolution.

Convention: an angle theta (degrees) means text lines go down to the right
with slope tan(theta) in image coordinates (y down).  `deskew_transform`
returns the affine map that makes them horizontal.
"""

from __future__ import annotations

import cv2
import numpy as np


def _sharpness(x: np.ndarray, y: np.ndarray, angles_rad: np.ndarray, bin_size: float) -> np.ndarray:
    scores = np.empty(len(angles_rad))
    for i, a in enumerate(angles_rad):
        yr = y * np.cos(a) - x * np.sin(a)
        idx = np.floor((yr - yr.min()) / bin_size).astype(np.int64)
        counts = np.bincount(idx)
        scores[i] = float(np.dot(counts, counts))
    return scores


def estimate_skew(points: np.ndarray, text_height: float, max_angle: float = 3.0) -> float:
    """Skew angle in degrees (see module convention) from (N, 2) baseline-ish points."""
    if len(points) < 10 or text_height <= 0:
        return 0.0
    x = points[:, 0].astype(np.float64)
    y = points[:, 1].astype(np.float64)
    x = x - x.mean()
    coarse_bin = max(1.0, text_height / 4.0)
    fine_bin = max(0.5, text_height / 12.0)
    coarse = np.arange(-max_angle, max_angle + 1e-9, 0.1)
    s = _sharpness(x, y, np.deg2rad(coarse), coarse_bin)
    best = float(coarse[int(np.argmax(s))])
    fine = np.arange(best - 0.1, best + 0.1 + 1e-9, 0.01)
    # Fine bins against the quantisation of the coarse ones; smoothing the score over
    # neighbouring angles removes what is left of the bin-phase jitter.
    s = _sharpness(x, y, np.deg2rad(fine), fine_bin)
    s = np.convolve(s, np.ones(5) / 5.0, mode="same")
    s[:2] = s[-2:] = 0
    top = fine[s >= s.max() * 0.999]
    return float(np.round(np.mean(top), 3))


def deskew_transform(shape: tuple[int, int], angle_deg: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Affine 2x3 map (original -> deskewed) and the (height, width) of a canvas holding the whole page."""
    h, w = shape
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle_deg, 1.0)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    rc = corners @ m[:, :2].T + m[:, 2]
    lo = np.floor(rc.min(axis=0))
    hi = np.ceil(rc.max(axis=0))
    m[:, 2] -= lo
    size = (int(hi[1] - lo[1]), int(hi[0] - lo[0]))
    return m, size


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine map to (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ m[:, :2].T + m[:, 2]


def invert_affine(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(m)


def warp_mask(mask: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Rotate a boolean mask with nearest-neighbour sampling (keeps it binary)."""
    out = cv2.warpAffine(mask.astype(np.uint8), m, (size[1], size[0]), flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool)
