"""Connected components of the ink mask and their classification.

Every later step works on components rather than pixels: they are few (a few
thousand per page), carry their own size, and let us tell text from what is
not text with simple statistics relative to the page's text height:

- noise: specks far smaller than a letter's dot;
- rules: long and thin (horizontal or vertical lines, frames);
- pictures: big components, and areas where most of the paper is dark
  (photographs binarise into a mess of blobs, none of which is big alone).

The text height `h` is the median height of the letter-sized components; it
is the unit for every threshold in the package, which makes the analysis
independent of the scan resolution (150-400 dpi).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Components:
    """Connected components of a mask: labels image and per-component boxes/areas."""
    labels: np.ndarray          # int32 label image, 0 = background
    boxes: np.ndarray           # (N, 4) float: x0, y0, x1, y1 (exclusive ends), index i = label i+1
    areas: np.ndarray           # (N,) int

    @property
    def count(self) -> int:
        return len(self.areas)

    @property
    def widths(self) -> np.ndarray:
        return self.boxes[:, 2] - self.boxes[:, 0]

    @property
    def heights(self) -> np.ndarray:
        return self.boxes[:, 3] - self.boxes[:, 1]


def find_components(mask: np.ndarray) -> Components:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    stats = stats[1:]
    boxes = np.stack([stats[:, 0], stats[:, 1], stats[:, 0] + stats[:, 2], stats[:, 1] + stats[:, 3]], axis=1)
    return Components(labels=labels, boxes=boxes.astype(np.float64), areas=stats[:, 4].astype(np.int64))


def estimate_text_height(comps: Components, page_height: int) -> float:
    """Median height of letter-like components (the page's text height unit).

    Components that are too small (dots, noise) or too large (pictures) are
    left out; among the rest, the densest height range wins, because the
    body text dominates any page.
    """
    if comps.count == 0:
        return 0.0
    h = comps.heights
    w = comps.widths
    ok = (h >= 4) & (h <= page_height / 15.0) & (w <= 8 * h) & (comps.areas >= 6)
    if ok.sum() < 5:
        ok = h >= 2
        if ok.sum() == 0:
            return float(np.median(h))
    hs = h[ok]
    # Mode of a log-spaced histogram weighted by ink area, refined by the median around it.
    # Weighting by area lets the letters win over the thousands of tiny dots a halftone
    # photograph binarises into (they are many, but carry little ink each).
    bins = np.exp(np.linspace(np.log(max(1.0, hs.min())), np.log(hs.max() + 1.0), 40))
    if len(bins) < 3 or bins[-1] <= bins[0]:
        return float(np.median(hs))
    hist, edges = np.histogram(hs, bins=bins, weights=comps.areas[ok].astype(np.float64))
    smooth = np.convolve(hist, [1, 2, 1], mode="same")
    i = int(np.argmax(smooth))
    lo, hi = edges[max(0, i - 3)], edges[min(len(edges) - 1, i + 4)]
    near = hs[(hs >= lo) & (hs <= hi)]
    return float(np.median(near if len(near) else hs))


@dataclass
class Classes:
    text: np.ndarray        # bool (N,)
    noise: np.ndarray
    rule: np.ndarray
    picture: np.ndarray
    picture_mask: np.ndarray  # bool image, True inside picture areas


def dark_area_mask(gray_flat: np.ndarray | None, mask: np.ndarray, h: float, ink_depth: float = 215.0) -> np.ndarray:
    """Picture areas: where most of the page is dark, refined to the picture's own outline.

    Text covers at most about half of any cell (about 2h wide) even in bold
    headings, while a photograph is dark (or densely dotted) almost everywhere:
    dense cells, at least 3x3 of them, locate pictures.  Cells are coarse and a
    photograph has light parts, so the area is then grown, near the dense
    cells only, over the non-paper pixels connected to them, and each area is
    filled to its convex hull (pictures are convex, mostly rectangles, possibly
    slightly rotated).  Text next to a picture is not connected to it by
    non-paper pixels, so it stays out.  `ink_depth` is how much darker than paper the
    page's letters are (255 - their darkest grey; about 215 for good print).
    """
    cell = max(4, int(round(2 * h)))
    H, W = mask.shape
    # "Dark" relative to the page's own print: faint, low-contrast print has faint photographs too.
    dark = mask if gray_flat is None else gray_flat < 255 - 0.3 * max(ink_depth, 60.0)
    small = cv2.resize(dark.astype(np.float32), (max(1, W // cell), max(1, H // cell)),
                       interpolation=cv2.INTER_AREA)
    dense = (small > 0.6).astype(np.uint8)
    dense = cv2.morphologyEx(dense, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    if not dense.any():
        return np.zeros((H, W), dtype=bool)
    core = cv2.resize(dense, (W, H), interpolation=cv2.INTER_NEAREST)
    zone = cv2.resize(cv2.dilate(dense, np.ones((9, 9), np.uint8)), (W, H), interpolation=cv2.INTER_NEAREST)
    if gray_flat is None:
        nonpaper = mask
    else:
        # Averaged over a few pixels first: on noisy paper single pixels fall below the paper level
        # everywhere, the closing below made them solid, and a picture's area spread over the text
        # beside it up to the edge of the zone (8 text heights).  Halftone dots average to grey
        # and stay non-paper.
        b = max(3, int(round(0.2 * h)) | 1)
        nonpaper = cv2.blur(np.asarray(gray_flat, dtype=np.float32), (b, b)) < 0.93 * 255
    nonpaper = (nonpaper & zone.astype(bool)).astype(np.uint8)
    # Light halftone areas are separate dots: closing joins them (the dot pitch is a fraction of
    # a letter), so the picture keeps its light parts; white space around text is far wider.
    k = max(3, int(round(0.25 * h)) | 1)
    nonpaper = cv2.morphologyEx(nonpaper, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    # Opening by about a letter cuts off thin things attached to a picture (a rule running into
    # it, a line of text touching it): the hull of the picture must not stretch along them.
    o = max(3, int(round(h)) | 1)
    nonpaper = cv2.morphologyEx(nonpaper, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (o, o)))
    n, labels = cv2.connectedComponents(nonpaper | core, connectivity=8)
    touching = np.unique(labels[core.astype(bool)])
    lut = np.zeros(n, dtype=np.uint8)
    lut[touching[touching > 0]] = 1
    # The picture's own pixels only: a dense cell reaches up to 40 % of a cell (about a text line)
    # past the photo's edge, and text set that close beside a photo was swallowed with it.
    return _filled_outlines(lut[labels] & nonpaper).astype(bool)


def _filled_outlines(area: np.ndarray) -> np.ndarray:
    """Each connected area (uint8 mask, changed in place) filled to its convex hull, or to its turned
    rectangle when the outline fills that well."""
    contours, _ = cv2.findContours(area, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        hull = cv2.convexHull(contour)
        # Most pictures are rectangles (maybe a little turned): a light corner of a photo is
        # paper-bright and falls out of the hull, yet belongs to the picture.  A rectangle the
        # outline fills well is taken whole; other shapes keep their hull.
        rect = cv2.boxPoints(cv2.minAreaRect(contour))
        rect_area = cv2.contourArea(rect)
        if rect_area > 0 and cv2.contourArea(hull) >= 0.9 * rect_area:
            hull = np.round(rect).astype(np.int32)
        cv2.fillPoly(area, [hull], 1)
    return area


SHAPE_LETTER_PX = 8   # picture_shapes works where a letter is about this many pixels high


def picture_shapes(comps: Components, picture: np.ndarray, h: float) -> np.ndarray:
    """Mask of the picture components by their own outline (convex hull), never their bounding box.

    A photograph's box also covers whatever is beside it when the photo is not a rectangle,
    or when something dark (a scanner border, a rule) is attached to it: filling the box once
    masked a whole page.  The outline is closed over gaps of about a letter first, so that the
    light parts of a halftone, whose dots do not touch, stay inside."""
    H, W = comps.labels.shape
    out = np.zeros((H, W), dtype=np.uint8)
    if not picture.any():
        return out
    lut = np.zeros(comps.count + 1, dtype=np.uint8)
    lut[np.flatnonzero(picture) + 1] = 1
    shape = lut[comps.labels]
    # Outlines need no pixel precision: the morphology runs on the mask reduced so that a letter is
    # about SHAPE_LETTER_PX high, a pixel there set where any pixel of its block is (a thin rule
    # stays).  At full resolution the 4-letter dilation below took a third of the layout time.
    f = max(1, int(h // SHAPE_LETTER_PX))
    if f > 1:
        shape = cv2.resize(shape * 255, (-(-W // f), -(-H // f)), interpolation=cv2.INTER_AREA)
        shape = (shape > 0).astype(np.uint8)
    hs = h / f
    k = max(3, int(round(hs)) | 1)
    ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    shape = cv2.morphologyEx(shape, cv2.MORPH_CLOSE, ellipse)
    # ... and thin things attached to it (a rule running into a photo) are cut off before the hull.
    shape = cv2.morphologyEx(shape, cv2.MORPH_OPEN, ellipse)
    # Pieces of one photo that binarised apart (a 1-bit scan splits it into blobs where it is
    # light) are grouped when less than a few letters apart, and each group is filled to its
    # convex hull; text beside a picture lies outside it.
    g = max(3, int(round(4 * hs)) | 1)
    groups = cv2.dilate(shape, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (g, g)))
    n, labels = cv2.connectedComponents(groups, connectivity=8)
    ys, xs = np.nonzero(shape)
    which = labels[ys, xs]
    for k in range(1, n):
        sel = which == k
        if sel.any():
            # Both corners of each reduced pixel's block: the hull covers the whole block.
            x0, y0 = xs[sel] * f, ys[sel] * f
            pts = np.concatenate([np.stack([x0, y0], axis=1), np.stack([x0 + f - 1, y0 + f - 1], axis=1)])
            cv2.fillPoly(out, [cv2.convexHull(pts.astype(np.int32))], 1)
    return out


def classify(comps: Components, h: float, mask_shape: tuple[int, int],
             dark_mask: np.ndarray | None = None) -> Classes:
    """Split components into text, noise, rules and pictures (thresholds relative to h)."""
    w, ht, area = comps.widths, comps.heights, comps.areas
    hh = max(h, 1.0)
    density = area / np.maximum(w * ht, 1)
    noise = area < max(3.0, 0.012 * hh * hh)
    # Mean stroke thickness along the long side: a rule stays thin even when it
    # is slanted (its box is then tall, but its area per length is not).
    thin_h = (area / np.maximum(w, 1) <= 0.45 * hh) & (w >= 6 * hh) & (w >= 4 * ht)   # horizontal rule
    thin_v = (area / np.maximum(ht, 1) <= 0.45 * hh) & (ht >= 6 * hh) & (ht >= 4 * w)  # vertical rule
    big = (w >= 5 * hh) & (ht >= 5 * hh)
    # A big, sparse component is a frame or a table grid: a rule, its inside stays text.
    frame = big & (density < 0.12)
    picture = big & ~frame
    # Very tall or very wide things that are not thin lines are not letters either.
    huge = ((ht >= 8 * hh) | ((w >= 30 * hh) & (ht >= 3 * hh))) & ~(thin_h | thin_v | frame)
    picture |= huge
    rule = (thin_h | thin_v | frame) & ~noise
    picture &= ~noise

    H, W = mask_shape
    pic_mask = picture_shapes(comps, picture, hh)
    if dark_mask is not None:
        pic_mask |= dark_mask.astype(np.uint8)
    if pic_mask.any():
        # Everything mostly inside a picture area belongs to the picture.
        pad = max(1, int(round(0.5 * hh)))
        pic_mask = cv2.dilate(pic_mask, np.ones((2 * pad + 1, 2 * pad + 1), np.uint8))
        integral = cv2.integral(pic_mask)
        b = comps.boxes.astype(int)
        inside = (integral[b[:, 3], b[:, 2]] - integral[b[:, 1], b[:, 2]]
                  - integral[b[:, 3], b[:, 0]] + integral[b[:, 1], b[:, 0]])
        frac = inside / np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1)
        picture |= (frac > 0.5) & ~rule
    text = ~(noise | rule | picture)
    return Classes(text=text, noise=noise & ~picture, rule=rule & ~picture, picture=picture,
                   picture_mask=pic_mask.astype(bool))
