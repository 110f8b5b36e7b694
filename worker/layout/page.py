"""Whole-page layout analysis: image in, regions and lines in reading order out.

Steps (each in its own module):
binarise -> components and text height -> drop noise, rules, pictures ->
estimate skew and rotate the text mask upright -> XY-cut into blocks in
reading order -> lines in each block -> baseline and heights of each line ->
map everything back to the coordinates of the original image (the OCR stage
crops the original, not our deskewed copy).

`to_page_layout` converts the result into pero-ocr's PageLayout, ready for
`to_pagexml_string()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pero_worker.worker.layout import binarize as binarize_mod
from pero_worker.worker.layout.components import (
    Components,
    classify,
    dark_area_mask,
    estimate_text_height,
    find_components,
)
from pero_worker.worker.layout.geometry import line_geometry, line_polygon
from pero_worker.worker.layout.lines import group_lines
from pero_worker.worker.layout.skew import apply_affine, deskew_transform, estimate_skew, invert_affine, warp_mask
from pero_worker.worker.layout.xycut import CutParams, xy_cut


@dataclass(frozen=True)
class LayoutParams:
    """Thresholds in units of the page's text height (so they hold at any resolution)."""
    max_skew_deg: float = 3.0
    column_gap: float = 2.0       # min width of the whitespace between columns
    min_column_height: float = 6.0  # about three lines: shorter nodes are never cut into columns
    short_column_height: float = 15.0  # nodes of fewer than about six lines ...
    short_column_gap: float = 3.0      # ... need a wider column gap (justified-text rivers)
    block_gap: float = 1.5        # min height of the whitespace between blocks
    min_column_width: float = 4.0
    line_split_gap: float = 3.0   # a line is cut where words are further apart (tables)
    min_skew_to_rotate: float = 0.05


@dataclass
class Line:
    baseline: np.ndarray          # (N, 2) x, y in original image coordinates
    heights: list[float]          # [up, down] in pixels
    polygon: np.ndarray           # (M, 2)


@dataclass
class Region:
    polygon: np.ndarray           # (4, 2) in original image coordinates
    lines: list[Line] = field(default_factory=list)


@dataclass
class PageAnalysis:
    size: tuple[int, int]         # (height, width) of the image
    skew_deg: float
    text_height: float
    regions: list[Region]
    picture_mask: np.ndarray | None = None

    @property
    def lines(self) -> list[Line]:
        return [line for r in self.regions for line in r.lines]


def _text_mask(comps: Components, keep: np.ndarray) -> np.ndarray:
    lut = np.zeros(comps.count + 1, dtype=bool)
    lut[1:] = keep
    return lut[comps.labels]


