"""Greyscale conversion and binarisation of page images.

Scanned pages come with uneven illumination (a darker spine, a lamp gradient),
JPEG noise and sometimes already as 1-bit images.  A single global threshold
loses faint text on the dark side of an unevenly lit page, and a purely local
threshold (Sauvola) turns flat paper noise into specks.  So we first divide the
page by an estimate of its paper background (which flattens illumination),
then apply Sauvola on the flattened page, and finally keep only pixels that
are also clearly darker than the paper (a global bound), which removes the
specks Sauvola makes in empty areas.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return a uint8 greyscale copy of a grey, BGR, BGRA or boolean image."""
    if image.dtype == bool:
        return np.where(image, 0, 255).astype(np.uint8)
    img = image
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 1:
        return img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 4:
        # Transparent pixels are paper.
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        rgb = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_BGR2GRAY)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    raise ValueError(f"unsupported image shape {image.shape}")


def is_binary(gray: np.ndarray) -> bool:
    """True when the image holds (almost) only two grey levels, e.g. a 1-bit scan."""
    hist = cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel()
    top2 = np.sort(hist)[-2:].sum()
    return top2 >= 0.995 * gray.size


def background(gray: np.ndarray, window: int, factor: int = 4) -> np.ndarray:
    """Estimate the paper brightness at every pixel.

    A grey-level closing (max then min filter) with a window larger than any
    stroke removes the ink; done on a 4x smaller image because it is only a
    smooth illumination field and full-resolution closing with big kernels
    is slow.
    """
    h, w = gray.shape
    f = factor
    small = cv2.resize(gray, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    k = max(3, (window // f) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    closed = cv2.morphologyEx(small, cv2.MORPH_CLOSE, kernel)
    # Smooth the blocky closing; a box filter costs the same for any size.
    closed = cv2.blur(closed, (k, k))
    closed = cv2.blur(closed, (k, k))
    return cv2.resize(closed, (w, h), interpolation=cv2.INTER_LINEAR)


def sauvola_threshold(gray: np.ndarray, window: int, k: float = 0.25, r: float = 128.0) -> np.ndarray:
    """Sauvola threshold surface computed with box filters (fast integral images)."""
    g = np.asarray(gray, dtype=np.float32)
    mean = cv2.boxFilter(g, cv2.CV_32F, (window, window), borderType=cv2.BORDER_REFLECT)
    # In place, one page-sized buffer at a time: on a 300 dpi A4 page the plain expression spent
    # more time allocating temporaries than filtering.
    spread = cv2.sqrBoxFilter(g, cv2.CV_32F, (window, window), borderType=cv2.BORDER_REFLECT)
    spread -= mean * mean
    np.maximum(spread, 0.0, out=spread)
    np.sqrt(spread, out=spread)                     # the local standard deviation
    spread *= k / r
    spread += 1.0 - k
    spread *= mean                                  # mean * (1 + k * (std / r - 1))
    return spread


def default_window(shape: tuple[int, ...]) -> int:
    """A Sauvola/background window of about 2 text lines at any scan resolution."""
    return max(15, (min(shape[:2]) // 40) | 1)


def binarize(image: np.ndarray, window: int | None = None) -> np.ndarray:
    """Return a boolean ink mask (True = ink) of a page image.

    Accepts greyscale, colour or already binary images; a binary image is just
    thresholded, anything else is flattened and thresholded locally.
    """
    return binarize_with_flat(image, window)[0]


def binarize_with_flat(image: np.ndarray, window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ink mask and the illumination-flattened greyscale page (paper = 255)."""
    gray = to_gray(image)
    if gray.size == 0:
        return np.zeros(gray.shape, dtype=bool), gray
    if is_binary(gray):
        levels = np.flatnonzero(cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel())
        if len(levels) == 1:
            ink = levels[0] <= 127
            return np.full(gray.shape, ink, dtype=bool), gray
        mask = gray < (int(levels.min()) + int(levels.max())) / 2.0
        return mask, np.where(mask, 0, 255).astype(np.uint8)
    if window is None:
        window = default_window(gray.shape)
    bg = background(gray, window * 2 + 1).astype(np.float32)
    flat = np.clip(gray.astype(np.float32) / np.maximum(bg, 1.0) * 255.0, 0, 255)
    # Global bound on the flattened page: ink must be clearly darker than paper.
    flat_u8 = flat.astype(np.uint8)
    otsu, _ = cv2.threshold(flat_u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Faint print sits above Otsu on a page dominated by paper; allow some slack
    # but never accept pixels within 15% of the paper level.
    bound = min(255.0 * 0.85, float(otsu) + 0.5 * (255.0 - float(otsu)))
    local = sauvola_threshold(flat, window)
    return (flat < local) & (flat < bound), flat_u8


def paper_surface(gray: np.ndarray, cells: int = 32) -> np.ndarray:
    """The paper's brightness over the whole page as a smooth quadratic surface (float32, page size).

    Lamp gradients and a darker spine are smooth across the page, while photographs, dark
    headings and scanner shadows are local: the page is cut into cells, each cell's paper
    level is its 90th percentile, and a quadratic surface is fitted to the cells, refitting
    without the cells far below it (pictures, dense print).  Relative to this surface a
    photograph stays dark however large it is (a local background estimate would call its
    inside paper), and a dim side of the page is not mistaken for a picture."""
    H, W = gray.shape
    step = max(8, min(H, W) // cells)
    ny, nx = max(2, H // step), max(2, W // step)
    small = cv2.resize(gray, (nx * 8, ny * 8), interpolation=cv2.INTER_AREA).astype(np.float32)
    blocks = small.reshape(ny, 8, nx, 8).transpose(0, 2, 1, 3).reshape(ny, nx, 64)
    level = np.percentile(blocks, 90, axis=2)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    u, v = (xx + 0.5) / nx - 0.5, (yy + 0.5) / ny - 0.5
    design = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=-1).reshape(-1, 6)
    z = level.reshape(-1).astype(np.float64)
    keep = np.ones(len(z), dtype=bool)
    coef = np.zeros(6)
    for _ in range(4):
        if keep.sum() < 8:
            break
        coef, *_ = np.linalg.lstsq(design[keep], z[keep], rcond=None)
        resid = z - design @ coef
        spread = max(2.0, 2.5 * float(np.median(np.abs(resid[keep]))))
        keep = resid > -spread
    surface = (design @ coef).reshape(ny, nx).astype(np.float32)
    return cv2.resize(surface, (W, H), interpolation=cv2.INTER_LINEAR)