def analyze_page(image: np.ndarray, params: LayoutParams = LayoutParams()) -> PageAnalysis:
    """Layout of a page image (grey, colour or binary numpy array)."""
    gray = binarize_mod.to_gray(image)
    H, W = gray.shape
    binary_input = binarize_mod.is_binary(gray)
    mask, flat = binarize_mod.binarize_with_flat(gray)
    comps = find_components(mask)
    h = estimate_text_height(comps, H)
    if comps.count == 0 or h <= 0:
        return PageAnalysis(size=(H, W), skew_deg=0.0, text_height=0.0, regions=[])
    paper = binarize_mod.background(gray, max(31, min(H, W) // 2), factor=8).astype(np.float32)
    dark_src = flat if binary_input else np.clip(gray / np.maximum(paper, 1.0) * 255.0, 0, 255)
    dark = dark_area_mask(dark_src, mask, h)
    classes = classify(comps, h, (H, W), dark)
    text = classes.text
    if not text.any():
        return PageAnalysis(size=(H, W), skew_deg=0.0, text_height=h, regions=[],
                            picture_mask=classes.picture_mask)

    # Skew from the bottoms of letter-sized components.
    tb = comps.boxes[text]
    th = tb[:, 3] - tb[:, 1]
    letters = (th >= 0.5 * h) & (th <= 3 * h)
    pts = np.stack([(tb[letters, 0] + tb[letters, 2]) / 2.0, tb[letters, 3]], axis=1)
    angle = estimate_skew(pts, h, params.max_skew_deg)

    tmask = _text_mask(comps, text)
    if abs(angle) >= params.min_skew_to_rotate:
        m, size = deskew_transform((H, W), angle)
        tmask = warp_mask(tmask, m, size)
    else:
        angle = 0.0
        m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    m_inv = invert_affine(m)

    dcomps = find_components(tmask)
    keep = dcomps.areas >= max(3.0, 0.012 * h * h)
    boxes = dcomps.boxes
    idx = np.flatnonzero(keep)
    cut = CutParams(col_gap=params.column_gap * h, row_gap=params.block_gap * h,
                    min_col_width=params.min_column_width * h,
                    min_col_height=params.min_column_height * h,
                    short_col_height=params.short_column_height * h,
                    short_col_gap=params.short_column_gap * h, tolerance=0.6 * h,
                    fine_row_gap=0.25 * h)
    blocks = xy_cut(boxes, cut, idx)

    regions = [region for block in blocks
               if (region := _block_region(dcomps, block, h, params, m_inv, (H, W))) is not None]
    return PageAnalysis(size=(H, W), skew_deg=angle, text_height=h, regions=regions,
                        picture_mask=classes.picture_mask)


def _block_region(dcomps: Components, block: np.ndarray, h: float, params: LayoutParams, m_inv: np.ndarray,
                  size: tuple[int, int]) -> Region | None:
    """One text block (components of the deskewed page) as a region of lines on the original page."""
    bh = _block_text_height(dcomps, block, h)
    lines = group_lines(dcomps.boxes, block, bh, params.line_split_gap * h)
    region_lines: list[Line] = []
    corners = []
    for members in lines:
        line = _make_line(dcomps, members, m_inv, size)
        if line is None:
            continue
        region_lines.append(line[0])
        corners.append(line[1])
    if not region_lines:
        return None
    pts_d = np.concatenate(corners, axis=0)
    x0, y0 = pts_d.min(axis=0)
    x1, y1 = pts_d.max(axis=0)
    rect = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    return Region(polygon=_clip(apply_affine(m_inv, rect), size), lines=region_lines)


def _block_text_height(comps: Components, block: np.ndarray, h: float) -> float:
    """Letter height of a block: its own when it has enough letters (titles are bigger)."""
    if len(block) < 8:
        return h
    hs = comps.heights[block]
    hs = hs[hs >= 0.4 * h]
    if len(hs) < 8:
        return h
    return float(np.median(hs))


def _make_line(comps: Components, members: np.ndarray, m_inv: np.ndarray,
               size: tuple[int, int]) -> tuple[Line, np.ndarray] | None:
    b = comps.boxes[members].astype(int)
    x0, y0 = b[:, 0].min(), b[:, 1].min()
    x1, y1 = b[:, 2].max(), b[:, 3].max()
    lut = np.zeros(comps.count + 1, dtype=bool)
    lut[members + 1] = True
    sub = lut[comps.labels[y0:y1, x0:x1]]
    if not sub.any():
        return None
    baseline, heights = line_geometry(sub)
    baseline = baseline + np.array([x0, y0], dtype=np.float64)
    poly_d = line_polygon(baseline, heights)
    H, W = size
    base_o = apply_affine(m_inv, baseline)
    base_o[:, 0] = np.clip(base_o[:, 0], 0, W - 1)
    base_o[:, 1] = np.clip(base_o[:, 1], 0, H - 1)
    if base_o[-1, 0] - base_o[0, 0] < 1:
        return None
    poly_o = _clip(apply_affine(m_inv, poly_d), size)
    return Line(baseline=base_o, heights=[float(heights[0]), float(heights[1])], polygon=poly_o), poly_d


def _clip(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    H, W = size
    out = points.copy()
    out[:, 0] = np.clip(out[:, 0], 0, W - 1)
    out[:, 1] = np.clip(out[:, 1], 0, H - 1)
    return out


def to_page_layout(analysis: PageAnalysis, page_id: str):
    """pero-ocr PageLayout with one TextRegion per block, in reading order (also stored as
    the PAGE ReadingOrder so that pero-ocr keeps it when it reloads the XML)."""
    from pero_ocr.core.layout import PageLayout, RegionLayout, TextLine

    layout = PageLayout(id=page_id, page_size=(analysis.size[0], analysis.size[1]))
    order: dict[str, int] = {}
    for ri, region in enumerate(analysis.regions):
        rid = f"r{ri + 1:03d}"
        rl = RegionLayout(rid, np.round(region.polygon).astype(np.int64))
        for li, line in enumerate(region.lines):
            rl.lines.append(TextLine(
                id=f"{rid}-l{li + 1:03d}",
                index=li,
                baseline=np.round(line.baseline).astype(np.int64),
                polygon=np.round(line.polygon).astype(np.int64),
                heights=[float(line.heights[0]), float(line.heights[1])]))
        layout.regions.append(rl)
        order[rid] = ri
    layout.reading_order = order
    return layout
